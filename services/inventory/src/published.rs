//! What the inventory publishes on `commerce.inventory.v1`: each event
//! built from domain state as a pure function, which the store writes to the
//! outbox in the transaction of the change it reports.

use chrono::{DateTime, Utc};
use commerce_proto::events::v1::{self as ev, stock_released, stock_reservation_failed, stock_restocked};
use commerce_proto::time::timestamp;

use crate::domain::{Line, ReleaseReason, Reservation, RestockKind, Shortfall};

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

/// `StockAvailabilityChanged` for each product whose availability crossed
/// zero between `before` and `after` (out of stock, or back in).
pub fn availability_changes(
    before: &std::collections::BTreeMap<String, crate::domain::StockLevel>,
    after: &[(String, crate::domain::StockLevel)],
    now: DateTime<Utc>,
) -> Vec<ev::StockAvailabilityChanged> {
    after
        .iter()
        .filter(|(product_id, level)| {
            let was_in_stock = before.get(product_id).is_some_and(|before| before.available > 0);
            was_in_stock != (level.available > 0)
        })
        .map(|(product_id, level)| ev::StockAvailabilityChanged {
            product_id: product_id.clone(),
            available: level.available,
            in_stock: level.available > 0,
            occurred_at: Some(timestamp(now)),
        })
        .collect()
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
    fn availability_changes_only_for_products_that_cross_zero() {
        use crate::domain::StockLevel;
        let level = |available| StockLevel { available, reserved: 0, sold: 0 };
        let before: std::collections::BTreeMap<String, StockLevel> =
            [("a", 1), ("b", 5), ("c", 0), ("d", 0)].map(|(id, n)| (id.to_owned(), level(n))).into();
        let after = [("a", 0), ("b", 4), ("c", 3), ("d", 0)].map(|(id, n)| (id.to_owned(), level(n)));
        let changes: Vec<(String, i64, bool)> = availability_changes(&before, &after, Utc::now())
            .into_iter()
            .map(|e| (e.product_id, e.available, e.in_stock))
            .collect();
        assert_eq!(changes, [("a".to_owned(), 0, false), ("c".to_owned(), 3, true)]);
    }
}
