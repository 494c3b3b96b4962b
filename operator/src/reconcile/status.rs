//! `status`: what a reconcile observed, as the stack's status. Pure: it is
//! computed from the listed objects and the reconcile's outcome, and written
//! only when it differs from the stored one, so that a reconcile with nothing
//! to do writes nothing. A condition keeps its `lastTransitionTime` while its
//! status stays the same.
//!
//! Besides `Ready`, `Progressing` and `Degraded`, every status carries the
//! two conditions kstatus reads (Flux's health checks, kpt, cli-utils), in
//! its abnormal-true polarity: `Reconciling` True while the operator works
//! towards the spec and retrying will get there, `Stalled` True when it
//! cannot without a change of the spec or outside action; both False when
//! the stack matches its spec. kstatus takes `Reconciling` True for
//! `InProgress`, `Stalled` True for `Failed`, and an observedGeneration
//! behind the generation for `InProgress`; with neither True, `Current`.

use commerce_api::crd::policy::CONDITION_ACCEPTED;
use commerce_api::crd::stack::{
    CONDITION_DATABASES_CLEANED_UP, CONDITION_DEGRADED, CONDITION_PAUSED, CONDITION_PROGRESSING,
    CONDITION_READY, CONDITION_RECONCILING, CONDITION_STALLED, CONDITION_TOPICS_CLEANED_UP, CommerceStack,
    CommerceStackStatus, DatabaseStatus, ServiceStatus, TopicStatus,
};
use commerce_api::{RateLimitPolicy, RateLimitPolicyStatus};
use commerce_topology::Service;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::apply::ObjectProblem;
use crate::build::names::{self, Component};
use crate::validate::ValidStack;

/// Reason of every condition while `spec.paused` is true.
pub const REASON_PAUSED: &str = "Paused";
/// Reason of the conditions of a stack that breaks its rules.
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
/// Most lines of a failure message that name an object; a last line counts
/// the rest. Enough for the usual culprits (one service's objects) while
/// `kubectl describe` stays readable.
const MAX_FAILURE_LINES: usize = 7;
/// Longest line of a failure message in bytes: an object's name and an
/// apiserver message of a few field errors. With [`MAX_FAILURE_LINES`] a
/// message stays under 2 KiB.
const MAX_FAILURE_LINE_LEN: usize = 256;
/// Most objects `Ready` names when some were not applied.
const MAX_NAMED_OBJECTS: usize = 5;
/// Reason of `Degraded` when managed infrastructure names a StorageClass
/// the cluster does not have: its volume can never be provisioned.
pub const REASON_STORAGE_CLASS_NOT_FOUND: &str = "StorageClassNotFound";
/// Reason of `Degraded` when the stack asks for a PodMonitor and the
/// cluster does not serve the kind: its pods are scraped by annotation.
pub const REASON_MONITORING_NOT_SERVED: &str = "PodMonitorNotServed";
/// Reason of `Stalled` True when the apiserver refused objects of the stack,
/// or objects of their names exist that the stack did not create.
pub const REASON_OBJECTS_REFUSED: &str = "ObjectsRefused";
/// Reason of `Reconciling` False when the stack is stalled: the operator
/// waits for a change of the spec or for outside action.
pub const REASON_STALLED: &str = "Stalled";
/// Reason of a cleanup condition whose kind of state lives on managed
/// infrastructure: it goes with the volume, nothing to drop.
pub const REASON_NOT_NEEDED: &str = "NotNeeded";

/// How one kind of a deleted stack's external state (its databases, or its
/// topics) fared in a cleanup attempt; each kind is cleaned on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CleanupStep {
    /// Gone: dropped or deleted now, or in an earlier attempt. Says what.
    Done(String),
    /// Nothing to clean on an external server: managed infrastructure's
    /// data goes with its volume. Says why.
    NotNeeded(String),
    /// This attempt failed, and is retried until the grace period ends.
    /// Says what is left, and why.
    Failed(String),
}

impl CleanupStep {
    /// Whether this kind still needs work.
    pub fn failed(&self) -> bool {
        matches!(self, CleanupStep::Failed(_))
    }

    /// What happened, for messages and Events.
    pub fn message(&self) -> &str {
        match self {
            CleanupStep::Done(message) | CleanupStep::NotNeeded(message) | CleanupStep::Failed(message) => {
                message
            }
        }
    }

