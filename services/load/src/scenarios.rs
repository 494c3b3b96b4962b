//! The shop's users as goose scenarios, weighted like a shop's traffic
//! (most people look, fewer buy):
//! - a visitor (weight [`VISITOR_WEIGHT`]) is anonymous: it browses the
//!   catalog page by page, searches for words of product names, looks at
//!   products and lists the categories;
//! - a buyer (weight [`BUYER_WEIGHT`]) registers and logs in once, when it
//!   starts (a password hash is deliberately slow: signing up on every
//!   iteration would measure argon2, not the shop), then in each iteration
//!   browses, views two products, adds the second to its cart, changes its
//!   quantity, reviews the cart, checks out with an `Idempotency-Key`,
//!   follows the order until it is confirmed, cancels its first confirmed
//!   order and every `--cancel-every`th after it, and reads its order
//!   history. Its access token is refreshed before it expires.
//!
//! Each request is named by its route ([`route`]), so goose's tables and
//! the report have one row per kind of request (`GET /api/products/{id}`),
//! not one per product or order.
//!
//! Failures are counted, never skipped: goose fails every answer that is
//! not 2xx or never came; this module also fails a 2xx answer whose body is
//! not what the API documents, an order that ends other than confirmed or is
//! not confirmed within `--order-timeout`, a search for a word of a product
//! name that finds nothing, and a cancellation that does not cancel. A buyer
//! whose sign-up failed tries again, after a pause, at its next iteration;
//! until then its other steps send nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use goose::goose::GooseResponse;
use goose::metrics::GooseRequestMetric;
use goose::prelude::*;
use rand::seq::IndexedRandom as _;
use reqwest::RequestBuilder;
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::{Value, json};

use crate::catalog::{Catalog, Product, ProductPage, products_path};

/// Request names: the route as the gateway declares it. Goose adds the
/// method (`POST /api/cart/checkout`).
pub mod route {
    pub const REGISTER: &str = "/api/auth/register";
    pub const LOGIN: &str = "/api/auth/login";
    pub const REFRESH: &str = "/api/auth/refresh";
    /// The first page of the catalog.
    pub const PRODUCTS: &str = "/api/products";
    /// A later page, by the previous page's token.
    pub const PRODUCTS_NEXT_PAGE: &str = "/api/products?page_token={token}";
    pub const PRODUCTS_SEARCH: &str = "/api/products?q={term}";
    pub const PRODUCT: &str = "/api/products/{id}";
    pub const CATEGORIES: &str = "/api/categories";
    pub const CART: &str = "/api/cart";
    pub const CART_ITEMS: &str = "/api/cart/items";
    pub const CART_ITEM: &str = "/api/cart/items/{product_id}";
    pub const CHECKOUT: &str = "/api/cart/checkout";
    pub const ORDERS: &str = "/api/orders";
    pub const ORDER: &str = "/api/orders/{id}";
    pub const CANCEL_ORDER: &str = "/api/orders/{id}/cancel";
}

/// Visitors per [`BUYER_WEIGHT`] buyers.
pub const VISITOR_WEIGHT: usize = 3;
/// Buyers per [`VISITOR_WEIGHT`] visitors.
pub const BUYER_WEIGHT: usize = 1;
/// Products per page when browsing: small, so that even the demo catalog
/// (a dozen products) spans several pages and next-page requests happen.
const BROWSE_PAGE_SIZE: &str = "5";
/// Pages one browse reads at most (the first and up to two more).
const BROWSE_PAGES: usize = 3;
/// Orders per page of the order history.
const HISTORY_PAGE_SIZE: &str = "10";
/// Pause between two reads of a followed order, as a client polling an
/// order page would; the saga takes well under a second on an idle shop.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(250);
/// Pause before a buyer whose sign-up failed tries again, so that a shop
/// refusing sign-ups gets a steady trickle of attempts, not a tight loop.
const SIGN_UP_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Domain of the buyers' accounts (`load-<uuid>@load.commerce.test`); the
/// `.test` domain can never receive mail.
const EMAIL_DOMAIN: &str = "load.commerce.test";

