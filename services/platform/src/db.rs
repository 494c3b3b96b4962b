//! Postgres for a service: its connection flags, a connect loop that waits
//! for a late database instead of crash-looping, migrations, the platform's
//! own tables (outbox, processed events) and a health loop that keeps the
//! `database` readiness check current.
//!
//! # Where the platform's tables live
//!
//! Every service database holds two independent sets of tables:
//!
//! - the service's own, created by its embedded `sqlx::migrate!()`
//!   migrations in the default schema (`public`), with their history in
//!   `public._sqlx_migrations`;
//! - the platform's, in the schema [`PLATFORM_SCHEMA`] (`commerce_platform`),
//!   created by the migrations embedded in this crate
//!   (`services/platform/migrations/`), with their history in
//!   `commerce_platform._sqlx_migrations`.
//!
//! sqlx names its history table without a schema, so it lands in the first
//! schema of the connection's `search_path`; the platform's migrator runs on a
//! connection whose `search_path` is the platform schema alone. The two
//! histories therefore never see each other: a service numbers its
//! migrations as it likes, `sqlx migrate run` and `sqlx::migrate!()` keep
//! working unmodified on the service's side, and neither side has to set
//! `ignore_missing` (which would hide genuinely lost migrations). The
//! platform's SQL names its schema explicitly, so its tables are found
//! whatever `search_path` a service uses.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::readiness::{Check, Readiness};
use crate::url::redact;

/// Schema of the platform's tables (outbox, processed events) in every
/// service database.
pub const PLATFORM_SCHEMA: &str = "commerce_platform";

/// Name of the readiness check a service registers for its database.
pub const READINESS_CHECK: &str = "database";

/// The platform's migrations (`services/platform/migrations/`), run in
/// [`PLATFORM_SCHEMA`] by [`install_platform_tables`].
static PLATFORM_MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// First delay between connection attempts: short, because the usual cause
/// is a database that is a few seconds slower to start than the service.
const CONNECT_BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest delay between connection attempts: a database that comes back is
/// noticed within seconds, while a hundred replicas waiting for it add little
/// load.
const CONNECT_BACKOFF_CAP: Duration = Duration::from_secs(5);
/// How often the health loop probes a healthy pool: often enough that
/// `/readyz` follows an outage within one kubelet probe period (10 s).
const HEALTH_INTERVAL_READY: Duration = Duration::from_secs(5);
/// How often it probes while the database is away, so that readiness comes
/// back quickly.
const HEALTH_INTERVAL_NOT_READY: Duration = Duration::from_secs(1);
/// Advisory lock key held while installing the platform's schema, so that
/// replicas starting together do not race on `CREATE SCHEMA`. ASCII
/// "cpschema"; advisory keys are per database, so it only has to differ from
/// the service's own keys and sqlx's migration lock.
const SCHEMA_LOCK_KEY: i64 = 0x6370_7363_6865_6d61;

/// Database flags every service with a database accepts.
#[derive(Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Database")]
pub struct DatabaseArgs {
    /// Postgres URL of the service's own database, credentials included
    /// (`postgres://order:secret@postgres:5432/commerce_order`). Give it
    /// through the environment: it carries a password. TLS follows libpq's
    /// parameters: `sslmode` (`disable`, `prefer` (default), `require`,
    /// `verify-ca`, `verify-full`) and `sslrootcert=<CA file>`; without the
    /// latter, `verify-*` trusts the public web CAs.
    #[arg(long = "database-url", env = "COMMERCE_DATABASE_URL", hide_env_values = true)]
    pub url: String,
    /// Upper bound of the connection pool. Postgres' own `max_connections`
    /// (100 by default) is shared by every replica of every service on the
    /// server, so keep replicas x this well below it.
    #[arg(
        long = "database-max-connections",
        env = "COMMERCE_DATABASE_MAX_CONNECTIONS",
        default_value_t = 10
    )]
    pub max_connections: u32,
    /// How long one connection attempt (and one wait for a pooled
    /// connection) may take before it counts as failed.
    #[arg(
        long = "database-connect-timeout",
        env = "COMMERCE_DATABASE_CONNECT_TIMEOUT",
        default_value = "5s",
        value_parser = humantime::parse_duration
    )]
    pub connect_timeout: Duration,
}

impl DatabaseArgs {
    /// Arguments for `url` with the default pool settings (tests, tools).
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), max_connections: 10, connect_timeout: Duration::from_secs(5) }
    }
}

