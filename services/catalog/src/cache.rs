//! Cache-aside in Redis for product reads and listing pages.
//!
//! Keys (all under `<redis key prefix>:`[`KEY_PREFIX`], e.g.
//! `default.shop:catalog:v1:`):
//! - `gen`: the list generation, a counter bumped by every write;
//! - `product:{id}`: one encoded `Product`;
//! - `list:{gen}:{fingerprint}`: one encoded `ListProductsResponse`, keyed by
//!   the generation it was read under, so that after any write no old page
//!   is ever looked up again (they expire unseen).
//!
//! Writers, after their transaction committed, delete the product's key and
//! bump the generation in one atomic pipeline. Readers store what they read
//! from Postgres only if the generation is still the one they saw before
//! reading (a Lua script checks and sets atomically), so a read racing a
//! write can never put the old row back after the write invalidated it.
//!
//! Redis is optional: when it is down (or never came up), every operation
//! fails fast (bounded by [`OP_TIMEOUT`]) and the service serves from
//! Postgres, counts the outcome in `commerce_catalog_cache_requests_total`
//! and logs the transition once. Invalidations that fail are remembered and
//! replayed before the next cache use, so nothing stale survives an outage
//! of this process's writes. The cache never affects readiness.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use commerce_platform::admin::Metrics;
use commerce_platform::readiness::Readiness;
use commerce_platform::redis::RedisArgs;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prost::Message;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Longest a cache operation may take before the request goes on without
/// it: Redis answers in well under a millisecond, so 200 ms means it is in
/// trouble, and a shopper should not wait longer for a cache.
pub const OP_TIMEOUT: Duration = Duration::from_millis(200);
/// Lifetime of a cached product: writes invalidate it explicitly, the TTL
/// only bounds memory and the damage of an invalidation lost elsewhere.
pub const PRODUCT_TTL: Duration = Duration::from_secs(10 * 60);
/// Lifetime of a cached page; pages of an old generation are never read,
/// this only reclaims their memory.
pub const LIST_TTL: Duration = Duration::from_secs(2 * 60);

/// Prefix of every key after the stack's: the service and a format version,
/// so that other users of the same Redis (cart, gateway) never collide with the catalog,
/// and a change of the cached encoding can start afresh under `v2`.
pub const KEY_PREFIX: &str = "catalog:v1";

/// Reads the generation and, with it, the entry `ARGV[1]` names
/// (`{gen}` in the name is replaced by the generation).
const READ_SCRIPT: &str = r"
local gen = redis.call('GET', KEYS[1]) or '0'
local key = string.gsub(ARGV[1], '{gen}', gen)
return {gen, redis.call('GET', key)}
";
/// Sets `ARGV[2]` to `ARGV[3]` (TTL `ARGV[4]` s) only if the generation is
/// still `ARGV[1]`.
const WRITE_SCRIPT: &str = r"
local gen = redis.call('GET', KEYS[1]) or '0'
if gen ~= ARGV[1] then return 0 end
redis.call('SET', ARGV[2], ARGV[3], 'EX', ARGV[4])
return 1
";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CacheLabels {
    /// `product` or `list`.
    kind: &'static str,
    /// `hit`, `miss`, `error` (Redis unavailable: served from Postgres) or
    /// `disabled` (not connected yet).
    outcome: &'static str,
}

/// What a cached read found.
#[derive(Debug)]
pub struct Lookup<T> {
    /// The cached value, on a hit.
    pub value: Option<T>,
    /// The generation seen; pass it back to `store_*` after reading from
    /// Postgres. `None` when Redis is unavailable (do not store).
    pub generation: Option<String>,
}

impl<T> Lookup<T> {
    fn unavailable() -> Self {
        Self { value: None, generation: None }
    }
}

/// The catalog's Redis cache. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    prefix: Arc<str>,
    connection: Arc<RwLock<Option<ConnectionManager>>>,
    /// Product ids whose invalidation failed, replayed when Redis is back.
    pending: Arc<Mutex<PendingInvalidation>>,
    degraded: Arc<AtomicBool>,
    requests: Family<CacheLabels, Counter>,
}

