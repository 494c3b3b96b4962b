//! The recommendation service: "customers who bought this also bought"
//! from confirmed orders, "popular in this category" as the fallback for
//! new products and new users, and each signed-in user's recently viewed
//! products (issue: the rest of the seeds' shop, item 4).
//!
//! Item-to-item co-purchase counts, kept from events ([`events`]): when an
//! order is confirmed, each product new to its buyer adds one to its pair
//! with every product the buyer bought before or in the same order, so a
//! pair counts customers, not orders, and one customer buying the same two
//! things every week does not crowd out what many customers buy together.
//! The counts change within the event's transaction, seconds after the
//! confirmation. Views come from the gateway ([`grpc`]), the only thing
//! not learned from events: a view is not a domain event of any service.
//!
//! [`serve`] hands the lifecycle to the platform's [`ServiceRuntime`].

pub mod config;
pub mod events;
pub mod grpc;
pub mod store;

use commerce_platform::runtime::{RuntimeError, ServiceRuntime};
use commerce_proto::recommendation::v1::recommendation_service_server::RecommendationServiceServer;
use commerce_topology::Service;
use tokio_util::sync::CancellationToken;

pub use commerce_platform::error_chain;
pub use config::Config;

/// The service's own migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Products per list when none is asked for.
pub const DEFAULT_LIMIT: i64 = 6;
/// Most products per list.
pub const MAX_LIMIT: i64 = 20;
/// Views kept per user.
pub const VIEWS_KEPT: i64 = 50;
/// Most views one `RecordViews` call may carry.
pub const MAX_VIEWS_PER_CALL: usize = 1_000;

/// Everything that can fail in the recommendation service, named after the
/// action.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A step of the service's lifecycle (database, Kafka, servers) failed.
    #[error(transparent)]
    Run(#[from] RuntimeError),
    #[error("{field}: {problem}")]
    InvalidRequest { field: &'static str, problem: &'static str },
    #[error("cannot read recommendations")]
    Read(#[source] sqlx::Error),
    #[error("cannot record the views")]
    Write(#[source] sqlx::Error),
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Read(_) | Error::Write(_))
    }
}

/// Runs the recommendation service until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    ServiceRuntime::new(Service::Recommendation, &config.common)
        .serve(shutdown, |wiring| async move {
            let pool = wiring.connect_database(&config.database, &MIGRATOR).await?;
            // No outbox relay: it publishes nothing. The producer is the
            // consumer's way to its dead-letter topic.
            let producer = wiring.start_producer(&config.kafka)?;
            wiring.start_consumer(
                Service::Recommendation,
                &config.kafka,
                pool.clone(),
                producer,
                events::PurchaseEventHandler,
            )?;
            let server = RecommendationServiceServer::new(grpc::RecommendationGrpc::new(pool));
            Ok(wiring.grpc_server().add_service(server))
        })
        .await
}