/// What all users of a run share: the catalog and the shop's flags.
#[derive(Debug)]
pub struct Plan {
    pub catalog: Catalog,
    pub card_token: String,
    pub cancel_every: u64,
    pub order_timeout: Duration,
    pub think_time: Duration,
}

/// A goose transaction named `$name` that runs `$step(&plan, user)`.
macro_rules! step {
    ($plan:expr, $name:expr, $step:path) => {{
        let plan = Arc::clone($plan);
        let function: TransactionFunction = Arc::new(move |user| {
            let plan = Arc::clone(&plan);
            Box::pin(async move { $step(&plan, user).await })
        });
        Transaction::new(function).set_name($name)
    }};
}

/// The anonymous visitor.
pub fn visitor(plan: &Arc<Plan>) -> Result<Scenario, GooseError> {
    let scenario = Scenario::new("visitor")
        .set_weight(VISITOR_WEIGHT)?
        .register_transaction(step!(plan, "browse the catalog", browse).set_weight(3)?)
        .register_transaction(step!(plan, "search", search).set_weight(2)?)
        .register_transaction(step!(plan, "view a product", view_product).set_weight(4)?)
        .register_transaction(step!(plan, "list the categories", list_categories));
    paced(scenario, plan)
}

/// The buyer, whose steps run in this order in every iteration.
pub fn buyer(plan: &Arc<Plan>) -> Result<Scenario, GooseError> {
    let scenario = Scenario::new("buyer")
        .set_weight(BUYER_WEIGHT)?
        .register_transaction(step!(plan, "sign up", sign_up).set_on_start())
        .register_transaction(step!(plan, "start shopping", start_shopping).set_sequence(1))
        .register_transaction(step!(plan, "choose a product", choose_product).set_sequence(2).set_weight(2)?)
        .register_transaction(step!(plan, "add to the cart", add_to_cart).set_sequence(3))
        .register_transaction(step!(plan, "change the quantity", change_quantity).set_sequence(4))
        .register_transaction(step!(plan, "review the cart", review_cart).set_sequence(5))
        .register_transaction(step!(plan, "check out", check_out).set_sequence(6))
        .register_transaction(step!(plan, "follow the order", follow_order).set_sequence(7))
        .register_transaction(step!(plan, "cancel some orders", cancel_order).set_sequence(8))
        .register_transaction(step!(plan, "read the order history", order_history).set_sequence(9));
    paced(scenario, plan)
}

/// `scenario` with random pauses of up to `--think-time` between
/// transactions.
fn paced(scenario: Scenario, plan: &Plan) -> Result<Scenario, GooseError> {
    if plan.think_time.is_zero() {
        Ok(scenario)
    } else {
        scenario.set_wait_time(Duration::ZERO, plan.think_time)
    }
}

/// Whether a buyer cancels its `placed`th order (counting from 1): the
/// first and every `every`th after it; none when `every` is 0.
pub fn cancels(placed: u64, every: u64) -> bool {
    every > 0 && placed > 0 && (placed - 1).is_multiple_of(every)
}

/// When to refresh an access token that expires at `expires_at` (RFC
/// 3339), seen at `now`: two thirds into its remaining life, so that a slow
/// iteration never sends an expired token. `None` when the expiry is unknown
/// or already past (a clock far off the shop's), rather than refreshing on
/// every request.
pub fn refresh_after(expires_at: Option<&str>, now: DateTime<Utc>) -> Option<Duration> {
    let expires = DateTime::parse_from_rfc3339(expires_at?).ok()?.with_timezone(&Utc);
    let left = (expires - now).to_std().ok().filter(|left| !left.is_zero())?;
    Some(left * 2 / 3)
}

// ---------------------------------------------------------------- visitor

