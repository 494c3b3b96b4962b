//! A thin REST client of the gateway for tests: requests and the JSON
//! shapes of `services/gateway/src/dto.rs`, accounts, products with known
//! stock, orders, and bounded waits on an order's status ([`Api`]); and a
//! logged-in [`Client`] whose requests ride out a shop under faults
//! (repeated on 5xx or no answer, with one Idempotency-Key).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::shop::{ADMIN_EMAIL, ADMIN_PASSWORD, COURIER_EMAIL, COURIER_PASSWORD, Shop};
use super::wait_for;

/// How long an order may take to reach the state a test waits for: the
/// saga takes well under a second on an idle machine, but two busy cores
/// and fifty buyers at once stretch it.
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two polls of an order's status.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Registrations and logins in flight at once. Each costs the auth service
/// an argon2id hash, which takes about half a second of CPU in a debug
/// build; more at once on two busy cores would outlast the gateway's 2 s
/// deadline on auth (504). The wait happens here, outside the deadline.
static PASSWORD_CALLS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
/// Sessions of the bootstrap accounts per gateway and email: one login per
/// test binary rather than per test (access tokens last 15 minutes).
static BOOTSTRAP_SESSIONS: Mutex<BTreeMap<(String, String, String), Session>> = Mutex::new(BTreeMap::new());

/// An answer of the gateway.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    /// The JSON body (`Null` when empty or not JSON).
    pub body: Value,
}

impl Answer {
    /// The body if the status is `expected`, else an error showing both.
    pub fn expect(self, expected: StatusCode) -> anyhow::Result<Value> {
        if self.status != expected {
            bail!("expected {expected}, got {} {}", self.status, self.body);
        }
        Ok(self.body)
    }

    /// A problem+json 4xx (never 5xx), as every refused request must be.
    pub fn assert_problem(&self, what: &str) {
        assert!(self.status.is_client_error(), "{what}: expected a 4xx, got {} {}", self.status, self.body);
        assert!(
            self.content_type.starts_with("application/problem+json"),
            "{what}: expected application/problem+json, got {:?} ({})",
            self.content_type,
            self.body
        );
        assert_eq!(
            self.body["status"].as_u64(),
            Some(u64::from(self.status.as_u16())),
            "{what}: {}",
            self.body
        );
    }
}

/// The gateway of one shop.
#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    /// Which shop answers at `base` (its run id): bootstrap sessions are
    /// cached per shop, not per URL, since a later shop may get the port of
    /// a stopped one, whose tokens its gateway does not know.
    pub shop: String,
}

/// A logged-in user.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: String,
    pub email: String,
    pub access_token: String,
}

