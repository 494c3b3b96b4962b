//! The payment worker: charges due PENDING payments and makes pending refunds,
//! each under its row lock, calling the provider through the breaker and
//! writing the outcome with its event in the same transaction.
//!
//! Holding the row lock across the provider call is deliberate: the consumer
//! handling OrderFailed/OrderCancelled waits for it, then sees the outcome,
//! so a payment is either cancelled before any charge or refunded after it.
//! A crash after the provider answered but before the commit leaves the row
//! PENDING; the next attempt repeats the call with the same idempotency key
//! (the order id) and the provider returns the first capture: nothing is
//! charged twice.
//!
//! If the order dies while the payment is still PENDING but was due (a call
//! may have failed, or its answer died with a crashed process), the payment
//! is cancelled and the worker voids the key with the provider: a capture the provider made despite the failed call is reversed,
//! and a charge still in flight can take no money afterwards. An order that
//! died never leaves money with the provider.
//!
//! Latency: whatever makes work due (the consumer recording the second half
//! of a charge, a void or a refund) sends a `NOTIFY` on
//! [`store::WORK_DUE_CHANNEL`] in its transaction, and the worker `LISTEN`s,
//! so a charge starts within milliseconds of its commit on any replica. The
//! poll interval is the fallback: it catches retries that fall due and
//! notifications lost while the listener reconnects.

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use commerce_platform::admin::Metrics;
use commerce_platform::events::enqueue;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sqlx::postgres::{PgConnection, PgListener, PgPool};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::domain::{self, PaymentStatus};
use crate::events::{payment_captured, payment_failed, payment_refunded};
use crate::provider::{
    ChargeOutcome, ChargeRequest, PaymentProvider, ProviderBreaker, ProviderError, RefundRequest, VoidOutcome,
};
use crate::store::{self, Payment, Refund};

/// How the worker paces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSettings {
    /// Longest pause between scans when nothing was due; a notification on
    /// [`store::WORK_DUE_CHANNEL`] ends it at once, so this only bounds how
    /// late a retry falling due or a lost notification is noticed.
    pub poll_interval: Duration,
    /// First delay after the provider was unavailable; doubles per attempt.
    pub retry_base: Duration,
    /// Longest delay between attempts.
    pub retry_cap: Duration,
}

/// What one charge attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeAttempt {
    /// Not chargeable (not pending, or intent/stock missing).
    NotDue,
    Captured,
    Declined,
    /// The provider was unavailable (or the breaker open): retry later.
    Deferred(ProviderError),
}

/// Label of an attempt's outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// What operators watch: provider outcomes and whether the breaker is open
/// (an outage shows as `deferred` attempts and an open breaker, long before
/// orders start failing by reservation expiry).
#[derive(Debug, Clone, Default)]
struct WorkerMetrics {
    charges: Family<OutcomeLabels, Counter>,
    refunds: Family<OutcomeLabels, Counter>,
    voids: Family<OutcomeLabels, Counter>,
    breaker_open: Gauge,
}

impl WorkerMetrics {
    fn count(family: &Family<OutcomeLabels, Counter>, outcome: &str) {
        family.get_or_create(&OutcomeLabels { outcome: outcome.to_owned() }).inc();
    }
}

