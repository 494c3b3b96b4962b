//! `commerce_cart::serve` wired as in production: it connects to the real
//! Redis, serves the cart API on its gRPC port, and stops cleanly on
//! shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use commerce_cart::{CartSettings, Config};
use commerce_platform::admin::AdminArgs;
use commerce_platform::config::CommonArgs;
use commerce_platform::discovery::PeerArgs;
use commerce_platform::events::KafkaArgs;
use commerce_platform::grpc::GrpcArgs;
use commerce_platform::redis::RedisArgs;
use commerce_platform::resilience::ClientArgs;
use commerce_platform::telemetry::LogArgs;
use commerce_proto::cart::v1::GetCartRequest;
use commerce_proto::cart::v1::cart_service_client::CartServiceClient;
use tokio_util::sync::CancellationToken;

const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:56379";

/// A loopback port free right now (the listener is dropped at once; the
/// service binds it a moment later).
fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

#[tokio::test]
async fn the_served_cart_answers_over_grpc_and_stops_on_shutdown() -> anyhow::Result<()> {
    // Installed first, so the service's own JSON subscriber stays out of the
    // test output.
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    let redis_url = std::env::var("COMMERCE_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned());
    let grpc_addr = free_port()?;
    let config = Config {
        common: CommonArgs {
            log: LogArgs::default(),
            admin: AdminArgs { addr: free_port()? },
            grpc: GrpcArgs { addr: grpc_addr, shutdown_grace: Duration::from_secs(5) },
        },
        redis: RedisArgs::new(redis_url.clone()),
        client: ClientArgs::default(),
        peers: PeerArgs::default(),
        cart: CartSettings::default(),
        // Creating the producer does not connect; no test here adds items.
        kafka: KafkaArgs::new(
            std::env::var("COMMERCE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:59092".to_owned()),
        ),
    };
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(commerce_cart::serve(config, shutdown.clone()));

    // An empty cart needs no peer: only Redis and the server itself.
    let user_id = format!("user-{}", uuid::Uuid::new_v4());
    let answered = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(mut client) = CartServiceClient::connect(format!("http://{grpc_addr}")).await
                && let Ok(response) = client.get_cart(GetCartRequest { user_id: user_id.clone() }).await
            {
                return response.into_inner();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .with_context(|| format!("the cart service did not answer; is Redis up at {redis_url}? (`bash e2e/scripts/infra.sh up redis`)"))?;
    let cart = answered.cart.context("a cart")?;
    assert_eq!(cart.user_id, user_id);
    assert!(cart.items.is_empty());

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), service).await???;
    Ok(())
}