    /// What an earlier attempt recorded in the condition `type_`, if it
    /// finished this kind: a True condition is not worked on again, so that
    /// a retry does not need what the finished kind needed (the admin
    /// Secret, once released).
    pub fn finished_before(stack: &CommerceStack, type_: &str) -> Option<CleanupStep> {
        let condition = stack.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
        (condition.status == "True").then(|| {
            if condition.reason == REASON_NOT_NEEDED {
                CleanupStep::NotNeeded(condition.message.clone())
            } else {
                CleanupStep::Done(condition.message.clone())
            }
        })
    }

    fn condition(&self, type_: &str, done_reason: &str, generation: Option<i64>) -> Condition {
        let message = self.message().to_owned();
        match self {
            CleanupStep::Done(_) => condition(type_, true, done_reason, message, generation),
            CleanupStep::NotNeeded(_) => condition(type_, true, REASON_NOT_NEEDED, message, generation),
            CleanupStep::Failed(_) => condition(type_, false, "CleanupFailed", message, generation),
        }
    }
}

/// What one reconcile did, for the status.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Objects sent with apply (`Kind/name`).
    pub applied: Vec<String>,
    /// Objects deleted (`Kind/name`).
    pub pruned: Vec<String>,
    /// Objects not applied, refused as not the stack's, or not deleted.
    pub problems: Vec<ObjectProblem>,
    /// The error that ended the external-state step early, if one did.
    pub error: Option<String>,
    /// Where clients reach the gateway.
    pub gateway_url: Option<String>,
    /// The topics, once the external-state step ensured them.
    pub topics: Option<Vec<TopicStatus>>,
    /// The databases, once the external-state step ensured them.
    pub databases: Option<Vec<DatabaseStatus>>,
    /// Managed infrastructure the external-state step waits for.
    pub waiting_for: Vec<String>,
    /// Why some of that wait may never end: one line per StorageClass that
    /// managed infrastructure names and the cluster lacks.
    pub missing_storage_classes: Vec<String>,
    /// Why the stack's PodMonitor was not made (the cluster does not serve
    /// the kind), if it asks for one.
    pub unserved_monitoring: Option<String>,
}

/// A condition as this reconcile sees it, before timestamps.
fn condition(type_: &str, ok: bool, reason: &str, message: String, generation: Option<i64>) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    }
}

/// `condition` with status `Unknown`: the operator does not know.
fn unknown(type_: &str, reason: &str, message: String, generation: Option<i64>) -> Condition {
    Condition { status: "Unknown".to_owned(), ..condition(type_, false, reason, message, generation) }
}

/// Keeps the stored `lastTransitionTime` of conditions whose status did not
/// change; a changed or new condition gets `now`.
fn with_transition_times(new: Vec<Condition>, old: &[Condition], now: Time) -> Vec<Condition> {
    new.into_iter()
        .map(|mut condition| {
            condition.last_transition_time = match old.iter().find(|o| o.type_ == condition.type_) {
                Some(previous) if previous.status == condition.status => {
                    previous.last_transition_time.clone()
                }
                _ => now.clone(),
            };
            condition
        })
        .collect()
}

