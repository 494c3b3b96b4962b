//! The gateway in process against fake gRPC services on loopback ports (the
//! generated server traits, answering what each test needs) and the real
//! Redis from `e2e/infra.env`: problem+json for bad input, token checks,
//! roles, rate limits shared across two gateways, the in-process fallback,
//! rule reloads, and the OpenAPI document.
//!
//! Redis is required: `bash e2e/scripts/infra.sh up`. Each test uses its own
//! key prefix, so runs never share counters.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use commerce_gateway::config::{CatalogCacheArgs, HttpArgs, JwtArgs, RateLimitArgs};
use commerce_gateway::{Config, Gateway};
use commerce_platform::admin::{AdminArgs, Metrics};
use commerce_platform::discovery::PeerArgs;
use commerce_platform::readiness::Readiness;
use commerce_platform::redis::RedisArgs;
use commerce_platform::resilience::ClientArgs;
use commerce_platform::telemetry::LogArgs;
use commerce_proto::auth::v1 as auth_pb;
use commerce_proto::auth::v1::auth_service_server::{AuthService, AuthServiceServer};
use commerce_proto::cart::v1 as cart_pb;
use commerce_proto::cart::v1::cart_service_server::{CartService, CartServiceServer};
use commerce_proto::catalog::v1 as catalog_pb;
use commerce_proto::catalog::v1::catalog_service_server::{CatalogService, CatalogServiceServer};
use ed25519_dalek::{Signer, SigningKey};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

/// A product the fake catalog and cart know.
const KNOWN_PRODUCT: &str = "6a1f0a4e-5a0b-4c36-9b67-2c3a1d5f0001";
/// A product id for which the fake catalog answers Unavailable.
const FLAKY_PRODUCT: &str = "6a1f0a4e-5a0b-4c36-9b67-2c3a1d5f0503";
/// A product id for which the fake catalog answers after the deadline.
const SLOW_PRODUCT: &str = "6a1f0a4e-5a0b-4c36-9b67-2c3a1d5f0504";
/// Longest wait for an asynchronous effect (a reload, a key refresh).
const WAIT: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------ fakes

/// Implements a generated gRPC server trait for a fake, one line a method:
/// `name(&self, request: RequestMessage) -> ResponseMessage { answer }`,
/// where the answer is a `Result<ResponseMessage, Status>`. The generated
/// signatures (`Request<..>`, `Response<..>`) are written once, here.
macro_rules! fake_service {
    ($service:ident for $fake:ident {
        $(fn $method:ident(&$this:ident, $request:tt: $input:ty) -> $output:ty $answer:block)*
    }) => {
        #[tonic::async_trait]
        impl $service for $fake {
            $(
                async fn $method(&$this, $request: Request<$input>) -> Result<Response<$output>, Status> {
                    $answer.map(Response::new)
                }
            )*
        }
    };
}

/// Auth: serves the current key set and counts fetches.
#[derive(Clone, Default)]
struct FakeAuth {
    keys: Arc<Mutex<Vec<auth_pb::PublicKey>>>,
    fetches: Arc<AtomicUsize>,
}

impl FakeAuth {
    /// Adds the public half of `signing` to the keys auth serves, as `kid`.
    fn publish(&self, kid: &str, signing: &SigningKey) -> Result<()> {
        let key = auth_pb::PublicKey {
            key_id: kid.to_owned(),
            algorithm: "EdDSA".to_owned(),
            curve: "Ed25519".to_owned(),
            public_key: signing.verifying_key().to_bytes().to_vec(),
            ..Default::default()
        };
        self.keys.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(key);
        Ok(())
    }
}

fake_service!(AuthService for FakeAuth {
    fn register(&self, _: auth_pb::RegisterRequest) -> auth_pb::RegisterResponse {
        Err(Status::already_exists("email is taken"))
    }
    fn login(&self, _: auth_pb::LoginRequest) -> auth_pb::LoginResponse {
        Err(Status::unauthenticated("wrong email or password"))
    }
    fn refresh(&self, _: auth_pb::RefreshRequest) -> auth_pb::RefreshResponse {
        Err(Status::unauthenticated("refresh token revoked"))
    }
    fn logout(&self, _: auth_pb::LogoutRequest) -> auth_pb::LogoutResponse {
        Ok(auth_pb::LogoutResponse {})
    }
    fn validate_token(&self, _: auth_pb::ValidateTokenRequest) -> auth_pb::ValidateTokenResponse {
        Err(Status::unimplemented("the gateway must verify locally"))
    }
    fn get_public_keys(&self, _: auth_pb::GetPublicKeysRequest) -> auth_pb::GetPublicKeysResponse {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let keys = self.keys.lock().map_err(|_| Status::internal("poisoned"))?.clone();
        Ok(auth_pb::GetPublicKeysResponse { keys, max_age: None, clock: None })
    }
    fn list_users(&self, _: auth_pb::ListUsersRequest) -> auth_pb::ListUsersResponse {
        Err(Status::unimplemented("not used by these tests"))
    }
    fn set_user_role(&self, _: auth_pb::SetUserRoleRequest) -> auth_pb::SetUserRoleResponse {
        Err(Status::unimplemented("not used by these tests"))
    }
    fn erase_user(&self, _: auth_pb::EraseUserRequest) -> auth_pb::EraseUserResponse {
        Err(Status::unimplemented("not used by these tests"))
    }
});

/// Catalog: knows one product; records the traceparent of the last call;
/// counts product reads; answers version checks with `version` (which an
/// update moves) unless `version_unavailable`.
#[derive(Clone, Default)]
struct FakeCatalog {
    last_traceparent: Arc<Mutex<Option<String>>>,
    product_reads: Arc<AtomicUsize>,
    version: Arc<AtomicI64>,
    version_unavailable: Arc<AtomicBool>,
}

fn product() -> catalog_pb::Product {
    catalog_pb::Product {
        id: KNOWN_PRODUCT.to_owned(),
        sku: "MUG-1".to_owned(),
        name: "Mug".to_owned(),
        price: Some(commerce_proto::common::v1::Money { currency_code: "EUR".to_owned(), units: 1299 }),
        active: true,
        ..Default::default()
    }
}

