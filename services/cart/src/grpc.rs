//! The `commerce.cart.v1.CartService` gRPC server: edits carts in Redis,
//! prices them from the catalog, checks availability with inventory and
//! turns a cart into an order through the order service.
//!
//! Peers are reached through the platform's resilient channels (deadline,
//! retries for idempotent calls, circuit breaker). Reads (GetProduct,
//! BatchGetProducts, CheckAvailability) are marked idempotent; so is
//! PlaceOrder, because it carries the caller's idempotency key and the order
//! service returns the same order for a repeat.

use std::collections::HashMap;

use chrono::Utc;
use commerce_platform::resilience::{ResilientChannel, idempotent};
use commerce_proto::cart::v1 as pb;
use commerce_proto::cart::v1::cart_service_server::CartService;
use commerce_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use commerce_proto::catalog::v1::{BatchGetProductsRequest, GetProductRequest, Product};
use commerce_proto::common::v1::Money as PbMoney;
use commerce_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use commerce_proto::inventory::v1::{CheckAvailabilityRequest, StockLine};
use commerce_proto::order::v1::order_service_client::OrderServiceClient;
use commerce_proto::order::v1::{Order, PlaceOrderLine, PlaceOrderRequest};
use prost::Message;
use prost_types::Timestamp;
use tonic::{Code, Request, Response, Status};

use crate::Error;
use crate::domain::{self, CartLine, Limits, Money, PricedCart, ProductInfo};
use crate::events::CartEvents;
use crate::store::{AddOutcome, CartStore, StoredCart};
use commerce_topology::Service;

/// gRPC clients of the cart's peers.
#[derive(Debug, Clone)]
pub struct PeerClients {
    pub catalog: CatalogServiceClient<ResilientChannel>,
    pub inventory: InventoryServiceClient<ResilientChannel>,
    pub order: OrderServiceClient<ResilientChannel>,
}

/// Serves the cart API.
#[derive(Debug, Clone)]
pub struct CartGrpc {
    store: CartStore,
    peers: PeerClients,
    limits: Limits,
    /// Where `CartItemAdded` goes; none in tests that do not need it.
    events: Option<CartEvents>,
}

