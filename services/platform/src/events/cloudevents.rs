//! CloudEvents 1.0 in Kafka binary mode: the event's attributes travel as
//! record headers (`ce_specversion`, `ce_id`, `ce_type`, `ce_source`,
//! `ce_time`, `ce_subject`), the payload is the bare protobuf message
//! (`content-type: application/protobuf`), and `traceparent` carries the
//! trace.
//!
//! Binary mode keeps the payload a plain protobuf message (no envelope to
//! parse before routing), and lets a consumer route and deduplicate on
//! headers alone. See the Kafka protocol binding of CloudEvents 1.0.

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use uuid::Uuid;

use super::EventPayload;
use opentelemetry::trace::SpanContext;

use crate::trace_context::{self, TRACEPARENT, TRACESTATE};

/// Header of the CloudEvents spec version.
pub const SPECVERSION: &str = "ce_specversion";
/// Header of the event id (a UUID v7 here).
pub const ID: &str = "ce_id";
/// Header of the event type (the proto message's full name).
pub const TYPE: &str = "ce_type";
/// Header of the producing service (`/commerce/<service>`).
pub const SOURCE: &str = "ce_source";
/// Header of the time the event happened, RFC 3339.
pub const TIME: &str = "ce_time";
/// Header of the subject: the aggregate id, also the record key.
pub const SUBJECT: &str = "ce_subject";
/// Header of the payload's media type (binary mode maps `datacontenttype`
/// to the plain `content-type` header).
pub const CONTENT_TYPE: &str = "content-type";

/// The only spec version we speak.
pub const SPEC_VERSION: &str = "1.0";
/// Media type of every payload: a protobuf message of the type `ce_type`.
pub const PROTOBUF_CONTENT_TYPE: &str = "application/protobuf";

