//! One Kafka admin client per distinct bootstrap-servers value, created on
//! first use and shared by every later reconcile.
//!
//! A librdkafka client is heavy: its own threads (main, background, one per
//! broker), buffers and connections. The operator used to create one per
//! reconcile (through `commerce_platform::events::ensure_topics`), which set
//! all of that up and tore it down again for every reconcile of every stack,
//! with a connection handshake and a cold metadata fetch each time. Stacks
//! that share brokers (the usual case: one Kafka per cluster) now share one
//! client.
//!
//! Entries are never evicted: there are as many as distinct bootstrap values
//! the process has reconciled, which in practice is a handful. A client whose
//! brokers went away keeps reconnecting with librdkafka's own backoff until
//! the process exits; a restart of the operator drops it.

use std::collections::HashMap;
use std::sync::Mutex;

/// Clients of type `C` keyed by bootstrap-servers string.
#[derive(Debug)]
pub struct AdminCache<C> {
    /// Bootstrap servers, exactly as the stack's endpoints give them (the
    /// same brokers listed in another order get a client of their own).
    clients: Mutex<HashMap<String, C>>,
}

impl<C> Default for AdminCache<C> {
    fn default() -> Self {
        AdminCache { clients: Mutex::new(HashMap::new()) }
    }
}

impl<C: Clone> AdminCache<C> {
    /// The client for `brokers`, created by `create` on first use. A failed
    /// creation is not remembered, so the next reconcile tries again.
    ///
    /// The lock is held while `create` runs: creating a client only sets up
    /// librdkafka's state (it connects in the background), so this is quick,
    /// and two reconciles starting together cannot create two clients.
    pub fn get_or_create<E>(&self, brokers: &str, create: impl FnOnce(&str) -> Result<C, E>) -> Result<C, E> {
        let mut clients = self.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = clients.get(brokers) {
            return Ok(client.clone());
        }
        let client = create(brokers)?;
        clients.insert(brokers.to_owned(), client.clone());
        Ok(client)
    }

    /// How many clients exist.
    pub fn len(&self) -> usize {
        self.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }

    /// Whether no client exists yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
}
