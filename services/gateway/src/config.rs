//! The gateway's configuration: the platform's argument groups (logging,
//! admin server, peers, client resilience, Redis) flattened beside the
//! gateway's own flags (HTTP address, limits, CORS, JWT keys, rate limits,
//! the catalog read cache).
//!
//! Every flag has a `COMMERCE_*` environment variable, which is what the
//! operator's Deployment sets. Argument ids are the field names (clap's
//! default), unique across the flattened groups (the command test checks);
//! only `--http-addr` names its id, since `addr` is also the admin server's
//! field.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use commerce_platform::admin::AdminArgs;
use commerce_platform::discovery::PeerArgs;
use commerce_platform::redis::RedisArgs;
use commerce_platform::resilience::ClientArgs;
use commerce_platform::telemetry::LogArgs;

/// Default request body limit: the largest legitimate body (an order with a
/// few hundred lines and an address) is a few KiB; 64 KiB leaves room and
/// keeps a flood of large bodies cheap to refuse.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// Everything `commerce serve gateway` accepts.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub peers: PeerArgs,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub rate_limit: RateLimitArgs,
    #[command(flatten)]
    pub catalog_cache: CatalogCacheArgs,
}

/// The public HTTP listener and what every request is held to.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "HTTP")]
pub struct HttpArgs {
    /// Address of the REST/JSON listener.
    #[arg(long = "http-addr", id = "http-addr", env = "COMMERCE_HTTP_ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], commerce_topology::CLUSTER_HTTP_PORT)))]
    pub addr: SocketAddr,
    /// Largest accepted request body, in bytes; larger ones get 413.
    #[arg(long = "http-body-limit", env = "COMMERCE_HTTP_BODY_LIMIT", default_value_t = DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,
    /// Longest a request may take end to end (all gRPC calls included);
    /// slower ones get 504. Kept above `--client-deadline` so a single slow
    /// peer call is reported as that peer's deadline, not as ours.
    #[arg(long = "http-request-timeout", env = "COMMERCE_HTTP_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Origins allowed by CORS (`https://shop.example`), repeatable or
    /// comma-separated; `*` allows any origin (without credentials). Empty:
    /// no CORS headers, browsers allow same-origin only.
    #[arg(long = "cors-origin", env = "COMMERCE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Request headers a browser may send cross-origin besides the built-in
    /// ones (Authorization, Content-Type, Idempotency-Key, X-Request-Id,
    /// traceparent); repeatable or comma-separated.
    #[arg(long = "cors-allowed-header", env = "COMMERCE_CORS_ALLOWED_HEADERS", value_delimiter = ',', value_parser = parse_header_name)]
    pub cors_allowed_headers: Vec<String>,
    /// How long a browser may cache a CORS preflight answer.
    #[arg(long = "cors-max-age", env = "COMMERCE_CORS_MAX_AGE", default_value = "10m", value_parser = humantime::parse_duration)]
    pub cors_max_age: Duration,
    /// How many reverse proxies in front of the gateway append to
    /// `X-Forwarded-For`; the client address is the entry that many places
    /// from the right. 0 trusts no header and uses the TCP peer address
    /// (a client could otherwise pick its own rate-limit key).
    #[arg(long = "trusted-proxy-hops", env = "COMMERCE_TRUSTED_PROXY_HOPS", default_value_t = 0)]
    pub trusted_proxy_hops: usize,
    /// How long in-flight requests may finish after shutdown begins.
    #[arg(long = "http-shutdown-grace", env = "COMMERCE_HTTP_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

/// A valid HTTP header name, lower-cased.
fn parse_header_name(text: &str) -> Result<String, String> {
    axum::http::HeaderName::from_bytes(text.trim().as_bytes())
        .map(|name| name.as_str().to_owned())
        .map_err(|_| format!("{text:?} is not a valid HTTP header name"))
}

/// Local verification of access tokens.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Access tokens")]
pub struct JwtArgs {
    /// Shortest time between two key fetches triggered by tokens with an
    /// unknown `kid`: a client sending garbage key ids must not turn the
    /// gateway into a load generator against the auth service.
    #[arg(long = "jwt-key-refresh-min-interval", env = "COMMERCE_JWT_KEY_REFRESH_MIN_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub refresh_min_interval: Duration,
    /// Expected `iss` of access tokens (the auth service's `--auth-issuer`).
    #[arg(long = "jwt-issuer", env = "COMMERCE_JWT_ISSUER", default_value = "commerce-auth")]
    pub issuer: String,
    /// Expected `aud` of access tokens (the auth service's `--auth-audience`).
    #[arg(long = "jwt-audience", env = "COMMERCE_JWT_AUDIENCE", default_value = "commerce")]
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[arg(long = "jwt-leeway", env = "COMMERCE_JWT_LEEWAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub leeway: Duration,
}

/// Rate-limit policy sources.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Rate limits")]
pub struct RateLimitArgs {
    /// Requests per minute one client IP may make to `/api/` (the built-in
    /// `default-ip` rule); 0 disables the rule.
    #[arg(
        long = "ratelimit-default-per-minute",
        env = "COMMERCE_RATELIMIT_DEFAULT_PER_MINUTE",
        default_value_t = 600
    )]
    pub default_per_minute: u32,
    /// Burst of the built-in `default-ip` rule.
    #[arg(long = "ratelimit-default-burst", env = "COMMERCE_RATELIMIT_DEFAULT_BURST", default_value_t = 100)]
    pub default_burst: u32,
    /// Requests per minute one client IP may make to login, register and
    /// refresh (the built-in `auth-login-ip`, `auth-register-ip` and
    /// `auth-refresh-ip` rules, against password guessing); 0 disables them.
    #[arg(
        long = "ratelimit-auth-per-minute",
        env = "COMMERCE_RATELIMIT_AUTH_PER_MINUTE",
        default_value_t = 20
    )]
    pub auth_per_minute: u32,
    /// Burst of the built-in `auth-*-ip` rules.
    #[arg(long = "ratelimit-auth-burst", env = "COMMERCE_RATELIMIT_AUTH_BURST", default_value_t = 10)]
    pub auth_burst: u32,
    /// YAML (or JSON) rules file, typically a mounted ConfigMap; re-read when
    /// its content changes. Its rules replace built-in ones of the same name.
    #[arg(long = "ratelimit-rules-file", env = "COMMERCE_RATELIMIT_RULES_FILE")]
    pub rules_file: Option<PathBuf>,
    /// How often the rules file and the rules stored in Redis are checked
    /// for changes. A ConfigMap update reaches the pod's volume within about
    /// a minute anyway; polling also survives the kubelet's symlink swap,
    /// which file-event watchers easily miss.
    #[arg(long = "ratelimit-reload-interval", env = "COMMERCE_RATELIMIT_RELOAD_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub reload_interval: Duration,
}

