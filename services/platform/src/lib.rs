//! The shared runtime every commerce service is built on.
//!
//! A service crate wires these pieces together in its `serve(config,
//! shutdown)`; nothing here knows about any one service's domain.

pub mod readiness;
pub mod shutdown;
pub mod trace_context;
