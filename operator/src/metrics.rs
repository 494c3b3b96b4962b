//! The operator's Prometheus metrics, served on `/metrics`: reconciles by
//! kind and result, their durations, errors by kind of error, and the
//! requests sent to the Kubernetes API by HTTP method (so that "a no-op
//! reconcile writes nothing" can be checked from outside).

use std::time::Duration;

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
    registry: commerce_platform::admin::Metrics,
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
        Metrics { reconciles, errors, durations, api_requests, registry }
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
}
