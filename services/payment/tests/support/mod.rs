//! Fixtures for tests against the real local infrastructure (Postgres and
//! Kafka from `e2e/infra.env`), shared with the other service crates through
//! `commerce-testkit`.

#![allow(unused_imports, dead_code)] // Each test binary uses a different part.

use std::sync::Arc;
use std::time::Duration;

use commerce_payment::provider::{PaymentProvider, ProviderBreaker};
use commerce_payment::store;
use commerce_payment::worker::{Worker, WorkerSettings};
pub use commerce_testkit::*;
use sqlx::postgres::PgPool;

/// A fresh database with the payment service's migrations.
pub async fn database() -> anyhow::Result<(TestDatabase, PgPool)> {
    let database = TestDatabase::create("payment").await?;
    let pool = database.pool().await?;
    commerce_platform::db::run_migrations(&pool, &commerce_payment::MIGRATOR).await?;
    Ok((database, pool))
}

/// A worker that retries at once and whose breaker never opens.
pub fn worker(pool: &PgPool, provider: Arc<dyn PaymentProvider>) -> Worker {
    let settings = WorkerSettings {
        poll_interval: Duration::from_millis(10),
        retry_base: Duration::ZERO,
        retry_cap: Duration::ZERO,
    };
    Worker::new(pool.clone(), provider, ProviderBreaker::new(100, Duration::from_secs(1)), settings)
}

/// Records the order's payment intent (1234 EUR with `token`) and its
/// reserved stock: the payment is due.
pub async fn intent_and_stock(pool: &PgPool, order_id: &str, token: &str) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    // Stock first, intent second: the arrival order does not matter.
    store::record_stock_reserved(&mut tx, order_id).await?;
    store::record_intent(&mut tx, order_id, "user-1", "EUR", 1234, token).await?;
    tx.commit().await?;
    Ok(())
}

/// The payment of `order_id`.
pub async fn payment(pool: &PgPool, order_id: &str) -> anyhow::Result<store::Payment> {
    let mut conn = pool.acquire().await?;
    Ok(store::find(&mut conn, None, Some(order_id)).await?.expect("a payment"))
}

/// How many events of `event_type` the outbox holds.
pub async fn outbox_count(pool: &PgPool, event_type: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM commerce_platform.outbox WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(pool)
        .await?)
}
