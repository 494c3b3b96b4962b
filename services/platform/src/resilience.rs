//! Resilient gRPC clients: a deadline on every call, bounded retries with
//! jittered backoff for idempotent calls, and a circuit breaker per peer.
//!
//! # Shape: a channel, not a helper
//!
//! [`ResilientChannel`] is a tower `Service` around a tonic `Channel`, so a
//! generated client wraps it unchanged and service code stays a plain call:
//!
//! ```ignore
//! let mut catalog = CatalogServiceClient::new(peers.channel(Service::Catalog)?);
//! let product = catalog.get_product(idempotent(GetProductRequest { id })).await?;
//! ```
//!
//! An `async call(idempotent, || fut)` helper would need a closure around
//! every call that rebuilds the request for each attempt; the channel instead
//! buffers the (unary) request body once and replays it, so the policy lives
//! in one place and no call site can forget it.
//!
//! # Policy, and why
//!
//! - **Deadline**: every call gets `--client-deadline` unless the request set
//!   its own (`Request::set_timeout`). It covers all attempts, is sent as
//!   `grpc-timeout` with the time remaining (so the peer stops working for a
//!   caller that has given up) and is enforced locally as `DeadlineExceeded`.
//! - **Retries** only for calls known to be idempotent: marked per request
//!   with [`idempotent`], or per method through [`IdempotentMethods`] (e.g.
//!   from the proto's `idempotency_level` options). A retried write that
//!   did reach the peer would otherwise be applied twice.
//!   Retried codes: `Unavailable` (the peer could not take the call: refused
//!   connection, restarting pod, GOAWAY) and `DeadlineExceeded` when the peer
//!   gave up early while our own budget still has time. **Not** retried:
//!   `ResourceExhausted`, the peer's way of saying it is overloaded or a quota
//!   is spent: retrying within the same deadline only adds load where load is
//!   the problem (the breaker backs off instead); and no application error
//!   (`NotFound`, `FailedPrecondition`, `Aborted`...), which a second attempt
//!   would answer the same way. Backoff is "full jitter" (a uniform delay in
//!   `[0, min(cap, base * 2^n)]`) so that the callers of a recovering peer do
//!   not return in lockstep, and a retry is skipped when its delay would
//!   outlast the deadline.
//! - **Circuit breaker** per peer, counting consecutive failures that mean
//!   the peer itself is unwell: transport errors, `Unavailable`,
//!   `DeadlineExceeded`, `ResourceExhausted` (unless it is one subject's
//!   quota, see [`crate::quota`]). Application errors prove the
//!   peer is up and reset the count. Once open, calls fail at once with
//!   `Unavailable("circuit open ...")` without touching the network, which
//!   both spares the peer and returns an answer to our caller inside its own
//!   deadline; after the open period a limited number of probe calls go
//!   through (half-open) and the first probe's result closes or re-opens it.
//!   Each attempt of a retried call asks the breaker separately.
//!
//! Failures are read from the response headers, where gRPC puts the status
//! of a call that failed before sending a message (what tonic servers do for
//! `Err(Status)`); a status that only arrives in trailers after streamed
//! messages is past the point where a retry would be safe anyway.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower::{Service, ServiceExt};

use crate::admin::{Metrics, PeerLabels};

/// Error type of the channel, as tonic's generated clients expect.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Default per-call deadline: a synchronous query between services answers
/// in milliseconds; two seconds covers a cold cache and a retry or two while
/// keeping the gateway's own request timeout well ahead.
pub const DEFAULT_DEADLINE: &str = "2s";
/// Default retries after the first attempt: three attempts ride out a pod
/// restart without multiplying load on a peer that is really down.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// Default backoff base: long enough for a new connection to another pod.
pub const DEFAULT_BACKOFF_BASE: &str = "50ms";
/// Default backoff ceiling, well under the deadline.
pub const DEFAULT_BACKOFF_CAP: &str = "1s";
/// Default consecutive failures that open the breaker: enough not to trip on
/// one unlucky pod during a rollout.
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// Default time the breaker stays open before probing: a pod restart usually
/// takes longer than this, so one probe every ten seconds is cheap.
pub const DEFAULT_BREAKER_OPEN: &str = "10s";
/// Default concurrent probes while half-open: one is enough to learn.
pub const DEFAULT_HALF_OPEN_PROBES: u32 = 1;

