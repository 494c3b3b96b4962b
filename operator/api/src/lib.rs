//! API of commerce-stack that both sides of the platform read: the service
//! catalog (which services exist, their ports, stores, topics and peers) and
//! the custom resource types the operator reconciles (`CommerceStack`,
//! `RateLimitPolicy`).
//!
//! This crate holds no client code: it must stay cheap to depend on for every
//! service binary, and pure so that its facts can be tested without a cluster.
//! The CRD types derive with `kube-core` and `kube-derive` only.

pub mod catalog;
pub mod crd;
pub mod gateway_rules;

pub use crd::policy::{RateLimitPolicy, RateLimitPolicySpec, RateLimitPolicyStatus};
pub use crd::rate_limit::{HttpMethod, RateLimitKey, RateLimitPeriod, RateLimitRule};
pub use crd::stack::{CommerceStack, CommerceStackSpec, CommerceStackStatus};
