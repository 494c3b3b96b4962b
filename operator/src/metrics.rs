//! The operator's Prometheus metrics, served on `/metrics`: reconciles by
//! kind and result, their durations, errors by kind of error, the requests
//! sent to the Kubernetes API by HTTP method (so that "a no-op reconcile
//! writes nothing" can be checked from outside), whether this replica leads,
//! and per stack whether it is Ready and how many objects it consists of
//! (read from the watched stacks at scrape time, so a deleted stack's series
//! go with it).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commerce_api::CommerceStack;
use commerce_api::crd::stack::CONDITION_READY;
use kube::ResourceExt as _;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Labels of a reconcile: the resource kind and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `CommerceStack`.
    pub kind: String,
    /// `success` or `error`.
    pub result: String,
}

/// Labels of an error: the resource kind and what failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `CommerceStack`.
    pub kind: String,
    /// [`crate::Error::metric_kind`].
    pub error: String,
}

/// Labels of a duration: the resource kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `CommerceStack`.
    pub kind: String,
}

/// Labels of an API request: its HTTP method (`GET` reads, the rest write).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `GET`, `POST`, `PATCH`, `PUT`, `DELETE`.
    pub method: String,
}

/// Reconcile durations from 10 ms to about 40 s: a reconcile lists ten
/// kinds and may apply dozens of objects.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 13))
}

/// Every metric of the operator, registered in the platform's registry
/// (`commerce_platform::admin::Metrics`, which adds `commerce_build_info`
/// and the `process_*` metrics) that the admin server renders.
#[derive(Debug)]
pub struct Metrics {
    reconciles: Family<ReconcileLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    durations: Family<KindLabels, Histogram, fn() -> Histogram>,
    api_requests: Family<RequestLabels, Counter>,
    leader: Gauge,
    /// Objects each stack's last reconcile built, by (namespace, name).
    objects: ObjectCounts,
    registry: commerce_platform::admin::Metrics,
}

/// Objects per stack, shared with the collector that exports them.
type ObjectCounts = Arc<Mutex<BTreeMap<(String, String), usize>>>;

/// Labels of a stack's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StackLabels {
    /// The stack's namespace.
    pub namespace: String,
    /// The stack's name.
    pub stack: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(commerce_platform::admin::Metrics::new("operator"))
    }
}

impl Metrics {
    /// The operator's families, registered in `registry`.
    pub fn new(registry: commerce_platform::admin::Metrics) -> Self {
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let durations = Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let api_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "commerce_operator_reconciles",
            "Reconciles by resource kind and result",
            reconciles.clone(),
        );
        registry.register(
            "commerce_operator_reconcile_errors",
            "Failed reconciles by resource kind and error",
            errors.clone(),
        );
        registry.register(
            "commerce_operator_reconcile_duration_seconds",
            "Time one reconcile took",
            durations.clone(),
        );
        registry.register(
            "commerce_operator_api_requests",
            "Requests sent to the Kubernetes API by HTTP method (watches included)",
            api_requests.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "commerce_operator_leader",
            "1 while this replica holds the Lease and reconciles (or runs without leader election), else 0",
            leader.clone(),
        );
        Metrics {
            reconciles,
            errors,
            durations,
            api_requests,
            leader,
            objects: ObjectCounts::default(),
            registry,
        }
    }

    /// Says whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Records how many objects the stack `namespace/name` consists of.
    pub fn set_managed_objects(&self, namespace: &str, name: &str, count: usize) {
        let mut objects = self.objects.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        objects.insert((namespace.to_owned(), name.to_owned()), count);
    }

    /// Exports, at each scrape, `commerce_operator_stack_ready` and
    /// `commerce_operator_managed_objects` for every stack in `stores` (one
    /// per watched scope).
    pub fn watch_stacks(&self, stores: Vec<Store<DeserializeGuard<CommerceStack>>>) {
        self.registry.register_collector(Box::new(StacksCollector { stores, objects: self.objects.clone() }));
    }

    /// Records one reconcile of `kind` that took `elapsed`; `error` is the
    /// [`crate::Error::metric_kind`] of a failure.
    pub fn observe(&self, kind: &str, elapsed: Duration, error: Option<&str>) {
        let result = if error.is_some() { "error" } else { "success" };
        self.reconciles.get_or_create(&ReconcileLabels { kind: kind.into(), result: result.into() }).inc();
        self.durations.get_or_create(&KindLabels { kind: kind.into() }).observe(elapsed.as_secs_f64());
        if let Some(error) = error {
            self.errors.get_or_create(&ErrorLabels { kind: kind.into(), error: error.into() }).inc();
        }
    }

    /// Counts one request to the Kubernetes API.
    pub fn observe_request(&self, method: &str) {
        self.api_requests.get_or_create(&RequestLabels { method: method.into() }).inc();
    }

    /// The registry the admin server renders.
    pub fn registry(&self) -> &commerce_platform::admin::Metrics {
        &self.registry
    }

    /// The metrics in Prometheus' text format.
    pub fn encode(&self) -> String {
        // Writing into a String cannot fail.
        self.registry.encode().unwrap_or_default()
    }
}

