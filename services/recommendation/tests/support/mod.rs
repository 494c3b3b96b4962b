//! Fixtures for tests against the real local Postgres (from
//! `e2e/infra.env`): a migrated database of its own per test and the
//! outbox reader, shared with the other service crates through
//! `commerce-testkit`.

#![allow(unused_imports)] // Each test binary uses a different part.

pub use commerce_testkit::migrated::*;