impl Api {
    pub fn new(shop: &Shop) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .build()
            .unwrap_or_else(|error| panic!("cannot build an HTTP client: {error}"));
        Self { base: shop.gateway_url.clone(), http, shop: shop.run_id.clone() }
    }

    /// A request to `path`, not sent yet: `token` as bearer, `body` as JSON.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        request
    }

    /// Any request: `token` as bearer, `body` as JSON.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let request = self.request(method.clone(), path, token, body);
        self.send(request).await.with_context(|| format!("{method} {path}"))
    }

    /// Sends a prepared request and reads the answer.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Answer> {
        let response = request.send().await?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Answer { status, content_type, body })
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> anyhow::Result<Answer> {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> anyhow::Result<Answer> {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// Registers a new customer with a unique email and returns its session.
    pub async fn register_customer(&self, name: &str) -> anyhow::Result<Session> {
        let email = format!("{name}-{}@e2e.commerce.test", uuid::Uuid::new_v4().simple());
        let body = json!({"email": email, "password": "correct horse battery", "display_name": name});
        let _permit = PASSWORD_CALLS.acquire().await?;
        let answer = self.post("/api/auth/register", None, &body).await?.expect(StatusCode::CREATED)?;
        session(&answer)
    }

    /// Logs in with a password.
    pub async fn login(&self, email: &str, password: &str) -> anyhow::Result<Session> {
        let _permit = PASSWORD_CALLS.acquire().await?;
        let answer = self
            .post("/api/auth/login", None, &json!({"email": email, "password": password}))
            .await?
            .expect(StatusCode::OK)?;
        session(&answer)
    }

    /// The bootstrap admin.
    pub async fn admin(&self) -> anyhow::Result<Session> {
        self.bootstrap_session(ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    /// The bootstrap courier.
    pub async fn courier(&self) -> anyhow::Result<Session> {
        self.bootstrap_session(COURIER_EMAIL, COURIER_PASSWORD).await
    }

    /// A bootstrap account's session, logged in once per shop.
    async fn bootstrap_session(&self, email: &str, password: &str) -> anyhow::Result<Session> {
        let key = (self.shop.clone(), self.base.clone(), email.to_owned());
        let cached =
            BOOTSTRAP_SESSIONS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key).cloned();
        if let Some(session) = cached {
            return Ok(session);
        }
        let session = self.login(email, password).await?;
        BOOTSTRAP_SESSIONS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, session.clone());
        Ok(session)
    }

    /// A new category (admin), returning its id.
    pub async fn create_category(&self, admin: &Session, name: &str) -> anyhow::Result<String> {
        let slug =
            format!("{}-{}", name.to_ascii_lowercase().replace(' ', "-"), uuid::Uuid::new_v4().simple());
        let body = json!({"name": name, "slug": slug});
        let category = self
            .post("/api/admin/categories", Some(&admin.access_token), &body)
            .await?
            .expect(StatusCode::CREATED)?;
        string(&category, "id")
    }

    /// A new active product (admin) priced `price_minor` EUR cents, with
    /// `stock` units received (none when 0). Returns its id.
    pub async fn create_product(
        &self,
        admin: &Session,
        category_id: &str,
        name: &str,
        price_minor: i64,
        stock: i64,
    ) -> anyhow::Result<String> {
        let body = json!({
            "sku": format!("SKU-{}", uuid::Uuid::new_v4().simple()),
            "name": name,
            "description": format!("{name}, made for an end-to-end test"),
            "category_id": category_id,
            "price": {"currency": "EUR", "amount_minor": price_minor},
        });
        let product = self
            .post("/api/admin/products", Some(&admin.access_token), &body)
            .await?
            .expect(StatusCode::CREATED)?;
        let id = string(&product, "id")?;
        if stock > 0 {
            let level = self
                .post(
                    &format!("/api/admin/inventory/{id}/restock"),
                    Some(&admin.access_token),
                    &json!({"quantity": stock, "note": "e2e initial stock"}),
                )
                .await?
                .expect(StatusCode::OK)?;
            anyhow::ensure!(level["available"] == json!(stock), "restock answered {level}");
        }
        Ok(id)
    }

    /// Places an order of `lines` (product id, quantity) with `key` as its
    /// Idempotency-Key; returns the raw answer.
    pub async fn place_order(
        &self,
        customer: &Session,
        key: &str,
        lines: &[(&str, i64)],
        payment_token: &str,
    ) -> anyhow::Result<Answer> {
        let body = order_body(lines, payment_token);
        let request = self
            .request(Method::POST, "/api/orders", Some(&customer.access_token), Some(&body))
            .header("Idempotency-Key", key);
        self.send(request).await.context("POST /api/orders")
    }

    /// Places an order that must be accepted (201); returns its id.
    pub async fn order(
        &self,
        customer: &Session,
        lines: &[(&str, i64)],
        payment_token: &str,
    ) -> anyhow::Result<String> {
        let key = uuid::Uuid::new_v4().to_string();
        let order =
            self.place_order(customer, &key, lines, payment_token).await?.expect(StatusCode::CREATED)?;
        string(&order, "id")
    }

    /// Cancels the customer's order, which must be accepted (200); returns
    /// the order.
    pub async fn cancel_order(&self, customer: &Session, id: &str, reason: &str) -> anyhow::Result<Value> {
        let path = format!("/api/orders/{id}/cancel");
        self.post(&path, Some(&customer.access_token), &json!({ "reason": reason }))
            .await?
            .expect(StatusCode::OK)
    }

    /// The order as its owner sees it.
    pub async fn get_order(&self, customer: &Session, id: &str) -> anyhow::Result<Value> {
        self.get(&format!("/api/orders/{id}"), Some(&customer.access_token)).await?.expect(StatusCode::OK)
    }

    /// Polls the order until its status is `status`; fails at once if it
    /// reaches another terminal status, or after [`ORDER_TIMEOUT`].
    pub async fn wait_order(&self, customer: &Session, id: &str, status: &str) -> anyhow::Result<Value> {
        let deadline = Instant::now() + ORDER_TIMEOUT;
        loop {
            let order = self.get_order(customer, id).await?;
            let current = order["status"].as_str().unwrap_or_default();
            if current == status {
                return Ok(order);
            }
            if ["rejected", "failed", "cancelled", "delivered"].contains(&current) {
                bail!("order {id} ended {current}, not {status}: {order}");
            }
            if Instant::now() > deadline {
                bail!("order {id} is still {current} after {ORDER_TIMEOUT:?}, not {status}: {order}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Polls the order until `done(order)`, bounded by [`ORDER_TIMEOUT`].
    pub async fn wait_order_until(
        &self,
        customer: &Session,
        id: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let (order, _) = wait_for(what, ORDER_TIMEOUT, || async {
            Ok(Some(self.get_order(customer, id).await?).filter(|order| done(order)))
        })
        .await?;
        Ok(order)
    }
}

/// A logged-in user of a shop under faults: each request of [`retrying`]
/// is repeated while the shop answers 5xx or not at all.
///
/// [`retrying`]: Client::retrying
#[derive(Debug, Clone)]
pub struct Client {
    pub api: Api,
    /// The access token, sent as bearer (none when empty).
    pub token: String,
}

impl Client {
    /// Logs in (or registers, for a new customer) and keeps the access
    /// token; each request is [retried](Self::retrying) for up to 30 s.
    pub async fn session(api: &Api, email: &str, password: &str, register: bool) -> anyhow::Result<Self> {
        let mut client = Self { api: api.clone(), token: String::new() };
        let login = json!({ "email": email, "password": password });
        let timeout = Duration::from_secs(30);
        let path = if register { "/api/auth/register" } else { "/api/auth/login" };
        let answer = if register {
            let body = json!({ "email": email, "password": password, "display_name": "Chaos" });
            match client.retrying(Method::POST, path, Some(&body), None, timeout).await {
                Ok(answer) => answer,
                // A retried registration whose first attempt went through
                // (the answer was lost): the account exists, log in.
                Err(error) if Refused::status(&error) == Some(StatusCode::CONFLICT) => {
                    client.retrying(Method::POST, "/api/auth/login", Some(&login), None, timeout).await?
                }
                Err(error) => return Err(error),
            }
        } else {
            client.retrying(Method::POST, path, Some(&login), None, timeout).await?
        };
        client.token = answer.body["tokens"]["access_token"]
            .as_str()
            .with_context(|| format!("no access token from {path}: {}", answer.body))?
            .to_owned();
        Ok(client)
    }

    /// One request, sent once.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Answer> {
        self.api.call(method, path, self.bearer(), body).await
    }

    /// A request repeated every 300 ms (same body, same idempotency key)
    /// while the shop answers 5xx or not at all, until `timeout`; a 2xx is
    /// the answer, any other status a [`Refused`] error.
    pub async fn retrying(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<Answer> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut request = self.api.request(method.clone(), path, self.bearer(), body);
            if let Some(key) = key {
                request = request.header("Idempotency-Key", key);
            }
            let last = match self.api.send(request).await {
                Ok(answer) if answer.status.is_success() => return Ok(answer),
                Ok(answer) if !answer.status.is_server_error() => {
                    return Err(Refused { request: format!("{method} {path}"), answer }.into());
                }
                Ok(answer) => format!("{}: {}", answer.status, answer.body),
                Err(error) => format!("{error:#}"),
            };
            if Instant::now() > deadline {
                bail!("{method} {path} did not succeed within {timeout:?}; last: {last}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The access token, if there is one.
    fn bearer(&self) -> Option<&str> {
        Some(self.token.as_str()).filter(|token| !token.is_empty())
    }

    /// Places an order of `lines` (product id, quantity), retried with one
    /// Idempotency-Key for up to 90 s; returns its id.
    pub async fn place_order(&self, lines: &[(&str, i64)], payment_token: &str) -> anyhow::Result<String> {
        let key = uuid::Uuid::new_v4().to_string();
        let body = order_body(lines, payment_token);
        let answer = self
            .retrying(Method::POST, "/api/orders", Some(&body), Some(&key), Duration::from_secs(90))
            .await?;
        Ok(answer.body["id"].as_str().context("order without id")?.to_owned())
    }
}

/// A request that [`Client::retrying`] does not repeat: answered, but
/// neither 2xx nor 5xx.
#[derive(Debug)]
pub struct Refused {
    /// Method and path.
    pub request: String,
    pub answer: Answer,
}

impl Refused {
    /// The status of the refusal `error` is, if it is one.
    pub fn status(error: &anyhow::Error) -> Option<StatusCode> {
        error.downcast_ref::<Self>().map(|refused| refused.answer.status)
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}: {}", self.request, self.answer.status, self.answer.body)
    }
}

impl std::error::Error for Refused {}

/// The body of an order of `lines` (product id, quantity) to the valid
/// [`address`], paid with `payment_token`.
pub fn order_body(lines: &[(&str, i64)], payment_token: &str) -> Value {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(product, quantity)| json!({"product_id": product, "quantity": quantity}))
        .collect();
    json!({
        "lines": lines,
        "shipping_address": address(),
        "payment_method_token": payment_token,
    })
}

/// A valid shipping address.
pub fn address() -> Value {
    json!({
        "recipient_name": "Ada Lovelace",
        "line1": "Teststraße 1",
        "city": "Berlin",
        "postal_code": "10115",
        "country_code": "DE",
    })
}

/// A string field of a JSON object.
pub fn string(value: &Value, field: &str) -> anyhow::Result<String> {
    value[field].as_str().map(str::to_owned).with_context(|| format!("no string {field} in {value}"))
}

fn session(answer: &Value) -> anyhow::Result<Session> {
    Ok(Session {
        user_id: string(&answer["user"], "id")?,
        email: string(&answer["user"], "email")?,
        access_token: string(&answer["tokens"], "access_token")?,
    })
}
