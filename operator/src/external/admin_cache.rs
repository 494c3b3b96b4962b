//! One Kafka admin client per distinct bootstrap-servers value, created on
//! first use, shared by every later reconcile, and evicted once no reconcile
//! has used it for [`MAX_IDLE`].
//!
//! A librdkafka client is heavy: its own threads (main, background, one per
//! broker), buffers and connections. The operator used to create one per
//! reconcile (through `commerce_platform::events::ensure_topics`), which set
//! all of that up and tore it down again for every reconcile of every stack,
//! with a connection handshake and a cold metadata fetch each time. Stacks
//! that share brokers (the usual case: one Kafka per cluster) now share one
//! client.
//!
//! Eviction is by idle time, not by looking for the stacks that reference a
//! value: every live stack is reconciled at least every
//! [`RESYNC`](crate::reconcile::RESYNC) (a failing one at least every
//! [`MAX_DELAY`](crate::reconcile::backoff::MAX_DELAY)), and each reconcile
//! that reaches Kafka uses its client; a client that none used for several
//! of those periods belongs to a stack that was deleted, paused, or moved to
//! other brokers. Idle time needs no list of stacks (the cache lives below
//! the reconciler, which sees one stack at a time), and a paused stack's
//! client going is harmless: it is created again on its next use. Without
//! eviction, a client whose brokers went away would keep reconnecting with
//! librdkafka's backoff until the process exits. Expired clients are dropped
//! on every use of the cache and by [`AdminCache::evict_idle`] (which the
//! periodic topic check calls), so a cache nobody uses still shrinks.
//! Dropping a client here frees it once the last reconcile holding a clone
//! is done with it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a client may go unused before it is evicted: three resync
/// periods, so a live stack (reconciled at least every 600 s, a failing one
/// at least every 300 s) never loses its client between two reconciles.
pub const MAX_IDLE: Duration = Duration::from_secs(3 * 600);

/// A client and when a reconcile last asked for it.
#[derive(Debug)]
struct Entry<C> {
    client: C,
    last_used: Instant,
}

/// Clients of type `C` keyed by bootstrap-servers string.
#[derive(Debug)]
pub struct AdminCache<C> {
    /// Bootstrap servers, exactly as the stack's endpoints give them (the
    /// same brokers listed in another order get a client of their own).
    clients: Mutex<HashMap<String, Entry<C>>>,
    /// Idle time after which a client is evicted ([`MAX_IDLE`] by default).
    max_idle: Duration,
}

impl<C> Default for AdminCache<C> {
    fn default() -> Self {
        AdminCache { clients: Mutex::new(HashMap::new()), max_idle: MAX_IDLE }
    }
}

impl<C: Clone> AdminCache<C> {
    /// A cache that evicts clients unused for `max_idle`.
    pub fn with_max_idle(max_idle: Duration) -> Self {
        AdminCache { clients: Mutex::new(HashMap::new()), max_idle }
    }

    /// The client for `brokers`, created by `create` on first use; marks it
    /// used now. A failed creation is not remembered, so the next reconcile
    /// tries again.
    ///
    /// The lock is held while `create` runs: creating a client only sets up
    /// librdkafka's state (it connects in the background), so this is quick,
    /// and two reconciles starting together cannot create two clients.
    pub fn get_or_create<E>(&self, brokers: &str, create: impl FnOnce(&str) -> Result<C, E>) -> Result<C, E> {
        self.get_or_create_at(brokers, Instant::now(), create)
    }

    /// [`get_or_create`](Self::get_or_create) at `now`.
    fn get_or_create_at<E>(
        &self,
        brokers: &str,
        now: Instant,
        create: impl FnOnce(&str) -> Result<C, E>,
    ) -> Result<C, E> {
        let mut clients = self.lock();
        evict(&mut clients, now, self.max_idle);
        if let Some(entry) = clients.get_mut(brokers) {
            entry.last_used = now;
            return Ok(entry.client.clone());
        }
        let client = create(brokers)?;
        clients.insert(brokers.to_owned(), Entry { client: client.clone(), last_used: now });
        Ok(client)
    }

    /// The client for `brokers` if one exists, without marking it used: for
    /// the periodic topic check, which must not keep a client alive that no
    /// reconcile needs.
    pub fn peek(&self, brokers: &str) -> Option<C> {
        self.lock().get(brokers).map(|entry| entry.client.clone())
    }

