//! Domain events over Kafka with the delivery guarantees of the architecture
//! (section 4): a transactional outbox on the publishing side, idempotent
//! consumers with bounded retries and a dead-letter topic on the consuming
//! side, and CloudEvents binary mode with `traceparent` on the wire.
//!
//! - [`kafka`]: the shared flags ([`KafkaArgs`]), topic and group naming
//!   from the catalog ([`TopicNames`]), and the librdkafka-to-`tracing`
//!   bridge;
//! - [`cloudevents`]: the `ce_*` headers, built and parsed;
//! - [`producer`]: the idempotent producer and its readiness;
//! - [`outbox`]: [`enqueue`] inside the service's transaction, and the
//!   [`OutboxRelay`] that publishes;
//! - [`consumer`]: [`EventConsumer`] running a service's [`EventHandler`];
//! - [`topics`]: [`ensure_topics`], shared with the operator;
//! - [`metrics`]: the relays' and consumers' Prometheus families.
//!
//! Topic names and consumer groups come from `commerce_topology` only;
//! event types and keys from [`EventPayload`], implemented by the proto crate
//! for every event message.

pub mod cloudevents;
pub mod consumer;
pub mod kafka;
pub mod metrics;
pub mod outbox;
pub mod producer;
pub mod topics;

/// A protobuf message published as a domain event: its CloudEvents type,
/// catalog topic and partition key. Implemented in `commerce-proto` for every
/// message of `commerce.events.v1`.
pub use commerce_proto::events::EventPayload;

/// What [`event_handler!`](crate::event_handler) expands to needs, so that
/// services using it need not depend on these crates themselves.
#[doc(hidden)]
pub mod __private {
    pub use async_trait::async_trait;
    pub type Transaction<'c> = sqlx::Transaction<'c, sqlx::Postgres>;
}

pub use cloudevents::{CloudEventAttributes, CloudEventError};
pub use consumer::{
    BatchedEvent, Batching, ConsumerError, DecodeError, EventConsumer, EventHandler, HandlerError,
    IncomingEvent,
};
pub use kafka::{KafkaArgs, TopicNames};
pub use metrics::EventMetrics;
pub use outbox::{OutboxError, OutboxRelay, enqueue};
pub use producer::{EventProducer, ProducerError};
pub use topics::{DesiredTopic, TopicAdmin, TopicAdminError, TopicChange, TopicReport, ensure_topics};

/// Whether events of `event_type` are keyed by the order they are about (a
/// span then carries the key as `order_id`).
pub(crate) fn key_is_order_id(event_type: &str) -> bool {
    commerce_proto::events::EVENT_KEY_FIELDS
        .iter()
        .any(|(known, field)| *known == event_type && *field == "order_id")
}
