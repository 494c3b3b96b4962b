//! The catalog service (`commerce.catalog.v1`): products and categories in
//! Postgres, product reads and listing pages served cache-aside from Redis,
//! and `ProductCreated`/`ProductUpdated`/`PriceChanged`/`ProductDeleted`
//! published through the platform outbox.
//!
//! - [`serve`] runs the service with [`Config`];
//! - [`seed::seed`] inserts the demo catalog ([`seed::DEMO_PRODUCTS`] has
//!   fixed ids that other seeds may use).

use commerce_api::catalog::Service;
use commerce_platform::admin::{self, AdminError, Metrics};
use commerce_platform::db::{self, DatabaseError};
use commerce_platform::events::{EventProducer, OutboxError, OutboxRelay, ProducerError};
use commerce_platform::grpc::{GrpcServer, GrpcServerError};
use commerce_platform::readiness::Readiness;
use commerce_platform::telemetry::{self, TelemetryError};
use commerce_proto::catalog::v1::catalog_service_server::CatalogServiceServer;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub mod cache;
pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod seed;
pub mod store;

pub use cache::Cache;
pub use config::Config;
pub use grpc::CatalogGrpc;
pub use seed::seed;

/// The catalog's own migrations (`services/catalog/migrations/`).
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Everything that can fail in the catalog service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input breaks a rule (empty name, negative price, bad page token, ...).
    #[error(transparent)]
    InvalidInput(#[from] domain::InvalidInput),
    #[error("SKU {sku} is already used by another product")]
    SkuTaken { sku: String },
    #[error("category slug {slug} is already used")]
    SlugTaken { slug: String },
    #[error("category {id} does not exist")]
    CategoryNotFound { id: Uuid },
    #[error("product {id} does not exist")]
    ProductNotFound { id: Uuid },
    #[error("database operation failed: {action}")]
    Database {
        action: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot write an event to the outbox")]
    EnqueueEvent(#[source] Box<OutboxError>),
    #[error("cannot set up logging")]
    InitTelemetry(#[source] TelemetryError),
    #[error("cannot connect to the catalog database")]
    ConnectDatabase(#[source] DatabaseError),
    #[error("cannot migrate the catalog database")]
    MigrateDatabase(#[source] DatabaseError),
    #[error("the migration task failed")]
    RunMigrations(#[source] tokio::task::JoinError),
    #[error("cannot create the Kafka producer")]
    CreateProducer(#[source] ProducerError),
    #[error("the gRPC server failed")]
    ServeGrpc(#[source] GrpcServerError),
    #[error("the admin server failed")]
    ServeAdmin(#[source] AdminError),
}

/// Runs the catalog until `shutdown`: admin server first (so `/readyz`
/// explains any wait), Redis in the background (optional), the database
/// (retried until it answers), migrations, the optional demo seed, the
/// outbox relay and the gRPC server. Readiness: database and Kafka
/// producer only; Redis is a cache.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    telemetry::init(&config.common.log, Service::Catalog.name()).map_err(Error::InitTelemetry)?;
    let readiness = Readiness::new();
    let metrics = Metrics::new(Service::Catalog.name());
    let admin_task = {
        let (args, readiness, metrics, shutdown) =
            (config.common.admin.clone(), readiness.clone(), metrics.clone(), shutdown.clone());
        tokio::spawn(async move { admin::serve(&args, readiness, metrics, shutdown).await })
    };

    let cache = Cache::new(&metrics);
    cache.connect_in_background(config.redis.clone(), shutdown.clone());

    let database_check = readiness.register(db::READINESS_CHECK);
    let pool = send(db::connect_with_retry(&config.database, &database_check, &shutdown))
        .await
        .map_err(Error::ConnectDatabase)?;
    migrate(&pool).await?;
    let health_task = db::spawn_health_check(pool.clone(), database_check, shutdown.clone());

    if config.seed_demo_catalog {
        seed::seed(&pool).await?;
        cache.invalidate(None).await;
    }

    let producer = EventProducer::new(&config.kafka).map_err(Error::CreateProducer)?;
    let producer_task = producer.watch_readiness(
        readiness.register(commerce_platform::events::producer::READINESS_CHECK),
        shutdown.clone(),
    );
    let relay_task = tokio::spawn(OutboxRelay::new(pool.clone(), producer.clone()).run(shutdown.clone()));

    let handler = CatalogGrpc::new(pool.clone(), cache);
    let grpc_result = GrpcServer::new(&config.common.grpc, readiness.clone(), &metrics)
        .file_descriptor_set(commerce_proto::FILE_DESCRIPTOR_SET)
        .add_service(CatalogServiceServer::new(handler))
        .serve(shutdown.clone());
    let grpc_result = send(grpc_result).await;
    // Whatever ended the server ends the rest.
    shutdown.cancel();
    for task in [relay_task, health_task, producer_task] {
        let _ = task.await;
    }
    producer.flush(std::time::Duration::from_secs(5)).await;
    pool.close().await;
    let admin_result = admin_task.await;
    grpc_result.map_err(Error::ServeGrpc)?;
    match admin_result {
        Ok(result) => result.map_err(Error::ServeAdmin),
        Err(_) => Ok(()),
    }
}

/// Runs the platform's and this service's migrations.
///
/// On a blocking thread of its own: sqlx's `Migrator::run` future cannot be
/// proven `Send` (its `Acquire<'a>` bound is higher-ranked, the same
/// rust-lang/rust#102211 false positive), so awaiting it inside `serve`
/// would make `serve` itself unspawnable. `block_on` needs no `Send`.
async fn migrate(pool: &sqlx::PgPool) -> Result<(), Error> {
    let pool = pool.clone();
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Handle::current().block_on(db::run_migrations(&pool, &MIGRATOR))
    })
    .await
    .map_err(Error::RunMigrations)?
    .map_err(Error::MigrateDatabase)
}

/// Boxes `future` as `Send` at this concrete call site. Awaiting the
/// platform's reference-taking futures directly inside `serve` trips
/// rustc's "implementation of `Send` is not general enough" false positive
/// (rust-lang/rust#102211) when a caller spawns `serve`; checking `Send`
/// here, where every lifetime is concrete, avoids it.
fn send<'a, T>(
    future: impl std::future::Future<Output = T> + Send + 'a,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>> {
    Box::pin(future)
}