/// `grpc-timeout` request header (gRPC over HTTP/2 spec).
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// gRPC client flags every service that calls peers accepts.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "gRPC clients")]
pub struct ClientArgs {
    /// Deadline of one call, all retries included, unless the request sets
    /// its own.
    #[arg(long = "client-deadline", id = "client-deadline", env = "COMMERCE_CLIENT_DEADLINE", default_value = DEFAULT_DEADLINE, value_parser = humantime::parse_duration)]
    pub deadline: Duration,
    /// Retries after the first attempt, for idempotent calls only.
    #[arg(long = "client-max-retries", id = "client-max-retries", env = "COMMERCE_CLIENT_MAX_RETRIES", default_value_t = DEFAULT_MAX_RETRIES)]
    pub max_retries: u32,
    /// First retry's maximum backoff; doubles per retry up to the cap.
    #[arg(long = "client-backoff-base", id = "client-backoff-base", env = "COMMERCE_CLIENT_BACKOFF_BASE", default_value = DEFAULT_BACKOFF_BASE, value_parser = humantime::parse_duration)]
    pub backoff_base: Duration,
    /// Ceiling of one backoff.
    #[arg(long = "client-backoff-cap", id = "client-backoff-cap", env = "COMMERCE_CLIENT_BACKOFF_CAP", default_value = DEFAULT_BACKOFF_CAP, value_parser = humantime::parse_duration)]
    pub backoff_cap: Duration,
    /// Consecutive failures that open a peer's circuit.
    #[arg(long = "client-breaker-failures", id = "client-breaker-failures", env = "COMMERCE_CLIENT_BREAKER_FAILURES", default_value_t = DEFAULT_BREAKER_FAILURES, value_parser = clap::value_parser!(u32).range(1..))]
    pub breaker_failures: u32,
    /// How long an open circuit fails calls fast before probing the peer.
    #[arg(long = "client-breaker-open", id = "client-breaker-open", env = "COMMERCE_CLIENT_BREAKER_OPEN", default_value = DEFAULT_BREAKER_OPEN, value_parser = humantime::parse_duration)]
    pub breaker_open: Duration,
    /// Probe calls let through at once while half-open.
    #[arg(long = "client-breaker-half-open-probes", id = "client-breaker-half-open-probes", env = "COMMERCE_CLIENT_BREAKER_HALF_OPEN_PROBES", default_value_t = DEFAULT_HALF_OPEN_PROBES, value_parser = clap::value_parser!(u32).range(1..))]
    pub half_open_probes: u32,
}

impl Default for ClientArgs {
    /// The same defaults as the flags, without reading the environment.
    fn default() -> Self {
        let duration = |text: &str| humantime::parse_duration(text).unwrap_or(Duration::from_secs(1));
        Self {
            deadline: duration(DEFAULT_DEADLINE),
            max_retries: DEFAULT_MAX_RETRIES,
            backoff_base: duration(DEFAULT_BACKOFF_BASE),
            backoff_cap: duration(DEFAULT_BACKOFF_CAP),
            breaker_failures: DEFAULT_BREAKER_FAILURES,
            breaker_open: duration(DEFAULT_BREAKER_OPEN),
            half_open_probes: DEFAULT_HALF_OPEN_PROBES,
        }
    }
}

/// Request extension marking a call as safe to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idempotent;

/// Marks a request as idempotent, so a [`ResilientChannel`] may retry it:
/// `client.get_product(idempotent(GetProductRequest { .. }))`.
///
/// Meant for unary calls: a retryable request's body is buffered whole so it
/// can be sent again, which for a client stream means waiting for its end.
pub fn idempotent<T>(request: impl tonic::IntoRequest<T>) -> tonic::Request<T> {
    let mut request = request.into_request();
    request.extensions_mut().insert(Idempotent);
    request
}

