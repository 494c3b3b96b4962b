//! Cross-cutting HTTP middleware: the request's identity (request id and
//! trace context), the JSON access log, the request timeout, the early
//! body-size check, CORS, HTTP metrics and the problem answers for unknown
//! routes and methods.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use commerce_platform::admin::Metrics;
use commerce_platform::admin::{TraceExemplar, TracedHistogram};
use commerce_platform::trace_context;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::exponential_buckets;
use tokio::time::Instant;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;

use crate::auth::Authentication;
use crate::extract::body_too_large;
use crate::problem::Problem;
use crate::request_id::REQUEST_ID;
use crate::state::AppState;

/// Runs the request in an `http_request` span, a child of the caller's
/// (`traceparent`, or a new trace; gRPC calls made while handling it are its
/// children) with the request id and trace ids, and writes one access-log
/// event when it completes.
///
/// The span gets the caller's user id at creation when the verifier
/// remembers the bearer token (the outcome is then recorded for
/// [`auth::authenticate`](crate::auth::authenticate), which keeps it):
/// recording it into the span later, as `authenticate` does for a token it
/// verifies, makes the JSON log layer parse and rewrite the span's fields,
/// which was 5% of an authenticated read.
pub async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let remembered = crate::auth::remembered_caller(&state.verifier, request.headers());
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let parent = trace_context::extract_http(request.headers());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // The route template, not the path: a span name must not carry ids.
    let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    let span = tracing::info_span!(
        "http_request",
        otel.name = route.map_or_else(|| method.to_string(), |route| format!("{method} {route}")),
        otel.kind = "server",
        request_id = %request_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        parent_span_id = %trace_context::parent_hex(parent.as_ref()),
        user_id = remembered.as_ref().map(|caller| caller.user_id.as_str()),
    );
    trace_context::start(&span, parent.as_ref());
    if let Some(caller) = remembered {
        request.extensions_mut().insert(Arc::new(Authentication::Verified(caller)));
    }
    let response = REQUEST_ID.scope(request_id, next.run(request)).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    trace_context::set_attribute(
        &span,
        opentelemetry::KeyValue::new("http.response.status_code", i64::from(status)),
    );
    if response.status().is_server_error() {
        trace_context::set_error(&span, format!("answered {status}"));
    }
    span.in_scope(|| {
        tracing::info!(target: "commerce_gateway::access", %method, %path, status, latency_ms, "request completed");
    });
    response
}

/// Bodies up to this size are read and discarded before a 413 is sent.
const DRAIN_MAX_BYTES: u64 = 8 << 20;
/// ... for at most this long.
const DRAIN_MAX_TIME: Duration = Duration::from_secs(5);

/// Refuses bodies declared larger than the limit without passing a byte on
/// (the body-limit layer catches undeclared ones while reading).
///
/// A body of up to [`DRAIN_MAX_BYTES`] is read and thrown away first (for
/// at most [`DRAIN_MAX_TIME`]): closing a connection with unread data makes
/// the kernel reset it, and the reset can destroy the 413 before the client
/// read it, so the client saw "broken pipe" instead of an answer. Larger
/// bodies are answered at once.
pub async fn reject_large_bodies(State(limit): State<usize>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if let Some(length) = declared.filter(|length| *length > limit as u64) {
        if length <= DRAIN_MAX_BYTES {
            let _ = tokio::time::timeout(DRAIN_MAX_TIME, drain(request.into_body())).await;
        }
        // Whatever was not drained is still on the wire, so the server must
        // close the connection; saying so keeps a pooled client from reusing it.
        let mut response = body_too_large().into_response();
        response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        return response;
    }
    next.run(request).await
}

/// Reads `body` to its end (or its first error), keeping nothing.
async fn drain(mut body: axum::body::Body) {
    use http_body_util::BodyExt as _;
    while let Some(Ok(_)) = body.frame().await {}
}

/// Answers 504 when the whole request takes longer than allowed.
pub async fn timeout(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("the request did not complete within {}", humantime::format_duration(limit)),
        )
        .into_response(),
    }
}

/// CORS for the configured origins (`*` for any), allowing the API's own
/// request headers plus `extra_headers`, with preflights cached `max_age`.
pub fn cors(origins: &[String], extra_headers: &[String], max_age: Duration) -> CorsLayer {
    let mut headers = vec![
        header::AUTHORIZATION,
        header::CONTENT_TYPE,
        header::HeaderName::from_static("idempotency-key"),
        header::HeaderName::from_static("x-request-id"),
        header::HeaderName::from_static("traceparent"),
        header::HeaderName::from_static("tracestate"),
    ];
    for name in extra_headers.iter().filter_map(|name| header::HeaderName::from_bytes(name.as_bytes()).ok()) {
        if !headers.contains(&name) {
            headers.push(name);
        }
    }
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
        .allow_headers(headers)
        .expose_headers([
            header::HeaderName::from_static("x-request-id"),
            header::HeaderName::from_static("ratelimit"),
            header::HeaderName::from_static("ratelimit-policy"),
            header::RETRY_AFTER,
        ])
        .max_age(max_age);
    if origins.is_empty() {
        return layer.allow_origin(AllowOrigin::list(Vec::<HeaderValue>::new()));
    }
    if origins.iter().any(|origin| origin == "*") {
        return layer.allow_origin(AllowOrigin::any());
    }
    let list: Vec<HeaderValue> =
        origins.iter().filter_map(|origin| HeaderValue::from_str(origin.trim()).ok()).collect();
    layer.allow_origin(AllowOrigin::list(list))
}

/// 404 problem for paths no route serves.
pub async fn no_route(request: Request) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "no-route", format!("no route for {}", request.uri().path()))
}

/// 405 problem for known paths with an unsupported method.
pub async fn method_not_allowed(request: Request) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("{} is not supported on {}", request.method(), request.uri().path()),
    )
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

/// HTTP request metrics, by route pattern (never the raw path, which would
/// put ids in label values).
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    /// With the request's trace as exemplar.
    duration: Family<RouteLabels, TracedHistogram>,
}

impl HttpMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        // 1 ms to ~16 s.
        let duration = Family::<RouteLabels, TracedHistogram>::new_with_constructor(|| {
            TracedHistogram::new(exponential_buckets(0.001, 2.0, 15))
        });
        metrics.register(
            "commerce_gateway_http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        metrics.register(
            "commerce_gateway_http_request_duration_seconds",
            "HTTP request latency by route",
            duration.clone(),
        );
        Self { requests, duration }
    }
}

/// Counts and times requests that matched a route; the time's exemplar is
/// the request's trace.
pub async fn record_metrics(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map_or("unknown", MatchedPath::as_str).to_owned();
    let method = request.method().as_str().to_owned();
    // Inside the request's span: `observe` runs around this layer.
    let exemplar = TraceExemplar::current();
    let response = next.run(request).await;
    metrics
        .requests
        .get_or_create(&RequestLabels { method, route: route.clone(), status: response.status().as_u16() })
        .inc();
    metrics.duration.get_or_create(&RouteLabels { route }).observe(
        started.elapsed().as_secs_f64(),
        exemplar,
        None,
    );
    response
}
