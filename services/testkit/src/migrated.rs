//! Fixtures of the tests that run against a migrated database: a database of
//! its own per test on the local Postgres (created through
//! `COMMERCE_POSTGRES_ADMIN_URL`, migrated like `serve` does), and readers of
//! the platform outbox.
//!
//! Start the infrastructure with `bash e2e/scripts/infra.sh up postgres`;
//! a test whose database is unreachable fails with that hint, never skips.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};
use uuid::Uuid;

pub use crate::postgres_admin_url;

/// A database created for one test, migrated with the service's and the
/// platform's migrations.
#[derive(Debug)]
pub struct TestDatabase {
    /// The database name.
    pub name: String,
    /// A URL connecting to the database.
    pub url: String,
    /// A pool connected to the migrated database.
    pub pool: PgPool,
}

impl TestDatabase {
    /// Creates a database named after `prefix` and a unique suffix, and runs
    /// `migrator` and the platform's migrations on it.
    pub async fn create(prefix: &str, migrator: &sqlx::migrate::Migrator) -> anyhow::Result<Self> {
        Self::create_with_pool_size(prefix, migrator, 5).await
    }

    /// [`create`](Self::create) with a pool of `connections` (tests that
    /// run many transactions at once).
    pub async fn create_with_pool_size(
        prefix: &str,
        migrator: &sqlx::migrate::Migrator,
        connections: u32,
    ) -> anyhow::Result<Self> {
        let admin_url = postgres_admin_url();
        let admin_options: PgConnectOptions = admin_url.parse().context("COMMERCE_POSTGRES_ADMIN_URL")?;
        let mut admin = tokio::time::timeout(Duration::from_secs(10), admin_options.connect())
            .await
            .map_err(anyhow::Error::from)
            .and_then(|connected| connected.map_err(anyhow::Error::from))
            .with_context(|| {
                format!(
                    "Postgres is unreachable at {}; start it with `bash e2e/scripts/infra.sh up postgres`",
                    commerce_platform::url::redact(&admin_url)
                )
            })?;
        let name = format!("{prefix}_test_{}", Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await?;
        admin.close().await?;
        let options = admin_options.database(&name);
        let url = options.to_url_lossy().to_string();
        let pool = PgPoolOptions::new().max_connections(connections).connect_with(options).await?;
        commerce_platform::db::run_migrations(&pool, migrator).await?;
        Ok(Self { name, url, pool })
    }

    /// Closes the pool and drops the database.
    pub async fn drop_database(self) -> anyhow::Result<()> {
        self.pool.close().await;
        let mut admin = postgres_admin_url().parse::<PgConnectOptions>()?.connect().await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .execute(&mut admin)
            .await?;
        Ok(())
    }
}

/// One outbox row.
#[derive(Debug, sqlx::FromRow)]
pub struct OutboxRow {
    /// The logical topic.
    pub topic: String,
    /// The record key.
    pub key: String,
    /// The CloudEvents type.
    pub event_type: String,
    /// The encoded event.
    pub payload: Vec<u8>,
}

/// Every outbox row, in publication order.
pub async fn outbox(pool: &PgPool) -> anyhow::Result<Vec<OutboxRow>> {
    Ok(sqlx::query_as::<_, OutboxRow>(
        "SELECT topic, key, event_type, payload FROM commerce_platform.outbox ORDER BY position",
    )
    .fetch_all(pool)
    .await?)
}
