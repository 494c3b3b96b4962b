//! API of commerce-stack that both sides of the platform read: the service
//! catalog (which services exist, their ports, stores, topics and peers) and,
//! with the operator, the custom resource types.
//!
//! This crate holds no client code: it must stay cheap to depend on for every
//! service binary, and pure so that its facts can be tested without a cluster.

pub mod catalog;
