//! `apply` and `prune`: bring the cluster to what `build` produced.
//!
//! The stack's current objects are listed once per kind by the stack label;
//! that one read serves the generated Secret values, the no-op check, the
//! prune and the status. Desired objects that differ (see [`super::diff`])
//! are sent with server-side apply under one field manager, forced, so that
//! the operator wins over hand edits of the fields it owns. Listed objects
//! that are no longer desired and are owned by this very stack are deleted.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject};

use super::diff::is_subset;
use crate::Error;
use crate::build::{DesiredObject, names, owned_kinds};

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
pub async fn list_owned(client: &Client, namespace: &str, stack_name: &str) -> Result<Current, Error> {
    let params = ListParams::default().labels(&names::owned_selector(stack_name));
    let mut current = Current::default();
    for resource in owned_kinds() {
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

/// Sends one object with server-side apply.
pub async fn apply(client: &Client, namespace: &str, desired: &DesiredObject) -> Result<(), Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &desired.resource);
    let params = PatchParams::apply(names::MANAGER).force();
    api.patch(desired.name(), &params, &Patch::Apply(&desired.object))
        .await
        .map_err(|source| Error::ApplyObject { object: desired.display(), source })?;
    Ok(())
}

/// Listed objects that are not desired any more and that this stack (by
/// uid) controls: objects of another stack, or adopted by hand, stay.
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
        .filter(|(_, object)| {
            object
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|owner| owner.uid == stack_uid && owner.controller == Some(true))
        })
        .map(|(resource, object)| (resource, object))
        .collect()
}

/// Deletes one object no longer desired; its dependents go in the
/// background (a Deployment's ReplicaSets and pods).
pub async fn delete(
    client: &Client,
    namespace: &str,
    resource: &ApiResource,
    name: &str,
) -> Result<(), Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        // Gone already: what prune wanted.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(Error::DeleteObject { object: format!("{}/{name}", resource.kind), source }),
    }
}
