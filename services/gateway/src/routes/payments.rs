//! `POST /api/payments/webhooks/stripe`: Stripe's webhook deliveries,
//! passed byte for byte with their `Stripe-Signature` header to the payment
//! service, which holds the endpoint's signing secret and checks it. Public
//! (Stripe sends no bearer token); a delivery whose signature does not
//! verify is refused with 401, and Stripe retries deliveries that fail.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use commerce_platform::resilience::idempotent;
use commerce_proto::payment::v1 as pb;

use super::grpc;
use crate::dto::WebhookReceipt;
use crate::problem::Problem;
use crate::state::AppState;

/// The header Stripe signs each delivery with.
pub const STRIPE_SIGNATURE: &str = "Stripe-Signature";

/// Hands one delivery to the payment service. A delivery changes nothing
/// but when a waiting payment is looked at again, so a retry is harmless.
pub async fn stripe_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<WebhookReceipt>, Problem> {
    let signature = headers
        .get(STRIPE_SIGNATURE)
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.is_empty())
        .ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "validation",
                format!(
                    "the {STRIPE_SIGNATURE} header is missing: only Stripe's signed deliveries are taken"
                ),
            )
        })?;
    let request = pb::ReceiveProviderWebhookRequest {
        provider: "stripe".to_owned(),
        payload: body.to_vec(),
        signature: signature.to_owned(),
    };
    let receipt = state
        .payment()?
        .receive_provider_webhook(idempotent(request))
        .await
        .map_err(grpc("payment"))?
        .into_inner();
    Ok(Json(WebhookReceipt {
        event_id: receipt.event_id,
        event_type: receipt.event_type,
        payment_due: receipt.payment_due,
    }))
}
