//! A Stripe with a memory, for the adapter's flow tests and the shop's
//! saga with the Stripe provider: each request goes
//! first to a real stripe-mock, which checks it against Stripe's OpenAPI
//! document (path, parameters, key, API version) and whose refusal is
//! passed back as it is; a request stripe-mock accepts is then carried out
//! on an in-memory ledger that follows Stripe's documented PaymentIntent
//! lifecycle and idempotency rules, which stripe-mock itself does not keep
//! (it is stateless by design).
//!
//! What it models, and nothing more:
//! - idempotency: a repeated key with the same parameters gets the first
//!   answer again, marked `Idempotent-Replayed: true`; other parameters get
//!   400 `idempotency_error`;
//! - PaymentIntents: created `requires_confirmation`; confirm authorises
//!   (`requires_capture`) or, for payment method
//!   [`DECLINED_PAYMENT_METHOD`], answers 402 and records the decline;
//!   capture takes the money (`succeeded`); cancel ends an intent that took
//!   none; a step in the wrong state is 400
//!   `payment_intent_unexpected_state` naming the intent;
//! - refunds of succeeded intents, never beyond the amount;
//! - a payment Stripe settles later: [`PROCESSING_PAYMENT_METHOD`] leaves
//!   the intent `processing` until [`StripeLedger::settle`] authorises it;
//! - a lost answer: [`StripeLedger::lose_next_answer`] makes the next call
//!   whose path ends so be carried out and then answered with a 500.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Stripe's test payment method whose confirmation is declined.
pub const DECLINED_PAYMENT_METHOD: &str = "pm_card_chargeDeclined";
/// A payment method whose confirmation leaves the intent `processing`
/// until [`StripeLedger::settle`], as some payment methods do.
pub const PROCESSING_PAYMENT_METHOD: &str = "pm_ledger_processing";

#[derive(Debug, Default)]
struct Ledger {
    intents: HashMap<String, Value>,
    refunded: HashMap<String, i64>,
    /// Idempotency key -> (method and path and body, status, answer).
    answers: HashMap<String, (String, u16, Value)>,
    next_id: u64,
    lose_next: Vec<String>,
    calls: Vec<String>,
}

/// The ledger and the stripe-mock it validates against.
#[derive(Debug, Clone)]
pub struct StripeLedger {
    ledger: Arc<Mutex<Ledger>>,
    validator: String,
    http: reqwest::Client,
}

