//! Prometheus metrics of the outbox relays and consumers of a process.
//!
//! One [`EventMetrics`] per process, registered once into the process'
//! [`Metrics`] registry and handed (cloned) to every relay and consumer:
//! with `commerce serve all` several services share the process, so the
//! families are shared and each series carries its `service` label instead
//! of each component registering a family of its own (which would produce
//! duplicate families in one exposition).

use commerce_topology::Service;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::gauge::Gauge;

use crate::admin::Metrics;

/// Labels of the relay's series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

/// Labels of consumed-event series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConsumedLabels {
    pub service: String,
    /// `handled`, `duplicate` or `dead_lettered`.
    pub outcome: &'static str,
}

/// Labels of a consumer's partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PartitionLabels {
    pub service: String,
    /// The topic's physical name.
    pub topic: String,
    pub partition: i32,
}

/// The event families; cheap to clone (clones share the series).
#[derive(Debug, Clone, Default)]
pub struct EventMetrics {
    outbox_published: Family<ServiceLabels, Counter>,
    outbox_publish_failures: Family<ServiceLabels, Counter>,
    outbox_unpublished: Family<ServiceLabels, Gauge>,
    outbox_oldest_age: Family<ServiceLabels, Gauge<f64, AtomicU64>>,
    outbox_leader: Family<ServiceLabels, Gauge>,
    consumed: Family<ConsumedLabels, Counter>,
    consumer_lag: Family<PartitionLabels, Gauge>,
}

impl EventMetrics {
    /// Creates the families and registers them into `metrics`. Call once
    /// per process.
    pub fn register(metrics: &Metrics) -> Self {
        let families = Self::default();
        metrics.register(
            "commerce_outbox_published_events",
            "Outbox rows published to Kafka and acknowledged by the broker",
            families.outbox_published.clone(),
        );
        metrics.register(
            "commerce_outbox_publish_failures",
            "Outbox rows the broker did not acknowledge (they are retried)",
            families.outbox_publish_failures.clone(),
        );
        metrics.register(
            "commerce_outbox_unpublished_events",
            "Outbox rows waiting to be published, as last seen by the leading relay",
            families.outbox_unpublished.clone(),
        );
        metrics.register(
            "commerce_outbox_oldest_unpublished_age_seconds",
            "How long the oldest unpublished outbox row has waited, as last seen by the leading relay (0: none waits)",
            families.outbox_oldest_age.clone(),
        );
        metrics.register(
            "commerce_outbox_relay_leader",
            "1 while this process' relay leads its database's outbox, else 0",
            families.outbox_leader.clone(),
        );
        metrics.register(
            "commerce_events_consumed",
            "Events a consumer finished, by outcome",
            families.consumed.clone(),
        );
        metrics.register(
            "commerce_events_consumer_lag",
            "Records of a partition the service's consumer group has not committed yet (high watermark - committed offset), every 5 s, for the partitions this process is assigned",
            families.consumer_lag.clone(),
        );
        families
    }

    fn labels(service: Service) -> ServiceLabels {
        ServiceLabels { service: service.name().to_owned() }
    }

    pub(crate) fn published(&self, service: Service, count: u64) {
        self.outbox_published.get_or_create(&Self::labels(service)).inc_by(count);
    }

    pub(crate) fn publish_failed(&self, service: Service) {
        self.outbox_publish_failures.get_or_create(&Self::labels(service)).inc();
    }

    pub(crate) fn unpublished(&self, service: Service, count: i64) {
        self.outbox_unpublished.get_or_create(&Self::labels(service)).set(count);
    }

    pub(crate) fn oldest_unpublished_age(&self, service: Service, seconds: f64) {
        self.outbox_oldest_age.get_or_create(&Self::labels(service)).set(seconds);
    }

    pub(crate) fn leading(&self, service: Service, leading: bool) {
        self.outbox_leader.get_or_create(&Self::labels(service)).set(i64::from(leading));
    }

    pub(crate) fn consumed(&self, service: Service, outcome: &'static str) {
        self.consumed.get_or_create(&ConsumedLabels { service: service.name().to_owned(), outcome }).inc();
    }

    /// Sets the lag of a partition this process consumes, or removes its
    /// series (`None`: not assigned here any more, or not known yet).
    pub(crate) fn consumer_lag(&self, service: Service, topic: &str, partition: i32, lag: Option<i64>) {
        let labels =
            PartitionLabels { service: service.name().to_owned(), topic: topic.to_owned(), partition };
        match lag {
            Some(lag) => {
                self.consumer_lag.get_or_create(&labels).set(lag);
            }
            None => {
                self.consumer_lag.remove(&labels);
            }
        }
    }
}
