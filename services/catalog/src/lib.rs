//! The catalog service (`commerce.catalog.v1`): products and categories in
//! Postgres, product reads and listing pages served cache-aside from Redis,
//! and `ProductCreated`/`ProductUpdated`/`PriceChanged`/`ProductDeleted`
//! published through the platform outbox. It consumes the reviews topic for
//! each product's rating ([`ratings`]).
//!
//! - [`serve`] runs the service with [`Config`];
//! - [`seed::seed`] inserts the demo catalog ([`seed::DEMO_PRODUCTS`] has
//!   fixed ids that other seeds may use).

use commerce_platform::events::OutboxError;
use commerce_platform::runtime::{RuntimeError, ServiceRuntime};
use commerce_proto::catalog::v1::catalog_service_server::CatalogServiceServer;
use commerce_topology::Service;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub mod cache;
pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod ratings;
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
    /// A step of the service's lifecycle (database, Kafka, servers) failed.
    #[error(transparent)]
    Run(#[from] RuntimeError),
}

/// Runs the catalog until `shutdown` on the platform's [`ServiceRuntime`]:
/// admin server first (so `/readyz` explains any wait), Redis in the
/// background (optional), the database (retried until it answers),
/// migrations, the optional demo seed, the outbox relay and the gRPC
/// server. Readiness: database, Kafka producer and the bound gRPC listener;
/// Redis is a cache.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    ServiceRuntime::new(Service::Catalog, &config.common)
        .serve(shutdown, |wiring| async move {
            let cache = Cache::new(wiring.metrics(), &config.redis.key_prefix);
            cache.connect_in_background(config.redis.clone(), wiring.stop_token());

            let pool = wiring.connect_database(&config.database, &MIGRATOR).await?;
            if config.seed_demo_catalog {
                seed::seed(&pool).await?;
                cache.invalidate(None).await;
            }

            let producer = wiring.start_producer(&config.kafka)?;
            wiring.spawn_outbox_relay(&pool, &producer);
            wiring.start_consumer(
                Service::Catalog,
                &config.kafka,
                pool.clone(),
                producer,
                ratings::RatingEventHandler::new(cache.clone()),
            )?;

            let handler = CatalogGrpc::new(pool, cache);
            Ok(wiring.grpc_server().add_service(CatalogServiceServer::new(handler)))
        })
        .await
}
