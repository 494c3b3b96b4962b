//! What the order service publishes (through the outbox, in the transaction
//! of the change) and consumes (inventory, payment and shipment events), plus
//! the reservation sweeper, which feeds the state machine the clock.

use commerce_proto::time::{from_timestamp, timestamp};
use std::time::Duration;

use chrono::{DateTime, Utc};
use commerce_platform::events::{HandlerError, IncomingEvent, enqueue};
use commerce_proto::common::v1::Money;
use commerce_proto::events::v1 as ev;
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Error;
use crate::domain::{self, Effect, FailureKind, OrderStatus, SagaInput, Step};
use crate::metrics::SagaMetrics;
use crate::store::{self, Order};

pub(crate) fn money(currency: &str, units: i64) -> Money {
    Money { currency_code: currency.to_owned(), units }
}

/// `OrderPlaced` for a new order.
pub(crate) fn order_placed(order: &Order, payment_method_token: &str) -> ev::OrderPlaced {
    ev::OrderPlaced {
        order_id: order.id.to_string(),
        user_id: order.user_id.clone(),
        lines: order
            .lines
            .iter()
            .map(|line| ev::order_placed::Line {
                product_id: line.product_id.clone(),
                sku: line.sku.clone(),
                name: line.name.clone(),
                quantity: line.quantity,
                unit_price: Some(money(&order.currency, line.unit_price)),
                line_total: Some(money(&order.currency, line.line_total)),
            })
            .collect(),
        total: Some(money(&order.currency, order.total)),
        shipping_address: Some(order.shipping_address.clone()),
        payment_method_token: payment_method_token.to_owned(),
        occurred_at: Some(timestamp(order.created_at)),
    }
}

/// Stores `step` for `order` (already locked in `conn`'s transaction) and
/// enqueues the event of its effect. Returns the order as it now is.
pub(crate) async fn record_step(
    conn: &mut PgConnection,
    order: &Order,
    step: Step,
    cancelled_by: &str,
) -> Result<Order, Error> {
    if step.state == order.saga {
        return Ok(order.clone());
    }
    let updated_at = store::save_saga(conn, order.id, &step.state).await?;
    let now = timestamp(updated_at);
    let saga = &step.state;
    let order_id = order.id.to_string();
    let user_id = order.user_id.clone();
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    match step.effect {
        None => {}
        Some(Effect::Confirmed) => {
            let event = ev::OrderConfirmed {
                order_id,
                user_id,
                total: Some(money(&order.currency, order.total)),
                payment_id: text(&saga.payment_id),
                reservation_id: text(&saga.reservation_id),
                shipping_address: Some(order.shipping_address.clone()),
                occurred_at: Some(now),
            };
            enqueue(conn, &event).await.map_err(|error| Error::EnqueueEvent(Box::new(error)))?;
        }
        Some(Effect::Rejected { unavailable_product_ids }) => {
            let event = ev::OrderRejected {
                order_id,
                user_id,
                reason: saga.failure_reason.clone(),
                unavailable_product_ids,
                occurred_at: Some(now),
            };
            enqueue(conn, &event).await.map_err(|error| Error::EnqueueEvent(Box::new(error)))?;
        }
        Some(Effect::Failed { kind, detail }) => {
            let reason = match kind {
                FailureKind::PaymentDeclined => ev::order_failed::Reason::PaymentDeclined,
                FailureKind::PaymentUnavailable => ev::order_failed::Reason::PaymentUnavailable,
                FailureKind::ReservationExpired => ev::order_failed::Reason::ReservationExpired,
            };
            let event = ev::OrderFailed {
                order_id,
                user_id,
                reason: reason.into(),
                detail,
                reservation_id: text(&saga.reservation_id),
                occurred_at: Some(now),
            };
            enqueue(conn, &event).await.map_err(|error| Error::EnqueueEvent(Box::new(error)))?;
        }
        Some(Effect::Cancelled { reason }) => {
            let event = ev::OrderCancelled {
                order_id,
                user_id,
                was_paid: saga.payment_id.is_some(),
                payment_id: text(&saga.payment_id),
                reservation_id: text(&saga.reservation_id),
                shipment_id: text(&saga.shipment_id),
                reason,
                cancelled_by: cancelled_by.to_owned(),
                occurred_at: Some(now),
            };
            enqueue(conn, &event).await.map_err(|error| Error::EnqueueEvent(Box::new(error)))?;
        }
        Some(Effect::Delivered) => {
            let event = ev::OrderDelivered {
                order_id,
                user_id,
                shipment_id: text(&saga.shipment_id),
                occurred_at: Some(now),
            };
            enqueue(conn, &event).await.map_err(|error| Error::EnqueueEvent(Box::new(error)))?;
        }
    }
    Ok(Order { saga: step.state, updated_at, ..order.clone() })
}

