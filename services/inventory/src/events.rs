//! How the inventory reacts to the orders and catalog topics through the
//! platform consumer (what it publishes is built in
//! [`published`](crate::published) and written by the store).
//!
//! Reactions, each in the consumer's transaction and idempotent on the
//! reservation's status (the platform also skips redelivered event ids):
//! - `OrderPlaced` -> reserve every line or none -> `StockReserved` |
//!   `StockReservationFailed`;
//! - `OrderConfirmed` -> commit -> `StockCommitted`;
//! - `OrderFailed` -> release (reason from the failure) -> `StockReleased`;
//! - `OrderRejected` -> release anything held (normally nothing: an order is
//!   rejected because nothing could be held);
//! - `OrderCancelled` -> release held stock, or return sold stock
//!   (`StockReleased` with `was_committed = true`);
//! - `ProductCreated` -> a stock row with zero units.

use std::time::Duration;

use commerce_platform::events::{HandlerError, IncomingEvent};
use commerce_proto::events::v1::{
    self as ev, OrderCancelled, OrderConfirmed, OrderFailed, OrderPlaced, OrderRejected, ProductCreated,
};
use sqlx::{Postgres, Transaction};

use crate::Error;
use crate::domain::{Line, ReleaseReason};
use crate::metrics::InventoryMetrics;
use crate::store::{self, ReservationKey, ReserveRequest, Transition};

/// Maps an order failure to why its stock goes back.
pub fn release_reason_of_failure(reason: i32) -> ReleaseReason {
    match ev::order_failed::Reason::try_from(reason) {
        Ok(ev::order_failed::Reason::ReservationExpired) => ReleaseReason::Expired,
        _ => ReleaseReason::PaymentFailed,
    }
}

/// The inventory's reaction to the orders and catalog topics.
#[derive(Debug, Clone)]
pub struct InventoryEventHandler {
    /// How long a reservation made for an `OrderPlaced` holds its stock.
    reservation_ttl: Duration,
    metrics: InventoryMetrics,
}

impl InventoryEventHandler {
    /// Counts reservation outcomes into `metrics`.
    pub fn with_metrics(mut self, metrics: InventoryMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// A handler whose reservations hold stock for the configured default
    /// TTL (capped by the maximum, like a Reserve call without a TTL).
    pub fn from_settings(settings: &crate::ReservationSettings) -> Self {
        Self::new(crate::domain::reservation_ttl(None, settings.default_ttl, settings.max_ttl))
    }
}

impl InventoryEventHandler {
    /// A handler whose reservations hold stock for `reservation_ttl`.
    pub fn new(reservation_ttl: Duration) -> Self {
        Self { reservation_ttl, metrics: InventoryMetrics::default() }
    }

    async fn order_placed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        placed: OrderPlaced,
        _: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let request = ReserveRequest {
            order_id: placed.order_id,
            lines: placed.lines.into_iter().map(|line| Line::new(line.product_id, line.quantity)).collect(),
            ttl: self.reservation_ttl,
        };
        let outcome = store::reserve(tx, request).await.map_err(handler_error)?;
        // Counted before the consumer commits: a rare failed commit counts
        // its retry twice, which a rate does not notice.
        self.metrics.record(&outcome);
        Ok(())
    }

    async fn order_confirmed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        confirmed: OrderConfirmed,
        _: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let outcome = store::transition(tx, ReservationKey::Order(&confirmed.order_id), Transition::Commit)
            .await
            .map_err(handler_error)?;
        if outcome.is_none() {
            // Orders are confirmed only after StockReserved, and the
            // reservation precedes it: a confirmation without one is a
            // contradiction for a person to look at.
            return Err(HandlerError::permanent(Error::ReservationNotFound {
                reservation: format!("order {}", confirmed.order_id),
            }));
        }
        Ok(())
    }

    async fn order_failed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        failed: OrderFailed,
        _: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let reason = release_reason_of_failure(failed.reason);
        release(tx, &failed.order_id, Transition::Release(reason)).await
    }

    async fn order_rejected(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        rejected: OrderRejected,
        _: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        release(tx, &rejected.order_id, Transition::Release(ReleaseReason::Cancelled)).await
    }

    async fn order_cancelled(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        cancelled: OrderCancelled,
        _: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        release(tx, &cancelled.order_id, Transition::Cancel).await
    }

    async fn product_created(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        created: ProductCreated,
        _: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        store::ensure_product(tx, &created.product_id).await.map_err(handler_error)?;
        Ok(())
    }
}

commerce_platform::event_handler!(InventoryEventHandler {
    OrderPlaced => order_placed,
    OrderConfirmed => order_confirmed,
    OrderFailed => order_failed,
    OrderRejected => order_rejected,
    OrderCancelled => order_cancelled,
    ProductCreated => product_created,
});

/// Releases (or returns) what an order holds; an order without a
/// reservation holds nothing, which is fine.
async fn release(
    conn: &mut sqlx::PgConnection,
    order_id: &str,
    transition: Transition,
) -> Result<(), HandlerError> {
    let outcome =
        store::transition(conn, ReservationKey::Order(order_id), transition).await.map_err(handler_error)?;
    if outcome.is_none() {
        tracing::debug!(order_id, "no reservation to release");
    }
    Ok(())
}

/// Broken rules and contradictory states never heal: dead-letter them at
/// once. Everything else (the database) may.
fn handler_error(error: Error) -> HandlerError {
    if error.is_permanent() { HandlerError::permanent(error) } else { HandlerError::retryable(error) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expired_reservation_failure_releases_as_expired_and_others_as_payment_failed() {
        assert_eq!(
            release_reason_of_failure(ev::order_failed::Reason::ReservationExpired as i32),
            ReleaseReason::Expired
        );
        assert_eq!(
            release_reason_of_failure(ev::order_failed::Reason::PaymentDeclined as i32),
            ReleaseReason::PaymentFailed
        );
    }
}
