//! What the payment service publishes (PaymentCaptured, PaymentFailed,
//! PaymentRefunded, always through the outbox) and consumes: OrderPlaced and
//! StockReserved (the two halves of a charge, in either order), and the
//! order's death (OrderFailed, OrderRejected, OrderCancelled), which cancels a
//! pending payment or queues the refund of a captured one.

use chrono::Utc;
use commerce_platform::events::{HandlerError, IncomingEvent};
use commerce_proto::common::v1::Money;
use commerce_proto::events::v1 as ev;
use prost_types::Timestamp;
use sqlx::postgres::PgConnection;
use sqlx::{Postgres, Transaction};

use crate::Error;
use crate::domain::{self, DeadOrderAction, PaymentStatus};
use crate::store::{self, Payment, Refund};

fn now() -> Timestamp {
    let now = Utc::now();
    commerce_proto::time::timestamp(now)
}

fn money(currency: &str, units: i64) -> Money {
    Money { currency_code: currency.to_owned(), units }
}

pub(crate) fn payment_captured(payment: &Payment, provider: &str, reference: &str) -> ev::PaymentCaptured {
    ev::PaymentCaptured {
        order_id: payment.order_id.clone(),
        payment_id: payment.id.to_string(),
        user_id: payment.user_id.clone(),
        amount: Some(money(&payment.currency, payment.amount)),
        provider: provider.to_owned(),
        provider_reference: reference.to_owned(),
        occurred_at: Some(now()),
    }
}

pub(crate) fn payment_failed(payment: &Payment, declined: bool, detail: &str) -> ev::PaymentFailed {
    let reason = if declined {
        ev::payment_failed::Reason::Declined
    } else {
        ev::payment_failed::Reason::ProviderUnavailable
    };
    ev::PaymentFailed {
        order_id: payment.order_id.clone(),
        payment_id: payment.id.to_string(),
        user_id: payment.user_id.clone(),
        amount: Some(money(&payment.currency, payment.amount)),
        reason: reason.into(),
        detail: detail.to_owned(),
        occurred_at: Some(now()),
    }
}

pub(crate) fn payment_refunded(
    payment: &Payment,
    refund: &Refund,
    total: i64,
    fully: bool,
) -> ev::PaymentRefunded {
    ev::PaymentRefunded {
        order_id: payment.order_id.clone(),
        payment_id: payment.id.to_string(),
        refund_id: refund.id.to_string(),
        user_id: payment.user_id.clone(),
        amount: Some(money(&payment.currency, refund.amount)),
        total_refunded: Some(money(&payment.currency, total)),
        fully_refunded: fully,
        reason: refund.reason.clone(),
        occurred_at: Some(now()),
    }
}

/// The idempotency key of the saga's refund of a dead order.
pub fn saga_refund_key(order_id: &str) -> String {
    format!("cancel:{order_id}")
}

/// Reacts to a dead order: a pending payment is cancelled (never charged
/// again; if it was already due, the worker also voids the key with the
/// provider, which may have taken the money on a call whose answer was
/// lost), a captured one gets a pending
/// refund for what is left, which the worker makes. Waits for a worker
/// holding the row mid-charge.
pub async fn order_died(conn: &mut PgConnection, order_id: &str, reason: &str) -> Result<(), Error> {
    store::ensure_row(conn, order_id).await?;
    let payment = store::lock_by_order(conn, order_id).await?.ok_or(Error::PaymentNotFound)?;
    match domain::on_order_dead(payment.status) {
        DeadOrderAction::Cancel => {
            store::set_status(conn, payment.id, PaymentStatus::Cancelled, &payment.provider, "", reason)
                .await?;
            if payment.intent_received && payment.stock_reserved {
                // The charge was due, so a worker may have called the
                // provider: the call failed (attempts > 0), or the process
                // died before it could record the answer (no trace here at
                // all). Either way the provider may hold the money. The
                // worker voids the key with the provider.
                store::request_void(conn, payment.id).await?;
                tracing::info!(
                    order_id,
                    attempts = payment.attempts,
                    "pending payment cancelled; void requested"
                );
            } else {
                tracing::info!(order_id, "pending payment cancelled: the order died first");
            }
        }
        DeadOrderAction::Refund => {
            let committed = store::committed_refunds(conn, payment.id).await?;
            match domain::refund_amount(payment.status, payment.amount, committed, None) {
                Ok(amount) => {
                    store::insert_refund(conn, payment.id, amount, reason, &saga_refund_key(order_id))
                        .await?;
                    tracing::info!(order_id, amount, "refund queued for a dead order");
                }
                Err(refused) => tracing::info!(order_id, %refused, "nothing left to refund"),
            }
        }
        DeadOrderAction::Nothing => {}
    }
    Ok(())
}

/// The payment service's consumer.
#[derive(Debug, Clone, Default)]
pub struct PaymentEventHandler;

commerce_platform::event_handler!(PaymentEventHandler {
    ev::OrderPlaced => order_placed,
    ev::StockReserved => stock_reserved,
    ev::OrderFailed => order_failed,
    ev::OrderRejected => order_rejected,
    ev::OrderCancelled => order_cancelled,
});

impl PaymentEventHandler {
    async fn order_placed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        placed: ev::OrderPlaced,
        _: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let total = placed.total.unwrap_or_default();
        store::record_intent(
            tx,
            &placed.order_id,
            &placed.user_id,
            &total.currency_code,
            total.units,
            &placed.payment_method_token,
        )
        .await?;
        Ok(())
    }

    async fn stock_reserved(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        reserved: ev::StockReserved,
        _: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        store::record_stock_reserved(tx, &reserved.order_id).await?;
        Ok(())
    }

    async fn order_failed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        failed: ev::OrderFailed,
        _: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        Ok(order_died(tx, &failed.order_id, "order failed").await?)
    }

    async fn order_rejected(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        rejected: ev::OrderRejected,
        _: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        Ok(order_died(tx, &rejected.order_id, "order rejected").await?)
    }

    async fn order_cancelled(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        cancelled: ev::OrderCancelled,
        _: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        Ok(order_died(tx, &cancelled.order_id, "order cancelled").await?)
    }
}

impl From<Error> for HandlerError {
    fn from(error: Error) -> Self {
        if error.is_transient() { HandlerError::retryable(error) } else { HandlerError::permanent(error) }
    }
}
