//! The payment worker against a real Postgres: a crash between the provider's
//! answer and the commit never charges twice, a dead order's pending payment
//! is never charged, a captured one is refunded once, and a running worker
//! is woken by the commit that makes work due rather than by its poll.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use commerce_payment::domain::PaymentStatus;
use commerce_payment::provider::{
    ChargeOutcome, ChargeRequest, LOST_ANSWER_TOKEN, MockProvider, MockSettings, PaymentProvider,
    ProviderBreaker, ProviderError, RefundRequest, VoidOutcome,
};
use commerce_payment::worker::{Worker, WorkerSettings};
use commerce_payment::{events, store};
use sqlx::postgres::PgPool;
use support::{database, intent_and_stock, outbox_count, payment, worker};
use tokio_util::sync::CancellationToken;

/// Forwards to the mock, then "crashes" once after the provider took the
/// money: the worker sees an error and its transaction rolls back, as if
/// the process died between the provider call and the commit.
struct CrashAfterFirstCharge {
    inner: Arc<MockProvider>,
    crashed: AtomicBool,
}

#[async_trait]
impl PaymentProvider for CrashAfterFirstCharge {
    fn name(&self) -> &'static str {
        "mock"
    }

    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, ProviderError> {
        let outcome = self.inner.charge(request).await?;
        if !self.crashed.swap(true, Ordering::SeqCst) {
            return Err(ProviderError::Unavailable("crashed after the provider answered".to_owned()));
        }
        Ok(outcome)
    }

    async fn refund(&self, request: &RefundRequest) -> Result<String, ProviderError> {
        self.inner.refund(request).await
    }

    async fn void(&self, charge: &ChargeRequest) -> Result<VoidOutcome, ProviderError> {
        self.inner.void(charge).await
    }
}

#[tokio::test]
async fn a_crash_after_the_provider_call_never_charges_the_order_twice() -> anyhow::Result<()> {
    let (database, pool) = database().await?;
    let mock = Arc::new(MockProvider::new(MockSettings::default()));
    let provider = Arc::new(CrashAfterFirstCharge { inner: mock.clone(), crashed: AtomicBool::new(false) });
    let worker = worker(&pool, provider);
    intent_and_stock(&pool, "order-crash", "tok_ok").await?;

    assert!(worker.charge_next().await?, "the first attempt ran");
    assert_eq!(payment(&pool, "order-crash").await?.status, PaymentStatus::Pending, "the outcome was lost");
    assert_eq!(mock.charges_taken_for("order-crash"), 1, "but the provider took the money");

    assert!(worker.charge_next().await?, "the retry ran");
    let captured = payment(&pool, "order-crash").await?;
    assert_eq!(captured.status, PaymentStatus::Captured);
    assert_eq!(captured.provider_reference, "mock_ch_order-crash", "the first capture, returned again");
    assert_eq!(mock.state().charges_taken, 1, "money was taken once");
    assert_eq!(outbox_count(&pool, "commerce.events.v1.PaymentCaptured").await?, 1);
    assert!(!worker.charge_next().await?, "nothing left to charge");

    pool.close().await;
    database.drop_database().await
}

#[tokio::test]
async fn a_payment_is_charged_only_when_intent_and_stock_are_both_in() -> anyhow::Result<()> {
    let (database, pool) = database().await?;
    let mock = Arc::new(MockProvider::new(MockSettings::default()));
    let worker = worker(&pool, mock.clone());
    let mut tx = pool.begin().await?;
    store::record_intent(&mut tx, "order-half", "user-1", "EUR", 100, "tok_ok").await?;
    tx.commit().await?;
    assert!(!worker.charge_next().await?, "no stock yet: nothing is due");
    let mut tx = pool.begin().await?;
    store::record_stock_reserved(&mut tx, "order-half").await?;
    store::record_stock_reserved(&mut tx, "order-half").await?;
    tx.commit().await?;
    assert!(worker.charge_next().await?);
    assert_eq!(payment(&pool, "order-half").await?.status, PaymentStatus::Captured);
    pool.close().await;
    database.drop_database().await
}

