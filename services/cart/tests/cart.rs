//! The cart against a real Redis and in-process fakes of its peers (catalog,
//! inventory, order), served by tonic on a loopback port and reached through
//! the platform's `Peers` (resilient, balanced channels), as in production.
//!
//! Redis comes from `bash e2e/scripts/infra.sh up redis` (COMMERCE_REDIS_URL,
//! default of `e2e/infra.env`); an unreachable Redis fails the test with that
//! hint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use commerce_cart::{CartGrpc, CartSettings, CartStore, peer_clients};
use commerce_platform::discovery::{PeerArgs, Peers};
use commerce_platform::readiness::Readiness;
use commerce_platform::redis::{DEFAULT_KEY_PREFIX, RedisArgs};
use commerce_platform::resilience::ClientArgs;
use commerce_proto::cart::v1 as cart;
use commerce_proto::cart::v1::cart_service_server::CartService;
use commerce_proto::catalog::v1 as catalog;
use commerce_proto::catalog::v1::catalog_service_server::{CatalogService, CatalogServiceServer};
use commerce_proto::common::v1::{Address, Money};
use commerce_proto::inventory::v1 as inventory;
use commerce_proto::inventory::v1::inventory_service_server::{InventoryService, InventoryServiceServer};
use commerce_proto::order::v1 as order;
use commerce_proto::order::v1::order_service_server::{OrderService, OrderServiceServer};
use redis::AsyncCommands;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};

const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:56379";
const DAY: Duration = Duration::from_secs(24 * 3600);

fn eur(units: i64) -> Money {
    Money { currency_code: "EUR".to_owned(), units }
}

/// The catalog: products by id, editable by the test.
#[derive(Debug, Clone, Default)]
struct FakeCatalog {
    products: Arc<Mutex<HashMap<String, catalog::Product>>>,
}

impl FakeCatalog {
    fn put(&self, id: &str, price: i64, active: bool) {
        let product = catalog::Product {
            id: id.to_owned(),
            name: format!("Product {id}"),
            price: Some(eur(price)),
            active,
            ..Default::default()
        };
        self.products.lock().expect("catalog lock").insert(id.to_owned(), product);
    }
}

#[tonic::async_trait]
impl CatalogService for FakeCatalog {
    async fn get_product(
        &self,
        request: Request<catalog::GetProductRequest>,
    ) -> Result<Response<catalog::GetProductResponse>, Status> {
        let id = request.into_inner().id;
        let product = self.products.lock().expect("catalog lock").get(&id).cloned();
        match product {
            Some(product) => Ok(Response::new(catalog::GetProductResponse { product: Some(product) })),
            None => Err(Status::not_found(format!("product {id} not found"))),
        }
    }

    async fn batch_get_products(
        &self,
        request: Request<catalog::BatchGetProductsRequest>,
    ) -> Result<Response<catalog::BatchGetProductsResponse>, Status> {
        let products = self.products.lock().expect("catalog lock");
        let (found, missing): (Vec<String>, Vec<String>) =
            request.into_inner().ids.into_iter().partition(|id| products.contains_key(id));
        Ok(Response::new(catalog::BatchGetProductsResponse {
            products: found.iter().filter_map(|id| products.get(id).cloned()).collect(),
            missing_ids: missing,
        }))
    }

