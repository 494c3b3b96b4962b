//! Fixtures for tests against the real local infrastructure (Postgres and
//! Kafka from `e2e/infra.env`), shared with the other service crates through
//! `commerce-testkit`.

#![allow(unused_imports)] // Each test binary uses a different part.

pub use commerce_testkit::*;