fake_service!(CatalogService for FakeCatalog {
    fn create_product(&self, _: catalog_pb::CreateProductRequest) -> catalog_pb::CreateProductResponse {
        Ok(catalog_pb::CreateProductResponse { product: Some(product()) })
    }
    fn get_product(&self, request: catalog_pb::GetProductRequest) -> catalog_pb::GetProductResponse {
        let traceparent =
            request.metadata().get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned);
        *self.last_traceparent.lock().map_err(|_| Status::internal("poisoned"))? = traceparent;
        self.product_reads.fetch_add(1, Ordering::SeqCst);
        match request.into_inner().id.as_str() {
            KNOWN_PRODUCT => Ok(catalog_pb::GetProductResponse { product: Some(product()) }),
            FLAKY_PRODUCT => Err(Status::unavailable("catalog is restarting")),
            SLOW_PRODUCT => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Err(Status::internal("too late"))
            }
            id => Err(Status::not_found(format!("product {id} does not exist"))),
        }
    }
    fn update_product(&self, _: catalog_pb::UpdateProductRequest) -> catalog_pb::UpdateProductResponse {
        // As the real catalog's trigger does.
        self.version.fetch_add(1, Ordering::SeqCst);
        Ok(catalog_pb::UpdateProductResponse { product: Some(product()) })
    }
    fn delete_product(&self, _: catalog_pb::DeleteProductRequest) -> catalog_pb::DeleteProductResponse {
        Ok(catalog_pb::DeleteProductResponse {})
    }
    fn list_products(&self, _: catalog_pb::ListProductsRequest) -> catalog_pb::ListProductsResponse {
        Ok(catalog_pb::ListProductsResponse {
            products: vec![product()],
            next_page_token: String::new(),
            total_size: 1,
        })
    }
    fn batch_get_products(
        &self, _: catalog_pb::BatchGetProductsRequest
    ) -> catalog_pb::BatchGetProductsResponse {
        Err(Status::unimplemented("not needed"))
    }
    fn create_category(&self, _: catalog_pb::CreateCategoryRequest) -> catalog_pb::CreateCategoryResponse {
        Err(Status::already_exists("slug is taken"))
    }
    fn list_categories(&self, _: catalog_pb::ListCategoriesRequest) -> catalog_pb::ListCategoriesResponse {
        Ok(catalog_pb::ListCategoriesResponse { categories: Vec::new() })
    }
    fn get_catalog_version(
        &self, _: catalog_pb::GetCatalogVersionRequest
    ) -> catalog_pb::GetCatalogVersionResponse {
        if self.version_unavailable.load(Ordering::SeqCst) {
            return Err(Status::unavailable("catalog database down"));
        }
        Ok(catalog_pb::GetCatalogVersionResponse { version: self.version.load(Ordering::SeqCst) })
    }
});

/// Cart: accepts the known product, refuses others as the real one does.
#[derive(Clone, Default)]
struct FakeCart;

fn cart(user_id: String) -> cart_pb::Cart {
    cart_pb::Cart { user_id, ..Default::default() }
}

fake_service!(CartService for FakeCart {
    fn get_cart(&self, request: cart_pb::GetCartRequest) -> cart_pb::GetCartResponse {
        Ok(cart_pb::GetCartResponse { cart: Some(cart(request.into_inner().user_id)) })
    }
    fn add_item(&self, request: cart_pb::AddItemRequest) -> cart_pb::AddItemResponse {
        let request = request.into_inner();
        if request.product_id != KNOWN_PRODUCT {
            return Err(Status::failed_precondition(format!("unknown product {}", request.product_id)));
        }
        Ok(cart_pb::AddItemResponse { cart: Some(cart(request.user_id)) })
    }
    fn update_item(&self, request: cart_pb::UpdateItemRequest) -> cart_pb::UpdateItemResponse {
        Ok(cart_pb::UpdateItemResponse { cart: Some(cart(request.into_inner().user_id)) })
    }
    fn remove_item(&self, request: cart_pb::RemoveItemRequest) -> cart_pb::RemoveItemResponse {
        Ok(cart_pb::RemoveItemResponse { cart: Some(cart(request.into_inner().user_id)) })
    }
    fn clear_cart(&self, request: cart_pb::ClearCartRequest) -> cart_pb::ClearCartResponse {
        Ok(cart_pb::ClearCartResponse { cart: Some(cart(request.into_inner().user_id)) })
    }
    fn checkout(&self, _: cart_pb::CheckoutRequest) -> cart_pb::CheckoutResponse {
        Err(Status::failed_precondition("the cart is empty"))
    }
});

/// The fake services on one loopback port each.
struct Backends {
    auth: FakeAuth,
    catalog: FakeCatalog,
    peers: PeerArgs,
    signing: SigningKey,
}

/// Serves one gRPC service on `listener` until `shutdown`; returns the
/// address it listens on.
fn serve_grpc<S>(listener: TcpListener, service: S, shutdown: CancellationToken) -> Result<SocketAddr>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled_owned()),
    );
    Ok(addr)
}

async fn any_loopback_port() -> Result<TcpListener> {
    Ok(TcpListener::bind("127.0.0.1:0").await?)
}

/// Every fake service started, auth serving key `k1`.
async fn start_backends(shutdown: &CancellationToken) -> Result<Backends> {
    let listener = any_loopback_port().await?;
    let backends = start_backends_but_auth(listener.local_addr()?, shutdown).await?;
    backends.auth.publish("k1", &backends.signing)?;
    serve_grpc(listener, AuthServiceServer::new(backends.auth.clone()), shutdown.clone())?;
    Ok(backends)
}

/// The fake services except auth, which the peers expect at `auth_addr`
/// (nothing listens there until the test serves it) and which holds no key.
async fn start_backends_but_auth(auth_addr: SocketAddr, shutdown: &CancellationToken) -> Result<Backends> {
    let signing = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let auth = FakeAuth::default();
    let catalog = FakeCatalog::default();
    let catalog_addr =
        serve_grpc(any_loopback_port().await?, CatalogServiceServer::new(catalog.clone()), shutdown.clone())?;
    let cart_addr =
        serve_grpc(any_loopback_port().await?, CartServiceServer::new(FakeCart), shutdown.clone())?;
    let peers = PeerArgs {
        peers: vec![
            format!("auth=http://{auth_addr}").parse()?,
            format!("catalog=http://{catalog_addr}").parse()?,
            format!("cart=http://{cart_addr}").parse()?,
        ],
        resolve_interval: Duration::from_millis(200),
    };
    Ok(Backends { auth, catalog, peers, signing })
}

// ------------------------------------------------------------------ gateway

fn redis_url() -> String {
    std::env::var("COMMERCE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:56379".to_owned())
}

/// Fails (never skips) when the real Redis is not there.
async fn require_redis() -> Result<()> {
    let url = redis_url();
    let client = redis::Client::open(url.as_str())?;
    let ping = async {
        let mut connection = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut connection).await
    };
    match tokio::time::timeout(Duration::from_secs(3), ping).await {
        Ok(Ok(_)) => Ok(()),
        other => {
            bail!("Redis is not reachable at {url} ({other:?}); start it with `bash e2e/scripts/infra.sh up`")
        }
    }
}

fn config(peers: &PeerArgs, redis_url: &str, prefix: &str, rules_file: Option<PathBuf>) -> Config {
    Config {
        log: LogArgs { filter: "warn".to_owned(), ..LogArgs::default() },
        admin: AdminArgs { addr: SocketAddr::from(([127, 0, 0, 1], 0)) },
        peers: peers.clone(),
        client: ClientArgs { deadline: Duration::from_secs(2), max_retries: 0, ..ClientArgs::default() },
        redis: RedisArgs { url: redis_url.to_owned(), key_prefix: prefix.to_owned() },
        http: HttpArgs {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            body_limit: 1024,
            request_timeout: Duration::from_secs(5),
            cors_origins: vec!["https://shop.example".to_owned()],
            cors_allowed_headers: Vec::new(),
            cors_max_age: Duration::from_secs(600),
            trusted_proxy_hops: 0,
            shutdown_grace: Duration::from_secs(1),
        },
        jwt: JwtArgs {
            issuer: "commerce-auth".to_owned(),
            audience: "commerce".to_owned(),
            refresh_min_interval: Duration::from_millis(1500),
            leeway: Duration::ZERO,
        },
        rate_limit: RateLimitArgs {
            default_per_minute: 6000,
            default_burst: 1000,
            auth_per_minute: 600,
            auth_burst: 100,
            rules_file,
            reload_interval: Duration::from_millis(100),
        },
        catalog_cache: CatalogCacheArgs {
            cache_size: 1 << 20,
            poll_interval: Duration::from_millis(50),
            max_staleness: Duration::from_millis(500),
        },
    }
}

