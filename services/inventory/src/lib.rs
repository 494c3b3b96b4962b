//! The inventory service: stock per product and reservations that hold it
//! for orders (`commerce.inventory.v1`), over its own Postgres database.
//!
//! [`serve`] runs on the platform's [`ServiceRuntime`] (admin server with
//! `/metrics`, `/healthz`, `/readyz`; ordered shutdown) and wires the
//! database (connected with retry, migrated), the outbox relay that
//! publishes `commerce.inventory.v1`, the consumer of the orders and
//! catalog topics (with its dead-letter topic) and the gRPC server.
//! Readiness covers the database, Kafka and the bound gRPC listener, never
//! peers.
//!
//! Modules: [`domain`] (pure rules), [`store`] (sqlx; every state change and
//! its outbox event in one transaction), [`events`] (published events and
//! the saga consumer), [`grpc`] (the API), [`metrics`] (its counters),
//! [`config`] (flags).

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod metrics;
pub mod published;
pub mod store;

use commerce_platform::events::OutboxError;
use commerce_platform::runtime::{RuntimeError, ServiceRuntime};
use commerce_proto::inventory::v1::inventory_service_server::InventoryServiceServer;
use commerce_topology::Service;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

pub(crate) use commerce_platform::error_chain;
pub use config::{Config, ReservationSettings};

/// The inventory's own migrations (`services/inventory/migrations/`).
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Everything that can fail in the inventory service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request breaks a rule (empty ids, zero quantities, ...).
    #[error("invalid request: {0}")]
    Validate(#[source] domain::RuleError),
    #[error("reservation {reservation} not found")]
    ReservationNotFound { reservation: String },
    /// The transition contradicts the reservation's status.
    #[error("reservation {reservation_id} is {status}; cannot apply {transition:?}")]
    ReservationState {
        reservation_id: uuid::Uuid,
        status: domain::ReservationStatus,
        transition: store::Transition,
    },
    #[error("a stored {what} is not one this version knows")]
    CorruptRow { what: &'static str },
    #[error("cannot begin a transaction")]
    BeginTransaction(#[source] sqlx::Error),
    #[error("cannot commit the transaction")]
    CommitTransaction(#[source] sqlx::Error),
    #[error("cannot read stock")]
    ReadStock(#[source] sqlx::Error),
    #[error("cannot lock stock rows")]
    LockStock(#[source] sqlx::Error),
    #[error("cannot update stock")]
    UpdateStock(#[source] sqlx::Error),
    #[error("cannot lock the order's reservation slot")]
    LockOrder(#[source] sqlx::Error),
    #[error("cannot read the reservation")]
    ReadReservation(#[source] sqlx::Error),
    #[error("cannot write the reservation")]
    WriteReservation(#[source] sqlx::Error),
    #[error("cannot write the event to the outbox")]
    EnqueueEvent(#[source] Box<OutboxError>),
    /// A step of the service's lifecycle (database, Kafka, servers) failed.
    #[error(transparent)]
    Run(#[from] RuntimeError),
}

impl Error {
    /// Whether retrying cannot help: broken rules, contradictions, unknown
    /// reservations. The consumer dead-letters these at once.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::Validate(_)
                | Self::ReservationNotFound { .. }
                | Self::ReservationState { .. }
                | Self::CorruptRow { .. }
        )
    }

    /// Whether the database could not be reached (as opposed to refusing a
    /// statement).
    pub fn is_unavailable(&self) -> bool {
        let sqlx_error = match self {
            Self::BeginTransaction(e)
            | Self::CommitTransaction(e)
            | Self::ReadStock(e)
            | Self::LockStock(e)
            | Self::UpdateStock(e)
            | Self::LockOrder(e)
            | Self::ReadReservation(e)
            | Self::WriteReservation(e) => e,
            _ => return false,
        };
        matches!(sqlx_error, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed)
    }
}

/// Runs the inventory service until `shutdown`: admin server at once, then
/// (once the database answers and is migrated) the outbox relay, the saga
/// consumer and the gRPC server. Returns when all have stopped; the first
/// fatal failure cancels the others and is returned.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let service = Service::Inventory;
    ServiceRuntime::new(service, &config.common)
        .serve(shutdown, |wiring| async move {
            let inventory_metrics = metrics::InventoryMetrics::register(wiring.metrics());
            let pool = wiring.connect_database(&config.database, &MIGRATOR).await?;
            let producer = wiring.start_producer(&config.kafka)?;
            wiring.spawn_outbox_relay(&pool, &producer);

            let handler = events::InventoryEventHandler::from_settings(&config.reservations)
                .with_metrics(inventory_metrics);
            wiring.start_consumer(service, &config.kafka, pool.clone(), producer, handler)?;

            let handler = grpc::InventoryGrpc::new(pool, config.reservations.clone());
            Ok(wiring.grpc_server().add_service(InventoryServiceServer::new(handler)))
        })
        .await
}
