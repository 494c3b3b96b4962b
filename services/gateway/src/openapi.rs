//! The OpenAPI 3.1 document at `/api/openapi.json`, assembled from one table
//! of operations and the DTOs' JSON Schemas (schemars, JSON Schema 2020-12,
//! which OpenAPI 3.1 uses as is). Built once, on first request.
//!
//! The table lists every route of [`crate::routes::ROUTES`]; a test checks
//! the two agree, so a route cannot be added without being documented.

use std::sync::OnceLock;

use axum::Json;
use schemars::generate::SchemaGenerator;
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};

use crate::contract;
use crate::dto;
use crate::problem::{PROBLEM_JSON, ProblemDetails};
use crate::ratelimit::rules::Rule;
use crate::routes::admin::{RateLimitRules, RuleBody, rule_name_schema};

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Public,
    User,
    Courier,
    Admin,
}

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// One documented operation.
struct Operation {
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    access: Access,
    query: Option<fn() -> Schema>,
    body: Option<SchemaFn>,
    /// Success status and its body schema (`None`: no body).
    response: (u16, Option<SchemaFn>),
    idempotency_key: bool,
}

fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

fn query<T: JsonSchema>() -> Schema {
    contract::settings().into_generator().into_root_schema_for::<T>()
}

macro_rules! op {
    ($method:literal $path:literal, $tag:literal, $summary:literal, $access:ident,
     query: $query:expr, body: $body:expr, response: $status:literal $response:expr $(, idempotency_key: $key:expr)?) => {
        Operation {
            method: $method,
            path: $path,
            tag: $tag,
            summary: $summary,
            access: Access::$access,
            query: $query,
            body: $body,
            response: ($status, $response),
            idempotency_key: false $(|| $key)?,
        }
    };
}

/// The live endpoints, whose success is not a JSON body.
const LIVE_SOCKET_PATH: &str = "/api/orders/live";
const LIVE_EVENTS_PATH: &str = "/api/orders/{id}/events";
/// The sales report as CSV, whose success is `text/csv`.
const SALES_CSV_PATH: &str = "/api/admin/analytics/sales.csv";
/// Stripe's webhook endpoint, which takes Stripe's signature header.
const STRIPE_WEBHOOK_PATH: &str = "/api/payments/webhooks/stripe";