/// The URL's password is a secret: never in logs, `Debug` output or errors.
impl fmt::Debug for DatabaseArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseArgs")
            .field("url", &redact(&self.url))
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// What can go wrong with a service's database.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The URL does not parse: a configuration error, reported at once rather
    /// than retried forever.
    #[error("invalid database URL {url}")]
    ParseUrl {
        /// The URL with its password hidden.
        url: String,
        #[source]
        source: sqlx::Error,
    },
    /// Shutdown was requested before the database answered.
    #[error("gave up connecting to the database at {url}: shutting down")]
    ConnectCancelled {
        url: String,
        /// The last connection error, if an attempt finished.
        #[source]
        source: Option<sqlx::Error>,
    },
    #[error("cannot open a connection to install the platform's tables")]
    ConnectForPlatformTables(#[source] sqlx::Error),
    #[error("cannot create schema {PLATFORM_SCHEMA}")]
    CreatePlatformSchema(#[source] sqlx::Error),
    #[error("cannot run the platform's migrations in schema {PLATFORM_SCHEMA}")]
    MigratePlatformTables(#[source] MigrateError),
    #[error("cannot run the service's migrations")]
    MigrateServiceTables(#[source] MigrateError),
}

/// A database transaction that is also a `db_transaction` span: a child
/// of the span it began in (a served request's, an event's), named after
/// the work, ending when the transaction commits, rolls back or is dropped
/// (which rolls it back). The span is never entered, so log lines keep the
/// request's or event's trace fields.
///
/// Derefs to the connection, as sqlx's transaction does: `&mut *tx` is an
/// executor.
pub struct Transaction {
    inner: sqlx::Transaction<'static, sqlx::Postgres>,
    span: tracing::Span,
}

/// Begins a transaction on `pool` for the work called `name` ("place
/// order"), as a [`Transaction`] span.
pub async fn begin(pool: &PgPool, name: &'static str) -> Result<Transaction, sqlx::Error> {
    let span = tracing::info_span!("db_transaction", otel.name = name, otel.kind = "client",);
    crate::trace_context::set_attribute(&span, opentelemetry::KeyValue::new("db.system.name", "postgresql"));
    let inner = tracing::Instrument::instrument(pool.begin(), span.clone()).await;
    match inner {
        Ok(inner) => Ok(Transaction { inner, span }),
        Err(error) => {
            crate::trace_context::set_error(&span, error.to_string());
            Err(error)
        }
    }
}

impl Transaction {
    /// Commits, ending the span (marked as an error if the commit fails).
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        let Transaction { inner, span } = self;
        let committed = tracing::Instrument::instrument(inner.commit(), span.clone()).await;
        if let Err(error) = &committed {
            crate::trace_context::set_error(&span, error.to_string());
        }
        committed
    }

    /// Rolls back, ending the span.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        let Transaction { inner, span } = self;
        tracing::Instrument::instrument(inner.rollback(), span).await
    }

    /// The sqlx transaction, for code that takes one.
    pub fn as_sqlx(&mut self) -> &mut sqlx::Transaction<'static, sqlx::Postgres> {
        &mut self.inner
    }
}

impl std::ops::Deref for Transaction {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.inner
    }
}

impl std::ops::DerefMut for Transaction {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.inner
    }
}

impl fmt::Debug for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction").finish_non_exhaustive()
    }
}

/// The database's clock: `now()`, the start of the current transaction
/// (or of this statement outside one).
///
/// The shop's processes compare times that other processes stamped
/// (reservation expiry, token lifetimes, retry schedules): they stamp and
/// compare them by the database's clock, one clock per shop, so that a
/// process whose own clock is off by minutes still decides correctly.
pub async fn database_now<'c, E>(executor: E) -> Result<chrono::DateTime<chrono::Utc>, sqlx::Error>
where
    E: sqlx::PgExecutor<'c>,
{
    sqlx::query_scalar("SELECT now()").fetch_one(executor).await
}

/// How long a pooled connection may sit idle before a checkout pings it.
const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