/// Charges and refunds; cheap to clone.
#[derive(Clone)]
pub struct Worker {
    pool: PgPool,
    provider: Arc<dyn PaymentProvider>,
    breaker: ProviderBreaker,
    settings: WorkerSettings,
    metrics: WorkerMetrics,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Worker {
    pub fn new(
        pool: PgPool,
        provider: Arc<dyn PaymentProvider>,
        breaker: ProviderBreaker,
        settings: WorkerSettings,
    ) -> Self {
        Self { pool, provider, breaker, settings, metrics: WorkerMetrics::default() }
    }

    /// Exports `commerce_payment_charge_attempts_total{outcome}`,
    /// `commerce_payment_refund_attempts_total{outcome}`,
    /// `commerce_payment_void_attempts_total{outcome}` and
    /// `commerce_payment_provider_circuit_open` in `metrics`.
    pub fn with_metrics(self, metrics: &Metrics) -> Self {
        metrics.register(
            "commerce_payment_charge_attempts",
            "Charge attempts by outcome: captured, declined, deferred (provider unavailable or circuit open)",
            self.metrics.charges.clone(),
        );
        metrics.register(
            "commerce_payment_refund_attempts",
            "Refund attempts by outcome: made, deferred",
            self.metrics.refunds.clone(),
        );
        metrics.register(
            "commerce_payment_void_attempts",
            "Voids of dead orders' charge keys by outcome: nothing_charged, reversed, deferred",
            self.metrics.voids.clone(),
        );
        metrics.register(
            "commerce_payment_provider_circuit_open",
            "1 while the circuit breaker around the payment provider is open",
            self.metrics.breaker_open.clone(),
        );
        self
    }

    /// Charges, refunds and voids until `shutdown`.
    ///
    /// After a round that found work it runs the next one at once (drains);
    /// after an empty one it waits for a notification on
    /// [`store::WORK_DUE_CHANNEL`] (sent on commit by whatever made work
    /// due), the poll interval (retries that fall due, notifications lost
    /// while the listener reconnects), or `shutdown`. The listener is set
    /// up before the round, so a commit between the round's read and the
    /// wait still wakes the worker. Without a listener (it could not
    /// connect, or failed) the worker polls and tries to listen again
    /// before each round; a failure never stops it.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut listener = None;
        while !shutdown.is_cancelled() {
            if listener.is_none() {
                // Connecting may wait out the pool's acquire timeout while
                // the database is away; shutdown need not.
                listener = tokio::select! {
                    () = shutdown.cancelled() => break,
                    listener = self.listen() => listener,
                };
            }
            let rounds = [self.charge_next().await, self.refund_next().await, self.void_next().await];
            let worked = match rounds {
                [Ok(charged), Ok(refunded), Ok(voided)] => charged || refunded || voided,
                rounds => {
                    for error in rounds.into_iter().filter_map(Result::err) {
                        tracing::warn!(error = %crate::error_chain(&error), "payment worker round failed");
                    }
                    false
                }
            };
            if !worked {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(self.settings.poll_interval) => {}
                    () = next_notification(&mut listener) => {}
                }
            }
        }
        tracing::info!("payment worker stopped");
    }

    /// A listener on [`store::WORK_DUE_CHANNEL`], or `None` (then polling
    /// alone drives the worker until the next attempt). It holds one pooled
    /// connection for as long as it lives.
    async fn listen(&self) -> Option<PgListener> {
        let attempt = async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(store::WORK_DUE_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match attempt.await {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(error = %error, "cannot listen for due payment work; polling");
                None
            }
        }
    }

    /// How long to wait before calling the provider again after `attempts`
    /// calls found it away: the step of [`domain::retry_delay`] with equal
    /// jitter, so that the payments of an outage do not all retry in the
    /// same instant. The next attempt's time is the database's clock plus
    /// this (it is compared with the database's clock): a payment process
    /// whose own clock is off by minutes still retries on time.
    fn retry_delay(&self, attempts: u32) -> std::time::Duration {
        commerce_platform::backoff::equal_jitter(domain::retry_delay(
            attempts,
            self.settings.retry_base,
            self.settings.retry_cap,
        ))
    }

    /// Attempts the next due charge; true if there was one.
    pub async fn charge_next(&self) -> Result<bool, Error> {
        // A plain transaction: a round that finds nothing is no trace.
        let mut tx = self.pool.begin().await.map_err(Error::UpdatePayment)?;
        let Some(payment) = store::lock_due_charge(&mut tx).await? else {
            return Ok(false);
        };
        // The charge continues the trace of the event that made the payment
        // chargeable, so the PaymentCaptured or PaymentFailed it publishes
        // joins the order's trace.
        let span = tracing::info_span!(
            "payment_charge",
            otel.name = "charge payment",
            order_id = %payment.order_id,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        commerce_platform::trace_context::start(&span, payment.trace.as_ref());
        let attempt = self.charge_locked(&mut tx, &payment).instrument(span.clone()).await?;
        tx.commit().instrument(span).await.map_err(Error::UpdatePayment)?;
        tracing::info!(order_id = %payment.order_id, ?attempt, "charge attempted");
        Ok(true)
    }

    /// Charges `payment`, locked in `conn`'s transaction, if it is due.
    pub async fn charge_locked(
        &self,
        conn: &mut PgConnection,
        payment: &Payment,
    ) -> Result<ChargeAttempt, Error> {
        if !domain::ready_to_charge(payment.status, payment.intent_received, payment.stock_reserved) {
            return Ok(ChargeAttempt::NotDue);
        }
        let request = charge_request(payment);
        let provider = self.provider.name();
        let outcome = self.breaker.call(self.provider.charge(&request)).await;
        self.metrics.breaker_open.set(i64::from(self.breaker.is_open()));
        let label = match &outcome {
            Ok(ChargeOutcome::Captured { .. }) => "captured",
            Ok(ChargeOutcome::Declined { .. }) => "declined",
            Err(_) => "deferred",
        };
        WorkerMetrics::count(&self.metrics.charges, label);
        match outcome {
            Ok(ChargeOutcome::Captured { reference }) => {
                store::set_status(conn, payment.id, PaymentStatus::Captured, provider, &reference, "")
                    .await?;
                let event = payment_captured(payment, provider, &reference);
                enqueue(conn, &event).await.map_err(|error| Error::EnqueueEvent(Box::new(error)))?;
                Ok(ChargeAttempt::Captured)
            }
            Ok(ChargeOutcome::Declined { reason }) => {
                store::set_status(conn, payment.id, PaymentStatus::Declined, provider, "", &reason).await?;
                let event = payment_failed(payment, true, &reason);
                enqueue(conn, &event).await.map_err(|error| Error::EnqueueEvent(Box::new(error)))?;
                Ok(ChargeAttempt::Declined)
            }
            Err(error) => {
                let delay = self.retry_delay(payment.attempts);
                store::schedule_retry(conn, payment.id, delay, &error.to_string()).await?;
                Ok(ChargeAttempt::Deferred(error))
            }
        }
    }

    /// Voids the next due charge key of a dead order; true if there was one.
    pub async fn void_next(&self) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await.map_err(Error::UpdatePayment)?;
        let Some(payment) = store::lock_due_void(&mut tx).await? else {
            return Ok(false);
        };
        let outcome = self.breaker.call(self.provider.void(&charge_request(&payment))).await;
        self.metrics.breaker_open.set(i64::from(self.breaker.is_open()));
        match outcome {
            Ok(void) => {
                WorkerMetrics::count(&self.metrics.voids, void.as_str());
                let reference = match &void {
                    VoidOutcome::Reversed { reference } => {
                        tracing::warn!(
                            order_id = %payment.order_id,
                            reference,
                            "the provider had captured a dead order's charge despite the failed call; reversed"
                        );
                        reference.as_str()
                    }
                    VoidOutcome::NothingCharged => "",
                };
                store::complete_void(&mut tx, payment.id, void.as_str(), reference).await?;
            }
            Err(error) => {
                WorkerMetrics::count(&self.metrics.voids, "deferred");
                let delay = self.retry_delay(payment.attempts);
                store::schedule_retry(&mut tx, payment.id, delay, &error.to_string()).await?;
            }
        }
        tx.commit().await.map_err(Error::UpdatePayment)?;
        Ok(true)
    }

    /// Makes the next due refund; true if there was one.
    pub async fn refund_next(&self) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await.map_err(Error::UpdateRefund)?;
        let Some(refund) = store::lock_due_refund(&mut tx).await? else {
            return Ok(false);
        };
        let made = self.refund_locked(&mut tx, &refund).await?;
        tx.commit().await.map_err(Error::UpdateRefund)?;
        tracing::info!(refund_id = %refund.id, made = made.is_ok(), "refund attempted");
        Ok(true)
    }

    /// Makes `refund` (locked, PENDING) with the provider; `Err` inside `Ok`
    /// when the provider was away and the refund stays pending.
    pub async fn refund_locked(
        &self,
        conn: &mut PgConnection,
        refund: &Refund,
    ) -> Result<Result<Refund, ProviderError>, Error> {
        if refund.status != "PENDING" {
            return Ok(Ok(refund.clone()));
        }
        let payment = store::lock_by_id(conn, refund.payment_id).await?.ok_or(Error::PaymentNotFound)?;
        let request = RefundRequest {
            idempotency_key: refund.id.to_string(),
            charge_reference: payment.provider_reference.clone(),
            amount: refund.amount,
            currency: payment.currency.clone(),
        };
        let outcome = self.breaker.call(self.provider.refund(&request)).await;
        self.metrics.breaker_open.set(i64::from(self.breaker.is_open()));
        WorkerMetrics::count(&self.metrics.refunds, if outcome.is_ok() { "made" } else { "deferred" });
        match outcome {
            Ok(reference) => {
                let total = payment.refunded + refund.amount;
                let status = domain::status_after_refund(payment.amount, total);
                store::complete_refund(conn, refund, &reference, status).await?;
                let event = payment_refunded(&payment, refund, total, status == PaymentStatus::Refunded);
                enqueue(conn, &event).await.map_err(|error| Error::EnqueueEvent(Box::new(error)))?;
                Ok(Ok(Refund {
                    status: "COMPLETED".to_owned(),
                    provider_reference: reference,
                    ..refund.clone()
                }))
            }
            Err(error) => {
                let delay = self.retry_delay(u32::try_from(refund.attempts).unwrap_or_default());
                store::schedule_refund_retry(conn, refund.id, delay).await?;
                Ok(Err(error))
            }
        }
    }
}

/// The charge of `payment`, its idempotency key the order id; a void
/// repeats the very same request (see [`PaymentProvider::void`]).
fn charge_request(payment: &Payment) -> ChargeRequest {
    ChargeRequest {
        idempotency_key: payment.order_id.clone(),
        amount: payment.amount,
        currency: payment.currency.clone(),
        payment_method_token: payment.payment_method_token.clone(),
    }
}

/// Completes when `listener` receives a notification. Without a listener,
/// or after it failed (the error is logged and the listener dropped, to be
/// set up again before the next round), it never completes, so the wait
/// ends at the poll interval: a broken listener can never make the worker
/// spin.
async fn next_notification(listener: &mut Option<PgListener>) {
    let Some(active) = listener else {
        return std::future::pending().await;
    };
    match active.recv().await {
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(error = %error, "payment work notifications interrupted; polling");
            *listener = None;
            std::future::pending::<()>().await;
        }
    }
}
