//! The inventory's own metrics, next to the platform's (gRPC, pool, relay,
//! consumer) in the process registry: how reservations turn out, which is
//! what an operator watches when orders start being rejected.

use commerce_platform::admin::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::domain::ReserveOutcome;

/// Labels of a reservation attempt's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `reserved`, `rejected`, or `repeated` (the order already had an answer).
    pub outcome: String,
}

/// Counters of the inventory. Cheap to clone; clones count together.
#[derive(Debug, Clone, Default)]
pub struct InventoryMetrics {
    /// `commerce_inventory_reservations_total{outcome}`.
    reservations: Family<OutcomeLabels, Counter>,
}

impl InventoryMetrics {
    /// Registers the counters in the process registry.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self::default();
        metrics.register(
            "commerce_inventory_reservations",
            "Reservation attempts (Reserve calls and OrderPlaced events) by outcome",
            this.reservations.clone(),
        );
        this
    }

    /// Counts one reservation attempt.
    pub fn record(&self, outcome: &ReserveOutcome) {
        let outcome = match outcome {
            ReserveOutcome::Reserved(_) => "reserved",
            ReserveOutcome::Rejected(_) => "rejected",
            ReserveOutcome::AlreadyReserved(_) | ReserveOutcome::AlreadyRejected(_) => "repeated",
        };
        self.reservations.get_or_create(&OutcomeLabels { outcome: outcome.to_owned() }).inc();
    }

    /// The count of one outcome, for tests.
    pub fn count(&self, outcome: &str) -> u64 {
        self.reservations.get_or_create(&OutcomeLabels { outcome: outcome.to_owned() }).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_and_rendered_under_the_inventory_prefix() {
        let metrics = Metrics::new("inventory");
        let inventory = InventoryMetrics::register(&metrics);
        inventory.record(&ReserveOutcome::Rejected(Vec::new()));
        inventory.record(&ReserveOutcome::AlreadyRejected(Vec::new()));
        assert_eq!(
            (inventory.count("rejected"), inventory.count("repeated"), inventory.count("reserved")),
            (1, 1, 0)
        );
        let text = metrics.encode().expect("metrics encode");
        assert!(text.contains("commerce_inventory_reservations_total{outcome=\"rejected\"} 1"), "{text}");
    }
}
