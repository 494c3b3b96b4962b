//! The payment database: one payment row per order and its refunds.
//! Runtime-checked sqlx queries on a connection the caller owns, so that
//! state changes and their outbox rows commit together.

use chrono::{DateTime, Utc};
use commerce_platform::trace_context::{self, SpanContext};
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use crate::Error;
use crate::domain::PaymentStatus;

/// Channel of the `NOTIFY` that wakes the payment worker
/// ([`crate::worker`]) when work becomes due: a payment became chargeable,
/// a void was requested or a refund was queued. It is sent inside the
/// transaction that makes the work due, so Postgres delivers it only on
/// commit (never before the row is visible to the worker, never for a
/// rolled-back change) and to every replica's worker; one that is lost
/// (listener reconnecting) is covered by the worker's fallback poll.
pub const WORK_DUE_CHANNEL: &str = "commerce_payment_work_due";

/// Wakes the workers when the caller's transaction commits.
async fn notify_work_due(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')").bind(WORK_DUE_CHANNEL).execute(&mut *conn).await?;
    Ok(())
}

/// A payment as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub id: Uuid,
    pub order_id: String,
    pub user_id: String,
    pub currency: String,
    pub amount: i64,
    pub payment_method_token: String,
    pub intent_received: bool,
    pub stock_reserved: bool,
    pub status: PaymentStatus,
    pub attempts: u32,
    pub provider: String,
    pub provider_reference: String,
    pub failure_reason: String,
    pub refunded: i64,
    /// The order died while the charge's outcome was unknown: the provider
    /// must still be told to void the key.
    pub void_pending: bool,
    /// What the void found (`nothing_charged`, `reversed`); empty before.
    pub void_outcome: String,
    /// The span that made the payment chargeable, which the charge
    /// continues (`None` for payments stored before traces were kept).
    pub trace: Option<SpanContext>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct PaymentRow {
    id: Uuid,
    order_id: String,
    user_id: String,
    currency: String,
    amount_units: i64,
    payment_method_token: String,
    intent_received: bool,
    stock_reserved: bool,
    status: String,
    attempts: i32,
    provider: String,
    provider_reference: String,
    failure_reason: String,
    refunded_units: i64,
    void_pending: bool,
    void_outcome: String,
    traceparent: String,
    tracestate: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const PAYMENT_COLUMNS: &str = "id, order_id, user_id, currency, amount_units, payment_method_token, intent_received, \
     stock_reserved, status, attempts, provider, provider_reference, failure_reason, refunded_units, void_pending, void_outcome, traceparent, tracestate, created_at, updated_at";

impl TryFrom<PaymentRow> for Payment {
    type Error = Error;

    fn try_from(row: PaymentRow) -> Result<Self, Error> {
        let status = PaymentStatus::parse(&row.status).ok_or_else(|| Error::DecodeStoredPayment {
            id: row.id,
            problem: format!("unknown status {}", row.status),
        })?;
        Ok(Payment {
            id: row.id,
            order_id: row.order_id,
            user_id: row.user_id,
            currency: row.currency,
            amount: row.amount_units,
            payment_method_token: row.payment_method_token,
            intent_received: row.intent_received,
            stock_reserved: row.stock_reserved,
            status,
            attempts: u32::try_from(row.attempts).unwrap_or_default(),
            provider: row.provider,
            provider_reference: row.provider_reference,
            failure_reason: row.failure_reason,
            refunded: row.refunded_units,
            void_pending: row.void_pending,
            void_outcome: row.void_outcome,
            trace: trace_context::parse(&row.traceparent, Some(&row.tracestate)),
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// A refund as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Refund {
    pub id: Uuid,
    pub payment_id: Uuid,
    #[sqlx(rename = "amount_units")]
    pub amount: i64,
    pub reason: String,
    pub idempotency_key: String,
    /// `PENDING` or `COMPLETED`.
    pub status: String,
    pub provider_reference: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
}

const REFUND_COLUMNS: &str =
    "id, payment_id, amount_units, reason, idempotency_key, status, provider_reference, attempts, created_at";

/// Records the charge intent of OrderPlaced (first arrival wins); wakes the
/// workers on commit if the payment became chargeable.
pub async fn record_intent(
    conn: &mut PgConnection,
    order_id: &str,
    user_id: &str,
    currency: &str,
    amount: i64,
    token: &str,
) -> Result<(), Error> {
    let chargeable = sqlx::query_scalar(
        "INSERT INTO payments (id, order_id, user_id, currency, amount_units, payment_method_token, intent_received, \
         traceparent, tracestate) \
         VALUES ($1, $2, $3, $4, $5, $6, TRUE, $7, $8) \
         ON CONFLICT (order_id) DO UPDATE SET user_id = EXCLUDED.user_id, currency = EXCLUDED.currency, \
         amount_units = EXCLUDED.amount_units, payment_method_token = EXCLUDED.payment_method_token, \
         intent_received = TRUE, next_attempt_at = now(), updated_at = now(), \
         traceparent = EXCLUDED.traceparent, tracestate = EXCLUDED.tracestate \
         WHERE NOT payments.intent_received \
         RETURNING status = 'PENDING' AND intent_received AND stock_reserved",
    )
    .bind(Uuid::now_v7())
    .bind(order_id)
    .bind(user_id)
    .bind(currency)
    .bind(amount)
    .bind(token);
    let (traceparent, tracestate) = current_trace();
    let chargeable: Option<bool> = chargeable
        .bind(traceparent)
        .bind(tracestate)
        .fetch_optional(&mut *conn)
        .await
        .map_err(Error::UpdatePayment)?;
    wake_if_chargeable(conn, chargeable).await
}

/// Records that the order's stock is held (StockReserved); wakes the
/// workers on commit if the payment became chargeable.
pub async fn record_stock_reserved(conn: &mut PgConnection, order_id: &str) -> Result<(), Error> {
    let (traceparent, tracestate) = current_trace();
    let chargeable: Option<bool> = sqlx::query_scalar(
        "INSERT INTO payments (id, order_id, stock_reserved, traceparent, tracestate) VALUES ($1, $2, TRUE, $3, $4) \
         ON CONFLICT (order_id) DO UPDATE SET stock_reserved = TRUE, next_attempt_at = now(), updated_at = now(), \
         traceparent = EXCLUDED.traceparent, tracestate = EXCLUDED.tracestate \
         WHERE NOT payments.stock_reserved \
         RETURNING status = 'PENDING' AND intent_received AND stock_reserved",
    )
    .bind(Uuid::now_v7())
    .bind(order_id)
    .bind(traceparent)
    .bind(tracestate)
    .fetch_optional(&mut *conn)
    .await
    .map_err(Error::UpdatePayment)?;
    wake_if_chargeable(conn, chargeable).await
}

/// The current span's `traceparent` and `tracestate` (empty strings
/// outside a span), stored by the write that may make a payment chargeable:
/// the last of the two halves to arrive is the one the charge continues.
fn current_trace() -> (String, String) {
    let mut traceparent = String::new();
    let mut tracestate = String::new();
    for (name, value) in trace_context::current().as_ref().map(trace_context::headers).unwrap_or_default() {
        match name {
            trace_context::TRACEPARENT => traceparent = value,
            _ => tracestate = value,
        }
    }
    (traceparent, tracestate)
}

/// Notifies the workers (on commit) if the row just written by
/// [`record_intent`] or [`record_stock_reserved`] became chargeable; `None`
/// means the write changed nothing (a redelivered half).
async fn wake_if_chargeable(conn: &mut PgConnection, chargeable: Option<bool>) -> Result<(), Error> {
    if chargeable == Some(true) {
        notify_work_due(conn).await.map_err(Error::UpdatePayment)?;
    }
    Ok(())
}

/// Makes sure a row exists for `order_id` (a dead order whose intent never
/// arrived still gets one, CANCELLED, so a late intent is never charged).
pub async fn ensure_row(conn: &mut PgConnection, order_id: &str) -> Result<(), Error> {
    sqlx::query("INSERT INTO payments (id, order_id) VALUES ($1, $2) ON CONFLICT (order_id) DO NOTHING")
        .bind(Uuid::now_v7())
        .bind(order_id)
        .execute(&mut *conn)
        .await
        .map_err(Error::UpdatePayment)?;
    Ok(())
}

/// The payment of an order, locked until the transaction ends (waits for a
/// worker holding it mid-charge).
pub async fn lock_by_order(conn: &mut PgConnection, order_id: &str) -> Result<Option<Payment>, Error> {
    let row: Option<PaymentRow> =
        sqlx::query_as(&format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = $1 FOR UPDATE"))
            .bind(order_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(Error::LoadPayment)?;
    row.map(Payment::try_from).transpose()
}

/// The payment with `id`, locked.
pub async fn lock_by_id(conn: &mut PgConnection, id: Uuid) -> Result<Option<Payment>, Error> {
    let row: Option<PaymentRow> =
        sqlx::query_as(&format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1 FOR UPDATE"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(Error::LoadPayment)?;
    row.map(Payment::try_from).transpose()
}

/// The next due charge nobody else is working on, locked.
pub async fn lock_due_charge(conn: &mut PgConnection) -> Result<Option<Payment>, Error> {
    let row: Option<PaymentRow> = sqlx::query_as(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments \
         WHERE status = 'PENDING' AND intent_received AND stock_reserved AND next_attempt_at <= now() \
         ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED"
    ))
    .fetch_optional(&mut *conn)
    .await
    .map_err(Error::LoadPayment)?;
    row.map(Payment::try_from).transpose()
}

/// Makes the charge or void of `order_id` due now, if one is waiting (a
/// retry scheduled after the provider was still working on it), and wakes
/// the workers on commit; whether there was one. What the provider decided
/// is read from its API by the worker, never taken from the caller.
pub async fn make_due_now(conn: &mut PgConnection, order_id: &str) -> Result<bool, Error> {
    let waiting = sqlx::query(
        "UPDATE payments SET next_attempt_at = now(), updated_at = now() \
         WHERE order_id = $1 AND (status = 'PENDING' OR void_pending) AND next_attempt_at > now()",
    )
    .bind(order_id)
    .execute(&mut *conn)
    .await
    .map_err(Error::UpdatePayment)?
    .rows_affected()
        > 0;
    if waiting {
        notify_work_due(conn).await.map_err(Error::UpdatePayment)?;
    }
    Ok(waiting)
}

/// A payment by id or by order id, unlocked.
pub async fn find(
    conn: &mut PgConnection,
    id: Option<Uuid>,
    order_id: Option<&str>,
) -> Result<Option<Payment>, Error> {
    let row: Option<PaymentRow> =
        sqlx::query_as(&format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1 OR order_id = $2"))
            .bind(id)
            .bind(order_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(Error::LoadPayment)?;
    row.map(Payment::try_from).transpose()
}

/// Stores a final charge outcome (or a status change).
pub async fn set_status(
    conn: &mut PgConnection,
    id: Uuid,
    status: PaymentStatus,
    provider: &str,
    provider_reference: &str,
    failure_reason: &str,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE payments SET status = $2, provider = $3, provider_reference = $4, failure_reason = $5, \
         updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(provider)
    .bind(provider_reference)
    .bind(failure_reason)
    .execute(&mut *conn)
    .await
    .map_err(Error::UpdatePayment)?;
    Ok(())
}

/// Marks a payment whose charge outcome is unknown for voiding, due now,
/// and wakes the workers on commit.
pub async fn request_void(conn: &mut PgConnection, id: Uuid) -> Result<(), Error> {
    sqlx::query(
        "UPDATE payments SET void_pending = TRUE, next_attempt_at = now(), updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *conn)
    .await
    .map_err(Error::UpdatePayment)?;
    notify_work_due(conn).await.map_err(Error::UpdatePayment)?;
    Ok(())
}

/// The next due void nobody else is working on, locked.
pub async fn lock_due_void(conn: &mut PgConnection) -> Result<Option<Payment>, Error> {
    let row: Option<PaymentRow> = sqlx::query_as(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE void_pending AND next_attempt_at <= now() \
         ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED"
    ))
    .fetch_optional(&mut *conn)
    .await
    .map_err(Error::LoadPayment)?;
    row.map(Payment::try_from).transpose()
}

/// Records what the provider's void found; a reversal's reference replaces
/// the (unknown) charge reference.
pub async fn complete_void(
    conn: &mut PgConnection,
    id: Uuid,
    outcome: &str,
    reference: &str,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE payments SET void_pending = FALSE, void_outcome = $2, \
         provider_reference = CASE WHEN $3 = '' THEN provider_reference ELSE $3 END, updated_at = now() \
         WHERE id = $1",
    )
    .bind(id)
    .bind(outcome)
    .bind(reference)
    .execute(&mut *conn)
    .await
    .map_err(Error::UpdatePayment)?;
    Ok(())
}

/// Schedules the next provider call of a payment whose last one found the
/// provider unavailable, `delay` after the database's now: a charge (the
/// payment stays PENDING) or a void (it stays `void_pending`).
pub async fn schedule_retry(
    conn: &mut PgConnection,
    id: Uuid,
    delay: std::time::Duration,
    last_error: &str,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE payments SET attempts = attempts + 1, next_attempt_at = now() + $2, failure_reason = $3, \
         updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(chrono_delay(delay))
    .bind(last_error)
    .execute(&mut *conn)
    .await
    .map_err(Error::UpdatePayment)?;
    Ok(())
}

/// Creates a PENDING refund (waking the workers on commit), or finds the
/// one with the same key.
pub async fn insert_refund(
    conn: &mut PgConnection,
    payment_id: Uuid,
    amount: i64,
    reason: &str,
    idempotency_key: &str,
) -> Result<Refund, Error> {
    let inserted = sqlx::query(
        "INSERT INTO refunds (id, payment_id, amount_units, reason, idempotency_key) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (payment_id, idempotency_key) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(payment_id)
    .bind(amount)
    .bind(reason)
    .bind(idempotency_key)
    .execute(&mut *conn)
    .await
    .map_err(Error::UpdateRefund)?
    .rows_affected();
    if inserted > 0 {
        // A refund made on the spot (the gRPC path) leaves a spurious
        // wake-up: one empty round, cheaper than telling the paths apart.
        notify_work_due(conn).await.map_err(Error::UpdateRefund)?;
    }
    find_refund_by_key(conn, payment_id, idempotency_key).await?.ok_or(Error::RefundNotFound)
}

pub async fn find_refund_by_key(
    conn: &mut PgConnection,
    payment_id: Uuid,
    idempotency_key: &str,
) -> Result<Option<Refund>, Error> {
    sqlx::query_as(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_id = $1 AND idempotency_key = $2"
    ))
    .bind(payment_id)
    .bind(idempotency_key)
    .fetch_optional(&mut *conn)
    .await
    .map_err(Error::LoadRefund)
}

/// Sum of every refund of a payment, made or in progress.
pub async fn committed_refunds(conn: &mut PgConnection, payment_id: Uuid) -> Result<i64, Error> {
    sqlx::query_scalar("SELECT COALESCE(SUM(amount_units), 0)::BIGINT FROM refunds WHERE payment_id = $1")
        .bind(payment_id)
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::LoadRefund)
}

/// Refunds of a payment, oldest first.
pub async fn refunds_of(conn: &mut PgConnection, payment_id: Uuid) -> Result<Vec<Refund>, Error> {
    sqlx::query_as(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_id = $1 ORDER BY created_at, id"
    ))
    .bind(payment_id)
    .fetch_all(&mut *conn)
    .await
    .map_err(Error::LoadRefund)
}

/// The next due pending refund nobody else is working on, locked.
pub async fn lock_due_refund(conn: &mut PgConnection) -> Result<Option<Refund>, Error> {
    sqlx::query_as(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE status = 'PENDING' AND next_attempt_at <= now() \
         ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED"
    ))
    .fetch_optional(&mut *conn)
    .await
    .map_err(Error::LoadRefund)
}

/// A refund by id, locked.
pub async fn lock_refund(conn: &mut PgConnection, id: Uuid) -> Result<Option<Refund>, Error> {
    sqlx::query_as(&format!("SELECT {REFUND_COLUMNS} FROM refunds WHERE id = $1 FOR UPDATE"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(Error::LoadRefund)
}

/// Marks a refund made and adds it to its payment's refunded total.
pub async fn complete_refund(
    conn: &mut PgConnection,
    refund: &Refund,
    provider_reference: &str,
    payment_status: PaymentStatus,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE refunds SET status = 'COMPLETED', provider_reference = $2, completed_at = now() WHERE id = $1",
    )
    .bind(refund.id)
    .bind(provider_reference)
    .execute(&mut *conn)
    .await
    .map_err(Error::UpdateRefund)?;
    sqlx::query(
        "UPDATE payments SET refunded_units = refunded_units + $2, status = $3, updated_at = now() WHERE id = $1",
    )
    .bind(refund.payment_id)
    .bind(refund.amount)
    .bind(payment_status.as_str())
    .execute(&mut *conn)
    .await
    .map_err(Error::UpdatePayment)?;
    Ok(())
}

/// Keeps a refund PENDING and schedules its next attempt `delay` after the
/// database's now.
pub async fn schedule_refund_retry(
    conn: &mut PgConnection,
    id: Uuid,
    delay: std::time::Duration,
) -> Result<(), Error> {
    sqlx::query("UPDATE refunds SET attempts = attempts + 1, next_attempt_at = now() + $2 WHERE id = $1")
        .bind(id)
        .bind(chrono_delay(delay))
        .execute(&mut *conn)
        .await
        .map_err(Error::UpdateRefund)?;
    Ok(())
}

/// `delay` as an interval parameter, in whole microseconds (Postgres'
/// precision; sqlx refuses finer ones, and a jittered delay has them).
fn chrono_delay(delay: std::time::Duration) -> chrono::Duration {
    chrono::Duration::microseconds(i64::try_from(delay.as_micros()).unwrap_or(i64::MAX))
}
