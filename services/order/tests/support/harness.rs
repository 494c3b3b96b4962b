//! Starts the order service (and, for saga slices, the payment service) in
//! process against real Postgres and Kafka, each with a database of its own.

use std::sync::Arc;

use clap::Parser;
use commerce_proto::common::v1::Address;
use commerce_proto::order::v1 as pb;
use commerce_proto::order::v1::order_service_client::OrderServiceClient;
use prost_types::Timestamp;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::{TestDatabase, connect, free_port, http, service_flags};

#[derive(Parser)]
struct OrderCli {
    #[command(flatten)]
    config: commerce_order::Config,
}

#[derive(Parser)]
struct PaymentCli {
    #[command(flatten)]
    config: commerce_payment::Config,
}

/// A second order service process-alike on another one's database.
pub struct Replica {
    pub client: OrderServiceClient<Channel>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), commerce_order::Error>>,
}

impl Replica {
    /// Stops it and checks it stopped cleanly.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        Ok(self.task.await??)
    }
}

/// A running order service.
pub struct OrderService {
    pub database: TestDatabase,
    pub client: OrderServiceClient<Channel>,
    /// The admin port: /metrics and /readyz.
    pub admin_port: u16,
    pub shutdown: CancellationToken,
    task: JoinHandle<Result<(), commerce_order::Error>>,
}

impl OrderService {
    pub async fn start(prefix: &str, catalog_port: u16) -> anyhow::Result<Self> {
        let database = TestDatabase::create("order").await?;
        let grpc_port = free_port();
        let admin_port = free_port();
        let mut flags = service_flags(&database.url, prefix, grpc_port, admin_port);
        flags.push(format!("--peer=catalog=http://127.0.0.1:{catalog_port}"));
        flags.push("--order-reservation-sweep-interval=200ms".to_owned());
        let config = OrderCli::try_parse_from(flags)?.config;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(commerce_order::serve(config, shutdown.clone()));
        let client = OrderServiceClient::new(connect(grpc_port).await?);
        Ok(Self { database, client, admin_port, shutdown, task })
    }

    /// A second replica on this one's database and topics (it joins the same
    /// consumer group). Stop it with [`Replica::stop`].
    pub async fn replica(&self, prefix: &str, catalog_port: u16) -> anyhow::Result<Replica> {
        let grpc_port = free_port();
        let mut flags = service_flags(&self.database.url, prefix, grpc_port, free_port());
        flags.push(format!("--peer=catalog=http://127.0.0.1:{catalog_port}"));
        let config = OrderCli::try_parse_from(flags)?.config;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(commerce_order::serve(config, shutdown.clone()));
        let client = OrderServiceClient::new(connect(grpc_port).await?);
        Ok(Replica { client, shutdown, task })
    }

    /// The value of the series `series` (name and labels, as on `/metrics`),
    /// 0 when absent.
    pub async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        let (status, text) = http(self.admin_port, "GET", "/metrics").await?;
        anyhow::ensure!(status == 200, "GET /metrics answered {status}");
        Ok(text
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0))
    }

    /// Stops the service, checks it stopped cleanly, drops its database.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        self.database.drop_database().await
    }

    pub async fn get(&self, id: &str) -> anyhow::Result<pb::Order> {
        let response = self.client.clone().get_order(pb::GetOrderRequest { id: id.to_owned() }).await?;
        response.into_inner().order.ok_or_else(|| anyhow::anyhow!("no order in the response"))
    }

    /// Waits until the order is in `status`.
    pub async fn wait_for_status(&self, id: &str, status: pb::OrderStatus) -> anyhow::Result<pb::Order> {
        super::eventually(&format!("order {id} to be {status:?}"), || async move {
            let order = self.get(id).await?;
            Ok((order.status() == status).then_some(order))
        })
        .await
    }
}

/// A running payment service with the mock provider the test controls.
pub struct PaymentService {
    pub database: TestDatabase,
    /// The admin port: /metrics, /readyz and the mock's controls.
    pub admin_port: u16,
    pub mock: Arc<commerce_payment::provider::MockProvider>,
    pub client: commerce_proto::payment::v1::payment_service_client::PaymentServiceClient<Channel>,
    pub shutdown: CancellationToken,
    task: JoinHandle<Result<(), commerce_payment::Error>>,
}

impl PaymentService {
    pub async fn start(prefix: &str, extra_flags: &[&str]) -> anyhow::Result<Self> {
        let database = TestDatabase::create("payment").await?;
        let grpc_port = free_port();
        let admin_port = free_port();
        let mut flags = service_flags(&database.url, prefix, grpc_port, admin_port);
        flags.extend(
            [
                "--payment-worker-poll-interval=50ms",
                "--payment-retry-base=100ms",
                "--payment-retry-cap=500ms",
            ]
            .map(str::to_owned),
        );
        flags.extend(extra_flags.iter().map(|flag| (*flag).to_owned()));
        let config = PaymentCli::try_parse_from(flags)?.config;
        let mock = Arc::new(commerce_payment::provider::MockProvider::new(config.mock.settings()));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(commerce_payment::serve_with_provider(
            config,
            mock.clone(),
            Some(commerce_payment::provider::mock_routes(mock.clone())),
            None,
            shutdown.clone(),
        ));
        let client = commerce_proto::payment::v1::payment_service_client::PaymentServiceClient::new(
            connect(grpc_port).await?,
        );
        Ok(Self { database, admin_port, mock, client, shutdown, task })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        self.database.drop_database().await
    }

    /// The payment of an order, if the service has one.
    pub async fn payment_of(
        &self,
        order_id: &str,
    ) -> anyhow::Result<Option<commerce_proto::payment::v1::Payment>> {
        use commerce_proto::payment::v1::{GetPaymentRequest, get_payment_request::Lookup};
        match self
            .client
            .clone()
            .get_payment(GetPaymentRequest { lookup: Some(Lookup::OrderId(order_id.to_owned())) })
            .await
        {
            Ok(response) => Ok(response.into_inner().payment),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(status.into()),
        }
    }
}

pub fn address() -> Address {
    Address {
        recipient_name: "Ada Lovelace".to_owned(),
        line1: "1 Analytical Way".to_owned(),
        city: "London".to_owned(),
        postal_code: "N1".to_owned(),
        country_code: "GB".to_owned(),
        ..Default::default()
    }
}

pub fn place_request(user: &str, key: &str, lines: &[(&str, u32)], token: &str) -> pb::PlaceOrderRequest {
    pb::PlaceOrderRequest {
        user_id: user.to_owned(),
        idempotency_key: key.to_owned(),
        lines: lines
            .iter()
            .map(|(product_id, quantity)| pb::PlaceOrderLine {
                product_id: (*product_id).to_owned(),
                quantity: *quantity,
            })
            .collect(),
        shipping_address: Some(address()),
        payment_method_token: token.to_owned(),
    }
}

pub fn timestamp_in(seconds: i64) -> Timestamp {
    let time = chrono::Utc::now() + chrono::Duration::seconds(seconds);
    Timestamp { seconds: time.timestamp(), nanos: 0 }
}
