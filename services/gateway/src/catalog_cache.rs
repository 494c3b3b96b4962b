//! The read cache of the catalog's public answers: `GET /api/products/{id}`
//! and `GET /api/products` pages, kept as the JSON bodies sent, so that a
//! repeated read costs a map lookup instead of a gRPC call to the catalog,
//! its Redis lookup and a JSON rendering (together about two thirds of the
//! gateway's work per product read before this cache).
//!
//! Correctness comes from the catalog's version
//! (`CatalogService.GetCatalogVersion`): a counter that every committed
//! change to products moves, in the same transaction, whichever catalog
//! replica made it. A poller asks for it every `--catalog-cache-poll-interval`
//! and remembers the answer with the instant its request was *sent*. An
//! answer is stored tagged with the version known before it was fetched, and
//! served only while:
//! - that is still the version, and the check that confirmed it was sent
//!   less than `--catalog-cache-max-staleness` ago: every change committed
//!   before that check was sent is in the version it read, and any later
//!   change moves it at the next check. So what is served is never older
//!   than that bound, normally about one poll interval, and the cache is
//!   bypassed (every read goes to the catalog) while the checks fail;
//! - no catalog write went through this gateway since that check was sent:
//!   after a write here (admin routes), the cache waits for a check sent
//!   after it, so a client reading its own write through the same replica
//!   sees it at once.
//!
//! The catalog answers reads from its own Redis cache, which it invalidates
//! right *after* the commit that moved the version. An answer fetched in
//! between would be the old one under the new version, kept until the next
//! write. So nothing is stored until [`SETTLE_AFTER_CHANGE`] after a new
//! version was first seen (reads then go to the catalog), longer than the
//! catalog's bound on that invalidation; and no entry is kept longer than
//! [`ENTRY_TTL`], so that an invalidation the catalog lost (its Redis down
//! mid-write; its own entries then live up to their TTL) is not kept
//! longer here than there by more than that.
//!
//! Staleness bound, stated: a committed product change is served by no
//! gateway after about one poll interval plus the time to the next check
//! (about 100-200 ms by default), and in every case after
//! `--catalog-cache-max-staleness` (1 s), except for an invalidation the
//! catalog itself lost; through the gateway that made it, at once.
//!
//! Errors (404, 503, ...) are never cached. Memory is bounded by
//! `--catalog-cache-size` bytes of bodies (the least used are evicted); a
//! version change empties the cache at once rather than waiting for that.
//! `commerce_gateway_catalog_cache_lookups{outcome}` counts hits, misses
//! and bypasses.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use commerce_platform::admin::Metrics;
use commerce_platform::discovery::Peers;
use commerce_proto::catalog::v1 as pb;
use commerce_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use commerce_topology::Service;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::config::CatalogCacheArgs;
use crate::problem::Problem;

/// What a cached answer answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// `GET /api/products/{id}`.
    Product(Uuid),
    /// `GET /api/products` with these filters: the exact `ListProducts`
    /// request the gateway would send.
    Page(PageKey),
}

/// The fields of a `ListProducts` request (the proto message has no `Hash`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageKey {
    pub page_size: i32,
    pub page_token: String,
    pub category_id: String,
    pub query: String,
    pub currency: String,
    pub min_price: Option<i64>,
    pub max_price: Option<i64>,
}

impl PageKey {
    /// The key of `request`.
    pub fn of(request: &pb::ListProductsRequest) -> Self {
        let currency = request.min_price.as_ref().or(request.max_price.as_ref());
        Self {
            page_size: request.page_size,
            page_token: request.page_token.clone(),
            category_id: request.category_id.clone(),
            query: request.query.clone(),
            currency: currency.map(|money| money.currency_code.clone()).unwrap_or_default(),
            min_price: request.min_price.as_ref().map(|money| money.units),
            max_price: request.max_price.as_ref().map(|money| money.units),
        }
    }
}

