//! `serve` end to end on loopback: it migrates its database, creates the
//! bootstrap admin, answers gRPC once ready, relays `UserRegistered` from
//! the outbox to Kafka, and stops cleanly when shutdown is requested.
//!
//! Needs the local Postgres and Kafka (`bash e2e/scripts/infra.sh up
//! postgres kafka`); fails with that hint when they are unreachable.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use commerce_auth::{AuthArgs, Config};
use commerce_platform::admin::AdminArgs;
use commerce_platform::config::CommonArgs;
use commerce_platform::db::DatabaseArgs;
use commerce_platform::events::KafkaArgs;
use commerce_platform::grpc::GrpcArgs;
use commerce_platform::telemetry::{LogArgs, LogFormat};
use commerce_proto::auth::v1 as pb;
use commerce_proto::auth::v1::auth_service_client::AuthServiceClient;
use common::TestDatabase;
use tokio_util::sync::CancellationToken;

const EVENTUALLY: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], commerce_testkit::free_port())))
}

#[tokio::test]
async fn serve_bootstraps_answers_grpc_relays_events_to_kafka_and_shuts_down() -> anyhow::Result<()> {
    let db = TestDatabase::create("auth", &commerce_auth::MIGRATOR).await?;
    // Fails clearly when Kafka is not up; creates the catalog's topics.
    let prefix = commerce_testkit::kafka_namespace().await?;
    let brokers = commerce_testkit::kafka_brokers();

    let grpc_addr = free_addr()?;
    let mut auth = AuthArgs::new();
    auth.bootstrap_admin_email = Some("admin@shop.local".to_owned());
    auth.bootstrap_admin_password = Some("admin-password".to_owned());
    let config = Config {
        common: CommonArgs {
            log: LogArgs { format: LogFormat::Text, filter: "warn".to_owned() },
            admin: AdminArgs { addr: free_addr()? },
            grpc: GrpcArgs { addr: grpc_addr, shutdown_grace: Duration::from_secs(5) },
        },
        database: DatabaseArgs::new(db.url.clone()),
        kafka: KafkaArgs { name_prefix: prefix, ..KafkaArgs::new(brokers) },
        auth,
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(commerce_auth::serve(config, shutdown.clone()));

    // Ready when the bootstrap admin can log in over gRPC.
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    let mut client = loop {
        let attempt = async {
            let mut client = AuthServiceClient::connect(format!("http://{grpc_addr}")).await?;
            client
                .login(pb::LoginRequest {
                    email: "admin@shop.local".into(),
                    password: "admin-password".into(),
                })
                .await?;
            anyhow::Ok(client)
        };
        match attempt.await {
            Ok(client) => break client,
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(%error, "auth not ready yet");
                tokio::time::sleep(POLL).await;
            }
            Err(error) => return Err(error.context("auth did not become ready")),
        }
    };
    client
        .register(pb::RegisterRequest {
            email: "shopper@example.com".into(),
            password: "a good password".into(),
            display_name: "Shopper".into(),
        })
        .await?;

    // Both UserRegistered rows (admin, shopper) reach Kafka: the relay
    // marks them published only after the broker acknowledged them.
    loop {
        let (total, unpublished): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE published_at IS NULL) FROM commerce_platform.outbox",
        )
        .fetch_one(&db.pool)
        .await?;
        if total == 2 && unpublished == 0 {
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
