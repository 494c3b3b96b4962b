//! The cart service: one cart per user in Redis, priced from the catalog,
//! checked against inventory, turned into an order by checkout
//! (`commerce.cart.v1`).
//!
//! [`serve`] wires the platform's parts: the admin server, Redis (connected
//! with retry; its check is the service's only readiness dependency, peers
//! never count), the resilient peer channels to catalog, inventory and
//! order, and the gRPC server.
//!
//! Modules: [`domain`] (pure rules and pricing), [`store`] (Redis, atomic
//! scripts), [`grpc`] (the API and peer calls), [`config`] (flags).

pub mod config;
pub mod domain;
pub mod grpc;
pub mod store;

use commerce_api::catalog::Service;
use commerce_platform::admin::{self, AdminError, Metrics};
use commerce_platform::discovery::{DiscoveryError, Peers};
use commerce_platform::grpc::{GrpcServer, GrpcServerError};
use commerce_platform::readiness::Readiness;
use commerce_platform::redis::{self as platform_redis, RedisError};
use commerce_platform::telemetry::{self, TelemetryError};
use commerce_proto::cart::v1::cart_service_server::CartServiceServer;
use commerce_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use commerce_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use commerce_proto::order::v1::order_service_client::OrderServiceClient;
use tokio_util::sync::CancellationToken;

pub use config::{CartSettings, Config};
pub use grpc::{CartGrpc, PeerClients};
pub use store::CartStore;

/// Everything that can fail in the cart service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request breaks a rule (blank ids, zero or too large quantities).
    #[error("invalid request: {0}")]
    Validate(#[source] domain::RuleError),
    #[error("product {product_id} {reason}")]
    ProductUnavailable { product_id: String, reason: &'static str },
    #[error("product {product_id}: {requested} requested, only {available} available")]
    InsufficientStock { product_id: String, requested: u32, available: i64 },
    #[error("product {product_id} is not in the cart")]
    ItemNotFound { product_id: String },
    #[error("the cart is empty")]
    EmptyCart,
    #[error("cannot read the cart")]
    ReadCart(#[source] redis::RedisError),
    #[error("cannot write the cart")]
    WriteCart(#[source] redis::RedisError),
    #[error("call to {peer} failed: {status}")]
    CallPeer { peer: Service, status: tonic::Status },
    #[error("the order service accepted the checkout but returned no order")]
    MissingOrder,
    #[error("cannot decode a stored checkout result")]
    DecodeCheckout(#[source] prost::DecodeError),
    #[error("cannot set up logging")]
    InitTelemetry(#[source] TelemetryError),
    #[error("cannot connect to Redis")]
    ConnectRedis(#[source] RedisError),
    #[error("cannot open the channel to a peer")]
    FindPeer(#[source] DiscoveryError),
    #[error("the gRPC server failed")]
    ServeGrpc(#[source] GrpcServerError),
    #[error("the admin server failed")]
    ServeAdmin(#[source] AdminError),
    #[error("a service task panicked")]
    JoinTask(#[source] tokio::task::JoinError),
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

/// Clients of catalog, inventory and order over `peers`' resilient,
/// balanced channels.
pub fn peer_clients(peers: &Peers) -> Result<PeerClients, Error> {
    Ok(PeerClients {
        catalog: CatalogServiceClient::new(peers.channel(Service::Catalog).map_err(Error::FindPeer)?),
        inventory: InventoryServiceClient::new(peers.channel(Service::Inventory).map_err(Error::FindPeer)?),
        order: OrderServiceClient::new(peers.channel(Service::Order).map_err(Error::FindPeer)?),
    })
}

/// Runs the cart service until `shutdown`: the admin server at once, the
/// gRPC server once Redis answers. The first fatal failure stops the rest
/// and is returned.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let service = Service::Cart;
    telemetry::init(&config.common.log, service.name()).map_err(Error::InitTelemetry)?;
    let stop = shutdown.child_token();
    let readiness = Readiness::new();
    let metrics = Metrics::new(service.name());
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn({
        let (args, readiness, metrics, stop) =
            (config.common.admin.clone(), readiness.clone(), metrics.clone(), stop.clone());
        async move { admin::serve(&args, readiness, metrics, stop).await.map_err(Error::ServeAdmin) }
    });

    let result = async {
        let redis =
            platform_redis::connect(&config.redis, &readiness, &stop).await.map_err(Error::ConnectRedis)?;
        // Peers not configured explicitly are on their local ports.
        let peers = Peers::new(&config.peers.clone().or_local_defaults(), &config.client, stop.clone())
            .with_metrics(&metrics);
        let clients = peer_clients(&peers)?;
        let cart = CartGrpc::new(CartStore::new(redis, config.cart.ttl), clients, config.cart.limits());
        let grpc = GrpcServer::new(&config.common.grpc, readiness.clone(), &metrics)
            .file_descriptor_set(commerce_proto::FILE_DESCRIPTOR_SET)
            .add_service(CartServiceServer::new(cart));
        tasks.spawn({
            let stop = stop.clone();
            async move { grpc.serve(stop).await.map_err(Error::ServeGrpc) }
        });
        Ok::<(), Error>(())
    }
    .await;

    let mut first_error = result.err();
    if first_error.is_some() {
        stop.cancel();
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined.map_err(Error::JoinTask).and_then(|result| result) {
            tracing::error!(error = %error_chain(&error), "cart service part failed; stopping");
            stop.cancel();
            first_error.get_or_insert(error);
        }
    }
    match first_error {
        Some(Error::ConnectRedis(RedisError::Connect { .. })) if shutdown.is_cancelled() => Ok(()),
        Some(error) => Err(error),
        None => Ok(()),
    }
}
