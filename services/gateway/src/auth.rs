//! Who is calling: the middleware that verifies a bearer token once per
//! request, and the extractors handlers use to demand a caller or a role.
//!
//! The middleware never refuses a request itself: public routes ignore a bad
//! token, and the rate limiter (which runs after it) keys by user when the
//! token is good. A handler that needs a caller takes [`Caller`] (401 when
//! the token is missing or invalid, with `WWW-Authenticate: Bearer`; 503
//! with `Retry-After` when the gateway cannot check it because it lacks the
//! auth service's signing keys), [`AdminCaller`] or [`CourierCaller`] (403
//! for the wrong role).

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;

use crate::jwt::{self, Rejection, Role, Verifier};
use crate::problem::Problem;

pub use crate::jwt::Caller;

/// The outcome of looking at the `Authorization` header, in the request's
/// extensions.
#[derive(Debug, Clone)]
pub enum Authentication {
    /// No `Authorization` header.
    Anonymous,
    Verified(Caller),
    /// A bearer token that was refused, or that could not be checked.
    Refused(Rejection),
    /// An `Authorization` header that is not `Bearer <token>`.
    NotBearer,
}

/// Verifies the bearer token, if any, and records the outcome; an outcome
/// already recorded (by [`remembered_caller`] in `middleware::observe`)
/// stands.
/// `S` is the app's state ([`AppState`](crate::state::AppState)), which
/// lends the verifier: this module does not depend on what else it holds.
pub async fn authenticate<S>(State(state): State<S>, mut request: Request, next: Next) -> Response
where
    S: AsRef<Verifier<AuthKeySource>>,
{
    if request.extensions().get::<Arc<Authentication>>().is_some() {
        return next.run(request).await;
    }
    let outcome = match request.headers().get(header::AUTHORIZATION) {
        None => Authentication::Anonymous,
        Some(value) => match value.to_str().ok().and_then(bearer_token) {
            None => Authentication::NotBearer,
            Some(token) => match state.as_ref().verify(token).await {
                Ok(caller) => {
                    tracing::Span::current().record("user_id", caller.user_id.as_str());
                    Authentication::Verified(caller)
                }
                Err(error) => Authentication::Refused(error),
            },
        },
    };
    request.extensions_mut().insert(Arc::new(outcome));
    next.run(request).await
}

/// The caller behind the request's bearer token when the verifier
/// remembers the token as accepted (nearly always: a client sends the same
/// token again and again), without verifying anything.
pub fn remembered_caller(
    verifier: &Verifier<AuthKeySource>,
    headers: &axum::http::HeaderMap,
) -> Option<Caller> {
    let token = headers.get(header::AUTHORIZATION)?.to_str().ok().and_then(bearer_token)?;
    verifier.remembered(token)
}

fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|token| !token.is_empty())
}

/// The outcome recorded by [`authenticate`] (anonymous when it did not run).
pub fn authentication(parts: &Parts) -> Arc<Authentication> {
    parts
        .extensions
        .get::<Arc<Authentication>>()
        .cloned()
        .unwrap_or_else(|| Arc::new(Authentication::Anonymous))
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match authentication(parts).as_ref() {
            Authentication::Verified(caller) => Ok(caller.clone()),
            Authentication::Anonymous => {
                Err(Problem::unauthenticated("this operation needs a bearer access token"))
            }
            Authentication::NotBearer => {
                Err(Problem::unauthenticated("the Authorization header must be `Bearer <token>`"))
            }
            Authentication::Refused(Rejection::Token(error)) => {
                Err(Problem::unauthenticated(error.to_string()))
            }
            Authentication::Refused(unavailable @ Rejection::KeysUnavailable { .. }) => {
                Err(Problem::authentication_unavailable(unavailable.to_string()))
            }
        }
    }
}

/// The caller of a route that serves anyone: `Some` when the request
/// carries a verified token, `None` when it carries none or one that was
/// refused (the route answers as for an anonymous caller).
#[derive(Debug, Clone)]
pub struct OptionalCaller(pub Option<Caller>);

impl<S: Send + Sync> FromRequestParts<S> for OptionalCaller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(match authentication(parts).as_ref() {
            Authentication::Verified(caller) => Self(Some(caller.clone())),
            _ => Self(None),
        })
    }
}

/// A caller with the admin role.
#[derive(Debug, Clone)]
pub struct AdminCaller(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for AdminCaller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if !caller.has(Role::Admin) {
            return Err(Problem::forbidden("this operation needs the admin role"));
        }
        Ok(Self(caller))
    }
}

/// A caller with the courier or admin role.
#[derive(Debug, Clone)]
pub struct CourierCaller(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for CourierCaller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if !(caller.has(Role::Courier) || caller.has(Role::Admin)) {
            return Err(Problem::forbidden("this operation needs the courier or admin role"));
        }
        Ok(Self(caller))
    }
}

/// The real key source: auth's `GetPublicKeys` through the resilient peers.
#[derive(Debug, Clone)]
pub struct AuthKeySource {
    pub peers: Arc<commerce_platform::discovery::Peers>,
}

impl jwt::KeySource for AuthKeySource {
    async fn fetch(&self) -> Result<jwt::KeySet, String> {
        use commerce_proto::auth::v1::GetPublicKeysRequest;
        use commerce_proto::auth::v1::auth_service_client::AuthServiceClient;
        let channel =
            self.peers.channel(commerce_topology::Service::Auth).map_err(|error| error.to_string())?;
        let response = AuthServiceClient::new(channel)
            .get_public_keys(commerce_platform::resilience::idempotent(GetPublicKeysRequest {}))
            .await
            .map_err(|status| format!("GetPublicKeys failed: {} {}", status.code(), status.message()))?
            .into_inner();
        let max_age = response.max_age.and_then(|age| {
            let seconds = u64::try_from(age.seconds).ok()?;
            Some(std::time::Duration::from_secs(seconds))
        });
        // Compared with this process's clock on arrival: off by at most the
        // call's latency, far inside the leeway.
        let clock = response.clock.as_ref().and_then(commerce_proto::time::from_timestamp);
        Ok(jwt::KeySet { keys: response.keys, max_age, clock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bearer_credentials_are_taken() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic dXNlcg=="), None);
        assert_eq!(bearer_token("Bearer "), None);
    }
}
