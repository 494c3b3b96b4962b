//! What notification consumes (users, orders, payments, shipments) and turns
//! into inbox entries and, with the email channel on, queued emails
//! (`crate::mailer`); it publishes nothing. The platform consumer already
//! skips redelivered event ids; the unique (user, source event id) makes a
//! notification and its email exist once even if that record were lost.

use std::time::Duration;

use commerce_platform::events::{HandlerError, IncomingEvent};
use commerce_proto::events::v1 as ev;
use commerce_proto::notification::v1::Channel;
use sqlx::{Postgres, Transaction};

use crate::domain::{self, Draft};
use crate::email::{self, Recipient};
use crate::{mailer, store};

/// How old a notification drafted before its user's address was known may
/// be and still be emailed when the address arrives.
pub const LATE_ADDRESS_WINDOW: Duration = Duration::from_secs(3600);

/// The notification service's consumer.
#[derive(Debug, Clone, Default)]
pub struct NotificationEventHandler {
    /// Whether each notification is emailed too.
    email: bool,
}

impl NotificationEventHandler {
    /// A consumer that emails each notification when `email` is on.
    pub fn new(email: bool) -> Self {
        Self { email }
    }
}

commerce_platform::event_handler!(NotificationEventHandler {
    ev::UserRegistered => user_registered,
    ev::UserErased => user_erased,
    ev::OrderPlaced => order_placed,
    ev::OrderConfirmed => order_confirmed,
    ev::OrderRejected => order_rejected,
    ev::OrderFailed => order_failed,
    ev::OrderCancelled => order_cancelled,
    ev::PaymentRefunded => payment_refunded,
    ev::ShipmentCreated => shipment_created,
    ev::ShipmentStatusChanged => shipment_status_changed,
    ev::ShipmentDelivered => shipment_delivered,
    ev::ShipmentHalted => shipment_halted,
});

/// Each event drafts its notification (or none) in the domain.
impl NotificationEventHandler {
    async fn user_registered(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::UserRegistered,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let recipient = Recipient {
            user_id: e.user_id.clone(),
            email: e.email.clone(),
            display_name: e.display_name.clone(),
        };
        let known = !recipient.user_id.is_empty() && !recipient.email.is_empty();
        if known {
            store::upsert_recipient(tx, &recipient).await.map_err(HandlerError::retryable)?;
        }
        self.store_draft(tx, domain::welcome(&e), event).await?;
        if known && self.email {
            self.mail_waiting(tx, &recipient).await?;
        }
        Ok(())
    }

    /// An erased user's notifications, emails and address go.
    async fn user_erased(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::UserErased,
        _event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        if e.user_id.is_empty() {
            return Err(HandlerError::permanent("UserErased without a user id"));
        }
        let rows = store::erase_user(tx, &e.user_id).await.map_err(HandlerError::retryable)?;
        tracing::info!(user_id = %e.user_id, rows, "an erased user's notifications and emails were deleted");
        Ok(())
    }

    async fn order_placed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::OrderPlaced,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        self.store_draft(tx, domain::order_placed(&e), event).await
    }

    async fn order_confirmed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::OrderConfirmed,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        self.store_draft(tx, domain::order_confirmed(&e), event).await
    }

    async fn order_rejected(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::OrderRejected,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        self.store_draft(tx, domain::order_rejected(&e), event).await
    }

    async fn order_failed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::OrderFailed,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        self.store_draft(tx, domain::order_failed(&e), event).await
    }

    async fn order_cancelled(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::OrderCancelled,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        self.store_draft(tx, domain::order_cancelled(&e), event).await
    }

    async fn payment_refunded(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::PaymentRefunded,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        self.store_draft(tx, domain::payment_refunded(&e), event).await
    }

    async fn shipment_created(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::ShipmentCreated,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        self.store_draft(tx, domain::shipment_created(&e), event).await
    }

    async fn shipment_status_changed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::ShipmentStatusChanged,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        self.store_draft(tx, domain::shipment_status_changed(&e), event).await
    }

    async fn shipment_delivered(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::ShipmentDelivered,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        self.store_draft(tx, domain::shipment_delivered(&e), event).await
    }

    async fn shipment_halted(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::ShipmentHalted,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        self.store_draft(tx, domain::shipment_halted(&e), event).await
    }
}

impl NotificationEventHandler {
    /// Emails the notifications drafted for `recipient` before their address
    /// was known. The users topic and the others are consumed side by side,
    /// so a step of an order placed right after signing up (or during a
    /// backlog) can be handled before the registration. Only notifications
    /// of the last [`LATE_ADDRESS_WINDOW`] are mailed: older news stays in
    /// the inbox rather than arrive as a late email.
    async fn mail_waiting(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        recipient: &Recipient,
    ) -> Result<(), HandlerError> {
        let waiting = store::unmailed(tx, &recipient.user_id, LATE_ADDRESS_WINDOW)
            .await
            .map_err(HandlerError::retryable)?;
        for (draft, source_event_id) in &waiting {
            mailer::enqueue(tx, recipient, &email::render(draft, recipient), *source_event_id)
                .await
                .map_err(HandlerError::retryable)?;
        }
        if !waiting.is_empty() {
            tracing::info!(user_id = %recipient.user_id, emails = waiting.len(), "emails queued once the address arrived");
        }
        Ok(())
    }

    /// Stores the notification `draft` made of `event`, once per event, and
    /// queues its email when the channel is on and the user's address is
    /// known (else [`Self::mail_waiting`] queues it when the address comes;
    /// users registered before the service heard of them get none).
    async fn store_draft(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        draft: Option<Draft>,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let Some(draft) = draft else {
            return Ok(());
        };
        let stored = store::insert(tx, &draft, Channel::InApp as i32, event.id())
            .await
            .map_err(HandlerError::retryable)?;
        tracing::debug!(event_id = %event.id(), user_id = %draft.user_id, stored, "notification from event");
        if !(self.email && stored) {
            return Ok(());
        }
        match store::recipient(tx, &draft.user_id).await.map_err(HandlerError::retryable)? {
            Some(recipient) => {
                mailer::enqueue(tx, &recipient, &email::render(&draft, &recipient), event.id())
                    .await
                    .map_err(HandlerError::retryable)?;
            }
            None => tracing::debug!(user_id = %draft.user_id, "no email address known; in-app only"),
        }
        Ok(())
    }
}