/// The status of a stack that was reconciled (`valid`), from its listed
/// Deployments and the reconcile's outcome.
pub fn reconciled(
    stack: &CommerceStack,
    valid: &ValidStack<'_>,
    deployments: &[Deployment],
    outcome: &Outcome,
    now: Time,
) -> CommerceStackStatus {
    let generation = stack.metadata.generation;
    let mut services = Vec::new();
    let mut waiting = Vec::new();
    let mut rolling = false;
    for (service, _) in &valid.services {
        let name = names::component_name(valid, Component::Service(*service));
        let deployment = deployments.iter().find(|d| d.metadata.name.as_deref() == Some(name.as_str()));
        let (status, ready, updated) = deployment_state(*service, deployment);
        rolling |= !updated;
        if !ready {
            waiting.push(service.name());
        }
        services.push(status);
    }
    let ready_count = services.len() - waiting.len();
    let unapplied: Vec<String> =
        outcome.problems.iter().filter(|p| p.is_unapplied()).map(ObjectProblem::object).collect();
    let ready = if !unapplied.is_empty() {
        condition(
            CONDITION_READY,
            false,
            "ObjectsNotApplied",
            format!("not applied: {} (Degraded says why)", name_some(&unapplied, MAX_NAMED_OBJECTS)),
            generation,
        )
    } else if !waiting.is_empty() {
        condition(
            CONDITION_READY,
            false,
            "ServicesUnavailable",
            format!("waiting for {}", waiting.join(", ")),
            generation,
        )
    } else if !outcome.waiting_for.is_empty() {
        condition(
            CONDITION_READY,
            false,
            "WaitingForInfrastructure",
            format!("waiting for managed {} to become ready", outcome.waiting_for.join(" and ")),
            generation,
        )
    } else if outcome.error.is_some() || outcome.topics.is_none() || outcome.databases.is_none() {
        condition(
            CONDITION_READY,
            false,
            "ExternalStateNotReady",
            "the topics and databases are not ensured yet".into(),
            generation,
        )
    } else {
        condition(
            CONDITION_READY,
            true,
            "AllServicesAvailable",
            "every enabled service is available; topics and databases exist".into(),
            generation,
        )
    };
    let changed = !outcome.applied.is_empty() || !outcome.pruned.is_empty();
    let progressing = if changed {
        condition(
            CONDITION_PROGRESSING,
            true,
            "Applied",
            format!("applied {} and deleted {} objects", outcome.applied.len(), outcome.pruned.len()),
            generation,
        )
    } else if !outcome.waiting_for.is_empty() {
        condition(
            CONDITION_PROGRESSING,
            true,
            "WaitingForInfrastructure",
            format!("managed {} is starting", outcome.waiting_for.join(", ")),
            generation,
        )
    } else if rolling {
        condition(CONDITION_PROGRESSING, true, "RollingOut", "Deployments are rolling out".into(), generation)
    } else {
        condition(CONDITION_PROGRESSING, false, "UpToDate", "the cluster matches the spec".into(), generation)
    };
    let (reconciling, stalled) = kstatus(outcome, &ready, changed, rolling, generation);
    let failed = !outcome.problems.is_empty() || outcome.error.is_some();
    let degraded = if failed {
        let mut message = failure_message(&outcome.problems, outcome.error.as_deref());
        for missing in &outcome.missing_storage_classes {
            message.push('\n');
            message.push_str(&one_line(missing, MAX_FAILURE_LINE_LEN));
        }
        condition(CONDITION_DEGRADED, true, "ReconcileFailed", message, generation)
    } else if !outcome.missing_storage_classes.is_empty() {
        let message = outcome.missing_storage_classes.join("\n");
        condition(CONDITION_DEGRADED, true, REASON_STORAGE_CLASS_NOT_FOUND, message, generation)
    } else if let Some(message) = &outcome.unserved_monitoring {
        condition(CONDITION_DEGRADED, true, REASON_MONITORING_NOT_SERVED, message.clone(), generation)
    } else {
        condition(CONDITION_DEGRADED, false, "AsExpected", "no errors".into(), generation)
    };
    let old = stack.status.clone().unwrap_or_default();
    CommerceStackStatus {
        observed_generation: generation,
        conditions: with_transition_times(
            vec![ready, progressing, degraded, reconciling, stalled],
            &old.conditions,
            now,
        ),
        ready_services: Some(format!("{ready_count}/{}", services.len())),
        services,
        // Kept as last ensured while the external-state step did not run.
        topics: outcome.topics.clone().unwrap_or(old.topics),
        databases: outcome.databases.clone().unwrap_or(old.databases),
        gateway_url: outcome.gateway_url.clone(),
    }
}

