//! How Prometheus finds the services' metrics (`spec.monitoring`): the
//! `prometheus.io/*` annotations on the service pods, or one
//! prometheus-operator PodMonitor for the stack's services.
//!
//! A PodMonitor is made only while the cluster serves the kind
//! ([`PodMonitorApi`], observed by the reconcile): on a cluster without the
//! prometheus-operator's CRDs its apply could only fail, and the pods keep
//! their annotations meanwhile, so that a Prometheus that follows them
//! still scrapes the shop. A PodMonitor rather than a ServiceMonitor: it
//! scrapes each pod where it runs, without a Service (each service has two,
//! a ClusterIP and a headless one, which a ServiceMonitor would have to
//! tell apart).

use std::collections::BTreeMap;

use commerce_api::crd::stack::ScrapeMode;
use commerce_topology::CLUSTER_ADMIN_PORT;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ObjectMeta};
use serde_json::json;

use super::names::{self, Component};
use crate::validate::ValidStack;

/// The group and version of the prometheus-operator's PodMonitor.
pub const MONITORING_GROUP_VERSION: &str = "monitoring.coreos.com/v1";

/// Whether the cluster serves the PodMonitor kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodMonitorApi {
    /// It does: a stack that asks for a PodMonitor gets one.
    Served,
    /// It does not: the pods carry annotations instead. (`render`, which
    /// cannot know, renders what the stack asks for, as if served.)
    Missing,
}

/// The PodMonitor kind, for the dynamic API.
pub fn pod_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PodMonitor"),
        "podmonitors",
    )
}

/// How this stack is scraped on a cluster where the PodMonitor kind is
/// `api`.
pub fn scrape(stack: &ValidStack<'_>, api: PodMonitorApi) -> ScrapeMode {
    match (stack.stack.spec.monitoring.scrape, api) {
        (ScrapeMode::PodMonitor, PodMonitorApi::Served) => ScrapeMode::PodMonitor,
        _ => ScrapeMode::Annotations,
    }
}

/// Whether the stack asks for a PodMonitor the cluster cannot take; the
/// line says so, for the stack's Degraded condition.
pub fn unserved(stack: &ValidStack<'_>, api: PodMonitorApi) -> Option<String> {
    (stack.stack.spec.monitoring.scrape == ScrapeMode::PodMonitor && api == PodMonitorApi::Missing).then(
        || {
            format!(
                "spec.monitoring.scrape is PodMonitor, but the cluster does not serve PodMonitor \
             ({MONITORING_GROUP_VERSION}): install the prometheus-operator's CRDs; \
             meanwhile the pods carry prometheus.io annotations"
            )
        },
    )
}

/// The annotations of a service pod scraped by annotation (the path is
/// Prometheus' default, `/metrics`).
pub fn scrape_annotations() -> [(String, String); 2] {
    [
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        ("prometheus.io/port".to_owned(), CLUSTER_ADMIN_PORT.to_string()),
    ]
}

/// The stack's PodMonitor: every enabled service's pods (not the managed
/// Kafka, Postgres or Redis, which have no `admin` port), `/metrics` on the
/// `admin` port, each target labelled with its service.
pub fn pod_monitor(stack: &ValidStack<'_>) -> DynamicObject {
    let monitoring = &stack.stack.spec.monitoring;
    let mut labels = names::stack_labels(stack);
    // The user's labels first: the stack's own cannot be overridden, or
    // prune would lose the object.
    let mut all: BTreeMap<String, String> = monitoring.labels.clone();
    all.append(&mut labels);
    let services: Vec<&str> = stack.services.iter().map(|(service, _)| service.name()).collect();
    let mut endpoint = json!({
        "port": "admin",
        "path": "/metrics",
        "relabelings": [{
            "sourceLabels": [format!("__meta_kubernetes_pod_label_{}", label_name(names::COMPONENT_LABEL))],
            "targetLabel": "service",
        }],
    });
    if let Some(interval) = &monitoring.interval {
        // Prometheus' durations have no fractions: whole seconds.
        let seconds = std::time::Duration::from(*interval).as_secs().max(1);
        endpoint["interval"] = json!(format!("{seconds}s"));
    }
    // The selector labels every component shares, and the services'
    // components.
    let selector = names::selector_labels(stack, Component::Kafka);
    let mut object = DynamicObject::new(stack.name, &pod_monitor_resource());
    object.metadata = ObjectMeta {
        name: Some(stack.name.to_owned()),
        namespace: Some(stack.namespace.to_owned()),
        labels: Some(all),
        ..ObjectMeta::default()
    };
    object.data = json!({
        "spec": {
            "selector": {
                "matchLabels": {
                    names::NAME_LABEL: selector[names::NAME_LABEL],
                    names::INSTANCE_LABEL: selector[names::INSTANCE_LABEL],
                },
                "matchExpressions": [{
                    "key": names::COMPONENT_LABEL,
                    "operator": "In",
                    "values": services,
                }],
            },
            "podMetricsEndpoints": [endpoint],
        }
    });
    object
}

/// A label's name as Prometheus' Kubernetes discovery spells it in its
/// meta labels: every character that is not a letter, a digit or `_`
/// becomes `_`.
fn label_name(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}
