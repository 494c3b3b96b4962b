//! What only the platform's database and event tests need (outbox,
//! consumer): the migrations of a stand-in service, since the platform has
//! none of its own.
//!
//! Everything else (a database of its own per test, topic names under a
//! unique prefix, Kafka flags, reading a topic back, waiting) comes from
//! `commerce-testkit`, as for the services' tests.

use sqlx::migrate::Migrator;
use uuid::Uuid;

/// The migrations of a stand-in service: one, version 1, running `sql`. For
/// [`commerce_testkit::migrated::TestDatabase::create`], which installs them
/// beside the platform's tables through `db::run_migrations`.
pub async fn service_migrator(sql: &str) -> anyhow::Result<Migrator> {
    let dir = std::env::temp_dir().join(format!("commerce-test-migrations-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    // The migrator reads the directory when made: it can go right after.
    let migrator = async {
        std::fs::write(dir.join("0001_service.sql"), sql)?;
        anyhow::Ok(Migrator::new(dir.as_path()).await?)
    }
    .await;
    std::fs::remove_dir_all(&dir)?;
    migrator
}
