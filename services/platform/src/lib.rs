//! The shared runtime every commerce service is built on.
//!
//! A service crate wires these pieces together in its `serve(config,
//! shutdown)`; nothing here knows about any one service's domain.

pub mod admin;
pub mod config;
pub mod db;
pub mod discovery;
pub mod events;
pub mod grpc;
pub mod readiness;
pub mod redis;
pub mod resilience;
pub mod shutdown;
pub mod telemetry;
pub mod trace_context;
