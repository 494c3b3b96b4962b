//! The Redis cache in front of the catalog, against the real Redis and
//! Postgres: reads are served from the cache, every write invalidates the
//! product and the listing pages, and a Redis that is missing or goes away
//! only makes the service read Postgres, without ever serving stale data
//! once it returns.
//!
//! Start the infrastructure with `bash e2e/scripts/infra.sh up postgres
//! redis`; an unreachable Redis fails the test with that hint.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use commerce_catalog::cache::product_key;
use commerce_catalog::{Cache, CatalogGrpc};
use commerce_platform::admin::Metrics;
use commerce_platform::readiness::Readiness;
use commerce_platform::redis::RedisArgs;
use commerce_proto::catalog::v1 as pb;
use commerce_proto::catalog::v1::catalog_service_server::CatalogService;
use commerce_proto::common::v1::Money;
use common::TestDatabase;
use redis::aio::ConnectionManager;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Request;
use uuid::Uuid;

/// Default of `COMMERCE_REDIS_URL` in `e2e/infra.env`.
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:56379";
/// How long a test waits for something it expects to happen.
const EVENTUALLY: Duration = Duration::from_secs(30);
/// How often a waiting test looks again.
const POLL: Duration = Duration::from_millis(50);

fn redis_url() -> String {
    std::env::var("COMMERCE_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned())
}

async fn connect(url: &str) -> anyhow::Result<ConnectionManager> {
    let args = RedisArgs::new(url.to_owned());
    tokio::time::timeout(
        Duration::from_secs(10),
        commerce_platform::redis::connect(&args, &Readiness::new(), &CancellationToken::new()),
    )
    .await
    .with_context(|| {
        format!("Redis is unreachable at {url}; start it with `bash e2e/scripts/infra.sh up redis`")
    })?
    .map_err(anyhow::Error::from)
}

fn eur(units: i64) -> Option<Money> {
    Some(Money { currency_code: "EUR".to_owned(), units })
}

/// A catalog with one category, and a cache under a prefix of its own.
struct Fixture {
    db: TestDatabase,
    grpc: CatalogGrpc,
    metrics: Metrics,
    prefix: String,
    category_id: String,
}

async fn fixture(manager: Option<ConnectionManager>) -> anyhow::Result<Fixture> {
    fixture_of_stack(manager, None).await
}

/// A fixture whose cache is built as `serve` builds it for the stack
/// prefix `stack` (`--redis-key-prefix`), or under a prefix of its own.
async fn fixture_of_stack(
    manager: Option<ConnectionManager>,
    stack: Option<&str>,
) -> anyhow::Result<Fixture> {
    let db = TestDatabase::create("catalog", &commerce_catalog::MIGRATOR).await?;
    let metrics = Metrics::new("catalog");
    let (prefix, cache) = match stack {
        Some(stack) => {
            (format!("{stack}:{}", commerce_catalog::cache::KEY_PREFIX), Cache::new(&metrics, stack))
        }
        None => {
            let prefix = format!("catalog-test-{}", Uuid::new_v4().simple());
            let cache = Cache::with_prefix(&metrics, &prefix);
            (prefix, cache)
        }
    };
    if let Some(manager) = manager {
        cache.set_connection(manager);
    }
    let grpc = CatalogGrpc::new(db.pool.clone(), cache);
    let category_id = CatalogService::create_category(
        &grpc,
        Request::new(pb::CreateCategoryRequest {
            name: "Tools".into(),
            slug: "tools".into(),
            parent_id: String::new(),
        }),
    )
    .await?
    .into_inner()
    .category
    .context("category")?
    .id;
    Ok(Fixture { db, grpc, metrics, prefix, category_id })
}

impl Fixture {
    async fn create(&self, sku: &str, name: &str, cents: i64) -> anyhow::Result<pb::Product> {
        let request = pb::CreateProductRequest {
            sku: sku.to_owned(),
            name: name.to_owned(),
            description: String::new(),
            category_id: self.category_id.clone(),
            price: eur(cents),
            active: true,
        };
        CatalogService::create_product(&self.grpc, Request::new(request))
            .await?
            .into_inner()
            .product
            .context("product")
    }

    async fn get(&self, id: &str) -> anyhow::Result<pb::Product> {
        CatalogService::get_product(&self.grpc, Request::new(pb::GetProductRequest { id: id.to_owned() }))
            .await?
            .into_inner()
            .product
            .context("product")
    }

    async fn list_names(&self) -> anyhow::Result<Vec<String>> {
        let page =
            CatalogService::list_products(&self.grpc, Request::new(pb::ListProductsRequest::default()))
                .await?
                .into_inner();
        Ok(page.products.into_iter().map(|product| product.name).collect())
    }

    async fn set_price(&self, product: &pb::Product, cents: i64) -> anyhow::Result<()> {
        let mut patch = product.clone();
        patch.price = eur(cents);
        CatalogService::update_product(
            &self.grpc,
            Request::new(pb::UpdateProductRequest {
                product: Some(patch),
                update_mask: Some(prost_types::FieldMask { paths: vec!["price".to_owned()] }),
            }),
        )
        .await?;
        Ok(())
    }

    /// Changes the database behind the service's back, so that a read that
    /// still shows the old state must come from the cache.
    async fn rename_behind_the_back(&self, id: &str, name: &str) -> anyhow::Result<()> {
        sqlx::query("UPDATE products SET name = $2 WHERE id = $1")
            .bind(Uuid::parse_str(id)?)
            .bind(name)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    fn count(&self, kind: &str, outcome: &str) -> anyhow::Result<u64> {
        let text = self.metrics.encode()?;
        let wanted =
            format!("commerce_catalog_cache_requests_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} ");
        Ok(text
            .lines()
            .find_map(|line| line.strip_prefix(&wanted))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0))
    }
}

#[tokio::test]
async fn two_stacks_sharing_one_redis_never_serve_each_others_cached_pages() -> anyhow::Result<()> {
    let tenant = format!("catalog-tenants-{}", Uuid::new_v4().simple());
    let shop_a = fixture_of_stack(Some(connect(&redis_url()).await?), Some(&format!("{tenant}.a"))).await?;
    let shop_b = fixture_of_stack(Some(connect(&redis_url()).await?), Some(&format!("{tenant}.b"))).await?;
    shop_a.create("A-1", "Only in shop a", 1500).await?;
    assert_eq!(shop_a.list_names().await?, ["Only in shop a"]);
    assert_eq!(shop_a.list_names().await?, ["Only in shop a"], "second read");
    assert!(shop_a.count("list", "hit")? >= 1, "shop a's page is cached");

    // The same request in the other shop: its own (empty) catalog, never
    // shop a's cached page, before and after it cached a page of its own.
    assert!(shop_b.list_names().await?.is_empty(), "shop b was served shop a's page");
    assert!(shop_b.list_names().await?.is_empty(), "shop b was served shop a's page");
    assert_eq!(shop_b.count("list", "hit")?, 1, "shop b's second read hits its own page");
    assert_eq!(shop_a.list_names().await?, ["Only in shop a"]);
    assert!(shop_a.prefix.starts_with(&format!("{tenant}.a:")), "{}", shop_a.prefix);
    shop_a.db.drop_database().await?;
    shop_b.db.drop_database().await
}

#[tokio::test]
async fn reads_are_cached_and_every_write_invalidates_the_product_and_the_listing() -> anyhow::Result<()> {
    let f = fixture(Some(connect(&redis_url()).await?)).await?;
    let hammer = f.create("T-1", "Hammer", 1500).await?;
    assert_eq!(f.get(&hammer.id).await?.name, "Hammer");
    assert_eq!(f.list_names().await?, ["Hammer"]);

    f.rename_behind_the_back(&hammer.id, "Sledgehammer").await?;
    assert_eq!(f.get(&hammer.id).await?.name, "Hammer", "served from the cache");
    assert_eq!(f.list_names().await?, ["Hammer"], "page served from the cache");
    assert!(f.count("product", "hit")? >= 1 && f.count("list", "hit")? >= 1);

    // A write through the service invalidates both.
    f.set_price(&hammer, 1700).await?;
    let fresh = f.get(&hammer.id).await?;
    assert_eq!((fresh.name.as_str(), fresh.price.clone()), ("Sledgehammer", eur(1700)));
    assert_eq!(f.list_names().await?, ["Sledgehammer"]);

    // Creating another product retires the cached page too.
    f.create("T-2", "Anvil", 9900).await?;
    assert_eq!(f.list_names().await?, ["Anvil", "Sledgehammer"]);

    // Deleting invalidates the product.
    f.get(&hammer.id).await?;
    CatalogService::delete_product(&f.grpc, Request::new(pb::DeleteProductRequest { id: hammer.id.clone() }))
        .await?;
    let gone =
        CatalogService::get_product(&f.grpc, Request::new(pb::GetProductRequest { id: hammer.id.clone() }))
            .await
            .expect_err("deleted");
    assert_eq!(gone.code(), tonic::Code::NotFound);
    assert_eq!(f.list_names().await?, ["Anvil"]);
    f.db.drop_database().await
}

#[tokio::test]
async fn without_redis_the_catalog_serves_from_postgres_and_counts_it() -> anyhow::Result<()> {
    let f = fixture(None).await?;
    let saw = f.create("T-1", "Saw", 2500).await?;
    assert_eq!(f.get(&saw.id).await?.name, "Saw");
    assert_eq!(f.list_names().await?, ["Saw"]);
    assert!(f.count("product", "disabled")? >= 1 && f.count("list", "disabled")? >= 1);
    f.db.drop_database().await
}

/// A TCP proxy in front of the real Redis that a test can cut, to make
/// Redis "go away" for the service without touching the shared server.
struct Proxy {
    addr: SocketAddr,
    accept: JoinHandle<()>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(addr: SocketAddr, upstream: String) -> anyhow::Result<Self> {
        // The port may still be held briefly by the previous proxy's
        // listener: retry the bind within a bound.
        let deadline = tokio::time::Instant::now() + EVENTUALLY;
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(error) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%error, "proxy port busy; retrying");
                    tokio::time::sleep(POLL).await;
                }
                Err(error) => return Err(error.into()),
            }
        };
        let addr = listener.local_addr()?;
        let connections = Arc::new(Mutex::new(Vec::new()));
        let tracked = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let connection = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tracked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(connection);
            }
        });
        Ok(Self { addr, accept, connections })
    }

    /// Closes the listener and every proxied connection.
    async fn stop(self) {
        self.accept.abort();
        let _ = self.accept.await;
        let connections =
            std::mem::take(&mut *self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for connection in connections {
            connection.abort();
            let _ = connection.await;
        }
    }
}