/// The per-stack series, computed from the controllers' stores when
/// scraped.
#[derive(Debug)]
struct StacksCollector {
    stores: Vec<Store<DeserializeGuard<CommerceStack>>>,
    objects: ObjectCounts,
}

impl Collector for StacksCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut ready = Vec::new();
        for store in &self.stores {
            for guard in store.state() {
                // A stack that does not deserialize has no status to read.
                let Ok(stack) = &guard.0 else { continue };
                let labels =
                    StackLabels { namespace: stack.namespace().unwrap_or_default(), stack: stack.name_any() };
                let is_ready = stack
                    .status
                    .as_ref()
                    .and_then(|status| status.conditions.iter().find(|c| c.type_ == CONDITION_READY))
                    .is_some_and(|condition| condition.status == "True");
                ready.push((labels, i64::from(is_ready)));
            }
        }
        ready.sort_by(|a, b| (&a.0.namespace, &a.0.stack).cmp(&(&b.0.namespace, &b.0.stack)));
        let counts = {
            let mut objects = self.objects.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // Stacks that are gone are forgotten here, so the map stays as
            // large as the stores.
            objects.retain(|(namespace, stack), _| {
                ready.iter().any(|(labels, _)| labels.namespace == *namespace && labels.stack == *stack)
            });
            objects.clone()
        };
        let mut family = encoder.encode_descriptor(
            "commerce_operator_stack_ready",
            "1 while the stack's Ready condition is True, else 0.",
            None,
            MetricType::Gauge,
        )?;
        for (labels, value) in &ready {
            ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "commerce_operator_managed_objects",
            "Objects the stack's last reconcile built (applied and kept).",
            None,
            MetricType::Gauge,
        )?;
        for ((namespace, stack), count) in &counts {
            let labels = StackLabels { namespace: namespace.clone(), stack: stack.clone() };
            ConstGauge::new(i64::try_from(*count).unwrap_or(i64::MAX))
                .encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_errors_and_durations_are_exported_by_kind() {
        let metrics = Metrics::default();
        metrics.observe("CommerceStack", Duration::from_millis(30), None);
        metrics.observe("CommerceStack", Duration::from_millis(30), Some("apply"));
        let text = metrics.encode();
        assert!(
            text.contains(r#"commerce_operator_reconciles_total{kind="CommerceStack",result="success"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"commerce_operator_reconcile_errors_total{kind="CommerceStack",error="apply"} 1"#
            )
        );
        assert!(
            text.contains(r#"commerce_operator_reconcile_duration_seconds_count{kind="CommerceStack"} 2"#)
        );
    }

    #[test]
    fn api_requests_are_exported_by_method() {
        let metrics = Metrics::default();
        metrics.observe_request("GET");
        metrics.observe_request("PATCH");
        metrics.observe_request("PATCH");
        let text = metrics.encode();
        assert!(text.contains(r#"commerce_operator_api_requests_total{method="GET"} 1"#), "{text}");
        assert!(text.contains(r#"commerce_operator_api_requests_total{method="PATCH"} 2"#), "{text}");
    }

    #[test]
    fn each_stack_in_the_stores_has_its_readiness_and_object_count_and_a_deleted_one_has_none() {
        use kube::runtime::reflector::store;
        use kube::runtime::watcher::Event;
        let metrics = Metrics::default();
        let (stacks, mut writer) = store::<DeserializeGuard<CommerceStack>>();
        metrics.watch_stacks(vec![stacks]);
        let stack = |name: &str, ready: &str| -> DeserializeGuard<CommerceStack> {
            let value = serde_json::json!({
                "apiVersion": "commerce-stack.dev/v1alpha1", "kind": "CommerceStack",
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"version": "0.1.0", "kafka": {"managed": {}}, "postgres": {"managed": {}}, "redis": {"managed": {}}},
                "status": {"conditions": [{
                    "type": "Ready", "status": ready, "reason": "R", "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }]},
            });
            DeserializeGuard(Ok(serde_json::from_value(value).unwrap()))
        };
        writer.apply_watcher_event(&Event::Apply(stack("a", "True")));
        writer.apply_watcher_event(&Event::Apply(stack("b", "False")));
        metrics.set_managed_objects("shop", "a", 72);
        metrics.set_managed_objects("shop", "b", 40);
        metrics.set_leader(true);
        let text = metrics.encode();
        assert!(text.contains(r#"commerce_operator_stack_ready{namespace="shop",stack="a"} 1"#), "{text}");
        assert!(text.contains(r#"commerce_operator_stack_ready{namespace="shop",stack="b"} 0"#), "{text}");
        assert!(
            text.contains(r#"commerce_operator_managed_objects{namespace="shop",stack="a"} 72"#),
            "{text}"
        );
        assert!(text.contains("commerce_operator_leader 1"), "{text}");

        writer.apply_watcher_event(&Event::Delete(stack("b", "False")));
        let text = metrics.encode();
        assert!(!text.contains(r#"stack="b""#), "{text}");
        assert!(
            text.contains(r#"commerce_operator_managed_objects{namespace="shop",stack="a"} 72"#),
            "{text}"
        );
    }
}
