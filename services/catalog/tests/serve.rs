//! `serve` end to end on loopback, with Redis unreachable on purpose: it
//! migrates, seeds the demo catalog, answers gRPC from Postgres (the cache
//! is optional and never gates readiness), relays `ProductCreated` from the
//! outbox to Kafka, and stops cleanly when shutdown is requested.
//!
//! Needs the local Postgres and Kafka (`bash e2e/scripts/infra.sh up
//! postgres kafka`); fails with that hint when they are unreachable.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use commerce_catalog::Config;
use commerce_catalog::seed::DEMO_PRODUCTS;
use commerce_platform::admin::AdminArgs;
use commerce_platform::config::CommonArgs;
use commerce_platform::db::DatabaseArgs;
use commerce_platform::events::KafkaArgs;
use commerce_platform::grpc::GrpcArgs;
use commerce_platform::redis::RedisArgs;
use commerce_platform::telemetry::{LogArgs, LogFormat};
use commerce_proto::catalog::v1 as pb;
use commerce_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use common::TestDatabase;
use tokio_util::sync::CancellationToken;

const EVENTUALLY: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], commerce_testkit::free_port())))
}

#[tokio::test]
async fn serve_seeds_answers_without_redis_relays_events_to_kafka_and_shuts_down() -> anyhow::Result<()> {
    let db = TestDatabase::create("catalog", &commerce_catalog::MIGRATOR).await?;
    // Fails clearly when Kafka is not up; creates the catalog's topics.
    let prefix = commerce_testkit::kafka_namespace().await?;
    let brokers = commerce_testkit::kafka_brokers();

    let grpc_addr = free_addr()?;
    let config = Config {
        common: CommonArgs {
            log: LogArgs { format: LogFormat::Text, filter: "warn".to_owned() },
            admin: AdminArgs { addr: free_addr()? },
            grpc: GrpcArgs { addr: grpc_addr, shutdown_grace: Duration::from_secs(5) },
        },
        database: DatabaseArgs::new(db.url.clone()),
        kafka: KafkaArgs { name_prefix: prefix, ..KafkaArgs::new(brokers) },
        // Nothing listens on port 1: Redis is "down" for the whole test.
        redis: RedisArgs::new("redis://127.0.0.1:1".to_owned()),
        seed_demo_catalog: true,
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(commerce_catalog::serve(config, shutdown.clone()));

    let first = DEMO_PRODUCTS[0];
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    let product = loop {
        let attempt = async {
            let mut client = CatalogServiceClient::connect(format!("http://{grpc_addr}")).await?;
            let response = client.get_product(pb::GetProductRequest { id: first.id.to_string() }).await?;
            anyhow::Ok(response.into_inner().product.context("product")?)
        };
        match attempt.await {
            Ok(product) => break product,
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(%error, "catalog not ready yet");
                tokio::time::sleep(POLL).await;
            }
            Err(error) => return Err(error.context("catalog did not become ready")),
        }
    };
    assert_eq!(product.sku, first.sku);
    let mut client = CatalogServiceClient::connect(format!("http://{grpc_addr}")).await?;
    let page = client.list_products(pb::ListProductsRequest { page_size: 100, ..Default::default() }).await?;
    assert_eq!(page.into_inner().total_size, 20);

    loop {
        let (total, unpublished): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE published_at IS NULL) FROM commerce_platform.outbox",
        )
        .fetch_one(&db.pool)
        .await?;
        if total == 20 && unpublished == 0 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "outbox not relayed: {unpublished} of {total} left"
        );
        tokio::time::sleep(POLL).await;
    }

    shutdown.cancel();
    tokio::time::timeout(EVENTUALLY, server).await.context("serve did not stop")???;
    db.drop_database().await
}
