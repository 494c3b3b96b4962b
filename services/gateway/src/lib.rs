//! The gateway: commerce-stack's REST/JSON edge in front of the gRPC
//! services (ARCHITECTURE section 5).
//!
//! Wiring only; the parts live in their modules:
//! - [`routes`]: handlers, one gRPC call or two each, with [`dto`] shapes;
//! - [`problem`]: RFC 9457 errors and the gRPC -> HTTP status mapping;
//! - [`extract`]: strict JSON/query parsing into field-naming problems;
//! - [`jwt`] and [`auth`]: local EdDSA token verification, roles;
//! - [`ratelimit`]: rules from defaults, a watched file and Redis; GCRA
//!   counters in Redis with an in-process fallback;
//! - [`catalog_cache`]: the public catalog reads' answers, kept while the
//!   catalog's version confirms them;
//! - [`middleware`]: request ids, trace context, access log, timeout,
//!   body limit, metrics;
//! - [`openapi`]: the OpenAPI 3.1 document.
//!
//! `/metrics`, `/healthz` and `/readyz` are served on the admin port by the
//! platform's admin server, like every other service. Readiness has two
//! checks: `http` (the listener is up) and `auth-keys` (the gateway holds at
//! least one of the auth service's signing keys, so it can verify tokens;
//! see [`jwt`] for why failed refreshes after that do not make it unready).

pub mod auth;
pub mod catalog_cache;
pub mod config;
pub mod contract;
pub mod dto;
pub mod extract;
pub mod jwt;
pub mod middleware;
pub mod openapi;
pub mod problem;
pub mod ratelimit;
pub mod request_id;
pub mod routes;
pub mod state;
pub mod views;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use commerce_platform::admin::{self, AdminError, Metrics};
use commerce_platform::discovery::Peers;
use commerce_platform::readiness::{Check, Readiness};
use commerce_platform::telemetry::{self, TelemetryError};
use redis::aio::ConnectionManager;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::catalog_cache::CatalogCache;
pub use crate::config::Config;
use crate::config::HttpArgs;
use crate::jwt::{KeyStatus, Verifier};
use crate::ratelimit::RateLimiter;
use crate::state::AppState;

/// The rate limiter's keys (counters and stored rules) after the stack's
/// `--redis-key-prefix`: `<stack>:gateway:ratelimit:rules`, ...
const RATE_LIMIT_KEYS: &str = "gateway:ratelimit";
/// Name of this process's readiness check: the HTTP listener is up.
const HTTP_READINESS_CHECK: &str = "http";
/// Name of the readiness check that holds the gateway back until it has the
/// auth service's signing keys: before that every authenticated request
/// would get 503, so no traffic should be routed to it.
const KEYS_READINESS_CHECK: &str = "auth-keys";