/// Methods (`/package.Service/Method` paths) that are always idempotent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdempotentMethods {
    paths: HashSet<String>,
}

impl IdempotentMethods {
    /// Exactly these paths, e.g. `/commerce.catalog.v1.CatalogService/GetProduct`.
    pub fn new<I, P>(paths: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        Self { paths: paths.into_iter().map(Into::into).collect() }
    }

    /// Whether calls to `path` may be retried.
    pub fn contains(&self, path: &str) -> bool {
        self.paths.contains(path)
    }
}

/// The state of a circuit breaker, as exported in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow; consecutive failures are counted.
    Closed,
    /// Calls fail fast until the open period ends.
    Open,
    /// A limited number of probe calls test the peer.
    HalfOpen,
}

impl BreakerState {
    /// The value of `commerce_grpc_client_circuit_state`.
    pub fn as_gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probes: u32 },
}

impl State {
    fn public(self) -> BreakerState {
        match self {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

/// A circuit breaker for one peer. Cheap to clone; clones share the state.
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<BreakerShared>,
}

struct BreakerShared {
    peer: String,
    failure_threshold: u32,
    open_for: Duration,
    half_open_probes: u32,
    state: Mutex<State>,
    /// Set once metrics are attached; mirrors the state on every transition.
    gauge: OnceLock<Gauge>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("peer", &self.shared.peer)
            .field("state", &*self.lock())
            .finish_non_exhaustive()
    }
}

/// Why the breaker refused a call.
#[derive(Debug, Clone, Copy)]
struct Rejected {
    /// Time until the breaker lets a probe through (zero while probes are
    /// already in flight).
    retry_after: Duration,
}

impl CircuitBreaker {
    /// A closed breaker for `peer`, configured from `--client-breaker-*`.
    pub fn new(peer: impl Into<String>, args: &ClientArgs) -> Self {
        Self {
            shared: Arc::new(BreakerShared {
                peer: peer.into(),
                failure_threshold: args.breaker_failures.max(1),
                open_for: args.breaker_open,
                half_open_probes: args.half_open_probes.max(1),
                state: Mutex::new(State::Closed { failures: 0 }),
                gauge: OnceLock::new(),
            }),
        }
    }

    /// The current state. An open breaker whose period has ended reports
    /// `Open` until the next call turns it half-open.
    pub fn state(&self) -> BreakerState {
        self.lock().public()
    }

    /// Mirrors the state into `commerce_grpc_client_circuit_state{peer}`.
    pub fn attach_metrics(&self, metrics: &Metrics) {
        let gauge = metrics
            .grpc_client()
            .circuit_state
            .get_or_create_owned(&PeerLabels { peer: self.shared.peer.clone() });
        gauge.set(self.state().as_gauge());
        let _ = self.shared.gauge.set(gauge);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn admit(&self) -> Result<Permit, Rejected> {
        let mut state = self.lock();
        let now = Instant::now();
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } if now < until => return Err(Rejected { retry_after: until - now }),
            State::Open { .. } => {
                self.transition(&mut state, State::HalfOpen { probes: 1 });
                true
            }
            State::HalfOpen { probes } if probes < self.shared.half_open_probes => {
                *state = State::HalfOpen { probes: probes + 1 };
                true
            }
            State::HalfOpen { .. } => return Err(Rejected { retry_after: Duration::ZERO }),
        };
        Ok(Permit { breaker: self.clone(), probe, settled: false })
    }

    fn record(&self, probe: bool, failed: bool) {
        let mut state = self.lock();
        match (*state, probe, failed) {
            (State::HalfOpen { .. }, true, false) => {
                self.transition(&mut state, State::Closed { failures: 0 })
            }
            (State::HalfOpen { .. }, true, true) => {
                self.transition(&mut state, State::Open { until: Instant::now() + self.shared.open_for })
            }
            (State::Closed { .. }, _, false) => *state = State::Closed { failures: 0 },
            (State::Closed { failures }, _, true) => {
                let failures = failures + 1;
                if failures >= self.shared.failure_threshold {
                    self.transition(&mut state, State::Open { until: Instant::now() + self.shared.open_for });
                } else {
                    *state = State::Closed { failures };
                }
            }
            // A call admitted before the breaker opened, finishing late,
            // says nothing about the peer now.
            _ => {}
        }
    }

