//! The operator's hold on the Secrets a stack with `deletionPolicy: Delete`
//! logs in to its infrastructure with: a finalizer of its own on each
//! Secret the spec names for an external Postgres (`adminSecret`,
//! `caSecret`) and an external Kafka (`tls.caSecret`, `sasl.secretName`),
//! so that they outlive the stack's cleanup.
//!
//! Why: on `kubectl delete namespace`, the namespace controller deletes
//! every object at once. The stack waits on its finalizer, but the Secrets,
//! which the cleanup needs to log in and drop the databases, delete the
//! topics and the stack's Kafka user, went at once, and the cleanup could
//! only give up. Kubernetes' own answer to
//! "this object is still in use" is a finalizer on it (as
//! `kubernetes.io/pvc-protection` keeps a PVC while a pod uses it); copying
//! the credentials somewhere the operator owns instead would keep a second
//! copy of a superuser password alive for the stack's whole life.
//!
//! Each stack holds under its own finalizer, [`hold_finalizer`], so that
//! stacks sharing one Secret never release each other's hold and no count
//! is kept anywhere. The rules:
//! - a stack holds only while it carries its own cleanup finalizer
//!   ([`super::FINALIZER`]); before that finalizer is removed (the policy
//!   became `Retain`, or the stack's cleanup ended), every hold of the stack
//!   is released, so a stack that is gone holds nothing;
//! - the hold is taken before anything is created with the Secret's
//!   credentials (a database, a topic, a Kafka user), so whatever the stack
//!   creates can be cleaned up;
//! - every reconcile of a stack under `Delete` releases its holds on any
//!   other Secret (a reference changed, or the infrastructure became
//!   managed). The hold is a finalizer and a label ([`hold_label`]) set by
//!   one patch, so the held Secrets are found by a label selector: a list
//!   cannot miss a Secret the way a remembered name could after a crash
//!   between taking a hold and recording it, and the operator never lists
//!   the namespace's other Secrets. (A hold taken by an operator before the label existed
//!   gets it at the next reconcile.)
//!
//! A Secret that someone deletes while it is held stays, terminating, until
//! the stack no longer needs it. A hold left behind by a person who removed
//! the stack's own finalizer by hand must be removed by hand as well.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::Error;

/// Prefix of the finalizers by which stacks hold admin Secrets; the name
/// after the `/` is the stack's.
pub const HOLD_PREFIX: &str = "admin-secret.commerce-stack.dev/";

/// The finalizer by which the stack `stack` holds an admin Secret. A stack's
/// name is a DNS label of at most 42 characters, so this is a valid
/// qualified name (prefix a DNS subdomain, name at most 63 characters).
pub fn hold_finalizer(stack: &str) -> String {
    format!("{HOLD_PREFIX}{stack}")
}

/// The label that marks a Secret held by the stack `stack` (its value is
/// `held`): the same qualified name as [`hold_finalizer`], whose name part
/// (the stack's name, a DNS label of at most 42 characters) fits a label's 63.
pub fn hold_label(stack: &str) -> String {
    hold_finalizer(stack)
}

/// Value of [`hold_label`].
const HELD: &str = "held";

/// Makes sure `secret` carries the hold of `stack`, adding it if missing,
/// and returns the Secret as stored afterwards. `field` is where the spec
/// names the Secret, for the error.
///
/// A Secret already being deleted cannot take a new finalizer (the
/// apiserver refuses), and credentials that are about to disappear could
/// not clean up what they create: that is an error, and nothing is created
/// with them.
pub async fn hold(
    client: &Client,
    namespace: &str,
    secret: Secret,
    stack: &str,
    field: &str,
) -> Result<Secret, Error> {
    let finalizer = hold_finalizer(stack);
    let label = hold_label(stack);
    let labelled = secret.labels().get(&label).map(String::as_str) == Some(HELD);
    if secret.finalizers().contains(&finalizer) && labelled {
        return Ok(secret);
    }
    let name = secret.name_any();
    if secret.metadata.deletion_timestamp.is_some() {
        return Err(Error::SecretBeingDeleted { name, field: field.to_owned() });
    }
    let mut finalizers = secret.finalizers().to_vec();
    if !finalizers.contains(&finalizer) {
        finalizers.push(finalizer);
    }
    let labels = json!({ label: HELD });
    patch_hold(client, namespace, &name, finalizers, labels, secret.resource_version())
        .await
        .map_err(|source| Error::PatchFinalizers { object: format!("Secret/{name}"), source })
}

/// Removes the hold of `stack` from every Secret of `namespace` but those
/// in `keep`; returns the names of the Secrets it released. A Secret that
/// is gone meanwhile needs no release.
pub async fn release(
    client: &Client,
    namespace: &str,
    stack: &str,
    keep: &[&str],
) -> Result<Vec<String>, Error> {
    let finalizer = hold_finalizer(stack);
    let label = hold_label(stack);
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let held = ListParams::default().labels(&format!("{label}={HELD}"));
    let list = api.list_metadata(&held).await.map_err(|source| Error::ListObjects {
        kind: "Secret".into(),
        namespace: namespace.to_owned(),
        source,
    })?;
    let mut released = Vec::new();
    for secret in list.items {
        let name = secret.name_any();
        if keep.contains(&name.as_str()) {
            continue;
        }
        let finalizers: Vec<String> =
            secret.finalizers().iter().filter(|f| **f != finalizer).cloned().collect();
        let labels = json!({ label.as_str(): null });
        match patch_hold(client, namespace, &name, finalizers, labels, secret.resource_version()).await {
            Ok(_) => released.push(name),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => return Err(Error::PatchFinalizers { object: format!("Secret/{name}"), source }),
        }
    }
    Ok(released)
}

/// Sets a Secret's finalizers and merges `labels` (a null removes one) with
/// a merge patch that carries the resourceVersion it was computed from: a
/// concurrent change (another stack's hold, another controller's finalizer)
/// fails it with a conflict, retried on the next reconcile, instead of being
/// overwritten.
async fn patch_hold(
    client: &Client,
    namespace: &str,
    name: &str,
    finalizers: Vec<String>,
    labels: serde_json::Value,
    resource_version: Option<String>,
) -> Result<Secret, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let patch = json!({"metadata": {
        "finalizers": finalizers, "labels": labels, "resourceVersion": resource_version,
    }});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await
}
