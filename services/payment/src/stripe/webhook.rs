//! Stripe's webhooks: the signature check and what an event names.
//!
//! Stripe signs each delivery with the endpoint's secret (`whsec_...`):
//! the `Stripe-Signature` header carries a timestamp `t` and one or more
//! `v1` signatures, each the hex HMAC-SHA256 of `"{t}.{raw body}"`. A
//! delivery is accepted only if one `v1` matches (compared in constant
//! time) and `t` is within the tolerance of now, so that a captured
//! delivery cannot be replayed later. Several `v1` appear while the
//! endpoint's secret is being rolled.
//!
//! An accepted event decides nothing by itself (see [`super`]): it names
//! the order whose payment the worker should look at again.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// How far a delivery's timestamp may be from now: Stripe's own libraries
/// default to five minutes.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// Why a delivery was refused; each names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("the Stripe-Signature header has no timestamp (t=...)")]
    NoTimestamp,
    #[error("the Stripe-Signature header has no v1 signature")]
    NoSignature,
    #[error("no v1 signature of the Stripe-Signature header matches the payload")]
    Mismatch,
    #[error("the delivery's timestamp is {age_secs} s from now, beyond the tolerance of {tolerance_secs} s")]
    OutsideTolerance { age_secs: i64, tolerance_secs: i64 },
    #[error("the payload is not a Stripe event: {0}")]
    NotAnEvent(String),
}

/// The parts of an event the payment service acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    /// `evt_...`, unique per event (Stripe may deliver one twice).
    pub id: String,
    /// `payment_intent.succeeded`, `charge.refunded`, ...
    pub kind: String,
    /// The id of the object the event is about (`pi_...`, `re_...`).
    pub object_id: String,
    /// `payment_intent`, `refund`, `charge`, ...
    pub object_kind: String,
    /// The order, from the PaymentIntent's `metadata[order_id]` that the
    /// adapter sets when it creates one.
    pub order_id: Option<String>,
    /// The PaymentIntent a refund or charge belongs to.
    pub payment_intent: Option<String>,
}

#[derive(Deserialize)]
struct RawEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: RawData,
}

#[derive(Deserialize)]
struct RawData {
    object: RawObject,
}

#[derive(Deserialize)]
struct RawObject {
    id: String,
    object: String,
    #[serde(default)]
    metadata: std::collections::HashMap<String, String>,
    #[serde(default)]
    payment_intent: Option<String>,
}

/// Checks `signature_header` over `payload` with `secret` at `now` (Unix
/// seconds), then reads the event.
pub fn verify(
    payload: &[u8],
    signature_header: &str,
    secret: &str,
    now: i64,
    tolerance_secs: i64,
) -> Result<WebhookEvent, WebhookError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in signature_header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => signatures.push(value),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(WebhookError::NoTimestamp)?;
    if signatures.is_empty() {
        return Err(WebhookError::NoSignature);
    }
    let matches = signatures.iter().any(|signature| {
        let Ok(expected) = hex::decode(signature) else { return false };
        // `verify_slice` compares in constant time.
        signed(secret, timestamp, payload).verify_slice(&expected).is_ok()
    });
    if !matches {
        return Err(WebhookError::Mismatch);
    }
    let age_secs = now - timestamp;
    if age_secs.abs() > tolerance_secs {
        return Err(WebhookError::OutsideTolerance { age_secs, tolerance_secs });
    }
    let event: RawEvent =
        serde_json::from_slice(payload).map_err(|error| WebhookError::NotAnEvent(error.to_string()))?;
    let object = event.data.object;
    Ok(WebhookEvent {
        id: event.id,
        kind: event.kind,
        order_id: object.metadata.get("order_id").cloned(),
        payment_intent: match object.object.as_str() {
            "payment_intent" => Some(object.id.clone()),
            _ => object.payment_intent,
        },
        object_id: object.id,
        object_kind: object.object,
    })
}

/// The MAC of `"{timestamp}.{payload}"` under `secret`.
fn signed(secret: &str, timestamp: i64, payload: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac
}

/// The `Stripe-Signature` header Stripe would send for `payload` at
/// `timestamp`: for tests, and for replaying a stored event by hand.
pub fn sign(payload: &[u8], secret: &str, timestamp: i64) -> String {
    let signature = hex::encode(signed(secret, timestamp, payload).finalize().into_bytes());
    format!("t={timestamp},v1={signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";
    const EVENT: &str = r#"{"id":"evt_1","object":"event","type":"payment_intent.succeeded","data":{"object":{"id":"pi_1","object":"payment_intent","metadata":{"order_id":"order-7"}}}}"#;

    #[test]
    fn a_signed_delivery_is_read_and_names_its_order() {
        let header = sign(EVENT.as_bytes(), SECRET, 1_700_000_000);
        let event =
            verify(EVENT.as_bytes(), &header, SECRET, 1_700_000_010, DEFAULT_TOLERANCE_SECS).expect("valid");
        assert_eq!(event.id, "evt_1");
        assert_eq!(event.kind, "payment_intent.succeeded");
        assert_eq!(event.order_id.as_deref(), Some("order-7"));
        assert_eq!(event.payment_intent.as_deref(), Some("pi_1"));
    }

    /// A known vector, computed independently:
    /// `printf '%s' '1700000000.{}' | openssl dgst -sha256 -hmac whsec_test_secret`.
    #[test]
    fn the_signature_is_the_hmac_of_timestamp_dot_payload() {
        assert_eq!(
            sign(b"{}", SECRET, 1_700_000_000),
            "t=1700000000,v1=ceb8863f7208fa249a6cd8f951e993c7563412aca65866f6272283debe143ab3"
        );
    }

    #[test]
    fn a_tampered_payload_a_wrong_secret_or_an_old_delivery_is_refused_by_name() {
        let header = sign(EVENT.as_bytes(), SECRET, 1_700_000_000);
        let tampered = EVENT.replace("order-7", "order-8");
        assert_eq!(
            verify(tampered.as_bytes(), &header, SECRET, 1_700_000_000, 300),
            Err(WebhookError::Mismatch)
        );
        assert_eq!(
            verify(EVENT.as_bytes(), &header, "whsec_other", 1_700_000_000, 300),
            Err(WebhookError::Mismatch)
        );
        assert_eq!(
            verify(EVENT.as_bytes(), &header, SECRET, 1_700_000_301, 300),
            Err(WebhookError::OutsideTolerance { age_secs: 301, tolerance_secs: 300 })
        );
        assert_eq!(verify(EVENT.as_bytes(), "v1=00", SECRET, 0, 300), Err(WebhookError::NoTimestamp));
        assert_eq!(verify(EVENT.as_bytes(), "t=1", SECRET, 1, 300), Err(WebhookError::NoSignature));
        assert!(matches!(
            verify(b"[]", &sign(b"[]", SECRET, 5), SECRET, 5, 300),
            Err(WebhookError::NotAnEvent(_))
        ));
    }

    #[test]
    fn any_matching_v1_is_enough_while_the_secret_is_rolled() {
        let header = sign(EVENT.as_bytes(), SECRET, 1_700_000_000);
        let old = sign(EVENT.as_bytes(), "whsec_old", 1_700_000_000);
        let old_v1 = old.split_once(",v1=").expect("v1").1;
        let both = format!("{header},v1={old_v1}");
        assert!(verify(EVENT.as_bytes(), &both, SECRET, 1_700_000_000, 300).is_ok());
        assert!(verify(EVENT.as_bytes(), &both, "whsec_old", 1_700_000_000, 300).is_ok());
    }
}