/// One running gateway.
struct Running {
    base: String,
    metrics: Metrics,
    http: reqwest::Client,
}

async fn start_gateway(config: Config, shutdown: &CancellationToken) -> Result<Running> {
    commerce_platform::telemetry::init(&config.log, "gateway-test")?;
    let metrics = Metrics::new("gateway");
    let gateway = Gateway::new(&config, &metrics, shutdown);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (serve_metrics, shutdown) = (metrics.clone(), shutdown.clone());
    tokio::spawn(async move {
        let readiness = Readiness::new();
        commerce_gateway::serve_on(&gateway, &serve_metrics, &readiness, listener, shutdown).await
    });
    Ok(Running { base, metrics, http: reqwest::Client::new() })
}

/// Waits until the gateway verifies a token of the first key (keys are
/// fetched in the background at start).
async fn wait_for_keys(gateway: &Running, token: &str) -> Result<()> {
    wait_until("the first key fetch", || async {
        let response =
            gateway.http.get(format!("{}/api/cart", gateway.base)).bearer_auth(token).send().await?;
        Ok(response.status() == StatusCode::OK)
    })
    .await
}

async fn wait_until<F, Fut>(what: &str, condition: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    wait_until_within(what, WAIT, condition).await
}

async fn wait_until_within<F, Fut>(what: &str, wait: Duration, mut condition: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    let mut delay = Duration::from_millis(20);
    loop {
        if condition().await? {
            return Ok(());
        }
        ensure!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

fn token(signing: &SigningKey, kid: &str, alg: &str, role: &str, exp_offset: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    let header = json!({"alg": alg, "typ": "JWT", "kid": kid});
    let claims = json!({
        "iss": "commerce-auth", "aud": "commerce", "sub": Uuid::new_v4(), "email": "shopper@example.com",
        "role": role, "iat": now, "nbf": now - 5, "exp": now + exp_offset, "jti": Uuid::new_v4(),
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = signing.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

fn prefix() -> String {
    format!("commerce:gateway-test:{}", Uuid::new_v4())
}

async fn problem(response: reqwest::Response) -> Result<(StatusCode, reqwest::header::HeaderMap, Value)> {
    let status = response.status();
    let headers = response.headers().clone();
    let content_type = header(&headers, "content-type").unwrap_or_default().to_owned();
    let body: Value = response.json().await.context("a JSON body")?;
    ensure!(content_type == "application/problem+json", "content type {content_type} for {status}: {body}");
    ensure!(body["status"] == status.as_u16(), "status member {} vs {status}", body["status"]);
    ensure!(body["type"].is_string() && body["title"].is_string() && body["detail"].is_string(), "{body}");
    Ok((status, headers, body))
}

fn pointers(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|errors| errors.iter().filter_map(|e| e["pointer"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// A header's value as text; `None` when absent or not visible ASCII.
fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether a response's `RateLimit-Policy` names the rule `name`.
fn names_policy(headers: &reqwest::header::HeaderMap, name: &str) -> bool {
    header(headers, "ratelimit-policy").unwrap_or_default().contains(name)
}

/// Sets the gateway's HTTP and admin listeners to free loopback ports (for
/// `commerce_gateway::serve`, which binds them itself) and returns them.
fn fixed_ports(config: &mut Config) -> Result<(SocketAddr, SocketAddr)> {
    config.http.addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    config.admin.addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    Ok((config.http.addr, config.admin.addr))
}

impl Backends {
    /// A valid access token for `role`, signed with auth's key `k1`.
    fn token(&self, role: &str) -> String {
        token(&self.signing, "k1", "EdDSA", role, 300)
    }
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path))
    }

    /// The rate-limit rules and backend the admin API reports.
    async fn rate_limit_rules(&self, admin: &str) -> Result<Value> {
        Ok(self.get("/api/admin/ratelimits").bearer_auth(admin).send().await?.json().await?)
    }
}

/// One test's fake backends; dropping it stops them and every gateway
/// started on them.
struct Fixture {
    shutdown: CancellationToken,
    backends: Backends,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Fixture {
    async fn start() -> Result<Self> {
        let shutdown = CancellationToken::new();
        let backends = start_backends(&shutdown).await?;
        Ok(Self { shutdown, backends })
    }

    fn config(&self, redis_url: &str, prefix: &str, rules_file: Option<PathBuf>) -> Config {
        config(&self.backends.peers, redis_url, prefix, rules_file)
    }

    async fn gateway(&self, config: Config) -> Result<Running> {
        start_gateway(config, &self.shutdown).await
    }

    /// Two gateways on the real Redis with one key prefix (and rules file):
    /// two replicas of one deployment.
    async fn replicas(&self, rules_file: Option<PathBuf>) -> Result<(Running, Running)> {
        let shared_prefix = prefix();
        let first = self.gateway(self.config(&redis_url(), &shared_prefix, rules_file.clone())).await?;
        let second = self.gateway(self.config(&redis_url(), &shared_prefix, rules_file)).await?;
        Ok((first, second))
    }

    /// Two replicas sharing Redis, once both have their keys and apply the
    /// `products-tight` rule of `rules` through Redis.
    async fn limiting_replicas(&self, rules: &RulesFile) -> Result<(Running, Running)> {
        let (first, second) = self.replicas(rules.path()).await?;
        let admin = self.backends.token("admin");
        for gateway in [&first, &second] {
            wait_for_keys(gateway, &admin).await?;
            wait_until("Redis and the rules on both gateways", || async {
                let body = gateway.rate_limit_rules(&admin).await?;
                let loaded = body["rules"]
                    .as_array()
                    .is_some_and(|rules| rules.iter().any(|r| r["name"] == "products-tight"));
                Ok(loaded && body["backend"] == "redis")
            })
            .await?;
        }
        Ok((first, second))
    }
}

/// One gateway on the real Redis, with its keys loaded, and a customer token.
struct Harness {
    fixture: Fixture,
    gateway: Running,
    customer: String,
}

async fn harness(rules_file: Option<PathBuf>) -> Result<Harness> {
    require_redis().await?;
    let fixture = Fixture::start().await?;
    let gateway = fixture.gateway(fixture.config(&redis_url(), &prefix(), rules_file)).await?;
    let customer = fixture.backends.token("customer");
    wait_for_keys(&gateway, &customer).await?;
    Ok(Harness { fixture, gateway, customer })
}

/// A rate-limit rules file, removed when dropped (also when a test fails).
struct RulesFile(PathBuf);

impl RulesFile {
    fn new(rules: &str) -> Result<Self> {
        let file = Self(std::env::temp_dir().join(format!("gateway-rules-{}.yaml", Uuid::new_v4())));
        file.write(rules)?;
        Ok(file)
    }

    fn write(&self, rules: &str) -> Result<()> {
        std::fs::write(&self.0, rules).with_context(|| format!("write {}", self.0.display()))
    }

    fn path(&self) -> Option<PathBuf> {
        Some(self.0.clone())
    }
}

impl Drop for RulesFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn products_rule(burst: u32) -> String {
    format!(
        "rules:\n  - name: products-tight\n    match: {{path: /api/products, methods: [GET]}}\n    key: ip\n    rate: 1\n    period: 1m\n    burst: {burst}\n"
    )
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn malformed_json_unknown_fields_bad_quantities_and_wrong_content_types_are_problems() -> Result<()> {
    let h = harness(None).await?;
    let url = h.gateway.url("/api/cart/items");
    let post = |body: &'static str, content_type: &'static str| {
        h.gateway
            .http
            .post(&url)
            .bearer_auth(&h.customer)
            .header("content-type", content_type)
            .body(body)
            .send()
    };

    let (status, _, body) = problem(post("{\"product_id\": ", "application/json").await?).await?;
    assert_eq!(status, 400);
    assert!(body["type"].as_str().unwrap_or_default().ends_with("malformed-json"), "{body}");

    let unknown = r#"{"product_id":"6a1f0a4e-5a0b-4c36-9b67-2c3a1d5f0001","quantity":1,"colour":"red"}"#;
    let (status, _, body) = problem(post(unknown, "application/json").await?).await?;
    assert_eq!((status, pointers(&body)), (StatusCode::BAD_REQUEST, vec!["/colour".to_owned()]), "{body}");

    let negative = r#"{"product_id":"6a1f0a4e-5a0b-4c36-9b67-2c3a1d5f0001","quantity":-3}"#;
    let (status, _, body) = problem(post(negative, "application/json").await?).await?;
    assert_eq!((status, pointers(&body)), (StatusCode::BAD_REQUEST, vec!["/quantity".to_owned()]), "{body}");

    let not_uuid = r#"{"product_id":"mug","quantity":1}"#;
    let (status, _, body) = problem(post(not_uuid, "application/json").await?).await?;
    assert_eq!(
        (status, pointers(&body)),
        (StatusCode::BAD_REQUEST, vec!["/product_id".to_owned()]),
        "{body}"
    );

    let (status, _, _) = problem(post(r#"{"quantity":1}"#, "text/plain").await?).await?;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // The cart refuses an unknown product with FailedPrecondition.
    let unknown_product = r#"{"product_id":"00000000-0000-4000-8000-000000000000","quantity":1}"#;
    let (status, _, body) = problem(post(unknown_product, "application/json").await?).await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    let ok = r#"{"product_id":"6a1f0a4e-5a0b-4c36-9b67-2c3a1d5f0001","quantity":2}"#;
    assert_eq!(post(ok, "application/json").await?.status(), StatusCode::OK);

    // Unknown product id on a read: the catalog's NotFound.
    let response =
        h.gateway.http.get(format!("{}/api/products/{}", h.gateway.base, Uuid::new_v4())).send().await?;
    assert_eq!(problem(response).await?.0, StatusCode::NOT_FOUND);
    let response = h.gateway.get("/api/products/not-a-uuid").send().await?;
    let (status, _, body) = problem(response).await?;
    assert_eq!((status, pointers(&body)), (StatusCode::BAD_REQUEST, vec!["path:id".to_owned()]));
    let response = h.gateway.get("/api/products?page_size=1000").send().await?;
    let (status, _, body) = problem(response).await?;
    assert_eq!((status, pointers(&body)), (StatusCode::BAD_REQUEST, vec!["query:page_size".to_owned()]));

    // An unavailable peer is a 503 with Retry-After, never a 500.
    let response = h.gateway.get(&format!("/api/products/{FLAKY_PRODUCT}")).send().await?;
    let (status, headers, _) = problem(response).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));

    // A peer slower than the client deadline (2 s here) is a 504.
    let response = h.gateway.get(&format!("/api/products/{SLOW_PRODUCT}")).send().await?;
    let (status, _, body) = problem(response).await?;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    Ok(())
}

#[tokio::test]
async fn oversized_bodies_get_413_whether_declared_or_streamed() -> Result<()> {
    let h = harness(None).await?;
    let big = format!(r#"{{"product_id":"{KNOWN_PRODUCT}","quantity":1,"pad":"{}"}}"#, "x".repeat(4096));
    let response = h
        .gateway
        .http
        .post(h.gateway.url("/api/cart/items"))
        .bearer_auth(&h.customer)
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await?;
    assert_eq!(problem(response).await?.0, StatusCode::PAYLOAD_TOO_LARGE);

    // Chunked, with no Content-Length: caught while reading.
    let addr = h.gateway.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await?;
    let mut request = format!(
        "POST /api/cart/items HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        h.customer
    );
    request.push_str(&format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len()));
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut answer)).await??;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("content-type: application/problem+json"), "{answer}");
    Ok(())
}

#[tokio::test]
async fn missing_expired_tampered_and_foreign_algorithm_tokens_get_401_with_a_bearer_challenge() -> Result<()>
{
    let h = harness(None).await?;
    let url = h.gateway.url("/api/cart");
    let signing = &h.fixture.backends.signing;
    let expired = token(signing, "k1", "EdDSA", "customer", -600);
    let mut tampered = h.fixture.backends.token("customer");
    let admin_claims =
        URL_SAFE_NO_PAD.encode(json!({"iss": "commerce-auth", "aud": "commerce", "sub": Uuid::nil(), "email": "x@y.z", "role": "admin", "iat": 0, "nbf": 0, "exp": 9_999_999_999_i64, "jti": Uuid::nil()}).to_string());
    let parts: Vec<String> = tampered.split('.').map(str::to_owned).collect();
    tampered = format!("{}.{admin_claims}.{}", parts[0], parts[2]);
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("expired", Some(expired)),
        ("tampered", Some(tampered)),
        (
            "alg none",
            Some(format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#), parts[1])),
        ),
        ("HS256", Some(token(signing, "k1", "HS256", "customer", 300))),
        ("RS256", Some(token(signing, "k1", "RS256", "customer", 300))),
        ("other key", Some(token(&SigningKey::from_bytes(&[3; 32]), "k1", "EdDSA", "customer", 300))),
        ("garbage", Some("not.a.jwt".to_owned())),
    ];
    for (case, bearer) in cases {
        let mut request = h.gateway.http.get(&url);
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        let (status, headers, body) = problem(request.send().await?).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{case}: {body}");
        let challenge = header(&headers, "www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Bearer"), "{case}: {challenge:?}");
    }
    let response = h.gateway.http.get(&url).header("authorization", "Basic dTpw").send().await?;
    assert_eq!(problem(response).await?.0, StatusCode::UNAUTHORIZED);
    Ok(())
}

#[test]
fn the_read_cache_settles_longer_than_the_catalog_takes_to_invalidate_its_own_cache() {
    assert!(commerce_gateway::catalog_cache::SETTLE_AFTER_CHANGE > commerce_catalog::cache::OP_TIMEOUT);
}

#[tokio::test]
async fn product_reads_are_cached_until_the_catalog_version_moves_or_this_gateway_writes() -> Result<()> {
    let h = harness(None).await?;
    let catalog = &h.fixture.backends.catalog;
    let reads = || catalog.product_reads.load(Ordering::SeqCst);
    let path = format!("/api/products/{KNOWN_PRODUCT}");
    let read = || async {
        let response = h.gateway.get(&path).send().await?;
        ensure!(response.status() == StatusCode::OK, "GET {path}: {}", response.status());
        ensure!(header(response.headers(), "content-type") == Some("application/json"));
        Ok(response.json::<Value>().await?)
    };
    // Reads that reach the catalog, out of two in a row.
    let reaching = || async {
        let before = reads();
        read().await?;
        read().await?;
        Ok::<usize, anyhow::Error>(reads() - before)
    };
    let uncached = read().await?;
    // Once the first version check has answered.
    wait_until("reads come from the cache", || async { Ok(reaching().await? == 0) }).await?;
    assert_eq!(read().await?, uncached, "a cached answer is the catalog's answer");

    // A write through any catalog replica moves the version: reads reach the
    // catalog again within a poll interval, then are cached anew.
    catalog.version.fetch_add(1, Ordering::SeqCst);
    wait_until("a read after the version moved reaches the catalog", || async { Ok(reaching().await? > 0) })
        .await?;
    wait_until("cached anew", || async { Ok(reaching().await? == 0) }).await?;

    // A write through this gateway: its writer's next read is not served
    // from the cache, whether or not a version check has seen the write.
    let admin = h.fixture.backends.token("admin");
    let response = h
        .gateway
        .http
        .patch(h.gateway.url(&path.replace("/api/products", "/api/admin/products")))
        .bearer_auth(&admin)
        .json(&json!({"name": "Big mug"}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let before = reads();
    read().await?;
    assert_eq!(reads(), before + 1, "the read after a write reaches the catalog");

    // No version check succeeds any more: past the staleness bound (500 ms
    // here) every read reaches the catalog.
    wait_until("cached again after the write", || async { Ok(reaching().await? == 0) }).await?;
    catalog.version_unavailable.store(true, Ordering::SeqCst);
    wait_until("reads bypass the cache", || async { Ok(reaching().await? == 2) }).await?;
    let metrics = h.gateway.metrics.encode()?;
    for outcome in ["hit", "miss", "bypass"] {
        let line = format!("commerce_gateway_catalog_cache_lookups_total{{outcome=\"{outcome}\"}}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    Ok(())
}

#[tokio::test]
async fn roles_gate_admin_and_courier_routes() -> Result<()> {
    let h = harness(None).await?;
    let admin = h.fixture.backends.token("admin");
    let courier = h.fixture.backends.token("courier");
    let url = h.gateway.url("/api/admin/ratelimits");

    let (status, _, _) = problem(h.gateway.http.get(&url).bearer_auth(&h.customer).send().await?).await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = problem(h.gateway.http.get(&url).bearer_auth(&courier).send().await?).await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = problem(h.gateway.http.get(&url).send().await?).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let response = h.gateway.http.get(&url).bearer_auth(&admin).send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    let rules: Value = response.json().await?;
    assert!(
        rules["rules"].as_array().is_some_and(|rules| rules.iter().any(|r| r["name"] == "default-ip")),
        "{rules}"
    );

    // A courier route refuses a customer before touching shipping.
    let status_url = format!("{}/api/shipments/{}/status", h.gateway.base, Uuid::new_v4());
    let body = json!({"status": "picked_up"});
    let response = h.gateway.http.post(&status_url).bearer_auth(&h.customer).json(&body).send().await?;
    assert_eq!(problem(response).await?.0, StatusCode::FORBIDDEN);

    // An admin passes the role check on a catalog write (the fake answers).
    let response = h
        .gateway
        .http
        .post(h.gateway.url("/api/admin/categories"))
        .bearer_auth(&admin)
        .json(&json!({"name": "Mugs", "slug": "mugs"}))
        .send()
        .await?;
    assert_eq!(problem(response).await?.0, StatusCode::CONFLICT, "AlreadyExists maps to 409");
    Ok(())
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_and_invented_key_ids_do_not_hammer_auth() -> Result<()> {
    let h = harness(None).await?;
    let rotated = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    h.fixture.backends.auth.publish("k2", &rotated)?;
    let new_token = token(&rotated, "k2", "EdDSA", "customer", 300);
    let url = h.gateway.url("/api/cart");
    // Within the minimum refresh interval of the first fetch the kid stays
    // unknown; after it, one refresh finds it.
    wait_until("the rotated key to be accepted", || async {
        Ok(h.gateway.http.get(&url).bearer_auth(&new_token).send().await?.status() == StatusCode::OK)
    })
    .await?;
    let fetches = h.fixture.backends.auth.fetches.load(Ordering::SeqCst);
    for _ in 0..5 {
        let invented = token(&rotated, &format!("bogus-{}", Uuid::new_v4()), "EdDSA", "customer", 300);
        let (status, _, _) = problem(h.gateway.http.get(&url).bearer_auth(&invented).send().await?).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let after = h.fixture.backends.auth.fetches.load(Ordering::SeqCst);
    assert!(after <= fetches + 1, "five invented kids caused {} fetches", after - fetches);
    Ok(())
}

#[tokio::test]
async fn a_burst_beyond_the_limit_gets_429_with_retry_after_and_ratelimit_headers() -> Result<()> {
    let rules = RulesFile::new(&products_rule(3))?;
    let h = harness(rules.path()).await?;
    let url = h.gateway.url("/api/products");
    wait_until("the rules file to load", || async {
        Ok(names_policy(h.gateway.http.get(&url).send().await?.headers(), "products-tight"))
    })
    .await?;
    // The wait above spent at least one request; spend the rest of the burst.
    let mut last_allowed = None;
    let mut refused = None;
    for _ in 0..5 {
        let response = h.gateway.http.get(&url).send().await?;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), StatusCode::OK);
        last_allowed = Some(response.headers().clone());
    }
    let allowed = last_allowed.context("at least one more request fits the burst")?;
    let state = header(&allowed, "ratelimit").unwrap_or_default();
    assert!(state.contains("\"products-tight\";r=0;t="), "{state}");
    let (status, headers, body) = problem(refused.context("the burst ran out within five requests")?).await?;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 =
        header(&headers, "retry-after").and_then(|v| v.parse().ok()).context("Retry-After")?;
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let policy = header(&headers, "ratelimit-policy").unwrap_or_default();
    assert!(policy.contains("\"products-tight\";q=1;w=60"), "{policy}");
    assert!(body["detail"].as_str().unwrap_or_default().contains("products-tight"), "{body}");
    Ok(())
}

#[tokio::test]
async fn two_gateways_sharing_redis_share_one_limit() -> Result<()> {
    require_redis().await?;
    let fixture = Fixture::start().await?;
    let rules = RulesFile::new(&products_rule(4))?;
    let (first, second) = fixture.limiting_replicas(&rules).await?;
    let get = |gateway: &Running| gateway.get("/api/products").send();
    let statuses = vec![
        get(&first).await?.status(),
        get(&second).await?.status(),
        get(&first).await?.status(),
        get(&second).await?.status(),
        get(&first).await?.status(),
        get(&second).await?.status(),
    ];
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 429, 429]
            .map(|code| StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT)),
        "a burst of 4 holds across both gateways"
    );
    Ok(())
}

#[tokio::test]
async fn concurrent_requests_to_two_gateways_get_exactly_the_burst_through() -> Result<()> {
    require_redis().await?;
    let fixture = Fixture::start().await?;
    let burst = 10;
    let rules = RulesFile::new(&products_rule(burst))?;
    let (first, second) = fixture.limiting_replicas(&rules).await?;
    // Sixty at once, thirty per gateway: they reach Redis in batches, and
    // the batches must decide as sixty single checks would.
    let mut requests = tokio::task::JoinSet::new();
    for index in 0..60 {
        let gateway = if index % 2 == 0 { &first } else { &second };
        let request = gateway.get("/api/products");
        requests.spawn(async move { request.send().await.map(|response| response.status()) });
    }
    let mut statuses = Vec::new();
    while let Some(status) = requests.join_next().await {
        statuses.push(status??);
    }
    let allowed = statuses.iter().filter(|status| **status == StatusCode::OK).count();
    let refused = statuses.iter().filter(|status| **status == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((allowed, refused), (burst as usize, 60 - burst as usize), "{statuses:?}");
    Ok(())
}

/// The `commerce_gateway_ratelimit_leased_total` counter of `gateway`.
fn leased(gateway: &Running) -> Result<u64> {
    let metrics = gateway.metrics.encode()?;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("commerce_gateway_ratelimit_leased_total "))
        .context("no leased counter")?
        .trim()
        .parse()
        .context("leased counter")
}

/// A rule with a large burst leases tokens: most requests are decided
/// without Redis, yet no more than the burst gets through, one replica or
/// two, one request at a time or sixty at once. Tokens a lease did not spend
/// in time are lost, so a little less may get through.
#[tokio::test]
async fn leased_tokens_never_let_more_than_the_burst_through_across_two_gateways() -> Result<()> {
    require_redis().await?;
    let fixture = Fixture::start().await?;
    let burst = 80;
    let rules = RulesFile::new(&products_rule(burst))?;
    let (first, second) = fixture.limiting_replicas(&rules).await?;

    // One at a time on the first gateway: 60 of the 80.
    let mut remaining = Vec::new();
    for _ in 0..60 {
        let response = first.get("/api/products").send().await?;
        assert_eq!(response.status(), StatusCode::OK);
        let state = header(response.headers(), "ratelimit").unwrap_or_default().to_owned();
        let r: u64 = state
            .split(", ")
            .find_map(|policy| policy.strip_prefix("\"products-tight\";r="))
            .and_then(|rest| rest.split(';').next())
            .and_then(|r| r.parse().ok())
            .with_context(|| format!("no r= in {state:?}"))?;
        remaining.push(r);
    }
    // (A token refills each minute: r may stay, never grow.)
    assert!(remaining.windows(2).all(|pair| pair[1] <= pair[0]), "r never grows: {remaining:?}");
    assert!(remaining[0] < u64::from(burst), "{remaining:?}");
    let from_leases = leased(&first)?;
    assert!(from_leases >= 20, "only {from_leases} of 60 requests were decided from leases");

    // Then sixty at once on both: at most the 20 left get through.
    let mut requests = tokio::task::JoinSet::new();
    for index in 0..60 {
        let gateway = if index % 2 == 0 { &first } else { &second };
        let request = gateway.get("/api/products");
        requests.spawn(async move { request.send().await.map(|response| response.status()) });
    }
    let mut allowed = 0;
    while let Some(status) = requests.join_next().await {
        let status = status??;
        assert!([StatusCode::OK, StatusCode::TOO_MANY_REQUESTS].contains(&status), "{status}");
        allowed += usize::from(status == StatusCode::OK);
    }
    assert!(allowed <= 20, "{allowed} of the 20 tokens left got through");
    Ok(())
}

#[tokio::test]
async fn with_redis_unreachable_the_local_limiter_still_limits_and_metrics_say_so() -> Result<()> {
    let fixture = Fixture::start().await?;
    let rules = RulesFile::new(&products_rule(2))?;
    // Port 1 on loopback: connection refused at once.
    let gateway = fixture.gateway(fixture.config("redis://127.0.0.1:1", &prefix(), rules.path())).await?;
    let url = gateway.url("/api/products");
    wait_until("the rules file to load", || async {
        let response = gateway.http.get(&url).send().await?;
        Ok(response.status() == StatusCode::TOO_MANY_REQUESTS
            || names_policy(response.headers(), "products-tight"))
    })
    .await?;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(gateway.http.get(&url).send().await?.status());
    }
    assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    let metrics = gateway.metrics.encode()?;
    assert!(metrics.contains("commerce_gateway_ratelimit_fallback 1"), "{metrics}");
    assert!(metrics.contains("commerce_gateway_ratelimit_limited_total"), "{metrics}");
    Ok(())
}

#[tokio::test]
async fn a_changed_rules_file_applies_without_restart() -> Result<()> {
    let rules = RulesFile::new(&products_rule(1000))?;
    let h = harness(rules.path()).await?;
    let admin = h.fixture.backends.token("admin");
    let burst_of = |name: &'static str| {
        let (gateway, admin) = (&h.gateway, admin.clone());
        async move {
            let body = gateway.rate_limit_rules(&admin).await?;
            Ok::<_, anyhow::Error>(body["rules"].as_array().and_then(|rules| {
                rules.iter().find(|rule| rule["name"] == name).and_then(|rule| rule["burst"].as_u64())
            }))
        }
    };
    wait_until("the first rules", || async { Ok(burst_of("products-tight").await? == Some(1000)) }).await?;
    rules.write(&products_rule(1))?;
    wait_until("the changed rules", || async { Ok(burst_of("products-tight").await? == Some(1)) }).await?;
    let url = h.gateway.url("/api/products");
    let statuses =
        [h.gateway.http.get(&url).send().await?.status(), h.gateway.http.get(&url).send().await?.status()];
    assert_eq!(statuses[1], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");

    // A broken file keeps the last good rules: once the reloader has read
    // it (it counts the failure), the rules are still the last good ones.
    rules.write("rules: [ {name: oops")?;
    wait_until("the reloader to read the broken file", || async {
        Ok(h.gateway.metrics.encode()?.contains("commerce_gateway_ratelimit_rules_file_errors_total 1"))
    })
    .await?;
    assert_eq!(burst_of("products-tight").await?, Some(1));
    Ok(())
}

#[tokio::test]
async fn rules_stored_in_redis_reach_every_gateway() -> Result<()> {
    require_redis().await?;
    let fixture = Fixture::start().await?;
    let (first, second) = fixture.replicas(None).await?;
    let admin = fixture.backends.token("admin");
    wait_for_keys(&first, &admin).await?;
    wait_for_keys(&second, &admin).await?;
    let rule =
        json!({"match": {"path": "/api/categories"}, "key": "user", "rate": 1, "period": "1h", "burst": 1});
    let rule_url = first.url("/api/admin/ratelimits/categories-by-user");
    wait_until("Redis to connect", || async {
        let response = first.http.put(&rule_url).bearer_auth(&admin).json(&rule).send().await?;
        Ok(response.status() == StatusCode::OK)
    })
    .await?;
    wait_until("the stored rule on the second gateway", || async {
        let body = second.rate_limit_rules(&admin).await?;
        Ok(body["rules"].as_array().is_some_and(|rules| {
            rules.iter().any(|r| r["name"] == "categories-by-user" && r["source"] == "redis")
        }))
    })
    .await?;
    let customer = fixture.backends.token("customer");
    let categories = |token: &str| second.get("/api/categories").bearer_auth(token).send();
    assert_eq!(categories(&customer).await?.status(), StatusCode::OK);
    assert_eq!(categories(&customer).await?.status(), StatusCode::TOO_MANY_REQUESTS);
    // Keyed by user: another user still has quota.
    let other = fixture.backends.token("customer");
    assert_eq!(categories(&other).await?.status(), StatusCode::OK);
    let response = first.http.delete(&rule_url).bearer_auth(&admin).send().await?;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    Ok(())
}

#[tokio::test]
async fn the_openapi_document_parses_and_every_route_it_lists_is_served() -> Result<()> {
    let h = harness(None).await?;
    let document: Value = h.gateway.get("/api/openapi.json").send().await?.json().await?;
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().context("paths")?;
    assert_eq!(
        paths.values().map(|item| item.as_object().map_or(0, |ops| ops.len())).sum::<usize>(),
        commerce_gateway::routes::ROUTES.len()
    );
    for (method, path) in commerce_gateway::routes::ROUTES {
        assert!(
            document["paths"][path][method.to_ascii_lowercase()].is_object(),
            "{method} {path} undocumented"
        );
        let concrete = path
            .replace("{name}", "some-rule")
            .replace(['{', '}'], "")
            .replace("product_id", &Uuid::nil().to_string());
        let concrete = concrete.replace("/id", &format!("/{}", Uuid::nil()));
        let request = h.gateway.http.request(method.parse()?, format!("{}{concrete}", h.gateway.base));
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        assert!(
            !text.contains("/no-route") && !text.contains("/method-not-allowed"),
            "{method} {concrete}: {status} {text}"
        );
    }
    // And an unknown route is a problem too.
    let response = h.gateway.get("/api/nothing-here").send().await?;
    assert_eq!(problem(response).await?.0, StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test]
async fn request_ids_are_echoed_and_traceparent_reaches_the_grpc_service() -> Result<()> {
    let h = harness(None).await?;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = h
        .gateway
        .http
        .get(h.gateway.url(&format!("/api/products/{KNOWN_PRODUCT}")))
        .header("x-request-id", "req-123")
        .header("traceparent", traceparent)
        .header("origin", "https://shop.example")
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(response.headers(), "x-request-id"), Some("req-123"));
    assert_eq!(header(response.headers(), "access-control-allow-origin"), Some("https://shop.example"));
    let product: Value = response.json().await?;
    assert_eq!(product["price"], json!({"currency": "EUR", "amount_minor": 1299}));
    let seen =
        h.fixture.backends.catalog.last_traceparent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    let seen = seen.context("the catalog got a traceparent")?;
    assert!(seen.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{seen}");
    assert_ne!(seen, traceparent, "the gateway sends a child span");

    // A generated id is echoed and names the problem instance.
    let response = h.gateway.get("/api/cart").send().await?;
    let id = header(response.headers(), "x-request-id").context("generated id")?.to_owned();
    let (_, _, body) = problem(response).await?;
    assert_eq!(body["instance"], format!("urn:request:{id}"));
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[tokio::test]
async fn serve_runs_the_api_and_the_admin_endpoints_and_stops_on_shutdown() -> Result<()> {
    require_redis().await?;
    let fixture = Fixture::start().await?;
    let mut config = fixture.config(&redis_url(), &prefix(), None);
    let (http_addr, admin_addr) = fixed_ports(&mut config)?;
    let server_shutdown = CancellationToken::new();
    let server = tokio::spawn(commerce_gateway::serve(config, server_shutdown.clone()));
    let client = reqwest::Client::new();

    wait_until("readiness", || async {
        Ok(matches!(client.get(format!("http://{admin_addr}/readyz")).send().await, Ok(r) if r.status() == StatusCode::OK))
    })
    .await?;
    assert_eq!(client.get(format!("http://{admin_addr}/healthz")).send().await?.status(), StatusCode::OK);
    let response = client.get(format!("http://{http_addr}/api/products")).send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("ratelimit"), "allowed responses carry RateLimit too");

    // CORS preflight for the configured origin.
    let preflight = client
        .request(reqwest::Method::OPTIONS, format!("http://{http_addr}/api/orders"))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,idempotency-key,content-type")
        .send()
        .await?;
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(header(preflight.headers(), "access-control-allow-origin"), Some("https://shop.example"));
    let foreign = client
        .get(format!("http://{http_addr}/api/products"))
        .header("origin", "https://evil.example")
        .send()
        .await?;
    assert!(!foreign.headers().contains_key("access-control-allow-origin"));

    let metrics = client.get(format!("http://{admin_addr}/metrics")).send().await?.text().await?;
    for name in
        ["commerce_gateway_ratelimit_fallback", "commerce_gateway_http_requests_total", "commerce_build_info"]
    {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }

    server_shutdown.cancel();
    tokio::time::timeout(WAIT, server).await.context("serve stops after shutdown")???;
    Ok(())
}

/// Until the gateway holds one of auth's keys it is not ready, and a request
/// with a bearer token gets 503 (the token may be fine), never 401.
#[tokio::test]
async fn until_auth_publishes_a_key_the_gateway_is_unready_and_bearer_requests_get_503() -> Result<()> {
    require_redis().await?;
    let shutdown = CancellationToken::new();
    let _cancel = shutdown.clone().drop_guard();
    let auth_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let backends = start_backends_but_auth(auth_addr, &shutdown).await?;
    let mut config = config(&backends.peers, &redis_url(), &prefix(), None);
    let (http_addr, admin_addr) = fixed_ports(&mut config)?;
    // The refused key fetches must not open auth's circuit breaker, which
    // would hold the recovery back for longer than the test waits.
    config.client.breaker_failures = 1000;
    tokio::spawn(commerce_gateway::serve(config, shutdown.clone()));
    let client = reqwest::Client::new();
    let readyz = format!("http://{admin_addr}/readyz");
    let cart = format!("http://{http_addr}/api/cart");
    let customer = backends.token("customer");

    // Auth not reachable: the HTTP listener is up, but the gateway is not ready.
    wait_until("the HTTP listener", || async {
        Ok(client.get(&cart).send().await.is_ok_and(|r| r.status() == StatusCode::UNAUTHORIZED))
    })
    .await?;
    let response = client.get(&readyz).send().await?;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await?;
    let keys_check = |body: &Value| {
        body["checks"].as_array().and_then(|checks| checks.iter().find(|c| c["name"] == "auth-keys").cloned())
    };
    let check = keys_check(&body).context("an auth-keys check")?;
    assert_eq!(check["ready"], false, "{body}");
    assert!(check["reason"].as_str().is_some_and(|r| r.contains("signing keys")), "{body}");
    let unavailable = |detail_part: &'static str| {
        let (client, cart, customer) = (client.clone(), cart.clone(), customer.clone());
        async move {
            let (status, headers, body) =
                problem(client.get(&cart).bearer_auth(&customer).send().await?).await?;
            ensure!(status == StatusCode::SERVICE_UNAVAILABLE, "{status}: {body}");
            ensure!(headers.contains_key("retry-after"), "no Retry-After: {headers:?}");
            ensure!(!headers.contains_key("www-authenticate"), "a 503 must not challenge the token");
            ensure!(
                body["type"].as_str().is_some_and(|t| t.ends_with("/authentication-unavailable")),
                "{body}"
            );
            let detail = body["detail"].as_str().unwrap_or_default();
            ensure!(!detail.contains("GetPublicKeys"), "the fetch error stays out of the detail: {detail}");
            Ok(detail.contains(detail_part))
        }
    };
    assert!(unavailable("signing keys").await?, "the detail names the missing keys");

    // Auth answers but publishes no key yet: still the gateway's problem.
    serve_grpc(
        TcpListener::bind(auth_addr).await?,
        AuthServiceServer::new(backends.auth.clone()),
        shutdown.clone(),
    )?;
    wait_until("auth to answer with no keys", || unavailable("publishes no usable signing keys")).await?;
    assert_eq!(client.get(&readyz).send().await?.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Auth publishes its key: the refresher alone makes the gateway ready
    // (no request needed), within its longest retry delay (10 s).
    backends.auth.publish("k1", &backends.signing)?;
    wait_until_within("readiness once auth has a key", 2 * WAIT, || async {
        Ok(client.get(&readyz).send().await?.status() == StatusCode::OK)
    })
    .await?;
    let response = client.get(&cart).bearer_auth(&customer).send().await?;
    assert_eq!(response.status(), StatusCode::OK, "{}", response.text().await?);
    Ok(())
}

/// A TCP forwarder to Redis that the test can cut and restore, as if Redis
/// went away and came back. Cutting closes every forwarded connection.
struct RedisProxy {
    port: u16,
    target: String,
    cut: CancellationToken,
}

impl RedisProxy {
    async fn start(target: String) -> Result<Self> {
        let port = free_port()?;
        let proxy = Self { port, target, cut: CancellationToken::new() };
        proxy.listen().await?;
        Ok(proxy)
    }

    async fn listen(&self) -> Result<()> {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await?;
        let (target, cut) = (self.target.clone(), self.cut.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = cut.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut inbound, _)) = accepted else { return };
                let (target, cut) = (target.clone(), cut.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        () = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Ok(())
    }

    fn cut(&mut self) {
        self.cut.cancel();
    }

    async fn restore(&mut self) -> Result<()> {
        self.cut = CancellationToken::new();
        self.listen().await
    }
}

#[tokio::test]
async fn losing_redis_mid_run_falls_back_and_recovers_when_it_returns() -> Result<()> {
    require_redis().await?;
    let fixture = Fixture::start().await?;
    let target = redis_url().trim_start_matches("redis://").trim_end_matches('/').to_owned();
    let mut proxy = RedisProxy::start(target).await?;
    let url = format!("redis://127.0.0.1:{}", proxy.port);
    let gateway = fixture.gateway(fixture.config(&url, &prefix(), None)).await?;
    let fallback = |expected: &'static str| {
        let (http, base, metrics) = (gateway.http.clone(), gateway.base.clone(), gateway.metrics.clone());
        async move {
            // Each request runs a limit check, which notices the change.
            let status = http.get(format!("{base}/api/categories")).send().await?.status();
            ensure!(status == StatusCode::OK, "{status}");
            Ok(metrics.encode()?.contains(&format!("commerce_gateway_ratelimit_fallback {expected}")))
        }
    };
    wait_until("limits shared through Redis", || fallback("0")).await?;
    proxy.cut();
    wait_until("the fallback after Redis went away", || fallback("1")).await?;
    proxy.restore().await?;
    wait_until("Redis again after it came back", || fallback("0")).await?;
    let metrics = gateway.metrics.encode()?;
    let errors = sample(&metrics, "commerce_gateway_ratelimit_redis_errors_total");
    assert!(
        errors.is_some_and(|count| count >= 1.0),
        "the failed checks were counted ({errors:?}): {metrics}"
    );
    Ok(())
}

/// The value of the metric sample named exactly `name` in a text exposition.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (sample, value) = line.split_once(' ')?;
        (sample == name).then(|| value.trim().parse().ok()).flatten()
    })
}