/// Connects a pool to the service's database, retrying with capped,
/// jittered exponential backoff for as long as it takes.
///
/// A database that is late (still starting, failing over, not yet created by
/// the operator) is the normal case when a whole stack starts at once, so
/// each failure is logged and shown in `check` (not ready, with the reason)
/// rather than crashing the process into a restart loop. Returns the pool
/// once a connection succeeded, with `check` ready; or
/// [`DatabaseError::ConnectCancelled`] when `shutdown` is cancelled first.
/// Only an unparsable URL fails at once.
pub async fn connect_with_retry(
    args: &DatabaseArgs,
    check: &Check,
    shutdown: &CancellationToken,
) -> Result<PgPool, DatabaseError> {
    let url = redact(&args.url);
    let options =
        parse_url(&args.url).map_err(|source| DatabaseError::ParseUrl { url: url.clone(), source })?;
    let pool_options = PgPoolOptions::new()
        .max_connections(args.max_connections)
        .acquire_timeout(args.connect_timeout)
        // A connection that died with the server is found and replaced on
        // the next acquire instead of failing a request: one that sat idle
        // for a while is pinged first. A ping is a round trip to the server
        // on every checkout, about a fifth of a small transaction's, so a
        // connection used moments ago (the common case under load) goes
        // out unchecked; if the server died in that moment, the statement
        // fails as any statement in flight at the crash does, and the
        // callers' retries cover it.
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_WHEN_IDLE_FOR {
                    connection.ping().await?;
                }
                Ok(true)
            })
        });

    let mut backoff = Backoff::new(CONNECT_BACKOFF_BASE, CONNECT_BACKOFF_CAP);
    let mut last_error = None;
    loop {
        // `connect_with` opens one connection before returning, so success
        // means the database really answered.
        let attempt =
            tokio::time::timeout(args.connect_timeout, pool_options.clone().connect_with(options.clone()));
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return Err(DatabaseError::ConnectCancelled { url, source: last_error }),
            outcome = attempt => outcome,
        };
        let error = match outcome {
            Ok(Ok(pool)) => {
                tracing::info!(%url, attempts = backoff.attempts() + 1, "connected to the database");
                check.set_ready();
                return Ok(pool);
            }
            Ok(Err(error)) => error,
            Err(_elapsed) => sqlx::Error::PoolTimedOut,
        };
        let delay = backoff.next_delay();
        tracing::warn!(%url, error = %error, retry_in = ?delay, "cannot connect to the database; retrying");
        check.set_not_ready(format!("cannot connect to the database at {url}: {error}"));
        last_error = Some(error);
        if sleep_or_cancelled(delay, shutdown).await {
            return Err(DatabaseError::ConnectCancelled { url, source: last_error });
        }
    }
}

/// The usual wiring in one call: registers the [`READINESS_CHECK`] in
/// `readiness`, waits for the database ([`connect_with_retry`]) and keeps
/// the check current until `shutdown` ([`spawn_health_check`]).
pub async fn connect(
    args: &DatabaseArgs,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> Result<PgPool, DatabaseError> {
    let check = readiness.register(READINESS_CHECK);
    let pool = connect_with_retry(args, &check, shutdown).await?;
    spawn_health_check(pool.clone(), check, shutdown.clone());
    Ok(pool)
}

/// Parses a Postgres URL. sqlx ignores the scheme; a `mysql://` URL given
/// by mistake would otherwise be retried against forever.
fn parse_url(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(sqlx::Error::Configuration(
            "the URL must start with postgres:// or postgresql://".into(),
        ));
    }
    PgConnectOptions::from_str(url)
}

/// Installs the platform's tables, then runs the service's own embedded
/// migrations (`sqlx::migrate!()` in the service crate).
///
/// Both are idempotent and safe when replicas start together: sqlx holds a
/// database-wide advisory lock while migrating. See the module docs for why
/// the two sets of migrations cannot collide.
pub async fn run_migrations(pool: &PgPool, service_migrations: &Migrator) -> Result<(), DatabaseError> {
    install_platform_tables(pool).await?;
    // `run_direct` on one acquired connection rather than `run(pool)`: the
    // services that await this inside their `serve` and spawn it met "`Acquire`
    // is not general enough" from `run(pool)`'s higher-ranked bound
    // (rust#102211); a concrete connection has no such bound.
    let mut conn = pool
        .acquire()
        .await
        .map_err(|error| DatabaseError::MigrateServiceTables(MigrateError::Execute(error)))?;
    service_migrations.run_direct(&mut *conn).await.map_err(DatabaseError::MigrateServiceTables)?;
    tracing::info!("service migrations are up to date");
    Ok(())
}