fn operations() -> Vec<Operation> {
    use dto::*;
    vec![
        op!("POST" "/api/auth/register", "auth", "Register a customer and sign in", Public,
            query: None, body: Some(schema::<RegisterRequest>), response: 201 Some(schema::<SessionResponse>)),
        op!("POST" "/api/auth/login", "auth", "Exchange email and password for tokens", Public,
            query: None, body: Some(schema::<LoginRequest>), response: 200 Some(schema::<SessionResponse>)),
        op!("POST" "/api/auth/refresh", "auth", "Exchange a refresh token for a new pair (rotation)", Public,
            query: None, body: Some(schema::<RefreshTokenRequest>), response: 200 Some(schema::<TokenPair>)),
        op!("POST" "/api/auth/logout", "auth", "Revoke a refresh token", Public,
            query: None, body: Some(schema::<RefreshTokenRequest>), response: 204 None),
        op!("GET" "/api/products", "catalog", "List active products, filtered and paginated", Public,
            query: Some(query::<ProductQuery>), body: None, response: 200 Some(schema::<ProductPage>)),
        op!("GET" "/api/products/{id}", "catalog", "Get one product", Public,
            query: None, body: None, response: 200 Some(schema::<Product>)),
        op!("GET" "/api/products/{id}/reviews", "reviews", "A product's visible reviews, filtered by stars and sorted, with its rating summary", Public,
            query: Some(query::<ReviewQuery>), body: None, response: 200 Some(schema::<ReviewPage>)),
        op!("POST" "/api/products/{id}/reviews", "reviews", "Review a product the caller received (403 without a delivered order of it; 409 when reviewed already)", User,
            query: None, body: Some(schema::<NewReviewRequest>), response: 201 Some(schema::<Review>)),
        op!("GET" "/api/products/{id}/recommendations", "recommendations", "Customers who bought this also bought, and the best sellers of its category", Public,
            query: Some(query::<RecommendationQuery>), body: None, response: 200 Some(schema::<ProductRecommendations>)),
        op!("GET" "/api/recommendations/me", "recommendations", "The caller's recently viewed products (recorded by GET /api/products/{id} with a token) and products for them", User,
            query: Some(query::<RecommendationQuery>), body: None, response: 200 Some(schema::<UserRecommendations>)),
        op!("PATCH" "/api/reviews/{id}", "reviews", "Edit the caller's own review (an empty title or body empties it)", User,
            query: None, body: Some(schema::<ReviewPatch>), response: 200 Some(schema::<Review>)),
        op!("POST" "/api/reviews/{id}/helpful", "reviews", "Count the caller's helpful vote (once per user; not for their own review)", User,
            query: None, body: None, response: 200 Some(schema::<Review>)),
        op!("POST" "/api/reviews/{id}/reports", "reviews", "Report a review as abusive: it joins the moderation queue (one report per user)", User,
            query: None, body: Some(schema::<ReportReviewRequest>), response: 200 Some(schema::<Review>)),
        op!("GET" "/api/categories", "catalog", "List categories", Public,
            query: None, body: None, response: 200 Some(schema::<CategoryList>)),
        op!("GET" "/api/search", "search", "Full-text product search: relevance ranking, typo tolerance, highlights, and facet counts (category, price band, rating, in stock)", Public,
            query: Some(query::<SearchQuery>), body: None, response: 200 Some(schema::<SearchResults>)),
        op!("GET" "/api/search/suggest", "search", "Autocomplete: product names completing what was typed", Public,
            query: Some(query::<SuggestQuery>), body: None, response: 200 Some(schema::<Suggestions>)),
        op!("GET" "/api/cart", "cart", "The caller's cart", User,
            query: None, body: None, response: 200 Some(schema::<Cart>)),
        op!("DELETE" "/api/cart", "cart", "Empty the caller's cart", User,
            query: None, body: None, response: 200 Some(schema::<Cart>)),
        op!("POST" "/api/cart/items", "cart", "Add units of a product", User,
            query: None, body: Some(schema::<AddItemRequest>), response: 200 Some(schema::<Cart>)),
        op!("PATCH" "/api/cart/items/{product_id}", "cart", "Set a line's quantity", User,
            query: None, body: Some(schema::<UpdateItemRequest>), response: 200 Some(schema::<Cart>)),
        op!("DELETE" "/api/cart/items/{product_id}", "cart", "Remove a line", User,
            query: None, body: None, response: 200 Some(schema::<Cart>)),
        op!("POST" "/api/cart/checkout", "cart", "Place an order for the cart", User,
            query: None, body: Some(schema::<CheckoutRequest>), response: 201 Some(schema::<Order>), idempotency_key: true),
        op!("POST" "/api/orders", "orders", "Place an order", User,
            query: None, body: Some(schema::<PlaceOrderRequest>), response: 201 Some(schema::<Order>), idempotency_key: true),
        op!("GET" "/api/orders", "orders", "The caller's orders, newest first", User,
            query: Some(query::<OrderQuery>), body: None, response: 200 Some(schema::<OrderPage>)),
        op!("GET" "/api/orders/live", "orders", "A WebSocket of the caller's order status changes: the latest status of each order changed within a day, then every change; each text message is an OrderStatusEvent", User,
            query: None, body: None, response: 101 Some(schema::<OrderStatusEvent>)),
        op!("GET" "/api/orders/{id}", "orders", "One of the caller's orders", User,
            query: None, body: None, response: 200 Some(schema::<Order>)),
        op!("GET" "/api/orders/{id}/events", "orders", "The order's status changes as Server-Sent Events (`event: status`, `id`: the version, `data`: an OrderStatusEvent): the history after Last-Event-ID, then each change as it is committed; the stream ends after a terminal status or when the token expires", User,
            query: None, body: None, response: 200 Some(schema::<OrderStatusEvent>)),
        op!("POST" "/api/orders/{id}/cancel", "orders", "Cancel an order before it ships", User,
            query: None, body: Some(schema::<CancelOrderRequest>), response: 200 Some(schema::<Order>)),
        op!("GET" "/api/shipments", "shipments", "Track an order's shipment, or list a courier's shipments", User,
            query: Some(query::<ShipmentQuery>), body: None, response: 200 Some(schema::<ShipmentPage>)),
        op!("GET" "/api/shipments/{id}", "shipments", "One shipment", User,
            query: None, body: None, response: 200 Some(schema::<Shipment>)),
        op!("POST" "/api/shipments/{id}/status", "shipments", "Move a shipment to its next status (courier)", Courier,
            query: None, body: Some(schema::<ShipmentStatusRequest>), response: 200 Some(schema::<Shipment>)),
        op!("GET" "/api/notifications", "notifications", "The caller's notifications, newest first", User,
            query: Some(query::<NotificationQuery>), body: None, response: 200 Some(schema::<NotificationPage>)),
        op!("POST" "/api/payments/webhooks/stripe", "payments", "Stripe's webhook deliveries: the signature is checked, and the payment the event names is looked at again", Public,
            query: None, body: Some(schema::<StripeEvent>), response: 200 Some(schema::<WebhookReceipt>)),
        op!("GET" "/api/users/me", "users", "The caller's profile", User,
            query: None, body: None, response: 200 Some(schema::<Profile>)),
        op!("PUT" "/api/users/me", "users", "Replace the caller's profile", User,
            query: None, body: Some(schema::<UpdateProfileRequest>), response: 200 Some(schema::<Profile>)),
        op!("GET" "/api/users/me/addresses", "users", "The caller's address book, the default first", User,
            query: None, body: None, response: 200 Some(schema::<AddressBook>)),
        op!("POST" "/api/users/me/addresses", "users", "Add an address (the first one, or one with make_default, becomes the default; at most 20)", User,
            query: None, body: Some(schema::<NewAddressRequest>), response: 201 Some(schema::<SavedAddress>)),
        op!("PATCH" "/api/users/me/addresses/{id}", "users", "Change an address's label, fields or default", User,
            query: None, body: Some(schema::<AddressPatch>), response: 200 Some(schema::<SavedAddress>)),
        op!("DELETE" "/api/users/me/addresses/{id}", "users", "Delete an address (a deleted default passes to the newest remaining one)", User,
            query: None, body: None, response: 204 None),
        op!("GET" "/api/users/me/export", "users", "Everything the shop keeps about the caller: profile, addresses, orders, shipments, notifications, reviews, viewed products", User,
            query: None, body: None, response: 200 Some(schema::<DataExport>)),
        op!("POST" "/api/users/me/erasure", "users", "Erase the caller's account, confirmed with their password (403 when wrong; 409 while an order is on its way): every service deletes or anonymises what it keeps, within seconds", User,
            query: None, body: Some(schema::<ErasureRequest>), response: 204 None),
        op!("POST" "/api/admin/products", "admin", "Create a product", Admin,
            query: None, body: Some(schema::<CreateProductRequest>), response: 201 Some(schema::<Product>)),
        op!("PATCH" "/api/admin/products/{id}", "admin", "Change a product's fields", Admin,
            query: None, body: Some(schema::<UpdateProductRequest>), response: 200 Some(schema::<Product>)),
        op!("DELETE" "/api/admin/products/{id}", "admin", "Delete a product", Admin,
            query: None, body: None, response: 204 None),
        op!("POST" "/api/admin/categories", "admin", "Create a category", Admin,
            query: None, body: Some(schema::<CreateCategoryRequest>), response: 201 Some(schema::<Category>)),
        op!("POST" "/api/admin/inventory/{product_id}/restock", "admin", "Add received stock", Admin,
            query: None, body: Some(schema::<RestockRequest>), response: 200 Some(schema::<StockLevel>)),
        op!("GET" "/api/admin/orders", "admin", "Every user's orders", Admin,
            query: Some(query::<AdminOrderQuery>), body: None, response: 200 Some(schema::<OrderPage>)),
        op!("GET" "/api/admin/users", "admin", "Users, newest first, found by text in email or name, or by role", Admin,
            query: Some(query::<AdminUserQuery>), body: None, response: 200 Some(schema::<UserPage>)),
        op!("PUT" "/api/admin/users/{id}/role", "admin", "Give a user another role (from their next token; never the last active admin's)", Admin,
            query: None, body: Some(schema::<SetUserRoleRequest>), response: 200 Some(schema::<AdminUser>)),
        op!("GET" "/api/admin/ratelimits", "admin", "The effective rate-limit rules and backend", Admin,
            query: None, body: None, response: 200 Some(schema::<RateLimitRules>)),
        op!("PUT" "/api/admin/ratelimits/{name}", "admin", "Store a rate-limit rule in Redis (applies to every replica)", Admin,
            query: None, body: Some(schema::<RuleBody>), response: 200 Some(schema::<Rule>)),
        op!("DELETE" "/api/admin/ratelimits/{name}", "admin", "Remove a rate-limit rule stored in Redis", Admin,
            query: None, body: None, response: 204 None),
        op!("GET" "/api/admin/audit", "admin", "The audit trail of every domain event, newest first, filtered", Admin,
            query: Some(query::<AuditQuery>), body: None, response: 200 Some(schema::<AuditPage>)),
        op!("GET" "/api/admin/audit/verify", "admin", "Check the audit trail's hash chain and report the first broken entry", Admin,
            query: None, body: None, response: 200 Some(schema::<AuditVerification>)),
        op!("GET" "/api/admin/reviews/queue", "admin", "Reported reviews waiting for moderation, the longest waiting first, with their reports", Admin,
            query: Some(query::<PageQuery>), body: None, response: 200 Some(schema::<ModerationQueue>)),
        op!("POST" "/api/admin/reviews/{id}/moderation", "admin", "Keep a review (its reports are settled) or remove it (hidden, out of the rating)", Admin,
            query: None, body: Some(schema::<ModerationRequest>), response: 200 Some(schema::<Review>)),
        op!("GET" "/api/admin/dashboard", "admin", "Orders and revenue today, products running out, orders stuck in a status longer than expected, and dead-lettered events", Admin,
            query: None, body: None, response: 200 Some(schema::<Dashboard>)),
        op!("GET" "/api/admin/analytics/sales", "admin", "Confirmed orders of a period (whole UTC days; 422 for one reversed or over 366 days), grouped by day, product or category, per currency", Admin,
            query: Some(query::<AnalyticsQuery>), body: None, response: 200 Some(schema::<SalesReport>)),
        op!("GET" "/api/admin/analytics/sales.csv", "admin", "The sales report as CSV", Admin,
            query: Some(query::<AnalyticsQuery>), body: None, response: 200 None),
        op!("GET" "/api/admin/analytics/funnel", "admin", "What became of the orders placed in a period: confirmed, delivered, rejected, failed, cancelled, refunded, and the rates", Admin,
            query: Some(query::<AnalyticsQuery>), body: None, response: 200 Some(schema::<Funnel>)),
        op!("GET" "/api/openapi.json", "meta", "This document", Public,
            query: None, body: None, response: 200 None),
    ]
}