    fn release_probe(&self) {
        let mut state = self.lock();
        if let State::HalfOpen { probes } = *state {
            *state = State::HalfOpen { probes: probes.saturating_sub(1) };
        }
    }

    fn transition(&self, state: &mut State, next: State) {
        let (from, to) = (state.public(), next.public());
        *state = next;
        if from != to {
            match to {
                BreakerState::Open => tracing::warn!(peer = %self.shared.peer, ?from, "circuit opened"),
                _ => tracing::info!(peer = %self.shared.peer, ?from, ?to, "circuit state changed"),
            }
            if let Some(gauge) = self.shared.gauge.get() {
                gauge.set(to.as_gauge());
            }
        }
    }
}

/// Admission of one attempt. Settled with its outcome; dropped unsettled
/// (the caller went away) it frees its probe slot without a verdict.
struct Permit {
    breaker: CircuitBreaker,
    probe: bool,
    settled: bool,
}

impl Permit {
    fn settle(mut self, failed: bool) {
        self.settled = true;
        self.breaker.record(self.probe, failed);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            self.breaker.release_probe();
        }
    }
}

/// Whether `status` means the peer could not serve, as opposed to an
/// answer. A quota one subject spent (see [`crate::quota`]) is an answer:
/// counting it would let one client open the breaker for every client.
fn is_peer_failure(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => true,
        Code::ResourceExhausted => !crate::quota::is_subject_quota(status),
        _ => false,
    }
}

/// Codes an idempotent call is retried on (see the module docs).
fn is_retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded)
}

/// Backoff before retry number `retry` (0-based): uniform in
/// `[0, min(cap, base * 2^retry)]`.
fn full_jitter(base: Duration, cap: Duration, retry: u32) -> Duration {
    crate::backoff::full_jitter(crate::backoff::step(base, cap, retry))
}

/// Encodes a `grpc-timeout` value: at most 8 digits and a unit.
fn encode_grpc_timeout(timeout: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let micros = timeout.as_micros().max(1);
    let text = if micros <= MAX {
        format!("{micros}u")
    } else if timeout.as_millis() <= MAX {
        format!("{}m", timeout.as_millis())
    } else {
        format!("{}S", timeout.as_secs().min(99_999_999))
    };
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("99999999S"))
}

/// Decodes a `grpc-timeout` value; `None` for anything malformed.
fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    let split = text.len().checked_sub(1)?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The fixed part of a channel's policy, shared by its clones.
#[derive(Debug)]
struct Policy {
    peer: String,
    deadline: Duration,
    max_retries: u32,
    backoff_base: Duration,
    backoff_cap: Duration,
    idempotent_methods: IdempotentMethods,
    retries: Option<Counter>,
    rejected: Option<Counter>,
}

/// A gRPC channel with deadline, retries, circuit breaker and `traceparent`
/// propagation, for generated clients: `XClient::new(resilient_channel)`.
/// Cheap to clone; clones share the breaker.
#[derive(Debug, Clone)]
pub struct ResilientChannel<S = Channel> {
    inner: S,
    policy: Arc<Policy>,
    breaker: CircuitBreaker,
}

impl<S> ResilientChannel<S> {
    /// Wraps `inner` (a tonic `Channel`, or any gRPC service in tests) as
    /// the client side of calls to `peer`.
    pub fn new(peer: impl Into<String>, inner: S, args: &ClientArgs) -> Self {
        Self::with_breaker(inner, args, CircuitBreaker::new(peer, args))
    }

    fn with_breaker(inner: S, args: &ClientArgs, breaker: CircuitBreaker) -> Self {
        let policy = Policy {
            peer: breaker.shared.peer.clone(),
            deadline: args.deadline,
            max_retries: args.max_retries,
            backoff_base: args.backoff_base,
            backoff_cap: args.backoff_cap,
            idempotent_methods: IdempotentMethods::default(),
            retries: None,
            rejected: None,
        };
        Self { inner, policy: Arc::new(policy), breaker }
    }

