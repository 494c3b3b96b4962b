//! The `OrderService` gRPC server: proto <-> domain, catalog pricing, and the
//! one `From<Error> for Status` mapping.

use commerce_proto::time::timestamp;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use commerce_platform::discovery::Peers;
use commerce_platform::resilience::idempotent;
use commerce_proto::catalog::v1::BatchGetProductsRequest;
use commerce_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use commerce_proto::order::v1 as pb;
use commerce_proto::order::v1::order_service_server::OrderService;
use commerce_topology::Service;
use sqlx::postgres::PgPool;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::Error;
use crate::domain::{self, CatalogProduct, OrderStatus, PlacementError, RequestedLine, SagaState};
use crate::events::{self, money, record_step};
use crate::live::{StatusChange, StatusFeed};
use crate::metrics::SagaMetrics;
use crate::store::{self, Order};

/// Page size when the request gives none.
const DEFAULT_PAGE_SIZE: i64 = 20;
/// Largest page served, so one call cannot read the whole table.
const MAX_PAGE_SIZE: i64 = 100;

/// Where the catalog is reached: the platform's peers (deadline, retries,
/// breaker included).
pub trait CatalogPeer: Send + Sync + 'static {
    /// A client for one call.
    fn client(&self) -> Result<CatalogServiceClient<commerce_platform::resilience::ResilientChannel>, Error>;
}

impl CatalogPeer for Peers {
    fn client(&self) -> Result<CatalogServiceClient<commerce_platform::resilience::ResilientChannel>, Error> {
        Ok(CatalogServiceClient::new(
            self.channel(Service::Catalog).map_err(|error| Error::ReachCatalog(Box::new(error)))?,
        ))
    }
}

/// The gRPC face of the order service.
#[derive(Clone)]
pub struct OrderGrpc {
    pool: PgPool,
    catalog: Arc<dyn CatalogPeer>,
    metrics: SagaMetrics,
    feed: StatusFeed,
    /// Ends the watch streams, so that the server can drain.
    shutdown: CancellationToken,
}

impl std::fmt::Debug for OrderGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderGrpc").finish_non_exhaustive()
    }
}

impl OrderGrpc {
    pub fn new(pool: PgPool, catalog: Arc<dyn CatalogPeer>) -> Self {
        Self {
            pool,
            catalog,
            metrics: SagaMetrics::default(),
            feed: StatusFeed::new(),
            shutdown: CancellationToken::new(),
        }
    }

    /// Serves `WatchOrders` from `feed` (which its listener fills), ending
    /// every watch when `shutdown` is cancelled.
    pub fn with_feed(mut self, feed: StatusFeed, shutdown: CancellationToken) -> Self {
        self.feed = feed;
        self.shutdown = shutdown;
        self
    }

