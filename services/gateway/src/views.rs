//! Signed-in users' product views, told to the recommendation service in
//! batches (`RecommendationService.RecordViews`).
//!
//! A product page read by a signed-in user is a view. Sent one call per
//! read, views cost the recommendation service two statements and a commit
//! each and took half of the gateway's authenticated read throughput. Here a
//! view only updates a map in memory: the latest time of each (user,
//! product) pair, so a user reloading a page a thousand times is one view.
//! A task sends what the map holds every [`FLUSH_INTERVAL`], or sooner once
//! [`FLUSH_AT`] pairs wait, at most [`SEND_AT_MOST`] per call.
//!
//! Views are best effort, as before: "recently viewed" shows them within
//! about a second, and what cannot be kept is counted, not retried. When
//! [`MAX_PENDING`] pairs wait (the recommendation service is slow or away)
//! new pairs are dropped; a batch the service refused is dropped too; the
//! views still waiting when the gateway stops are sent once.
//! `commerce_gateway_product_views{outcome}` counts `sent`, `dropped` and
//! `failed` views.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use commerce_platform::admin::Metrics;
use commerce_platform::discovery::Peers;
use commerce_proto::recommendation::v1 as pb;
use commerce_proto::recommendation::v1::recommendation_service_client::RecommendationServiceClient;
use commerce_proto::time::timestamp;
use commerce_topology::Service;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often waiting views are sent.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Waiting pairs that have them sent before the interval ends.
pub const FLUSH_AT: usize = 500;
/// Most pairs waiting; more are dropped.
pub const MAX_PENDING: usize = 10_000;
/// Most views in one call (the service's limit).
pub const SEND_AT_MOST: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The views waiting to be sent, and their sender's counters.
#[derive(Debug)]
pub struct ProductViews {
    pending: Mutex<Pending>,
    wake: Notify,
    sent: Counter,
    dropped: Counter,
    failed: Counter,
}

#[derive(Debug, Default)]
struct Pending {
    /// The latest view of each product, by user.
    by_user: HashMap<String, HashMap<Uuid, DateTime<Utc>>>,
    /// Pairs in `by_user`.
    pairs: usize,
}

impl ProductViews {
    pub fn new(metrics: &Metrics) -> Self {
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        metrics.register(
            "commerce_gateway_product_views",
            "Signed-in users' product views by what became of them (sent to the recommendation service, \
             dropped because too many were waiting, failed because the service did not take them)",
            outcomes.clone(),
        );
        let counter = |outcome| outcomes.get_or_create(&OutcomeLabels { outcome }).clone();
        Self {
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            sent: counter("sent"),
            dropped: counter("dropped"),
            failed: counter("failed"),
        }
    }

    /// Notes that `user_id` viewed `product_id` now.
    pub fn record(&self, user_id: &str, product_id: Uuid) {
        let now = Utc::now();
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(at) = pending.by_user.get_mut(user_id).and_then(|products| products.get_mut(&product_id))
        {
            *at = now;
            return;
        }
        if pending.pairs >= MAX_PENDING {
            drop(pending);
            self.dropped.inc();
            return;
        }
        pending.by_user.entry(user_id.to_owned()).or_default().insert(product_id, now);
        pending.pairs += 1;
        if pending.pairs == FLUSH_AT {
            self.wake.notify_one();
        }
    }

    /// Drops the waiting views of `user_id` (whose data is being erased).
    pub fn forget(&self, user_id: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(products) = pending.by_user.remove(user_id) {
            pending.pairs -= products.len();
        }
    }

    /// Takes every waiting view.
    fn take(&self) -> Vec<pb::ProductView> {
        let taken =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let mut views = Vec::with_capacity(taken.pairs);
        for (user_id, products) in taken.by_user {
            views.extend(products.into_iter().map(|(product_id, at)| pb::ProductView {
                user_id: user_id.clone(),
                product_id: product_id.to_string(),
                viewed_at: Some(timestamp(at)),
            }));
        }
        views
    }

    /// Sends the waiting views every [`FLUSH_INTERVAL`] (or when
    /// [`FLUSH_AT`] wait) until `shutdown`, then once more.
    pub async fn run(self: Arc<Self>, peers: Arc<Peers>, shutdown: CancellationToken) {
        loop {
            let stopping = tokio::select! {
                () = shutdown.cancelled() => true,
                () = self.wake.notified() => false,
                () = tokio::time::sleep(FLUSH_INTERVAL) => false,
            };
            self.send(&peers).await;
            if stopping {
                return;
            }
        }
    }

    async fn send(&self, peers: &Peers) {
        let views = self.take();
        for chunk in views.chunks(SEND_AT_MOST) {
            let count = chunk.len() as u64;
            let mut client = match peers.channel(Service::Recommendation) {
                Ok(channel) => RecommendationServiceClient::new(channel),
                Err(error) => {
                    self.failed.inc_by(count);
                    tracing::warn!(%error, views = count, "no channel to the recommendation service");
                    continue;
                }
            };
            match client.record_views(pb::RecordViewsRequest { views: chunk.to_vec() }).await {
                Ok(_) => {
                    self.sent.inc_by(count);
                }
                Err(status) => {
                    self.failed.inc_by(count);
                    tracing::warn!(code = ?status.code(), message = status.message(), views = count, "the recommendation service did not take product views");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views() -> ProductViews {
        ProductViews::new(&Metrics::new("gateway"))
    }

    #[test]
    fn repeated_views_of_a_pair_wait_as_one_with_the_latest_time() {
        let views = views();
        let (kettle, lamp) = (Uuid::now_v7(), Uuid::now_v7());
        views.record("ada", kettle);
        let first = views.take();
        for _ in 0..1_000 {
            views.record("ada", kettle);
        }
        views.record("ada", lamp);
        views.record("bob", kettle);
        let mut taken: Vec<(String, String)> =
            views.take().into_iter().map(|view| (view.user_id, view.product_id)).collect();
        taken.sort();
        let mut expected = vec![
            ("ada".to_owned(), kettle.to_string()),
            ("ada".to_owned(), lamp.to_string()),
            ("bob".to_owned(), kettle.to_string()),
        ];
        expected.sort();
        assert_eq!(taken, expected);
        assert_eq!(first.len(), 1);
        assert!(views.take().is_empty(), "taking empties the map");
    }

    #[test]
    fn past_the_limit_new_pairs_are_dropped_and_counted_and_an_erased_user_is_forgotten() {
        let views = views();
        for _ in 0..MAX_PENDING {
            views.record("ada", Uuid::now_v7());
        }
        views.record("bob", Uuid::now_v7());
        assert_eq!(views.dropped.get(), 1);
        views.forget("ada");
        views.record("bob", Uuid::now_v7());
        let taken = views.take();
        assert_eq!(taken.len(), 1, "ada's views are gone, bob's second one fitted");
        assert_eq!(taken[0].user_id, "bob");
    }
}
