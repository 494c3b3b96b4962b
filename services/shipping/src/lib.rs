//! The shipping service: one shipment per confirmed order, its courier and
//! its tracking history (ARCHITECTURE section 4, saga step 6).
//!
//! [`serve`] hands the lifecycle to the platform's [`ServiceRuntime`] and
//! wires the service's parts: database, outbox relay, consumer of the
//! orders topic with its dead-letter topic and the gRPC server; all stop on
//! `shutdown`.

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod store;

use commerce_platform::events::OutboxError;
use commerce_platform::runtime::{RuntimeError, ServiceRuntime};
use commerce_proto::shipping::v1::shipping_service_server::ShippingServiceServer;
use commerce_topology::Service;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use commerce_platform::error_chain;
pub use config::Config;

/// The service's own migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Everything that can fail in the shipping service, named after the action.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A step of the service's lifecycle (database, Kafka, servers) failed.
    #[error(transparent)]
    Run(#[from] RuntimeError),
    #[error("{field}: {problem}")]
    InvalidRequest { field: &'static str, problem: &'static str },
    #[error("shipment not found")]
    ShipmentNotFound,
    #[error("cannot change the shipment's status")]
    RefuseTransition(#[source] domain::InvalidTransition),
    #[error("the shipment is not assigned to courier {courier_id}")]
    DenyCourier { courier_id: String },
    #[error("cannot read shipments")]
    LoadShipment(#[source] sqlx::Error),
    #[error("cannot update the shipment")]
    UpdateShipment(#[source] sqlx::Error),
    #[error("cannot enqueue the shipment's event")]
    EnqueueEvent(#[source] Box<OutboxError>),
    #[error("stored shipment {id} is unreadable: {problem}")]
    DecodeStoredShipment { id: Uuid, problem: String },
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::LoadShipment(_) | Error::UpdateShipment(_) | Error::EnqueueEvent(_))
    }
}

/// Runs the shipping service until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let couriers: Vec<String> = config
        .couriers
        .iter()
        .map(|courier| courier.trim().to_owned())
        .filter(|courier| !courier.is_empty())
        .collect();
    ServiceRuntime::new(Service::Shipping, &config.common)
        .serve(shutdown, |wiring| async move {
            let pool = wiring.connect_database(&config.database, &MIGRATOR).await?;
            let producer = wiring.start_producer(&config.kafka)?;
            wiring.spawn_outbox_relay(&pool, &producer);
            let handler = events::ShippingEventHandler { couriers: couriers.clone() };
            wiring.start_consumer(Service::Shipping, &config.kafka, pool.clone(), producer, handler)?;
            Ok(wiring
                .grpc_server()
                .add_service(ShippingServiceServer::new(grpc::ShippingGrpc::new(pool, couriers))))
        })
        .await
}
