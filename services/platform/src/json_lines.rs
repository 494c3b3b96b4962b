//! The JSON log line: one object per event, its fields flattened beside
//! `timestamp`, `level` and `target`, and the current span as `span` (its
//! fields and its `name`), the same shape as `tracing-subscriber`'s JSON
//! format with `flatten_event(true)` and `with_current_span(true)`.
//!
//! Ours because of what that format costs. Per line, it parses the current
//! span's stored fields (a JSON object the log layer wrote when the span was
//! made) into a `serde_json::Value` and serialises them again; and a field
//! recorded into a span later (as every span that starts a trace records
//! its `trace_id` and `span_id`) is merged the same way, by a parse and a
//! rewrite of the whole object. The gateway writes an access-log line for
//! every request, and those parses were most of the 12 µs each line cost
//! it, a fifth of its CPU time on its read path. Here ([`SpanFields`]) a
//! recorded field is appended to the stored object, and the object is
//! copied into the line as it is ([`JsonLines`]).
//!
//! The one difference: a span field recorded twice appears twice in the
//! object (JSON readers keep the last), where `tracing-subscriber` keeps one.

use std::fmt;
use std::io::Write as _;

use chrono::{SecondsFormat, Utc};
use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events as JSON lines, with the current span's fields as
/// [`SpanFields`] stored them.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S> FormatEvent<S, SpanFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, SpanFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Records of the `log` crate carry their origin in `log.*` fields.
        let normalized = event.normalized_metadata();
        let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut line = Vec::with_capacity(320);
        line.extend_from_slice(b"{\"timestamp\":\"");
        line.extend_from_slice(Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true).as_bytes());
        line.extend_from_slice(b"\",\"level\":\"");
        line.extend_from_slice(metadata.level().as_str().as_bytes());
        line.push(b'"');
        event.record(&mut FieldsVisitor { line: &mut line });
        line.extend_from_slice(b",\"target\":");
        push_json(&mut line, metadata.target());
        if let Some(span) = ctx.lookup_current() {
            line.extend_from_slice(b",\"span\":{");
            let extensions = span.extensions();
            let stored =
                extensions.get::<FormattedFields<SpanFields>>().map_or("", |fields| fields.fields.as_str());
            // `{"a":1,"b":2}` -> `"a":1,"b":2,`; an empty object adds nothing.
            let inner = stored.strip_prefix('{').and_then(|rest| rest.strip_suffix('}')).unwrap_or("");
            if !inner.is_empty() {
                line.extend_from_slice(inner.as_bytes());
                line.push(b',');
            }
            line.extend_from_slice(b"\"name\":");
            push_json(&mut line, span.name());
            line.push(b'}');
        }
        line.extend_from_slice(b"}\n");
        // Made of `str`s and serde_json's output: UTF-8 throughout.
        writer.write_str(std::str::from_utf8(&line).map_err(|_| fmt::Error)?)
    }
}

/// Stores a span's fields as one JSON object, `{"a":1,"b":"x"}`, and
/// appends the fields recorded later to it.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanFields;

impl<'writer> FormatFields<'writer> for SpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut members = Vec::with_capacity(160);
        fields.record(&mut FieldsVisitor { line: &mut members });
        writer.write_str(&object(&members)?)
    }

    fn add_fields(&self, current: &'writer mut FormattedFields<Self>, fields: &Record<'_>) -> fmt::Result {
        let mut members = Vec::with_capacity(64);
        fields.record(&mut FieldsVisitor { line: &mut members });
        if members.is_empty() {
            return Ok(());
        }
        let stored = &mut current.fields;
        match stored.strip_suffix('}') {
            Some(open) if open.len() > 1 => {
                stored.pop();
                stored.push_str(std::str::from_utf8(&members).map_err(|_| fmt::Error)?);
                stored.push('}');
            }
            // Empty so far (`{}`, or nothing at all).
            _ => *stored = object(&members)?,
        }
        Ok(())
    }
}

/// `{` + members without their leading comma + `}`.
fn object(members: &[u8]) -> Result<String, fmt::Error> {
    let members = std::str::from_utf8(members).map_err(|_| fmt::Error)?;
    Ok(format!("{{{}}}", members.strip_prefix(',').unwrap_or(members)))
}

