//! The analytics service: sales, revenue and order counts per day, product
//! and category; the order funnel with its cancellation and refund rates;
//! and the admin dashboard's figures (issue: the rest of the seeds' shop,
//! item 5).
//!
//! Built from events only ([`events`]): one row per order with the first
//! moment it reached each step, its lines, and each product's category. The
//! writes commute (a step's earliest moment wins, refunds only grow, a
//! product keeps its latest catalog event) and the platform's consumer
//! applies each event once, so dropping the tables and reading the topics
//! again gives the same figures, whatever order the partitions interleave
//! in. The reports ([`grpc`]) are queries over those rows. The dashboard's
//! dead-letter counts come from the brokers (each dead-letter topic's
//! watermarks), not from events.
//!
//! [`serve`] hands the lifecycle to the platform's [`ServiceRuntime`].

pub mod config;
pub mod events;
pub mod grpc;
pub mod store;

use commerce_platform::runtime::{RuntimeError, ServiceRuntime};
use commerce_proto::analytics::v1::analytics_service_server::AnalyticsServiceServer;
use commerce_topology::Service;
use tokio_util::sync::CancellationToken;

pub use commerce_platform::error_chain;
pub use config::Config;

/// The service's own migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Everything that can fail in the analytics service, named after the
/// action.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A step of the service's lifecycle (database, Kafka, servers) failed.
    #[error(transparent)]
    Run(#[from] RuntimeError),
    #[error("{field}: {problem}")]
    InvalidRequest { field: &'static str, problem: &'static str },
    #[error("cannot read the analytics tables")]
    Read(#[source] sqlx::Error),
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Read(_))
    }
}

/// Runs the analytics service until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    ServiceRuntime::new(Service::Analytics, &config.common)
        .serve(shutdown, |wiring| async move {
            let pool = wiring.connect_database(&config.database, &MIGRATOR).await?;
            // No outbox relay: it publishes nothing. The producer is the
            // consumer's way to its dead-letter topic.
            let producer = wiring.start_producer(&config.kafka)?;
            wiring.start_consumer(
                Service::Analytics,
                &config.kafka,
                pool.clone(),
                producer,
                events::AnalyticsEventHandler,
            )?;
            let server = AnalyticsServiceServer::new(grpc::AnalyticsGrpc::new(pool, &config.kafka));
            Ok(wiring.grpc_server().add_service(server))
        })
        .await
}
