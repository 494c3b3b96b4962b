//! Errors as RFC 9457 problem details (`application/problem+json`), and the
//! one mapping from gRPC status codes to HTTP status codes.
//!
//! Every error the gateway returns goes through [`Problem`]: malformed
//! requests (with an `errors` member naming each invalid field by JSON
//! pointer, as in RFC 9457 section 3's example), authentication and
//! authorization failures, rate limiting, and the statuses of gRPC calls.
//! A gRPC error's message is the peer's own user-facing detail (the services
//! write them for clients); internal failures are reported without it.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tonic::Code;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";
/// Base of the `type` URIs. They name the problem; nothing is served there.
const TYPE_BASE: &str = "https://commerce-stack.dev/problems/";

/// One invalid input, located by a JSON pointer into the body (`/lines/0/quantity`),
/// or by a `query:` / `path:` / `header:` prefix for the other places input comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct FieldError {
    /// Where the invalid value is.
    pub pointer: String,
    /// What is wrong with it.
    pub detail: String,
}

impl FieldError {
    pub fn new(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { pointer: printable(pointer.into()), detail: printable(detail.into()) }
    }
}

/// `text` with control characters escaped (`\u{0}`, `\n`): a problem may
/// quote what the client sent (an unknown field's name), and neither the
/// answer nor a log line should carry a NUL or a forged line break.
pub fn printable(text: String) -> String {
    if !text.chars().any(char::is_control) {
        return text;
    }
    text.chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

/// An RFC 9457 problem detail, boxed so that `Result<_, Problem>` stays one
/// pointer wide on the success path. `instance` is filled in from the
/// request id when the response is made, so a client can quote it.
#[derive(Debug, Clone)]
pub struct Problem(Box<ProblemDetails>);

impl std::ops::Deref for Problem {
    type Target = ProblemDetails;

    fn deref(&self) -> &ProblemDetails {
        &self.0
    }
}

impl std::ops::DerefMut for Problem {
    fn deref_mut(&mut self) -> &mut ProblemDetails {
        &mut self.0
    }
}

/// The members of a problem, as serialized.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Problem")]
pub struct ProblemDetails {
    /// URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// This occurrence: `urn:request:<x-request-id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Each invalid field of the request, for validation problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Extra response headers (`WWW-Authenticate`, `Retry-After`, ...).
    #[serde(skip)]
    #[schemars(skip)]
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Problem {
    /// A problem of `status`; `slug` becomes the last segment of `type`.
    pub fn new(status: StatusCode, slug: &str, detail: impl Into<String>) -> Self {
        Self(Box::new(ProblemDetails {
            kind: format!("{TYPE_BASE}{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: printable(detail.into()),
            instance: None,
            errors: Vec::new(),
            headers: Vec::new(),
        }))
    }

    /// 400 with the invalid fields listed.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.pointer, one.detail),
            _ => format!("{} fields are invalid", errors.len()),
        };
        let mut problem = Self::new(StatusCode::BAD_REQUEST, "validation", detail);
        problem.errors = errors;
        problem
    }

    /// 400 for one invalid field.
    pub fn invalid_field(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::validation(vec![FieldError::new(pointer, detail)])
    }

    /// 401 with the `WWW-Authenticate: Bearer` challenge (RFC 6750).
    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let challenge = format!(
            "Bearer realm=\"commerce\", error=\"invalid_token\", error_description=\"{}\"",
            detail.replace(['"', '\\'], "'")
        );
        let value = HeaderValue::from_str(&challenge)
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"commerce\""));
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail)
            .with_header(header::WWW_AUTHENTICATE, value)
    }

    /// 503 for a bearer token the gateway cannot check because it lacks the
    /// auth service's signing keys. Never 401: the token may well be valid,
    /// and a 401 would tell the client to throw it away. `Retry-After: 1`
    /// because keys usually arrive within a second of auth answering.
    pub fn authentication_unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "authentication-unavailable", detail)
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
    }

    /// 403: authenticated, but the role does not allow it.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 404 for a resource that does not exist or that the caller may not see
    /// (the two are deliberately indistinguishable).
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(mut self) -> Response {
        if self.instance.is_none() {
            self.instance = crate::request_id::current_request_id()
                .filter(|id| !id.is_empty())
                .map(|id| format!("urn:request:{id}"));
        }
        let status = self.status_code();
        let body = serde_json::to_vec(&*self.0).unwrap_or_else(|_| b"{}".to_vec());
        let mut response =
            (status, [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))], body).into_response();
        for (name, value) in std::mem::take(&mut self.headers) {
            response.headers_mut().append(name, value);
        }
        response
    }
}

