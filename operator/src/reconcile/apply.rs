//! `apply` and `prune`: bring the cluster to what `build` produced.
//!
//! The stack's current objects are listed once per kind by the stack label;
//! that one read serves the generated Secret values, the no-op check, the
//! prune and the status. Desired objects that differ (see [`super::diff`])
//! are sent with server-side apply under one field manager, forced, so that
//! the operator wins over hand edits of the fields it owns.
//!
//! The operator writes and deletes only what it created: objects whose
//! controller ownerReference names this very stack (by uid). An object of a
//! desired name that exists without one ([`Claim::Foreign`]), whether made
//! by hand, by another tool or from `render` output, is neither applied (a
//! forced apply would take it over, and the ownerReference would have it
//! deleted with the stack) nor pruned; it is reported instead. Each object
//! succeeds or fails on its own ([`ObjectProblem`]), so that one refused
//! object does not hold back the rest.

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::core::{ApiResource, DynamicObject, ObjectMeta};

use super::diff::is_subset;
use crate::Error;
use crate::build::monitoring::{self, PodMonitorApi};
use crate::build::{DesiredObject, names, owned_kinds};

/// Why one object is not as `build` wants it: a desired object that was not
/// applied, or an undesired one that was not deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectProblem {
    /// The object's kind, e.g. `Secret`.
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// What happened to it.
    pub failure: Failure,
}

/// What went wrong with one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// An object of the name exists that this stack did not create; the
    /// operator neither changes nor deletes it.
    NotOurs,
    /// Applying it failed; the apiserver's words (see [`super::api_message`]).
    Apply(String),
    /// Deleting it (no longer desired) failed; the apiserver's words.
    Delete(String),
}

impl ObjectProblem {
    fn new(kind: &str, name: &str, failure: Failure) -> Self {
        ObjectProblem { kind: kind.to_owned(), name: name.to_owned(), failure }
    }

    /// Whether the object is missing or not as desired (rather than an
    /// undesired object that is still there).
    pub fn is_unapplied(&self) -> bool {
        !matches!(self.failure, Failure::Delete(_))
    }

    /// `Kind/name`.
    pub fn object(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

/// One line: `Kind/name: what the apiserver said`.
impl fmt::Display for ObjectProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let object = self.object();
        match &self.failure {
            Failure::NotOurs => write!(f, "{object} exists and is not managed by this stack"),
            Failure::Apply(reason) => write!(f, "{object}: {reason}"),
            Failure::Delete(reason) => write!(f, "{object}: not deleted: {reason}"),
        }
    }
}

/// The stack's objects as they are in the cluster.
#[derive(Debug, Clone, Default)]
pub struct Current {
    /// Every owned object found, with its kind.
    pub objects: Vec<(ApiResource, DynamicObject)>,
}

impl Current {
    /// The object of `kind` named `name`, if it exists.
    pub fn get(&self, kind: &str, name: &str) -> Option<&DynamicObject> {
        self.objects
            .iter()
            .find(|(resource, object)| resource.kind == kind && object.metadata.name.as_deref() == Some(name))
            .map(|(_, object)| object)
    }

    /// The objects of one kind, typed.
    pub fn typed<K: serde::de::DeserializeOwned>(&self, kind: &str) -> Vec<K> {
        self.objects
            .iter()
            .filter(|(resource, _)| resource.kind == kind)
            .filter_map(|(_, object)| serde_json::to_value(object).ok())
            .filter_map(|value| serde_json::from_value(value).ok())
            .collect()
    }

    /// The stack's Secrets, where generated values are kept.
    pub fn secrets(&self) -> Vec<Secret> {
        self.typed("Secret")
    }
}

/// Lists every object of `stack_name` in `namespace`, kind by kind.
/// The PodMonitors among them where the cluster serves the kind.
pub async fn list_owned(
    client: &Client,
    namespace: &str,
    stack_name: &str,
    pod_monitors: PodMonitorApi,
) -> Result<Current, Error> {
    let params = ListParams::default().labels(&names::owned_selector(stack_name));
    let mut current = Current::default();
    let mut kinds = owned_kinds();
    if pod_monitors == PodMonitorApi::Served {
        kinds.push(monitoring::pod_monitor_resource());
    }
    for resource in kinds {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        let list = api.list(&params).await.map_err(|source| Error::ListObjects {
            kind: resource.kind.clone(),
            namespace: namespace.to_owned(),
            source,
        })?;
        current.objects.extend(list.items.into_iter().map(|object| (resource.clone(), object)));
    }
    Ok(current)
}

