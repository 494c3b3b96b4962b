//! The reviews service: star ratings and text by verified buyers, one
//! review per product and user, helpful votes, abuse reports and the admins'
//! moderation queue (issue: the rest of the seeds' shop, item 2).
//!
//! - **Verified buyers:** the service learns who bought what from the
//!   Orders topic (`OrderPlaced` names the products, `OrderDelivered`
//!   turns them into purchases, see [`events`]); only a purchase entitles a
//!   user to review the product. No call to the order service: a review
//!   does not wait on it, and the order service does not know reviews exist.
//! - **Ratings:** every change that moves a product's rating publishes it
//!   whole, with a version, through the outbox on `commerce.reviews.v1`
//!   (`ReviewCreated`, `ReviewUpdated`, `ReviewModerated`; `ReviewFlagged`
//!   for a report). The catalog keeps the highest version's.
//!
//! [`serve`] hands the lifecycle to the platform's [`ServiceRuntime`].

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod store;

use commerce_platform::events::OutboxError;
use commerce_platform::runtime::{RuntimeError, ServiceRuntime};
use commerce_proto::reviews::v1::review_service_server::ReviewServiceServer;
use commerce_topology::Service;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use commerce_platform::error_chain;
pub use config::Config;

/// The service's own migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Everything that can fail in the reviews service, named after the action.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A step of the service's lifecycle (database, Kafka, servers) failed.
    #[error(transparent)]
    Run(#[from] RuntimeError),
    #[error("{field}: {problem}")]
    InvalidRequest { field: &'static str, problem: &'static str },
    #[error("only a buyer whose order of product {product_id} was delivered can review it")]
    NotAVerifiedBuyer { product_id: String },
    #[error("you reviewed this product already: edit review {review_id}")]
    AlreadyReviewed { review_id: Uuid },
    #[error("no such review")]
    ReviewNotFound,
    #[error("the review was removed by moderation and cannot be changed")]
    ReviewRemoved,
    #[error("cannot read reviews")]
    Read(#[source] sqlx::Error),
    #[error("cannot write the review")]
    Write(#[source] sqlx::Error),
    #[error("cannot write an event to the outbox")]
    Enqueue(#[source] Box<OutboxError>),
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Read(_) | Error::Write(_) | Error::Enqueue(_))
    }
}

/// Runs the reviews service until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    ServiceRuntime::new(Service::Reviews, &config.common)
        .serve(shutdown, |wiring| async move {
            let pool = wiring.connect_database(&config.database, &MIGRATOR).await?;
            let producer = wiring.start_producer(&config.kafka)?;
            wiring.spawn_outbox_relay(&pool, &producer);
            wiring.start_consumer(
                Service::Reviews,
                &config.kafka,
                pool.clone(),
                producer,
                events::PurchaseEventHandler,
            )?;
            Ok(wiring.grpc_server().add_service(ReviewServiceServer::new(grpc::ReviewGrpc::new(pool))))
        })
        .await
}