    /// Methods retried without a per-request [`idempotent`] marker.
    pub fn with_idempotent_methods(mut self, methods: IdempotentMethods) -> Self {
        self.policy = Arc::new(Policy { idempotent_methods: methods, ..self.policy_clone() });
        self
    }

    /// Records retries, fast failures and the breaker state into `metrics`.
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        let labels = PeerLabels { peer: self.policy.peer.clone() };
        let client = metrics.grpc_client();
        self.policy = Arc::new(Policy {
            retries: Some(client.retries.get_or_create_owned(&labels)),
            rejected: Some(client.rejected.get_or_create_owned(&labels)),
            ..self.policy_clone()
        });
        self.breaker.attach_metrics(metrics);
        self
    }

    /// This peer's circuit breaker (for metrics and tests).
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    fn policy_clone(&self) -> Policy {
        let policy = &self.policy;
        Policy {
            peer: policy.peer.clone(),
            deadline: policy.deadline,
            max_retries: policy.max_retries,
            backoff_base: policy.backoff_base,
            backoff_cap: policy.backoff_cap,
            idempotent_methods: policy.idempotent_methods.clone(),
            retries: policy.retries.clone(),
            rejected: policy.rejected.clone(),
        }
    }
}

impl<S> Service<http::Request<Body>> for ResilientChannel<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    /// Always ready: each attempt waits for the inner channel's readiness
    /// itself, inside the deadline.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // Here, in the caller's task, inside the caller's span: the call is a
        // span of its own, a child of it, across all its attempts.
        let span = crate::telemetry::client_span(request.uri().path());
        span.in_scope(|| crate::trace_context::inject_http(request.headers_mut()));
        let idempotent = request.extensions().get::<Idempotent>().is_some()
            || self.policy.idempotent_methods.contains(request.uri().path());
        let budget =
            request.headers().get(GRPC_TIMEOUT).and_then(parse_grpc_timeout).unwrap_or(self.policy.deadline);
        let call = Call {
            inner: self.inner.clone(),
            breaker: self.breaker.clone(),
            policy: self.policy.clone(),
            idempotent,
            budget,
            deadline: Instant::now() + budget,
        };
        Box::pin(tracing::Instrument::instrument(call.run(request), span))
    }
}

/// One call through a [`ResilientChannel`], across its attempts.
struct Call<S> {
    inner: S,
    breaker: CircuitBreaker,
    policy: Arc<Policy>,
    idempotent: bool,
    budget: Duration,
    deadline: Instant,
}

/// The request body of each attempt.
enum AttemptBody {
    /// Sent once: no retry possible, so the body is streamed, not buffered.
    Once(Option<Body>),
    /// Buffered to be replayed on each attempt (unary idempotent calls).
    Replay(Bytes),
}

impl AttemptBody {
    fn next(&mut self) -> Option<Body> {
        match self {
            AttemptBody::Once(body) => body.take(),
            AttemptBody::Replay(bytes) => Some(Body::new(http_body_util::Full::new(bytes.clone()))),
        }
    }
}

