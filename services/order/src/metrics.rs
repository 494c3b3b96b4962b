//! The saga as Prometheus sees it, for the alerts "the saga is stuck" and
//! "orders are failing":
//! - `commerce_order_saga_outcomes_total{outcome}` and
//!   `commerce_order_saga_duration_seconds{outcome}`: each order that
//!   reaches `confirmed`, `rejected`, `failed`, `cancelled` or `delivered`,
//!   and the time from its placement to that step. Counted once the step is
//!   stored: after the commit for a cancellation and for the reservation
//!   sweeper, and, for a step driven by an event, when the consumer's
//!   transaction has it (a commit that then fails, rare, has the event
//!   retried and the step counted again);
//! - `commerce_order_open{status}` and
//!   `commerce_order_oldest_open_age_seconds`: the orders the saga still
//!   works on (pending, reserved) and how long the oldest has waited since
//!   it last moved, read from the database every [`OPEN_ORDERS_INTERVAL`]
//!   with the database's clock (one indexed query).

use std::time::Duration;

use commerce_platform::admin::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::domain::OrderStatus;
use crate::store::Order;

/// How often the open orders are counted.
pub const OPEN_ORDERS_INTERVAL: Duration = Duration::from_secs(15);

/// Labels of an outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `confirmed`, `rejected`, `failed`, `cancelled` or `delivered`.
    pub outcome: &'static str,
}

/// Labels of the open orders.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StatusLabels {
    /// `pending` or `reserved`.
    pub status: &'static str,
}

/// Saga durations from 10 ms to about 3 days (a delivery takes days).
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 25))
}

/// The saga's families. Cheap to clone; clones count together.
#[derive(Debug, Clone)]
pub struct SagaMetrics {
    outcomes: Family<OutcomeLabels, Counter>,
    durations: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
    open: Family<StatusLabels, Gauge>,
    oldest_open_age: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Default for SagaMetrics {
    fn default() -> Self {
        Self {
            outcomes: Family::default(),
            durations: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            open: Family::default(),
            oldest_open_age: Gauge::default(),
        }
    }
}

impl SagaMetrics {
    /// Registers the families in the process registry.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self::default();
        metrics.register(
            "commerce_order_saga_outcomes",
            "Orders that reached confirmed, rejected, failed, cancelled or delivered",
            this.outcomes.clone(),
        );
        metrics.register(
            "commerce_order_saga_duration_seconds",
            "Time from an order's placement to the step that reached the outcome",
            this.durations.clone(),
        );
        metrics.register(
            "commerce_order_open",
            "Orders the saga still works on, by status (pending, reserved)",
            this.open.clone(),
        );
        metrics.register(
            "commerce_order_oldest_open_age_seconds",
            "How long the open order that moved least recently has waited (0 when none is open)",
            this.oldest_open_age.clone(),
        );
        this
    }

    /// Counts `order` if the step that made it (from `before`) reached an
    /// outcome.
    pub fn observe(&self, before: OrderStatus, order: &Order) {
        let after = order.saga.status;
        if after == before {
            return;
        }
        let outcome = match after {
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Failed => "failed",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Pending | OrderStatus::Reserved | OrderStatus::Shipped => return,
        };
        let labels = OutcomeLabels { outcome };
        self.outcomes.get_or_create(&labels).inc();
        let took = (order.updated_at - order.created_at).to_std().unwrap_or_default();
        self.durations.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// The count of one outcome, for tests.
    pub fn outcomes(&self, outcome: &'static str) -> u64 {
        self.outcomes.get_or_create(&OutcomeLabels { outcome }).get()
    }

    /// The open orders of `status` (`pending`, `reserved`) as last counted,
    /// for tests.
    pub fn open(&self, status: &'static str) -> i64 {
        self.open.get_or_create(&StatusLabels { status }).get()
    }

    /// The age of the oldest open order as last counted, for tests.
    pub fn oldest_open_age(&self) -> f64 {
        self.oldest_open_age.get()
    }

    /// Reads the open orders once.
    pub async fn count_open(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let rows: Vec<(String, i64, Option<f64>)> = sqlx::query_as(
            "SELECT status, count(*), EXTRACT(EPOCH FROM now() - min(updated_at))::float8 \
             FROM orders WHERE status IN ('PENDING', 'RESERVED') GROUP BY status",
        )
        .fetch_all(pool)
        .await?;
        let mut oldest: f64 = 0.0;
        for (status, label) in [(OrderStatus::Pending, "pending"), (OrderStatus::Reserved, "reserved")] {
            let row = rows.iter().find(|(name, ..)| name == status.as_str());
            self.open.get_or_create(&StatusLabels { status: label }).set(row.map_or(0, |row| row.1));
            oldest = oldest.max(row.and_then(|row| row.2).unwrap_or(0.0));
        }
        self.oldest_open_age.set(oldest);
        Ok(())
    }

    /// Counts the open orders every [`OPEN_ORDERS_INTERVAL`] until
    /// `shutdown`; a failed count is logged and tried again next time.
    pub async fn run_open_orders(self, pool: PgPool, shutdown: CancellationToken) {
        loop {
            if let Err(error) = self.count_open(&pool).await {
                tracing::warn!(error = %crate::error_chain(&error), "cannot count the open orders");
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(OPEN_ORDERS_INTERVAL) => {}
            }
        }
    }
}
