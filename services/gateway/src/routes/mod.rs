//! The REST routes: one module per area, each handler a thin translation
//! from JSON to one or two gRPC calls and back. Authorization that the
//! services cannot do alone (is this the caller's order?) is done here, from
//! the verified token, never from the request body.

pub(crate) mod admin;
mod analytics;
pub(crate) mod audit;
mod auth;
mod cart;
mod catalog;
mod live;
mod notifications;
mod orders;
mod payments;
pub(crate) mod profile;
mod recommendations;
mod reviews;
mod search;
mod shipments;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, patch, post, put};

use crate::problem::{Problem, problem_from_status};
use crate::state::AppState;

/// Every route of the API as (method, path), in the order the OpenAPI
/// document lists them. The router below and the document are both checked
/// against it by tests.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/auth/register"),
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/refresh"),
    ("POST", "/api/auth/logout"),
    ("GET", "/api/products"),
    ("GET", "/api/products/{id}"),
    ("GET", "/api/products/{id}/reviews"),
    ("POST", "/api/products/{id}/reviews"),
    ("GET", "/api/products/{id}/recommendations"),
    ("GET", "/api/recommendations/me"),
    ("PATCH", "/api/reviews/{id}"),
    ("POST", "/api/reviews/{id}/helpful"),
    ("POST", "/api/reviews/{id}/reports"),
    ("GET", "/api/categories"),
    ("GET", "/api/search"),
    ("GET", "/api/search/suggest"),
    ("GET", "/api/cart"),
    ("DELETE", "/api/cart"),
    ("POST", "/api/cart/items"),
    ("PATCH", "/api/cart/items/{product_id}"),
    ("DELETE", "/api/cart/items/{product_id}"),
    ("POST", "/api/cart/checkout"),
    ("POST", "/api/orders"),
    ("GET", "/api/orders"),
    ("GET", "/api/orders/live"),
    ("GET", "/api/orders/{id}"),
    ("GET", "/api/orders/{id}/events"),
    ("POST", "/api/orders/{id}/cancel"),
    ("GET", "/api/shipments"),
    ("GET", "/api/shipments/{id}"),
    ("POST", "/api/shipments/{id}/status"),
    ("GET", "/api/notifications"),
    ("POST", "/api/payments/webhooks/stripe"),
    ("GET", "/api/users/me"),
    ("PUT", "/api/users/me"),
    ("GET", "/api/users/me/addresses"),
    ("POST", "/api/users/me/addresses"),
    ("PATCH", "/api/users/me/addresses/{id}"),
    ("DELETE", "/api/users/me/addresses/{id}"),
    ("GET", "/api/users/me/export"),
    ("POST", "/api/users/me/erasure"),
    ("POST", "/api/admin/products"),
    ("PATCH", "/api/admin/products/{id}"),
    ("DELETE", "/api/admin/products/{id}"),
    ("POST", "/api/admin/categories"),
    ("POST", "/api/admin/inventory/{product_id}/restock"),
    ("GET", "/api/admin/orders"),
    ("GET", "/api/admin/users"),
    ("PUT", "/api/admin/users/{id}/role"),
    ("GET", "/api/admin/ratelimits"),
    ("PUT", "/api/admin/ratelimits/{name}"),
    ("DELETE", "/api/admin/ratelimits/{name}"),
    ("GET", "/api/admin/audit"),
    ("GET", "/api/admin/audit/verify"),
    ("GET", "/api/admin/reviews/queue"),
    ("POST", "/api/admin/reviews/{id}/moderation"),
    ("GET", "/api/admin/dashboard"),
    ("GET", "/api/admin/analytics/sales"),
    ("GET", "/api/admin/analytics/sales.csv"),
    ("GET", "/api/admin/analytics/funnel"),
    ("GET", "/api/openapi.json"),
];

