//! Rate limiting: rules (see [`rules`]), counters (see [`limiter`]), the
//! reload loop that keeps the effective rules current without a restart,
//! and the middleware that applies them and writes the headers.
//!
//! Headers follow draft-ietf-httpapi-ratelimit-headers-09 (named policies as
//! structured-field lists), on allowed and refused responses alike:
//! - `RateLimit-Policy: "login";q=5;w=60` — each matching rule: `q` requests
//!   per `w` seconds sustained (its burst is on top, and is what `r` counts);
//! - `RateLimit: "login";r=2;t=24` — `r` requests could still come at once,
//!   `t` seconds until the quota is fully restored;
//! - refused requests get 429 problem+json with `Retry-After` (seconds).
//!
//! Rules stored in Redis live in one hash, `<prefix>:rules` (the prefix is
//! `<stack prefix>:gateway:ratelimit`, see `--redis-key-prefix`; field = rule
//! name, value = the rule as JSON); an operator may `HSET` it directly or use
//! `PUT /api/admin/ratelimits/{name}`. The reload loop polls that hash and
//! the rules file every `--ratelimit-reload-interval`; a change swaps the
//! effective set atomically, so requests in flight keep the set they started
//! with and none is dropped.

pub mod limiter;
pub mod rules;

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use self::limiter::{Check, Decision, Limiter};
use self::rules::{EffectiveRule, KeyKind, Rule};
use crate::auth::Authentication;
use crate::problem::Problem;

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Rules, counters and where they come from.
pub struct RateLimiter {
    limiter: Limiter,
    redis: Arc<RwLock<Option<ConnectionManager>>>,
    prefix: String,
    defaults: Vec<Rule>,
    rules_file: Option<PathBuf>,
    sources: RwLock<Sources>,
    effective: RwLock<Arc<Vec<EffectiveRule>>>,
    trusted_proxy_hops: usize,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Sources {
    file: Vec<Rule>,
    /// Hash of the file content last applied, so an unchanged file is not
    /// parsed again and a broken one is reported once per change.
    file_digest: Option<[u8; 32]>,
    redis: Vec<Rule>,
}

/// What went wrong changing the stored rules.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{0}")]
    InvalidRule(String),
    #[error("Redis is not reachable, so stored rules cannot change now")]
    RedisUnavailable,
    #[error("cannot write the rule to Redis")]
    WriteRule(#[source] redis::RedisError),
}

impl RateLimiter {
    pub fn new(
        defaults: Vec<Rule>,
        rules_file: Option<PathBuf>,
        prefix: String,
        trusted_proxy_hops: usize,
        redis: Arc<RwLock<Option<ConnectionManager>>>,
        metrics: limiter::LimiterMetrics,
    ) -> Self {
        let effective = rules::merge(&defaults, &[], &[]);
        Self {
            limiter: Limiter::new(redis.clone(), metrics),
            redis,
            prefix,
            defaults,
            rules_file,
            sources: RwLock::new(Sources::default()),
            effective: RwLock::new(Arc::new(effective)),
            trusted_proxy_hops,
        }
    }

    /// The rules in force, with their sources.
    pub fn effective(&self) -> Arc<Vec<EffectiveRule>> {
        self.effective.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    fn redis_rules_key(&self) -> String {
        format!("{}:rules", self.prefix)
    }

    fn connection(&self) -> Option<ConnectionManager> {
        self.redis.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Re-reads the rules file and the Redis rules; swaps the effective set
    /// when either changed. A broken file or an unreachable Redis keeps the
    /// last good rules of that source.
    pub async fn reload(&self) {
        let file_text = match &self.rules_file {
            Some(path) => match tokio::fs::read(path).await {
                Ok(bytes) => Some(bytes),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "cannot read the rate-limit rules file; keeping the last rules");
                    None
                }
            },
            None => None,
        };
        let redis_rules = self.read_redis_rules().await;

        let changed = {
            let mut sources = self.sources.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut changed = false;
            if let Some(bytes) = file_text {
                let digest: [u8; 32] = Sha256::digest(&bytes).into();
                if sources.file_digest != Some(digest) {
                    sources.file_digest = Some(digest);
                    match rules::parse_rules_file(&String::from_utf8_lossy(&bytes)) {
                        Ok(parsed) => {
                            changed |= sources.file != parsed;
                            sources.file = parsed;
                        }
                        Err(error) => {
                            self.limiter.metrics().rules_file_errors.inc();
                            tracing::error!(%error, "the rate-limit rules file is invalid; keeping the last good rules");
                        }
                    }
                }
            }
            if let Some(parsed) = redis_rules
                && sources.redis != parsed
            {
                sources.redis = parsed;
                changed = true;
            }
            changed.then(|| rules::merge(&self.defaults, &sources.file, &sources.redis))
        };
        if let Some(effective) = changed {
            let names: Vec<String> = effective
                .iter()
                .filter(|rule| !rule.rule.disabled)
                .map(|rule| format!("{}({:?})", rule.rule.name, rule.source))
                .collect();
            tracing::info!(rules = ?names, "rate-limit rules changed");
            *self.effective.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(effective);
        }
    }