#[tokio::test]
async fn a_dead_orders_pending_payment_is_cancelled_and_never_charged() -> anyhow::Result<()> {
    let (database, pool) = database().await?;
    let mock =
        Arc::new(MockProvider::new(MockSettings { start_unavailable: true, ..MockSettings::default() }));
    let worker = worker(&pool, mock.clone());
    intent_and_stock(&pool, "order-dead", "tok_ok").await?;
    worker.charge_next().await?; // provider away: stays pending

    let mut tx = pool.begin().await?;
    events::order_died(&mut tx, "order-dead", "order failed").await?;
    tx.commit().await?;
    assert_eq!(payment(&pool, "order-dead").await?.status, PaymentStatus::Cancelled);

    mock.set_available(true);
    assert!(!worker.charge_next().await?, "a cancelled payment is never due");
    assert_eq!(mock.state().charges_taken, 0);
    assert_eq!(outbox_count(&pool, "commerce.events.v1.PaymentCaptured").await?, 0);
    // The charge was due, so its key is voided with the provider; it had
    // taken nothing.
    assert!(worker.void_next().await?, "the void ran");
    let voided = payment(&pool, "order-dead").await?;
    assert!(!voided.void_pending);
    assert_eq!(voided.void_outcome, "nothing_charged");
    assert!(!worker.void_next().await?, "voided once");
    pool.close().await;
    database.drop_database().await
}

#[tokio::test]
async fn a_dead_orders_captured_payment_is_refunded_once_even_if_told_twice() -> anyhow::Result<()> {
    let (database, pool) = database().await?;
    let mock = Arc::new(MockProvider::new(MockSettings::default()));
    let worker = worker(&pool, mock.clone());
    intent_and_stock(&pool, "order-refund", "tok_ok").await?;
    worker.charge_next().await?;

    for _ in 0..2 {
        let mut tx = pool.begin().await?;
        events::order_died(&mut tx, "order-refund", "order cancelled").await?;
        tx.commit().await?;
    }
    assert!(worker.refund_next().await?);
    assert!(!worker.refund_next().await?, "one refund only");
    let refunded = payment(&pool, "order-refund").await?;
    assert_eq!(refunded.status, PaymentStatus::Refunded);
    assert_eq!(refunded.refunded, 1234);
    assert_eq!(outbox_count(&pool, "commerce.events.v1.PaymentRefunded").await?, 1);

    let mut tx = pool.begin().await?;
    events::order_died(&mut tx, "order-refund", "order cancelled").await?;
    tx.commit().await?;
    assert!(!worker.refund_next().await?, "a refunded payment is not refunded again");
    pool.close().await;
    database.drop_database().await
}

#[tokio::test]
async fn a_dead_orders_charge_whose_answer_was_lost_is_reversed_with_the_provider() -> anyhow::Result<()> {
    let (database, pool) = database().await?;
    let mock = Arc::new(MockProvider::new(MockSettings::default()));
    let worker = worker(&pool, mock.clone());
    intent_and_stock(&pool, "order-lost", LOST_ANSWER_TOKEN).await?;
    assert!(worker.charge_next().await?, "the attempt ran");
    let pending = payment(&pool, "order-lost").await?;
    assert_eq!((pending.status, pending.attempts), (PaymentStatus::Pending, 1), "the answer was lost");
    assert!(mock.money_held_for("order-lost"), "but the provider took the money");

    // The order dies (its reservation lapsed) before any retry got through.
    let mut tx = pool.begin().await?;
    events::order_died(&mut tx, "order-lost", "reservation expired").await?;
    tx.commit().await?;
    let cancelled = payment(&pool, "order-lost").await?;
    assert_eq!(cancelled.status, PaymentStatus::Cancelled);
    assert!(cancelled.void_pending, "a void is due");

    assert!(worker.void_next().await?, "the void ran");
    let voided = payment(&pool, "order-lost").await?;
    assert!(!voided.void_pending);
    assert_eq!(voided.void_outcome, "reversed");
    assert_eq!(voided.provider_reference, "mock_void_order-lost");
    assert!(!mock.money_held_for("order-lost"), "no money stays with the provider");
    assert!(!worker.void_next().await?, "voided once");
    assert!(!worker.charge_next().await?, "never charged again");
    assert_eq!(outbox_count(&pool, "commerce.events.v1.PaymentCaptured").await?, 0);
    pool.close().await;
    database.drop_database().await
}

