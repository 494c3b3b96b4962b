//! The Stripe adapter: charges are PaymentIntents over Stripe's REST API,
//! with Stripe's own idempotency keys derived from our order id.
//!
//! # How a charge moves money, and why in three steps
//!
//! 1. **Create** the PaymentIntent, unconfirmed (`capture_method=manual`),
//!    with `Idempotency-Key: <order id>`. This moves no money. Repeating it
//!    with the same key returns the same PaymentIntent (Stripe replays the
//!    first answer for 24 hours), so the order id finds its PaymentIntent
//!    without any id of Stripe's stored on our side.
//! 2. **Confirm** it with the card (`<order id>-confirm`): the card is
//!    authorised, or declined (HTTP 402). `error_on_requires_action` makes a
//!    card that asks for 3-D Secure a decline rather than a payment waiting
//!    for a customer this server-side checkout cannot reach.
//! 3. **Capture** it (`<order id>-capture`): the money is taken.
//!
//! A replayed answer is the *first* answer, not the current state, so after
//! a replay (Stripe marks it `Idempotent-Replayed: true`) the adapter reads
//! the PaymentIntent afresh and continues from its real status. Any step
//! can therefore be retried after a lost answer or a crash: the next
//! attempt walks on from wherever Stripe is.
//!
//! # Voids
//!
//! An order that died while its charge's outcome was unknown is voided by
//! repeating step 1 (the same request, so the same PaymentIntent, or a new
//! one that moves no money) and then cancelling it (an authorisation is
//! released) or, if it was captured, refunding it in full. A confirm still
//! in flight from a crashed process then meets a cancelled PaymentIntent
//! and takes nothing. This is why step 1 must be unconfirmed: a void that
//! repeats a *confirming* create could be the call that charges the card.
//!
//! # Errors
//!
//! No answer, 409 (a concurrent request with the same key), 429, 5xx, and
//! 401/403 (a wrong key is the operator's to fix, not the customer's to
//! suffer) are [`ProviderError::Unavailable`]: retried with backoff behind
//! the breaker. A 402, or a 400 about the card (no such payment method, an
//! amount Stripe refuses), is a decline with Stripe's message.
//!
//! Webhooks ([`webhook`]) carry no decision: a verified event only makes
//! the payment of its order due again, and the worker reads the outcome
//! from the API. Notifications are hints; Stripe's API is the truth.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::provider::{
    ChargeOutcome, ChargeRequest, PaymentProvider, ProviderError, RefundRequest, VoidOutcome,
};

pub mod webhook;

/// The Stripe API version this adapter is written against, sent with every
/// request (`Stripe-Version`), so that the account's default version can
/// change without changing what the adapter sees. It is the version of the
/// OpenAPI document of the stripe-mock the tests run (e2e/stripe/go.mod),
/// which refuses any other (`-strict-version-check`).
pub const API_VERSION: &str = "2026-08-26.dahlia";

/// Where and how to reach Stripe.
#[derive(Clone)]
pub struct StripeSettings {
    /// `https://api.stripe.com` in production; stripe-mock's address in tests.
    pub api_base: String,
    /// The secret API key (`sk_live_...`, `sk_test_...`).
    pub secret_key: String,
    /// Longest wait for one HTTP call.
    pub timeout: Duration,
}

impl std::fmt::Debug for StripeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeSettings")
            .field("api_base", &self.api_base)
            .field("secret_key", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The fields of a PaymentIntent the adapter decides on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub last_payment_error: Option<ApiError>,
    #[serde(default)]
    pub cancellation_reason: Option<String>,
}

/// Stripe's error object (`{"error": {...}}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ApiError {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub decline_code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    /// The PaymentIntent the failed call was about, as it is now.
    #[serde(default)]
    pub payment_intent: Option<Box<PaymentIntent>>,
}

impl ApiError {
    /// Stripe's message, else its code, else its type.
    pub fn describe(&self) -> String {
        match (&self.message, &self.decline_code.as_ref().or(self.code.as_ref())) {
            (Some(message), _) => message.clone(),
            (None, Some(code)) => code.to_string(),
            (None, None) => self.kind.clone(),
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ApiError,
}

/// The fields of a Refund the adapter decides on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Refund {
    pub id: String,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub failure_reason: Option<String>,
}

/// How a call to Stripe failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No answer, an unreadable one, or one that says to try again later.
    #[error("{0}")]
    Retry(String),
    /// Stripe refused the request (HTTP 400, 402 or 404).
    #[error("Stripe refused the request (HTTP {status}): {}", error.describe())]
    Refused { status: u16, error: ApiError },
}

impl From<CallError> for ProviderError {
    fn from(error: CallError) -> Self {
        ProviderError::Unavailable(format!("stripe: {error}"))
    }
}

