//! The inventory's events: what it publishes on `commerce.inventory.v1`
//! (built here from stored state, written to the outbox by the store) and
//! how it reacts to the orders and catalog topics through the platform
//! consumer.
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

use commerce_proto::time::timestamp;
use std::time::Duration;

use chrono::{DateTime, Utc};
use commerce_platform::events::{HandlerError, IncomingEvent};
use commerce_proto::events::v1::{
    self as ev, OrderCancelled, OrderConfirmed, OrderFailed, OrderPlaced, OrderRejected, ProductCreated,
    stock_released, stock_reservation_failed, stock_restocked,
};
use sqlx::{Postgres, Transaction};

use crate::Error;
use crate::domain::{Line, ReleaseReason, Shortfall};
use crate::metrics::InventoryMetrics;
use crate::store::{self, Reservation, ReservationKey, ReserveRequest, Transition};

fn event_lines(lines: &[Line]) -> Vec<ev::stock_reserved::Line> {
    lines
        .iter()
        .map(|line| ev::stock_reserved::Line { product_id: line.product_id.clone(), quantity: line.quantity })
        .collect()
}

/// `StockReserved` for a reservation just made.
pub fn stock_reserved(reservation: &Reservation, now: DateTime<Utc>) -> ev::StockReserved {
    ev::StockReserved {
        order_id: reservation.order_id.clone(),
        reservation_id: reservation.id.to_string(),
        lines: event_lines(&reservation.lines),
        expires_at: Some(timestamp(reservation.expires_at)),
        occurred_at: Some(timestamp(now)),
    }
}

/// `StockReservationFailed` listing only the short lines.
pub fn stock_reservation_failed(
    order_id: &str,
    shortfalls: &[Shortfall],
    now: DateTime<Utc>,
) -> ev::StockReservationFailed {
    ev::StockReservationFailed {
        order_id: order_id.to_owned(),
        shortfalls: shortfalls
            .iter()
            .map(|s| stock_reservation_failed::Shortfall {
                product_id: s.product_id.clone(),
                requested: s.requested,
                available: s.available,
                reason: if s.unknown_product {
                    stock_reservation_failed::shortfall::Reason::UnknownProduct
                } else {
                    stock_reservation_failed::shortfall::Reason::InsufficientStock
                } as i32,
            })
            .collect(),
        occurred_at: Some(timestamp(now)),
    }
}

/// `StockCommitted` for a reservation just committed.
pub fn stock_committed(reservation: &Reservation, now: DateTime<Utc>) -> ev::StockCommitted {
    ev::StockCommitted {
        order_id: reservation.order_id.clone(),
        reservation_id: reservation.id.to_string(),
        lines: event_lines(&reservation.lines),
        occurred_at: Some(timestamp(now)),
    }
}

/// `StockReleased` for a reservation just released (or whose sold stock
/// was just returned).
pub fn stock_released(reservation: &Reservation, now: DateTime<Utc>) -> ev::StockReleased {
    let reason = match reservation.release_reason {
        Some(ReleaseReason::Expired) => stock_released::Reason::Expired,
        Some(ReleaseReason::PaymentFailed) => stock_released::Reason::PaymentFailed,
        Some(ReleaseReason::Cancelled) => stock_released::Reason::Cancelled,
        None => stock_released::Reason::Unspecified,
    };
    ev::StockReleased {
        order_id: reservation.order_id.clone(),
        reservation_id: reservation.id.to_string(),
        lines: event_lines(&reservation.lines),
        reason: reason as i32,
        was_committed: reservation.was_committed,
        occurred_at: Some(timestamp(now)),
    }
}

/// How an admin changed a product's stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestockKind {
    Restock,
    Set,
}

impl RestockKind {
    /// Text of `stock_adjustments.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restock => "RESTOCK",
            Self::Set => "SET",
        }
    }
}

/// `StockRestocked` for an admin change.
pub fn stock_restocked(
    product_id: &str,
    kind: RestockKind,
    quantity_delta: i64,
    available: i64,
    note: &str,
    now: DateTime<Utc>,
) -> ev::StockRestocked {
    ev::StockRestocked {
        product_id: product_id.to_owned(),
        kind: match kind {
            RestockKind::Restock => stock_restocked::Kind::Restock,
            RestockKind::Set => stock_restocked::Kind::Set,
        } as i32,
        quantity_delta,
        available,
        note: note.to_owned(),
        occurred_at: Some(timestamp(now)),
    }
}

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
    use crate::domain::ReservationStatus;

    fn reservation() -> Reservation {
        let at = DateTime::from_timestamp(1_700_000_000, 5).expect("valid time");
        Reservation {
            id: uuid::Uuid::nil(),
            order_id: "o-1".to_owned(),
            status: ReservationStatus::Released,
            release_reason: Some(ReleaseReason::Cancelled),
            was_committed: true,
            lines: vec![Line::new("a", 2)],
            expires_at: at,
            created_at: at,
        }
    }

    #[test]
    fn released_events_carry_reason_and_whether_stock_had_been_sold() {
        let event = stock_released(&reservation(), Utc::now());
        assert_eq!(event.reason, stock_released::Reason::Cancelled as i32);
        assert!(event.was_committed);
        assert_eq!(event.lines[0].quantity, 2);
        assert_eq!(event.order_id, "o-1");
    }

    #[test]
    fn shortfalls_say_whether_the_product_is_unknown_or_short() {
        let shortfalls = [
            Shortfall { product_id: "a".to_owned(), requested: 3, available: 1, unknown_product: false },
            Shortfall { product_id: "b".to_owned(), requested: 1, available: 0, unknown_product: true },
        ];
        let event = stock_reservation_failed("o-1", &shortfalls, Utc::now());
        let reasons: Vec<i32> = event.shortfalls.iter().map(|s| s.reason).collect();
        assert_eq!(
            reasons,
            [
                stock_reservation_failed::shortfall::Reason::InsufficientStock as i32,
                stock_reservation_failed::shortfall::Reason::UnknownProduct as i32
            ]
        );
    }

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