/// The HTTP status for a gRPC status code: the single place this mapping
/// lives. `FailedPrecondition` is 409 (the resource's state forbids it,
/// e.g. cancelling a delivered order) unless the peer's message says the
/// request's content is unusable, for which [`problem_from_status`] picks 422.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // Our own client going away drops the call, so a Cancelled we see
        // came from the peer side: tonic servers answer a call whose
        // `grpc-timeout` ran out with Cancelled("Timeout expired"). To the
        // HTTP client that is the gateway timing out upstream, not a 499.
        Code::Cancelled => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::BAD_GATEWAY,
    }
}

/// Turns a gRPC error from `peer` into a problem. Client errors keep the
/// peer's message; server-side failures are logged and described
/// generically (a stack of internal detail helps no client).
pub fn problem_from_status(peer: &str, status: &tonic::Status) -> Problem {
    let code = status.code();
    let mut http = http_status(code);
    // A precondition about the request's own content (an unknown or inactive
    // product named in it, quantities whose total at the catalog's prices
    // overflows) is unprocessable content, not a state conflict.
    if code == Code::FailedPrecondition {
        let message = status.message().to_ascii_lowercase();
        let about_the_request =
            ["unknown", "inactive", "not found", "does not exist", "not for sale", "priced in", "overflows"];
        if about_the_request.iter().any(|word| message.contains(word)) {
            http = StatusCode::UNPROCESSABLE_ENTITY;
        }
    }
    let slug = match code {
        Code::InvalidArgument | Code::OutOfRange => "validation",
        Code::NotFound => "not-found",
        Code::AlreadyExists => "already-exists",
        Code::FailedPrecondition | Code::Aborted => "conflict",
        Code::PermissionDenied => "forbidden",
        Code::Unauthenticated => "unauthenticated",
        Code::ResourceExhausted => "rate-limited",
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded | Code::Cancelled => "timeout",
        _ => "upstream-error",
    };
    let detail = if http.is_client_error() {
        status.message().to_owned()
    } else {
        tracing::warn!(peer, code = ?code, message = status.message(), "gRPC call failed");
        format!("the {peer} service could not answer ({})", code.description())
    };
    let problem = if code == Code::Unauthenticated {
        Problem::unauthenticated(detail)
    } else {
        Problem::new(http, slug, detail)
    };
    if code == Code::Unavailable {
        // Unavailable is transient by definition; tell clients when to retry.
        return problem.with_header(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if let Some(retry_after) = commerce_platform::quota::retry_after(status) {
        // The peer said when (a paused account's sign-in): whole seconds,
        // at least one.
        let seconds = (retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).max(1);
        return problem.with_header(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    problem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_grpc_code_maps_to_the_documented_http_status() {
        let table = [
            (Code::Ok, 200),
            (Code::Cancelled, 504),
            (Code::Unknown, 502),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 409),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 502),
            (Code::Unavailable, 503),
            (Code::DataLoss, 502),
            (Code::Unauthenticated, 401),
        ];
        for (code, http) in table {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn a_failed_precondition_about_an_unknown_product_is_unprocessable() {
        let status = tonic::Status::failed_precondition("unknown product 0b1c");
        assert_eq!(problem_from_status("order", &status).status, 422);
        let status = tonic::Status::failed_precondition("invalid order: the total of the order overflows");
        assert_eq!(problem_from_status("order", &status).status, 422);
        let status = tonic::Status::failed_precondition("order is already delivered");
        assert_eq!(problem_from_status("order", &status).status, 409);
    }

    #[test]
    fn a_paused_accounts_sign_in_is_429_with_the_peers_retry_after() {
        let status = commerce_platform::quota::exceeded(
            "too many failed sign-ins to this account; try again in 30 s",
            "account:1",
            "failed sign-ins in a row",
            std::time::Duration::from_millis(29_200),
        );
        let problem = problem_from_status("auth", &status);
        assert_eq!(problem.status, 429);
        assert!(problem.detail.contains("try again in 30 s"), "{}", problem.detail);
        let retry =
            problem.headers.iter().find(|(name, _)| name == header::RETRY_AFTER).map(|(_, v)| v.clone());
        assert_eq!(retry, Some(HeaderValue::from_static("30")));
    }

    #[test]
    fn server_side_failures_hide_the_peer_message_and_unauthenticated_challenges() {
        let problem =
            problem_from_status("catalog", &tonic::Status::internal("db password wrong at 10.0.0.3"));
        assert_eq!(problem.status, 502);
        assert!(!problem.detail.contains("10.0.0.3"));
        let problem = problem_from_status("auth", &tonic::Status::unauthenticated("wrong password"));
        assert!(problem.headers.iter().any(|(name, _)| name == header::WWW_AUTHENTICATE));
    }
}
