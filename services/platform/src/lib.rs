//! The shared runtime every commerce service is built on.
//!
//! A service crate's `serve(config, shutdown)` hands its lifecycle to
//! [`ServiceRuntime`] (admin server, readiness, database, events, background
//! tasks, gRPC server, ordered shutdown) and wires only its own parts;
//! nothing here knows about any one service's domain.

pub mod admin;
pub mod backoff;
pub mod config;
pub mod db;
pub mod discovery;
pub mod errors;
pub mod events;
pub mod grpc;
pub mod json_lines;
pub mod paging;
pub mod quota;
pub mod readiness;
pub mod redis;
pub mod resilience;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;
pub mod trace_context;
pub mod url;

pub use errors::error_chain;
pub use runtime::ServiceRuntime;
