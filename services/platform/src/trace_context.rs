//! W3C Trace Context (`traceparent` and `tracestate`) carried across HTTP,
//! gRPC and Kafka, so that one checkout is one trace: through every
//! service's spans (exported by [`telemetry`](crate::telemetry) when an
//! OTLP endpoint is set) and every service's log lines, even across the
//! asynchronous hops of the saga.
//!
//! The trace is OpenTelemetry's: each `tracing` span is an OpenTelemetry
//! span (the `tracing-opentelemetry` layer that
//! [`telemetry::init`](crate::telemetry::init) installs), and the headers
//! are read and written by OpenTelemetry's W3C propagator, which keeps a
//! caller's `tracestate` as well. This module adapts the carriers we have
//! (HTTP headers, gRPC metadata, CloudEvents header pairs) to it, and starts
//! the spans that continue a remote caller's trace ([`start`]).
//!
//! The format is `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`
//! (<https://www.w3.org/TR/trace-context/>).

use std::sync::LazyLock;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
/// A span's identity and state: what travels in the headers.
pub use opentelemetry::trace::SpanContext;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Header name in HTTP requests, gRPC metadata and Kafka record headers.
pub const TRACEPARENT: &str = "traceparent";
/// The vendor-specific part of the context, passed on unchanged.
pub const TRACESTATE: &str = "tracestate";

static PROPAGATOR: LazyLock<TraceContextPropagator> = LazyLock::new(TraceContextPropagator::new);

/// A carrier read through a lookup function (the marker ties the values'
/// lifetime to the carrier's).
struct Lookup<'a, F>(F, std::marker::PhantomData<&'a str>);

impl<'a, F: Fn(&str) -> Option<&'a str>> Extractor for Lookup<'a, F> {
    fn get(&self, key: &str) -> Option<&str> {
        (self.0)(key)
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// The remote span a carrier names: `get` looks a header up by its
/// (lower-case) name. `None` when `traceparent` is absent or malformed:
/// callers then start a new trace rather than failing the request or event.
pub fn extract<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<SpanContext> {
    let context = PROPAGATOR.extract(&Lookup(get, std::marker::PhantomData));
    let span = context.span();
    let remote = span.span_context();
    remote.is_valid().then(|| remote.clone())
}

/// [`extract`] from HTTP headers (or gRPC metadata, which travels as them).
pub fn extract_http(headers: &http::HeaderMap) -> Option<SpanContext> {
    extract(|name| headers.get(name).and_then(|value| value.to_str().ok()))
}

/// Parses a `traceparent` (and a `tracestate`, if any) header value.
pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    extract(|name| match name {
        TRACEPARENT => Some(traceparent),
        TRACESTATE => tracestate,
        _ => None,
    })
}

