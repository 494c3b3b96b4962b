//! The reconciler of `CommerceStack`: one pass of the pipeline
//! `validate -> observe -> build -> apply -> prune -> external state -> status`.
//!
//! Every read is made in [`observe`], before anything is built or written
//! (the stack's objects, its namespace's policies, the Secrets it logs in to
//! its infrastructure with); `build` is a pure function of the stack and of
//! what was observed.
//!
//! Every step that writes first compares: objects that already match are not
//! sent, topics and databases that exist are left alone, and the status is
//! written only when it changed, so a reconcile with nothing to do sends
//! reads only. `spec.paused` stops every write but the one status update that
//! says so (`Paused` True, `Ready` Unknown, `observedGeneration` kept).
//! Errors go to [`error_policy`], which retries each stack on its own
//! growing delay.
//!
//! A finalizer exists only under `deletionPolicy: Delete`, to drop the
//! stack's topics and databases on external servers ([`cleanup`]); if that
//! keeps failing for [`CLEANUP_GRACE`], the finalizer is removed anyway (with
//! a Warning Event naming what was left), so deletion never blocks forever.
//! Meanwhile the stack holds the Postgres admin Secret that the cleanup needs
//! ([`admin_secret`]).
//!
//! The reconcile also writes the status of every RateLimitPolicy that
//! targets the stack ([`policy`]): whether its rules joined the gateway's,
//! and if not, why. While the stack is paused or invalid, or does not
//! exist, the policy controller writes them instead.

pub mod admin_secret;
pub mod apply;
pub mod backoff;
pub mod cleanup;
pub mod diff;
pub mod observe;
pub mod policy;
pub mod signing_key;
pub mod status;
pub mod storage_class;

use std::sync::Arc;
use std::time::{Duration, Instant};

use commerce_api::crd::API_VERSION;
use commerce_api::crd::policy::{REASON_GATEWAY_DISABLED, REASON_RULES_NOT_APPLIED};
use commerce_api::crd::stack::{CONDITION_DEGRADED, DatabaseStatus, DeletionPolicy};
use commerce_api::{CommerceStack, CommerceStackStatus, RateLimitPolicy};
use commerce_topology::Service;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::Error;
use crate::build::names::Component;
use crate::build::secrets::SecretValues;
use crate::build::{self, endpoints, gateway, monitoring, names, secrets};
use crate::external::{ExternalState, plan};
use crate::metrics::Metrics;
use crate::validate::{ValidStack, validate};
use backoff::Backoffs;
use observe::{Infra, LoginSecrets, Observed};
use status::Outcome;

/// How often a stack is reconciled without any change: watches trigger
/// reconciles on every change of the stack and of what it owns; this is a
/// safety net for missed events.
pub const RESYNC: Duration = Duration::from_secs(600);
/// Longest Event note the apiserver takes: 1024 bytes (events.k8s.io/v1
/// `note`); [`shorten_note`] keeps notes within it, ellipsis included.
const MAX_EVENT_NOTE: usize = 1024;
/// How soon to look again while managed infrastructure starts (and while a
/// stack waits for the cluster to serve PodMonitors).
pub const INFRA_POLL: Duration = Duration::from_secs(15);
/// Finalizer that guards the cleanup of topics and databases.
pub const FINALIZER: &str = "commerce-stack.dev/external-state";
/// How long a deleted stack's cleanup may keep failing before the finalizer
/// is removed regardless: long enough to ride out a restarting database,
/// short enough that a namespace deletion does not hang. Each kind of state
/// (databases, topics) is cleaned on its own within it.
pub const CLEANUP_GRACE: Duration = Duration::from_secs(600);

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Events on the reconciled resources.
    pub recorder: Recorder,
    /// Per-stack retry delays.
    pub backoffs: Backoffs,
    /// Reconcile counts, durations and errors.
    pub metrics: Arc<Metrics>,
    /// Topics and databases.
    pub external: Arc<dyn ExternalState>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("backoffs", &self.backoffs).finish_non_exhaustive()
    }
}