/// Whether `desired` must be sent: it is missing, was built differently
/// last time, or drifted.
pub fn needs_apply(desired: &DesiredObject, current: Option<&DynamicObject>) -> bool {
    let Some(current) = current else { return true };
    let annotation = |object: &DynamicObject| {
        object.metadata.annotations.as_ref().and_then(|a| a.get(names::APPLIED_HASH_ANNOTATION)).cloned()
    };
    if annotation(&desired.object) != annotation(current) {
        return true;
    }
    let (Ok(want), Ok(have)) = (serde_json::to_value(&desired.object), serde_json::to_value(current)) else {
        return true;
    };
    // Only what `build` sets counts; apiVersion and kind are absent from
    // listed items.
    !(is_subset(&want["metadata"], &have["metadata"]) && is_subset(&strip_meta(want), &strip_meta(have)))
}

fn strip_meta(mut value: serde_json::Value) -> serde_json::Value {
    if let Some(map) = value.as_object_mut() {
        for key in ["metadata", "apiVersion", "kind"] {
            map.remove(key);
        }
    }
    value
}

/// Whether the operator may write a desired object, as far as the cluster
/// says.
#[derive(Debug, Clone, Copy)]
pub enum Claim<'a> {
    /// Listed with the stack's labels and created by this stack: applied
    /// only if it differs.
    Listed(&'a DynamicObject),
    /// Not listed: absent (apply creates it), or created by this stack and
    /// stripped of its labels (apply restores them).
    Unlisted,
    /// Exists and was not created by this stack: left alone.
    Foreign,
}

/// Whether this stack (`stack_uid`) created the object: its controller
/// ownerReference names the stack. Labels can be copied (`render` output
/// carries them); the uid of the stack cannot come about by accident.
pub fn is_owned_by(metadata: &ObjectMeta, stack_uid: &str) -> bool {
    !stack_uid.is_empty()
        && metadata
            .owner_references
            .iter()
            .flatten()
            .any(|owner| owner.uid == stack_uid && owner.controller == Some(true))
}

/// Finds out whether `desired` may be written. An object the list did not
/// return is looked up by name: the list selects by the stack's labels,
/// which an object made by someone else need not carry.
pub async fn claim<'a>(
    client: &Client,
    namespace: &str,
    desired: &DesiredObject,
    current: &'a Current,
    stack_uid: &str,
) -> Result<Claim<'a>, ObjectProblem> {
    if let Some(listed) = current.get(&desired.resource.kind, desired.name()) {
        return Ok(if is_owned_by(&listed.metadata, stack_uid) {
            Claim::Listed(listed)
        } else {
            Claim::Foreign
        });
    }
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &desired.resource);
    match api.get_metadata_opt(desired.name()).await {
        Ok(None) => Ok(Claim::Unlisted),
        Ok(Some(found)) if is_owned_by(&found.metadata, stack_uid) => Ok(Claim::Unlisted),
        Ok(Some(_)) => Ok(Claim::Foreign),
        Err(error) => Err(ObjectProblem::new(
            &desired.resource.kind,
            desired.name(),
            Failure::Apply(format!("looking it up: {}", super::api_message(&error))),
        )),
    }
}