#[tokio::test]
async fn a_charge_whose_process_died_before_recording_it_is_reversed_when_the_order_dies()
-> anyhow::Result<()> {
    let (database, pool) = database().await?;
    let mock = Arc::new(MockProvider::new(MockSettings::default()));
    let worker = worker(&pool, mock.clone());
    intent_and_stock(&pool, "order-crashed", "tok_ok").await?;

    // The provider captures, then the process dies before its commit: no
    // trace of the call is left in the database.
    let mut tx = pool.begin().await?;
    let due = store::lock_due_charge(&mut tx).await?.expect("a due charge");
    worker.charge_locked(&mut tx, &due).await?;
    drop(tx);
    let pending = payment(&pool, "order-crashed").await?;
    assert_eq!((pending.status, pending.attempts), (PaymentStatus::Pending, 0));
    assert!(mock.money_held_for("order-crashed"));

    let mut tx = pool.begin().await?;
    events::order_died(&mut tx, "order-crashed", "order cancelled").await?;
    tx.commit().await?;
    assert!(worker.void_next().await?, "the void ran");
    assert_eq!(payment(&pool, "order-crashed").await?.void_outcome, "reversed");
    assert!(!mock.money_held_for("order-crashed"), "no money stays with the provider");
    pool.close().await;
    database.drop_database().await
}

#[tokio::test]
async fn a_dead_orders_void_waits_out_an_unavailable_provider() -> anyhow::Result<()> {
    let (database, pool) = database().await?;
    let mock = Arc::new(MockProvider::new(MockSettings::default()));
    let worker = worker(&pool, mock.clone());
    intent_and_stock(&pool, "order-away", LOST_ANSWER_TOKEN).await?;
    worker.charge_next().await?;
    let mut tx = pool.begin().await?;
    events::order_died(&mut tx, "order-away", "reservation expired").await?;
    tx.commit().await?;

    mock.set_available(false);
    assert!(worker.void_next().await?, "the void was attempted");
    assert!(payment(&pool, "order-away").await?.void_pending, "and stays due");
    assert!(mock.money_held_for("order-away"));
    mock.set_available(true);
    assert!(worker.void_next().await?, "the retry ran");
    assert_eq!(payment(&pool, "order-away").await?.void_outcome, "reversed");
    assert!(!mock.money_held_for("order-away"));
    pool.close().await;
    database.drop_database().await
}

/// A fallback poll so long that only a wake-up can make a test pass.
const LONG_POLL: Duration = Duration::from_secs(30);
/// How long a woken worker may take; far below [`LONG_POLL`].
const WAKE_UP_DEADLINE: Duration = Duration::from_secs(3);
/// Time for a started worker to run its first (empty) round and go idle.
const SETTLE: Duration = Duration::from_millis(500);

/// A worker to `run`, polling every `poll_interval`; a provider call that
/// fails is retried only after [`LONG_POLL`], so a test sees one attempt.
fn running_worker(pool: &PgPool, provider: Arc<dyn PaymentProvider>, poll_interval: Duration) -> Worker {
    let settings = WorkerSettings { poll_interval, retry_base: LONG_POLL, retry_cap: LONG_POLL };
    Worker::new(pool.clone(), provider, ProviderBreaker::new(100, Duration::from_secs(1)), settings)
}

