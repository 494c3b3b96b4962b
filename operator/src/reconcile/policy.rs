//! RateLimitPolicy statuses. A policy's `Accepted` condition is written by
//! whoever knows the answer:
//!
//! - the stack's reconcile, for the policies of a stack it reconciles: it
//!   judges them ([`crate::build::gateway::judge_policies`]) and writes the
//!   rules file, so it alone knows which of them the gateway carries;
//! - the policy controller ([`reconcile_policy`]), for a policy whose stack
//!   does not exist (the stack's reconcile never runs for it), is paused
//!   (its reconcile does not even read) or has an invalid spec (nothing of
//!   it is applied). The controller watches stacks too, so a policy is
//!   looked at again when its stack appears, changes or disappears.
//!
//! A change of the condition is also published as an Event on the policy.

use std::sync::Arc;
use std::time::Instant;

use commerce_api::crd::API_VERSION;
use commerce_api::crd::policy::{
    CONDITION_ACCEPTED, REASON_ACCEPTED, REASON_STACK_INVALID, REASON_STACK_PAUSED, REASON_TARGET_NOT_FOUND,
};
use commerce_api::{CommerceStack, RateLimitPolicy, RateLimitPolicyStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use super::{Context, error_chain, now, publish, status};
use crate::Error;
use crate::build::gateway::PolicyVerdict;
use crate::build::names;
use crate::validate::validate;

/// What the `Accepted` condition of a policy should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acceptance {
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    /// CamelCase; one of the `REASON_*` of [`commerce_api::crd::policy`].
    pub reason: &'static str,
    /// For a person: what is the case, and what to change.
    pub message: String,
}

impl Acceptance {
    /// The gateway carries the rules.
    pub fn accepted(stack: &str, bytes: usize) -> Self {
        Acceptance {
            status: "True",
            reason: REASON_ACCEPTED,
            message: format!(
                "the gateway of CommerceStack/{stack} enforces the rules ({bytes} bytes of its rules file)"
            ),
        }
    }

    /// The gateway does not carry the rules, for `reason`.
    pub fn refused(reason: &'static str, message: String) -> Self {
        Acceptance { status: "False", reason, message }
    }

    /// From a verdict of the stack's reconcile.
    pub fn from_verdict(stack: &str, verdict: &PolicyVerdict) -> Self {
        match verdict {
            PolicyVerdict::Accepted { bytes } => Acceptance::accepted(stack, *bytes),
            PolicyVerdict::Refused { reason, message } => Acceptance::refused(reason, message.clone()),
        }
    }

    /// `refusal` for a stack whose rules the operator does not update now
    /// (paused, invalid), except that a policy accepted at its current
    /// generation stays accepted: the rules file written before still
    /// carries it.
    pub fn unless_already_accepted(policy: &RateLimitPolicy, refusal: Acceptance) -> Option<Self> {
        let accepted = policy.status.as_ref().is_some_and(|status| {
            status.observed_generation == policy.metadata.generation
                && status.conditions.iter().any(|c| c.type_ == CONDITION_ACCEPTED && c.status == "True")
        });
        (!accepted).then_some(refusal)
    }
}

/// The controller's entry point for a policy: reports a policy whose target
/// stack does not exist, is paused or is invalid. A policy that does not
/// deserialize is skipped.
pub async fn reconcile_policy(
    guard: Arc<DeserializeGuard<RateLimitPolicy>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let policy = match &guard.0 {
        Ok(policy) => policy,
        Err(invalid) => {
            let name = invalid.metadata.name.clone().unwrap_or_default();
            warn!(policy = %name, error = %invalid.error, "skipping a RateLimitPolicy that does not deserialize");
            return Ok(Action::await_change());
        }
    };
    let started = Instant::now();
    let result = check_target(policy, &ctx).await;
    let error_kind = result.as_ref().err().map(Error::metric_kind);
    ctx.metrics.observe("RateLimitPolicy", started.elapsed(), error_kind);
    if result.is_ok() {
        ctx.backoffs.succeeded(&policy_key(policy));
    }
    result
}

