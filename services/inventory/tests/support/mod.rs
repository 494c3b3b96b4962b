//! Fixtures of the inventory tests that only the inventory needs: its stock
//! counters and outbox, Kafka flags with short retries, and producing events
//! through the test's own producer as the order and catalog services would.
//!
//! The shared fixtures (a migrated database per test, topic namespaces,
//! reading topics back, logging) come from `commerce-testkit`. Infrastructure
//! comes from `bash e2e/scripts/infra.sh up` (addresses from
//! `e2e/infra.env`, same defaults). A test whose infrastructure is
//! unreachable fails saying how to start it; it never skips.

#![allow(dead_code)] // Each test binary uses a different part.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use anyhow::{Context, bail};
use commerce_platform::events::cloudevents::CloudEventAttributes;
use commerce_platform::events::{EventPayload, EventProducer};
pub use commerce_testkit::init_logging;
pub use commerce_testkit::migrated::TestDatabase;
use sqlx::postgres::PgPool;
use uuid::Uuid;

/// How long a test waits for something it expects to happen.
pub const EVENTUALLY: Duration = Duration::from_secs(60);

/// A database of its own for one test, with the platform's and the
/// inventory's migrations, and a pool of `connections`.
pub async fn test_database(connections: u32) -> anyhow::Result<TestDatabase> {
    TestDatabase::create_with_pool_size("inventory", &commerce_inventory::MIGRATOR, connections).await
}

/// Counters of one product: (available, reserved, sold).
pub async fn counters(pool: &PgPool, product_id: &str) -> anyhow::Result<(i64, i64, i64)> {
    let row: (i64, i64, i64) =
        sqlx::query_as("SELECT available, reserved, sold FROM stock WHERE product_id = $1")
            .bind(product_id)
            .fetch_one(pool)
            .await
            .with_context(|| format!("stock row of {product_id}"))?;
    Ok(row)
}

/// Outbox rows by event type.
pub async fn outbox_counts(pool: &PgPool) -> anyhow::Result<HashMap<String, i64>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT event_type, count(*) FROM commerce_platform.outbox GROUP BY event_type")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Publishes `event` on its catalog topic (under the producer's prefix) as a
/// CloudEvent, as the owning service's outbox relay would. Returns its
/// `ce_id`.
pub async fn produce<E: EventPayload>(producer: &EventProducer, event: &E) -> anyhow::Result<Uuid> {
    let attributes = CloudEventAttributes::for_event(event);
    producer.send_event(event, &attributes).await?;
    Ok(attributes.id)
}

/// Polls `condition` every 100 ms until it holds or [`EVENTUALLY`] passes.
pub async fn eventually<F, Fut>(what: &str, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        if condition().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {EVENTUALLY:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
