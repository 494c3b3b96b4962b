//! The StorageClasses that managed infrastructure names. A managed Kafka,
//! Postgres or Redis keeps its data on a PersistentVolumeClaim of
//! `<kind>.managed.storage.storageClassName`; if the cluster has no such
//! class, the claim stays Pending and the StatefulSet never becomes ready,
//! and only the claim's Events would say why. So while a managed component
//! is not ready, the reconcile looks its class up, and a missing one shows
//! in the stack's `Degraded` condition, named, with the field to change.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Client;
use kube::api::Api;
use tracing::warn;

use super::api_message;
use crate::build::names::{self, Component};
use crate::validate::{Infra, ValidStack};

/// One line per StorageClass that a managed component which is not ready
/// names and the cluster does not have. A class that cannot be looked up
/// (no permission, the apiserver unreachable) is logged, not reported: the
/// check only explains a wait, it never holds anything back.
pub async fn missing(client: &Client, valid: &ValidStack<'_>, stateful_sets: &[StatefulSet]) -> Vec<String> {
    let managed = [
        (Component::Kafka, "Kafka", "kafka", managed_class(&valid.kafka)),
        (Component::Postgres, "Postgres", "postgres", managed_class(&valid.postgres)),
        (Component::Redis, "Redis", "redis", managed_class(&valid.redis)),
    ];
    // Class -> the components that name it, in catalog order.
    let mut wanted: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for (component, what, field, class) in managed {
        if let Some(class) = class
            && !is_ready(valid, stateful_sets, component)
        {
            wanted.entry(class).or_default().push((what, field));
        }
    }
    let api: Api<StorageClass> = Api::all(client.clone());
    let mut lines = Vec::new();
    for (class, users) in wanted {
        match api.get_metadata_opt(class).await {
            Ok(Some(_)) => {}
            Ok(None) => lines.push(missing_line(class, &users)),
            Err(error) => {
                warn!(storage_class = class, error = %api_message(&error), "cannot look up a StorageClass");
            }
        }
    }
    lines
}

/// `StorageClass fast does not exist: ...`, naming the fields that use it.
fn missing_line(class: &str, users: &[(&str, &str)]) -> String {
    let what: Vec<&str> = users.iter().map(|(what, _)| *what).collect();
    let fields: Vec<String> =
        users.iter().map(|(_, field)| format!("{field}.managed.storage.storageClassName")).collect();
    format!(
        "StorageClass {class} does not exist: the volume of the managed {} cannot be provisioned; \
         create the StorageClass, or name an existing one in {}",
        what.join(" and "),
        fields.join(" and ")
    )
}

/// The StorageClass a managed component names, if it is managed and names one.
fn managed_class<'a, E>(infra: &Infra<'a, E>) -> Option<&'a str> {
    match infra {
        Infra::Managed(managed) => managed.storage.storage_class_name.as_deref(),
        Infra::External(_) => None,
    }
}

/// Whether the component's StatefulSet has a ready pod (then its claim is
/// bound, whatever became of the class since).
fn is_ready(valid: &ValidStack<'_>, stateful_sets: &[StatefulSet], component: Component) -> bool {
    let name = names::component_name(valid, component);
    stateful_sets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name.as_str()))
        .and_then(|s| s.status.as_ref()?.ready_replicas)
        .unwrap_or(0)
        > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_class_is_named_with_every_field_that_uses_it() {
        let line = missing_line("fast-ssd", &[("Kafka", "kafka"), ("Postgres", "postgres")]);
        assert_eq!(
            line,
            "StorageClass fast-ssd does not exist: the volume of the managed Kafka and Postgres cannot be \
             provisioned; create the StorageClass, or name an existing one in \
             kafka.managed.storage.storageClassName and postgres.managed.storage.storageClassName"
        );
    }
}