/// Writes each field as `,"name":value`.
struct FieldsVisitor<'a> {
    line: &'a mut Vec<u8>,
}

impl FieldsVisitor<'_> {
    /// Writes `,"name":` and says whether to write the value: the `log.*`
    /// fields are already in the line's target; `r#type` is `type`.
    fn key(&mut self, field: &Field) -> bool {
        let name = field.name();
        if name.starts_with("log.") {
            return false;
        }
        self.line.push(b',');
        push_json(self.line, name.strip_prefix("r#").unwrap_or(name));
        self.line.push(b':');
        true
    }
}

impl Visit for FieldsVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            push_json(self.line, value);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            push_json(self.line, &value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            push_json(self.line, &value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            push_json(self.line, &value);
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            // JSON has no NaN or infinities; serde_json writes them as null.
            push_json(self.line, &value);
        }
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        if self.key(field) {
            push_json(self.line, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.key(field) {
            push_json(self.line, &value.to_string());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.key(field) {
            push_json(self.line, &format!("{value:?}"));
        }
    }
}

/// Appends `value` as JSON, as serde_json writes it (strings escaped).
fn push_json<T: serde::Serialize + ?Sized>(line: &mut Vec<u8>, value: &T) {
    if serde_json::to_writer(&mut *line, value).is_err() {
        let _ = line.write_all(b"null");
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::telemetry::tests::Captured;

    /// The lines written while `body` runs under a JSON log layer with
    /// [`JsonLines`], and the same lines from `tracing-subscriber`'s own
    /// JSON format, each parsed.
    fn both_formats(body: impl Fn()) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
        let ours = Captured::default();
        let theirs = Captured::default();
        let writer = |captured: Captured| move || captured.clone();
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(SpanFields)
                    .event_format(JsonLines)
                    .with_writer(writer(ours.clone())),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .flatten_event(true)
                    .with_writer(writer(theirs.clone())),
            );
        tracing::subscriber::with_default(subscriber, body);
        let parse = |captured: &Captured| {
            let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
            text.lines()
                .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
                .collect()
        };
        (parse(&ours), parse(&theirs))
    }

    #[derive(Debug)]
    struct Refused;

    impl fmt::Display for Refused {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("refused \"quoted\"\n")
        }
    }

    impl std::error::Error for Refused {}

    #[test]
    fn lines_hold_what_tracing_subscribers_json_format_holds() {
        let (ours, theirs) = both_formats(|| {
            tracing::info!(count = 3_u64, delta = -2_i64, ratio = 0.25, ok = true, "outside any span");
            let span = tracing::info_span!(
                "http_request",
                otel.name = "GET /api/products/{id}",
                request_id = "r-1",
                user_id = tracing::field::Empty,
            );
            span.record("user_id", "u \"1\"");
            let _entered = span.enter();
            let error = Refused;
            tracing::warn!(error = &error as &dyn std::error::Error, detail = ?("a", 1), "inside\ta span");
            let empty = tracing::info_span!("no_fields");
            let _inner = empty.enter();
            tracing::info!("in a span without fields");
            let late = tracing::info_span!(
                "late_fields",
                first = tracing::field::Empty,
                second = tracing::field::Empty
            );
            late.record("first", 1_u64);
            late.record("second", "two");
            let _late = late.enter();
            tracing::info!("in a span whose fields all came later");
        });
        assert_eq!(ours.len(), 4);
        for (our, their) in ours.iter().zip(&theirs) {
            let mut our = our.clone();
            let mut their = their.clone();
            // Written a few microseconds apart; the shape is checked below.
            for line in [&mut our, &mut their] {
                let stamp = line["timestamp"].take();
                let stamp = stamp.as_str().unwrap_or_default();
                assert!(chrono::DateTime::parse_from_rfc3339(stamp).is_ok(), "timestamp {stamp}");
            }
            assert_eq!(our, their);
        }
        assert_eq!(ours[1]["span"]["user_id"], "u \"1\"");
        assert_eq!(ours[1]["error"], "refused \"quoted\"\n");
        assert_eq!(ours[2]["span"], serde_json::json!({"name": "no_fields"}));
        assert_eq!(ours[3]["span"], serde_json::json!({"name": "late_fields", "first": 1, "second": "two"}));
    }
}
