//! Redis for the services that need it (carts, the catalog cache, the
//! gateway's rate-limit counters): one multiplexed, self-reconnecting
//! [`ConnectionManager`] per process, and a `redis` readiness check.
//!
//! Services start in any order: [`connect`] retries with backoff until Redis
//! answers (or shutdown), showing the wait in `/readyz` instead of crashing.
//! Afterwards a monitor task PINGs periodically and flips the check when
//! Redis goes away and comes back; the manager reconnects by itself.

use std::fmt;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;

use crate::readiness::{Check, Readiness};
use crate::url::redact;

/// Name of the readiness check.
pub const READINESS_CHECK: &str = "redis";
/// First retry delay of the initial connection.
const CONNECT_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest wait between connection attempts: a Redis that comes up is
/// noticed within five seconds, without hammering one that does not.
const CONNECT_BACKOFF_CAP: Duration = Duration::from_secs(5);
/// How long one connection attempt or command may take. Redis answers in
/// well under a millisecond; a second means it is not there.
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the monitor PINGs: as often as a readiness probe looks.
const PING_INTERVAL: Duration = Duration::from_secs(5);

/// Redis connection flags.
#[derive(Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Redis")]
pub struct RedisArgs {
    /// Redis URL, `redis://[:password@]host:port[/db]`. A password belongs
    /// in the environment variable (from a Secret), not on the command line.
    #[arg(
        long = "redis-url",
        id = "redis-url",
        env = "COMMERCE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub url: String,
    /// Start of every key this process writes (carts, the catalog cache,
    /// rate-limit counters and rules): stacks that share one Redis keep
    /// apart by it. The operator sets it to `<namespace>.<stack>`.
    #[arg(
        long = "redis-key-prefix",
        id = "redis-key-prefix",
        env = "COMMERCE_REDIS_KEY_PREFIX",
        default_value = DEFAULT_KEY_PREFIX,
        value_parser = parse_key_prefix
    )]
    pub key_prefix: String,
}

/// The key prefix of a local run.
pub const DEFAULT_KEY_PREFIX: &str = "commerce";

impl RedisArgs {
    /// Flags for `url` with the default key prefix.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), key_prefix: DEFAULT_KEY_PREFIX.to_owned() }
    }

    /// The key `<prefix>:<rest>`.
    pub fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.key_prefix)
    }
}

/// A key prefix is non-empty printable ASCII without spaces and without
/// braces: a brace would start a Redis Cluster hash tag and move keys that
/// belong together (a cart and its checkout records) to different slots.
fn parse_key_prefix(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("the Redis key prefix is empty".to_owned());
    }
    if let Some(bad) = value.chars().find(|c| !c.is_ascii_graphic() || *c == '{' || *c == '}') {
        return Err(format!(
            "the Redis key prefix {value:?} holds {bad:?}; use printable ASCII without spaces or braces"
        ));
    }
    Ok(value.to_owned())
}

impl fmt::Debug for RedisArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisArgs")
            .field("url", &redact(&self.url))
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

/// What can go wrong connecting to Redis.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// `--redis-url` is not a Redis URL.
    #[error("invalid Redis URL {url}")]
    ParseUrl {
        /// The URL with any password replaced.
        url: String,
        #[source]
        source: ::redis::RedisError,
    },
    /// Shutdown came before Redis was reachable.
    #[error("shut down while waiting for Redis at {addr}")]
    Connect {
        /// Host and port of the Redis that was waited for.
        addr: String,
        /// The last connection error seen, if any attempt finished.
        #[source]
        source: Option<::redis::RedisError>,
    },
}

/// Connects to Redis, retrying with backoff until it answers a PING or
/// `shutdown` is cancelled. Registers the `redis` readiness check (not ready
/// while waiting) and starts a monitor that keeps it current until shutdown.
pub async fn connect(
    args: &RedisArgs,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> Result<ConnectionManager, RedisError> {
    let client = ::redis::Client::open(args.url.as_str())
        .map_err(|source| RedisError::ParseUrl { url: redact(&args.url), source })?;
    let addr = client.get_connection_info().addr.to_string();
    let check = readiness.register(READINESS_CHECK);
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(IO_TIMEOUT)
        .set_response_timeout(IO_TIMEOUT)
        // One attempt per (re)connection: retrying is this module's job, so
        // that readiness shows a missing Redis at once. (The manager's own
        // retries wait at least a second, growing by `factor` each time.)
        // After a failed reconnection the next command, or the monitor's
        // PING, starts another.
        .set_number_of_retries(0);

    let mut delay = CONNECT_BACKOFF_BASE;
    let mut last_error = None;
    let manager = loop {
        let attempt = async {
            let mut manager = ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
            ping(&mut manager).await?;
            Ok::<_, ::redis::RedisError>(manager)
        };
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return Err(RedisError::Connect { addr, source: last_error }),
            outcome = attempt => outcome,
        };
        match outcome {
            Ok(manager) => break manager,
            Err(error) => {
                tracing::warn!(%addr, %error, retry_in = ?delay, "cannot reach Redis; retrying");
                check.set_not_ready(format!("cannot reach Redis at {addr}: {error}"));
                last_error = Some(error);
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Err(RedisError::Connect { addr, source: last_error }),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(CONNECT_BACKOFF_CAP);
    };
    tracing::info!(%addr, "connected to Redis");
    check.set_ready();
    tokio::spawn(monitor(manager.clone(), check, addr, shutdown.clone()));
    Ok(manager)
}

async fn ping(manager: &mut ConnectionManager) -> Result<(), ::redis::RedisError> {
    ::redis::cmd("PING").query_async::<String>(manager).await.map(drop)
}

/// Keeps the readiness check in line with whether Redis answers.
async fn monitor(mut manager: ConnectionManager, check: Check, addr: String, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PING_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset(); // The connection was just proven; the first ping can wait.
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match ping(&mut manager).await {
            Ok(()) => check.set_ready(),
            Err(error) => check.set_not_ready(format!("Redis at {addr} does not answer: {error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        let args = RedisArgs::new("redis://:s3cret@redis:6379");
        assert!(!format!("{args:?}").contains("s3cret"));
    }

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        redis: RedisArgs,
    }

    #[test]
    fn keys_carry_the_prefix_and_a_prefix_with_a_brace_or_space_is_refused() {
        use clap::Parser;
        let flags = Flags::try_parse_from(["x", "--redis-key-prefix=team-a.shop"]).expect("valid prefix");
        assert_eq!(flags.redis.key("cart:{u1}"), "team-a.shop:cart:{u1}");
        let default = Flags::try_parse_from(["x"]).expect("defaults");
        assert_eq!(default.redis.key("gen"), "commerce:gen");
        for bad in ["", "a{b", "a}b", "a b"] {
            let error = match Flags::try_parse_from(["x", &format!("--redis-key-prefix={bad}")]) {
                Ok(_) => panic!("{bad:?} was accepted"),
                Err(error) => error.to_string(),
            };
            assert!(error.contains("Redis key prefix"), "{bad:?}: {error}");
        }
    }
}