/// One answer, and whether Stripe replayed it for a repeated idempotency
/// key (then it is the first answer, not the current state).
#[derive(Debug, Clone)]
pub struct Reply<T> {
    pub value: T,
    pub replayed: bool,
}

/// Most steps one charge takes (create, confirm, capture, with a re-read
/// after a replay or an unexpected state): more means Stripe answers in a
/// way this adapter does not follow, and the charge is retried later.
const MAX_STEPS: usize = 6;

/// The Stripe provider. Cheap to share behind an `Arc`.
#[derive(Clone)]
pub struct StripeProvider {
    http: reqwest::Client,
    settings: StripeSettings,
}

impl std::fmt::Debug for StripeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeProvider").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl StripeProvider {
    /// A provider calling `settings.api_base`, verifying TLS against the
    /// system's certificate store.
    pub fn new(settings: StripeSettings) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("commerce-stack-payment/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, settings })
    }

    /// Sends one request and decodes its answer as `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        idempotency_key: Option<&str>,
        form: &[(&str, &str)],
    ) -> Result<Reply<T>, CallError> {
        let url = format!("{}{path}", self.settings.api_base.trim_end_matches('/'));
        let mut request = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.settings.secret_key)
            .header("Stripe-Version", API_VERSION);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        if method == reqwest::Method::POST {
            let mut body = url::form_urlencoded::Serializer::new(String::new());
            body.extend_pairs(form);
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body.finish());
        }
        let response = request
            .send()
            .await
            .map_err(|error| CallError::Retry(format!("{method} {path}: {}", crate::error_chain(&error))))?;
        let status = response.status();
        let replayed = response
            .headers()
            .get("Idempotent-Replayed")
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"true"));
        let body = response
            .bytes()
            .await
            .map_err(|error| CallError::Retry(format!("{method} {path}: reading the answer: {error}")))?;
        if status.is_success() {
            let value = serde_json::from_slice(&body).map_err(|error| {
                CallError::Retry(format!("{method} {path}: unreadable answer (HTTP {status}): {error}"))
            })?;
            return Ok(Reply { value, replayed });
        }
        let error = serde_json::from_slice::<ErrorBody>(&body).map(|body| body.error);
        match (status.as_u16(), error) {
            (400 | 402 | 404, Ok(error)) => Err(CallError::Refused { status: status.as_u16(), error }),
            (code, Ok(error)) => {
                Err(CallError::Retry(format!("{method} {path}: HTTP {code}: {}", error.describe())))
            }
            (code, Err(_)) => {
                Err(CallError::Retry(format!("{method} {path}: HTTP {code} without an error object")))
            }
        }
    }

    /// Step 1: creates the charge's PaymentIntent, unconfirmed, or finds it
    /// again (same key, same parameters: Stripe replays the first answer).
    pub async fn create_intent(&self, charge: &ChargeRequest) -> Result<Reply<PaymentIntent>, CallError> {
        let amount = charge.amount.to_string();
        let currency = charge.currency.to_ascii_lowercase();
        let form = [
            ("amount", amount.as_str()),
            ("currency", currency.as_str()),
            ("capture_method", "manual"),
            ("payment_method", charge.payment_method_token.as_str()),
            ("payment_method_types[0]", "card"),
            ("metadata[order_id]", charge.idempotency_key.as_str()),
        ];
        self.call(reqwest::Method::POST, "/v1/payment_intents", Some(&charge.idempotency_key), &form).await
    }

    /// Reads a PaymentIntent as it is now.
    pub async fn retrieve_intent(&self, id: &str) -> Result<PaymentIntent, CallError> {
        let path = format!("/v1/payment_intents/{id}");
        Ok(self.call(reqwest::Method::GET, &path, None, &[]).await?.value)
    }

    /// Step 2: authorises the card.
    pub async fn confirm_intent(&self, id: &str, key: &str) -> Result<Reply<PaymentIntent>, CallError> {
        let path = format!("/v1/payment_intents/{id}/confirm");
        let key = format!("{key}-confirm");
        self.call(reqwest::Method::POST, &path, Some(&key), &[("error_on_requires_action", "true")]).await
    }

    /// Step 3: takes the authorised money.
    pub async fn capture_intent(&self, id: &str, key: &str) -> Result<Reply<PaymentIntent>, CallError> {
        let path = format!("/v1/payment_intents/{id}/capture");
        let key = format!("{key}-capture");
        self.call(reqwest::Method::POST, &path, Some(&key), &[]).await
    }

    /// Cancels a PaymentIntent that has taken no money (an authorisation is
    /// released).
    pub async fn cancel_intent(&self, id: &str, key: &str) -> Result<Reply<PaymentIntent>, CallError> {
        let path = format!("/v1/payment_intents/{id}/cancel");
        let key = format!("{key}-void");
        self.call(reqwest::Method::POST, &path, Some(&key), &[("cancellation_reason", "abandoned")]).await
    }

    /// Refunds `amount` of a captured PaymentIntent.
    pub async fn create_refund(
        &self,
        intent: &str,
        amount: i64,
        key: &str,
    ) -> Result<Reply<Refund>, CallError> {
        let amount = amount.to_string();
        let form = [("payment_intent", intent), ("amount", amount.as_str())];
        self.call(reqwest::Method::POST, "/v1/refunds", Some(key), &form).await
    }

    /// The charge's PaymentIntent as it is now: created or found by step 1,
    /// read afresh when step 1's answer was a replay.
    async fn current_intent(&self, charge: &ChargeRequest) -> Result<PaymentIntent, CallError> {
        let created = self.create_intent(charge).await?;
        if created.replayed {
            return self.retrieve_intent(&created.value.id).await;
        }
        Ok(created.value)
    }

    /// Where a refused step leaves the PaymentIntent: Stripe names it in
    /// the error when the call was about it (a declined confirm, a cancel of
    /// a captured one); else it is re-read.
    async fn after_refusal(&self, id: &str, error: ApiError) -> Result<PaymentIntent, CallError> {
        match error.payment_intent {
            Some(intent) => Ok(*intent),
            None => self.retrieve_intent(id).await,
        }
    }
}