/// A header that is missing or does not hold what it must: the record cannot
/// be trusted as one of our events (a poison record for a consumer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudEventError {
    #[error("required header {header} is missing")]
    MissingHeader { header: &'static str },
    #[error("header {header} is not UTF-8")]
    DecodeHeader { header: &'static str },
    #[error("header {header} has invalid value {value:?}: {reason}")]
    ParseHeader { header: &'static str, value: String, reason: String },
    #[error("unsupported CloudEvents spec version {0:?} (expected {SPEC_VERSION})")]
    UnsupportedSpecVersion(String),
    #[error("unsupported content type {0:?} (expected {PROTOBUF_CONTENT_TYPE})")]
    UnsupportedContentType(String),
}

/// The CloudEvents attributes of one event, as carried in its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEventAttributes {
    /// Unique per event; consumers deduplicate on it. A UUID v7 (time
    /// ordered) when we produce it.
    pub id: Uuid,
    /// `ce_type`: the protobuf message's full name, which says how to decode
    /// the payload.
    pub event_type: String,
    /// `ce_source`: the producing service, `/commerce/<service>`.
    pub source: String,
    /// `ce_time`: when the change happened.
    pub time: DateTime<Utc>,
    /// `ce_subject`: the aggregate the event is about, equal to the key.
    pub subject: Option<String>,
    /// The span that published the event (`traceparent` and `tracestate`);
    /// `None` when the header was absent or malformed (a consumer then
    /// starts a new trace rather than failing).
    pub trace: Option<SpanContext>,
}

impl CloudEventAttributes {
    /// Attributes for publishing `event` now: a new UUID v7 id, the type and
    /// source from the event's kind (the source is the catalog producer of
    /// its topic), the time it says it happened (or now), the key as
    /// subject, and the current span as the trace.
    pub fn for_event<E: EventPayload>(event: &E) -> Self {
        let time =
            event.occurred_at().and_then(commerce_proto::time::from_timestamp).unwrap_or_else(Utc::now);
        Self {
            id: Uuid::now_v7(),
            event_type: E::TYPE.to_owned(),
            source: E::TOPIC.producer().event_source(),
            time,
            subject: Some(event.key()),
            trace: trace_context::current(),
        }
    }

    /// The headers, in a stable order, as (name, value) pairs.
    pub fn to_header_pairs(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            (SPECVERSION, SPEC_VERSION.to_owned()),
            (ID, self.id.to_string()),
            (TYPE, self.event_type.clone()),
            (SOURCE, self.source.clone()),
            (TIME, self.time.to_rfc3339_opts(SecondsFormat::Micros, true)),
        ];
        if let Some(subject) = &self.subject {
            headers.push((SUBJECT, subject.clone()));
        }
        headers.push((CONTENT_TYPE, PROTOBUF_CONTENT_TYPE.to_owned()));
        if let Some(trace) = &self.trace {
            headers.extend(trace_context::headers(trace));
        }
        headers
    }

    /// The headers as Kafka record headers.
    pub fn to_kafka_headers(&self) -> OwnedHeaders {
        headers_from_pairs(self.to_header_pairs().iter().map(|(name, value)| (*name, value.as_str())))
    }

    /// Parses the attributes from header (name, value) pairs. The required
    /// attributes (spec version, id, type, source, time, content type) must
    /// be present and valid; `traceparent` and `ce_subject` may be absent.
    /// When a header repeats, the first one counts.
    pub fn from_header_pairs<'a, I>(headers: I) -> Result<Self, CloudEventError>
    where
        I: IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    {
        let headers: Vec<(&str, Option<&[u8]>)> = headers.into_iter().collect();
        let find = |name: &'static str| -> Result<Option<&str>, CloudEventError> {
            match headers.iter().find(|(key, _)| *key == name) {
                None | Some((_, None)) => Ok(None),
                Some((_, Some(bytes))) => std::str::from_utf8(bytes)
                    .map(Some)
                    .map_err(|_| CloudEventError::DecodeHeader { header: name }),
            }
        };
        let require = |name: &'static str| -> Result<&str, CloudEventError> {
            find(name)?
                .filter(|value| !value.is_empty())
                .ok_or(CloudEventError::MissingHeader { header: name })
        };

        let spec_version = require(SPECVERSION)?;
        if spec_version != SPEC_VERSION {
            return Err(CloudEventError::UnsupportedSpecVersion(spec_version.to_owned()));
        }
        let id = require(ID)?;
        let id = Uuid::parse_str(id).map_err(|error| CloudEventError::ParseHeader {
            header: ID,
            value: id.to_owned(),
            reason: error.to_string(),
        })?;
        let event_type = require(TYPE)?.to_owned();
        let source = require(SOURCE)?.to_owned();
        let time = require(TIME)?;
        let time = DateTime::parse_from_rfc3339(time)
            .map_err(|error| CloudEventError::ParseHeader {
                header: TIME,
                value: time.to_owned(),
                reason: error.to_string(),
            })?
            .with_timezone(&Utc);
        let content_type = require(CONTENT_TYPE)?;
        // Media type parameters (`; charset=...`) do not change the format.
        if content_type.split(';').next().map(str::trim) != Some(PROTOBUF_CONTENT_TYPE) {
            return Err(CloudEventError::UnsupportedContentType(content_type.to_owned()));
        }
        let subject = find(SUBJECT)?.map(str::to_owned);
        let state = find(TRACESTATE).ok().flatten();
        let trace = find(TRACEPARENT).ok().flatten().and_then(|parent| trace_context::parse(parent, state));
        Ok(Self { id, event_type, source, time, subject, trace })
    }

    /// Parses the attributes from a Kafka record's headers (`None`: the
    /// record has no headers at all).
    pub fn from_kafka_headers<H: Headers>(headers: Option<&H>) -> Result<Self, CloudEventError> {
        match headers {
            Some(headers) => Self::from_header_pairs(headers.iter().map(|header| (header.key, header.value))),
            None => Err(CloudEventError::MissingHeader { header: SPECVERSION }),
        }
    }
}

/// Builds Kafka headers from (name, value) pairs.
pub fn headers_from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> OwnedHeaders {
    pairs
        .into_iter()
        .fold(OwnedHeaders::new(), |headers, (key, value)| headers.insert(Header { key, value: Some(value) }))
}

#[cfg(test)]
mod tests {
    use commerce_proto::events::v1::OrderPlaced;
    use commerce_topology::Topic;
    use prost_types::Timestamp;

    use super::*;

    fn order_placed() -> OrderPlaced {
        OrderPlaced {
            order_id: "order-1".to_owned(),
            occurred_at: Some(Timestamp { seconds: 1_700_000_000, nanos: 123_000 }),
            ..OrderPlaced::default()
        }
    }

