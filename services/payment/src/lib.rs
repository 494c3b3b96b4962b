//! The payment service: one charge per order (idempotency key = order id),
//! refunds, and a pluggable provider (a deterministic mock by default).
//!
//! In the saga (ARCHITECTURE section 4, step 3) it joins OrderPlaced and
//! StockReserved into one payment row, and a worker charges due payments
//! under the row lock through the breaker-guarded provider, writing
//! PaymentCaptured/PaymentFailed with the outcome. Dead orders cancel pending
//! payments or refund captured ones.
//!
//! [`serve`] hands the lifecycle to the platform's [`ServiceRuntime`] and
//! wires the service's parts: the mock provider's controls on the admin
//! port, database, outbox relay, consumer with its dead-letter topic, the
//! worker and the gRPC server; all stop on `shutdown`.

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod journal;
pub mod provider;
pub mod store;
pub mod stripe;
pub mod worker;

use std::sync::Arc;

use commerce_platform::events::OutboxError;
use commerce_platform::runtime::{RuntimeError, ServiceRuntime};
use commerce_proto::payment::v1::payment_service_server::PaymentServiceServer;
use commerce_topology::Service;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use commerce_platform::error_chain;
pub use config::Config;
use provider::{MockProvider, PaymentProvider, ProviderBreaker, ProviderError};

/// The service's own migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Everything that can fail in the payment service, named after the action.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A step of the service's lifecycle (database, Kafka, servers) failed.
    #[error(transparent)]
    Run(#[from] RuntimeError),
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
    #[error("cannot configure the Stripe provider: {0}")]
    ConfigureStripe(String),
    #[error("cannot open the mock provider's ledger {}", path.display())]
    OpenMockLedger { path: std::path::PathBuf, source: std::io::Error },
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

/// Runs the payment service with the provider `config.provider` names
/// until `shutdown`: the mock configured by `config.mock`, whose controls
/// are served on the admin port (see [`provider`]), or Stripe configured by
/// `config.stripe` (see [`stripe`]).
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    if config.provider == config::ProviderKind::Stripe {
        let stripe = config.stripe.load().map_err(Error::ConfigureStripe)?;
        let provider = stripe::StripeProvider::new(stripe.settings)
            .map_err(|error| Error::ConfigureStripe(format!("HTTP client: {error}")))?;
        return serve_with_provider(config, Arc::new(provider), None, stripe.webhook_secret, shutdown).await;
    }
    let mock = match &config.mock.ledger_file {
        Some(path) => MockProvider::with_journal(config.mock.settings(), path)
            .map_err(|source| Error::OpenMockLedger { path: path.clone(), source })?,
        None => MockProvider::new(config.mock.settings()),
    };
    let mock = Arc::new(mock);
    let controls = provider::mock_routes(mock.clone());
    serve_with_provider(config, mock, Some(controls), None, shutdown).await
}

/// [`serve`] with a given provider (tests keep a handle on the mock), extra
/// admin routes, and the signing secret of Stripe's webhooks if they are on.
pub async fn serve_with_provider(
    config: Config,
    provider: Arc<dyn PaymentProvider>,
    admin_routes: Option<axum::Router>,
    stripe_webhook_secret: Option<config::WebhookSecret>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let mut runtime = ServiceRuntime::new(Service::Payment, &config.common);
    if let Some(routes) = admin_routes {
        runtime = runtime.admin_routes(routes);
    }
    runtime
        .serve(shutdown, |wiring| async move {
            let pool = wiring.connect_database(&config.database, &MIGRATOR).await?;
            let producer = wiring.start_producer(&config.kafka)?;
            wiring.spawn_outbox_relay(&pool, &producer);
            wiring.start_consumer(
                Service::Payment,
                &config.kafka,
                pool.clone(),
                producer,
                events::PaymentEventHandler,
            )?;

            let breaker = ProviderBreaker::new(config.client.breaker_failures, config.client.breaker_open);
            let worker = worker::Worker::new(pool.clone(), provider, breaker, config.worker.settings())
                .with_metrics(wiring.metrics());
            wiring.spawn_task("payment worker", worker.clone().run(wiring.stop_token()));

            Ok(wiring.grpc_server().add_service(PaymentServiceServer::new(
                grpc::PaymentGrpc::new(pool, worker).with_stripe_webhooks(stripe_webhook_secret),
            )))
        })
        .await
}
