//! The notification service: one inbox entry per user-visible saga step,
//! built from order, payment and shipment events (ARCHITECTURE section 4,
//! saga step 8).
//!
//! [`serve`] wires the platform: admin server, database, outbox relay,
//! consumer with its dead-letter topic (no outbox: it publishes nothing) and the gRPC
//! server; all stop on `shutdown`.

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod store;

use commerce_api::catalog::Service;
use commerce_platform::admin::{self, AdminError, Metrics};
use commerce_platform::db::{self, DatabaseError};
use commerce_platform::events::{
    ConsumerError, EventConsumer, EventProducer, ProducerError, consumer, producer,
};
use commerce_platform::grpc::{GrpcServer, GrpcServerError};
use commerce_platform::readiness::Readiness;
use commerce_proto::notification::v1::notification_service_server::NotificationServiceServer;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// The service's own migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Everything that can fail in the notification service, named after the action.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to the notification database")]
    ConnectDatabase(#[source] Box<DatabaseError>),
    #[error("cannot migrate the notification database")]
    MigrateDatabase(#[source] Box<DatabaseError>),
    #[error("cannot create the Kafka producer (dead letters)")]
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
    #[error("{field}: {problem}")]
    InvalidRequest { field: &'static str, problem: &'static str },
    #[error("cannot read notifications")]
    LoadNotifications(#[source] sqlx::Error),
    #[error("cannot store notifications")]
    StoreNotification(#[source] sqlx::Error),
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

/// Runs the notification service until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let metrics = Metrics::new(Service::Notification.name());
    let readiness = Readiness::new();
    let database_check = readiness.register(db::READINESS_CHECK);
    let producer_check = readiness.register(producer::READINESS_CHECK);
    let consumer_check = readiness.register(consumer::READINESS_CHECK);
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
    let handler = events::NotificationEventHandler;
    let consumer = EventConsumer::new(
        Service::Notification,
        &config.kafka,
        pool.clone(),
        producer.clone(),
        handler,
        consumer_check,
    )
    .map_err(|error| Error::CreateConsumer(Box::new(error)))?;
    let consumer = tokio::spawn(consumer.run(tasks.clone()));

    let served = GrpcServer::new(&config.common.grpc, readiness, &metrics)
        .add_service(NotificationServiceServer::new(grpc::NotificationGrpc::new(pool.clone())))
        .file_descriptor_set(commerce_proto::FILE_DESCRIPTOR_SET)
        .serve(shutdown.clone())
        .await
        .map_err(|error| Error::ServeGrpc(Box::new(error)));
    tasks.cancel();

    let consumed =
        consumer.await.map_err(Error::JoinTask)?.map_err(|error| Error::ConsumeEvents(Box::new(error)));
    health.await.map_err(Error::JoinTask)?;
    producer_watch.await.map_err(Error::JoinTask)?;
    let admin_served =
        admin.await.map_err(Error::JoinTask)?.map_err(|error| Error::ServeAdmin(Box::new(error)));
    pool.close().await;
    served.and(consumed).and(admin_served)
}