/// One cached body and the catalog version it was read under.
#[derive(Debug, Clone)]
struct Entry {
    version: i64,
    body: Bytes,
    stored_at: Instant,
}

/// How long after a new catalog version is first seen before answers are
/// stored under it: longer than the catalog takes, at most, to invalidate
/// its own Redis cache after a commit (`commerce_catalog::cache::OP_TIMEOUT`,
/// 200 ms; a test checks the order), so that no answer the catalog read
/// from its cache before that invalidation is kept. Writes are rare, so the
/// reads sent to the catalog meanwhile cost nothing that matters.
pub const SETTLE_AFTER_CHANGE: Duration = Duration::from_millis(250);
/// Longest an answer is kept, even under an unchanged version (see the
/// module docs); a refill a minute per hot product costs nothing.
pub const ENTRY_TTL: Duration = Duration::from_secs(60);

/// Weighs entries by what they hold, so the size flag bounds bytes.
#[derive(Debug, Clone)]
struct ByBytes;

/// Bookkeeping per entry besides its body (key, version, map slot).
const ENTRY_OVERHEAD_BYTES: u64 = 128;

impl quick_cache::Weighter<Key, Entry> for ByBytes {
    fn weight(&self, key: &Key, entry: &Entry) -> u64 {
        let key_bytes = match key {
            Key::Product(_) => 0,
            Key::Page(page) => page.page_token.len() + page.query.len() + page.category_id.len(),
        };
        ENTRY_OVERHEAD_BYTES + (key_bytes + entry.body.len()) as u64
    }
}

/// A typical cached body (a product is ~400 bytes, a page of twenty ~8 KiB),
/// only for sizing the map up front.
const TYPICAL_ENTRY_BYTES: u64 = 1024;

/// What the poller last learnt, and the last write through this gateway.
#[derive(Debug, Clone, Copy, Default)]
struct View {
    confirmed: Option<Confirmed>,
    /// When the last catalog write through this gateway ended.
    written_at: Option<Instant>,
}

/// The catalog's version as the last successful check read it.
#[derive(Debug, Clone, Copy)]
struct Confirmed {
    version: i64,
    /// When that check was sent.
    checked_at: Instant,
    /// When a check first answered this version.
    seen_since: Instant,
}

/// The outcome of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The body to send.
    Hit(Bytes),
    /// Not cached: fetch, then [`CatalogCache::store`] under this version.
    Miss(i64),
    /// The version is not confirmed now: fetch and do not store.
    Bypass,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LookupLabels {
    /// `hit`, `miss` or `bypass` (version not confirmed, or cache off).
    outcome: &'static str,
}

/// The cache; one per gateway, shared by the handlers and the poller.
pub struct CatalogCache {
    /// `None` when `--catalog-cache-size` is 0.
    entries: Option<quick_cache::sync::Cache<Key, Entry, ByBytes>>,
    view: RwLock<View>,
    poll_interval: Duration,
    max_staleness: Duration,
    hits: Counter,
    misses: Counter,
    bypasses: Counter,
}

impl std::fmt::Debug for CatalogCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogCache")
            .field("view", &*self.view.read().unwrap_or_else(std::sync::PoisonError::into_inner))
            .field("entries", &self.entries.as_ref().map(quick_cache::sync::Cache::len))
            .finish_non_exhaustive()
    }
}

impl CatalogCache {
    /// An empty cache that knows no version yet (every read bypasses it
    /// until the poller's first answer).
    pub fn new(args: &CatalogCacheArgs, metrics: &Metrics) -> Self {
        let lookups = Family::<LookupLabels, Counter>::default();
        metrics.register(
            "commerce_gateway_catalog_cache_lookups",
            "Catalog reads by cache outcome (bypass: the catalog version is not confirmed, or the cache is off)",
            lookups.clone(),
        );
        let counter = |outcome| lookups.get_or_create(&LookupLabels { outcome }).clone();
        let entries = (args.cache_size > 0).then(|| {
            let items = usize::try_from(args.cache_size / TYPICAL_ENTRY_BYTES).unwrap_or(usize::MAX).max(16);
            quick_cache::sync::Cache::with_weighter(items, args.cache_size, ByBytes)
        });
        Self {
            entries,
            view: RwLock::new(View::default()),
            poll_interval: args.poll_interval,
            max_staleness: args.max_staleness,
            hits: counter("hit"),
            misses: counter("miss"),
            bypasses: counter("bypass"),
        }
    }