/// `Reconciling` and `Stalled` of a reconciled stack (see the module's
/// comment), from the outcome and the `Ready` condition already computed.
///
/// Stalled: an object the apiserver refused (its answer rarely changes on
/// a retry: a request above its limit, a field it rejects), an object of
/// the stack's name that the stack did not create (someone must remove or
/// rename it), a StorageClass that managed infrastructure names and the
/// cluster lacks. Not stalled: a Kafka or Postgres error (a broker that
/// restarts comes back; it is retried with backoff, and `Reconciling`
/// says so with the error), an object that could not be deleted (retried).
fn kstatus(
    outcome: &Outcome,
    ready: &Condition,
    changed: bool,
    rolling: bool,
    generation: Option<i64>,
) -> (Condition, Condition) {
    let refused: Vec<ObjectProblem> = outcome.problems.iter().filter(|p| p.is_unapplied()).cloned().collect();
    let stalled = if !refused.is_empty() {
        let mut message = failure_message(&refused, None);
        for missing in &outcome.missing_storage_classes {
            message.push('\n');
            message.push_str(&one_line(missing, MAX_FAILURE_LINE_LEN));
        }
        Some(condition(CONDITION_STALLED, true, REASON_OBJECTS_REFUSED, message, generation))
    } else if !outcome.missing_storage_classes.is_empty() {
        let message = outcome.missing_storage_classes.join("\n");
        Some(condition(CONDITION_STALLED, true, REASON_STORAGE_CLASS_NOT_FOUND, message, generation))
    } else {
        None
    };
    if let Some(stalled) = stalled {
        let reconciling = condition(
            CONDITION_RECONCILING,
            false,
            REASON_STALLED,
            "progress needs a change of the spec or outside action: Stalled says what".into(),
            generation,
        );
        return (reconciling, stalled);
    }
    let not_stalled = condition(
        CONDITION_STALLED,
        false,
        "AsExpected",
        "nothing the operator cannot fix by itself keeps the stack from its spec".into(),
        generation,
    );
    let reconciling = if let Some(error) = &outcome.error {
        let message = format!("retrying with backoff: {}", one_line(error, MAX_FAILURE_LINE_LEN));
        condition(CONDITION_RECONCILING, true, "RetryingExternalState", message, generation)
    } else if !outcome.problems.is_empty() {
        // Only objects that could not be deleted are left: retried.
        let message = format!("retrying with backoff: {}", failure_message(&outcome.problems, None));
        condition(CONDITION_RECONCILING, true, "RetryingDeletes", message, generation)
    } else if changed {
        let message =
            format!("applied {} and deleted {} objects", outcome.applied.len(), outcome.pruned.len());
        condition(CONDITION_RECONCILING, true, "Applied", message, generation)
    } else if rolling {
        condition(CONDITION_RECONCILING, true, "RollingOut", "Deployments are rolling out".into(), generation)
    } else if ready.status != "True" {
        // Ready's reason and message say what the operator waits for.
        let message = ready.message.clone();
        condition(CONDITION_RECONCILING, true, &ready.reason, message, generation)
    } else {
        condition(CONDITION_RECONCILING, false, "UpToDate", "the stack matches its spec".into(), generation)
    };
    (reconciling, not_stalled)
}

/// What went wrong in a reconcile, for the Degraded condition and the
/// Warning Event: one line per object (`Kind/name: what the apiserver
/// said`), then the error of the external-state step. At most
/// [`MAX_FAILURE_LINES`] lines of at most [`MAX_FAILURE_LINE_LEN`] bytes,
/// and a last line that counts the lines left out.
pub fn failure_message(problems: &[ObjectProblem], error: Option<&str>) -> String {
    let lines: Vec<String> =
        problems.iter().map(ToString::to_string).chain(error.map(str::to_owned)).collect();
    let mut shown: Vec<String> =
        lines.iter().take(MAX_FAILURE_LINES).map(|line| one_line(line, MAX_FAILURE_LINE_LEN)).collect();
    if lines.len() > shown.len() {
        shown.push(format!("and {} more", lines.len() - shown.len()));
    }
    shown.join("\n")
}

/// `text` on one line (line breaks become spaces), cut to `max` bytes at a
/// character boundary with an ellipsis.
fn one_line(text: &str, max: usize) -> String {
    const ELLIPSIS: &str = "…";
    let line = text.replace(['\r', '\n'], " ");
    if line.len() <= max {
        return line;
    }
    let mut cut = max - ELLIPSIS.len();
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{ELLIPSIS}", &line[..cut])
}

/// The first `max` of `names`, and how many more there are.
fn name_some(names: &[String], max: usize) -> String {
    let mut text = names.iter().take(max).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > max {
        text.push_str(&format!(" and {} more", names.len() - max));
    }
    text
}

