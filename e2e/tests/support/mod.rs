//! Shared support of the end-to-end tests that drive the whole shop over
//! REST through the gateway (tests/shop.rs, tests/chaos.rs):
//! - [`shop`]: the `commerce` binary started once per test binary
//!   ([`shop::shared`]) or per test ([`shop::Shop::start`]), isolated by its
//!   own databases, topics and ports, stopped by PID;
//! - [`api`]: a REST client of the gateway;
//! - [`invariants`]: [`invariants::assert_invariants`], the SQL checks of
//!   ARCHITECTURE section 4 every test runs at its end;
//! - [`tokens`]: access tokens forged for the authentication tests;
//! - [`bench`]: how benchmarks print their figures for `make bench`.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

pub mod api;
pub mod bench;
pub mod invariants;
pub mod shop;
pub mod tokens;

use commerce_topology::Service;

/// `(available, reserved, sold)` of a product, read from the inventory's
/// database (the REST API has no stock read).
pub async fn stock(databases: &invariants::Databases, product_id: &str) -> anyhow::Result<(i64, i64, i64)> {
    let pool = databases.pool(Service::Inventory).await?;
    let level: (i64, i64, i64) =
        sqlx::query_as("SELECT available, reserved, sold FROM stock WHERE product_id = $1")
            .bind(product_id)
            .fetch_one(&pool)
            .await?;
    pool.close().await;
    Ok(level)
}
