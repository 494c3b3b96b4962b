//! The inventory service: stock per product and reservations that hold it
//! for orders (`commerce.inventory.v1`), over its own Postgres database.
//!
//! [`serve`] wires the platform's parts: the admin server (`/metrics`,
//! `/healthz`, `/readyz`), the database (connected with retry, migrated),
//! the outbox relay that publishes `commerce.inventory.v1`, the consumer of
//! the orders and catalog topics (with its dead-letter topic) and the gRPC
//! server. Readiness covers the database and Kafka, never peers.
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
pub mod store;

use commerce_api::catalog::Service;
use commerce_platform::admin::{self, AdminError, Metrics};
use commerce_platform::db::{self, DatabaseError};
use commerce_platform::events::consumer::{self, ConsumerError};
use commerce_platform::events::producer::{self, ProducerError};
use commerce_platform::events::{EventConsumer, EventProducer, OutboxError, OutboxRelay};
use commerce_platform::grpc::{GrpcServer, GrpcServerError};
use commerce_platform::readiness::Readiness;
use commerce_platform::telemetry::{self, TelemetryError};
use commerce_proto::inventory::v1::inventory_service_server::InventoryServiceServer;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

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
    #[error("cannot set up logging")]
    InitTelemetry(#[source] Box<TelemetryError>),
    #[error("cannot connect to the database")]
    ConnectDatabase(#[source] Box<DatabaseError>),
    #[error("cannot migrate the database")]
    MigrateDatabase(#[source] Box<DatabaseError>),
    #[error("cannot create the Kafka producer")]
    CreateProducer(#[source] Box<ProducerError>),
    #[error("cannot create the event consumer")]
    CreateConsumer(#[source] Box<ConsumerError>),
    #[error("the event consumer failed")]
    RunConsumer(#[source] Box<ConsumerError>),
    #[error("the gRPC server failed")]
    ServeGrpc(#[source] Box<GrpcServerError>),
    #[error("the admin server failed")]
    ServeAdmin(#[source] Box<AdminError>),
    #[error("a service task panicked")]
    JoinTask(#[source] tokio::task::JoinError),
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

/// An error and its causes on one line, for logs.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Runs the platform's and the inventory's migrations.
///
/// On a blocking thread of its own: sqlx's migrator future (generic over
/// `Acquire`) cannot be proven `Send` for every lifetime, which would make
/// `tokio::spawn(serve(..))` fail to compile in every caller. `block_on`
/// needs no `Send`, and the pool works from any thread of the runtime.
/// (The platform's `db::run_migrations` could avoid this with
/// `Migrator::run_direct`; reported.)
async fn migrate(pool: sqlx::PgPool) -> Result<(), Error> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || runtime.block_on(db::run_migrations(&pool, &MIGRATOR)))
        .await
        .map_err(Error::JoinTask)?
        .map_err(|e| Error::MigrateDatabase(Box::new(e)))
}

/// Runs the inventory service until `shutdown`: admin server at once, then
/// (once the database answers and is migrated) the outbox relay, the saga
/// consumer and the gRPC server. Returns when all have stopped; the first
/// fatal failure cancels the others and is returned.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let service = Service::Inventory;
    telemetry::init(&config.common.log, service.name()).map_err(|e| Error::InitTelemetry(Box::new(e)))?;
    // A child token: a fatal failure of one part stops the others without
    // cancelling the caller's token (other services of `serve all`).
    let stop = shutdown.child_token();
    let readiness = Readiness::new();
    let metrics = Metrics::new(service.name());
    let inventory_metrics = metrics::InventoryMetrics::register(&metrics);
    let mut tasks = tokio::task::JoinSet::new();

    let admin = {
        let (args, readiness, metrics, stop) =
            (config.common.admin.clone(), readiness.clone(), metrics.clone(), stop.clone());
        async move {
            admin::serve(&args, readiness, metrics, stop).await.map_err(|e| Error::ServeAdmin(Box::new(e)))
        }
    };
    tasks.spawn(admin);

    let result = async {
        let database_check = readiness.register(db::READINESS_CHECK);
        let pool = db::connect_with_retry(&config.database, &database_check, &stop)
            .await
            .map_err(|e| Error::ConnectDatabase(Box::new(e)))?;
        migrate(pool.clone()).await?;
        tasks.spawn({
            let handle = db::spawn_health_check(pool.clone(), database_check, stop.clone());
            async move { handle.await.map_err(Error::JoinTask) }
        });

        let producer = EventProducer::new(&config.kafka).map_err(|e| Error::CreateProducer(Box::new(e)))?;
        let producer_watch =
            producer.watch_readiness(readiness.register(producer::READINESS_CHECK), stop.clone());
        tasks.spawn(async move { producer_watch.await.map_err(Error::JoinTask) });
        tasks.spawn({
            let relay = OutboxRelay::new(pool.clone(), producer.clone());
            let stop = stop.clone();
            async move {
                relay.run(stop).await;
                Ok(())
            }
        });

        let handler = events::InventoryEventHandler::from_settings(&config.reservations)
            .with_metrics(inventory_metrics.clone());
        let consumer = EventConsumer::new(
            service,
            &config.kafka,
            pool.clone(),
            producer,
            handler,
            readiness.register(consumer::READINESS_CHECK),
        )
        .map_err(|e| Error::CreateConsumer(Box::new(e)))?;
        tasks.spawn({
            let stop = stop.clone();
            async move { consumer.run(stop).await.map_err(|e| Error::RunConsumer(Box::new(e))) }
        });

        let grpc = GrpcServer::new(&config.common.grpc, readiness.clone(), &metrics)
            .file_descriptor_set(commerce_proto::FILE_DESCRIPTOR_SET)
            .add_service(InventoryServiceServer::new(grpc::InventoryGrpc::new(
                pool,
                config.reservations.clone(),
            )));
        tasks.spawn({
            let stop = stop.clone();
            async move { grpc.serve(stop).await.map_err(|e| Error::ServeGrpc(Box::new(e))) }
        });
        Ok::<(), Error>(())
    }
    .await;

    let mut first_error = result.err();
    if first_error.is_some() {
        stop.cancel();
    }
    while let Some(joined) = tasks.join_next().await {
        let outcome = joined.map_err(Error::JoinTask).and_then(|result| result);
        if let Err(error) = outcome {
            tracing::error!(error = %error_chain(&error), "inventory service part failed; stopping");
            stop.cancel();
            first_error.get_or_insert(error);
        }
    }
    match first_error {
        // Shutting down while still connecting is no failure.
        Some(Error::ConnectDatabase(error))
            if matches!(*error, DatabaseError::ConnectCancelled { .. }) && shutdown.is_cancelled() =>
        {
            Ok(())
        }
        Some(error) => Err(error),
        None => Ok(()),
    }
}