#[tokio::test]
async fn password_guessing_from_one_ip_is_limited_by_the_auth_ip_rule() -> Result<()> {
    require_redis().await?;
    let fixture = Fixture::start().await?;
    let mut config = fixture.config(&redis_url(), &prefix(), None);
    config.rate_limit.auth_per_minute = 6;
    config.rate_limit.auth_burst = 3;
    let gateway = fixture.gateway(config).await?;
    // The limiter starts on its in-process fallback (gauge 1) until its
    // first Redis answer; a guess counted there and the rest in Redis would
    // get one guess too many through.
    wait_until("limits shared through Redis", || {
        let (http, base, metrics) = (gateway.http.clone(), gateway.base.clone(), gateway.metrics.clone());
        async move {
            let status = http.get(format!("{base}/api/categories")).send().await?.status();
            ensure!(status == StatusCode::OK, "{status}");
            Ok(metrics.encode()?.contains("commerce_gateway_ratelimit_fallback 0"))
        }
    })
    .await?;
    let guess = json!({"email": "victim@example.com", "password": "guess"});
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let response = gateway.http.post(gateway.url("/api/auth/login")).json(&guess).send().await?;
        statuses.push(response.status().as_u16());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            let policy = header(response.headers(), "ratelimit-policy").unwrap_or_default().to_owned();
            assert!(policy.contains("\"auth-login-ip\""), "{policy}");
            assert!(response.headers().contains_key("retry-after"));
        }
    }
    // The burst of three reaches auth (which refuses the password); the rest
    // never leave the gateway.
    assert_eq!(statuses, [401, 401, 401, 429, 429, 429]);
    // Other routes from the same IP are not held back by the login rule.
    assert_eq!(gateway.get("/api/products").send().await?.status(), StatusCode::OK);
    Ok(())
}
