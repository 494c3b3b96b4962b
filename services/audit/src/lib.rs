//! The audit service: an append-only, tamper-evident record of every
//! domain event of the shop (issue: the audit trail).
//!
//! It consumes every domain topic in its own consumer group and appends
//! each event to a hash chain ([`domain`]) in the transaction that marks the
//! event processed, so every event is recorded exactly once and in one
//! order. The gateway adds each administrator's successful change
//! (`RecordAdminAction`: who, what, when, from which request). Admins read
//! the trail and check the chain over gRPC (the gateway serves
//! `/api/admin/audit`). Entries older than the retention period are
//! removed from the start of the chain, which stays verifiable from the
//! last removed entry.
//!
//! [`serve`] hands the lifecycle to the platform's [`ServiceRuntime`].

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod payload;
pub mod store;

use std::time::Duration;

use commerce_platform::runtime::{RuntimeError, ServiceRuntime};
use commerce_proto::audit::v1::audit_service_server::AuditServiceServer;
use commerce_topology::Service;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use commerce_platform::error_chain;
pub use config::Config;

/// The service's own migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Everything that can fail in the audit service, named after the action.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A step of the service's lifecycle (database, Kafka, servers) failed.
    #[error(transparent)]
    Run(#[from] RuntimeError),
    #[error("{field}: {problem}")]
    InvalidRequest { field: &'static str, problem: &'static str },
    #[error("cannot read the audit trail")]
    ReadChain(#[source] sqlx::Error),
    #[error("cannot append to the audit trail")]
    Append(#[source] sqlx::Error),
    #[error("cannot remove expired audit entries")]
    Prune(#[source] sqlx::Error),
    #[error("the stored chain's {what} is {length} bytes, not 32")]
    CorruptChain { what: &'static str, length: usize },
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::ReadChain(_) | Error::Append(_) | Error::Prune(_))
    }
}

/// Runs the audit service until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let (retention, interval) = (config.retention, config.retention_interval);
    let handler = events::AuditEventHandler { batching: config.batching() };
    ServiceRuntime::new(Service::Audit, &config.common)
        .serve(shutdown, |wiring| async move {
            let pool = wiring.connect_database(&config.database, &MIGRATOR).await?;
            // No outbox relay: it publishes nothing. The producer is the
            // consumer's way to its dead-letter topic.
            let producer = wiring.start_producer(&config.kafka)?;
            wiring.start_consumer(Service::Audit, &config.kafka, pool.clone(), producer, handler)?;
            if !retention.is_zero() {
                wiring.spawn_task(
                    "audit retention",
                    run_retention(pool.clone(), retention, interval, wiring.stop_token()),
                );
            }
            Ok(wiring.grpc_server().add_service(AuditServiceServer::new(grpc::AuditGrpc::new(pool))))
        })
        .await
}

/// Removes expired entries every `interval` until `stop`.
async fn run_retention(pool: PgPool, retention: Duration, interval: Duration, stop: CancellationToken) {
    let interval = interval.max(Duration::from_secs(1));
    loop {
        match prune_once(&pool, retention).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, ?retention, "expired audit entries removed"),
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "audit retention failed; retrying later")
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// One retention pass: the entries recorded more than `retention` ago.
pub async fn prune_once(pool: &PgPool, retention: Duration) -> Result<u64, Error> {
    let Ok(age) = chrono::Duration::from_std(retention) else { return Ok(0) };
    let Some(cutoff) = chrono::Utc::now().checked_sub_signed(age) else { return Ok(0) };
    let mut tx = pool.begin().await.map_err(Error::Prune)?;
    let removed = store::prune(&mut tx, cutoff).await?;
    tx.commit().await.map_err(Error::Prune)?;
    Ok(removed)
}
