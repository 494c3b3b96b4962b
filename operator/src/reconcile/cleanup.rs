//! The finalizer's work: the cleanup of a deleted stack's external state
//! under `deletionPolicy: Delete` (databases and roles on an external
//! Postgres, topics and the stack's own user with its ACLs on an external
//! Kafka).
//!
//! Each kind is cleaned on its own and at the same time: the topics never
//! wait for Postgres, nor the databases for Kafka. Each kind's outcome is
//! written to the status (`DatabasesCleanedUp`, `TopicsCleanedUp`) before
//! anything is let go, and a kind that is done is not worked on again, so a
//! retry needs only what the unfinished kind needs. A failed kind is retried
//! with backoff for [`CLEANUP_GRACE`] after the deletion; then the finalizer
//! goes anyway, with a Warning Event that names what was left. Events are
//! best effort: in a namespace being deleted none can be created, and the
//! cleanup goes on regardless.
//!
//! What is dropped is everything the stack may ever have created, not only
//! what its spec enables now: [`plan::databases_to_drop`] and
//! [`plan::topics`] (every topic of the catalog) say why the sets can
//! neither miss anything nor reach another stack's state.
//!
//! Letting go releases the stack's hold on the admin Secret
//! ([`admin_secret`]) first, then removes the stack's finalizer, so that no
//! hold outlives the stack.

use std::sync::Arc;

use commerce_api::CommerceStack;
use commerce_api::crd::stack::{CONDITION_DATABASES_CLEANED_UP, CONDITION_TOPICS_CLEANED_UP, DeletionPolicy};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tracing::info;

use super::observe::{self, Infra, LoginSecret, LoginSecrets};
use super::status::{self, CleanupStep};
use super::{CLEANUP_GRACE, Context, admin_secret, error_chain, now, publish, set_finalizer, write_status};
use crate::Error;
use crate::build::endpoints::{self, Endpoints};
use crate::build::names::ExternalNames;
use crate::build::secrets::SecretValues;
use crate::external::plan;
use crate::validate::{ValidStack, validate};

/// Cleans up the external state of a deleted stack, then lets it go; an
/// error (within the grace period) has it retried with backoff.
pub(super) async fn finalize(ctx: &Context, stack: &CommerceStack, namespace: &str) -> Result<(), Error> {
    let reference = stack.object_ref(&());
    if stack.spec.paused {
        let note = "the stack was paused, so the operator changed nothing: its topics and databases remain";
        publish(ctx, &reference, EventType::Warning, "CleanupAbandoned", note.into()).await;
        return let_go(ctx, stack, namespace, None).await;
    }
    if stack.spec.deletion_policy == DeletionPolicy::Retain {
        // Set to Retain after the finalizer was added (and before a
        // reconcile removed it): the spec says keep the data.
        let note = "deletionPolicy is Retain: the topics and databases were kept";
        publish(ctx, &reference, EventType::Normal, "Retained", note.into()).await;
        return let_go(ctx, stack, namespace, None).await;
    }

    let (databases, topics) = match validate(stack, namespace) {
        Ok(valid) => {
            futures::join!(
                async {
                    match CleanupStep::finished_before(stack, CONDITION_DATABASES_CLEANED_UP) {
                        Some(done) => Ok(done),
                        None => drop_databases(ctx, &valid).await,
                    }
                },
                async {
                    match CleanupStep::finished_before(stack, CONDITION_TOPICS_CLEANED_UP) {
                        Some(done) => Ok(done),
                        None => delete_topics(ctx, &valid).await,
                    }
                },
            )
        }
        Err(error) => {
            // Neither kind can be cleaned up; one cause says why for both.
            let cause = Arc::new(error);
            let left = |what: &str| Left { what: what.to_owned(), cause: cause.clone() };
            (Err(left("its databases not dropped")), Err(left("its topics not deleted")))
        }
    };
    let steps = [&databases, &topics].map(|step| step.as_ref().map_or_else(Left::step, Clone::clone));
    let summary = format!("{}; {}", steps[0].message(), steps[1].message());

    let failures: Vec<&Left> =
        [&databases, &topics].into_iter().filter_map(|step| step.as_ref().err()).collect();
    let Some(first) = failures.first() else {
        // Recorded before the hold on the admin Secret goes: should removing
        // the finalizer fail, the retry finds the databases done and does
        // not need the Secret any more.
        let written =
            write_status(ctx, stack, status::cleaning_up(stack, &steps[0], &steps[1], now())).await?;
        info!(stack = %stack.name_any(), %summary, "cleaned up");
        publish(ctx, &reference, EventType::Normal, "CleanedUp", summary).await;
        return let_go(ctx, stack, namespace, written).await;
    };

    let deleted = stack.metadata.deletion_timestamp.as_ref().map(|t| t.0).unwrap_or(now().0);
    let waited = now().0.duration_since(deleted).unsigned_abs();
    if waited < CLEANUP_GRACE {
        let written =
            write_status(ctx, stack, status::cleaning_up(stack, &steps[0], &steps[1], now())).await?;
        if written.is_some() {
            publish(ctx, &reference, EventType::Warning, "CleanupFailed", summary).await;
        }
        return Err(Error::CleanUp { left: first.what.clone(), source: first.cause.clone() });
    }
    let left: Vec<String> = failures.iter().map(|failure| failure.step().message().to_owned()).collect();
    let note = format!("gave up cleaning up after {}s; left behind: {}", waited.as_secs(), left.join("; "));
    publish(ctx, &reference, EventType::Warning, "CleanupAbandoned", note).await;
    let_go(ctx, stack, namespace, None).await
}

