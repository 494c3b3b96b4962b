//! The order service: places orders priced by the catalog and drives each
//! order through the choreographed saga (ARCHITECTURE section 4) as the single
//! writer of its fate.
//!
//! [`serve`] wires the platform: admin server, database (connect with retry,
//! migrations), outbox relay, event consumer with its dead-letter topic, the
//! reservation sweeper and the gRPC server; all stop on `shutdown`.

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod store;

use std::sync::Arc;

use commerce_api::catalog::Service;
use commerce_platform::admin::{self, AdminError, Metrics};
use commerce_platform::db::{self, DatabaseError};
use commerce_platform::discovery::{DiscoveryError, Peers};
use commerce_platform::events::{
    ConsumerError, EventConsumer, EventProducer, OutboxError, OutboxRelay, ProducerError, consumer, producer,
};
use commerce_platform::grpc::{GrpcServer, GrpcServerError};
use commerce_platform::readiness::Readiness;
use commerce_proto::order::v1::order_service_server::OrderServiceServer;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use config::Config;

/// The service's own migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Everything that can fail in the order service, named after the action.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to the order database")]
    ConnectDatabase(#[source] Box<DatabaseError>),
    #[error("cannot migrate the order database")]
    MigrateDatabase(#[source] Box<DatabaseError>),
    #[error("cannot create the Kafka producer")]
    CreateProducer(#[source] Box<ProducerError>),
    #[error("cannot create the event consumer")]
    CreateConsumer(#[source] Box<ConsumerError>),
    #[error("the event consumer failed")]
    ConsumeEvents(#[source] Box<ConsumerError>),
    #[error("the gRPC server failed")]
    ServeGrpc(#[source] Box<GrpcServerError>),
    #[error("the admin server failed")]
    ServeAdmin(#[source] Box<AdminError>),
    #[error("a background task panicked or was aborted")]
    JoinTask(#[source] tokio::task::JoinError),
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

/// Runs the platform's and the service's migrations on a blocking thread.
///
/// `Migrator::run` borrows the pool through a higher-ranked `Acquire` bound
/// that makes any future awaiting it fail the `Send` check, so awaiting it
/// inside `serve` would make `tokio::spawn(serve(..))` fail to compile in
/// every caller. `block_on` needs no `Send`. (Same workaround as the
/// inventory service; the platform's `db::run_migrations` could avoid it.)
async fn migrate(pool: sqlx::PgPool) -> Result<(), Error> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || runtime.block_on(db::run_migrations(&pool, &MIGRATOR)))
        .await
        .map_err(Error::JoinTask)?
        .map_err(|error| Error::MigrateDatabase(Box::new(error)))
}

/// An error with its causes, `: `-separated, for logs and statuses.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
    let metrics = Metrics::new(Service::Order.name());
    let readiness = Readiness::new();
    let database_check = readiness.register(db::READINESS_CHECK);
    let producer_check = readiness.register(producer::READINESS_CHECK);
    let consumer_check = readiness.register(consumer::READINESS_CHECK);
    // Background work stops when the gRPC server stops, whatever the reason.
    let tasks = shutdown.child_token();

    let admin_args = config.common.admin.clone();
    let admin = {
        let (readiness, metrics, stop) = (readiness.clone(), metrics.clone(), tasks.clone());
        tokio::spawn(async move { admin::serve(&admin_args, readiness, metrics, stop).await })
    };

    let pool = db::connect_with_retry(&config.database, &database_check, &shutdown)
        .await
        .map_err(|error| Error::ConnectDatabase(Box::new(error)))?;
    migrate(pool.clone()).await?;
    let health = db::spawn_health_check(pool.clone(), database_check, tasks.clone());

    let producer =
        EventProducer::new(&config.kafka).map_err(|error| Error::CreateProducer(Box::new(error)))?;
    let producer_watch = producer.watch_readiness(producer_check, tasks.clone());
    let relay = tokio::spawn(OutboxRelay::new(pool.clone(), producer.clone()).run(tasks.clone()));
    let consumer = EventConsumer::new(
        Service::Order,
        &config.kafka,
        pool.clone(),
        producer.clone(),
        events::OrderEventHandler,
        consumer_check,
    )
    .map_err(|error| Error::CreateConsumer(Box::new(error)))?;
    let consumer = tokio::spawn(consumer.run(tasks.clone()));
    let sweeper = tokio::spawn(events::run_reservation_sweeper(
        pool.clone(),
        config.reservation_sweep_interval,
        tasks.clone(),
    ));

    let served = GrpcServer::new(&config.common.grpc, readiness, &metrics)
        .add_service(OrderServiceServer::new(grpc::OrderGrpc::new(pool.clone(), catalog)))
        .file_descriptor_set(commerce_proto::FILE_DESCRIPTOR_SET)
        .serve(shutdown.clone())
        .await
        .map_err(|error| Error::ServeGrpc(Box::new(error)));
    tasks.cancel();

    let consumed =
        consumer.await.map_err(Error::JoinTask)?.map_err(|error| Error::ConsumeEvents(Box::new(error)));
    relay.await.map_err(Error::JoinTask)?;
    sweeper.await.map_err(Error::JoinTask)?;
    health.await.map_err(Error::JoinTask)?;
    producer_watch.await.map_err(Error::JoinTask)?;
    let admin_served =
        admin.await.map_err(Error::JoinTask)?.map_err(|error| Error::ServeAdmin(Box::new(error)));
    pool.close().await;
    served.and(consumed).and(admin_served)
}