    async fn read_redis_rules(&self) -> Option<Vec<Rule>> {
        let mut connection = self.connection()?;
        let key = self.redis_rules_key();
        let stored: std::collections::BTreeMap<String, String> =
            match tokio::time::timeout(limiter::REDIS_TIMEOUT * 4, connection.hgetall(&key)).await {
                Ok(Ok(stored)) => stored,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "cannot read stored rate-limit rules");
                    return None;
                }
                Err(_) => return None,
            };
        let mut parsed = Vec::new();
        for (name, json) in stored {
            match serde_json::from_str::<Rule>(&json).map_err(|error| error.to_string()).and_then(|rule| {
                rule.validate()?;
                if rule.name == name {
                    Ok(rule)
                } else {
                    Err(format!("field {name} holds rule {}", rule.name))
                }
            }) {
                Ok(rule) => parsed.push(rule),
                Err(error) => {
                    tracing::warn!(rule = %name, %error, "ignoring an invalid rate-limit rule stored in Redis")
                }
            }
        }
        Some(parsed)
    }

    /// Stores (or replaces) a rule in Redis and applies it at once here;
    /// other replicas pick it up at their next reload.
    pub async fn store_rule(&self, rule: &Rule) -> Result<(), RulesError> {
        rule.validate().map_err(RulesError::InvalidRule)?;
        let mut connection = self.connection().ok_or(RulesError::RedisUnavailable)?;
        let json = serde_json::to_string(rule).map_err(|error| RulesError::InvalidRule(error.to_string()))?;
        connection
            .hset::<_, _, _, ()>(self.redis_rules_key(), &rule.name, json)
            .await
            .map_err(RulesError::WriteRule)?;
        self.reload().await;
        Ok(())
    }

    /// Removes a stored rule (a default or file rule of the same name
    /// applies again). Returns whether it existed.
    pub async fn delete_rule(&self, name: &str) -> Result<bool, RulesError> {
        let mut connection = self.connection().ok_or(RulesError::RedisUnavailable)?;
        let removed: i64 =
            connection.hdel(self.redis_rules_key(), name).await.map_err(RulesError::WriteRule)?;
        self.reload().await;
        Ok(removed > 0)
    }

    /// Reloads every `interval` until `shutdown`.
    pub async fn run_reloader(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => self.reload().await,
            }
        }
    }

    /// The client address: the TCP peer, or with trusted proxies the
    /// `X-Forwarded-For` entry that many hops from the right.
    fn client_ip(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> String {
        if self.trusted_proxy_hops > 0 {
            let forwarded: Vec<&str> = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .map(str::trim)
                .collect();
            if let Some(index) = forwarded.len().checked_sub(self.trusted_proxy_hops)
                && let Some(Ok(ip)) = forwarded.get(index).map(|entry| entry.parse::<IpAddr>())
            {
                return ip.to_string();
            }
        }
        peer.map_or_else(|| "unknown".to_owned(), |addr| addr.ip().to_string())
    }
}

/// Hash of a user-supplied key, so API keys never sit in Redis key names.
fn digest_hex(value: &str) -> String {
    hex::encode(&Sha256::digest(value.as_bytes())[..16])
}