#[derive(Debug, Default)]
struct PendingInvalidation {
    products: HashSet<Uuid>,
    bump: bool,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("connected", &self.connection().is_some())
            .field("degraded", &self.degraded.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// A cache with no Redis yet (every read misses until
    /// [`set_connection`](Self::set_connection)) whose keys start with
    /// `<stack_prefix>:`[`KEY_PREFIX`]; the stack prefix comes from
    /// `--redis-key-prefix`, so stacks sharing one Redis share no entry.
    pub fn new(metrics: &Metrics, stack_prefix: &str) -> Self {
        Self::with_prefix(metrics, &format!("{stack_prefix}:{KEY_PREFIX}"))
    }

    /// A cache whose keys start with exactly `prefix` (tests sharing one Redis).
    pub fn with_prefix(metrics: &Metrics, prefix: &str) -> Self {
        let requests = Family::<CacheLabels, Counter>::default();
        metrics.register(
            "commerce_catalog_cache_requests",
            "Catalog cache lookups by kind and outcome (error = Redis unavailable, served from Postgres)",
            requests.clone(),
        );
        Self {
            prefix: prefix.into(),
            connection: Arc::new(RwLock::new(None)),
            pending: Arc::new(Mutex::new(PendingInvalidation::default())),
            degraded: Arc::new(AtomicBool::new(false)),
            requests,
        }
    }

    /// Uses `manager` from now on.
    pub fn set_connection(&self, manager: ConnectionManager) {
        *self.connection.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(manager);
    }

    /// Connects to Redis in the background (retrying until it answers or
    /// `shutdown`), so that a missing Redis never delays or blocks start-up.
    /// Redis' readiness check goes to a private registry: the cache is an
    /// optimization, not a dependency of readiness.
    pub fn connect_in_background(&self, args: RedisArgs, shutdown: CancellationToken) {
        let cache = self.clone();
        tokio::spawn(async move {
            let private_readiness = Readiness::new();
            match commerce_platform::redis::connect(&args, &private_readiness, &shutdown).await {
                Ok(manager) => cache.set_connection(manager),
                Err(error) => tracing::warn!(error = %error, "catalog cache stays disabled"),
            }
        });
    }

    fn connection(&self) -> Option<ConnectionManager> {
        self.connection.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn count(&self, kind: &'static str, outcome: &'static str) {
        self.requests.get_or_create(&CacheLabels { kind, outcome }).inc();
    }

    fn record_failure(&self, operation: &str, error: &str) {
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                operation,
                error,
                "Redis unavailable: serving the catalog from Postgres (degraded)"
            );
        }
    }