    /// Counts the cancellations it stores in `metrics`.
    pub fn with_metrics(mut self, metrics: SagaMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    async fn place(&self, request: pb::PlaceOrderRequest) -> Result<Order, Error> {
        let field = |field: &str, problem: &'static str| {
            Error::InvalidPlacement(PlacementError::Field { field: field.to_owned(), problem })
        };
        if request.user_id.trim().is_empty() {
            return Err(field("user_id", "is empty"));
        }
        if request.idempotency_key.trim().is_empty() {
            return Err(field("idempotency_key", "is empty"));
        }
        if request.payment_method_token.trim().is_empty() {
            return Err(field("payment_method_token", "is empty"));
        }
        let Some(address) = request.shipping_address.clone() else {
            return Err(field("shipping_address", "is missing"));
        };
        if address.line1.trim().is_empty()
            || address.city.trim().is_empty()
            || address.country_code.trim().is_empty()
        {
            return Err(field("shipping_address", "needs line1, city and country_code"));
        }
        let requested: Vec<RequestedLine> = request
            .lines
            .iter()
            .map(|line| RequestedLine { product_id: line.product_id.clone(), quantity: line.quantity })
            .collect();
        let lines = domain::normalize_lines(&requested).map_err(Error::InvalidPlacement)?;
        let fingerprint = domain::fingerprint(&lines);

        if let Some(existing) =
            store::find_by_idempotency_key(&self.pool, &request.user_id, &request.idempotency_key).await?
        {
            return same_placement(existing, &fingerprint);
        }

        let ids: Vec<String> = lines.iter().map(|line| line.product_id.clone()).collect();
        let mut catalog = self.catalog.client()?;
        let response = catalog
            .batch_get_products(idempotent(BatchGetProductsRequest { ids }))
            .await
            .map_err(|error| Error::QueryCatalog(Box::new(error)))?
            .into_inner();
        let products: Vec<CatalogProduct> = response
            .products
            .into_iter()
            .map(|product| {
                let price = product.price.unwrap_or_default();
                CatalogProduct {
                    id: product.id,
                    sku: product.sku,
                    name: product.name,
                    currency: price.currency_code,
                    unit_price: price.units,
                    active: product.active,
                }
            })
            .collect();
        let priced = domain::price(&lines, &products).map_err(Error::InvalidPlacement)?;

        let now = Utc::now();
        let order = Order {
            id: Uuid::now_v7(),
            user_id: request.user_id.clone(),
            idempotency_key: request.idempotency_key.clone(),
            request_fingerprint: fingerprint.clone(),
            currency: priced.currency,
            total: priced.total,
            shipping_address: address,
            saga: SagaState::placed(),
            lines: priced.lines,
            created_at: now,
            updated_at: now,
        };
        let mut tx =
            commerce_platform::db::begin(&self.pool, "place order").await.map_err(Error::InsertOrder)?;
        if !store::insert_order(&mut tx, &order).await? {
            // A concurrent twin of this request won the race.
            drop(tx);
            let existing =
                store::find_by_idempotency_key(&self.pool, &request.user_id, &request.idempotency_key)
                    .await?
                    .ok_or(Error::OrderNotFound { id: order.id })?;
            return same_placement(existing, &fingerprint);
        }
        commerce_platform::events::enqueue(
            &mut tx,
            &events::order_placed(&order, &request.payment_method_token),
        )
        .await
        .map_err(|error| Error::EnqueueEvent(Box::new(error)))?;
        tx.commit().await.map_err(Error::InsertOrder)?;
        tracing::info!(order_id = %order.id, user_id = %order.user_id, total = order.total, "order placed");
        Ok(order)
    }

    async fn cancel(&self, request: pb::CancelOrderRequest) -> Result<Order, Error> {
        let id = parse_id(&request.id)?;
        let mut tx =
            commerce_platform::db::begin(&self.pool, "cancel order").await.map_err(Error::UpdateOrder)?;
        let order = store::lock(&mut tx, id).await?.ok_or(Error::OrderNotFound { id })?;
        if !request.user_id.is_empty() && request.user_id != order.user_id {
            return Err(Error::OrderNotFound { id });
        }
        let step = domain::cancel(&order.saga, &request.reason).map_err(Error::RefuseCancel)?;
        let cancelled_by = if request.user_id.is_empty() { "admin" } else { request.user_id.as_str() };
        let before = order.saga.status;
        let order = record_step(&mut tx, &order, step, cancelled_by).await?;
        tx.commit().await.map_err(Error::UpdateOrder)?;
        self.metrics.observe(before, &order);
        Ok(order)
    }
}

fn same_placement(existing: Order, fingerprint: &str) -> Result<Order, Error> {
    if existing.request_fingerprint == fingerprint {
        Ok(existing)
    } else {
        Err(Error::ReuseIdempotencyKey { key: existing.idempotency_key })
    }
}

fn parse_id(raw: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(raw).map_err(|_| {
        Error::InvalidPlacement(PlacementError::Field { field: "id".to_owned(), problem: "is not a UUID" })
    })
}

