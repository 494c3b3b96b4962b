//! Fixtures of the catalog integration tests: a database of its own per test
//! on the local Postgres (created through `COMMERCE_POSTGRES_ADMIN_URL`,
//! migrated like `serve` does), and readers of the platform outbox.
//!
//! Start the infrastructure with `bash e2e/scripts/infra.sh up postgres`;
//! a test whose database is unreachable fails with that hint, never skips.

#![allow(dead_code)] // Each test binary uses a different part.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};
use uuid::Uuid;

/// Default of `COMMERCE_POSTGRES_ADMIN_URL` in `e2e/infra.env`.
const DEFAULT_POSTGRES_ADMIN_URL: &str = "postgres://postgres:commerce-dev@127.0.0.1:55432/postgres";

pub fn postgres_admin_url() -> String {
    std::env::var("COMMERCE_POSTGRES_ADMIN_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_ADMIN_URL.to_owned())
}

/// A database created for one test, migrated with the service's and the
/// platform's migrations.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDatabase {
    pub async fn create(prefix: &str, migrator: &sqlx::migrate::Migrator) -> anyhow::Result<Self> {
        let admin_url = postgres_admin_url();
        let admin_options: PgConnectOptions = admin_url.parse().context("COMMERCE_POSTGRES_ADMIN_URL")?;
        let mut admin = tokio::time::timeout(Duration::from_secs(10), admin_options.connect())
            .await
            .map_err(anyhow::Error::from)
            .and_then(|connected| connected.map_err(anyhow::Error::from))
            .with_context(|| {
                format!(
                    "Postgres is unreachable at {}; start it with `bash e2e/scripts/infra.sh up postgres`",
                    commerce_platform::db::redact(&admin_url)
                )
            })?;
        let name = format!("{prefix}_test_{}", Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await?;
        admin.close().await?;
        let options = admin_options.database(&name);
        let url = options.to_url_lossy().to_string();
        let pool = PgPoolOptions::new().max_connections(5).connect_with(options).await?;
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
    pub topic: String,
    pub key: String,
    pub event_type: String,
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