/// Retries a failed policy after its own, growing delay.
pub fn policy_error_policy(
    guard: Arc<DeserializeGuard<RateLimitPolicy>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let key = match &guard.0 {
        Ok(policy) => policy_key(policy),
        Err(invalid) => format!(
            "RateLimitPolicy/{}/{}",
            invalid.metadata.namespace.as_deref().unwrap_or_default(),
            invalid.metadata.name.as_deref().unwrap_or_default()
        ),
    };
    let delay = ctx.backoffs.failed(&key);
    warn!(policy = %key, error = %error_chain(error), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The policies among `policies` that target the stack `namespace/name`:
/// what a change of that stack makes the policy controller look at again.
pub fn policies_targeting(
    policies: &[Arc<DeserializeGuard<RateLimitPolicy>>],
    namespace: &str,
    name: &str,
) -> Vec<ObjectRef<DeserializeGuard<RateLimitPolicy>>> {
    policies
        .iter()
        .filter_map(|guard| guard.0.as_ref().ok())
        .filter(|p| p.spec.target_ref.name == name && p.namespace().as_deref() == Some(namespace))
        .map(|p| ObjectRef::new(&p.name_any()).within(namespace))
        .collect()
}

/// Distinct from the stacks' keys in the shared backoffs.
fn policy_key(policy: &RateLimitPolicy) -> String {
    format!("RateLimitPolicy/{}/{}", policy.namespace().unwrap_or_default(), policy.name_any())
}

/// Writes the policy's status unless the stack's reconcile does: when the
/// stack does not exist (`TargetNotFound`), is paused (`StackPaused`) or
/// has an invalid spec (`StackInvalid`). While paused or invalid, a policy
/// accepted at its current generation stays accepted: the rules file keeps
/// what the last reconcile wrote. A stack that is being deleted, or does not
/// deserialize, is left to its own reconcile and Events.
async fn check_target(policy: &RateLimitPolicy, ctx: &Context) -> Result<Action, Error> {
    let Some(namespace) = policy.namespace() else {
        return Ok(Action::await_change());
    };
    if policy.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let target = &policy.spec.target_ref.name;
    let stacks: Api<DeserializeGuard<CommerceStack>> = Api::namespaced(ctx.client.clone(), &namespace);
    let stack = stacks
        .get_opt(target)
        .await
        .map_err(|source| Error::GetObject { object: format!("CommerceStack/{target}"), source })?;
    let acceptance = match stack.as_ref().map(|guard| guard.0.as_ref()) {
        None => Some(Acceptance::refused(
            REASON_TARGET_NOT_FOUND,
            format!(
                "no CommerceStack {target} in namespace {namespace} (spec.targetRef.name): \
                 the rules apply once it exists"
            ),
        )),
        Some(Ok(stack)) if stack.metadata.deletion_timestamp.is_none() => {
            let refusal = if stack.spec.paused {
                Some(Acceptance::refused(
                    REASON_STACK_PAUSED,
                    format!(
                        "CommerceStack/{target} is paused (spec.paused): the operator does not update its \
                         gateway's rules until it is resumed"
                    ),
                ))
            } else if validate(stack, &namespace).is_err() {
                Some(Acceptance::refused(
                    REASON_STACK_INVALID,
                    format!(
                        "CommerceStack/{target} has an invalid spec (its Degraded condition says why): the \
                         operator applies none of it, its gateway's rules included"
                    ),
                ))
            } else {
                None
            };
            refusal.and_then(|refusal| Acceptance::unless_already_accepted(policy, refusal))
        }
        Some(_) => None,
    };
    if let Some(acceptance) = acceptance {
        write_status(ctx, policy, acceptance, now()).await?;
    }
    Ok(Action::await_change())
}

/// Writes the policy's status if `acceptance` changes it, and publishes an
/// Event when the condition's status or reason changes.
pub async fn write_status(
    ctx: &Context,
    policy: &RateLimitPolicy,
    acceptance: Acceptance,
    now: Time,
) -> Result<(), Error> {
    let new = status::policy(policy, acceptance.status, acceptance.reason, acceptance.message.clone(), now);
    if policy.status.as_ref() == Some(&new) {
        return Ok(());
    }
    let api: Api<RateLimitPolicy> =
        Api::namespaced(ctx.client.clone(), &policy.namespace().unwrap_or_default());
    let patch = json!({"apiVersion": API_VERSION, "kind": "RateLimitPolicy", "status": new});
    api.patch_status(&policy.name_any(), &PatchParams::apply(names::MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::PatchStatus {
            object: format!("RateLimitPolicy/{}", policy.name_any()),
            source,
        })?;
    if condition_changed(policy.status.as_ref(), &acceptance) {
        let type_ = if acceptance.status == "True" { EventType::Normal } else { EventType::Warning };
        publish(ctx, &policy.object_ref(&()), type_, acceptance.reason, acceptance.message).await;
    }
    Ok(())
}

/// Whether `acceptance` changes the stored condition's status or reason.
fn condition_changed(old: Option<&RateLimitPolicyStatus>, acceptance: &Acceptance) -> bool {
    let old = old.and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_ACCEPTED));
    old.is_none_or(|c| c.status != acceptance.status || c.reason != acceptance.reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use commerce_api::crd::policy::{RateLimitPolicySpec, StackRef};

    fn policy(namespace: &str, name: &str, target: &str) -> Arc<DeserializeGuard<RateLimitPolicy>> {
        let mut policy = RateLimitPolicy::new(
            name,
            RateLimitPolicySpec { target_ref: StackRef { name: target.into() }, rules: Vec::new() },
        );
        policy.metadata.namespace = Some(namespace.into());
        Arc::new(DeserializeGuard(Ok(policy)))
    }

    #[test]
    fn a_stack_change_looks_again_at_the_policies_that_target_it_in_its_namespace() {
        let policies = [
            policy("shop", "checkout", "shop"),
            policy("shop", "search", "other-shop"),
            policy("staging", "checkout", "shop"),
            policy("shop", "login", "shop"),
        ];
        let names: Vec<String> =
            policies_targeting(&policies, "shop", "shop").into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["checkout", "login"]);
        assert!(policies_targeting(&policies, "shop", "gone").is_empty());
    }

    #[test]
    fn an_event_is_due_only_when_the_status_or_reason_changes() {
        let refused = Acceptance::refused(REASON_TARGET_NOT_FOUND, "no CommerceStack shop".into());
        assert!(condition_changed(None, &refused));
        let mut stored = policy("shop", "checkout", "shop").0.clone().unwrap();
        stored.status = Some(status::policy(&stored, "False", REASON_TARGET_NOT_FOUND, "old".into(), now()));
        assert!(!condition_changed(stored.status.as_ref(), &refused), "only the message differs");
        assert!(condition_changed(stored.status.as_ref(), &Acceptance::accepted("shop", 10)));
    }
}