/// Locks the order and applies `input`; `None` when the order is unknown.
pub(crate) async fn apply_input(
    conn: &mut PgConnection,
    id: Uuid,
    input: SagaInput,
) -> Result<Option<(OrderStatus, Order)>, Error> {
    let Some(order) = store::lock(conn, id).await? else {
        return Ok(None);
    };
    let step = domain::apply(&order.saga, input);
    let before = order.saga.status;
    record_step(conn, &order, step, "").await.map(|order| Some((before, order)))
}

/// Consumes inventory, payment and shipment events into the saga.
#[derive(Debug, Clone, Default)]
pub struct OrderEventHandler {
    metrics: SagaMetrics,
}

impl OrderEventHandler {
    /// A handler that counts the outcomes it stores in `metrics`.
    pub fn new(metrics: SagaMetrics) -> Self {
        Self { metrics }
    }
}

fn parse_order_id(raw: &str) -> Result<Uuid, HandlerError> {
    Uuid::parse_str(raw)
        .map_err(|error| HandlerError::permanent(format!("order id {raw:?} is not a UUID: {error}")))
}

commerce_platform::event_handler!(OrderEventHandler {
    ev::StockReserved => stock_reserved,
    ev::StockReservationFailed => stock_reservation_failed,
    ev::PaymentCaptured => payment_captured,
    ev::PaymentFailed => payment_failed,
    ev::PaymentRefunded => payment_refunded,
    ev::ShipmentCreated => shipment_created,
    ev::ShipmentStatusChanged => shipment_status_changed,
    ev::ShipmentDelivered => shipment_delivered,
    ev::UserErased => user_erased,
});

/// Each event becomes a saga input of its order; an erasure anonymises the
/// user's orders.
impl OrderEventHandler {
    async fn user_erased(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::UserErased,
        _event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        if e.user_id.is_empty() {
            return Err(HandlerError::permanent("UserErased without a user id"));
        }
        let orders = store::anonymise_user(tx, &e.user_id).await.map_err(HandlerError::retryable)?;
        tracing::info!(user_id = %e.user_id, orders, "an erased user's orders lost their addresses");
        Ok(())
    }

    async fn stock_reserved(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::StockReserved,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let expires_at = e
            .expires_at
            .as_ref()
            .and_then(from_timestamp)
            .ok_or_else(|| HandlerError::permanent("StockReserved without expires_at"))?;
        let input = SagaInput::StockReserved { reservation_id: e.reservation_id, expires_at };
        self.advance(tx, &e.order_id, input, event).await
    }