/// A kind of external state the cleanup could not clean up this time.
#[derive(Debug)]
struct Left {
    /// What is left, and where.
    what: String,
    /// Why (shared when one cause stops both kinds).
    cause: Arc<Error>,
}

impl Left {
    fn new(what: String, cause: Error) -> Self {
        Self { what, cause: Arc::new(cause) }
    }

    /// The step as the status records it: what is left, and why.
    fn step(&self) -> CleanupStep {
        CleanupStep::Failed(format!("{}: {}", self.what, error_chain(&self.cause)))
    }
}

/// Releases the stack's holds on admin Secrets, then removes its finalizer
/// (with `resource_version`, the stack's after a status write, if one was
/// made).
async fn let_go(
    ctx: &Context,
    stack: &CommerceStack,
    namespace: &str,
    resource_version: Option<String>,
) -> Result<(), Error> {
    let released = admin_secret::release(&ctx.client, namespace, &stack.name_any(), &[]).await?;
    if !released.is_empty() {
        info!(stack = %stack.name_any(), secrets = ?released, "released the hold on the admin Secret");
    }
    set_finalizer(ctx, stack, false, resource_version).await
}

/// Drops the databases and roles of every service of the catalog on the
/// external Postgres (managed Postgres goes with its volume).
async fn drop_databases(ctx: &Context, valid: &ValidStack<'_>) -> Result<CleanupStep, Left> {
    if valid.postgres.is_managed() {
        return Ok(CleanupStep::NotNeeded("Postgres is managed: the databases go with its volume".into()));
    }
    let names = plan::databases_to_drop(valid).join(", ");
    let endpoints = endpoints::endpoints(valid);
    let dropped = async {
        let secrets = login_secrets(ctx, valid, &endpoints, Infra::Postgres).await?;
        // Passwords do not matter for dropping.
        let server = secrets.postgres(valid, &SecretValues::placeholders(), &endpoints)?;
        ctx.external.drop_databases(&server, &plan::databases_to_drop(valid)).await
    }
    .await;
    let at = format!("{}:{}", endpoints.postgres.host, endpoints.postgres.port);
    match dropped {
        Ok(()) => Ok(CleanupStep::Done(format!("dropped databases and roles {names} at {at}"))),
        Err(error) => Err(Left::new(format!("databases and roles {names} at {at} not dropped"), error)),
    }
}

/// Deletes every topic of the catalog under the stack's prefix on the
/// external Kafka (managed Kafka goes with its volume), and the stack's own
/// Kafka user with them.
async fn delete_topics(ctx: &Context, valid: &ValidStack<'_>) -> Result<CleanupStep, Left> {
    if valid.kafka.is_managed() {
        return Ok(CleanupStep::NotNeeded("Kafka is managed: the topics go with its volume".into()));
    }
    let topics = plan::topics(valid);
    let names = format!("{} topics {}*", topics.len(), ExternalNames::of(valid).kafka_name_prefix());
    let endpoints = endpoints::endpoints(valid);
    let brokers = endpoints.kafka_brokers.clone();
    let left = |error| Left::new(format!("the {names} at {brokers} not deleted"), error);
    let kafka = login_secrets(ctx, valid, &endpoints, Infra::Kafka)
        .await
        .and_then(|secrets| secrets.kafka(&endpoints))
        .map_err(left)?;
    ctx.external.delete_topics(&kafka, &topics).await.map_err(left)?;
    // The stack's own user goes with its topics: nothing is left for it.
    if !valid.has_kafka_user() {
        return Ok(CleanupStep::Done(format!("deleted the {names} at {brokers}")));
    }
    let user = ExternalNames::of(valid).kafka_user().to_owned();
    match ctx.external.delete_kafka_user(&kafka, &user).await {
        Ok(()) => Ok(CleanupStep::Done(format!(
            "deleted the {names} and the Kafka user {user} with its ACLs at {brokers}"
        ))),
        Err(error) => Err(Left::new(
            format!("deleted the {names} at {brokers}; the Kafka user {user} not deleted"),
            error,
        )),
    }
}

/// The Secrets the stack names for logging in to `infra`, read now (the
/// cleanup's own observation: it holds them already).
async fn login_secrets(
    ctx: &Context,
    valid: &ValidStack<'_>,
    endpoints: &Endpoints,
    infra: Infra,
) -> Result<LoginSecrets, Error> {
    let named: Vec<LoginSecret> =
        observe::login_secrets(valid, endpoints).into_iter().filter(|secret| secret.infra == infra).collect();
    LoginSecrets::read(&ctx.client, valid.namespace, &named).await
}