    async fn create_product(
        &self,
        _: Request<catalog::CreateProductRequest>,
    ) -> Result<Response<catalog::CreateProductResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn update_product(
        &self,
        _: Request<catalog::UpdateProductRequest>,
    ) -> Result<Response<catalog::UpdateProductResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn delete_product(
        &self,
        _: Request<catalog::DeleteProductRequest>,
    ) -> Result<Response<catalog::DeleteProductResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_products(
        &self,
        _: Request<catalog::ListProductsRequest>,
    ) -> Result<Response<catalog::ListProductsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn create_category(
        &self,
        _: Request<catalog::CreateCategoryRequest>,
    ) -> Result<Response<catalog::CreateCategoryResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_categories(
        &self,
        _: Request<catalog::ListCategoriesRequest>,
    ) -> Result<Response<catalog::ListCategoriesResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_catalog_version(
        &self,
        _: Request<catalog::GetCatalogVersionRequest>,
    ) -> Result<Response<catalog::GetCatalogVersionResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Inventory: available units by product, editable by the test.
#[derive(Debug, Clone, Default)]
struct FakeInventory {
    available: Arc<Mutex<HashMap<String, i64>>>,
}

impl FakeInventory {
    fn put(&self, id: &str, units: i64) {
        self.available.lock().expect("inventory lock").insert(id.to_owned(), units);
    }
}

#[tonic::async_trait]
impl InventoryService for FakeInventory {
    async fn check_availability(
        &self,
        request: Request<inventory::CheckAvailabilityRequest>,
    ) -> Result<Response<inventory::CheckAvailabilityResponse>, Status> {
        let available = self.available.lock().expect("inventory lock");
        let lines: Vec<inventory::LineAvailability> = request
            .into_inner()
            .lines
            .into_iter()
            .map(|line| {
                let units = available.get(&line.product_id).copied().unwrap_or(0);
                inventory::LineAvailability {
                    available: units >= i64::from(line.quantity),
                    product_id: line.product_id,
                    requested: line.quantity,
                    available_quantity: units,
                }
            })
            .collect();
        let all_available = lines.iter().all(|line| line.available);
        Ok(Response::new(inventory::CheckAvailabilityResponse { lines, all_available }))
    }

    async fn get_stock(
        &self,
        _: Request<inventory::GetStockRequest>,
    ) -> Result<Response<inventory::GetStockResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn reserve(
        &self,
        _: Request<inventory::ReserveRequest>,
    ) -> Result<Response<inventory::ReserveResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn commit_reservation(
        &self,
        _: Request<inventory::CommitReservationRequest>,
    ) -> Result<Response<inventory::CommitReservationResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn release_reservation(
        &self,
        _: Request<inventory::ReleaseReservationRequest>,
    ) -> Result<Response<inventory::ReleaseReservationResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn restock(
        &self,
        _: Request<inventory::RestockRequest>,
    ) -> Result<Response<inventory::RestockResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn set_stock(
        &self,
        _: Request<inventory::SetStockRequest>,
    ) -> Result<Response<inventory::SetStockResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_low_stock(
        &self,
        _: Request<inventory::ListLowStockRequest>,
    ) -> Result<Response<inventory::ListLowStockResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Order: records every PlaceOrder; refuses with `refusal` while it is set.
#[derive(Debug, Clone, Default)]
struct FakeOrder {
    placed: Arc<Mutex<Vec<order::PlaceOrderRequest>>>,
    refusal: Arc<Mutex<Option<Status>>>,
}

impl FakeOrder {
    fn calls(&self) -> Vec<order::PlaceOrderRequest> {
        self.placed.lock().expect("order lock").clone()
    }
}

#[tonic::async_trait]
impl OrderService for FakeOrder {
    async fn place_order(
        &self,
        request: Request<order::PlaceOrderRequest>,
    ) -> Result<Response<order::PlaceOrderResponse>, Status> {
        let request = request.into_inner();
        self.placed.lock().expect("order lock").push(request.clone());
        if let Some(status) = self.refusal.lock().expect("order lock").clone() {
            return Err(status);
        }
        Ok(Response::new(order::PlaceOrderResponse {
            order: Some(order::Order {
                id: format!("order-for-{}", request.idempotency_key),
                user_id: request.user_id,
                status: order::OrderStatus::Pending as i32,
                idempotency_key: request.idempotency_key,
                ..Default::default()
            }),
        }))
    }

    async fn get_order(
        &self,
        _: Request<order::GetOrderRequest>,
    ) -> Result<Response<order::GetOrderResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_orders(
        &self,
        _: Request<order::ListOrdersRequest>,
    ) -> Result<Response<order::ListOrdersResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn cancel_order(
        &self,
        _: Request<order::CancelOrderRequest>,
    ) -> Result<Response<order::CancelOrderResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type WatchOrdersStream = tokio_stream::Empty<Result<order::OrderStatusChange, Status>>;

