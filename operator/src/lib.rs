//! The commerce-stack operator as a library, so that its pure parts (`crd`,
//! `validate`, `build`) and its reconciler can be tested without a process.
//! `main.rs` only parses the command line and calls in here.

pub mod build;
pub mod crd;
pub mod error;
pub mod external;
pub mod leader;
pub mod metrics;
pub mod quantity;
pub mod reconcile;
pub mod render;
pub mod run;
pub mod validate;

pub use error::Error;