fn timestamp_ms(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

fn money(money: Money) -> PbMoney {
    PbMoney { currency_code: money.currency_code, units: money.units }
}

fn product_info(product: &Product) -> ProductInfo {
    let price = product.price.clone().unwrap_or_default();
    ProductInfo {
        name: product.name.clone(),
        price: Money { currency_code: price.currency_code, units: price.units },
        active: product.active,
    }
}

fn peer_error(peer: Service, status: Status) -> Error {
    Error::CallPeer { peer, status }
}

impl CartGrpc {
    /// A cart API over `store`, calling `peers`, enforcing `limits`.
    pub fn new(store: CartStore, peers: PeerClients, limits: Limits) -> Self {
        Self { store, peers, limits, events: None }
    }

    /// Publishes what goes into carts through `events`.
    pub fn with_events(mut self, events: CartEvents) -> Self {
        self.events = Some(events);
        self
    }

    /// Current catalog data of `ids`; deleted products are absent.
    async fn products(&self, ids: Vec<String>) -> Result<HashMap<String, ProductInfo>, Error> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let response = self
            .peers
            .catalog
            .clone()
            .batch_get_products(idempotent(BatchGetProductsRequest { ids }))
            .await
            .map_err(|status| peer_error(Service::Catalog, status))?
            .into_inner();
        Ok(response.products.iter().map(|product| (product.id.clone(), product_info(product))).collect())
    }

    /// Units available now per product, for the given lines.
    async fn availability(&self, lines: &[(String, u32)]) -> Result<HashMap<String, i64>, Error> {
        if lines.is_empty() {
            return Ok(HashMap::new());
        }
        let request = CheckAvailabilityRequest {
            lines: lines
                .iter()
                .map(|(product_id, quantity)| StockLine {
                    product_id: product_id.clone(),
                    quantity: *quantity,
                })
                .collect(),
        };
        let response = self
            .peers
            .inventory
            .clone()
            .check_availability(idempotent(request))
            .await
            .map_err(|status| peer_error(Service::Inventory, status))?
            .into_inner();
        Ok(response.lines.into_iter().map(|line| (line.product_id, line.available_quantity)).collect())
    }

    /// The stored cart, priced and checked now, as the proto message.
    async fn render(&self, user_id: &str, stored: StoredCart) -> Result<pb::Cart, Error> {
        let ids: Vec<String> = stored.lines.iter().map(|line| line.product_id.clone()).collect();
        let wanted: Vec<(String, u32)> =
            stored.lines.iter().map(|line| (line.product_id.clone(), line.quantity)).collect();
        let (products, available) = tokio::try_join!(self.products(ids), self.availability(&wanted))?;
        let PricedCart { lines, subtotal } = domain::price_cart(&stored.lines, &products, &available);
        let now_ms = Utc::now().timestamp_millis();
        Ok(pb::Cart {
            user_id: user_id.to_owned(),
            items: lines
                .into_iter()
                .map(|line| pb::CartItem {
                    product_id: line.product_id,
                    quantity: line.quantity,
                    name: line.name,
                    unit_price: line.unit_price.map(money),
                    line_total: line.line_total.map(money),
                    in_stock: line.in_stock,
                })
                .collect(),
            subtotal: subtotal.map(money),
            updated_at: stored.updated_at_ms.map(timestamp_ms),
            expires_at: stored.ttl.map(|ttl| {
                timestamp_ms(now_ms.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)))
            }),
        })
    }

    async fn current_cart(&self, user_id: &str) -> Result<pb::Cart, Error> {
        let stored = self.store.read(user_id).await?;
        self.render(user_id, stored).await
    }

    /// Refuses a product that cannot be bought now: unknown, inactive, or
    /// short of `quantity` units. FAILED_PRECONDITION naming the product.
    async fn check_buyable(&self, product_id: &str, quantity: u32) -> Result<(), Error> {
        let product = self
            .peers
            .catalog
            .clone()
            .get_product(idempotent(GetProductRequest { id: product_id.to_owned() }))
            .await;
        let product = match product {
            Ok(response) => response.into_inner().product,
            Err(status) if status.code() == Code::NotFound => None,
            Err(status) => return Err(peer_error(Service::Catalog, status)),
        };
        match product {
            None => {
                return Err(Error::ProductUnavailable {
                    product_id: product_id.to_owned(),
                    reason: "does not exist",
                });
            }
            Some(product) if !product.active => {
                return Err(Error::ProductUnavailable {
                    product_id: product_id.to_owned(),
                    reason: "is not for sale",
                });
            }
            Some(_) => {}
        }
        let available = self.availability(&[(product_id.to_owned(), quantity)]).await?;
        let units = available.get(product_id).copied().unwrap_or(0);
        if !domain::is_enough(quantity, units) {
            return Err(Error::InsufficientStock {
                product_id: product_id.to_owned(),
                requested: quantity,
                available: units,
            });
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl CartService for CartGrpc {
    async fn get_cart(
        &self,
        request: Request<pb::GetCartRequest>,
    ) -> Result<Response<pb::GetCartResponse>, Status> {
        let user_id = request.into_inner().user_id;
        domain::require_user(&user_id).map_err(Error::from)?;
        Ok(Response::new(pb::GetCartResponse { cart: Some(self.current_cart(&user_id).await?) }))
    }

    async fn add_item(
        &self,
        request: Request<pb::AddItemRequest>,
    ) -> Result<Response<pb::AddItemResponse>, Status> {
        let request = request.into_inner();
        domain::require_user(&request.user_id).map_err(Error::from)?;
        domain::require_product(&request.product_id).map_err(Error::from)?;
        let current = self.store.quantity(&request.user_id, &request.product_id).await?;
        let total = domain::added_quantity(&request.product_id, current, request.quantity, self.limits)
            .map_err(Error::from)?;
        self.check_buyable(&request.product_id, total).await?;
        let now_ms = Utc::now().timestamp_millis();
        match self
            .store
            .add(&request.user_id, &request.product_id, request.quantity, self.limits, now_ms)
            .await?
        {
            AddOutcome::Added { .. } => {
                if let Some(events) = &self.events {
                    events.item_added(&request.user_id, &request.product_id, request.quantity);
                }
            }
            // Another request grew the line meanwhile.
            AddOutcome::LineQuantityExceeded { quantity } => {
                return Err(Error::from(domain::RuleError::LineQuantity {
                    product_id: request.product_id,
                    quantity,
                    max: self.limits.max_line_quantity,
                })
                .into());
            }
            AddOutcome::TooManyLines => {
                return Err(
                    Error::from(domain::RuleError::TooManyLines { max: self.limits.max_lines }).into()
                );
            }
        }
        Ok(Response::new(pb::AddItemResponse { cart: Some(self.current_cart(&request.user_id).await?) }))
    }

    async fn update_item(
        &self,
        request: Request<pb::UpdateItemRequest>,
    ) -> Result<Response<pb::UpdateItemResponse>, Status> {
        let request = request.into_inner();
        domain::require_user(&request.user_id).map_err(Error::from)?;
        domain::require_product(&request.product_id).map_err(Error::from)?;
        let quantity =
            domain::set_quantity(&request.product_id, request.quantity, self.limits).map_err(Error::from)?;
        if quantity > 0 {
            let current = self.store.quantity(&request.user_id, &request.product_id).await?;
            if current == 0 {
                return Err(Error::ItemNotFound { product_id: request.product_id }.into());
            }
            if quantity > current {
                self.check_buyable(&request.product_id, quantity).await?;
            }
        }
        let found = self
            .store
            .set_quantity(&request.user_id, &request.product_id, quantity, Utc::now().timestamp_millis())
            .await?;
        if !found {
            return Err(Error::ItemNotFound { product_id: request.product_id }.into());
        }
        Ok(Response::new(pb::UpdateItemResponse { cart: Some(self.current_cart(&request.user_id).await?) }))
    }

    async fn remove_item(
        &self,
        request: Request<pb::RemoveItemRequest>,
    ) -> Result<Response<pb::RemoveItemResponse>, Status> {
        let request = request.into_inner();
        domain::require_user(&request.user_id).map_err(Error::from)?;
        domain::require_product(&request.product_id).map_err(Error::from)?;
        self.store.remove(&request.user_id, &request.product_id, Utc::now().timestamp_millis()).await?;
        Ok(Response::new(pb::RemoveItemResponse { cart: Some(self.current_cart(&request.user_id).await?) }))
    }

    async fn clear_cart(
        &self,
        request: Request<pb::ClearCartRequest>,
    ) -> Result<Response<pb::ClearCartResponse>, Status> {
        let user_id = request.into_inner().user_id;
        domain::require_user(&user_id).map_err(Error::from)?;
        self.store.clear(&user_id).await?;
        Ok(Response::new(pb::ClearCartResponse {
            cart: Some(self.render(&user_id, StoredCart::default()).await?),
        }))
    }

    async fn checkout(
        &self,
        request: Request<pb::CheckoutRequest>,
    ) -> Result<Response<pb::CheckoutResponse>, Status> {
        let request = request.into_inner();
        domain::require_user(&request.user_id).map_err(Error::from)?;
        if request.idempotency_key.trim().is_empty() {
            return Err(Error::from(domain::RuleError::EmptyIdempotencyKey).into());
        }
        // A retry of a checkout that already placed its order (and emptied
        // the cart) answers with that order.
        if let Some(encoded) = self.store.checkout_result(&request.user_id, &request.idempotency_key).await? {
            let order = Order::decode(encoded.as_slice()).map_err(Error::DecodeCheckout)?;
            return Ok(Response::new(pb::CheckoutResponse { order: Some(order) }));
        }
        let cart = self.store.read(&request.user_id).await?;
        if cart.lines.is_empty() {
            return Err(Error::EmptyCart.into());
        }
        let place = PlaceOrderRequest {
            user_id: request.user_id.clone(),
            idempotency_key: request.idempotency_key.clone(),
            lines: cart
                .lines
                .iter()
                .map(|line: &CartLine| PlaceOrderLine {
                    product_id: line.product_id.clone(),
                    quantity: line.quantity,
                })
                .collect(),
            shipping_address: request.shipping_address,
            payment_method_token: request.payment_method_token,
        };
        // Retrying is safe: the idempotency key makes the order service
        // return the same order for a repeat.
        let order = self
            .peers
            .order
            .clone()
            .place_order(idempotent(place))
            .await
            .map_err(|status| peer_error(Service::Order, status))?
            .into_inner()
            .order
            .ok_or(Error::MissingOrder)?;
        // The order exists: only now does the cart give up its lines.
        self.store
            .record_checkout(&request.user_id, &request.idempotency_key, &order.encode_to_vec())
            .await?;
        let removed =
            self.store.remove_ordered(&request.user_id, &cart, Utc::now().timestamp_millis()).await?;
        tracing::info!(user_id = %request.user_id, order_id = %order.id, removed, "cart checked out");
        Ok(Response::new(pb::CheckoutResponse { order: Some(order) }))
    }
}

/// One mapping from the crate's errors to gRPC statuses. A peer's answer is
/// passed on when it is about the request (INVALID_ARGUMENT naming a
/// product, ALREADY_EXISTS for a reused key, ...); a peer that could not
/// answer is UNAVAILABLE, so the caller may retry.
impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            // The shop's cart limits are configuration the gateway's API
            // document cannot state: a request within the document that
            // breaks them conflicts with the cart (409), it is not malformed.
            Error::Validate(
                rule @ (domain::RuleError::LineQuantity { .. } | domain::RuleError::TooManyLines { .. }),
            ) => Status::failed_precondition(rule.to_string()),
            Error::Validate(rule) => Status::invalid_argument(rule.to_string()),
            error @ (Error::ProductUnavailable { .. }
            | Error::InsufficientStock { .. }
            | Error::EmptyCart) => Status::failed_precondition(error.to_string()),
            error @ Error::ItemNotFound { .. } => Status::not_found(error.to_string()),
            Error::CallPeer { peer, status } => match status.code() {
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Unknown
                | Code::Internal => {
                    tracing::warn!(peer = peer.name(), code = ?status.code(), message = status.message(), "peer call failed");
                    Status::unavailable(format!("the {} service is unavailable; retry later", peer.name()))
                }
                code => Status::new(code, status.message().to_owned()),
            },
            error @ (Error::ReadCart(_) | Error::WriteCart(_)) => {
                tracing::warn!(error = %crate::error_chain(&error), "redis unavailable");
                Status::unavailable("the cart store is unavailable; retry later")
            }
            error => {
                tracing::error!(error = %crate::error_chain(&error), "cart request failed");
                Status::internal("internal error")
            }
        }
    }
}