impl<S> Call<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    async fn run(self, request: http::Request<Body>) -> Result<http::Response<Body>, BoxError> {
        let (parts, body) = request.into_parts();
        let mut body = if self.idempotent && self.policy.max_retries > 0 {
            match body.collect().await {
                Ok(collected) => AttemptBody::Replay(collected.to_bytes()),
                Err(error) => return Err(Box::new(Status::from_error(error.into()))),
            }
        } else {
            AttemptBody::Once(Some(body))
        };
        let mut retries = 0;
        loop {
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Box::new(self.deadline_exceeded()));
            }
            let permit = match self.breaker.admit() {
                Ok(permit) => permit,
                Err(rejected) => {
                    if let Some(counter) = &self.policy.rejected {
                        counter.inc();
                    }
                    return Err(Box::new(Status::unavailable(format!(
                        "circuit open for peer {}; next probe in {:?}",
                        self.policy.peer, rejected.retry_after
                    ))));
                }
            };
            let Some(attempt_body) = body.next() else {
                return Err(Box::new(Status::internal("request body already sent")));
            };
            let mut attempt_parts = parts.clone();
            attempt_parts.headers.insert(GRPC_TIMEOUT, encode_grpc_timeout(remaining));
            let attempt = attempt(
                self.inner.clone(),
                http::Request::from_parts(attempt_parts, attempt_body),
                remaining,
            );
            let outcome = attempt.await.map_err(|error| error.unwrap_or_else(|| self.deadline_exceeded()));

            let failure = match &outcome {
                Ok(response) => {
                    Status::from_header_map(response.headers()).filter(|status| status.code() != Code::Ok)
                }
                Err(status) => Some(status.clone()),
            };
            let Some(failure) = failure else {
                permit.settle(false);
                return outcome.map_err(|status| Box::new(status) as BoxError);
            };
            permit.settle(is_peer_failure(&failure));

            let backoff = full_jitter(self.policy.backoff_base, self.policy.backoff_cap, retries);
            let retry = self.idempotent
                && is_retryable(failure.code())
                && retries < self.policy.max_retries
                && Instant::now() + backoff < self.deadline;
            if !retry {
                return outcome.map_err(|status| Box::new(status) as BoxError);
            }
            retries += 1;
            if let Some(counter) = &self.policy.retries {
                counter.inc();
            }
            tracing::debug!(
                peer = %self.policy.peer,
                code = ?failure.code(),
                retry = retries,
                ?backoff,
                "retrying idempotent call"
            );
            tokio::time::sleep(backoff).await;
        }
    }

    fn deadline_exceeded(&self) -> Status {
        Status::deadline_exceeded(format!(
            "no answer from peer {} within the {:?} deadline",
            self.policy.peer, self.budget
        ))
    }
}

/// One attempt, bounded by the time left: the response, or the error as a
/// status (`None` when the time ran out). Owns its clone of the service so
/// that the call future stays `Send` without requiring `S: Sync`.
async fn attempt<S>(
    mut inner: S,
    request: http::Request<Body>,
    remaining: Duration,
) -> Result<http::Response<Body>, Option<Status>>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Error: Into<BoxError>,
{
    let call = async move {
        let ready = inner.ready().await.map_err(Into::into)?;
        ready.call(request).await.map_err(Into::into)
    };
    match tokio::time::timeout(remaining, call).await {
        Ok(Ok(response)) => Ok(response),
        // tonic's channel enforces the `grpc-timeout` we sent as well, and
        // may notice first; it reports that as `Cancelled`, but it is our
        // deadline.
        Ok(Err(error)) if caused_by_timeout(&*error) => Err(None),
        Ok(Err(error)) => Err(Some(Status::from_error(error))),
        Err(_elapsed) => Err(None),
    }
}

fn caused_by_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        cause = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_round_trip() {
        for timeout in [Duration::from_millis(1500), Duration::from_micros(3), Duration::from_secs(1_000_000)]
        {
            let parsed = parse_grpc_timeout(&encode_grpc_timeout(timeout)).expect("valid header");
            assert!(
                parsed <= timeout && timeout - parsed < Duration::from_secs(1),
                "{timeout:?} -> {parsed:?}"
            );
        }
        assert_eq!(parse_grpc_timeout(&HeaderValue::from_static("2S")), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout(&HeaderValue::from_static("123456789m")), None);
        assert_eq!(parse_grpc_timeout(&HeaderValue::from_static("5x")), None);
    }

    #[test]
    fn full_jitter_stays_under_the_capped_exponential() {
        let (base, cap) = (Duration::from_millis(50), Duration::from_millis(300));
        for retry in 0..40 {
            let ceiling = (base * 2u32.saturating_pow(retry.min(20))).min(cap);
            assert!(full_jitter(base, cap, retry) <= ceiling);
        }
    }

    #[test]
    fn defaults_parse() {
        let args = ClientArgs::default();
        assert_eq!(args.deadline, Duration::from_secs(2));
        assert_eq!(args.backoff_base, Duration::from_millis(50));
        assert_eq!(args.breaker_open, Duration::from_secs(10));
    }
}