#[tokio::test]
async fn when_redis_goes_away_reads_fall_back_to_postgres_and_nothing_stale_is_served_after_it_returns()
-> anyhow::Result<()> {
    let url = redis_url();
    let upstream = url.trim_start_matches("redis://").trim_end_matches('/').to_owned();
    // Fail early and clearly if the real Redis is not there.
    let mut direct = connect(&url).await?;
    let proxy = Proxy::start("127.0.0.1:0".parse()?, upstream.clone()).await?;
    let proxy_addr = proxy.addr;
    let f = fixture(Some(connect(&format!("redis://{proxy_addr}")).await?)).await?;

    let chisel = f.create("T-1", "Chisel", 800).await?;
    assert_eq!(f.get(&chisel.id).await?.price, eur(800));
    let key = product_key(&f.prefix, Uuid::parse_str(&chisel.id)?);
    let cached: i64 = redis::cmd("EXISTS").arg(&key).query_async(&mut direct).await?;
    assert_eq!(cached, 1, "the product is cached");

    proxy.stop().await;
    // Reads and writes keep working, from Postgres.
    assert_eq!(f.get(&chisel.id).await?.price, eur(800));
    f.set_price(&chisel, 950).await?;
    assert_eq!(f.get(&chisel.id).await?.price, eur(950));
    assert_eq!(f.list_names().await?, ["Chisel"]);
    assert!(f.count("product", "error")? >= 1, "the fallback is counted");
    let still_cached: i64 = redis::cmd("EXISTS").arg(&key).query_async(&mut direct).await?;
    assert_eq!(
        still_cached, 1,
        "the stale entry is still in Redis while the invalidation could not reach it"
    );

    // Redis is back: the pending invalidation is replayed before anything
    // is read from the cache, so the old price is never served.
    let proxy = Proxy::start(proxy_addr, upstream).await?;
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    while f.count("product", "miss")? < 2 {
        assert_eq!(f.get(&chisel.id).await?.price, eur(950), "never the stale price");
        assert!(tokio::time::Instant::now() < deadline, "the cache did not come back within {EVENTUALLY:?}");
        tokio::time::sleep(POLL).await;
    }
    // Once back, the entry is cached again, with the fresh price.
    let bytes: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut direct).await?;
    assert_eq!(<pb::Product as prost::Message>::decode(bytes.as_slice())?.price, eur(950));
    assert_eq!(f.get(&chisel.id).await?.price, eur(950));
    proxy.stop().await;
    f.db.drop_database().await
}

#[tokio::test]
async fn a_read_that_raced_a_write_does_not_put_the_old_product_back() -> anyhow::Result<()> {
    let manager = connect(&redis_url()).await?;
    let metrics = Metrics::new("catalog");
    let prefix = format!("catalog-test-{}", Uuid::new_v4().simple());
    let cache = Cache::with_prefix(&metrics, &prefix);
    cache.set_connection(manager);
    let id = Uuid::new_v4();
    // A reader misses and goes to Postgres...
    let lookup = cache.product::<pb::Product>(id).await;
    assert!(lookup.value.is_none() && lookup.generation.is_some());
    // ...a writer commits and invalidates meanwhile...
    cache.invalidate(Some(id)).await;
    // ...and the reader's now outdated row must not be cached.
    let stale = pb::Product { id: id.to_string(), name: "old".to_owned(), ..Default::default() };
    cache.store_product(id, lookup.generation, &stale).await;
    let after = cache.product::<pb::Product>(id).await;
    assert!(after.value.is_none(), "the stale row was cached");
    // Without a racing write, the same sequence caches.
    cache.store_product(id, after.generation, &stale).await;
    assert_eq!(cache.product::<pb::Product>(id).await.value, Some(stale));
    Ok(())
}
