//! The payment service: one charge per order (idempotency key = order id),
//! refunds, and a pluggable provider (a deterministic mock by default).
//!
//! In the saga (ARCHITECTURE section 4, step 3) it joins OrderPlaced and
//! StockReserved into one payment row, and a worker charges due payments
//! under the row lock through the breaker-guarded provider, writing
//! PaymentCaptured/PaymentFailed with the outcome. Dead orders cancel pending
//! payments or refund captured ones.
//!
//! [`serve`] wires the platform: admin server (plus the mock provider's
//! controls), database, outbox relay, consumer with its dead-letter topic,
//! the worker and the gRPC server; all stop on `shutdown`.

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod provider;
pub mod store;
pub mod worker;

use std::sync::Arc;

use commerce_api::catalog::Service;
use commerce_platform::admin::{self, Metrics};
use commerce_platform::db::{self, DatabaseError};
use commerce_platform::events::{
    ConsumerError, EventConsumer, EventProducer, OutboxError, OutboxRelay, ProducerError, consumer, producer,
};
use commerce_platform::grpc::{GrpcServer, GrpcServerError};
use commerce_platform::readiness::Readiness;
use commerce_proto::payment::v1::payment_service_server::PaymentServiceServer;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use config::Config;
use provider::{MockProvider, PaymentProvider, ProviderBreaker, ProviderError};

/// The service's own migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Everything that can fail in the payment service, named after the action.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to the payment database")]
    ConnectDatabase(#[source] Box<DatabaseError>),
    #[error("cannot migrate the payment database")]
    MigrateDatabase(#[source] Box<DatabaseError>),
    #[error("cannot create the Kafka producer")]
    CreateProducer(#[source] Box<ProducerError>),
    #[error("cannot create the event consumer")]
    CreateConsumer(#[source] Box<ConsumerError>),
    #[error("the event consumer failed")]
    ConsumeEvents(#[source] Box<ConsumerError>),
    #[error("the gRPC server failed")]
    ServeGrpc(#[source] Box<GrpcServerError>),
    #[error("cannot bind the admin server to {addr}")]
    BindAdmin {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the admin server failed")]
    ServeAdmin(#[source] Box<std::io::Error>),
    #[error("a background task panicked or was aborted")]
    JoinTask(#[source] tokio::task::JoinError),
    #[error("{field}: {problem}")]
    InvalidRequest { field: &'static str, problem: &'static str },
    #[error("payment not found")]
    PaymentNotFound,
    #[error("refund not found")]
    RefundNotFound,
    #[error("cannot refund")]
    RefuseRefund(#[source] domain::RefundRefused),
    #[error("cannot reach the payment provider")]
    ReachProvider(#[source] Box<ProviderError>),
    #[error("cannot read payments")]
    LoadPayment(#[source] sqlx::Error),
    #[error("cannot update the payment")]
    UpdatePayment(#[source] sqlx::Error),
    #[error("cannot read refunds")]
    LoadRefund(#[source] sqlx::Error),
    #[error("cannot update the refund")]
    UpdateRefund(#[source] sqlx::Error),
    #[error("cannot enqueue the payment's event")]
    EnqueueEvent(#[source] Box<OutboxError>),
    #[error("stored payment {id} is unreadable: {problem}")]
    DecodeStoredPayment { id: Uuid, problem: String },
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::LoadPayment(_)
                | Error::UpdatePayment(_)
                | Error::LoadRefund(_)
                | Error::UpdateRefund(_)
                | Error::EnqueueEvent(_)
                | Error::ReachProvider(_)
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

/// Runs the payment service with the mock provider configured by
/// `config.mock` until `shutdown`; the mock's controls are served on the
/// admin port (see [`provider`]).
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let mock = Arc::new(MockProvider::new(config.mock.settings()));
    let controls = provider::mock_routes(mock.clone());
    serve_with_provider(config, mock, Some(controls), shutdown).await
}

/// [`serve`] with a given provider (tests keep a handle on the mock) and
/// extra admin routes.
pub async fn serve_with_provider(
    config: Config,
    provider: Arc<dyn PaymentProvider>,
    admin_routes: Option<axum::Router>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let metrics = Metrics::new(Service::Payment.name());
    let readiness = Readiness::new();
    let database_check = readiness.register(db::READINESS_CHECK);
    let producer_check = readiness.register(producer::READINESS_CHECK);
    let consumer_check = readiness.register(consumer::READINESS_CHECK);
    let tasks = shutdown.child_token();

    let admin_addr = config.common.admin.addr;
    let listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .map_err(|source| Error::BindAdmin { addr: admin_addr, source })?;
    let mut router = admin::router(readiness.clone(), metrics.clone());
    if let Some(routes) = admin_routes {
        router = router.merge(routes);
    }
    let admin = tokio::spawn(
        axum::serve(listener, router).with_graceful_shutdown(tasks.clone().cancelled_owned()).into_future(),
    );

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
        Service::Payment,
        &config.kafka,
        pool.clone(),
        producer.clone(),
        events::PaymentEventHandler,
        consumer_check,
    )
    .map_err(|error| Error::CreateConsumer(Box::new(error)))?;
    let consumer = tokio::spawn(consumer.run(tasks.clone()));

    let breaker = ProviderBreaker::new(config.client.breaker_failures, config.client.breaker_open);
    let worker =
        worker::Worker::new(pool.clone(), provider, breaker, config.worker.settings()).with_metrics(&metrics);
    let worker_task = tokio::spawn(worker.clone().run(tasks.clone()));

    let served = GrpcServer::new(&config.common.grpc, readiness, &metrics)
        .add_service(PaymentServiceServer::new(grpc::PaymentGrpc::new(pool.clone(), worker)))
        .file_descriptor_set(commerce_proto::FILE_DESCRIPTOR_SET)
        .serve(shutdown.clone())
        .await
        .map_err(|error| Error::ServeGrpc(Box::new(error)));
    tasks.cancel();

    let consumed =
        consumer.await.map_err(Error::JoinTask)?.map_err(|error| Error::ConsumeEvents(Box::new(error)));
    worker_task.await.map_err(Error::JoinTask)?;
    relay.await.map_err(Error::JoinTask)?;
    health.await.map_err(Error::JoinTask)?;
    producer_watch.await.map_err(Error::JoinTask)?;
    let admin_served =
        admin.await.map_err(Error::JoinTask)?.map_err(|error| Error::ServeAdmin(Box::new(error)));
    pool.close().await;
    served.and(consumed).and(admin_served)
}