/// The controller's entry point. A resource that does not deserialize (a
/// stored object older than the CRD, a field of the wrong type) is reported
/// and skipped; it does not stop the controller.
pub async fn reconcile(
    guard: Arc<DeserializeGuard<CommerceStack>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    match &guard.0 {
        Ok(stack) => reconcile_stack(stack, &ctx).await,
        Err(invalid) => {
            let name = invalid.metadata.name.clone().unwrap_or_default();
            warn!(stack = %name, error = %invalid.error, "skipping a CommerceStack that does not deserialize");
            let reference = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some(API_VERSION.into()),
                kind: Some("CommerceStack".into()),
                name: invalid.metadata.name.clone(),
                namespace: invalid.metadata.namespace.clone(),
                uid: invalid.metadata.uid.clone(),
                ..Default::default()
            };
            publish(&ctx, &reference, EventType::Warning, "Malformed", invalid.error.clone()).await;
            Ok(Action::await_change())
        }
    }
}

/// Retries a failed stack after its own, growing delay.
pub fn error_policy(guard: Arc<DeserializeGuard<CommerceStack>>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = match &guard.0 {
        Ok(stack) => object_key(stack),
        Err(invalid) => format!(
            "{}/{}",
            invalid.metadata.namespace.as_deref().unwrap_or_default(),
            invalid.metadata.name.as_deref().unwrap_or_default()
        ),
    };
    let delay = ctx.backoffs.failed(&key);
    warn!(stack = %key, error = %error_chain(error), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// One reconcile of a stack, timed and counted.
///
/// It is a `reconcile` span (a trace of its own, exported as the services'
/// are), whose children are the API requests it makes.
pub async fn reconcile_stack(stack: &CommerceStack, ctx: &Context) -> Result<Action, Error> {
    let started = Instant::now();
    let span = tracing::info_span!(
        "reconcile",
        otel.name = "reconcile CommerceStack",
        namespace = stack.namespace().unwrap_or_default(),
        stack = stack.name_any(),
        generation = stack.metadata.generation,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    commerce_platform::trace_context::start(&span, None);
    let result = tracing::Instrument::instrument(pipeline(stack, ctx), span.clone()).await;
    if let Err(error) = &result {
        commerce_platform::trace_context::set_error(&span, error_chain(error));
    }
    let error_kind = result.as_ref().err().map(Error::metric_kind);
    ctx.metrics.observe("CommerceStack", started.elapsed(), error_kind);
    if result.is_ok() {
        ctx.backoffs.succeeded(&object_key(stack));
    }
    result
}

fn object_key(stack: &CommerceStack) -> String {
    format!("{}/{}", stack.namespace().unwrap_or_default(), stack.name_any())
}

async fn pipeline(stack: &CommerceStack, ctx: &Context) -> Result<Action, Error> {
    let name = stack.name_any();
    let Some(namespace) = stack.namespace() else {
        // A namespaced kind always has one; nothing sensible to do otherwise.
        return Ok(Action::await_change());
    };
    let now = now();
    if stack.metadata.deletion_timestamp.is_some() {
        // Owned objects go with the stack through garbage collection; only
        // external state needs the operator.
        if has_finalizer(stack) {
            cleanup::finalize(ctx, stack, &namespace).await?;
        }
        return Ok(Action::await_change());
    }

    if stack.spec.paused {
        // Not observed either: Ready becomes Unknown and observedGeneration
        // stays where the last reconcile left it.
        // Its policies' statuses are the policy controller's meanwhile.
        write_status(ctx, stack, status::paused(stack, now)).await?;
        return Ok(Action::await_change());
    }

    let wants_finalizer = stack.spec.deletion_policy == DeletionPolicy::Delete;
    if wants_finalizer != has_finalizer(stack) {
        if !wants_finalizer {
            // A stack holds admin Secrets only while it carries its finalizer.
            admin_secret::release(&ctx.client, &namespace, &name, &[]).await?;
        }
        set_finalizer(ctx, stack, wants_finalizer, None).await?;
    }

    let valid = match validate(stack, &namespace) {
        Ok(valid) => valid,
        Err(Error::InvalidStack { problems, .. }) => {
            let changed = write_status(ctx, stack, status::invalid(stack, &problems, now)).await?;
            if changed.is_some() {
                publish(ctx, &stack.object_ref(&()), EventType::Warning, "InvalidSpec", problems.join("; "))
                    .await;
            }
            // Retrying cannot help; a change of the spec triggers a reconcile.
            return Ok(Action::await_change());
        }
        Err(other) => return Err(other),
    };

    // Every read first; from here to the apply, nothing but computation.
    let Observed { policies, pod_monitors, current, secrets: login, missing_storage_classes } =
        observe::observe(&ctx.client, &valid).await?;
    let mut values = secrets::SecretValues::keep_or_generate(
        &secrets::generated_values(&valid),
        &current.secrets(),
        &mut rand::rng(),
    );
    let rotation = signing_key::decide_for(&valid, &current.secrets(), &mut values, &now)?;
    let desired = build::build(&valid, &policies, &values, pod_monitors)?;
    ctx.metrics.set_managed_objects(&namespace, &name, desired.len());

    let mut outcome = Outcome {
        gateway_url: gateway::gateway_url(&valid),
        missing_storage_classes,
        unserved_monitoring: monitoring::unserved(&valid, pod_monitors),
        ..Outcome::default()
    };
    apply_and_prune(ctx, stack, &namespace, &desired, &current, &mut outcome).await;
    rotation.announce(ctx, stack, &outcome).await;
    let external = ensure_external(ctx, &valid, &values, &current, &login, &mut outcome).await;
    if let Err(error) = &external {
        outcome.error = Some(error_chain(error));
    }
    // Object problems first: they are the ones a person has to resolve.
    let result = if outcome.problems.is_empty() {
        external
    } else {
        Err(Error::ReconcileObjects { problems: outcome.problems.clone() })
    };

    let deployments: Vec<Deployment> = current.typed("Deployment");
    let new_status = status::reconciled(stack, &valid, &deployments, &outcome, now.clone());
    let degraded_changed = condition_of(stack.status.as_ref(), CONDITION_DEGRADED)
        != condition_of(Some(&new_status), CONDITION_DEGRADED);
    let status_written = write_status(ctx, stack, new_status).await;
    write_policy_statuses(ctx, &valid, &policies, &outcome, now.clone()).await?;
    if degraded_changed && !outcome.missing_storage_classes.is_empty() {
        let note = outcome.missing_storage_classes.join("; ");
        publish(
            ctx,
            &stack.object_ref(&()),
            EventType::Warning,
            status::REASON_STORAGE_CLASS_NOT_FOUND,
            note,
        )
        .await;
    }
    if !outcome.applied.is_empty() {
        info!(stack = %name, objects = ?outcome.applied, "applied");
        let note = format!("applied {}", outcome.applied.join(", "));
        publish(ctx, &stack.object_ref(&()), EventType::Normal, "Applied", note).await;
    }
    if !outcome.pruned.is_empty() {
        info!(stack = %name, objects = ?outcome.pruned, "pruned");
        let note = format!("deleted {}", outcome.pruned.join(", "));
        publish(ctx, &stack.object_ref(&()), EventType::Normal, "Pruned", note).await;
    }
    if result.is_err() {
        let note = status::failure_message(&outcome.problems, outcome.error.as_deref());
        publish(ctx, &stack.object_ref(&()), EventType::Warning, "ReconcileFailed", note).await;
    }
    result?;
    status_written?;
    // Managed infrastructure starting, or a PodMonitor waiting for its CRD
    // (nothing the controller watches says when it is installed).
    if !outcome.waiting_for.is_empty() || outcome.unserved_monitoring.is_some() {
        return Ok(Action::requeue(rotation.requeue_within(INFRA_POLL)));
    }
    Ok(Action::requeue(rotation.requeue_within(RESYNC)))
}

/// Ensures the stack's topics, its own Kafka user (`serviceUser: PerStack`)
/// and its databases. Managed infrastructure that is not ready yet is
/// waited for (recorded in the outcome), not an error.
///
/// Under `deletionPolicy: Delete` with an external Postgres, the admin
/// Secret is held ([`admin_secret`]) before any database is ensured with its
/// credentials, and a hold of the stack on any other Secret is released.
///
/// Databases and the Kafka user wait while a desired Secret was not written
/// (refused as not ours, or its apply failed): their roles get the
/// passwords generated for those Secrets, and a password no Secret keeps
/// would lock the services out, and be replaced by another on the next
/// reconcile.
async fn ensure_external(
    ctx: &Context,
    valid: &ValidStack<'_>,
    values: &SecretValues,
    current: &apply::Current,
    login: &LoginSecrets,
    outcome: &mut Outcome,
) -> Result<(), Error> {
    let endpoints = endpoints::endpoints(valid);
    let holds = valid.stack.spec.deletion_policy == DeletionPolicy::Delete;
    if holds {
        // First, so that a broker or database that is down does not keep a
        // hold the stack no longer needs.
        let keep = login.names();
        let released = admin_secret::release(&ctx.client, valid.namespace, valid.name, &keep).await?;
        if !released.is_empty() {
            info!(stack = %valid.name, secrets = ?released, "released the hold on a Secret no longer referenced");
        }
    }
    let stateful_sets: Vec<StatefulSet> = current.typed("StatefulSet");
    let ready = |component: Component| {
        let name = names::component_name(valid, component);
        stateful_sets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name.as_str()))
            .and_then(|s| s.status.as_ref()?.ready_replicas)
            .unwrap_or(0)
            > 0
    };
    let unwritten_secret = outcome.problems.iter().any(|p| p.kind == "Secret" && p.is_unapplied());
    if valid.kafka.is_managed() && !ready(Component::Kafka) {
        outcome.waiting_for.push("Kafka".into());
    } else {
        let kafka = login.kafka(&endpoints)?;
        if holds {
            login.hold(&ctx.client, valid.namespace, valid.name, Infra::Kafka).await?;
        }
        outcome.topics = Some(ctx.external.ensure_topics(&kafka, &plan::topics(valid)).await?);
        // As for the databases: the user's password only once its Secret
        // keeps it.
        if let Some(user) = plan::kafka_user(valid, values)?
            && !unwritten_secret
        {
            ctx.external.ensure_kafka_user(&kafka, &user).await?;
        }
    }
    if valid.postgres.is_managed() && !ready(Component::Postgres) {
        outcome.waiting_for.push("Postgres".into());
    } else if !unwritten_secret {
        let server = login.postgres(valid, values, &endpoints)?;
        if holds {
            login.hold(&ctx.client, valid.namespace, valid.name, Infra::Postgres).await?;
        }
        let databases = plan::databases(valid, values)?;
        ctx.external.ensure_databases(&server, &databases).await?;
        outcome.databases = Some(
            databases
                .iter()
                .map(|d| DatabaseStatus {
                    name: d.name.clone(),
                    service: d.service.name().into(),
                    secret_name: names::database_secret_name(valid, d.service),
                })
                .collect(),
        );
    }
    Ok(())
}

fn has_finalizer(stack: &CommerceStack) -> bool {
    stack.finalizers().iter().any(|f| f == FINALIZER)
}

/// Adds or removes the finalizer. The merge patch carries the
/// resourceVersion (`resource_version`, else the stack's as read), so a
/// concurrent change of the finalizers (by another controller) fails it
/// instead of being overwritten.
async fn set_finalizer(
    ctx: &Context,
    stack: &CommerceStack,
    present: bool,
    resource_version: Option<String>,
) -> Result<(), Error> {
    let mut finalizers: Vec<String> =
        stack.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    if present {
        finalizers.push(FINALIZER.to_owned());
    }
    let api: Api<CommerceStack> = Api::namespaced(ctx.client.clone(), &stack.namespace().unwrap_or_default());
    let resource_version = resource_version.or_else(|| stack.resource_version());
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": resource_version}});
    api.patch(&stack.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(|source| {
        Error::PatchFinalizers { object: format!("CommerceStack/{}", stack.name_any()), source }
    })?;
    Ok(())
}

/// Applies what differs, then deletes what is no longer desired. Every
/// object is tried: a failure, or an object that is not the stack's, is
/// recorded in the outcome and the rest go on. Prune takes the whole desired
/// set as its keep-list, so an object whose apply failed is never deleted.
async fn apply_and_prune(
    ctx: &Context,
    stack: &CommerceStack,
    namespace: &str,
    desired: &[build::DesiredObject],
    current: &apply::Current,
    outcome: &mut Outcome,
) {
    // Without a uid nothing is provably ours; a stored stack always has one.
    let uid = stack.metadata.uid.as_deref().unwrap_or_default();
    // Refused ConfigMaps and Secrets: a workload whose pods would read one is
    // held back too (build orders them before the workloads).
    let mut foreign: std::collections::BTreeSet<(&'static str, String)> = Default::default();
    for object in desired {
        if let Some(reference) =
            apply::pod_references(object).into_iter().find(|reference| foreign.contains(reference))
        {
            outcome.problems.push(apply::held_back(object, &reference));
            continue;
        }
        let existing = match apply::claim(&ctx.client, namespace, object, current, uid).await {
            Ok(apply::Claim::Listed(existing)) => Some(existing),
            Ok(apply::Claim::Unlisted) => None,
            Ok(apply::Claim::Foreign) => {
                outcome.problems.push(apply::refused(object));
                match object.resource.kind.as_str() {
                    "ConfigMap" => foreign.insert(("ConfigMap", object.name().to_owned())),
                    "Secret" => foreign.insert(("Secret", object.name().to_owned())),
                    _ => false,
                };
                continue;
            }
            Err(problem) => {
                outcome.problems.push(problem);
                continue;
            }
        };
        if apply::needs_apply(object, existing) {
            match apply::apply(&ctx.client, namespace, object).await {
                Ok(()) => outcome.applied.push(object.display()),
                Err(problem) => outcome.problems.push(problem),
            }
        }
    }
    for (resource, object) in apply::prune_candidates(current, desired, uid) {
        match apply::delete(&ctx.client, namespace, resource, object).await {
            Ok(()) => outcome.pruned.push(format!("{}/{}", resource.kind, object.name_any())),
            Err(problem) => outcome.problems.push(problem),
        }
    }
}

/// The policies of the namespace; malformed ones are skipped (they target
/// nothing the operator can read).
/// Writes the stack's status if it differs from the stored one; returns
/// the stack's resourceVersion after the write, `None` when it did not
/// write.
async fn write_status(
    ctx: &Context,
    stack: &CommerceStack,
    status: CommerceStackStatus,
) -> Result<Option<String>, Error> {
    if stack.status.as_ref() == Some(&status) {
        return Ok(None);
    }
    let api: Api<CommerceStack> = Api::namespaced(ctx.client.clone(), &stack.namespace().unwrap_or_default());
    let patch = json!({"apiVersion": API_VERSION, "kind": "CommerceStack", "status": status});
    let written = api
        .patch_status(&stack.name_any(), &PatchParams::apply(names::MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::PatchStatus {
            object: format!("CommerceStack/{}", stack.name_any()),
            source,
        })?;
    Ok(Some(written.resource_version().unwrap_or_default()))
}

/// Writes the `Accepted` condition of each policy that targets the
/// reconciled stack: the verdict of [`gateway::judge_policies`], unless the
/// stack runs no gateway, or its rules ConfigMap was not applied (then the
/// gateway may still enforce an earlier version of the rules: Unknown).
async fn write_policy_statuses(
    ctx: &Context,
    valid: &ValidStack<'_>,
    policies: &[RateLimitPolicy],
    outcome: &Outcome,
    now: Time,
) -> Result<(), Error> {
    let rules_name = gateway::rate_limits_config_map_name(valid);
    let rules_unapplied =
        outcome.problems.iter().any(|p| p.kind == "ConfigMap" && p.name == rules_name && p.is_unapplied());
    for decision in gateway::judge_policies(valid, policies)? {
        let acceptance = if !valid.is_enabled(Service::Gateway) {
            policy::Acceptance::refused(
                REASON_GATEWAY_DISABLED,
                format!(
                    "CommerceStack/{} runs no gateway (services.gateway.enabled is false): nothing enforces \
                     rate limits",
                    valid.name
                ),
            )
        } else if rules_unapplied && matches!(decision.verdict, gateway::PolicyVerdict::Accepted { .. }) {
            policy::Acceptance {
                status: "Unknown",
                reason: REASON_RULES_NOT_APPLIED,
                message: format!(
                    "the rules were accepted, but ConfigMap/{rules_name} was not applied (the Degraded \
                     condition of CommerceStack/{} says why); the gateway enforces the rules it had before",
                    valid.name
                ),
            }
        } else {
            policy::Acceptance::from_verdict(valid.name, &decision.verdict)
        };
        policy::write_status(ctx, decision.policy, acceptance, now.clone()).await?;
    }
    Ok(())
}

/// The condition `type_` of a status, if it has one.
fn condition_of<'s>(status: Option<&'s CommerceStackStatus>, type_: &str) -> Option<&'s Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

/// Publishes an Event; a failure is logged, never fails the reconcile.
async fn publish(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let note = shorten_note(note, MAX_EVENT_NOTE);
    let event =
        Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
    if let Err(error) = ctx.recorder.publish(&event, reference).await {
        warn!(reason, error = %error, "could not publish an Event");
    }
}

/// `note` if it fits in `max` bytes; else cut at the last word boundary that
/// leaves room for an ellipsis (never inside a word, an object name of the
/// `applied A, B, ...` lists, or a UTF-8 character), separators before the
/// cut dropped, and ` …` appended: at most `max` bytes in all. One word
/// longer than `max` is cut at a character boundary.
fn shorten_note(note: String, max: usize) -> String {
    const ELLIPSIS: &str = " …";
    if note.len() <= max {
        return note;
    }
    let mut cut = max.saturating_sub(ELLIPSIS.len());
    while !note.is_char_boundary(cut) {
        cut -= 1;
    }
    let head = &note[..cut];
    let at_word = if note[cut..].starts_with(char::is_whitespace) {
        head
    } else {
        head.rfind(char::is_whitespace).map_or(head, |space| &head[..space])
    };
    let kept = at_word.trim_end_matches(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | ':'));
    format!("{kept}{ELLIPSIS}")
}

/// An error with its causes, for status messages and Events. A refusal by
/// the apiserver ends the chain with its message, once: kube's own text for
/// it repeats the message and the whole Status.
pub fn error_chain(error: &Error) -> String {
    commerce_platform::errors::error_chain_with(error, |cause| match cause.downcast_ref::<kube::Error>() {
        Some(api_error @ kube::Error::Api(_)) => Some(api_message(api_error)),
        _ => None,
    })
}

/// What the apiserver said, once: the message of the Status it answered
/// (its reason, or the HTTP code, when it has none); other errors as they
/// describe themselves.
pub fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        kube::Error::Api(status) if !status.reason.is_empty() => status.reason.clone(),
        kube::Error::Api(status) => format!("HTTP {}", status.code),
        other => other.to_string(),
    }
}