/// The middleware: applies every matching rule, refuses with 429, and adds
/// the headers to every response it let through.
///
/// `S` is the app's state ([`AppState`](crate::state::AppState)), which
/// lends the limiter.
pub async fn enforce<S>(State(state): State<S>, request: Request, next: Next) -> Response
where
    S: AsRef<RateLimiter>,
{
    let limiter: &RateLimiter = state.as_ref();
    let effective = limiter.effective();
    let (method, path) = (request.method().as_str(), request.uri().path());
    let matching: Vec<&Rule> = effective
        .iter()
        .map(|effective| &effective.rule)
        .filter(|rule| !rule.disabled && rule.matches(method, path))
        .collect();
    if matching.is_empty() {
        return next.run(request).await;
    }

    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0);
    let ip = limiter.client_ip(request.headers(), peer);
    let user = request.extensions().get::<Arc<Authentication>>().and_then(|outcome| match outcome.as_ref() {
        Authentication::Verified(caller) => Some(caller.user_id.as_str()),
        _ => None,
    });
    let checks: Vec<Check> = matching
        .iter()
        .map(|rule| {
            // One allocation per key: this runs for every limited request.
            let mut key = String::with_capacity(limiter.prefix.len() + rule.name.len() + 72);
            let _ = write!(key, "{}:c:{}:", limiter.prefix, rule.name);
            let _ = match rule.key {
                KeyKind::Ip => write!(key, "ip:{ip}"),
                KeyKind::User => match user {
                    Some(user) => write!(key, "user:{user}"),
                    None => write!(key, "ip:{ip}"),
                },
                KeyKind::ApiKey => match request
                    .headers()
                    .get(rule.api_key_header())
                    .and_then(|value| value.to_str().ok())
                    .filter(|value| !value.is_empty())
                {
                    Some(api_key) => write!(key, "key:{}", digest_hex(api_key)),
                    None => write!(key, "ip:{ip}"),
                },
            };
            Check::new(rule, key)
        })
        .collect();
    let decisions = limiter.limiter.check(&checks).await;

    let headers = rate_limit_headers(&matching, &decisions);
    if decisions.iter().any(|decision| !decision.allowed) {
        limiter.limiter.metrics().limited.inc();
        let retry_after =
            decisions.iter().filter(|d| !d.allowed).map(|d| d.retry_after).max().unwrap_or_default();
        let seconds = ceil_seconds(retry_after).max(1);
        let refused: Vec<&str> = matching
            .iter()
            .zip(&decisions)
            .filter(|(_, d)| !d.allowed)
            .map(|(rule, _)| rule.name.as_str())
            .collect();
        let mut problem = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            format!("rate limit {} exceeded; retry in {seconds} s", refused.join(", ")),
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from(seconds));
        for (name, value) in headers.into_iter().flatten() {
            problem = problem.with_header(name, value);
        }
        return problem.into_response();
    }
    let mut response = next.run(request).await;
    for (name, value) in headers.into_iter().flatten() {
        response.headers_mut().insert(name, value);
    }
    response
}

fn ceil_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// `RateLimit-Policy` and `RateLimit` for the matching rules. Each value is
/// written into one string (this runs for every limited response).
fn rate_limit_headers(rules: &[&Rule], decisions: &[Decision]) -> [Option<(HeaderName, HeaderValue)>; 2] {
    let mut policies = String::with_capacity(rules.len() * 40);
    let mut states = String::with_capacity(rules.len() * 40);
    for (index, (rule, decision)) in rules.iter().zip(decisions).enumerate() {
        let separator = if index == 0 { "" } else { ", " };
        let window = ceil_seconds(rule.period).max(1);
        let _ = write!(policies, "{separator}\"{}\";q={};w={window}", rule.name, rule.rate);
        let reset = ceil_seconds(decision.reset);
        let _ = write!(states, "{separator}\"{}\";r={};t={reset}", rule.name, decision.remaining);
    }
    [
        HeaderValue::try_from(policies).ok().map(|value| (RATELIMIT_POLICY, value)),
        HeaderValue::try_from(states).ok().map(|value| (RATELIMIT, value)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::rules::RuleMatch;

    #[test]
    fn headers_name_each_policy_with_quota_window_remaining_and_reset() {
        let rule = Rule {
            name: "login".into(),
            matcher: RuleMatch { path: "/api/auth/login".into(), methods: vec!["POST".into()] },
            key: KeyKind::Ip,
            header: None,
            rate: 5,
            period: Duration::from_secs(60),
            burst: 3,
            disabled: false,
        };
        let decision = Decision {
            allowed: true,
            remaining: 2,
            retry_after: Duration::ZERO,
            reset: Duration::from_millis(23_500),
        };
        let [policy, state] = rate_limit_headers(&[&rule], &[decision]);
        assert_eq!(policy.expect("a policy").1, "\"login\";q=5;w=60");
        assert_eq!(state.expect("a state").1, "\"login\";r=2;t=24");

        let other =
            Rule { name: "default-ip".into(), rate: 100, period: Duration::from_millis(500), ..rule.clone() };
        let refused =
            Decision { allowed: false, remaining: 0, retry_after: Duration::ZERO, reset: Duration::ZERO };
        let [policy, state] = rate_limit_headers(&[&rule, &other], &[decision, refused]);
        assert_eq!(policy.expect("policies").1, "\"login\";q=5;w=60, \"default-ip\";q=100;w=1");
        assert_eq!(state.expect("states").1, "\"login\";r=2;t=24, \"default-ip\";r=0;t=0");
    }

    #[test]
    fn the_client_ip_comes_from_forwarded_for_only_behind_trusted_proxies() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6, 1.2.3.4"));
        let peer = Some(SocketAddr::from(([10, 0, 0, 1], 1234)));
        let make = |hops| {
            RateLimiter::new(
                Vec::new(),
                None,
                "t".into(),
                hops,
                Arc::new(RwLock::new(None)),
                Default::default(),
            )
        };
        assert_eq!(make(0).client_ip(&headers, peer), "10.0.0.1");
        assert_eq!(make(1).client_ip(&headers, peer), "1.2.3.4", "the spoofable left entry is ignored");
    }
}