    async fn watch_orders(
        &self,
        _: Request<order::WatchOrdersRequest>,
    ) -> Result<Response<Self::WatchOrdersStream>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// A cart service wired to real Redis and the fakes.
struct Fixture {
    cart: CartGrpc,
    catalog: FakeCatalog,
    inventory: FakeInventory,
    order: FakeOrder,
    redis: redis::aio::ConnectionManager,
    user: String,
    shutdown: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Fixture {
    async fn start() -> anyhow::Result<Self> {
        let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
        let shutdown = CancellationToken::new();
        let redis_url = std::env::var("COMMERCE_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned());
        let redis = tokio::time::timeout(
            Duration::from_secs(10),
            commerce_platform::redis::connect(
                &RedisArgs::new(redis_url.clone()),
                &Readiness::new(),
                &shutdown,
            ),
        )
        .await
        .map_err(anyhow::Error::from)
        .and_then(|connected| connected.map_err(anyhow::Error::from))
        .with_context(|| {
            format!("Redis is unreachable at {redis_url}; start it with `bash e2e/scripts/infra.sh up redis`")
        })?;

        let (catalog, inventory, order) =
            (FakeCatalog::default(), FakeInventory::default(), FakeOrder::default());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let server = tonic::transport::Server::builder()
            .add_service(CatalogServiceServer::new(catalog.clone()))
            .add_service(InventoryServiceServer::new(inventory.clone()))
            .add_service(OrderServiceServer::new(order.clone()))
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown.clone().cancelled_owned());
        tokio::spawn(server);

        let peers = PeerArgs {
            peers: ["catalog", "inventory", "order"]
                .iter()
                .map(|service| format!("{service}=http://{addr}").parse())
                .collect::<Result<_, _>>()?,
            ..PeerArgs::default()
        };
        let clients = peer_clients(&Peers::new(&peers, &ClientArgs::default(), shutdown.clone()))?;
        let settings = CartSettings::default();
        let cart = CartGrpc::new(
            CartStore::new(redis.clone(), DEFAULT_KEY_PREFIX, settings.ttl),
            clients,
            settings.limits(),
        );
        Ok(Self {
            cart,
            catalog,
            inventory,
            order,
            redis,
            user: format!("user-{}", uuid::Uuid::new_v4()),
            shutdown,
        })
    }

    async fn add(&self, product_id: &str, quantity: u32) -> Result<cart::Cart, Status> {
        let response = self
            .cart
            .add_item(Request::new(cart::AddItemRequest {
                user_id: self.user.clone(),
                product_id: product_id.to_owned(),
                quantity,
            }))
            .await?;
        Ok(response.into_inner().cart.unwrap_or_default())
    }

    async fn get(&self) -> Result<cart::Cart, Status> {
        let response =
            self.cart.get_cart(Request::new(cart::GetCartRequest { user_id: self.user.clone() })).await?;
        Ok(response.into_inner().cart.unwrap_or_default())
    }

    async fn checkout(&self, key: &str) -> Result<order::Order, Status> {
        let response = self
            .cart
            .checkout(Request::new(cart::CheckoutRequest {
                user_id: self.user.clone(),
                idempotency_key: key.to_owned(),
                shipping_address: Some(Address {
                    recipient_name: "Ada".to_owned(),
                    country_code: "DE".to_owned(),
                    ..Default::default()
                }),
                payment_method_token: "tok_visa".to_owned(),
            }))
            .await?;
        Ok(response.into_inner().order.unwrap_or_default())
    }

    /// Milliseconds before the user's cart is forgotten (-2: no cart).
    async fn pttl(&self) -> anyhow::Result<i64> {
        let mut redis = self.redis.clone();
        Ok(redis.pttl(format!("commerce:cart:{{{}}}", self.user)).await?)
    }
}

fn lines(cart: &cart::Cart) -> Vec<(String, u32, bool)> {
    cart.items.iter().map(|item| (item.product_id.clone(), item.quantity, item.in_stock)).collect()
}

#[tokio::test]
async fn a_cart_is_priced_at_current_catalog_prices_and_flags_lines_that_cannot_be_bought()
-> anyhow::Result<()> {
    let fixture = Fixture::start().await?;
    fixture.catalog.put("apple", 150, true);
    fixture.catalog.put("bread", 300, true);
    fixture.inventory.put("apple", 10);
    fixture.inventory.put("bread", 1);

    fixture.add("apple", 1).await?;
    fixture.add("bread", 1).await?;
    let cart = fixture.add("apple", 1).await?;
    assert_eq!(
        lines(&cart),
        [("apple".to_owned(), 2, true), ("bread".to_owned(), 1, true)],
        "merged, in added order"
    );
    assert_eq!(cart.subtotal, Some(eur(600)));

    // The catalog changes the price, bread sells out, a product vanishes.
    fixture.catalog.put("apple", 200, true);
    fixture.inventory.put("bread", 0);
    fixture.catalog.put("cider", 500, true);
    fixture.inventory.put("cider", 3);
    fixture.add("cider", 1).await?;
    fixture.catalog.products.lock().expect("catalog lock").remove("cider");

    let cart = fixture.get().await?;
    assert_eq!(
        lines(&cart),
        [("apple".to_owned(), 2, true), ("bread".to_owned(), 1, false), ("cider".to_owned(), 1, false)]
    );
    assert_eq!(cart.items[0].unit_price, Some(eur(200)), "current price, not the price when added");
    assert_eq!(cart.items[0].line_total, Some(eur(400)));
    assert_eq!(cart.items[0].name, "Product apple");
    assert_eq!(cart.items[2].unit_price, None, "a deleted product has no price");
    assert_eq!(cart.subtotal, Some(eur(700)), "apple 400 + bread 300; the deleted product counts nothing");
    Ok(())
}

#[tokio::test]
async fn adding_what_cannot_be_bought_is_refused_naming_the_product() -> anyhow::Result<()> {
    let fixture = Fixture::start().await?;
    fixture.catalog.put("scarce", 100, true);
    fixture.inventory.put("scarce", 2);
    fixture.catalog.put("retired", 100, false);
    fixture.inventory.put("retired", 50);

    for (product, quantity) in [("scarce", 3), ("retired", 1), ("ghost", 1)] {
        let status = fixture.add(product, quantity).await.expect_err("refused");
        assert_eq!(status.code(), Code::FailedPrecondition, "{product}: {status:?}");
        assert!(status.message().contains(product), "the message names {product}: {}", status.message());
    }
    // Two fit, a third on top of them does not: the merged quantity counts.
    fixture.add("scarce", 2).await?;
    let status = fixture.add("scarce", 1).await.expect_err("only 2 available");
    assert_eq!(status.code(), Code::FailedPrecondition);

    let status = fixture.add("scarce", 0).await.expect_err("zero");
    assert_eq!(status.code(), Code::InvalidArgument);
    fixture.inventory.put("scarce", 1000);
    let status = fixture.add("scarce", 98).await.expect_err("over the line maximum of 99");
    assert_eq!(status.code(), Code::FailedPrecondition, "a configured cart limit conflicts, {status:?}");
    assert_eq!(lines(&fixture.get().await?), [("scarce".to_owned(), 2, true)], "refusals changed nothing");
    Ok(())
}

#[tokio::test]
async fn every_write_gives_the_cart_a_day_to_live() -> anyhow::Result<()> {
    let fixture = Fixture::start().await?;
    fixture.catalog.put("p", 100, true);
    fixture.catalog.put("q", 100, true);
    fixture.inventory.put("p", 10);
    fixture.inventory.put("q", 10);
    let near_a_day = |pttl: i64| {
        pttl > (DAY - Duration::from_secs(60)).as_millis() as i64 && pttl <= DAY.as_millis() as i64
    };

    let cart = fixture.add("p", 1).await?;
    assert!(near_a_day(fixture.pttl().await?), "PTTL after add: {}", fixture.pttl().await?);
    let expires = cart.expires_at.context("expires_at")?;
    let in_a_day = chrono::Utc::now().timestamp() + DAY.as_secs() as i64;
    assert!((expires.seconds - in_a_day).abs() < 60, "expires_at is about a day away");

    // Every kind of write refreshes the expiry.
    let mut redis = fixture.redis.clone();
    let key = format!("commerce:cart:{{{}}}", fixture.user);
    let _: bool = redis.pexpire(&key, 5_000).await?;
    fixture
        .cart
        .update_item(Request::new(cart::UpdateItemRequest {
            user_id: fixture.user.clone(),
            product_id: "p".to_owned(),
            quantity: 3,
        }))
        .await?;
    assert!(near_a_day(fixture.pttl().await?), "update refreshes");
    fixture.add("q", 1).await?;
    let _: bool = redis.pexpire(&key, 5_000).await?;
    fixture
        .cart
        .remove_item(Request::new(cart::RemoveItemRequest {
            user_id: fixture.user.clone(),
            product_id: "q".to_owned(),
        }))
        .await?;
    assert!(near_a_day(fixture.pttl().await?), "remove refreshes");
    Ok(())
}

#[tokio::test]
async fn updating_to_zero_removes_the_line_and_an_absent_line_is_not_found() -> anyhow::Result<()> {
    let fixture = Fixture::start().await?;
    fixture.catalog.put("p", 100, true);
    fixture.inventory.put("p", 10);
    fixture.add("p", 2).await?;
    let update = |product: &str, quantity: u32| {
        fixture.cart.update_item(Request::new(cart::UpdateItemRequest {
            user_id: fixture.user.clone(),
            product_id: product.to_owned(),
            quantity,
        }))
    };
    let status = update("p", 11).await.expect_err("only 10 available");
    assert_eq!(status.code(), Code::FailedPrecondition);
    let cart = update("p", 0).await?.into_inner().cart.context("cart")?;
    assert!(cart.items.is_empty());
    assert_eq!(fixture.pttl().await?, -2, "an emptied cart is deleted, not left as an empty hash");
    let status = update("p", 1).await.expect_err("not in the cart");
    assert_eq!(status.code(), Code::NotFound);
    // Removing and clearing are idempotent.
    for _ in 0..2 {
        fixture
            .cart
            .remove_item(Request::new(cart::RemoveItemRequest {
                user_id: fixture.user.clone(),
                product_id: "p".to_owned(),
            }))
            .await?;
        fixture
            .cart
            .clear_cart(Request::new(cart::ClearCartRequest { user_id: fixture.user.clone() }))
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn checkout_forwards_the_idempotency_key_and_empties_the_cart_only_once_the_order_is_accepted()
-> anyhow::Result<()> {
    let fixture = Fixture::start().await?;
    fixture.catalog.put("a", 100, true);
    fixture.catalog.put("b", 250, true);
    fixture.inventory.put("a", 10);
    fixture.inventory.put("b", 10);

    let status = fixture.checkout("key-0").await.expect_err("empty cart");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(fixture.order.calls().is_empty(), "an empty cart places nothing");

    fixture.add("a", 2).await?;
    fixture.add("b", 1).await?;

    // The order service refuses: its answer is passed on, the cart stays.
    *fixture.order.refusal.lock().expect("order lock") =
        Some(Status::invalid_argument("product b is inactive"));
    let status = fixture.checkout("key-1").await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("product b"));
    assert_eq!(lines(&fixture.get().await?).len(), 2, "the cart is kept when no order was placed");

    // Accepted: the key, lines (product and quantity only), address and
    // token reach PlaceOrder; then the cart is empty.
    *fixture.order.refusal.lock().expect("order lock") = None;
    let placed = fixture.checkout("key-1").await?;
    assert_eq!(placed.id, "order-for-key-1");
    let calls = fixture.order.calls();
    let last = calls.last().context("PlaceOrder was called")?;
    assert_eq!(last.user_id, fixture.user);
    assert_eq!(last.idempotency_key, "key-1");
    let ordered: Vec<(String, u32)> = last.lines.iter().map(|l| (l.product_id.clone(), l.quantity)).collect();
    assert_eq!(ordered, [("a".to_owned(), 2), ("b".to_owned(), 1)]);
    assert_eq!(last.payment_method_token, "tok_visa");
    assert_eq!(last.shipping_address.as_ref().map(|a| a.recipient_name.as_str()), Some("Ada"));
    assert!(fixture.get().await?.items.is_empty(), "the cart is empty after the order was accepted");

    // A retried checkout returns the same order without placing another.
    let calls_before = fixture.order.calls().len();
    let again = fixture.checkout("key-1").await?;
    assert_eq!(again.id, placed.id);
    assert_eq!(fixture.order.calls().len(), calls_before);

    let status = fixture.checkout("").await.expect_err("no key");
    assert_eq!(status.code(), Code::InvalidArgument);
    Ok(())
}

#[tokio::test]
async fn checkout_removes_only_the_lines_it_ordered_not_those_changed_meanwhile() -> anyhow::Result<()> {
    let fixture = Fixture::start().await?;
    let store = CartStore::new(fixture.redis.clone(), DEFAULT_KEY_PREFIX, DAY);
    let limits = CartSettings::default().limits();
    let now = chrono::Utc::now().timestamp_millis();
    for product in ["kept-as-is", "changed", "ordered"] {
        store.add(&fixture.user, product, 1, limits, now).await?;
    }
    let snapshot = store.read(&fixture.user).await?;
    // While the order is being placed, the customer edits the cart.
    store.set_quantity(&fixture.user, "changed", 5, now).await?;
    store.add(&fixture.user, "added-later", 1, limits, now).await?;
    store.set_quantity(&fixture.user, "kept-as-is", 0, now).await?;
    store.add(&fixture.user, "kept-as-is", 1, limits, now + 1).await?;

    let removed = store.remove_ordered(&fixture.user, &snapshot, now + 2).await?;
    let left: Vec<(String, u32)> =
        store.read(&fixture.user).await?.lines.into_iter().map(|l| (l.product_id, l.quantity)).collect();
    assert_eq!(removed, 1, "only the untouched line was ordered and removed");
    assert_eq!(
        left,
        // Same millisecond: product id breaks the tie.
        [("added-later".to_owned(), 1), ("changed".to_owned(), 5), ("kept-as-is".to_owned(), 1)],
        "lines changed or re-added after the snapshot stay"
    );
    Ok(())
}

#[tokio::test]
async fn two_stacks_sharing_one_redis_never_see_each_others_carts() -> anyhow::Result<()> {
    let fixture = Fixture::start().await?;
    let limits = CartSettings::default().limits();
    let now = chrono::Utc::now().timestamp_millis();
    let tenant = format!("cart-test-{}", uuid::Uuid::new_v4().simple());
    let shop_a = CartStore::new(fixture.redis.clone(), &format!("{tenant}.a"), DAY);
    let shop_b = CartStore::new(fixture.redis.clone(), &format!("{tenant}.b"), DAY);
    // The same user id in both shops (ids are per stack; nothing stops two
    // stacks from issuing the same one).
    shop_a.add(&fixture.user, "only-in-a", 2, limits, now).await?;

    assert!(shop_b.read(&fixture.user).await?.lines.is_empty(), "shop b sees shop a's cart");
    shop_b.add(&fixture.user, "only-in-b", 1, limits, now).await?;
    let in_a: Vec<(String, u32)> =
        shop_a.read(&fixture.user).await?.lines.into_iter().map(|l| (l.product_id, l.quantity)).collect();
    assert_eq!(in_a, [("only-in-a".to_owned(), 2)], "shop b's write reached shop a's cart");
    let mut redis = fixture.redis.clone();
    let keys: Vec<String> = redis.keys(format!("{tenant}.*")).await?;
    assert_eq!(keys.len(), 2, "each cart under its own stack's prefix: {keys:?}");
    Ok(())
}

#[tokio::test]
async fn an_unreachable_catalog_makes_reads_unavailable_not_wrong() -> anyhow::Result<()> {
    let fixture = Fixture::start().await?;
    fixture.catalog.put("p", 100, true);
    fixture.inventory.put("p", 10);
    fixture.add("p", 1).await?;

    // The same carts, served with peers on a port where nothing listens.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let peers = PeerArgs {
        peers: ["catalog", "inventory", "order"]
            .iter()
            .map(|service| format!("{service}=http://{dead}").parse())
            .collect::<Result<_, _>>()?,
        ..PeerArgs::default()
    };
    let clients = peer_clients(&Peers::new(&peers, &ClientArgs::default(), fixture.shutdown.clone()))?;
    let settings = CartSettings::default();
    let cart = CartGrpc::new(
        CartStore::new(fixture.redis.clone(), DEFAULT_KEY_PREFIX, settings.ttl),
        clients,
        settings.limits(),
    );
    let status = cart
        .get_cart(Request::new(cart::GetCartRequest { user_id: fixture.user.clone() }))
        .await
        .expect_err("the cart cannot be priced");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = cart
        .checkout(Request::new(cart::CheckoutRequest {
            user_id: fixture.user.clone(),
            idempotency_key: "k".to_owned(),
            shipping_address: None,
            payment_method_token: "tok".to_owned(),
        }))
        .await
        .expect_err("no order service");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(lines(&fixture.get().await?).len(), 1, "a failed checkout keeps the cart");
    Ok(())
}