/// The decision for one status of the charge's PaymentIntent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeStep {
    Confirm,
    Capture,
    Done(ChargeOutcome),
    /// Stripe is still working on it (`processing`): try again later.
    Wait(String),
}

/// What a charge does next with a PaymentIntent in `intent`'s state; pure,
/// the heart of the adapter.
pub fn next_charge_step(intent: &PaymentIntent) -> ChargeStep {
    match intent.status.as_str() {
        "succeeded" => ChargeStep::Done(ChargeOutcome::Captured { reference: intent.id.clone() }),
        "requires_capture" => ChargeStep::Capture,
        // A confirm that was declined leaves the intent waiting for another
        // card with the decline recorded; this checkout has no other card.
        "requires_payment_method" if intent.last_payment_error.is_some() => {
            let reason = intent.last_payment_error.as_ref().map(ApiError::describe).unwrap_or_default();
            ChargeStep::Done(ChargeOutcome::Declined { reason: format!("card declined: {reason}") })
        }
        "requires_payment_method" | "requires_confirmation" => ChargeStep::Confirm,
        "canceled" => ChargeStep::Done(ChargeOutcome::Declined {
            reason: match &intent.cancellation_reason {
                Some(reason) => format!("charge voided ({reason})"),
                None => "charge voided".to_owned(),
            },
        }),
        "requires_action" => ChargeStep::Done(ChargeOutcome::Declined {
            reason: "the card requires customer authentication".to_owned(),
        }),
        "processing" => ChargeStep::Wait(format!("payment intent {} is processing", intent.id)),
        other => ChargeStep::Wait(format!("payment intent {} has an unknown status {other:?}", intent.id)),
    }
}

/// A refused confirm or create that is about the card or the amount (not
/// about the PaymentIntent's state): the charge is declined.
fn declined_by(error: &ApiError) -> ChargeOutcome {
    ChargeOutcome::Declined { reason: error.describe() }
}