/// The read cache of public catalog answers (see `catalog_cache`).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Catalog read cache")]
pub struct CatalogCacheArgs {
    /// Bytes of rendered product and listing answers kept in memory; 0
    /// turns the cache off (every read goes to the catalog service).
    /// 32 MiB holds tens of thousands of products and thousands of pages.
    #[arg(long = "catalog-cache-size", env = "COMMERCE_CATALOG_CACHE_SIZE", default_value_t = 32 << 20)]
    pub cache_size: u64,
    /// How often the catalog's version is checked: a write through another
    /// gateway replica (or none) reaches this replica's readers within about
    /// this long.
    #[arg(long = "catalog-cache-poll-interval", env = "COMMERCE_CATALOG_CACHE_POLL_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// The most a cached answer may lag behind the catalog, whatever
    /// happens: while the version has not been confirmed for this long
    /// (catalog unreachable, checks slow), the cache is bypassed. Keep it a
    /// few poll intervals long, so one slow check does not bypass it.
    #[arg(long = "catalog-cache-max-staleness", env = "COMMERCE_CATALOG_CACHE_MAX_STALENESS", default_value = "1s", value_parser = humantime::parse_duration)]
    pub max_staleness: Duration,
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn the_command_is_well_formed_and_every_flag_has_a_commerce_variable() {
        Cli::command().debug_assert();
        for arg in Cli::command().get_arguments().filter(|arg| arg.get_long().is_some()) {
            let env = arg.get_env().and_then(|env| env.to_str()).unwrap_or_default();
            assert!(env.starts_with("COMMERCE_"), "--{} has env {env:?}", arg.get_long().unwrap_or_default());
        }
    }

    #[test]
    fn extra_cors_headers_are_lower_cased_and_an_invalid_name_is_refused() {
        let cli = Cli::try_parse_from([
            "gateway",
            "--cors-allowed-header=X-Api-Key,Accept-Language",
            "--cors-max-age=90s",
        ])
        .expect("flags parse");
        assert_eq!(cli.config.http.cors_allowed_headers, ["x-api-key", "accept-language"]);
        assert_eq!(cli.config.http.cors_max_age, Duration::from_secs(90));
        let error =
            Cli::try_parse_from(["gateway", "--cors-allowed-header=Bad Header"]).expect_err("refused");
        assert!(error.to_string().contains("--cors-allowed-header"), "{error}");
    }
}