/// Waits until `done` holds for the order's payment, or fails after
/// [`WAKE_UP_DEADLINE`].
async fn await_payment(
    pool: &PgPool,
    order_id: &str,
    done: impl Fn(&store::Payment) -> bool,
) -> anyhow::Result<store::Payment> {
    let deadline = tokio::time::Instant::now() + WAKE_UP_DEADLINE;
    loop {
        let current = payment(pool, order_id).await?;
        if done(&current) {
            return Ok(current);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "payment of {order_id} not handled within {WAKE_UP_DEADLINE:?}: {current:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_idle_worker_charges_a_payment_as_soon_as_it_becomes_chargeable() -> anyhow::Result<()> {
    let (database, pool) = database().await?;
    let mock = Arc::new(MockProvider::new(MockSettings::default()));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(running_worker(&pool, mock.clone(), LONG_POLL).run(shutdown.child_token()));
    tokio::time::sleep(SETTLE).await;

    // Each half arrives in its own transaction, as from the consumer; only
    // the second makes the payment chargeable.
    let mut tx = pool.begin().await?;
    store::record_intent(&mut tx, "order-wake", "user-1", "EUR", 1234, "tok_ok").await?;
    tx.commit().await?;
    let mut tx = pool.begin().await?;
    store::record_stock_reserved(&mut tx, "order-wake").await?;
    tx.commit().await?;

    let captured = await_payment(&pool, "order-wake", |p| p.status == PaymentStatus::Captured).await?;
    assert_eq!(captured.provider_reference, "mock_ch_order-wake");
    assert_eq!(mock.state().charges_taken, 1, "charged once");
    assert_eq!(outbox_count(&pool, "commerce.events.v1.PaymentCaptured").await?, 1);

    shutdown.cancel();
    tokio::time::timeout(WAKE_UP_DEADLINE, running).await??;
    pool.close().await;
    database.drop_database().await
}

#[tokio::test]
async fn an_idle_worker_voids_a_dead_orders_charge_as_soon_as_the_void_is_requested() -> anyhow::Result<()> {
    let (database, pool) = database().await?;
    let mock = Arc::new(MockProvider::new(MockSettings::default()));
    // The charge's answer is lost: the payment stays pending, money held.
    let idle = running_worker(&pool, mock.clone(), LONG_POLL);
    intent_and_stock(&pool, "order-wake-void", LOST_ANSWER_TOKEN).await?;
    assert!(idle.charge_next().await?, "the attempt ran");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(idle.run(shutdown.child_token()));
    tokio::time::sleep(SETTLE).await;

    let mut tx = pool.begin().await?;
    events::order_died(&mut tx, "order-wake-void", "reservation expired").await?;
    tx.commit().await?;

    let voided = await_payment(&pool, "order-wake-void", |p| !p.void_pending).await?;
    assert_eq!(voided.void_outcome, "reversed");
    assert!(!mock.money_held_for("order-wake-void"), "no money stays with the provider");

    shutdown.cancel();
    tokio::time::timeout(WAKE_UP_DEADLINE, running).await??;
    pool.close().await;
    database.drop_database().await
}

#[tokio::test]
async fn a_chargeable_payment_nobody_announced_is_still_charged_by_the_poll() -> anyhow::Result<()> {
    let (database, pool) = database().await?;
    let mock = Arc::new(MockProvider::new(MockSettings::default()));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(
        running_worker(&pool, mock.clone(), Duration::from_millis(50)).run(shutdown.child_token()),
    );
    tokio::time::sleep(SETTLE).await;

    // Written behind the store's back: no notification, as if it was lost
    // while the listener reconnected.
    sqlx::query(
        "INSERT INTO payments (id, order_id, user_id, currency, amount_units, payment_method_token, \
         intent_received, stock_reserved) VALUES ($1, 'order-quiet', 'user-1', 'EUR', 1234, 'tok_ok', TRUE, TRUE)",
    )
    .bind(uuid::Uuid::now_v7())
    .execute(&pool)
    .await?;

    await_payment(&pool, "order-quiet", |p| p.status == PaymentStatus::Captured).await?;
    assert_eq!(mock.state().charges_taken, 1, "charged once");

    shutdown.cancel();
    tokio::time::timeout(WAKE_UP_DEADLINE, running).await??;
    pool.close().await;
    database.drop_database().await
}