/// Proto status of a domain status.
pub fn status_to_proto(status: OrderStatus) -> pb::OrderStatus {
    match status {
        OrderStatus::Pending => pb::OrderStatus::Pending,
        OrderStatus::Reserved => pb::OrderStatus::Reserved,
        OrderStatus::Confirmed => pb::OrderStatus::Confirmed,
        OrderStatus::Rejected => pb::OrderStatus::Rejected,
        OrderStatus::Failed => pb::OrderStatus::Failed,
        OrderStatus::Cancelled => pb::OrderStatus::Cancelled,
        OrderStatus::Shipped => pb::OrderStatus::Shipped,
        OrderStatus::Delivered => pb::OrderStatus::Delivered,
    }
}

fn status_from_proto(status: pb::OrderStatus) -> Option<OrderStatus> {
    match status {
        pb::OrderStatus::Unspecified => None,
        pb::OrderStatus::Pending => Some(OrderStatus::Pending),
        pb::OrderStatus::Reserved => Some(OrderStatus::Reserved),
        pb::OrderStatus::Confirmed => Some(OrderStatus::Confirmed),
        pb::OrderStatus::Rejected => Some(OrderStatus::Rejected),
        pb::OrderStatus::Failed => Some(OrderStatus::Failed),
        pb::OrderStatus::Cancelled => Some(OrderStatus::Cancelled),
        pb::OrderStatus::Shipped => Some(OrderStatus::Shipped),
        pb::OrderStatus::Delivered => Some(OrderStatus::Delivered),
    }
}

/// The proto view of one entry of an order's status history.
pub fn change_to_proto(change: &StatusChange) -> pb::OrderStatusChange {
    pb::OrderStatusChange {
        order_id: change.order_id.to_string(),
        user_id: change.user_id.clone(),
        version: u64::try_from(change.version).unwrap_or_default(),
        status: change.parsed_status().map_or(pb::OrderStatus::Unspecified, status_to_proto).into(),
        failure_reason: change.failure_reason.clone(),
        changed_at: Some(timestamp(change.changed_at)),
    }
}

/// The proto view of an order.
pub fn order_to_proto(order: &Order) -> pb::Order {
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    pb::Order {
        id: order.id.to_string(),
        user_id: order.user_id.clone(),
        status: status_to_proto(order.saga.status).into(),
        lines: order
            .lines
            .iter()
            .map(|line| pb::OrderLine {
                product_id: line.product_id.clone(),
                sku: line.sku.clone(),
                name: line.name.clone(),
                quantity: line.quantity,
                unit_price: Some(money(&order.currency, line.unit_price)),
                line_total: Some(money(&order.currency, line.line_total)),
            })
            .collect(),
        total: Some(money(&order.currency, order.total)),
        shipping_address: Some(order.shipping_address.clone()),
        failure_reason: order.saga.failure_reason.clone(),
        reservation_id: text(&order.saga.reservation_id),
        payment_id: text(&order.saga.payment_id),
        shipment_id: text(&order.saga.shipment_id),
        idempotency_key: order.idempotency_key.clone(),
        created_at: Some(timestamp(order.created_at)),
        updated_at: Some(timestamp(order.updated_at)),
        refunded: order.saga.refunded,
    }
}

/// Page tokens are the keyset cursor `<micros>_<uuid>` of the last order.
fn encode_page_token(cursor: (DateTime<Utc>, Uuid)) -> String {
    format!("{}_{}", cursor.0.timestamp_micros(), cursor.1.simple())
}

fn decode_page_token(token: &str) -> Result<Option<(DateTime<Utc>, Uuid)>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        Error::InvalidPlacement(PlacementError::Field {
            field: "page_token".to_owned(),
            problem: "is not a token this server issued",
        })
    };
    let (micros, id) = token.split_once('_').ok_or_else(invalid)?;
    let micros: i64 = micros.parse().map_err(|_| invalid())?;
    let time = DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?;
    let id = Uuid::parse_str(id).map_err(|_| invalid())?;
    Ok(Some((time, id)))
}

