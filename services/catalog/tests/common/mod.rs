//! Fixtures of the catalog integration tests (a database of its own per test,
//! migrated like `serve` does, and readers of the platform outbox), shared
//! with the other service crates through `commerce-testkit`.

#![allow(unused_imports)] // Each test binary uses a different part.

pub use commerce_testkit::migrated::*;