/// Creates or upgrades the platform's tables (outbox, processed events) in
/// schema [`PLATFORM_SCHEMA`], for a service that has no migrations of its
/// own (or that calls [`run_migrations`], which does this first).
pub async fn install_platform_tables(pool: &PgPool) -> Result<(), DatabaseError> {
    // A connection of its own, outside the pool, so that the narrowed
    // search_path never leaks into a pooled connection the service uses.
    let options = (*pool.connect_options()).clone().options([("search_path", PLATFORM_SCHEMA)]);
    let mut conn =
        PgConnection::connect_with(&options).await.map_err(DatabaseError::ConnectForPlatformTables)?;
    let result = async {
        // `CREATE SCHEMA IF NOT EXISTS` is not safe against a concurrent
        // twin (unique violation on pg_namespace): serialise replicas.
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(SCHEMA_LOCK_KEY)
            .execute(&mut conn)
            .await
            .map_err(DatabaseError::CreatePlatformSchema)?;
        let created = sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {PLATFORM_SCHEMA}"))
            .execute(&mut conn)
            .await
            .map_err(DatabaseError::CreatePlatformSchema);
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(SCHEMA_LOCK_KEY)
            .execute(&mut conn)
            .await
            .map_err(DatabaseError::CreatePlatformSchema);
        created.and(unlocked)?;
        PLATFORM_MIGRATOR.run_direct(&mut conn).await.map_err(DatabaseError::MigratePlatformTables)
    }
    .await;
    // Closing politely is a courtesy; a failure here changes nothing.
    let _ = conn.close().await;
    result?;
    tracing::info!(schema = PLATFORM_SCHEMA, "platform tables are up to date");
    Ok(())
}

/// Keeps `check` in line with whether the database answers, until
/// `shutdown`: probes with `SELECT 1` every few seconds (every second while
/// it is away) and flips the check on each change.
///
/// The pool itself reconnects on demand; this loop only reports, so that a
/// pod whose database went away leaves the Service's endpoints until it is
/// back instead of failing every request routed to it.
pub fn spawn_health_check(pool: PgPool, check: Check, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut healthy = true;
        loop {
            let interval = if healthy { HEALTH_INTERVAL_READY } else { HEALTH_INTERVAL_NOT_READY };
            if sleep_or_cancelled(interval, &shutdown).await {
                return;
            }
            // The pool's acquire timeout bounds the probe when the server is
            // unreachable; the outer timeout covers a server that accepts
            // but never answers.
            let probe = tokio::time::timeout(
                pool.options().get_acquire_timeout() * 2,
                sqlx::query("SELECT 1").execute(&pool),
            )
            .await;
            match probe {
                Ok(Ok(_)) => {
                    if !healthy {
                        tracing::info!("the database answers again");
                    }
                    healthy = true;
                    check.set_ready();
                }
                Ok(Err(error)) => {
                    healthy = false;
                    check.set_not_ready(format!("database probe failed: {error}"));
                }
                Err(_elapsed) => {
                    healthy = false;
                    check.set_not_ready("database probe timed out");
                }
            }
        }
    })
}

/// Sleeps for `delay` unless `shutdown` comes first; true when it did.
pub(crate) async fn sleep_or_cancelled(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let args = DatabaseArgs::new("postgres://order:s3cret@db:5432/commerce_order");
        let debug = format!("{args:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("postgres://order:***@db:5432/commerce_order"), "{debug}");
        let in_query = DatabaseArgs::new("postgres://db:5432/commerce_order?user=order&password=s3cret");
        assert!(!format!("{in_query:?}").contains("s3cret"), "{in_query:?}");
    }

    #[test]
    fn flags_have_defaults_except_the_url() {
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            database: DatabaseArgs,
        }
        let cli = Cli::try_parse_from([
            "test",
            "--database-url=postgres://u:p@h/d",
            "--database-connect-timeout=2s",
        ])
        .expect("flags parse");
        assert_eq!(cli.database.max_connections, 10);
        assert_eq!(cli.database.connect_timeout, Duration::from_secs(2));
    }

    #[tokio::test]
    async fn an_invalid_url_fails_at_once_instead_of_retrying() {
        let readiness = Readiness::new();
        let check = readiness.register(READINESS_CHECK);
        for url in ["mysql://u:p@h/d", "postgres://u:p@h:notaport/d"] {
            let (args, shutdown) = (DatabaseArgs::new(url), CancellationToken::new());
            let error =
                tokio::time::timeout(Duration::from_secs(5), connect_with_retry(&args, &check, &shutdown))
                    .await
                    .expect("fails at once")
                    .expect_err("must not connect");
            assert!(matches!(error, DatabaseError::ParseUrl { .. }), "{url}: {error:?}");
            assert!(!error.to_string().contains(":p@"), "no password in {error}");
        }
    }
}