/// A service's replicas, and whether it is available and fully updated.
fn deployment_state(service: Service, deployment: Option<&Deployment>) -> (ServiceStatus, bool, bool) {
    let Some(deployment) = deployment else {
        return (ServiceStatus { name: service.name().into(), ..ServiceStatus::default() }, false, false);
    };
    let wanted = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = deployment.status.clone().unwrap_or_default();
    let observed = status.observed_generation >= deployment.metadata.generation;
    let updated = observed && status.updated_replicas.unwrap_or(0) >= wanted;
    let available = status.available_replicas.unwrap_or(0) >= wanted;
    let service_status = ServiceStatus {
        name: service.name().into(),
        replicas: status.replicas.unwrap_or(0),
        ready_replicas: status.ready_replicas.unwrap_or(0),
        updated_replicas: status.updated_replicas.unwrap_or(0),
    };
    (service_status, available && updated, updated)
}

/// The status of a stack whose spec breaks its rules: nothing was applied.
pub fn invalid(stack: &CommerceStack, problems: &[String], now: Time) -> CommerceStackStatus {
    let generation = stack.metadata.generation;
    let message = problems.join("; ");
    let old = stack.status.clone().unwrap_or_default();
    CommerceStackStatus {
        observed_generation: generation,
        conditions: with_transition_times(
            vec![
                condition(CONDITION_READY, false, REASON_INVALID_SPEC, message.clone(), generation),
                condition(CONDITION_PROGRESSING, false, REASON_INVALID_SPEC, message.clone(), generation),
                condition(CONDITION_DEGRADED, true, REASON_INVALID_SPEC, message.clone(), generation),
                condition(
                    CONDITION_RECONCILING,
                    false,
                    REASON_STALLED,
                    "the spec is invalid: Stalled says what to change".into(),
                    generation,
                ),
                condition(CONDITION_STALLED, true, REASON_INVALID_SPEC, message, generation),
            ],
            &old.conditions,
            now,
        ),
        ..old
    }
}

/// The status of a paused stack. The operator neither changes nor observes
/// the stack, so the status says so instead of vouching for a state it no
/// longer watches: `Ready` is Unknown (a `kubectl wait --for=condition=Ready`
/// does not take a paused stack for a ready one), `Progressing` is False and
/// `Paused` is True, all with reason `Paused`; `observedGeneration` and the
/// rest stay as last reconciled.
pub fn paused(stack: &CommerceStack, now: Time) -> CommerceStackStatus {
    const MESSAGE: &str =
        "spec.paused is true: the operator neither changes nor observes the stack until it is false";
    let generation = stack.metadata.generation;
    let mut status = stack.status.clone().unwrap_or_default();
    let new = vec![
        unknown(CONDITION_READY, REASON_PAUSED, MESSAGE.into(), generation),
        condition(CONDITION_PROGRESSING, false, REASON_PAUSED, MESSAGE.into(), generation),
        condition(CONDITION_PAUSED, true, REASON_PAUSED, MESSAGE.into(), generation),
        condition(CONDITION_RECONCILING, false, REASON_PAUSED, MESSAGE.into(), generation),
        condition(CONDITION_STALLED, false, REASON_PAUSED, MESSAGE.into(), generation),
    ];
    let mut conditions: Vec<Condition> =
        status.conditions.iter().filter(|c| !new.iter().any(|n| n.type_ == c.type_)).cloned().collect();
    conditions.extend(with_transition_times(new, &status.conditions, now));
    conditions.sort_by_key(|c| condition_order(&c.type_));
    status.conditions = conditions;
    status
}

/// The status of a deleted stack whose external state is being cleaned up:
/// as last reconciled, with `DatabasesCleanedUp` and `TopicsCleanedUp` saying
/// how each kind fared. Written before the finalizer goes, so that a retry
/// skips what is done.
pub fn cleaning_up(
    stack: &CommerceStack,
    databases: &CleanupStep,
    topics: &CleanupStep,
    now: Time,
) -> CommerceStackStatus {
    let generation = stack.metadata.generation;
    let mut status = stack.status.clone().unwrap_or_default();
    let new = vec![
        databases.condition(CONDITION_DATABASES_CLEANED_UP, "Dropped", generation),
        topics.condition(CONDITION_TOPICS_CLEANED_UP, "Deleted", generation),
    ];
    let mut conditions: Vec<Condition> =
        status.conditions.iter().filter(|c| !new.iter().any(|n| n.type_ == c.type_)).cloned().collect();
    conditions.extend(with_transition_times(new, &status.conditions, now));
    conditions.sort_by_key(|c| condition_order(&c.type_));
    status.conditions = conditions;
    status
}