/// Now, to the second: the apiserver stores condition times in seconds, and
/// a finer time would make every status look changed.
fn now() -> Time {
    let seconds = k8s_openapi::jiff::Timestamp::now().as_second();
    Time(
        k8s_openapi::jiff::Timestamp::from_second(seconds)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_applied_note_is_cut_after_a_whole_name_with_an_ellipsis_within_the_limit() {
        let names: Vec<String> = (0..200).map(|i| format!("Deployment/shop-service-{i:03}")).collect();
        let note = format!("applied {}", names.join(", "));
        assert!(note.len() > MAX_EVENT_NOTE);
        let short = shorten_note(note.clone(), MAX_EVENT_NOTE);
        assert!(short.len() <= MAX_EVENT_NOTE, "{} bytes", short.len());
        let kept = short.strip_suffix(" …").expect("an ellipsis");
        assert!(note.starts_with(kept));
        // It ends with a complete name, and the next one starts after it.
        let last = kept.rsplit(", ").next().unwrap();
        assert!(names.iter().any(|name| name == last), "cut mid-word: {last:?}");
        assert!(note[kept.len()..].starts_with(", "), "{:?}", &note[kept.len()..][..10]);
        // Nearly all the room is used.
        assert!(short.len() > MAX_EVENT_NOTE - 40, "{} bytes", short.len());
    }

    #[test]
    fn a_note_that_fits_is_unchanged_and_multibyte_text_is_cut_at_a_character() {
        assert_eq!(shorten_note("applied ConfigMap/shop".into(), MAX_EVENT_NOTE), "applied ConfigMap/shop");
        let exact = "x".repeat(MAX_EVENT_NOTE);
        assert_eq!(shorten_note(exact.clone(), MAX_EVENT_NOTE), exact);
        // One word of two-byte characters, no space to cut at.
        let word = "é".repeat(MAX_EVENT_NOTE);
        let short = shorten_note(word, MAX_EVENT_NOTE);
        assert!(short.len() <= MAX_EVENT_NOTE && short.ends_with(" …"));
        assert!(short.trim_end_matches(" …").chars().all(|c| c == 'é'));
        // Words of multibyte text.
        let words = "größe ".repeat(400);
        let short = shorten_note(words, 100);
        assert!(short.len() <= 100);
        assert!(short.trim_end_matches(" …").split(' ').all(|w| w == "größe"), "{short}");
    }
}