impl StripeLedger {
    /// Serves it on a loopback port; returns it and its base URL.
    pub async fn start(validator: String) -> anyhow::Result<(Self, String)> {
        let ledger =
            Self { ledger: Arc::default(), validator, http: reqwest::Client::builder().no_proxy().build()? };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = axum::Router::new().fallback(handle).with_state(ledger.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((ledger, url))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next call whose path ends with `suffix` is carried out, and its
    /// answer replaced by a 500, as if lost on the way back.
    pub fn lose_next_answer(&self, suffix: &str) {
        self.lock().lose_next.push(suffix.to_owned());
    }

    /// Settles the `processing` intents of `order_id`: authorised, as Stripe
    /// would then tell a webhook endpoint.
    pub fn settle(&self, order_id: &str) {
        for intent in self.lock().intents.values_mut() {
            if intent["metadata"]["order_id"] == order_id && intent["status"] == "processing" {
                intent["status"] = json!("requires_capture");
            }
        }
    }

    /// Money held for `order_id`: captured minus refunded, over its intents.
    pub fn money_held_for(&self, order_id: &str) -> i64 {
        let ledger = self.lock();
        ledger
            .intents
            .values()
            .filter(|intent| intent["metadata"]["order_id"] == order_id)
            .map(|intent| {
                let id = intent["id"].as_str().unwrap_or_default();
                intent["amount_received"].as_i64().unwrap_or(0)
                    - ledger.refunded.get(id).copied().unwrap_or(0)
            })
            .sum()
    }

    /// The status of each intent of `order_id`.
    pub fn statuses_of(&self, order_id: &str) -> Vec<String> {
        let ledger = self.lock();
        ledger
            .intents
            .values()
            .filter(|intent| intent["metadata"]["order_id"] == order_id)
            .map(|intent| intent["status"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// `METHOD path` of every call stripe-mock accepted, in order.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }
}

fn error(status: u16, kind: &str, code: &str, message: &str, intent: Option<&Value>) -> (u16, Value) {
    let mut error = json!({ "type": kind, "code": code, "message": message });
    if let Some(intent) = intent {
        error["payment_intent"] = intent.clone();
    }
    (status, json!({ "error": error }))
}

async fn handle(
    State(stripe): State<StripeLedger>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // stripe-mock first: a request Stripe's spec refuses is refused here.
    let mut forward = stripe.http.request(method.clone(), format!("{}{}", stripe.validator, uri));
    for name in ["authorization", "stripe-version", "content-type", "idempotency-key"] {
        if let Some(value) = headers.get(name) {
            forward = forward.header(name, value);
        }
    }
    let validated = match forward.body(body.clone()).send().await {
        Ok(response) => response,
        Err(error) => return (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    };
    if !validated.status().is_success() {
        let status = validated.status().as_u16();
        let text = validated.text().await.unwrap_or_default();
        return answer(status, serde_json::from_str(&text).unwrap_or(Value::Null), false);
    }

    let path = uri.path().to_owned();
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let key = headers.get("idempotency-key").and_then(|value| value.to_str().ok()).map(str::to_owned);
    let fingerprint = format!("{method} {path} {}", String::from_utf8_lossy(&body));
    let mut ledger = stripe.lock();
    ledger.calls.push(format!("{method} {path}"));
    if let Some(key) = &key
        && let Some((first, status, value)) = ledger.answers.get(key)
    {
        if *first != fingerprint {
            let (status, value) = error(
                400,
                "idempotency_error",
                "idempotency_key_in_use",
                "Keys for idempotent requests can only be used with the same parameters they were first used with.",
                None,
            );
            return answer(status, value, false);
        }
        return answer(*status, value.clone(), true);
    }
    let (status, value) = carry_out(&mut ledger, &method, &path, &form);
    if let Some(key) = key {
        ledger.answers.insert(key, (fingerprint, status, value.clone()));
    }
    if let Some(position) = ledger.lose_next.iter().position(|suffix| path.ends_with(suffix.as_str())) {
        ledger.lose_next.remove(position);
        return (StatusCode::INTERNAL_SERVER_ERROR, "answer lost").into_response();
    }
    answer(status, value, false)
}

fn answer(status: u16, value: Value, replayed: bool) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(value)).into_response();
    if replayed {
        response.headers_mut().insert("Idempotent-Replayed", "true".parse().expect("header"));
    }
    response
}

fn carry_out(
    ledger: &mut Ledger,
    method: &Method,
    path: &str,
    form: &HashMap<String, String>,
) -> (u16, Value) {
    let parts: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    ledger.next_id += 1;
    let next_id = ledger.next_id;
    match (method.as_str(), parts.as_slice()) {
        ("POST", ["payment_intents"]) => {
            let id = format!("pi_ledger{next_id}");
            let intent = json!({
                "id": id,
                "object": "payment_intent",
                "status": "requires_confirmation",
                "amount": form.get("amount").and_then(|amount| amount.parse::<i64>().ok()).unwrap_or(0),
                "amount_received": 0,
                "currency": form.get("currency"),
                "payment_method": form.get("payment_method"),
                "metadata": { "order_id": form.get("metadata[order_id]") },
                "last_payment_error": null,
                "cancellation_reason": null,
            });
            ledger.intents.insert(id, intent.clone());
            (200, intent)
        }
        ("GET", ["payment_intents", id]) => match ledger.intents.get(*id) {
            Some(intent) => (200, intent.clone()),
            None => error(404, "invalid_request_error", "resource_missing", "No such payment_intent", None),
        },
        ("POST", ["payment_intents", id, step]) => {
            let Some(intent) = ledger.intents.get_mut(*id) else {
                return error(
                    404,
                    "invalid_request_error",
                    "resource_missing",
                    "No such payment_intent",
                    None,
                );
            };
            let status = intent["status"].as_str().unwrap_or_default().to_owned();
            let allowed = match *step {
                "confirm" => ["requires_confirmation", "requires_payment_method"].contains(&status.as_str()),
                "capture" => status == "requires_capture",
                "cancel" => !["succeeded", "canceled", "processing"].contains(&status.as_str()),
                _ => false,
            };
            if !allowed {
                let message = format!("This PaymentIntent's status is {status}; it cannot {step}.");
                return error(
                    400,
                    "invalid_request_error",
                    "payment_intent_unexpected_state",
                    &message,
                    Some(intent),
                );
            }
            match *step {
                "confirm" if intent["payment_method"] == DECLINED_PAYMENT_METHOD => {
                    intent["status"] = json!("requires_payment_method");
                    intent["last_payment_error"] = json!({ "type": "card_error", "code": "card_declined", "decline_code": "generic_decline", "message": "Your card was declined." });
                    let snapshot = intent.clone();
                    return error(
                        402,
                        "card_error",
                        "card_declined",
                        "Your card was declined.",
                        Some(&snapshot),
                    );
                }
                "confirm" if intent["payment_method"] == PROCESSING_PAYMENT_METHOD => {
                    intent["status"] = json!("processing");
                }
                "confirm" => intent["status"] = json!("requires_capture"),
                "capture" => {
                    intent["status"] = json!("succeeded");
                    intent["amount_received"] = intent["amount"].clone();
                }
                _ => {
                    intent["status"] = json!("canceled");
                    intent["cancellation_reason"] = json!(form.get("cancellation_reason"));
                }
            }
            (200, intent.clone())
        }
        ("POST", ["refunds"]) => {
            let intent_id = form.get("payment_intent").cloned().unwrap_or_default();
            let Some(intent) = ledger.intents.get(&intent_id) else {
                return error(
                    404,
                    "invalid_request_error",
                    "resource_missing",
                    "No such payment_intent",
                    None,
                );
            };
            let received = intent["amount_received"].as_i64().unwrap_or(0);
            let amount = form.get("amount").and_then(|amount| amount.parse::<i64>().ok()).unwrap_or(received);
            let refunded = ledger.refunded.get(&intent_id).copied().unwrap_or(0);
            if intent["status"] != "succeeded" || refunded + amount > received {
                return error(
                    400,
                    "invalid_request_error",
                    "charge_already_refunded",
                    "Nothing left to refund.",
                    None,
                );
            }
            ledger.refunded.insert(intent_id.clone(), refunded + amount);
            (
                200,
                json!({ "id": format!("re_ledger{next_id}"), "object": "refund", "status": "succeeded", "amount": amount, "payment_intent": intent_id }),
            )
        }
        _ => error(
            404,
            "invalid_request_error",
            "unmodelled",
            &format!("the ledger does not model {method} {path}"),
            None,
        ),
    }
}