/// Collects what the propagator writes.
struct Pairs(Vec<(&'static str, String)>);

impl Injector for Pairs {
    fn set(&mut self, key: &str, value: String) {
        // The W3C propagator writes only these two names.
        let name = match key {
            TRACEPARENT => TRACEPARENT,
            // It writes an empty state too; no header says the same.
            TRACESTATE if !value.is_empty() => TRACESTATE,
            _ => return,
        };
        self.0.push((name, value));
    }
}

/// The headers that carry `span` onwards: `traceparent`, and `tracestate`
/// when it has one. Empty for an invalid span context.
pub fn headers(span: &SpanContext) -> Vec<(&'static str, String)> {
    let mut pairs = Pairs(Vec::with_capacity(2));
    PROPAGATOR.inject_context(&Context::new().with_remote_span_context(span.clone()), &mut pairs);
    pairs.0
}

/// The OpenTelemetry span the current `tracing` span is, if it is one (the
/// telemetry layer is installed and the span is enabled).
pub fn current() -> Option<SpanContext> {
    span_context(&tracing::Span::current())
}

/// The OpenTelemetry span `span` is, if it is one.
pub fn span_context(span: &tracing::Span) -> Option<SpanContext> {
    let context = span.context();
    let otel = context.span();
    let span_context = otel.span_context();
    span_context.is_valid().then(|| span_context.clone())
}

/// Sets `traceparent` and `tracestate` of `headers` to the current span's,
/// unless the caller set a `traceparent` explicitly.
pub fn inject_http(headers: &mut http::HeaderMap) {
    if headers.contains_key(TRACEPARENT) {
        return;
    }
    if let Some(span) = current() {
        insert_http(&span, headers);
    }
}

/// Sets `traceparent` and `tracestate` of `headers` to `span`'s.
pub fn insert_http(span: &SpanContext, headers: &mut http::HeaderMap) {
    for (name, value) in self::headers(span) {
        // A formatted context is plain ASCII, and a tracestate was a valid
        // header when it came; if one ever were not, sending no header only
        // starts a new trace downstream.
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

/// Starts `span` as a child of `parent` (a remote caller's span; `None`
/// starts a new trace when `span` has no local parent either) and records
/// its ids in its `trace_id` and `span_id` fields, if it declares them
/// (`trace_id = tracing::field::Empty`), so that every log line inside it
/// names its trace and span. Returns the span's context, to send onwards.
///
/// The ids are recorded in one call: the JSON log layer formats a span's
/// fields again on each record.
pub fn start(span: &tracing::Span, parent: Option<&SpanContext>) -> Option<SpanContext> {
    if let Some(parent) = parent {
        // Fails only when the layer is absent or the span disabled: the span
        // then has no OpenTelemetry side to parent.
        let _ = span.set_parent(Context::new().with_remote_span_context(parent.clone()));
    }
    let started = span_context(span)?;
    if let Some(fields) = span.metadata().map(tracing::Metadata::fields)
        && let (Some(trace_field), Some(span_field)) = (fields.field("trace_id"), fields.field("span_id"))
    {
        let trace_id = started.trace_id().to_string();
        let span_id = started.span_id().to_string();
        span.record_all(&fields.value_set(&[
            (&trace_field, Some(&trace_id as &dyn tracing::Value)),
            (&span_field, Some(&span_id as &dyn tracing::Value)),
        ]));
    }
    Some(started)
}

/// Starts `span` (as [`start`]) as the root of a trace that is not sampled:
/// neither it nor anything under it is exported, the gRPC calls made in it
/// send their context with the sampled flag off, and the spans their
/// servers make as its children are not exported either (every service's
/// sampler is parent-based, OpenTelemetry's default). Its log lines still
/// name the trace. For a background poll: the gateway's catalog version
/// check, ten a second per replica, was 86% of the traces an idle shop
/// sent to Jaeger, burying the requests'. An explicit
/// `OTEL_TRACES_SAMPLER=always_on` exports them again.
pub fn start_unsampled(span: &tracing::Span) -> Option<SpanContext> {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
    // Zero ids are invalid (the span would start a sampled trace of its own).
    let (trace_id, span_id) = (rand::random::<u128>().max(1), rand::random::<u64>().max(1));
    let parent = SpanContext::new(
        TraceId::from(trace_id),
        SpanId::from(span_id),
        TraceFlags::default(),
        true,
        TraceState::default(),
    );
    start(span, Some(&parent))
}

/// The hex of `parent`'s span id, for a log field (empty without one).
pub fn parent_hex(parent: Option<&SpanContext>) -> String {
    parent.map(|parent| parent.span_id().to_string()).unwrap_or_default()
}

/// Sets an OpenTelemetry attribute on `span` (one that is no `tracing`
/// field, so that the log lines do not repeat it).
pub fn set_attribute(span: &tracing::Span, attribute: KeyValue) {
    span.set_attribute(attribute.key, attribute.value);
}

/// Marks `span` as failed, with `description` (an error chain).
pub fn set_error(span: &tracing::Span, description: impl Into<std::borrow::Cow<'static, str>>) {
    span.set_status(opentelemetry::trace::Status::error(description));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_header_round_trips_with_its_state() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span = parse(header, Some("vendor=abc,other=1")).expect("valid header");
        assert!(span.is_sampled());
        assert!(span.is_remote());
        assert_eq!(span.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            headers(&span),
            vec![(TRACEPARENT, header.to_owned()), (TRACESTATE, "vendor=abc,other=1".to_owned())]
        );
        let unsampled = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", None).unwrap();
        assert!(!unsampled.is_sampled());
        assert_eq!(headers(&unsampled).len(), 1, "no tracestate header without a state");
    }

    #[test]
    fn malformed_headers_are_rejected() {
        for header in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse(header, None), None, "{header:?} should be rejected");
        }
    }

    #[test]
    fn http_headers_carry_the_context_both_ways_and_an_explicit_traceparent_stays() {
        let sent = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Some("k=v")).unwrap();
        let mut headers = http::HeaderMap::new();
        insert_http(&sent, &mut headers);
        assert_eq!(extract_http(&headers), Some(sent.clone()));
        // Outside any span there is nothing to send, and an explicit header
        // is never replaced.
        inject_http(&mut headers);
        assert_eq!(extract_http(&headers), Some(sent));
        assert_eq!(current(), None);
    }
}
