//! `RateLimitPolicy`: rate-limit rules a team adds to a stack through GitOps
//! without editing the `CommerceStack` itself.
//!
//! The operator merges every policy that targets a stack with the stack's own
//! `spec.gateway.rateLimits`; a policy never replaces or loosens a rule, it
//! only adds limits. The policy's status says whether its stack took it.
//!
//! One namespace's policies must not be able to break the stack's gateway:
//! a policy's rules may take at most
//! [`MAX_POLICY_RULES_BYTES`](crate::gateway_rules::MAX_POLICY_RULES_BYTES)
//! of the rules file, and the file stays within
//! [`MAX_RULES_FILE_BYTES`](crate::gateway_rules::MAX_RULES_FILE_BYTES):
//! policies are taken oldest first (by creation time, then name), and those
//! that no longer fit are refused (`Accepted` False) while the stack runs
//! with the rest.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube_derive::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::rate_limit::{MAX_RULES, RateLimitRule};

/// Condition type on a policy: `True` once the targeted stack's gateway
/// configuration carries the policy's rules.
pub const CONDITION_ACCEPTED: &str = "Accepted";

/// `Accepted` True: the stack's gateway carries the rules.
pub const REASON_ACCEPTED: &str = "Accepted";
/// `Accepted` False: no CommerceStack of `spec.targetRef.name` exists in
/// the policy's namespace; the rules apply once it does.
pub const REASON_TARGET_NOT_FOUND: &str = "TargetNotFound";
/// `Accepted` False: the rules break a rule of their own (a rate below 1,
/// a name used twice, more than the most rules a policy may have).
pub const REASON_INVALID_RULES: &str = "InvalidRules";
/// `Accepted` False: the rules would take more of the stack's rules file
/// than one policy may.
pub const REASON_POLICY_TOO_LARGE: &str = "PolicyTooLarge";
/// `Accepted` False: the stack's rules file has no room left for the rules;
/// policies created earlier took it.
pub const REASON_RULES_BUDGET_EXCEEDED: &str = "RulesBudgetExceeded";
/// `Accepted` False: the stack runs no gateway (`services.gateway.enabled`
/// is false), so nothing enforces rate limits.
pub const REASON_GATEWAY_DISABLED: &str = "GatewayDisabled";
/// `Accepted` False: the stack is paused, so its rules are not updated.
pub const REASON_STACK_PAUSED: &str = "StackPaused";
/// `Accepted` False: the stack's spec is invalid, so nothing of it is
/// applied.
pub const REASON_STACK_INVALID: &str = "StackInvalid";
/// `Accepted` Unknown: the rules were accepted, but writing the gateway's
/// rules ConfigMap failed (the stack's `Degraded` condition says why).
pub const REASON_RULES_NOT_APPLIED: &str = "RulesNotApplied";

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
    /// too) in its `RateLimit` headers and logs. At most 64 rules, taking at
    /// most 16 KiB of the stack's rules file (64 rules of usual names and
    /// paths take about 13 KiB). The file holds at most 256 KiB: policies
    /// that no longer fit are refused, those created earlier coming first.
    #[schemars(length(min = 1, max = MAX_RULES))]
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
    /// the rules. Reason `Accepted` (True); `TargetNotFound`,
    /// `InvalidRules`, `PolicyTooLarge`, `RulesBudgetExceeded` (the stack's
    /// rules file is full: policies created earlier come first),
    /// `GatewayDisabled`, `StackPaused` or `StackInvalid` (False);
    /// `RulesNotApplied` (Unknown: the rules ConfigMap could not be written).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