/// What can stop the gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot set up logging")]
    InitTelemetry(#[source] TelemetryError),
    #[error("cannot bind the HTTP listener to {addr}")]
    BindHttp {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed")]
    ServeHttp(#[source] std::io::Error),
    #[error("the admin server failed")]
    ServeAdmin(#[source] AdminError),
    #[error("the admin server task panicked")]
    JoinAdmin(#[source] tokio::task::JoinError),
}

/// The assembled gateway: shared state plus the background tasks it
/// started (Redis connection, rule reloads, key refreshes).
#[derive(Debug)]
pub struct Gateway {
    state: AppState,
    http: HttpArgs,
}

impl Gateway {
    /// Builds the state and starts the background tasks (key refreshes,
    /// Redis connection, rule reloads, catalog version checks), which stop
    /// with `shutdown`. Never waits for a peer or for Redis: the gateway serves
    /// (with the local limiter, and 503 from absent peers) while they come.
    pub fn new(config: &Config, metrics: &Metrics, shutdown: &CancellationToken) -> Self {
        let peers = Arc::new(
            Peers::new(&config.peers.clone().or_local_defaults_if_empty(), &config.client, shutdown.clone())
                .with_metrics(metrics),
        );

        let verifier = Arc::new(Verifier::new(
            auth::AuthKeySource { peers: peers.clone() },
            jwt::Expectations {
                issuer: config.jwt.issuer.clone(),
                audience: config.jwt.audience.clone(),
                leeway: config.jwt.leeway,
                refresh_min_interval: config.jwt.refresh_min_interval,
            },
        ));
        tokio::spawn(verifier.clone().run_refresher(shutdown.clone()));

        let limiter_metrics = ratelimit::limiter::LimiterMetrics::default();
        metrics.register(
            "commerce_gateway_ratelimit_fallback",
            "1 while rate limits are counted in process because Redis is unavailable",
            limiter_metrics.fallback.clone(),
        );
        metrics.register(
            "commerce_gateway_ratelimit_limited",
            "Requests refused by a rate limit",
            limiter_metrics.limited.clone(),
        );
        metrics.register(
            "commerce_gateway_ratelimit_leased",
            "Requests decided from tokens this replica leased from Redis, without a round trip",
            limiter_metrics.leased.clone(),
        );
        metrics.register(
            "commerce_gateway_ratelimit_redis_errors",
            "Rate-limit checks that Redis failed to answer",
            limiter_metrics.redis_errors.clone(),
        );
        metrics.register(
            "commerce_gateway_ratelimit_rules_file_errors",
            "Versions of the rate-limit rules file that did not parse (the last good rules stay)",
            limiter_metrics.rules_file_errors.clone(),
        );
        let redis: Arc<RwLock<Option<ConnectionManager>>> = Arc::new(RwLock::new(None));
        let rate_limiter = Arc::new(RateLimiter::new(
            ratelimit::rules::default_rules(&config.rate_limit),
            config.rate_limit.rules_file.clone(),
            // Gateways that share limits share the stack's key prefix.
            config.redis.key(RATE_LIMIT_KEYS),
            config.http.trusted_proxy_hops,
            redis.clone(),
            limiter_metrics,
        ));
        tokio::spawn(connect_redis(config.redis.clone(), redis, rate_limiter.clone(), shutdown.clone()));
        tokio::spawn(rate_limiter.clone().run_reloader(config.rate_limit.reload_interval, shutdown.clone()));

        let catalog_cache = Arc::new(CatalogCache::new(&config.catalog_cache, metrics));
        // The version checks' own channel and breaker (see `run_poller`),
        // without retries: the next check comes a poll interval later.
        let version_peers = Arc::new(Peers::new(
            &config.peers.clone().or_local_defaults_if_empty(),
            &commerce_platform::resilience::ClientArgs { max_retries: 0, ..config.client.clone() },
            shutdown.clone(),
        ));
        tokio::spawn(catalog_cache.clone().run_poller(version_peers, shutdown.clone()));
        let audit_record_failures = prometheus_client::metrics::counter::Counter::default();
        metrics.register(
            "commerce_gateway_audit_record_failures",
            "Administrators' changes the audit service did not record (each is logged at error level)",
            audit_record_failures.clone(),
        );
        let product_views = Arc::new(views::ProductViews::new(metrics));
        let state = AppState::new(state::Parts {
            peers,
            verifier,
            rate_limiter,
            catalog_cache,
            product_views: product_views.clone(),
            audit_record_failures,
            shutdown: shutdown.clone(),
        });
        tokio::spawn(product_views.run(state.peers.clone(), shutdown.clone()));
        Self { state, http: config.http.clone() }
    }

    /// The shared state (tests reach the limiter and verifier through it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The public router with every middleware, ready for `axum::serve`
    /// with `into_make_service_with_connect_info::<SocketAddr>()`.
    pub fn router(&self, metrics: &Metrics) -> Router {
        let http_metrics = middleware::HttpMetrics::register(metrics);
        // Layers run outside-in in the reverse order they are added.
        routes::api()
            .route("/api/openapi.json", axum::routing::get(openapi::document))
            .route_layer(axum::middleware::from_fn_with_state(http_metrics, middleware::record_metrics))
            .route_layer(axum::middleware::from_fn_with_state(
                self.state.clone(),
                routes::audit::record_admin_actions,
            ))
            .fallback(middleware::no_route)
            .method_not_allowed_fallback(middleware::method_not_allowed)
            .layer(axum::middleware::from_fn_with_state(self.state.clone(), ratelimit::enforce::<AppState>))
            .layer(axum::middleware::from_fn_with_state(self.state.clone(), auth::authenticate::<AppState>))
            .layer(DefaultBodyLimit::max(self.http.body_limit))
            .layer(axum::middleware::from_fn_with_state(
                self.http.body_limit,
                middleware::reject_large_bodies,
            ))
            .layer(axum::middleware::from_fn_with_state(self.http.request_timeout, middleware::timeout))
            .layer(middleware::cors(
                &self.http.cors_origins,
                &self.http.cors_allowed_headers,
                self.http.cors_max_age,
            ))
            .layer(axum::middleware::from_fn_with_state(self.state.clone(), middleware::observe))
            .layer(tower_http::request_id::PropagateRequestIdLayer::x_request_id())
            .layer(tower_http::request_id::SetRequestIdLayer::x_request_id(
                tower_http::request_id::MakeRequestUuid,
            ))
            .with_state(self.state.clone())
    }
}

trait OrLocalDefaults {
    fn or_local_defaults_if_empty(self) -> Self;
}

impl OrLocalDefaults for commerce_platform::discovery::PeerArgs {
    /// No `--peer` at all means a local run: every service on its local
    /// port. Any `--peer` means the operator configured discovery, and
    /// unnamed peers stay unconfigured (503), not silently local.
    fn or_local_defaults_if_empty(self) -> Self {
        if self.peers.is_empty() { self.or_local_defaults() } else { self }
    }
}

/// Connects to Redis in the background (retrying until it answers), then
/// hands the connection to the limiter and loads the stored rules. The
/// gateway's own readiness does not wait for Redis (the limiter falls back),
/// so the platform's `redis` check goes to a private set.
async fn connect_redis(
    args: commerce_platform::redis::RedisArgs,
    slot: Arc<RwLock<Option<ConnectionManager>>>,
    rate_limiter: Arc<RateLimiter>,
    shutdown: CancellationToken,
) {
    let private = Readiness::new();
    match commerce_platform::redis::connect(&args, &private, &shutdown).await {
        Ok(connection) => {
            *slot.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(connection);
            rate_limiter.reload().await;
        }
        Err(error) => tracing::debug!(%error, "stopped waiting for Redis"),
    }
}

/// Keeps the `auth-keys` readiness check in step with the verifier: ready
/// while it holds a usable key, not ready (with the reason) while it holds none.
async fn follow_key_status(
    mut status: watch::Receiver<KeyStatus>,
    check: Check,
    shutdown: CancellationToken,
) {
    loop {
        let not_ready = status.borrow_and_update().not_ready_reason();
        match not_ready {
            None => check.set_ready(),
            Some(reason) => check.set_not_ready(reason),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = status.changed() => if changed.is_err() { return },
        }
    }
}

/// Runs the gateway until `shutdown`: logging, the admin server, and the
/// HTTP server on `--http-addr`.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    telemetry::init(&config.log, "gateway").map_err(Error::InitTelemetry)?;
    let metrics = Metrics::new("gateway");
    let readiness = Readiness::new();
    let gateway = Gateway::new(&config, &metrics, &shutdown);
    let listener = TcpListener::bind(config.http.addr)
        .await
        .map_err(|source| Error::BindHttp { addr: config.http.addr, source })?;
    let admin = tokio::spawn({
        let (args, readiness, metrics, shutdown) =
            (config.admin.clone(), readiness.clone(), metrics.clone(), shutdown.clone());
        async move { admin::serve(&args, readiness, metrics, shutdown).await }
    });
    let served = serve_on(&gateway, &metrics, &readiness, listener, shutdown.clone()).await;
    shutdown.cancel();
    let admin = admin.await.map_err(Error::JoinAdmin)?;
    served?;
    admin.map_err(Error::ServeAdmin)
}

/// Serves the gateway's router on a bound listener until `shutdown`, then
/// lets requests in flight finish for up to `--http-shutdown-grace`.
pub async fn serve_on(
    gateway: &Gateway,
    metrics: &Metrics,
    readiness: &Readiness,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    tokio::spawn(follow_key_status(
        gateway.state.verifier.key_status(),
        readiness.register(KEYS_READINESS_CHECK),
        shutdown.clone(),
    ));
    let check = readiness.register(HTTP_READINESS_CHECK);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "gateway listening");
    }
    check.set_ready();
    let app = gateway.router(metrics).into_make_service_with_connect_info::<SocketAddr>();
    let server = axum::serve(listener, app).with_graceful_shutdown({
        let (shutdown, check) = (shutdown.clone(), check.clone());
        async move {
            shutdown.cancelled().await;
            check.set_not_ready("shutting down");
        }
    });
    let grace = gateway.http.shutdown_grace;
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = server => served.map_err(Error::ServeHttp),
        () = deadline => {
            tracing::warn!(?grace, "requests still running after the shutdown grace; closing");
            Ok(())
        }
    }
}
