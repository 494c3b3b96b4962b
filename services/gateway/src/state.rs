//! What every handler and middleware shares: the peers (gRPC channels with
//! discovery and resilience), the token verifier, the rate limiter, the
//! catalog read cache and the count of admin actions the audit trail missed.

use std::sync::Arc;

use axum::http::StatusCode;
use commerce_platform::discovery::Peers;
use commerce_platform::resilience::ResilientChannel;
use commerce_proto::analytics::v1::analytics_service_client::AnalyticsServiceClient;
use commerce_proto::audit::v1::audit_service_client::AuditServiceClient;
use commerce_proto::auth::v1::auth_service_client::AuthServiceClient;
use commerce_proto::cart::v1::cart_service_client::CartServiceClient;
use commerce_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use commerce_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use commerce_proto::notification::v1::notification_service_client::NotificationServiceClient;
use commerce_proto::order::v1::order_service_client::OrderServiceClient;
use commerce_proto::payment::v1::payment_service_client::PaymentServiceClient;
use commerce_proto::profile::v1::profile_service_client::ProfileServiceClient;
use commerce_proto::recommendation::v1::recommendation_service_client::RecommendationServiceClient;
use commerce_proto::reviews::v1::review_service_client::ReviewServiceClient;
use commerce_proto::search::v1::search_service_client::SearchServiceClient;
use commerce_proto::shipping::v1::shipping_service_client::ShippingServiceClient;
use commerce_topology::Service;
use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;

use crate::auth::AuthKeySource;
use crate::catalog_cache::CatalogCache;
use crate::jwt::Verifier;
use crate::problem::Problem;
use crate::ratelimit::RateLimiter;
use crate::views::ProductViews;

/// Shared state of the HTTP app: one `Arc`, since axum clones the state
/// into several middleware layers on every request, and with an `Arc` per
/// part those clones and drops (atomic counts shared by every worker
/// thread) were 3% of the gateway's CPU on its read path.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Parts>);

/// What [`AppState`] holds; its fields read through `Deref`.
#[derive(Debug)]
pub struct Parts {
    pub peers: Arc<Peers>,
    pub verifier: Arc<Verifier<AuthKeySource>>,
    pub rate_limiter: Arc<RateLimiter>,
    pub catalog_cache: Arc<CatalogCache>,
    /// Signed-in users' product views waiting to be sent.
    pub product_views: Arc<ProductViews>,
    /// Administrators' changes the audit service did not record.
    pub audit_record_failures: Counter,
    /// Cancelled when the gateway stops: live streams end, so that the
    /// server can drain.
    pub shutdown: CancellationToken,
}

impl AppState {
    pub fn new(parts: Parts) -> Self {
        Self(Arc::new(parts))
    }
}

/// What the authentication middleware needs ([`crate::auth::authenticate`]).
impl AsRef<Verifier<AuthKeySource>> for AppState {
    fn as_ref(&self) -> &Verifier<AuthKeySource> {
        &self.verifier
    }
}

/// What the rate-limit middleware needs ([`crate::ratelimit::enforce`]).
impl AsRef<RateLimiter> for AppState {
    fn as_ref(&self) -> &RateLimiter {
        &self.rate_limiter
    }
}

impl std::ops::Deref for AppState {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.0
    }
}

macro_rules! client {
    ($name:ident, $client:ident, $service:expr) => {
        /// A client for this peer over its shared resilient channel.
        pub fn $name(&self) -> Result<$client<ResilientChannel>, Problem> {
            self.channel($service).map($client::new)
        }
    };
}

impl AppState {
    fn channel(&self, service: Service) -> Result<ResilientChannel, Problem> {
        self.peers.channel(service).map_err(|error| {
            tracing::error!(%error, "no channel to a peer");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the {service} service is not reachable"),
            )
        })
    }

    client!(auth, AuthServiceClient, Service::Auth);
    client!(catalog, CatalogServiceClient, Service::Catalog);
    client!(inventory, InventoryServiceClient, Service::Inventory);
    client!(cart, CartServiceClient, Service::Cart);
    client!(order, OrderServiceClient, Service::Order);
    client!(shipping, ShippingServiceClient, Service::Shipping);
    client!(notification, NotificationServiceClient, Service::Notification);
    client!(audit, AuditServiceClient, Service::Audit);
    client!(payment, PaymentServiceClient, Service::Payment);
    client!(profile, ProfileServiceClient, Service::Profile);
    client!(reviews, ReviewServiceClient, Service::Reviews);
    client!(search, SearchServiceClient, Service::Search);
    client!(recommendation, RecommendationServiceClient, Service::Recommendation);
    client!(analytics, AnalyticsServiceClient, Service::Analytics);
}