    /// The bootstrap values that have a client.
    pub fn brokers(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Drops the clients unused for longer than the cache's idle limit;
    /// returns their bootstrap values.
    pub fn evict_idle(&self) -> Vec<String> {
        self.evict_idle_at(Instant::now())
    }

    fn evict_idle_at(&self, now: Instant) -> Vec<String> {
        evict(&mut self.lock(), now, self.max_idle)
    }

    /// How many clients exist.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no client exists yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry<C>>> {
        self.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Removes the entries of `clients` idle for longer than `max_idle` at
/// `now`; returns their keys.
fn evict<C>(clients: &mut HashMap<String, Entry<C>>, now: Instant, max_idle: Duration) -> Vec<String> {
    let expired: Vec<String> = clients
        .iter()
        .filter(|(_, entry)| now.saturating_duration_since(entry.last_used) > max_idle)
        .map(|(brokers, _)| brokers.clone())
        .collect();
    for brokers in &expired {
        clients.remove(brokers);
    }
    expired
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A stand-in client that says which creation made it.
    #[derive(Clone, Debug, PartialEq)]
    struct FakeClient(usize);

    fn counting(created: &AtomicUsize) -> impl FnOnce(&str) -> Result<FakeClient, String> + '_ {
        |_| Ok(FakeClient(created.fetch_add(1, Ordering::SeqCst)))
    }

    #[test]
    fn two_reconciles_against_the_same_brokers_create_one_client() {
        let cache = AdminCache::default();
        let created = AtomicUsize::new(0);
        let first = cache.get_or_create("kafka:9092", counting(&created)).unwrap();
        let second = cache.get_or_create("kafka:9092", counting(&created)).unwrap();
        assert_eq!(created.load(Ordering::SeqCst), 1);
        assert_eq!(first, second);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn each_distinct_bootstrap_value_gets_its_own_client() {
        let cache = AdminCache::default();
        let created = AtomicUsize::new(0);
        let a = cache.get_or_create("a:9092", counting(&created)).unwrap();
        let b = cache.get_or_create("b:9092", counting(&created)).unwrap();
        let a_again = cache.get_or_create("a:9092", counting(&created)).unwrap();
        assert_ne!(a, b);
        assert_eq!(a, a_again);
        assert_eq!((created.load(Ordering::SeqCst), cache.len()), (2, 2));
    }

    #[test]
    fn a_failed_creation_is_not_remembered_and_is_tried_again() {
        let cache = AdminCache::<FakeClient>::default();
        let refused = cache.get_or_create("kafka:9092", |_| Err::<FakeClient, _>("no memory"));
        assert_eq!(refused, Err("no memory"));
        assert!(cache.is_empty());
        let created = AtomicUsize::new(0);
        assert!(cache.get_or_create("kafka:9092", counting(&created)).is_ok());
        assert_eq!(created.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn reconciles_racing_on_many_threads_still_create_one_client() {
        let cache = Arc::new(AdminCache::default());
        let created = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (cache, created) = (cache.clone(), created.clone());
                std::thread::spawn(move || cache.get_or_create("kafka:9092", counting(&created)).unwrap())
            })
            .collect();
        let clients: Vec<FakeClient> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(created.load(Ordering::SeqCst), 1);
        assert!(clients.iter().all(|c| *c == clients[0]));
    }

    #[test]
    fn a_client_no_reconcile_used_for_longer_than_the_idle_limit_is_evicted_and_others_stay() {
        let cache = AdminCache::with_max_idle(Duration::from_secs(60));
        let created = AtomicUsize::new(0);
        let start = Instant::now();
        cache.get_or_create_at("old:9092", start, counting(&created)).unwrap();
        cache.get_or_create_at("live:9092", start, counting(&created)).unwrap();
        // The live value is used again; the old one never is.
        cache.get_or_create_at("live:9092", start + Duration::from_secs(50), counting(&created)).unwrap();
        assert_eq!(cache.evict_idle_at(start + Duration::from_secs(60)), Vec::<String>::new(), "not yet");
        assert_eq!(cache.evict_idle_at(start + Duration::from_secs(61)), ["old:9092"]);
        assert_eq!(cache.brokers(), ["live:9092"]);
        // Peeking (the topic check) does not keep a client alive.
        assert!(cache.peek("live:9092").is_some());
        assert_eq!(cache.evict_idle_at(start + Duration::from_secs(111)), ["live:9092"]);
        assert!(cache.is_empty());
        assert_eq!(created.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn an_evicted_value_used_again_gets_a_new_client_and_a_use_evicts_the_expired_others() {
        let cache = AdminCache::with_max_idle(Duration::from_secs(60));
        let created = AtomicUsize::new(0);
        let start = Instant::now();
        let first = cache.get_or_create_at("a:9092", start, counting(&created)).unwrap();
        cache.get_or_create_at("b:9092", start, counting(&created)).unwrap();
        let later = start + Duration::from_secs(120);
        // Using b evicts a (and b itself, expired, is created again).
        let b_again = cache.get_or_create_at("b:9092", later, counting(&created)).unwrap();
        assert_eq!(b_again, FakeClient(2));
        assert_eq!(cache.brokers(), ["b:9092"]);
        let second = cache.get_or_create_at("a:9092", later, counting(&created)).unwrap();
        assert_ne!(first, second, "a new client for a value used again");
        assert_eq!(created.load(Ordering::SeqCst), 4);
    }
}