    fn view(&self) -> View {
        *self.view.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The version answers may be served under at `now`, if any, and
    /// whether answers fetched now may be stored under it.
    fn usable_version(&self, now: Instant) -> Option<(i64, bool)> {
        let view = self.view();
        let confirmed = view.confirmed?;
        let fresh = now.saturating_duration_since(confirmed.checked_at) <= self.max_staleness;
        let after_own_writes = view.written_at.is_none_or(|written| confirmed.checked_at > written);
        let settled = now.saturating_duration_since(confirmed.seen_since) >= SETTLE_AFTER_CHANGE;
        (fresh && after_own_writes).then_some((confirmed.version, settled))
    }

    /// Looks `key` up.
    pub fn lookup(&self, key: &Key) -> Lookup {
        self.lookup_at(key, Instant::now())
    }

    fn lookup_at(&self, key: &Key, now: Instant) -> Lookup {
        let (Some(entries), Some((version, settled))) = (&self.entries, self.usable_version(now)) else {
            self.bypasses.inc();
            return Lookup::Bypass;
        };
        match entries.get(key) {
            Some(entry)
                if entry.version == version && now.saturating_duration_since(entry.stored_at) < ENTRY_TTL =>
            {
                self.hits.inc();
                Lookup::Hit(entry.body)
            }
            _ if settled => {
                self.misses.inc();
                Lookup::Miss(version)
            }
            _ => {
                self.bypasses.inc();
                Lookup::Bypass
            }
        }
    }

    /// Keeps `body`, fetched after a lookup that answered `Miss(version)`.
    pub fn store(&self, key: Key, version: i64, body: Bytes) {
        self.store_at(key, version, body, Instant::now());
    }

    fn store_at(&self, key: Key, version: i64, body: Bytes, now: Instant) {
        if let Some(entries) = &self.entries {
            entries.insert(key, Entry { version, body, stored_at: now });
        }
    }

    /// A catalog write went through this gateway (whatever its outcome: a
    /// write that timed out may still commit). Until a version check sent
    /// after this, nothing is served from the cache.
    pub fn written(&self) {
        let now = Instant::now();
        self.view.write().unwrap_or_else(std::sync::PoisonError::into_inner).written_at = Some(now);
    }

    /// Records a version read by a check sent at `sent_at` and answered at
    /// `received_at`. A change empties the cache (its entries could never
    /// be served again).
    fn confirm(&self, version: i64, sent_at: Instant, received_at: Instant) {
        let mut view = self.view.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = view.confirmed.filter(|confirmed| confirmed.version == version);
        // Checks run one at a time, so `sent_at` only grows.
        let seen_since = previous.map_or(received_at, |confirmed| confirmed.seen_since);
        view.confirmed = Some(Confirmed { version, checked_at: sent_at, seen_since });
        drop(view);
        if previous.is_none()
            && let Some(entries) = &self.entries
        {
            entries.clear();
        }
    }

    /// Cached entries (for tests).
    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, quick_cache::sync::Cache::len)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks the catalog's version every poll interval until `shutdown`.
    /// A failed check is only logged (once per outage): the answers go
    /// stale by themselves when checks stop confirming them.
    ///
    /// `peers` must be the poller's own: its failures must not open the
    /// circuit breaker that the shoppers' reads go through (the catalog may
    /// still serve those from its Redis while its database is away), and
    /// with checks every poll interval a retry would only delay the next.
    pub async fn run_poller(self: Arc<Self>, peers: Arc<Peers>, shutdown: CancellationToken) {
        if self.entries.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let sent_at = Instant::now();
            match self.check(&peers).await {
                Ok(version) => {
                    if failing {
                        tracing::info!(version, "catalog version confirmed again; read cache in use");
                        failing = false;
                    }
                    self.confirm(version, sent_at, Instant::now());
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(%error, "cannot check the catalog version; the read cache is bypassed until it can");
                        failing = true;
                    }
                }
            }
        }
    }

    /// One version check, bounded by the staleness limit (an answer later
    /// than that would be unusable anyway).
    async fn check(&self, peers: &Peers) -> Result<i64, String> {
        let channel = peers.channel(Service::Catalog).map_err(|error| error.to_string())?;
        let mut client = CatalogServiceClient::new(channel);
        let mut request = tonic::Request::new(pb::GetCatalogVersionRequest {});
        request.set_timeout(self.max_staleness);
        // Ten a second, the same every time: not exported as traces.
        let span = tracing::info_span!("catalog_version_check");
        commerce_platform::trace_context::start_unsampled(&span);
        client
            .get_catalog_version(request)
            .instrument(span)
            .await
            .map(|answer| answer.into_inner().version)
            .map_err(|status| format!("{}: {}", status.code(), status.message()))
    }
}

