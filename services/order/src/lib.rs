//! The order service: places orders priced by the catalog and drives each
//! order through the choreographed saga (ARCHITECTURE section 4) as the single
//! writer of its fate.
//!
//! [`serve`] hands the lifecycle to the platform's [`ServiceRuntime`] and
//! wires the service's parts: database, outbox relay, event consumer with
//! its dead-letter topic, the reservation sweeper, the saga's metrics
//! ([`metrics`]) and the gRPC server; all stop on `shutdown`.

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod live;
pub mod metrics;
pub mod store;

use std::sync::Arc;

use commerce_platform::discovery::{DiscoveryError, Peers};
use commerce_platform::events::OutboxError;
use commerce_platform::runtime::{RuntimeError, ServiceRuntime};
use commerce_proto::order::v1::order_service_server::OrderServiceServer;
use commerce_topology::Service;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use commerce_platform::error_chain;
pub use config::Config;

/// The service's own migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Everything that can fail in the order service, named after the action.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A step of the service's lifecycle (database, Kafka, servers) failed.
    #[error(transparent)]
    Run(#[from] RuntimeError),
    #[error("invalid order")]
    InvalidPlacement(#[source] domain::PlacementError),
    #[error("idempotency key {key:?} was already used for an order with different lines")]
    ReuseIdempotencyKey { key: String },
    #[error("order {id} not found")]
    OrderNotFound { id: Uuid },
    #[error("cannot cancel the order")]
    RefuseCancel(#[source] domain::CancelRefused),
    #[error("cannot reach the catalog")]
    ReachCatalog(#[source] Box<DiscoveryError>),
    #[error("cannot price the order with the catalog")]
    QueryCatalog(#[source] Box<tonic::Status>),
    #[error("cannot read orders")]
    LoadOrder(#[source] sqlx::Error),
    #[error("cannot list orders")]
    ListOrders(#[source] sqlx::Error),
    #[error("cannot store the order")]
    InsertOrder(#[source] sqlx::Error),
    #[error("cannot update the order")]
    UpdateOrder(#[source] sqlx::Error),
    #[error("cannot enqueue the order's event")]
    EnqueueEvent(#[source] Box<OutboxError>),
    #[error("stored order {id} is unreadable: {problem}")]
    DecodeStoredOrder { id: Uuid, problem: String },
}

impl Error {
    /// Whether trying again later may succeed (database or peer trouble),
    /// as opposed to a request or event that is wrong in itself.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::LoadOrder(_)
                | Error::ListOrders(_)
                | Error::InsertOrder(_)
                | Error::UpdateOrder(_)
                | Error::EnqueueEvent(_)
                | Error::ReachCatalog(_)
                | Error::QueryCatalog(_)
        )
    }
}

/// Runs the order service until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let peers = Peers::new(&config.peers.clone().or_local_defaults(), &config.client, shutdown.clone());
    serve_with_catalog(config, Arc::new(peers), shutdown).await
}

/// [`serve`] with the catalog reached some other way (tests use an
/// in-process catalog on a loopback port).
pub async fn serve_with_catalog(
    config: Config,
    catalog: Arc<dyn grpc::CatalogPeer>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    ServiceRuntime::new(Service::Order, &config.common)
        .serve(shutdown, |wiring| async move {
            let pool = wiring.connect_database(&config.database, &MIGRATOR).await?;
            let saga_metrics = metrics::SagaMetrics::register(wiring.metrics());
            let producer = wiring.start_producer(&config.kafka)?;
            wiring.spawn_outbox_relay(&pool, &producer);
            wiring.start_consumer(
                Service::Order,
                &config.kafka,
                pool.clone(),
                producer,
                events::OrderEventHandler::new(saga_metrics.clone()),
            )?;
            wiring.spawn_task(
                "reservation sweeper",
                events::run_reservation_sweeper(
                    pool.clone(),
                    config.reservation_sweep_interval,
                    saga_metrics.clone(),
                    wiring.stop_token(),
                ),
            );
            wiring.spawn_task(
                "open orders gauge",
                saga_metrics.clone().run_open_orders(pool.clone(), wiring.stop_token()),
            );
            let feed = live::StatusFeed::new();
            wiring.spawn_task("order status listener", feed.clone().run(pool.clone(), wiring.stop_token()));
            let grpc = grpc::OrderGrpc::new(pool, catalog)
                .with_metrics(saga_metrics)
                .with_feed(feed, wiring.stop_token());
            Ok(wiring.grpc_server().add_service(OrderServiceServer::new(grpc)))
        })
        .await
}