/// Builds the document.
pub fn build() -> Value {
    let mut generator = contract::settings()
        .with(|settings| settings.definitions_path = "/components/schemas".into())
        .into_generator();
    let problem = generator.subschema_for::<ProblemDetails>();
    let mut paths: Map<String, Value> = Map::new();
    for op in operations() {
        let mut parameters: Vec<Value> = path_parameters(op.path);
        if let Some(query) = op.query {
            parameters.extend(query_parameters(&query()));
        }
        if op.idempotency_key {
            parameters.push(json!({
                "name": "Idempotency-Key", "in": "header", "required": true,
                "description": "Client-chosen unique key; a retry with the same key returns the same order.",
                "schema": {"type": "string", "pattern": contract::IDEMPOTENCY_KEY}
            }));
        }
        if op.path == STRIPE_WEBHOOK_PATH {
            parameters.push(json!({
                "name": "Stripe-Signature", "in": "header", "required": true,
                "description": "Stripe's signature of the body: t=<unix time>,v1=<hex HMAC-SHA256 of \"<t>.<body>\" under the endpoint's signing secret>. A delivery that does not verify is refused with 401.",
                "schema": {"type": "string", "minLength": 1}
            }));
        }
        if op.path == LIVE_EVENTS_PATH {
            parameters.push(json!({
                "name": "Last-Event-ID", "in": "header", "required": false,
                "description": "The id (version) of the last event seen: the stream resumes after it.",
                "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"}
            }));
        }
        let mut operation = json!({
            "operationId": operation_id(op.method, op.path),
            "tags": [op.tag],
            "summary": op.summary,
            "parameters": parameters,
        });
        if let Some(body) = op.body {
            operation["requestBody"] = json!({
                "required": op.path != "/api/orders/{id}/cancel",
                "content": {"application/json": {"schema": body(&mut generator)}}
            });
        }
        let mut responses = Map::new();
        let success = match (op.path, op.response.1) {
            (SALES_CSV_PATH, _) => json!({
                "description": "The report as CSV: a header line, then one line per row (fields as in SalesRow)",
                "content": {"text/csv": {"schema": {"type": "string"}}}
            }),
            (LIVE_SOCKET_PATH, Some(schema)) => json!({
                "description": "Switching Protocols: the connection is a WebSocket; each text message is the JSON below",
                "x-websocket-message": schema(&mut generator)
            }),
            (LIVE_EVENTS_PATH, Some(schema)) => json!({
                "description": "An event stream; the data of each `status` event is the JSON below",
                "content": {"text/event-stream": {"schema": {"type": "string"}, "x-event-data": schema(&mut generator)}}
            }),
            (_, Some(schema)) => {
                json!({"description": "Success", "content": {"application/json": {"schema": schema(&mut generator)}}})
            }
            (_, None) => json!({"description": "Success"}),
        };
        responses.insert(op.response.0.to_string(), success);
        let problem_response = |description: &str| json!({"description": description, "content": {PROBLEM_JSON: {"schema": problem.clone()}}});
        responses
            .insert("400".into(), problem_response("Invalid request; `errors` names each invalid field"));
        if op.access != Access::Public {
            responses.insert("401".into(), problem_response("Missing, expired or invalid bearer token"));
        }
        if matches!(op.access, Access::Admin | Access::Courier) {
            responses.insert("403".into(), problem_response("The caller's role does not allow this"));
        }
        responses.insert(
            "429".into(),
            json!({
                "description": if op.path == "/api/auth/login" {
                    "Rate limited, or sign-ins to this account are paused after 5 wrong passwords in a row (30 s, doubling up to 15 min); see Retry-After"
                } else {
                    "Rate limited; see Retry-After, RateLimit and RateLimit-Policy"
                },
                "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                "content": {PROBLEM_JSON: {"schema": problem.clone()}}
            }),
        );
        if op.access != Access::Public {
            // Not 401: the token may be valid; the gateway cannot check it yet.
            responses.insert(
                "503".into(),
                json!({
                    "description": "The gateway cannot verify bearer tokens yet (it has not loaded the auth service's signing keys), or a service behind it is unavailable; retry after Retry-After",
                    "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                    "content": {PROBLEM_JSON: {"schema": problem.clone()}}
                }),
            );
        }
        responses.insert("4XX".into(), problem_response("Other client errors"));
        responses.insert("5XX".into(), problem_response("A service behind the gateway failed or timed out"));
        operation["responses"] = Value::Object(responses);
        if op.access != Access::Public {
            operation["security"] = json!([{"bearer": []}]);
        }
        let entry = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        entry[op.method.to_ascii_lowercase()] = operation;
    }
    let schemas = generator.take_definitions(true);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "commerce-stack API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "REST/JSON edge of commerce-stack. Money is {currency, amount_minor}: an ISO 4217 code and integer minor units. No string may contain NUL (U+0000). Errors are RFC 9457 problem details. Rate-limit headers follow draft-ietf-httpapi-ratelimit-headers-09."
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (EdDSA)"}}
        }
    })
}

fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    for segment in path.trim_start_matches("/api/").split('/') {
        id.push('_');
        id.push_str(&segment.replace(['{', '}', '.'], "").replace('-', "_"));
    }
    id
}

fn path_parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{').and_then(|rest| rest.strip_suffix('}')))
        .map(|name| {
            let schema =
                if name == "name" { rule_name_schema() } else { json!({"type": "string", "format": "uuid"}) };
            json!({"name": name, "in": "path", "required": true, "schema": schema})
        })
        .collect()
}

fn query_parameters(schema: &Schema) -> Vec<Value> {
    let Some(object) = schema.as_object() else { return Vec::new() };
    let required: Vec<&str> = object
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let definitions = object.get("$defs").cloned().unwrap_or(Value::Null);
    object
        .get("properties")
        .and_then(Value::as_object)
        .map(|properties| {
            properties
                .iter()
                .map(|(name, property)| {
                    json!({
                        "name": name,
                        "in": "query",
                        "required": required.contains(&name.as_str()),
                        "schema": inline_refs(property, &definitions),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Replaces local `$ref`s of a query property by the definition, so query
/// enums need no component of their own.
fn inline_refs(value: &Value, definitions: &Value) -> Value {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("$ref")
                && let Some(name) = reference.strip_prefix("#/$defs/")
                && let Some(definition) = definitions.get(name)
            {
                return definition.clone();
            }
            Value::Object(
                map.iter().map(|(key, value)| (key.clone(), inline_refs(value, definitions))).collect(),
            )
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|item| inline_refs(item, definitions)).collect())
        }
        other => other.clone(),
    }
}

/// `GET /api/openapi.json`.
pub async fn document() -> Json<Value> {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    Json(DOCUMENT.get_or_init(build).clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::ROUTES;

    #[test]
    fn the_document_lists_every_route_and_nothing_else() {
        let document = build();
        assert_eq!(document["openapi"], "3.1.0");
        let mut documented = Vec::new();
        for (path, item) in document["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                documented.push((method.to_ascii_uppercase(), path.clone()));
            }
        }
        let mut expected: Vec<(String, String)> =
            ROUTES.iter().map(|(method, path)| ((*method).to_owned(), (*path).to_owned())).collect();
        expected.sort();
        documented.sort();
        assert_eq!(documented, expected);
    }

    #[test]
    fn authenticated_operations_document_401_and_503_with_retry_after() {
        let document = build();
        let cart = &document["paths"]["/api/cart"]["get"]["responses"];
        assert!(cart["401"].is_object(), "{cart}");
        assert!(cart["503"]["headers"]["Retry-After"].is_object(), "{cart}");
        let products = &document["paths"]["/api/products"]["get"]["responses"];
        assert!(products["401"].is_null() && products["503"].is_null(), "public: {products}");
    }

    #[test]
    fn every_schema_reference_resolves_to_a_component() {
        let document = build();
        let text = document.to_string();
        let schemas = document["components"]["schemas"].as_object().expect("schemas");
        for reference in text.split("\"$ref\":\"").skip(1) {
            let target = reference.split('"').next().unwrap_or_default();
            let name = target
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("foreign ref {target}"));
            assert!(schemas.contains_key(name), "{target} does not resolve");
        }
        assert!(schemas.contains_key("Problem"));
        let add_item = &schemas["AddItemRequest"];
        assert_eq!(add_item["additionalProperties"], false, "unknown fields are documented as rejected");
    }
}
