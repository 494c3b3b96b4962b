//! The consumer's handler: each order, payment, shipment, catalog and cart event
//! sets what it tells about an order or a product ([`store`]), in a way
//! that does not depend on the order the events arrive in.

use chrono::{DateTime, Utc};
use commerce_platform::events::{HandlerError, IncomingEvent};
use commerce_proto::events::v1 as ev;
use commerce_proto::time::from_timestamp;
use sqlx::{Postgres, Transaction};

use crate::store::{self, Line, Step};

/// Handles the Orders, Payments, Shipments, Catalog and Carts topics; other
/// types are skipped.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnalyticsEventHandler;

commerce_platform::event_handler!(AnalyticsEventHandler {
    ev::OrderPlaced => order_placed,
    ev::OrderConfirmed => order_confirmed,
    ev::OrderRejected => order_rejected,
    ev::OrderFailed => order_failed,
    ev::OrderCancelled => order_cancelled,
    ev::OrderDelivered => order_delivered,
    ev::PaymentRefunded => payment_refunded,
    ev::ShipmentStatusChanged => shipment_status_changed,
    ev::ProductCreated => product_created,
    ev::ProductUpdated => product_updated,
    ev::CartItemAdded => cart_item_added,
});

/// An event the analytics cannot apply.
#[derive(Debug, thiserror::Error)]
#[error("invalid event for the analytics: {0}")]
pub struct InvalidEvent(&'static str);

fn order_id(id: &str) -> Result<&str, HandlerError> {
    if id.is_empty() {
        return Err(HandlerError::permanent(InvalidEvent("an order event without an order id")));
    }
    Ok(id)
}

/// When the event says it happened; its record's time when it does not.
fn when(at: Option<&prost_types::Timestamp>, event: &IncomingEvent) -> DateTime<Utc> {
    at.and_then(from_timestamp).unwrap_or_else(|| event.time())
}

/// One handler per order event that only says the order reached a step
/// (its `order_id` and `occurred_at` are all that is read).
macro_rules! order_steps {
    ($($method:ident($event:ty) => $step:expr,)*) => {
        $(
            async fn $method(
                &self,
                tx: &mut Transaction<'_, Postgres>,
                e: $event,
                event: &IncomingEvent,
            ) -> Result<(), HandlerError> {
                store::record_step(tx, order_id(&e.order_id)?, $step, when(e.occurred_at.as_ref(), event))
                    .await
                    .map_err(HandlerError::retryable)
            }
        )*
    };
}

impl AnalyticsEventHandler {
    async fn order_placed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::OrderPlaced,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let id = order_id(&e.order_id)?;
        let total = e.total.clone().unwrap_or_default();
        let lines: Vec<Line> = e
            .lines
            .iter()
            .map(|line| Line {
                product_id: line.product_id.clone(),
                name: line.name.clone(),
                quantity: i64::from(line.quantity),
                total_units: line.line_total.as_ref().map_or(0, |money| money.units),
            })
            .collect();
        let placed_at = when(e.occurred_at.as_ref(), event);
        store::record_placed(tx, id, &e.user_id, &total.currency_code, total.units, placed_at, &lines)
            .await
            .map_err(HandlerError::retryable)
    }

    order_steps! {
        order_confirmed(ev::OrderConfirmed) => Step::Confirmed,
        order_rejected(ev::OrderRejected) => Step::Rejected,
        order_failed(ev::OrderFailed) => Step::Failed,
        order_cancelled(ev::OrderCancelled) => Step::Cancelled,
        order_delivered(ev::OrderDelivered) => Step::Delivered,
    }

    async fn payment_refunded(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::PaymentRefunded,
        _event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        // The running total, not the amount of this refund: a duplicate or
        // a late event cannot count a refund twice.
        let refunded = e.total_refunded.as_ref().or(e.amount.as_ref()).map_or(0, |money| money.units);
        store::record_refund(tx, order_id(&e.order_id)?, refunded).await.map_err(HandlerError::retryable)
    }

    async fn shipment_status_changed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::ShipmentStatusChanged,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        // The parcel left the shop when the courier picked it up.
        let left = matches!(
            ev::ShipmentStatus::try_from(e.status),
            Ok(ev::ShipmentStatus::PickedUp | ev::ShipmentStatus::InTransit)
        );
        if !left || e.order_id.is_empty() {
            return Ok(());
        }
        store::record_step(tx, &e.order_id, Step::Shipped, when(e.occurred_at.as_ref(), event))
            .await
            .map_err(HandlerError::retryable)
    }

    async fn cart_item_added(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::CartItemAdded,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        if e.user_id.is_empty() {
            return Err(HandlerError::permanent(InvalidEvent("CartItemAdded without a user id")));
        }
        store::record_cart_add(tx, &e.user_id, when(e.occurred_at.as_ref(), event))
            .await
            .map_err(HandlerError::retryable)
    }

    async fn product_created(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::ProductCreated,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let at = when(e.occurred_at.as_ref(), event);
        store::record_product(tx, &e.product_id, &e.name, &e.category_id, at)
            .await
            .map_err(HandlerError::retryable)
    }

    async fn product_updated(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::ProductUpdated,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let at = when(e.occurred_at.as_ref(), event);
        store::record_product(tx, &e.product_id, &e.name, &e.category_id, at)
            .await
            .map_err(HandlerError::retryable)
    }
}