#[tonic::async_trait]
impl OrderService for OrderGrpc {
    async fn place_order(
        &self,
        request: Request<pb::PlaceOrderRequest>,
    ) -> Result<Response<pb::PlaceOrderResponse>, Status> {
        let order = self.place(request.into_inner()).await?;
        commerce_platform::telemetry::record_order_id(&order.id);
        Ok(Response::new(pb::PlaceOrderResponse { order: Some(order_to_proto(&order)) }))
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        let id = parse_id(&request.into_inner().id)?;
        commerce_platform::telemetry::record_order_id(&id);
        let order = store::get(&self.pool, id).await?.ok_or(Error::OrderNotFound { id })?;
        Ok(Response::new(pb::GetOrderResponse { order: Some(order_to_proto(&order)) }))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let request = request.into_inner();
        let page_size = match i64::from(request.page_size) {
            size if size <= 0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        };
        let after = decode_page_token(&request.page_token)?;
        let user = (!request.user_id.is_empty()).then_some(request.user_id.as_str());
        let page =
            store::list(&self.pool, user, status_from_proto(request.status()), page_size, after).await?;
        Ok(Response::new(pb::ListOrdersResponse {
            orders: page.orders.iter().map(order_to_proto).collect(),
            next_page_token: page.next.map(encode_page_token).unwrap_or_default(),
            total_size: page.total,
        }))
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        let order = self.cancel(request.into_inner()).await?;
        commerce_platform::telemetry::record_order_id(&order.id);
        Ok(Response::new(pb::CancelOrderResponse { order: Some(order_to_proto(&order)) }))
    }

    type WatchOrdersStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::OrderStatusChange, Status>> + Send>>;

    async fn watch_orders(
        &self,
        request: Request<pb::WatchOrdersRequest>,
    ) -> Result<Response<Self::WatchOrdersStream>, Status> {
        let request = request.into_inner();
        let user = (!request.user_id.is_empty()).then_some(request.user_id);
        let receiver = match (request.order_id.as_str(), user) {
            ("", None) => {
                return Err(Status::invalid_argument(
                    "order_id or user_id is required: there is no watch of every order",
                ));
            }
            ("", Some(user)) => self.feed.watch_user(self.pool.clone(), user, self.shutdown.clone()).await?,
            (order_id, user) => {
                let id = parse_id(order_id)?;
                commerce_platform::telemetry::record_order_id(&id);
                let after = i32::try_from(request.after_version).map_err(|_| {
                    Status::invalid_argument(format!(
                        "after_version {} is beyond any order's history",
                        request.after_version
                    ))
                })?;
                self.feed.watch_order(self.pool.clone(), id, user, after, self.shutdown.clone()).await?
            }
        };
        let changes =
            ReceiverStream::new(receiver).map(|watched| watched.map(|change| change_to_proto(&change)));
        Ok(Response::new(Box::pin(changes)))
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = crate::error_chain(&error);
        match &error {
            // Well-formed, but the products it names cannot be ordered now
            // (or not in these quantities at their prices, whose total would
            // overflow): a precondition on the catalog's state, not a
            // malformed request (the gateway answers 422).
            Error::InvalidPlacement(
                PlacementError::UnknownProduct { .. }
                | PlacementError::InactiveProduct { .. }
                | PlacementError::MixedCurrencies { .. }
                | PlacementError::TotalOverflow,
            ) => Status::failed_precondition(message),
            Error::InvalidPlacement(_) => Status::invalid_argument(message),
            Error::ReuseIdempotencyKey { .. } => Status::already_exists(message),
            Error::OrderNotFound { .. } => Status::not_found(message),
            Error::RefuseCancel(_) => Status::failed_precondition(message),
            Error::QueryCatalog(status) if status.code() == tonic::Code::InvalidArgument => {
                Status::invalid_argument(message)
            }
            Error::QueryCatalog(_) | Error::ReachCatalog(_) => Status::unavailable(message),
            _ if error.is_transient() => Status::unavailable(message),
            _ => {
                tracing::error!(error = %message, "order request failed");
                Status::internal("internal error")
            }
        }
    }
}
