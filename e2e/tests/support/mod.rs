//! Shared support of the end-to-end tests that drive the whole shop over
//! REST through the gateway (tests/shop.rs, tests/chaos.rs,
//! tests/chaos_scale.rs and the others that say `mod support;`):
//! - [`shop`]: the `commerce` binary started once per test binary
//!   ([`shop::shared`]) or per test ([`shop::Shop::start`]), isolated by its
//!   own databases, topics and ports, stopped by PID; and what every shop
//!   under test needs (the binary, the infrastructure's variables, run ids,
//!   free ports, log tails, dropping topics);
//! - [`api`]: a REST client of the gateway ([`api::Api`]), and a session
//!   whose requests ride out a shop under faults ([`api::Client`]);
//! - [`invariants`]: the SQL checks of ARCHITECTURE section 4, the one
//!   place they are written: [`invariants::assert_invariants`] for what a
//!   shared shop holds when a test ends, [`invariants::check_expected`] for
//!   a whole private shop that must hold exactly the orders and stock a
//!   fault test gave it;
//! - [`procs`]: processes a fault test starts and stops by PID: the
//!   `commerce` binary's processes ([`procs::Proc`]), a private Kafka and a
//!   private Postgres;
//! - [`fault`]: a shop split into such processes, so that a test can kill
//!   one part, and the saga drivers of the fault tests;
//! - [`tokens`]: access tokens forged for the authentication tests;
//! - [`live`]: clients of the live order streams (SSE, WebSocket) and a
//!   second gateway replica to reach them through;
//! - [`bench`]: how benchmarks print their figures for `make bench`;
//! - here: [`wait_for`], the one bounded wait, and [`stock`].

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

pub mod api;
pub mod bench;
pub mod fault;
pub mod invariants;
pub mod jaeger;
pub mod live;
pub mod procs;
pub mod shop;
pub mod tokens;

use std::future::Future;
use std::time::{Duration, Instant};

use commerce_topology::Service;

/// Pause between two looks of [`wait_for`].
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Polls `probe` every 250 ms until it yields a value, for at most
/// `timeout`; returns the value and how long the wait took. An error of the
/// probe counts as "not yet" (a shop under a fault answers with errors for
/// a while, and the saga takes time to settle): the wait goes on, and if it
/// times out the error says what the last look found.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<(T, Duration)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let started = Instant::now();
    loop {
        let failed = match probe().await {
            Ok(Some(value)) => return Ok((value, started.elapsed())),
            Ok(None) => None,
            Err(error) => Some(error),
        };
        if started.elapsed() > timeout {
            let timed_out = format!("timed out after {timeout:?} waiting for {what}");
            return Err(match failed {
                Some(error) => error.context(format!("{timed_out}; the last look found")),
                None => anyhow::anyhow!(timed_out),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

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