    fn record_success(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!("Redis answers again: catalog cache back in use");
        }
    }

    /// Runs `operation` on the connection within [`OP_TIMEOUT`], first
    /// replaying invalidations that failed earlier. `None` when Redis is not
    /// there (or a replay failed: then nothing cached may be trusted).
    async fn run<T, F, Fut>(&self, name: &str, operation: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let manager = self.connection()?;
        if !self.replay_pending(manager.clone()).await {
            return None;
        }
        match tokio::time::timeout(OP_TIMEOUT, operation(manager)).await {
            Ok(Ok(value)) => {
                self.record_success();
                Some(value)
            }
            Ok(Err(error)) => {
                self.record_failure(name, &error.to_string());
                None
            }
            Err(_) => {
                self.record_failure(name, "timed out");
                None
            }
        }
    }

    async fn replay_pending(&self, manager: ConnectionManager) -> bool {
        let (products, bump) = {
            let pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if pending.products.is_empty() && !pending.bump {
                return true;
            }
            (pending.products.iter().copied().collect::<Vec<_>>(), pending.bump)
        };
        if invalidate_on(manager, &self.prefix, &products, bump).await.is_ok() {
            let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for id in &products {
                pending.products.remove(id);
            }
            pending.bump = false;
            tracing::info!(products = products.len(), "replayed catalog cache invalidations");
            true
        } else {
            false
        }
    }

    async fn read(&self, kind: &'static str, key_template: String) -> Lookup<Vec<u8>> {
        if self.connection().is_none() {
            self.count(kind, "disabled");
            return Lookup::unavailable();
        }
        let found = self
            .run("read", |mut manager| async move {
                redis::Script::new(READ_SCRIPT)
                    .key(generation_key(&self.prefix))
                    .arg(key_template)
                    .invoke_async::<(String, Option<Vec<u8>>)>(&mut manager)
                    .await
            })
            .await;
        match found {
            Some((generation, Some(bytes))) => {
                self.count(kind, "hit");
                Lookup { value: Some(bytes), generation: Some(generation) }
            }
            Some((generation, None)) => {
                self.count(kind, "miss");
                Lookup { value: None, generation: Some(generation) }
            }
            None => {
                self.count(kind, "error");
                Lookup::unavailable()
            }
        }
    }

    async fn write(&self, generation: String, key: String, bytes: Vec<u8>, ttl: Duration) {
        let generation_key = generation_key(&self.prefix);
        self.run("write", |mut manager| async move {
            redis::Script::new(WRITE_SCRIPT)
                .key(generation_key)
                .arg(generation)
                .arg(key)
                .arg(bytes)
                .arg(ttl.as_secs())
                .invoke_async::<i64>(&mut manager)
                .await
        })
        .await;
    }

    /// Looks a product up.
    pub async fn product<T: Message + Default>(&self, id: Uuid) -> Lookup<T> {
        decode(self.read("product", product_key(&self.prefix, id)).await)
    }

    /// Stores a product read from Postgres under `generation` (from the
    /// lookup that missed).
    pub async fn store_product<T: Message>(&self, id: Uuid, generation: Option<String>, product: &T) {
        if let Some(generation) = generation {
            self.write(generation, product_key(&self.prefix, id), product.encode_to_vec(), PRODUCT_TTL).await;
        }
    }

    /// Looks a listing page up by its request fingerprint.
    pub async fn list<T: Message + Default>(&self, fingerprint: &str) -> Lookup<T> {
        decode(self.read("list", format!("{}:list:{{gen}}:{fingerprint}", self.prefix)).await)
    }

    /// Stores a page read from Postgres under `generation`.
    pub async fn store_list<T: Message>(&self, fingerprint: &str, generation: Option<String>, page: &T) {
        if let Some(generation) = generation {
            let key = format!("{}:list:{generation}:{fingerprint}", self.prefix);
            self.write(generation, key, page.encode_to_vec(), LIST_TTL).await;
        }
    }

    /// After a committed write: drops the product's entry (if any) and
    /// retires every cached page. If Redis is unavailable the invalidation
    /// is kept and replayed before the cache is used again.
    pub async fn invalidate(&self, product: Option<Uuid>) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            pending.products.extend(product);
            pending.bump = true;
        }
        if let Some(manager) = self.connection()
            && !self.replay_pending(manager).await
        {
            self.record_failure("invalidate", "invalidation failed; will replay");
        }
    }
}

/// Key of one cached product.
pub fn product_key(prefix: &str, id: Uuid) -> String {
    format!("{prefix}:product:{id}")
}

/// Key of the list generation counter.
pub fn generation_key(prefix: &str) -> String {
    format!("{prefix}:gen")
}

async fn invalidate_on(
    mut manager: ConnectionManager,
    prefix: &str,
    products: &[Uuid],
    bump: bool,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    for id in products {
        pipe.del(product_key(prefix, *id)).ignore();
    }
    if bump {
        pipe.incr(generation_key(prefix), 1).ignore();
    }
    match tokio::time::timeout(OP_TIMEOUT, pipe.query_async::<()>(&mut manager)).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from((redis::ErrorKind::IoError, "timed out"))),
    }
}

fn decode<T: Message + Default>(lookup: Lookup<Vec<u8>>) -> Lookup<T> {
    let value = lookup.value.and_then(|bytes| T::decode(bytes.as_slice()).ok());
    Lookup { value, generation: lookup.generation }
}
