//! `RateLimitPolicy`: rate-limit rules a team adds to a stack through GitOps
//! without editing the `CommerceStack` itself.
//!
//! The operator merges every policy that targets a stack with the stack's own
//! `spec.gateway.rateLimits`; a policy never replaces or loosens a rule, it
//! only adds limits. The policy's status says whether its stack took it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube_derive::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::rate_limit::RateLimitRule;

/// Condition type on a policy: `True` once the targeted stack's gateway
/// configuration carries the policy's rules.
pub const CONDITION_ACCEPTED: &str = "Accepted";

/// Rules that join a stack's own rate limits.
// kube's `printcolumn(...)` repeats keys by design; clippy takes them for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "commerce-stack.dev",
    version = "v1alpha1",
    kind = "RateLimitPolicy",
    namespaced,
    status = "RateLimitPolicyStatus",
    derive = "PartialEq",
    shortname = "rlp",
    category = "commerce",
    doc = "Rate-limit rules that join a CommerceStack's own, so that a team can add limits through GitOps without editing the stack.",
    crates(kube_core = "::kube_core", kube = "::kube_derive"),
    printcolumn(
        name = "Stack",
        type_ = "string",
        json_path = ".spec.targetRef.name",
        description = "The CommerceStack whose gateway enforces the rules"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status",
        description = "Whether the stack's gateway carries the rules"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicySpec {
    /// The CommerceStack, in the policy's namespace, whose gateway enforces
    /// these rules.
    pub target_ref: StackRef,
    /// The rules. Their names are unique within the policy; the gateway
    /// names them `<policy>_<rule>` (a `.` in the policy's name becomes `_`
    /// too) in its `RateLimit` headers and logs.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub rules: Vec<RateLimitRule>,
}

/// Names a CommerceStack in the referring object's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StackRef {
    /// Name of the CommerceStack.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What the operator made of the policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicyStatus {
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`: whether the targeted stack exists and its gateway carries
    /// the rules (reason `Accepted`, `StackNotFound` or `StackPaused`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