#[async_trait]
impl PaymentProvider for StripeProvider {
    fn name(&self) -> &'static str {
        "stripe"
    }

    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, ProviderError> {
        let mut intent = match self.current_intent(request).await {
            Ok(intent) => intent,
            // A card Stripe does not know, an amount or currency it refuses.
            Err(CallError::Refused { error, .. }) => return Ok(declined_by(&error)),
            Err(error) => return Err(error.into()),
        };
        for _ in 0..MAX_STEPS {
            let step = match next_charge_step(&intent) {
                ChargeStep::Done(outcome) => return Ok(outcome),
                ChargeStep::Wait(reason) => return Err(ProviderError::Pending(reason)),
                ChargeStep::Confirm => self.confirm_intent(&intent.id, &request.idempotency_key).await,
                ChargeStep::Capture => self.capture_intent(&intent.id, &request.idempotency_key).await,
            };
            intent = match step {
                Ok(reply) if reply.replayed => self.retrieve_intent(&reply.value.id).await?,
                Ok(reply) => reply.value,
                // A decline (402) names the intent, now back waiting for a
                // payment method with the decline recorded.
                Err(CallError::Refused { error, .. })
                    if error.code.as_deref() == Some("payment_intent_unexpected_state") =>
                {
                    self.after_refusal(&intent.id, error).await?
                }
                Err(CallError::Refused { status: 402, error }) => match error.payment_intent {
                    Some(intent) if intent.last_payment_error.is_some() => *intent,
                    _ => return Ok(declined_by(&error)),
                },
                Err(CallError::Refused { error, .. }) => return Ok(declined_by(&error)),
                Err(error) => return Err(error.into()),
            };
        }
        Err(ProviderError::Unavailable(format!(
            "payment intent {} did not settle in {MAX_STEPS} steps (status {:?})",
            intent.id, intent.status
        )))
    }

    async fn void(&self, charge: &ChargeRequest) -> Result<VoidOutcome, ProviderError> {
        let key = charge.idempotency_key.as_str();
        let mut intent = match self.current_intent(charge).await {
            Ok(intent) => intent,
            // Stripe refuses to create it, so no charge under this key
            // could ever have taken money.
            Err(CallError::Refused { .. }) => return Ok(VoidOutcome::NothingCharged),
            Err(error) => return Err(error.into()),
        };
        for _ in 0..MAX_STEPS {
            match intent.status.as_str() {
                "canceled" => return Ok(VoidOutcome::NothingCharged),
                "succeeded" => {
                    let refund =
                        self.create_refund(&intent.id, charge.amount, &format!("{key}-void")).await?;
                    return Ok(VoidOutcome::Reversed { reference: refund.value.id });
                }
                "processing" => {
                    return Err(ProviderError::Pending(format!(
                        "payment intent {} is processing; voided once it settles",
                        intent.id
                    )));
                }
                _ => {}
            }
            let held = intent.status == "requires_capture";
            intent = match self.cancel_intent(&intent.id, key).await {
                Ok(reply) if held => {
                    return Ok(VoidOutcome::Reversed { reference: reply.value.id });
                }
                Ok(_) => return Ok(VoidOutcome::NothingCharged),
                // It moved on meanwhile (captured by a call in flight):
                // decide again from where it is.
                Err(CallError::Refused { error, .. }) => self.after_refusal(&intent.id, error).await?,
                Err(error) => return Err(error.into()),
            };
        }
        Err(ProviderError::Unavailable(format!("payment intent {} could not be voided", intent.id)))
    }

    async fn refund(&self, request: &RefundRequest) -> Result<String, ProviderError> {
        let refund = self
            .create_refund(&request.charge_reference, request.amount, &request.idempotency_key)
            .await?
            .value;
        match refund.status.as_deref() {
            Some("failed" | "canceled") => Err(ProviderError::Unavailable(format!(
                "stripe refund {} {}: {}",
                refund.id,
                refund.status.as_deref().unwrap_or_default(),
                refund.failure_reason.as_deref().unwrap_or("no reason given")
            ))),
            // `pending` and `requires_action` complete at Stripe's pace; the
            // refund is Stripe's to carry out from here.
            _ => Ok(refund.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(status: &str) -> PaymentIntent {
        PaymentIntent {
            id: "pi_1".to_owned(),
            status: status.to_owned(),
            last_payment_error: None,
            cancellation_reason: None,
        }
    }

    #[test]
    fn each_status_of_a_payment_intent_has_one_next_step() {
        assert_eq!(next_charge_step(&intent("requires_confirmation")), ChargeStep::Confirm);
        assert_eq!(next_charge_step(&intent("requires_payment_method")), ChargeStep::Confirm);
        assert_eq!(next_charge_step(&intent("requires_capture")), ChargeStep::Capture);
        assert_eq!(
            next_charge_step(&intent("succeeded")),
            ChargeStep::Done(ChargeOutcome::Captured { reference: "pi_1".to_owned() })
        );
        assert!(matches!(
            next_charge_step(&intent("canceled")),
            ChargeStep::Done(ChargeOutcome::Declined { reason }) if reason == "charge voided"
        ));
        assert!(matches!(next_charge_step(&intent("processing")), ChargeStep::Wait(_)));
        assert!(matches!(
            next_charge_step(&intent("requires_action")),
            ChargeStep::Done(ChargeOutcome::Declined { .. })
        ));
        let declined = PaymentIntent {
            last_payment_error: Some(ApiError {
                kind: "card_error".to_owned(),
                code: Some("card_declined".to_owned()),
                decline_code: Some("insufficient_funds".to_owned()),
                message: Some("Your card has insufficient funds.".to_owned()),
                payment_intent: None,
            }),
            ..intent("requires_payment_method")
        };
        assert_eq!(
            next_charge_step(&declined),
            ChargeStep::Done(ChargeOutcome::Declined {
                reason: "card declined: Your card has insufficient funds.".to_owned()
            })
        );
    }

    #[test]
    fn the_settings_never_print_the_secret_key() {
        let settings = StripeSettings {
            api_base: "http://127.0.0.1:1".to_owned(),
            secret_key: "sk_test_secret".to_owned(),
            timeout: Duration::from_secs(1),
        };
        assert!(!format!("{settings:?}").contains("sk_test_secret"));
        let provider = StripeProvider::new(settings).expect("client");
        assert!(!format!("{provider:?}").contains("sk_test_secret"));
    }
}