fn condition_order(type_: &str) -> usize {
    [
        CONDITION_READY,
        CONDITION_PROGRESSING,
        CONDITION_DEGRADED,
        CONDITION_RECONCILING,
        CONDITION_STALLED,
        CONDITION_PAUSED,
        CONDITION_DATABASES_CLEANED_UP,
        CONDITION_TOPICS_CLEANED_UP,
    ]
    .iter()
    .position(|t| *t == type_)
    .unwrap_or(usize::MAX)
}

/// The status of a policy whose `Accepted` condition has `status` (`True`,
/// `False` or `Unknown`), `reason` and `message`
/// ([`super::policy::Acceptance`]).
pub fn policy(
    policy: &RateLimitPolicy,
    status: &str,
    reason: &str,
    message: String,
    now: Time,
) -> RateLimitPolicyStatus {
    let generation = policy.metadata.generation;
    let accepted = Condition {
        status: status.to_owned(),
        ..condition(CONDITION_ACCEPTED, false, reason, message, generation)
    };
    let old = policy.status.clone().unwrap_or_default();
    RateLimitPolicyStatus {
        observed_generation: generation,
        conditions: with_transition_times(vec![accepted], &old.conditions, now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::validate;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn stack() -> CommerceStack {
        let mut stack =
            crate::build::parse_stack(include_str!("../../../manifests/examples/minimal.yaml")).unwrap();
        stack.metadata.generation = Some(3);
        stack
    }

    fn time(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn available(name: &str) -> Deployment {
        Deployment {
            metadata: ObjectMeta { name: Some(name.into()), generation: Some(1), ..ObjectMeta::default() },
            spec: Some(DeploymentSpec { replicas: Some(1), ..DeploymentSpec::default() }),
            status: Some(DeploymentStatus {
                observed_generation: Some(1),
                replicas: Some(1),
                ready_replicas: Some(1),
                available_replicas: Some(1),
                updated_replicas: Some(1),
                ..DeploymentStatus::default()
            }),
        }
    }

    /// Every service's Deployment, available.
    fn all_available() -> Vec<Deployment> {
        Service::ALL.iter().map(|s| available(&format!("shop-{s}"))).collect()
    }

    /// A reconcile that ensured the (no) topics and databases it had.
    fn all_ensured() -> Outcome {
        Outcome { topics: Some(Vec::new()), databases: Some(Vec::new()), ..Outcome::default() }
    }

    fn find<'a>(status: &'a CommerceStackStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_stack_is_ready_when_every_service_is_available() {
        let stack = stack();
        let valid = validate(&stack, "default").unwrap();
        let deployments = all_available();
        let outcome = all_ensured();
        let status = reconciled(&stack, &valid, &deployments, &outcome, time(10));
        assert_eq!(find(&status, CONDITION_READY).status, "True");
        assert_eq!(find(&status, CONDITION_PROGRESSING).reason, "UpToDate");
        assert_eq!(status.ready_services.as_deref(), Some("15/15"));
        assert_eq!(status.observed_generation, Some(3));
    }

    #[test]
    fn available_services_are_not_ready_until_topics_and_databases_exist() {
        let stack = stack();
        let valid = validate(&stack, "default").unwrap();
        let deployments = all_available();
        let outcome = Outcome { error: Some("connecting to Postgres".into()), ..Outcome::default() };
        let status = reconciled(&stack, &valid, &deployments, &outcome, time(10));
        assert_eq!(find(&status, CONDITION_READY).reason, "ExternalStateNotReady");
        assert_eq!(find(&status, CONDITION_DEGRADED).status, "True");
    }

    #[test]
    fn a_missing_deployment_names_the_service_it_waits_for() {
        let stack = stack();
        let valid = validate(&stack, "default").unwrap();
        let deployments: Vec<Deployment> = Service::ALL
            .iter()
            .filter(|s| **s != Service::Order)
            .map(|s| available(&format!("shop-{s}")))
            .collect();
        let status = reconciled(&stack, &valid, &deployments, &Outcome::default(), time(10));
        let ready = find(&status, CONDITION_READY);
        assert_eq!((ready.status.as_str(), ready.message.as_str()), ("False", "waiting for order"));
        assert_eq!(status.ready_services.as_deref(), Some("14/15"));
    }

    #[test]
    fn an_unchanged_condition_keeps_its_transition_time() {
        let mut stack = stack();
        let valid = validate(&stack, "default").unwrap();
        let first = reconciled(&stack, &valid, &[], &Outcome::default(), time(10));
        stack.status = Some(first.clone());
        let valid = validate(&stack, "default").unwrap();
        let second = reconciled(&stack, &valid, &[], &Outcome::default(), time(20));
        assert_eq!(first, second, "a second identical reconcile must not change the status");
    }

    #[test]
    fn each_kind_of_cleanup_has_its_own_condition_and_a_finished_one_is_not_redone() {
        let mut stack = stack();
        let valid = validate(&stack, "default").unwrap();
        stack.status = Some(reconciled(&stack, &valid, &[], &Outcome::default(), time(10)));
        let databases = CleanupStep::Failed("dropping databases shop_shop_auth: no admin Secret".into());
        let topics = CleanupStep::Done("deleted the 11 topics shop.shop.*".into());
        let status = cleaning_up(&stack, &databases, &topics, time(20));
        let dropped = find(&status, CONDITION_DATABASES_CLEANED_UP);
        assert_eq!((dropped.status.as_str(), dropped.message.as_str()), ("False", databases.message()));
        let deleted = find(&status, CONDITION_TOPICS_CLEANED_UP);
        assert_eq!((deleted.status.as_str(), deleted.reason.as_str()), ("True", "Deleted"));
        assert_eq!(find(&status, CONDITION_READY), find(stack.status.as_ref().unwrap(), CONDITION_READY));

        stack.status = Some(status.clone());
        assert_eq!(CleanupStep::finished_before(&stack, CONDITION_TOPICS_CLEANED_UP), Some(topics.clone()));
        assert_eq!(CleanupStep::finished_before(&stack, CONDITION_DATABASES_CLEANED_UP), None);
        assert_eq!(
            cleaning_up(&stack, &databases, &topics, time(30)),
            status,
            "the same outcome writes nothing"
        );
        let managed = CleanupStep::NotNeeded("Postgres is managed".into());
        stack.status = Some(cleaning_up(&stack, &managed, &topics, time(40)));
        assert_eq!(CleanupStep::finished_before(&stack, CONDITION_DATABASES_CLEANED_UP), Some(managed));
    }

    fn kstatus_of(status: &CommerceStackStatus) -> (&str, &str) {
        (find(status, CONDITION_RECONCILING).status.as_str(), find(status, CONDITION_STALLED).status.as_str())
    }

    #[test]
    fn a_ready_stack_is_neither_reconciling_nor_stalled_for_kstatus() {
        let stack = stack();
        let valid = validate(&stack, "default").unwrap();
        let deployments = all_available();
        let outcome = all_ensured();
        let status = reconciled(&stack, &valid, &deployments, &outcome, time(10));
        assert_eq!(kstatus_of(&status), ("False", "False"));
        assert_eq!(find(&status, CONDITION_RECONCILING).observed_generation, Some(3));
    }

    #[test]
    fn a_stack_waiting_for_its_services_or_retrying_kafka_is_reconciling_not_stalled() {
        let stack = stack();
        let valid = validate(&stack, "default").unwrap();
        let waiting = reconciled(&stack, &valid, &[], &Outcome::default(), time(10));
        assert_eq!(kstatus_of(&waiting), ("True", "False"));
        // No Deployment yet: the rollout has not begun.
        assert_eq!(find(&waiting, CONDITION_RECONCILING).reason, "RollingOut");
        let mut unavailable: Vec<Deployment> =
            Service::ALL.iter().map(|s| available(&format!("shop-{s}"))).collect();
        unavailable[0].status.as_mut().unwrap().available_replicas = Some(0);
        let starting = reconciled(&stack, &valid, &unavailable, &Outcome::default(), time(10));
        assert_eq!(kstatus_of(&starting), ("True", "False"));
        let reconciling = find(&starting, CONDITION_RECONCILING);
        assert_eq!(
            (reconciling.reason.as_str(), reconciling.message.as_str()),
            ("ServicesUnavailable", "waiting for auth")
        );

        let deployments = all_available();
        let outcome =
            Outcome { error: Some("ensuring the topics on kafka 127.0.0.1:1".into()), ..Outcome::default() };
        let retrying = reconciled(&stack, &valid, &deployments, &outcome, time(10));
        assert_eq!(kstatus_of(&retrying), ("True", "False"));
        let reconciling = find(&retrying, CONDITION_RECONCILING);
        assert_eq!(reconciling.reason, "RetryingExternalState");
        assert!(reconciling.message.contains("kafka 127.0.0.1:1"), "{}", reconciling.message);
    }

    #[test]
    fn a_refused_object_or_a_missing_storage_class_stalls_the_stack_naming_it() {
        use super::super::apply::Failure;
        let stack = stack();
        let valid = validate(&stack, "default").unwrap();
        let refused = Outcome {
            problems: vec![ObjectProblem {
                kind: "ConfigMap".into(),
                name: "shop-order".into(),
                failure: Failure::NotOurs,
            }],
            ..Outcome::default()
        };
        let status = reconciled(&stack, &valid, &[], &refused, time(10));
        assert_eq!(kstatus_of(&status), ("False", "True"));
        let stalled = find(&status, CONDITION_STALLED);
        assert_eq!(stalled.reason, REASON_OBJECTS_REFUSED);
        assert!(stalled.message.contains("ConfigMap/shop-order"), "{}", stalled.message);

        let missing = Outcome {
            missing_storage_classes: vec!["StorageClass fast does not exist".into()],
            waiting_for: vec!["Postgres".into()],
            ..Outcome::default()
        };
        let status = reconciled(&stack, &valid, &[], &missing, time(10));
        assert_eq!(kstatus_of(&status), ("False", "True"));
        assert_eq!(find(&status, CONDITION_STALLED).reason, REASON_STORAGE_CLASS_NOT_FOUND);
    }

    #[test]
    fn an_invalid_stack_is_stalled_and_a_paused_one_neither_reconciling_nor_stalled() {
        let mut stack = stack();
        let problems = vec!["services.order.resources: requests.cpu 2 exceeds limits.cpu 500m".to_owned()];
        let status = invalid(&stack, &problems, time(10));
        assert_eq!(kstatus_of(&status), ("False", "True"));
        let stalled = find(&status, CONDITION_STALLED);
        assert_eq!(
            (stalled.reason.as_str(), stalled.message.as_str()),
            (REASON_INVALID_SPEC, problems[0].as_str())
        );
        stack.status = Some(status.clone());
        assert_eq!(invalid(&stack, &problems, time(20)), status, "the same problems write nothing");

        stack.spec.paused = true;
        let status = paused(&stack, time(30));
        assert_eq!(kstatus_of(&status), ("False", "False"));
        assert_eq!(find(&status, CONDITION_STALLED).reason, REASON_PAUSED);
    }

    #[test]
    fn a_paused_stack_is_ready_unknown_paused_and_keeps_its_observed_generation() {
        let mut stack = stack();
        let valid = validate(&stack, "default").unwrap();
        let deployments = all_available();
        let outcome = all_ensured();
        let observed = reconciled(&stack, &valid, &deployments, &outcome, time(10));
        assert_eq!(find(&observed, CONDITION_READY).status, "True");
        stack.status = Some(observed.clone());
        stack.spec.paused = true;
        stack.metadata.generation = Some(4);

        let status = paused(&stack, time(20));
        let ready = find(&status, CONDITION_READY);
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("Unknown", REASON_PAUSED));
        assert_eq!(ready.last_transition_time, time(20));
        let paused_condition = find(&status, "Paused");
        assert_eq!(
            (paused_condition.status.as_str(), paused_condition.reason.as_str()),
            ("True", REASON_PAUSED)
        );
        assert_eq!(find(&status, CONDITION_PROGRESSING).reason, REASON_PAUSED);
        assert_eq!(status.observed_generation, Some(3), "a paused stack's generation is not observed");
        assert_eq!(find(&status, CONDITION_DEGRADED), find(&observed, CONDITION_DEGRADED));

        stack.status = Some(status.clone());
        assert_eq!(paused(&stack, time(30)), status, "a second paused reconcile changes nothing");
    }
}