/// The API routes (without middleware), but for `/api/openapi.json`: the
/// document describes these routes, so the router (`crate::Gateway`) adds
/// it beside them.
pub fn api() -> Router<AppState> {
    Router::new()
        .route("/api/auth/register", post(auth::register))
        .route("/api/auth/login", post(auth::login))
        .route("/api/auth/refresh", post(auth::refresh))
        .route("/api/auth/logout", post(auth::logout))
        .route("/api/products", get(catalog::list_products))
        .route("/api/products/{id}", get(catalog::get_product))
        .route("/api/products/{id}/reviews", get(reviews::list_reviews).post(reviews::create_review))
        .route("/api/products/{id}/recommendations", get(recommendations::for_product))
        .route("/api/recommendations/me", get(recommendations::for_me))
        .route("/api/reviews/{id}", patch(reviews::update_review))
        .route("/api/reviews/{id}/helpful", post(reviews::vote_helpful))
        .route("/api/reviews/{id}/reports", post(reviews::report_review))
        .route("/api/categories", get(catalog::list_categories))
        .route("/api/search", get(search::search))
        .route("/api/search/suggest", get(search::suggest))
        .route("/api/cart", get(cart::get_cart).delete(cart::clear_cart))
        .route("/api/cart/items", post(cart::add_item))
        .route("/api/cart/items/{product_id}", patch(cart::update_item).delete(cart::remove_item))
        .route("/api/cart/checkout", post(cart::checkout))
        .route("/api/orders", post(orders::place_order).get(orders::list_orders))
        .route("/api/orders/live", get(live::order_socket))
        .route("/api/orders/{id}", get(orders::get_order))
        .route("/api/orders/{id}/events", get(live::order_events))
        .route("/api/orders/{id}/cancel", post(orders::cancel_order))
        .route("/api/shipments", get(shipments::list_shipments))
        .route("/api/shipments/{id}", get(shipments::get_shipment))
        .route("/api/shipments/{id}/status", post(shipments::update_status))
        .route("/api/notifications", get(notifications::list_notifications))
        .route("/api/payments/webhooks/stripe", post(payments::stripe_webhook))
        .route("/api/users/me", get(profile::get_profile).put(profile::put_profile))
        .route("/api/users/me/addresses", get(profile::list_addresses).post(profile::add_address))
        .route("/api/users/me/addresses/{id}", patch(profile::update_address).delete(profile::delete_address))
        .route("/api/users/me/export", get(profile::export))
        .route("/api/users/me/erasure", post(profile::erase))
        .route("/api/admin/products", post(admin::create_product))
        .route("/api/admin/products/{id}", patch(admin::update_product).delete(admin::delete_product))
        .route("/api/admin/categories", post(admin::create_category))
        .route("/api/admin/inventory/{product_id}/restock", post(admin::restock))
        .route("/api/admin/orders", get(admin::list_orders))
        .route("/api/admin/users", get(admin::list_users))
        .route("/api/admin/users/{id}/role", put(admin::set_user_role))
        .route("/api/admin/ratelimits", get(admin::list_rate_limits))
        .route("/api/admin/ratelimits/{name}", put(admin::put_rate_limit).delete(admin::delete_rate_limit))
        .route("/api/admin/audit", get(audit::list_entries))
        .route("/api/admin/audit/verify", get(audit::verify_chain))
        .route("/api/admin/reviews/queue", get(reviews::moderation_queue))
        .route("/api/admin/reviews/{id}/moderation", post(reviews::moderate_review))
        .route("/api/admin/dashboard", get(analytics::dashboard))
        .route("/api/admin/analytics/sales", get(analytics::sales))
        .route("/api/admin/analytics/sales.csv", get(analytics::sales_csv))
        .route("/api/admin/analytics/funnel", get(analytics::funnel))
}

/// Maps a gRPC error from `peer` (see [`problem_from_status`]).
pub(crate) fn grpc(peer: &'static str) -> impl Fn(tonic::Status) -> Problem {
    move |status| problem_from_status(peer, &status)
}

/// 502 for a peer answer that lacks a field it promises.
pub(crate) fn missing(peer: &str, field: &str) -> Problem {
    tracing::error!(peer, field, "a peer answered without a required field");
    Problem::new(
        StatusCode::BAD_GATEWAY,
        "upstream-error",
        format!("the {peer} service answered without {field}"),
    )
}

/// The page size for a gRPC request (0 lets the service choose).
pub(crate) fn page_size(size: Option<i32>) -> i32 {
    size.unwrap_or(0)
}
