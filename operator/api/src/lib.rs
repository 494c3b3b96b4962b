//! The custom resource types the operator reconciles (`CommerceStack`,
//! `RateLimitPolicy`) and the gateway's rate-limit rules file they produce.
//! The service catalog they refer to is `commerce_topology`.
//!
//! This crate holds no client code: it must stay cheap to depend on for every
//! service binary, and pure so that its facts can be tested without a cluster.
//! The CRD types derive with `kube-core` and `kube-derive` only.

pub mod crd;
pub mod gateway_rules;

pub use crd::policy::{RateLimitPolicy, RateLimitPolicySpec, RateLimitPolicyStatus};
pub use crd::rate_limit::{HttpMethod, RateLimitKey, RateLimitPeriod, RateLimitRule};
pub use crd::stack::{CommerceStack, CommerceStackSpec, CommerceStackStatus};
