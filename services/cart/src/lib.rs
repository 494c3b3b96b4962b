//! The cart service: one cart per user in Redis, priced from the catalog,
//! checked against inventory, turned into an order by checkout
//! (`commerce.cart.v1`).
//!
//! [`serve`] runs on the platform's [`ServiceRuntime`] (admin server,
//! readiness, ordered shutdown) and wires Redis (connected with retry; with
//! the bound gRPC listener, its check is the service's only readiness
//! dependency, peers never count), the resilient peer channels to catalog,
//! inventory and order, and the gRPC server.
//!
//! Modules: [`domain`] (pure rules and pricing), [`store`] (Redis, atomic
//! scripts), [`grpc`] (the API and peer calls), [`config`] (flags).

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod store;

use commerce_platform::discovery::{DiscoveryError, Peers};
use commerce_platform::runtime::{RuntimeError, ServiceRuntime};
use commerce_proto::cart::v1::cart_service_server::CartServiceServer;
use commerce_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use commerce_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use commerce_proto::order::v1::order_service_client::OrderServiceClient;
use commerce_topology::Service;
use tokio_util::sync::CancellationToken;

pub(crate) use commerce_platform::error_chain;
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
    #[error("cannot open the channel to a peer")]
    FindPeer(#[source] DiscoveryError),
    /// A step of the service's lifecycle (Redis, servers) failed.
    #[error(transparent)]
    Run(#[from] RuntimeError),
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
/// and is returned (see [`ServiceRuntime`]).
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    ServiceRuntime::new(Service::Cart, &config.common)
        .serve(shutdown, |wiring| async move {
            let redis = wiring.connect_redis(&config.redis).await?;
            // Peers not configured explicitly are on their local ports.
            let peers =
                Peers::new(&config.peers.clone().or_local_defaults(), &config.client, wiring.stop_token())
                    .with_metrics(wiring.metrics());
            let clients = peer_clients(&peers)?;
            // No readiness check of its own (see `events`): the cart does
            // not wait for Kafka.
            let producer = commerce_platform::events::EventProducer::new(&config.kafka)
                .map_err(|error| RuntimeError::CreateProducer(Box::new(error)))?;
            let cart = CartGrpc::new(
                CartStore::new(redis, &config.redis.key_prefix, config.cart.ttl),
                clients,
                config.cart.limits(),
            )
            .with_events(events::CartEvents::new(producer));
            Ok(wiring.grpc_server().add_service(CartServiceServer::new(cart)))
        })
        .await
}