    /// The attributes of [`order_placed`], published inside a traced span
    /// with a `tracestate`.
    fn traced() -> CloudEventAttributes {
        let mut attributes = CloudEventAttributes::for_event(&order_placed());
        attributes.trace =
            trace_context::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Some("vendor=1"));
        assert!(attributes.trace.is_some());
        attributes
    }

    fn pairs(attributes: &CloudEventAttributes) -> Vec<(&'static str, String)> {
        attributes.to_header_pairs()
    }

    fn parse(pairs: &[(&'static str, String)]) -> Result<CloudEventAttributes, CloudEventError> {
        CloudEventAttributes::from_header_pairs(pairs.iter().map(|(k, v)| (*k, Some(v.as_bytes()))))
    }

    #[test]
    fn attributes_for_an_event_come_from_its_kind_and_round_trip() {
        let event = order_placed();
        let attributes = CloudEventAttributes::for_event(&event);
        assert_eq!(attributes.id.get_version_num(), 7);
        assert_eq!(attributes.event_type, "commerce.events.v1.OrderPlaced");
        assert_eq!(attributes.source, Topic::Orders.producer().event_source());
        assert_eq!(attributes.subject.as_deref(), Some("order-1"));
        assert_eq!(attributes.time.timestamp(), 1_700_000_000);
        let headers = pairs(&attributes);
        assert!(headers.contains(&(CONTENT_TYPE, PROTOBUF_CONTENT_TYPE.to_owned())));
        assert!(headers.iter().any(|(k, v)| *k == TIME && v == "2023-11-14T22:13:20.000123Z"), "{headers:?}");
        assert_eq!(parse(&headers), Ok(attributes));
        let traced = traced();
        assert_eq!(parse(&pairs(&traced)), Ok(traced), "traceparent and tracestate travel");
    }

    #[test]
    fn kafka_headers_round_trip() {
        let attributes = traced();
        let headers = attributes.to_kafka_headers();
        assert_eq!(CloudEventAttributes::from_kafka_headers(Some(&headers)), Ok(attributes));
        assert_eq!(
            CloudEventAttributes::from_kafka_headers::<OwnedHeaders>(None),
            Err(CloudEventError::MissingHeader { header: SPECVERSION })
        );
    }

    #[test]
    fn each_missing_required_header_is_reported_by_name() {
        let full = pairs(&traced());
        for required in [SPECVERSION, ID, TYPE, SOURCE, TIME, CONTENT_TYPE] {
            let without: Vec<_> = full.iter().filter(|(k, _)| *k != required).cloned().collect();
            assert_eq!(parse(&without), Err(CloudEventError::MissingHeader { header: required }));
        }
        for optional in [SUBJECT, TRACEPARENT, TRACESTATE] {
            let without: Vec<_> = full.iter().filter(|(k, _)| *k != optional).cloned().collect();
            assert!(parse(&without).is_ok(), "{optional} is optional");
        }
    }

    #[test]
    fn invalid_values_are_typed_errors() {
        let full = pairs(&traced());
        let with = |name: &'static str, value: &str| -> Vec<(&'static str, String)> {
            full.iter()
                .map(|(k, v)| if *k == name { (*k, value.to_owned()) } else { (*k, v.clone()) })
                .collect()
        };
        assert!(matches!(
            parse(&with(ID, "not-a-uuid")),
            Err(CloudEventError::ParseHeader { header: ID, .. })
        ));
        assert!(matches!(
            parse(&with(TIME, "yesterday")),
            Err(CloudEventError::ParseHeader { header: TIME, .. })
        ));
        assert_eq!(
            parse(&with(SPECVERSION, "0.3")),
            Err(CloudEventError::UnsupportedSpecVersion("0.3".to_owned()))
        );
        assert_eq!(
            parse(&with(CONTENT_TYPE, "application/json")),
            Err(CloudEventError::UnsupportedContentType("application/json".to_owned()))
        );
        // A malformed traceparent is not worth losing the event over.
        assert_eq!(parse(&with(TRACEPARENT, "garbage")).map(|a| a.trace), Ok(None));
        let not_utf8 = [(SPECVERSION, Some(&[0xff_u8][..]))];
        assert_eq!(
            CloudEventAttributes::from_header_pairs(not_utf8),
            Err(CloudEventError::DecodeHeader { header: SPECVERSION })
        );
    }
}
