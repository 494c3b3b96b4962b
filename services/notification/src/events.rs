//! What notification consumes (orders, payments, shipments) and turns into
//! inbox entries; it publishes nothing. The platform consumer already skips
//! redelivered event ids; the unique (user, source event id) makes a
//! notification exist once even if that record were lost.

use async_trait::async_trait;
use commerce_platform::events::{EventHandler, HandlerError, IncomingEvent};
use commerce_proto::events::v1 as ev;
use commerce_proto::notification::v1::Channel;
use sqlx::{Postgres, Transaction};

use crate::domain::{self, Draft};
use crate::store;

/// The notification service's consumer.
#[derive(Debug, Clone, Default)]
pub struct NotificationEventHandler;

impl NotificationEventHandler {
    /// The notification an event makes, if any.
    fn draft(event: &IncomingEvent) -> Result<Option<Draft>, HandlerError> {
        Ok(if event.is::<ev::OrderPlaced>() {
            domain::order_placed(&event.decode()?)
        } else if event.is::<ev::OrderConfirmed>() {
            domain::order_confirmed(&event.decode()?)
        } else if event.is::<ev::OrderRejected>() {
            domain::order_rejected(&event.decode()?)
        } else if event.is::<ev::OrderFailed>() {
            domain::order_failed(&event.decode()?)
        } else if event.is::<ev::OrderCancelled>() {
            domain::order_cancelled(&event.decode()?)
        } else if event.is::<ev::PaymentRefunded>() {
            domain::payment_refunded(&event.decode()?)
        } else if event.is::<ev::ShipmentCreated>() {
            domain::shipment_created(&event.decode()?)
        } else if event.is::<ev::ShipmentStatusChanged>() {
            domain::shipment_status_changed(&event.decode()?)
        } else if event.is::<ev::ShipmentDelivered>() {
            domain::shipment_delivered(&event.decode()?)
        } else if event.is::<ev::ShipmentHalted>() {
            domain::shipment_halted(&event.decode()?)
        } else {
            None
        })
    }
}

#[async_trait]
impl EventHandler for NotificationEventHandler {
    async fn handle(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let Some(draft) = Self::draft(event)? else {
            return Ok(());
        };
        let stored = store::insert(tx, &draft, Channel::InApp as i32, event.id())
            .await
            .map_err(HandlerError::retryable)?;
        tracing::debug!(event_id = %event.id(), user_id = %draft.user_id, stored, "notification from event");
        Ok(())
    }
}