    async fn stock_reservation_failed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::StockReservationFailed,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let ids = e.shortfalls.into_iter().map(|shortfall| shortfall.product_id).collect();
        self.advance(
            tx,
            &e.order_id,
            SagaInput::StockReservationFailed { unavailable_product_ids: ids },
            event,
        )
        .await
    }

    async fn payment_captured(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::PaymentCaptured,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        self.advance(tx, &e.order_id, SagaInput::PaymentCaptured { payment_id: e.payment_id }, event).await
    }

    async fn payment_failed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::PaymentFailed,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let declined = e.reason() != ev::payment_failed::Reason::ProviderUnavailable;
        self.advance(tx, &e.order_id, SagaInput::PaymentFailed { declined, detail: e.detail }, event).await
    }

    async fn payment_refunded(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::PaymentRefunded,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        self.advance(tx, &e.order_id, SagaInput::PaymentRefunded, event).await
    }

    async fn shipment_created(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::ShipmentCreated,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        self.advance(tx, &e.order_id, SagaInput::ShipmentCreated { shipment_id: e.shipment_id }, event).await
    }

    async fn shipment_status_changed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::ShipmentStatusChanged,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let input = match e.status() {
            ev::ShipmentStatus::PickedUp | ev::ShipmentStatus::InTransit => {
                SagaInput::ShipmentMoving { shipment_id: e.shipment_id }
            }
            _ => SagaInput::ShipmentCreated { shipment_id: e.shipment_id },
        };
        self.advance(tx, &e.order_id, input, event).await
    }

    async fn shipment_delivered(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::ShipmentDelivered,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        self.advance(tx, &e.order_id, SagaInput::ShipmentDelivered { shipment_id: e.shipment_id }, event)
            .await
    }
}

impl OrderEventHandler {
    /// Feeds `input` to the saga of order `order_id`.
    async fn advance(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        order_id: &str,
        input: SagaInput,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let id = parse_order_id(order_id)?;
        match apply_input(tx, id, input).await? {
            Some((before, order)) => {
                self.metrics.observe(before, &order);
                tracing::debug!(order_id = %id, status = %order.saga.status, event_type = event.event_type(), "order saga advanced")
            }
            // Another stack's order, or a payment made by the Charge RPC
            // without an order: nothing of ours to change.
            None => {
                tracing::warn!(order_id = %id, event_type = event.event_type(), "event about an unknown order ignored")
            }
        }
        Ok(())
    }
}

impl From<Error> for HandlerError {
    fn from(error: Error) -> Self {
        if error.is_transient() { HandlerError::retryable(error) } else { HandlerError::permanent(error) }
    }
}

/// How many lapsed orders one sweep handles before looking again.
const SWEEP_BATCH: i64 = 100;

/// Fails open orders whose reservation lapsed, every `interval`, until
/// `shutdown`. Each order is failed in its own transaction under its row
/// lock, through the same state machine as events, so a payment captured at
/// the same moment either confirms first or finds the order failed.
///
/// "Now" is the database's clock, not this process's: inventory stamps a
/// reservation's expiry with its database's clock, and an order process
/// whose clock ran minutes ahead would otherwise fail every open order.
pub async fn run_reservation_sweeper(
    pool: PgPool,
    interval: Duration,
    metrics: SagaMetrics,
    shutdown: CancellationToken,
) {
    loop {
        let swept = match commerce_platform::db::database_now(&pool).await {
            Ok(now) => sweep_once(&pool, now, &metrics).await,
            Err(error) => Err(Error::LoadOrder(error)),
        };
        if let Err(error) = swept {
            tracing::warn!(error = %crate::error_chain(&error), "reservation sweep failed; retrying next round");
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
    tracing::info!("reservation sweeper stopped");
}

/// One sweep at `now`; returns how many orders it failed (counted in
/// `metrics` once committed).
pub async fn sweep_once(pool: &PgPool, now: DateTime<Utc>, metrics: &SagaMetrics) -> Result<usize, Error> {
    let mut failed = 0;
    for id in store::lapsed_reservations(pool, now, SWEEP_BATCH).await? {
        let mut tx = pool.begin().await.map_err(Error::UpdateOrder)?;
        let stepped = apply_input(&mut tx, id, SagaInput::ReservationClock { now }).await?;
        tx.commit().await.map_err(Error::UpdateOrder)?;
        if let Some((before, order)) = stepped {
            metrics.observe(before, &order);
            if order.saga.status == OrderStatus::Failed {
                failed += 1;
                tracing::info!(order_id = %id, "order failed: its reservation expired");
            }
        }
    }
    Ok(failed)
}