/// `value` as the JSON body [`axum::Json`] would send.
pub fn render<T: Serialize>(value: &T) -> Result<Bytes, Problem> {
    serde_json::to_vec(value).map(Bytes::from).map_err(|error| {
        tracing::error!(%error, "cannot render a catalog answer as JSON");
        Problem::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the answer could not be rendered",
        )
    })
}

/// A 200 with a rendered JSON body, headers as [`axum::Json`] sets them.
pub fn json_response(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(max_staleness: Duration) -> CatalogCache {
        let args = CatalogCacheArgs {
            cache_size: 1 << 20,
            poll_interval: Duration::from_millis(100),
            max_staleness,
        };
        CatalogCache::new(&args, &Metrics::new("gateway"))
    }

    fn product() -> Key {
        Key::Product(Uuid::from_u128(1))
    }

    fn body(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    #[test]
    fn nothing_is_served_before_the_first_version_check() {
        let cache = cache(Duration::from_secs(1));
        assert_eq!(cache.lookup(&product()), Lookup::Bypass);
    }

    #[test]
    fn an_answer_is_served_until_the_version_moves() {
        let cache = cache(Duration::from_secs(1));
        let t0 = Instant::now();
        cache.confirm(7, t0, t0);
        let t1 = t0 + SETTLE_AFTER_CHANGE;
        cache.confirm(7, t1, t1);
        assert_eq!(cache.lookup_at(&product(), t1), Lookup::Miss(7));
        cache.store_at(product(), 7, body("{\"price\":1}"), t1);
        assert_eq!(cache.lookup_at(&product(), t1), Lookup::Hit(body("{\"price\":1}")));

        // A write anywhere moves the version: the old answer is gone, and
        // nothing is stored until the catalog has surely dropped its own
        // copy.
        let t2 = t1 + Duration::from_millis(100);
        cache.confirm(8, t2, t2);
        assert!(cache.is_empty(), "a version change empties the cache");
        assert_eq!(cache.lookup_at(&product(), t2), Lookup::Bypass, "settling");
        let t3 = t2 + SETTLE_AFTER_CHANGE;
        cache.confirm(8, t3, t3);
        assert_eq!(cache.lookup_at(&product(), t3), Lookup::Miss(8));

        // An answer fetched under 8 but stored after the version moved on
        // (a read racing a write) is never served.
        cache.confirm(9, t3, t3);
        cache.store_at(product(), 8, body("{\"price\":2}"), t3);
        let t4 = t3 + SETTLE_AFTER_CHANGE;
        cache.confirm(9, t4, t4);
        assert_eq!(cache.lookup_at(&product(), t4), Lookup::Miss(9));
    }

    #[test]
    fn no_answer_is_kept_longer_than_its_lifetime() {
        let cache = cache(Duration::from_secs(1));
        let t0 = Instant::now();
        cache.confirm(1, t0, t0 - SETTLE_AFTER_CHANGE);
        cache.store_at(product(), 1, body("{}"), t0);
        let late = t0 + ENTRY_TTL;
        cache.confirm(1, late, late);
        assert_eq!(cache.lookup_at(&product(), late), Lookup::Miss(1), "refetched after its lifetime");
    }

    #[test]
    fn without_a_recent_check_answers_are_bypassed_however_fresh_they_were() {
        let max_staleness = Duration::from_secs(1);
        let cache = cache(max_staleness);
        let t0 = Instant::now();
        cache.confirm(1, t0, t0 - SETTLE_AFTER_CHANGE);
        cache.store_at(product(), 1, body("{}"), t0);
        assert!(matches!(cache.lookup_at(&product(), t0 + max_staleness), Lookup::Hit(_)));
        let late = t0 + max_staleness + Duration::from_millis(1);
        assert_eq!(cache.lookup_at(&product(), late), Lookup::Bypass, "checks stopped: the bound holds");
        cache.confirm(1, late, late);
        assert!(matches!(cache.lookup_at(&product(), late), Lookup::Hit(_)), "a check in time restores it");
    }

    #[test]
    fn after_a_write_through_this_gateway_only_a_later_check_reopens_the_cache() {
        let cache = cache(Duration::from_secs(60));
        let before = Instant::now();
        cache.confirm(1, before, before - SETTLE_AFTER_CHANGE);
        cache.store_at(product(), 1, body("{}"), before);
        cache.written();
        assert_eq!(cache.lookup(&product()), Lookup::Bypass, "own write: wait for a check");
        // A check sent before the write ended proves nothing about it.
        cache.confirm(1, before, before);
        assert_eq!(cache.lookup(&product()), Lookup::Bypass);
        let after = Instant::now() + Duration::from_millis(1);
        cache.confirm(2, after, after - SETTLE_AFTER_CHANGE);
        assert_eq!(cache.lookup_at(&product(), after), Lookup::Miss(2));
    }

    #[test]
    fn a_size_of_zero_turns_the_cache_off() {
        let args = CatalogCacheArgs {
            cache_size: 0,
            poll_interval: Duration::from_millis(100),
            max_staleness: Duration::from_secs(1),
        };
        let cache = CatalogCache::new(&args, &Metrics::new("gateway"));
        let now = Instant::now();
        cache.confirm(1, now, now - SETTLE_AFTER_CHANGE);
        cache.store(product(), 1, body("{}"));
        assert_eq!(cache.lookup(&product()), Lookup::Bypass);
    }

    #[test]
    fn page_keys_tell_every_filter_apart() {
        let request = pb::ListProductsRequest { page_size: 20, ..Default::default() };
        let money = |units| Some(commerce_proto::common::v1::Money { currency_code: "EUR".into(), units });
        let variants = [
            pb::ListProductsRequest { page_size: 10, ..request.clone() },
            pb::ListProductsRequest { page_token: "t".into(), ..request.clone() },
            pb::ListProductsRequest { category_id: "c".into(), ..request.clone() },
            pb::ListProductsRequest { query: "mug".into(), ..request.clone() },
            pb::ListProductsRequest { min_price: money(1), ..request.clone() },
            pb::ListProductsRequest { max_price: money(1), ..request.clone() },
        ];
        for variant in &variants {
            assert_ne!(PageKey::of(variant), PageKey::of(&request), "{variant:?}");
        }
        assert_eq!(PageKey::of(&request.clone()), PageKey::of(&request));
    }
}