/// The ConfigMaps and Secrets a workload's pods would read (volumes,
/// projected volumes, `envFrom`, `env[].valueFrom`), as `(kind, name)`;
/// empty for objects without a pod template.
pub fn pod_references(desired: &DesiredObject) -> BTreeSet<(&'static str, String)> {
    let mut found = BTreeSet::new();
    let pod = &desired.object.data["spec"]["template"]["spec"];
    let mut add = |kind: &'static str, name: &serde_json::Value| {
        if let Some(name) = name.as_str() {
            found.insert((kind, name.to_owned()));
        }
    };
    let items = |value: &serde_json::Value| value.as_array().cloned().unwrap_or_default();
    for volume in items(&pod["volumes"]) {
        add("ConfigMap", &volume["configMap"]["name"]);
        add("Secret", &volume["secret"]["secretName"]);
        for source in items(&volume["projected"]["sources"]) {
            add("ConfigMap", &source["configMap"]["name"]);
            add("Secret", &source["secret"]["name"]);
        }
    }
    let containers = items(&pod["containers"]).into_iter().chain(items(&pod["initContainers"]));
    for container in containers {
        for source in items(&container["envFrom"]) {
            add("ConfigMap", &source["configMapRef"]["name"]);
            add("Secret", &source["secretRef"]["name"]);
        }
        for var in items(&container["env"]) {
            add("ConfigMap", &var["valueFrom"]["configMapKeyRef"]["name"]);
            add("Secret", &var["valueFrom"]["secretKeyRef"]["name"]);
        }
    }
    found
}

/// The problem of a workload held back because its pods would read a
/// ConfigMap or Secret that exists and is not this stack's: its pods would
/// run with someone else's configuration or credentials.
pub fn held_back(desired: &DesiredObject, foreign: &(&str, String)) -> ObjectProblem {
    ObjectProblem::new(
        &desired.resource.kind,
        desired.name(),
        Failure::Apply(format!(
            "not applied: its pods would read {}/{}, which is not managed by this stack",
            foreign.0, foreign.1
        )),
    )
}

/// Sends one object with server-side apply.
pub async fn apply(client: &Client, namespace: &str, desired: &DesiredObject) -> Result<(), ObjectProblem> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &desired.resource);
    let params = PatchParams::apply(names::MANAGER).force();
    api.patch(desired.name(), &params, &Patch::Apply(&desired.object)).await.map_err(|error| {
        ObjectProblem::new(&desired.resource.kind, desired.name(), Failure::Apply(super::api_message(&error)))
    })?;
    Ok(())
}

/// The problem of a desired object left alone because an object of its name
/// exists that this stack did not create ([`Claim::Foreign`]).
pub fn refused(desired: &DesiredObject) -> ObjectProblem {
    ObjectProblem::new(&desired.resource.kind, desired.name(), Failure::NotOurs)
}

/// Listed objects that are positively not desired (no desired object has
/// their kind and name, whether or not its apply succeeded) and that this
/// stack controls (by uid): objects of another stack, made by hand or
/// refused as not ours stay.
pub fn prune_candidates<'a>(
    current: &'a Current,
    desired: &[DesiredObject],
    stack_uid: &str,
) -> Vec<(&'a ApiResource, &'a DynamicObject)> {
    let wanted: BTreeSet<(&str, &str)> =
        desired.iter().map(|d| (d.resource.kind.as_str(), d.name())).collect();
    current
        .objects
        .iter()
        .filter(|(resource, object)| {
            let name = object.metadata.name.as_deref().unwrap_or_default();
            !wanted.contains(&(resource.kind.as_str(), name))
        })
        .filter(|(_, object)| object.metadata.deletion_timestamp.is_none())
        .filter(|(_, object)| is_owned_by(&object.metadata, stack_uid))
        .map(|(resource, object)| (resource, object))
        .collect()
}

/// Deletes one listed object no longer desired; its dependents go in the
/// background (a Deployment's ReplicaSets and pods). The delete is bound to
/// the listed object's uid, so that an object created under the same name
/// since the list (by someone else) is not deleted in its place.
pub async fn delete(
    client: &Client,
    namespace: &str,
    resource: &ApiResource,
    object: &DynamicObject,
) -> Result<(), ObjectProblem> {
    let name = object.metadata.name.as_deref().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    let params = DeleteParams::background()
        .preconditions(Preconditions { uid: object.metadata.uid.clone(), resource_version: None });
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        // Gone already, or replaced by another object (a 409 is the failed
        // uid precondition): the listed object is gone, as prune wanted.
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(error) => {
            Err(ObjectProblem::new(&resource.kind, name, Failure::Delete(super::api_message(&error))))
        }
    }
}