async fn browse(_plan: &Plan, user: &mut GooseUser) -> TransactionResult {
    let mut token = String::new();
    for page in 0..BROWSE_PAGES {
        let (path, name) = if page == 0 {
            (products_path(&[("page_size", BROWSE_PAGE_SIZE)]), route::PRODUCTS)
        } else {
            (
                products_path(&[("page_size", BROWSE_PAGE_SIZE), ("page_token", &token)]),
                route::PRODUCTS_NEXT_PAGE,
            )
        };
        let response = send(user, GooseMethod::Get, &path, name, |request| request).await?;
        let (page, _) = answer::<ProductPage>(user, response).await?;
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    Ok(())
}

async fn search(plan: &Plan, user: &mut GooseUser) -> TransactionResult {
    let Some(term) = pick(&plan.catalog.search_terms) else { return Ok(()) };
    let path = products_path(&[("q", term), ("page_size", BROWSE_PAGE_SIZE)]);
    let response = send(user, GooseMethod::Get, &path, route::PRODUCTS_SEARCH, |request| request).await?;
    let (page, mut request) = answer::<ProductPage>(user, response).await?;
    if page.products.is_empty() {
        return Err(fail(user, "a search for a word of a product's name found nothing", &mut request, term));
    }
    Ok(())
}

async fn view_product(plan: &Plan, user: &mut GooseUser) -> TransactionResult {
    viewed_product(plan, user).await.map(drop)
}

/// Views a random product; its id, if the answer was right.
async fn viewed_product(plan: &Plan, user: &mut GooseUser) -> Result<Option<String>, Box<TransactionError>> {
    let Some(product) = pick(&plan.catalog.products) else { return Ok(None) };
    let path = format!("/api/products/{}", product.id);
    let response = send(user, GooseMethod::Get, &path, route::PRODUCT, |request| request).await?;
    let (viewed, _) = answer::<Product>(user, response).await?;
    Ok(Some(viewed.id))
}

async fn list_categories(_plan: &Plan, user: &mut GooseUser) -> TransactionResult {
    let response =
        send(user, GooseMethod::Get, route::CATEGORIES, route::CATEGORIES, |request| request).await?;
    answer::<IgnoredAny>(user, response).await.map(drop)
}

// ---------------------------------------------------------------- buyer

/// A buyer's account and where it is in its shopping (goose's session
/// data must be `Clone`).
#[derive(Debug, Clone)]
struct Customer {
    email: String,
    password: String,
    registered: bool,
    /// None until logged in, and again after a failed refresh.
    tokens: Option<Tokens>,
    /// Orders checked out so far.
    placed: u64,
    /// The product to put in the cart this iteration.
    chosen: Option<String>,
    /// The order just checked out, until it is followed.
    to_follow: Option<String>,
    /// The order just confirmed, until the cancel step has looked at it.
    confirmed: Option<String>,
}

impl Customer {
    fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple();
        Self {
            email: format!("load-{id}@{EMAIL_DOMAIN}"),
            password: format!("load-{id}"),
            registered: false,
            tokens: None,
            placed: 0,
            chosen: None,
            to_follow: None,
            confirmed: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Tokens {
    access: String,
    refresh: String,
    refresh_at: Option<Instant>,
}

impl From<TokenPair> for Tokens {
    fn from(pair: TokenPair) -> Self {
        let refresh_at = refresh_after(pair.access_token_expires_at.as_deref(), Utc::now())
            .map(|after| Instant::now() + after);
        Self { access: pair.access_token, refresh: pair.refresh_token, refresh_at }
    }
}

/// The tokens of register, login and refresh answers.
#[derive(Debug, Deserialize)]
struct TokenPair {
    access_token: String,
    refresh_token: String,
    #[serde(default)]
    access_token_expires_at: Option<String>,
}

/// Answer of register and login.
#[derive(Debug, Deserialize)]
struct Session {
    tokens: TokenPair,
}

/// An order as the API shows it (the fields the buyer looks at).
#[derive(Debug, Deserialize)]
struct Order {
    id: String,
    status: String,
    #[serde(default)]
    failure_reason: String,
}

async fn sign_up(_plan: &Plan, user: &mut GooseUser) -> TransactionResult {
    user.set_session_data(Customer::new());
    sign_in(user).await
}

/// Registers the buyer's account unless that worked before, then logs in.
async fn sign_in(user: &mut GooseUser) -> TransactionResult {
    let (credentials, registered) = {
        let customer = customer(user)?;
        (json!({"email": customer.email, "password": customer.password}), customer.registered)
    };
    if !registered {
        let mut body = credentials.clone();
        body["display_name"] = Value::from("Load test buyer");
        let response =
            send(user, GooseMethod::Post, route::REGISTER, route::REGISTER, |request| request.json(&body))
                .await?;
        answer::<Session>(user, response).await?;
        customer(user)?.registered = true;
    }
    let response =
        send(user, GooseMethod::Post, route::LOGIN, route::LOGIN, |request| request.json(&credentials))
            .await?;
    let (session, _) = answer::<Session>(user, response).await?;
    customer(user)?.tokens = Some(Tokens::from(session.tokens));
    Ok(())
}

/// The first step of an iteration: signs in again if that failed before,
/// then browses the catalog.
async fn start_shopping(plan: &Plan, user: &mut GooseUser) -> TransactionResult {
    if customer(user)?.tokens.is_none() {
        tokio::time::sleep(SIGN_UP_RETRY_PAUSE).await;
        sign_in(user).await?;
    }
    browse(plan, user).await
}

async fn choose_product(plan: &Plan, user: &mut GooseUser) -> TransactionResult {
    let chosen = viewed_product(plan, user).await?;
    customer(user)?.chosen = chosen;
    Ok(())
}

async fn add_to_cart(_plan: &Plan, user: &mut GooseUser) -> TransactionResult {
    let Some(token) = access_token(user).await? else { return Ok(()) };
    let Some(product) = customer(user)?.chosen.clone() else { return Ok(()) };
    let body = json!({"product_id": product, "quantity": 1});
    let response = send(user, GooseMethod::Post, route::CART_ITEMS, route::CART_ITEMS, |request| {
        request.bearer_auth(&token).json(&body)
    })
    .await?;
    answer::<IgnoredAny>(user, response).await.map(drop)
}

async fn change_quantity(_plan: &Plan, user: &mut GooseUser) -> TransactionResult {
    let Some(token) = access_token(user).await? else { return Ok(()) };
    let Some(product) = customer(user)?.chosen.clone() else { return Ok(()) };
    let path = format!("/api/cart/items/{product}");
    let response = send(user, GooseMethod::Patch, &path, route::CART_ITEM, |request| {
        request.bearer_auth(&token).json(&json!({"quantity": 2}))
    })
    .await?;
    answer::<IgnoredAny>(user, response).await.map(drop)
}

async fn review_cart(_plan: &Plan, user: &mut GooseUser) -> TransactionResult {
    let Some(token) = access_token(user).await? else { return Ok(()) };
    let response =
        send(user, GooseMethod::Get, route::CART, route::CART, |request| request.bearer_auth(&token)).await?;
    answer::<IgnoredAny>(user, response).await.map(drop)
}

async fn check_out(plan: &Plan, user: &mut GooseUser) -> TransactionResult {
    let Some(token) = access_token(user).await? else { return Ok(()) };
    let key = uuid::Uuid::new_v4().to_string();
    let body = json!({
        "shipping_address": {
            "recipient_name": "Ada Lovelace",
            "line1": "Teststraße 1",
            "city": "Berlin",
            "postal_code": "10115",
            "country_code": "DE",
        },
        "payment_method_token": plan.card_token,
    });
    let response = send(user, GooseMethod::Post, route::CHECKOUT, route::CHECKOUT, |request| {
        request.bearer_auth(&token).header("Idempotency-Key", &key).json(&body)
    })
    .await?;
    let (order, _) = answer::<Order>(user, response).await?;
    let customer = customer(user)?;
    customer.placed += 1;
    customer.to_follow = Some(order.id);
    Ok(())
}

/// Reads the order every [`FOLLOW_INTERVAL`] until it is confirmed, ends
/// otherwise, or `--order-timeout` has passed.
async fn follow_order(plan: &Plan, user: &mut GooseUser) -> TransactionResult {
    let Some(id) = customer(user)?.to_follow.take() else { return Ok(()) };
    let Some(token) = access_token(user).await? else { return Ok(()) };
    let path = format!("/api/orders/{id}");
    let deadline = Instant::now() + plan.order_timeout;
    loop {
        let response =
            send(user, GooseMethod::Get, &path, route::ORDER, |request| request.bearer_auth(&token)).await?;
        let (order, mut request) = answer::<Order>(user, response).await?;
        match order.status.as_str() {
            "confirmed" | "shipped" | "delivered" => {
                customer(user)?.confirmed = Some(id);
                return Ok(());
            }
            "rejected" | "failed" | "cancelled" => {
                let tag = format!("the order ended {}, not confirmed", order.status);
                return Err(fail(user, &tag, &mut request, &order.failure_reason));
            }
            _ if Instant::now() >= deadline => {
                let tag = "the order was not confirmed within --order-timeout";
                return Err(fail(user, tag, &mut request, &order.status));
            }
            _ => tokio::time::sleep(FOLLOW_INTERVAL).await,
        }
    }
}

async fn cancel_order(plan: &Plan, user: &mut GooseUser) -> TransactionResult {
    let (id, due) = {
        let customer = customer(user)?;
        (customer.confirmed.take(), cancels(customer.placed, plan.cancel_every))
    };
    let Some(id) = id.filter(|_| due) else { return Ok(()) };
    let Some(token) = access_token(user).await? else { return Ok(()) };
    let path = format!("/api/orders/{id}/cancel");
    let response = send(user, GooseMethod::Post, &path, route::CANCEL_ORDER, |request| {
        request.bearer_auth(&token).json(&json!({"reason": "cancelled by the load test"}))
    })
    .await?;
    let (order, mut request) = answer::<Order>(user, response).await?;
    if order.status != "cancelled" {
        return Err(fail(user, "a cancellation did not cancel the order", &mut request, &order.status));
    }
    Ok(())
}

async fn order_history(_plan: &Plan, user: &mut GooseUser) -> TransactionResult {
    let Some(token) = access_token(user).await? else { return Ok(()) };
    let path = format!("{}?page_size={HISTORY_PAGE_SIZE}", route::ORDERS);
    let response =
        send(user, GooseMethod::Get, &path, route::ORDERS, |request| request.bearer_auth(&token)).await?;
    answer::<IgnoredAny>(user, response).await.map(drop)
}

/// The buyer's state, set by its `sign up` transaction.
fn customer(user: &mut GooseUser) -> Result<&mut Customer, Box<TransactionError>> {
    user.get_session_data_mut::<Customer>().ok_or_else(|| {
        Box::new(TransactionError::Custom("the buyer has no account: it never signed up".into()))
    })
}

/// The buyer's access token, refreshed first when it is due; `None` while
/// the buyer is not logged in (its next iteration tries again).
async fn access_token(user: &mut GooseUser) -> Result<Option<String>, Box<TransactionError>> {
    let Some(tokens) = customer(user)?.tokens.clone() else { return Ok(None) };
    if tokens.refresh_at.is_none_or(|at| Instant::now() < at) {
        return Ok(Some(tokens.access));
    }
    let body = json!({"refresh_token": tokens.refresh});
    let response =
        send(user, GooseMethod::Post, route::REFRESH, route::REFRESH, |request| request.json(&body)).await?;
    match answer::<TokenPair>(user, response).await {
        Ok((pair, _)) => {
            let fresh = Tokens::from(pair);
            let access = fresh.access.clone();
            customer(user)?.tokens = Some(fresh);
            Ok(Some(access))
        }
        Err(error) => {
            customer(user)?.tokens = None;
            Err(error)
        }
    }
}

// ---------------------------------------------------------------- requests

/// A random element of `items`.
fn pick<T>(items: &[T]) -> Option<&T> {
    items.choose(&mut rand::rng())
}

/// Sends a request to `path`, named `name` in the metrics; `prepare` adds
/// the token, headers and body.
async fn send(
    user: &mut GooseUser,
    method: GooseMethod,
    path: &str,
    name: &str,
    prepare: impl FnOnce(RequestBuilder) -> RequestBuilder,
) -> Result<GooseResponse, Box<TransactionError>> {
    let builder = prepare(user.get_request_builder(&method, path)?);
    let request =
        GooseRequest::builder().method(method).path(path).name(name).set_request_builder(builder).build();
    user.request(request).await
}

/// The JSON body of a successful answer, with the request's metric (to fail
/// it later if the body says something is wrong). A request goose already
/// failed (an unexpected status, no answer) ends the transaction as it is;
/// a body that is not the documented JSON fails the request here.
async fn answer<T: DeserializeOwned>(
    user: &mut GooseUser,
    response: GooseResponse,
) -> Result<(T, GooseRequestMetric), Box<TransactionError>> {
    let GooseResponse { mut request, response } = response;
    if !request.success {
        return Err(Box::new(TransactionError::RequestFailed { raw_request: Box::new(request) }));
    }
    let text = match response {
        Ok(response) => response.text().await.map_err(|error| error.to_string()),
        Err(error) => Err(error.to_string()),
    };
    let parsed =
        text.and_then(|text| serde_json::from_str::<T>(&text).map_err(|error| format!("{error}: {text}")));
    match parsed {
        Ok(value) => Ok((value, request)),
        Err(detail) => Err(fail(user, "the answer is not the JSON the API documents", &mut request, &detail)),
    }
}

/// Fails `request` in goose's metrics under `tag` (the errors table groups
/// by it, so it names no ids), with `detail` in goose's debug log.
fn fail(
    user: &mut GooseUser,
    tag: &str,
    request: &mut GooseRequestMetric,
    detail: &str,
) -> Box<TransactionError> {
    match user.set_failure(tag, request, None, Some(detail)) {
        Err(error) => error,
        Ok(()) => Box::new(TransactionError::RequestFailed { raw_request: Box::new(request.clone()) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buyer_cancels_its_first_order_and_every_nth_after_it() {
        let cancelled: Vec<u64> = (1..=12).filter(|placed| cancels(*placed, 5)).collect();
        assert_eq!(cancelled, [1, 6, 11]);
        assert!((1..=4).all(|placed| cancels(placed, 1)));
        assert!(!(0..=12).any(|placed| cancels(placed, 0)), "0 cancels none");
        assert!(!cancels(0, 5), "no order placed yet");
    }

    #[test]
    fn a_token_is_refreshed_two_thirds_into_its_remaining_life() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z").expect("a time").with_timezone(&Utc);
        assert_eq!(refresh_after(Some("2026-01-01T12:15:00Z"), now), Some(Duration::from_secs(600)));
        assert_eq!(refresh_after(Some("2026-01-01T13:15:00+01:00"), now), Some(Duration::from_secs(600)));
    }

    #[test]
    fn a_token_of_unknown_or_past_expiry_is_not_refreshed() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z").expect("a time").with_timezone(&Utc);
        assert_eq!(refresh_after(None, now), None);
        assert_eq!(refresh_after(Some("soon"), now), None);
        assert_eq!(refresh_after(Some("2026-01-01T11:59:00Z"), now), None);
        assert_eq!(refresh_after(Some("2026-01-01T12:00:00Z"), now), None);
    }

    #[test]
    fn the_scenarios_are_weighted_three_visitors_to_one_buyer() {
        let plan = Arc::new(Plan {
            catalog: Catalog::default(),
            card_token: "tok_visa".to_owned(),
            cancel_every: 5,
            order_timeout: Duration::from_secs(30),
            think_time: Duration::ZERO,
        });
        let visitor = visitor(&plan).expect("builds");
        let buyer = buyer(&plan).expect("builds");
        assert_eq!((visitor.weight, buyer.weight), (3, 1));
        let signs_up: Vec<&str> = buyer
            .transactions
            .iter()
            .filter(|transaction| transaction.on_start)
            .map(|transaction| transaction.name.name_for_transaction())
            .collect();
        assert_eq!(signs_up, ["sign up"], "buyers sign up once, when they start");
    }
}
