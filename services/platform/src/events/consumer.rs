//! Idempotent consumption of a service's topics, with bounded retries and a
//! dead-letter topic.
//!
//! One [`EventConsumer`] per service joins the service's consumer group
//! (from the catalog) on the topics the catalog says it consumes, and hands
//! every event to the service's [`EventHandler`]. For each record:
//!
//! 1. the CloudEvents headers are parsed; a record without valid ones is
//!    poison and goes to the dead-letter topic at once;
//! 2. a transaction inserts `(consumer group, ce_id)` into
//!    `commerce_platform.processed_events`; if the row exists the event was
//!    already handled and is skipped, so a redelivery (after a crash, a
//!    rebalance, or a duplicate publish) has no effect;
//! 3. the handler runs in that transaction, inside the event's span (a
//!    child of the span that published it: [`trace_context::start`]), and
//!    the transaction commits;
//! 4. only then is the record's offset stored, to be committed with the
//!    others every `--kafka-commit-interval` (and on a rebalance and on
//!    shutdown). A crash redelivers what was handled since the last commit;
//!    step 2 skips it.
//!
//! Event types the handler does not act on ([`EventHandler::handles`]) are
//! skipped before any transaction: they have no effect, so there is nothing
//! to record.
//!
//! A retryable handler error is retried with backoff up to
//! [`KafkaArgs::handler_attempts`] times; after the last attempt, or at once
//! for a permanent error, the original record (key, payload, headers) goes
//! to the dead-letter topic with headers saying what failed, and the
//! consumer moves on, so one bad event never blocks a partition. An
//! unavailable database is not the event's fault: it is retried without
//! limit (and shows in the database's readiness check) rather than
//! dead-lettering every event during an outage.
//!
//! A dead-lettered event is not recorded as processed: replaying it from
//! the dead-letter topic after a fix handles it normally.
//!
//! On shutdown the consumer finishes the record in hand, commits its
//! offsets synchronously and leaves the group, so the partitions move to
//! another replica at once instead of after a session timeout.
//!
//! A handler may ask for batches ([`EventHandler::batching`]): a lane then
//! collects the records queued for it (waiting up to the handler's linger
//! for more) and handles a run of them in one transaction, which records
//! every one as processed, so the exactly-once effect is the same as one
//! at a time with one commit instead of many. If anything in the batch
//! fails (a handler error, the commit), the transaction rolls back and the
//! records are handled one at a time as above, so retries and dead letters
//! still concern the one event at fault. Offsets are stored once the batch
//! has committed. Batches suit handlers whose work is off the saga's
//! latency path and takes no locks other lanes take in another order (the
//! audit trail's chain); the default is one event per transaction.
//!
//! Records are handled in lanes (`--kafka-consumer-concurrency`): each
//! partition belongs to one lane, which handles its records one after
//! another, so events about one aggregate (one key, one partition) keep
//! their order while different partitions progress at once. A lane queues
//! a few records; when one is full (its handler retrying, say) the consumer
//! stops reading until it drains. Scale further out with replicas (up to
//! the topics' partition counts, which the operator keeps at least at the
//! replica maximum).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use commerce_topology::{DEAD_LETTER_RETENTION_MS, Service};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::postgres::PgPool;
use sqlx::{Postgres, Transaction};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::EventPayload;
use super::cloudevents::CloudEventAttributes;
use super::kafka::{KafkaArgs, LAG_INTERVAL, LagContext, METADATA_TIMEOUT, millis, spawn_broker_watch};
use super::metrics::EventMetrics;
use super::producer::{EventProducer, OutgoingRecord};
use crate::backoff::Backoff;
use crate::db::sleep_or_cancelled;
use crate::errors::error_chain;
use crate::readiness::Check;
use opentelemetry::trace::SpanContext;

use crate::trace_context;

/// Name of the readiness check of a service's consumer.
pub const READINESS_CHECK: &str = "kafka-consumer";

/// Dead-letter header: the error, with its causes, on one line.
pub const DLQ_ERROR: &str = "dlq_error";
/// Dead-letter header: why the record was parked: `poison` (undecodable
/// headers), `permanent` (the handler said it can never succeed) or
/// `retries_exhausted`.
pub const DLQ_REASON: &str = "dlq_reason";
/// Dead-letter header: the topic the record was consumed from.
pub const DLQ_ORIGINAL_TOPIC: &str = "dlq_original_topic";
/// Dead-letter header: its partition there.
pub const DLQ_ORIGINAL_PARTITION: &str = "dlq_original_partition";
/// Dead-letter header: its offset there.
pub const DLQ_ORIGINAL_OFFSET: &str = "dlq_original_offset";
/// Dead-letter header: how many times the handler ran (0 for poison).
pub const DLQ_ATTEMPTS: &str = "dlq_attempts";
/// Dead-letter header: the consumer group that gave up.
pub const DLQ_CONSUMER_GROUP: &str = "dlq_consumer_group";
/// Dead-letter header: when it gave up, RFC 3339.
pub const DLQ_TIME: &str = "dlq_time";

/// Delays between retries of infrastructure failures (database away,
/// dead-letter topic unwritable) and between consumer errors.
const INFRA_BACKOFF_BASE: Duration = Duration::from_millis(500);
const INFRA_BACKOFF_CAP: Duration = Duration::from_secs(10);
/// Ceiling of the delay between two handler attempts.
const HANDLER_BACKOFF_CAP: Duration = Duration::from_secs(10);
/// Records a lane holds before the consumer waits for it to catch up.
const LANE_QUEUE: usize = 32;
/// How often processed event ids past any possible redelivery are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(3600);
/// How long processed ids are kept: longer than any topic keeps its
/// records (the dead-letter retention is the longest), so no record that
/// can still be delivered has lost its id.
const PROCESSED_RETENTION: Duration = Duration::from_millis(DEAD_LETTER_RETENTION_MS.unsigned_abs());

/// Something failed running a consumer (per-record failures are handled,
/// logged and retried; these end [`EventConsumer::run`] or prevent it).
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("service {service} consumes no topic according to the catalog")]
    FindTopics { service: Service },
    #[error("cannot create the Kafka consumer of group {group}")]
    CreateConsumer {
        group: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot subscribe group {group} to its topics")]
    Subscribe {
        group: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot begin the event's transaction")]
    BeginTransaction(#[source] sqlx::Error),
    #[error("cannot record event {event_id} as processed")]
    RecordProcessed {
        event_id: Uuid,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot purge old processed event ids")]
    PurgeProcessed(#[source] sqlx::Error),
}

/// An error of a boxed cause, as handlers produce.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A handler's failure, and whether trying again may help.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// May succeed later (a serialization failure, a lock timeout, a peer
    /// briefly away): retried with backoff, dead-lettered after the last
    /// attempt.
    #[error("event handling failed (retryable)")]
    Retryable(#[source] BoxError),
    /// Can never succeed (a malformed or contradictory event):
    /// dead-lettered at once.
    #[error("event handling failed (permanent)")]
    Permanent(#[source] BoxError),
}

impl HandlerError {
    pub fn retryable(error: impl Into<BoxError>) -> Self {
        Self::Retryable(error.into())
    }

    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self::Permanent(error.into())
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable(_))
    }
}

/// Database errors inside a handler are usually transient (serialization
/// failures, deadlocks, a restart); a handler that knows better says so.
impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        Self::Retryable(Box::new(error))
    }
}

/// An event whose payload does not decode is poison: no retry fixes it.
impl From<DecodeError> for HandlerError {
    fn from(error: DecodeError) -> Self {
        Self::Permanent(Box::new(error))
    }
}

/// One event of a batch ([`EventHandler::handle_batch`]) and the span of its
/// handling (a child of the span that published it).
#[derive(Debug, Clone, Copy)]
pub struct BatchedEvent<'a> {
    pub event: &'a IncomingEvent,
    pub span: &'a tracing::Span,
}

/// How a lane groups events into transactions ([`EventHandler::batching`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Events per transaction at most (1: no batches).
    pub max_events: usize,
    /// How long a lane holding fewer than `max_events` waits for more
    /// before handling them: latency traded for fewer transactions.
    pub linger: Duration,
}

impl Batching {
    /// One event per transaction, handled as soon as it arrives.
    pub const ONE_BY_ONE: Self = Self { max_events: 1, linger: Duration::ZERO };
}

/// The payload is not the message the handler asked for.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("event type is {actual:?}, not {expected:?}")]
    MatchType { expected: &'static str, actual: String },
    #[error("cannot decode the payload as {event_type}")]
    DecodePayload {
        event_type: &'static str,
        #[source]
        source: prost::DecodeError,
    },
}

/// A service's reaction to the events it consumes.
///
/// Services implement it with [`event_handler!`](crate::event_handler): one
/// table names the event types and the methods that apply them, and gives
/// both [`handles`](Self::handles) and the dispatch, so the two cannot drift
/// apart (a type left out of `handles` would be skipped: lost).
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Whether the handler acts on events of `event_type`; the consumer
    /// skips the others before opening a transaction. The default acts on
    /// every type.
    fn handles(&self, event_type: &str) -> bool {
        let _ = event_type;
        true
    }

    /// How many events one transaction may handle, and how long a lane
    /// waits for more before handling those it has (see the module docs).
    /// The default is one event per transaction, handled at once.
    fn batching(&self) -> Batching {
        Batching::ONE_BY_ONE
    }

    /// Applies a batch of events within `tx`, in order, each recorded as
    /// processed by the same transaction (duplicates are already left out).
    /// The default applies each with [`handle`](Self::handle) inside its
    /// event's span; a handler whose work is cheaper for many events at once
    /// (one statement for the lot) overrides it. An error rolls the whole
    /// batch back; its events are then handled one by one.
    ///
    /// Only called for handlers whose [`batching`](Self::batching) allows
    /// more than one event.
    async fn handle_batch(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        events: &[BatchedEvent<'_>],
    ) -> Result<(), HandlerError> {
        for batched in events {
            self.handle(tx, batched.event).instrument(batched.span.clone()).await?;
        }
        Ok(())
    }

    /// Applies `event` within `tx`, the transaction that also records the
    /// event as processed: commit is the consumer's job, and either both the
    /// effect and the record persist, or neither. Runs inside the event's
    /// trace, so events enqueued here continue it.
    ///
    /// Dispatch on [`IncomingEvent::event_type`] (or [`IncomingEvent::is`])
    /// and [`decode`](IncomingEvent::decode) the payload; ignore (return
    /// `Ok`) event types the service does not care about.
    ///
    /// Only called for types [`handles`](Self::handles) accepts.
    async fn handle(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError>;

    /// Runs after the transaction that applied `events` committed, for
    /// effects outside the database that must not be seen before the
    /// commit, such as dropping a cache entry (dropped earlier, a reader
    /// could cache the old row again before the commit). Best effort: a
    /// crash between the commit and this call skips it, so it may only do
    /// what a cache's expiry also bounds. The default does nothing.
    async fn committed(&self, events: &[&IncomingEvent]) {
        let _ = events;
    }
}

/// Implements [`EventHandler`] for a type from one table of event types and
/// the methods that apply them:
///
/// ```ignore
/// commerce_platform::event_handler!(PaymentEventHandler {
///     ev::OrderPlaced => order_placed,
///     ev::OrderCancelled => order_cancelled,
/// });
/// ```
///
/// Each method is `async fn(&self, tx: &mut Transaction<'_, Postgres>,
/// event: E, incoming: &IncomingEvent) -> Result<(), HandlerError>`, given
/// the decoded payload (an undecodable one is a permanent error). The table
/// is both [`EventHandler::handles`], which lets the consumer skip other
/// types before opening a transaction, and the dispatch: a type cannot be
/// handled without being declared, nor declared without being handled.
///
/// A trailing `committed => method` after the table names an `async
/// fn(&self, events: &[&IncomingEvent])` run as [`EventHandler::committed`].
#[macro_export]
macro_rules! event_handler {
    ($handler:ty { $($event:ty => $method:ident),+ $(,)? } committed => $committed:ident) => {
        $crate::event_handler!(@impl $handler { $($event => $method),+ }
            async fn committed(&self, events: &[&$crate::events::IncomingEvent]) {
                self.$committed(events).await
            }
        );
    };
    ($handler:ty { $($event:ty => $method:ident),+ $(,)? }) => {
        $crate::event_handler!(@impl $handler { $($event => $method),+ });
    };
    (@impl $handler:ty { $($event:ty => $method:ident),+ } $($extra:item)?) => {
        #[$crate::events::__private::async_trait]
        impl $crate::events::EventHandler for $handler {
            fn handles(&self, event_type: &str) -> bool {
                $(event_type == <$event as $crate::events::EventPayload>::TYPE)||+
            }

            async fn handle(
                &self,
                tx: &mut $crate::events::__private::Transaction<'_>,
                event: &$crate::events::IncomingEvent,
            ) -> ::std::result::Result<(), $crate::events::HandlerError> {
                $(
                    if event.is::<$event>() {
                        return self.$method(tx, event.decode::<$event>()?, event).await;
                    }
                )+
                // Another type: the consumer never hands one over.
                Ok(())
            }

            $($extra)?
        }
    };
}

/// One consumed event: its CloudEvents attributes, where it came from and
/// its undecoded payload.
#[derive(Debug, Clone)]
pub struct IncomingEvent {
    attributes: CloudEventAttributes,
    trace: Option<SpanContext>,
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    attempt: u32,
}

impl IncomingEvent {
    /// `ce_id`, unique per event.
    pub fn id(&self) -> Uuid {
        self.attributes.id
    }

    /// `ce_type`: the protobuf message's full name.
    pub fn event_type(&self) -> &str {
        &self.attributes.event_type
    }

    /// `ce_source`: the producing service.
    pub fn source(&self) -> &str {
        &self.attributes.source
    }

    /// `ce_time`: when the change happened.
    pub fn time(&self) -> DateTime<Utc> {
        self.attributes.time
    }

    /// `ce_subject`: the aggregate id.
    pub fn subject(&self) -> Option<&str> {
        self.attributes.subject.as_deref()
    }

    /// All CloudEvents attributes.
    pub fn attributes(&self) -> &CloudEventAttributes {
        &self.attributes
    }

    /// The span the handler runs in: a child of the event's `traceparent`
    /// (same trace id), or the root of a new trace when it had none. `None`
    /// without the telemetry layer.
    pub fn trace_context(&self) -> Option<&SpanContext> {
        self.trace.as_ref()
    }

    /// Topic (physical name), partition and offset of the record.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The record key (the aggregate id).
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// The encoded payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Which attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether the event is an `E`.
    pub fn is<E: EventPayload>(&self) -> bool {
        self.attributes.event_type == E::TYPE
    }

    /// Decodes the payload as `E`, checking `ce_type` first. A failure
    /// converts into a permanent [`HandlerError`] (`?` in a handler).
    pub fn decode<E: EventPayload>(&self) -> Result<E, DecodeError> {
        if !self.is::<E>() {
            return Err(DecodeError::MatchType {
                expected: E::TYPE,
                actual: self.attributes.event_type.clone(),
            });
        }
        E::decode(self.payload.as_slice())
            .map_err(|source| DecodeError::DecodePayload { event_type: E::TYPE, source })
    }
}

/// How hard a consumer tries before dead-lettering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSettings {
    /// Handler attempts per event (at least 1).
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles per attempt, with jitter.
    pub retry_backoff: Duration,
}

impl ConsumerSettings {
    pub fn from_args(args: &KafkaArgs) -> Self {
        Self { max_attempts: args.handler_attempts.max(1), retry_backoff: args.handler_retry_backoff }
    }
}

/// What became of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Handled,
    Duplicate,
    /// A type the handler does not act on: no transaction, nothing recorded.
    Ignored,
    DeadLettered,
    /// Shutdown came while waiting to retry: the offset stays, the record
    /// comes again.
    Interrupted,
}

impl Outcome {
    /// The `outcome` label of a finished record.
    fn label(self) -> Option<&'static str> {
        match self {
            Self::Handled => Some("handled"),
            Self::Duplicate => Some("duplicate"),
            Self::Ignored => Some("ignored"),
            Self::DeadLettered => Some("dead_lettered"),
            Self::Interrupted => None,
        }
    }
}

/// Why a record was dead-lettered (the `dlq_reason` header).
#[derive(Debug, Clone, Copy)]
enum DeadLetterReason {
    Poison,
    Permanent,
    RetriesExhausted,
}

impl DeadLetterReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Poison => "poison",
            Self::Permanent => "permanent",
            Self::RetriesExhausted => "retries_exhausted",
        }
    }
}

/// One attempt's failure: the database (retried without limit) or the
/// handler (counted).
enum AttemptError {
    Database(ConsumerError),
    Handler(HandlerError),
}

/// A record read and ready: an event for the handler in its span, a record
/// already done with, or poison with why. Matched at once where it is made
/// (or moved into a batch as its parts), so its size costs nothing, and a
/// box would cost an allocation per event.
#[allow(clippy::large_enum_variant)]
enum Prepared {
    Event(IncomingEvent, tracing::Span),
    Done(Outcome),
    Poison(String, tracing::Span),
}

/// Consumes a service's topics into its [`EventHandler`]; see the module
/// docs.
pub struct EventConsumer<H> {
    service: Service,
    group: String,
    topics: Vec<String>,
    dead_letter_topic: String,
    consumer: Arc<StreamConsumer<LagContext>>,
    pool: PgPool,
    producer: EventProducer,
    handler: H,
    settings: ConsumerSettings,
    /// Partitions handled at once (see the module docs).
    lanes: usize,
    check: Check,
    /// Where to count outcomes; none by default.
    metrics: Option<EventMetrics>,
}

impl<H> std::fmt::Debug for EventConsumer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventConsumer")
            .field("service", &self.service)
            .field("group", &self.group)
            .field("topics", &self.topics)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .finish_non_exhaustive()
    }
}

impl<H: EventHandler> EventConsumer<H> {
    /// Creates the consumer of `service`'s group for the topics the catalog
    /// lists, dead-lettering through `producer`. Does not connect yet; `check`
    /// reports broker reachability once [`run`](Self::run) starts.
    pub fn new(
        service: Service,
        args: &KafkaArgs,
        pool: PgPool,
        producer: EventProducer,
        handler: H,
        check: Check,
    ) -> Result<Self, ConsumerError> {
        let names = args.names();
        let topics: Vec<String> = service.spec().consumes.iter().map(|topic| names.topic(*topic)).collect();
        if topics.is_empty() {
            return Err(ConsumerError::FindTopics { service });
        }
        let group = names.consumer_group(service);
        let mut config = args.client_config();
        config
            .set("group.id", &group)
            .set("client.id", format!("{}-consumer", service.name()))
            // A record's offset is stored by hand once its transaction has
            // committed; librdkafka commits the stored offsets periodically,
            // when partitions are revoked and when the consumer closes.
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", millis(args.commit_interval))
            .set("enable.auto.offset.store", "false")
            // A new group starts at the beginning: events published before
            // the service first ran still count.
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", millis(args.session_timeout))
            .set("heartbeat.interval.ms", millis(args.session_timeout / 3))
            // The partitions' lag, for the metrics (LagContext).
            .set("statistics.interval.ms", millis(LAG_INTERVAL));
        let consumer: StreamConsumer<LagContext> = config
            .create_with_context(LagContext::default())
            .map_err(|source| ConsumerError::CreateConsumer { group: group.clone(), source })?;
        Ok(Self {
            service,
            group,
            topics,
            dead_letter_topic: names.dead_letter_topic(service),
            consumer: Arc::new(consumer),
            pool,
            producer,
            handler,
            settings: ConsumerSettings::from_args(args),
            lanes: usize::from(args.consumer_concurrency.max(1)),
            check,
            metrics: None,
        })
    }

    /// Overrides the retry settings taken from the flags.
    pub fn with_settings(mut self, settings: ConsumerSettings) -> Self {
        self.settings = ConsumerSettings { max_attempts: settings.max_attempts.max(1), ..settings };
        self
    }

    /// Counts each event's outcome into `metrics`, and reports the lag of
    /// its partitions there.
    pub fn with_metrics(mut self, metrics: EventMetrics) -> Self {
        self.consumer.context().attach(metrics.clone(), self.service);
        self.metrics = Some(metrics);
        self
    }

    /// The consumer group (physical name).
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Handles the records of up to `lanes` partitions at once (at least
    /// 1); see the module docs.
    pub fn with_concurrency(mut self, lanes: usize) -> Self {
        self.lanes = lanes.max(1);
        self
    }

    /// Consumes until `shutdown`, then commits and leaves the group.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumerError> {
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        self.consumer
            .subscribe(&topics)
            .map_err(|source| ConsumerError::Subscribe { group: self.group.clone(), source })?;
        tracing::info!(group = %self.group, topics = ?self.topics, lanes = self.lanes, "consumer subscribed");
        let watch_stop = shutdown.child_token();
        let watch = spawn_broker_watch(
            self.consumer.clone(),
            |consumer, topic| consumer.client().fetch_metadata(Some(topic), METADATA_TIMEOUT),
            self.topics[0].clone(),
            self.check.clone(),
            "consumer",
            watch_stop.clone(),
        );

        let this = Arc::new(self);
        let (senders, lanes): (Vec<_>, Vec<_>) = (0..this.lanes)
            .map(|_| {
                let (sender, receiver) = mpsc::channel(LANE_QUEUE);
                (sender, this.clone().spawn_lane(receiver, shutdown.clone()))
            })
            .unzip();
        this.receive(&senders, &shutdown).await;

        // Leave cleanly: let every lane finish the record in hand, stop the
        // probe (it holds the consumer), commit what was handled, and leave
        // the group (closing the consumer does).
        drop(senders);
        for lane in lanes {
            if let Err(error) = lane.await {
                tracing::error!(error = %error, "a consumer lane panicked");
            }
        }
        watch_stop.cancel();
        let _ = watch.await;
        match this.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            // Nothing handled since the last commit.
            Err(error) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => {}
            // The partitions may have moved on in a rebalance; their new
            // owner skips what we handled through processed_events.
            Err(error) => tracing::warn!(error = %error, "cannot commit the final offsets"),
        }
        this.consumer.unsubscribe();
        let group = this.group.clone();
        drop(this);
        tracing::info!(group = %group, "consumer stopped and left the group");
        Ok(())
    }

    /// Reads records and hands each to its partition's lane until
    /// `shutdown` (or until a lane has stopped); purges old processed ids on
    /// the side.
    async fn receive(&self, lanes: &[mpsc::Sender<OwnedMessage>], shutdown: &CancellationToken) {
        let mut error_backoff = Backoff::new(INFRA_BACKOFF_BASE, INFRA_BACKOFF_CAP);
        let mut next_purge = Instant::now();
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(next_purge) => {
                    if let Err(error) = self.purge_processed().await {
                        tracing::warn!(error = %error_chain(&error), "cannot purge processed event ids");
                    }
                    next_purge = Instant::now() + PURGE_INTERVAL;
                    continue;
                }
                received = self.consumer.recv() => received.map(|message| message.detach()),
            };
            let record = match received {
                Ok(record) => {
                    error_backoff.reset();
                    record
                }
                Err(error) if is_transport_error(&error) => {
                    // Broker away: librdkafka queues one such event per
                    // failed connection attempt and reconnects by itself.
                    // `recv` already waits for the next event, so a backoff
                    // here would only delay consumption, once the broker is
                    // back, by (queued events x backoff): minutes after an
                    // outage of seconds (found by e2e/tests/chaos.rs).
                    tracing::debug!(error = %error, "Kafka unreachable; librdkafka reconnects");
                    continue;
                }
                Err(error) => {
                    // A topic not created yet, a rebalance in trouble:
                    // librdkafka recovers by itself; keep polling.
                    let delay = error_backoff.next_delay();
                    tracing::warn!(error = %error, retry_in = ?delay, "cannot receive from Kafka");
                    if sleep_or_cancelled(delay, shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            let lane = &lanes[lane_of(record.topic(), record.partition(), lanes.len())];
            tokio::select! {
                () = shutdown.cancelled() => return,
                sent = lane.send(record) => if sent.is_err() {
                    return;
                }
            }
        }
    }

    /// A task handling the records `receiver` gets, in order, until the
    /// queue closes or `shutdown` (after the record in hand).
    fn spawn_lane(
        self: Arc<Self>,
        mut receiver: mpsc::Receiver<OwnedMessage>,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        let batching = self.handler.batching();
        let max_events = batching.max_events.max(1);
        let lane = async move {
            loop {
                let record = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    record = receiver.recv() => match record {
                        Some(record) => record,
                        None => return,
                    },
                };
                if max_events == 1 {
                    if !self.process_one(&record, &shutdown).await {
                        return;
                    }
                    continue;
                }
                // What is queued now, and what comes within the linger.
                let mut records = vec![record];
                let deadline = Instant::now() + batching.linger;
                while records.len() < max_events {
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => break,
                        record = receiver.recv() => match record {
                            Some(record) => records.push(record),
                            None => break,
                        },
                        () = tokio::time::sleep_until(deadline) => break,
                    }
                }
                if !self.process_batch(records, &shutdown).await {
                    return;
                }
            }
        };
        tokio::spawn(lane.in_current_span())
    }

    /// Handles one record to its end and stores its offset; false if
    /// shutdown interrupted it.
    async fn process_one(&self, record: &OwnedMessage, shutdown: &CancellationToken) -> bool {
        let outcome = match self.prepare(record) {
            Prepared::Event(mut event, span) => {
                self.handle_with_retries(record, &mut event, shutdown).instrument(span).await
            }
            Prepared::Done(outcome) => outcome,
            Prepared::Poison(error, span) => {
                self.dead_letter(record, DeadLetterReason::Poison, &error, 0, shutdown).instrument(span).await
            }
        };
        self.finish(record, outcome)
    }

    /// Counts `outcome` and, unless it was interrupted, stores the record's
    /// offset; false if it was interrupted.
    fn finish(&self, record: &OwnedMessage, outcome: Outcome) -> bool {
        if let (Some(metrics), Some(label)) = (&self.metrics, outcome.label()) {
            metrics.consumed(self.service, label);
        }
        if outcome == Outcome::Interrupted {
            return false;
        }
        self.store_offset(record.topic(), record.partition(), record.offset() + 1);
        true
    }

    /// Handles `records` (one partition's, or several partitions' of one
    /// lane, in the order received): each run of events the handler acts
    /// on in one transaction; poison and ignored records one by one between
    /// runs, so offsets are stored in order. False if shutdown interrupted.
    async fn process_batch(&self, records: Vec<OwnedMessage>, shutdown: &CancellationToken) -> bool {
        let mut run: Vec<(OwnedMessage, IncomingEvent, tracing::Span)> = Vec::with_capacity(records.len());
        for record in records {
            match self.prepare(&record) {
                Prepared::Event(event, span) => run.push((record, event, span)),
                prepared => {
                    if !self.process_run(std::mem::take(&mut run), shutdown).await {
                        return false;
                    }
                    let outcome = match prepared {
                        Prepared::Done(outcome) => outcome,
                        Prepared::Poison(error, span) => {
                            self.dead_letter(&record, DeadLetterReason::Poison, &error, 0, shutdown)
                                .instrument(span)
                                .await
                        }
                        Prepared::Event(..) => unreachable!("matched above"),
                    };
                    if !self.finish(&record, outcome) {
                        return false;
                    }
                }
            }
        }
        self.process_run(run, shutdown).await
    }

    /// Handles a run of events in one transaction; if that fails, one by
    /// one with the usual retries and dead letters. False if shutdown
    /// interrupted.
    async fn process_run(
        &self,
        mut run: Vec<(OwnedMessage, IncomingEvent, tracing::Span)>,
        shutdown: &CancellationToken,
    ) -> bool {
        if run.len() > 1 {
            match self.attempt_batch(&mut run).await {
                Ok(outcomes) => {
                    tracing::debug!(events = run.len(), "batch of events handled in one transaction");
                    return run
                        .iter()
                        .zip(outcomes)
                        .all(|((record, _, _), outcome)| self.finish(record, outcome));
                }
                Err(error) => {
                    let error = match error {
                        AttemptError::Database(error) => error_chain(&error),
                        AttemptError::Handler(error) => error_chain(&error),
                    };
                    tracing::info!(events = run.len(), error = %error, "batch rolled back; handling its events one by one");
                }
            }
        }
        for (record, mut event, span) in run {
            let outcome = self.handle_with_retries(&record, &mut event, shutdown).instrument(span).await;
            if !self.finish(&record, outcome) {
                return false;
            }
        }
        true
    }

    /// One transaction for all of `run`: the events recorded as processed in
    /// one statement (a duplicate, of an earlier delivery or within the run,
    /// is skipped), the others handed to the handler together; one commit.
    /// The outcomes, in order.
    async fn attempt_batch(
        &self,
        run: &mut [(OwnedMessage, IncomingEvent, tracing::Span)],
    ) -> Result<Vec<Outcome>, AttemptError> {
        let mut tx = crate::db::begin(&self.pool, "process events")
            .await
            .map_err(|error| AttemptError::Database(ConsumerError::BeginTransaction(error)))?;
        for (_, event, _) in run.iter_mut() {
            event.attempt = 1;
        }
        let recorded: std::collections::HashSet<Uuid> = sqlx::query_scalar(
            "INSERT INTO commerce_platform.processed_events \
             (consumer_group, event_id, event_type, topic, kafka_partition, kafka_offset) \
             SELECT $1, * FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::integer[], $6::bigint[]) \
             ON CONFLICT DO NOTHING RETURNING event_id",
        )
        .bind(&self.group)
        .bind(run.iter().map(|(_, event, _)| event.id()).collect::<Vec<_>>())
        .bind(run.iter().map(|(_, event, _)| event.event_type()).collect::<Vec<_>>())
        .bind(run.iter().map(|(_, event, _)| event.topic()).collect::<Vec<_>>())
        .bind(run.iter().map(|(_, event, _)| event.partition()).collect::<Vec<_>>())
        .bind(run.iter().map(|(_, event, _)| event.offset()).collect::<Vec<_>>())
        .fetch_all(tx.as_sqlx().as_mut())
        .await
        .map_err(|source| {
            let event_id = run.first().map(|(_, event, _)| event.id()).unwrap_or_default();
            AttemptError::Database(ConsumerError::RecordProcessed { event_id, source })
        })?
        .into_iter()
        .collect();
        // The first delivery of each recorded id is handled; any other is a
        // duplicate.
        let mut fresh = recorded;
        let outcomes: Vec<Outcome> = run
            .iter()
            .map(|(_, event, span)| {
                if fresh.remove(&event.id()) {
                    Outcome::Handled
                } else {
                    span.in_scope(|| tracing::info!("event already processed; skipped"));
                    Outcome::Duplicate
                }
            })
            .collect();
        let batch: Vec<BatchedEvent<'_>> = run
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| **outcome == Outcome::Handled)
            .map(|((_, event, span), _)| BatchedEvent { event, span })
            .collect();
        if !batch.is_empty() {
            self.handler.handle_batch(tx.as_sqlx(), &batch).await.map_err(AttemptError::Handler)?;
        }
        tx.commit().await.map_err(|error| AttemptError::Handler(HandlerError::from(error)))?;
        if !batch.is_empty() {
            let handled: Vec<&IncomingEvent> = batch.iter().map(|batched| batched.event).collect();
            self.handler.committed(&handled).await;
        }
        Ok(outcomes)
    }

    /// Marks everything before `next` on the partition as handled, for the
    /// next commit.
    fn store_offset(&self, topic: &str, partition: i32, next: i64) {
        let mut offsets = TopicPartitionList::new();
        if offsets.add_partition_offset(topic, partition, Offset::Offset(next)).is_ok()
            && let Err(error) = self.consumer.store_offsets(&offsets)
        {
            // The partition was revoked while its record was handled: its
            // new owner starts from the last commit and skips what we did.
            tracing::debug!(error = %error, topic, partition, "cannot store the offset");
        }
    }

    /// Reads a record's attributes and opens its span: an event for the
    /// handler, a type it does not act on (done: ignored), or poison (to be
    /// dead-lettered, with why).
    fn prepare(&self, record: &OwnedMessage) -> Prepared {
        let attributes = match CloudEventAttributes::from_kafka_headers(record.headers()) {
            Ok(attributes) => attributes,
            Err(error) => {
                let span = tracing::warn_span!(
                    "poison_record",
                    topic = record.topic(),
                    partition = record.partition(),
                    offset = record.offset()
                );
                return Prepared::Poison(error_chain(&error), span);
            }
        };
        if !self.handler.handles(&attributes.event_type) {
            tracing::trace!(event_id = %attributes.id, event_type = %attributes.event_type, "event type not handled; skipped");
            return Prepared::Done(Outcome::Ignored);
        }
        // Handling the event is a span of its own, a child of the span that
        // published it.
        let short_type = attributes.event_type.rsplit('.').next().unwrap_or_default();
        let span = tracing::info_span!(
            "event",
            otel.name = format!("consume {short_type}"),
            otel.kind = "consumer",
            event_id = %attributes.id,
            event_type = %attributes.event_type,
            topic = record.topic(),
            partition = record.partition(),
            offset = record.offset(),
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent_span_id = %trace_context::parent_hex(attributes.trace.as_ref()),
            order_id = tracing::field::Empty,
        );
        if super::key_is_order_id(&attributes.event_type)
            && let Some(order_id) = attributes.subject.as_deref()
        {
            span.record("order_id", order_id);
        }
        let trace = trace_context::start(&span, attributes.trace.as_ref());
        let event = IncomingEvent {
            attributes,
            trace,
            topic: record.topic().to_owned(),
            partition: record.partition(),
            offset: record.offset(),
            key: record.key().map(<[u8]>::to_vec),
            payload: record.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            attempt: 0,
        };
        Prepared::Event(event, span)
    }

    async fn handle_with_retries(
        &self,
        record: &OwnedMessage,
        event: &mut IncomingEvent,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let mut handler_backoff = Backoff::new(self.settings.retry_backoff, HANDLER_BACKOFF_CAP);
        let mut database_backoff = Backoff::new(INFRA_BACKOFF_BASE, INFRA_BACKOFF_CAP);
        let mut attempts = 0;
        loop {
            event.attempt = attempts + 1;
            let delay = match self.attempt(event).await {
                Ok(outcome) => return outcome,
                Err(AttemptError::Database(error)) => {
                    let delay = database_backoff.next_delay();
                    tracing::warn!(error = %error_chain(&error), retry_in = ?delay, "database unavailable; event will be retried");
                    delay
                }
                Err(AttemptError::Handler(error)) => {
                    attempts += 1;
                    let message = error_chain(&error);
                    if !error.is_retryable() {
                        return self
                            .dead_letter(record, DeadLetterReason::Permanent, &message, attempts, shutdown)
                            .await;
                    }
                    if attempts >= self.settings.max_attempts {
                        return self
                            .dead_letter(
                                record,
                                DeadLetterReason::RetriesExhausted,
                                &message,
                                attempts,
                                shutdown,
                            )
                            .await;
                    }
                    let delay = handler_backoff.next_delay();
                    tracing::warn!(error = %message, attempt = attempts, retry_in = ?delay, "event handler failed; retrying");
                    delay
                }
            };
            if sleep_or_cancelled(delay, shutdown).await {
                return Outcome::Interrupted;
            }
        }
    }

    /// One transaction: record the id, run the handler, commit.
    async fn attempt(&self, event: &IncomingEvent) -> Result<Outcome, AttemptError> {
        let mut tx = crate::db::begin(&self.pool, "process event")
            .await
            .map_err(|error| AttemptError::Database(ConsumerError::BeginTransaction(error)))?;
        if !self.record_processed(tx.as_sqlx(), event).await? {
            // Rolling back an untouched transaction cannot matter.
            let _ = tx.rollback().await;
            tracing::info!("event already processed; skipped");
            return Ok(Outcome::Duplicate);
        }
        self.handler.handle(tx.as_sqlx(), event).await.map_err(AttemptError::Handler)?;
        // A failed commit may come from the handler's own writes (a deferred
        // constraint, a serialization failure): it counts as an attempt.
        tx.commit().await.map_err(|error| AttemptError::Handler(HandlerError::from(error)))?;
        self.handler.committed(&[event]).await;
        tracing::debug!("event handled");
        Ok(Outcome::Handled)
    }

    /// Records `event` as processed by the group in `tx`; false if it
    /// already was.
    async fn record_processed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        event: &IncomingEvent,
    ) -> Result<bool, AttemptError> {
        let inserted = sqlx::query(
            "INSERT INTO commerce_platform.processed_events \
             (consumer_group, event_id, event_type, topic, kafka_partition, kafka_offset) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&self.group)
        .bind(event.id())
        .bind(event.event_type())
        .bind(event.topic())
        .bind(event.partition())
        .bind(event.offset())
        .execute(&mut **tx)
        .await
        .map_err(|source| {
            AttemptError::Database(ConsumerError::RecordProcessed { event_id: event.id(), source })
        })?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Parks `record` on the dead-letter topic with its original key,
    /// payload and headers plus the `dlq_*` headers; retries the produce
    /// until the broker has it (or shutdown: the record then comes again).
    async fn dead_letter(
        &self,
        record: &OwnedMessage,
        reason: DeadLetterReason,
        error: &str,
        attempts: u32,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let mut headers = OwnedHeaders::new();
        if let Some(original) = record.headers() {
            for header in original.iter() {
                headers = headers.insert(Header { key: header.key, value: header.value });
            }
        }
        let partition = record.partition().to_string();
        let offset = record.offset().to_string();
        let attempts_text = attempts.to_string();
        let time = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        for (key, value) in [
            (DLQ_ERROR, error),
            (DLQ_REASON, reason.as_str()),
            (DLQ_ORIGINAL_TOPIC, record.topic()),
            (DLQ_ORIGINAL_PARTITION, partition.as_str()),
            (DLQ_ORIGINAL_OFFSET, offset.as_str()),
            (DLQ_ATTEMPTS, attempts_text.as_str()),
            (DLQ_CONSUMER_GROUP, self.group.as_str()),
            (DLQ_TIME, time.as_str()),
        ] {
            headers = headers.insert(Header { key, value: Some(value) });
        }

        let mut backoff = Backoff::new(INFRA_BACKOFF_BASE, INFRA_BACKOFF_CAP);
        loop {
            let sent = self
                .producer
                .send(OutgoingRecord {
                    topic: &self.dead_letter_topic,
                    key: record.key(),
                    payload: record.payload(),
                    headers: headers.clone(),
                })
                .await;
            match sent {
                Ok(_) => {
                    tracing::warn!(
                        reason = reason.as_str(),
                        attempts,
                        error,
                        dead_letter_topic = %self.dead_letter_topic,
                        "event dead-lettered"
                    );
                    return Outcome::DeadLettered;
                }
                Err(send_error) => {
                    let delay = backoff.next_delay();
                    tracing::error!(error = %error_chain(&send_error), retry_in = ?delay, "cannot write to the dead-letter topic; retrying");
                    if sleep_or_cancelled(delay, shutdown).await {
                        return Outcome::Interrupted;
                    }
                }
            }
        }
    }

    /// Deletes this group's processed ids older than any redelivery.
    async fn purge_processed(&self) -> Result<(), ConsumerError> {
        let deleted = sqlx::query(
            "DELETE FROM commerce_platform.processed_events \
             WHERE consumer_group = $1 AND processed_at < now() - make_interval(secs => $2)",
        )
        .bind(&self.group)
        .bind(PROCESSED_RETENTION.as_secs_f64())
        .execute(&self.pool)
        .await
        .map_err(ConsumerError::PurgeProcessed)?
        .rows_affected();
        if deleted > 0 {
            tracing::info!(deleted, "purged old processed event ids");
        }
        Ok(())
    }
}

/// The lane of a partition: the same for all its records, spread evenly
/// over the partitions of one topic.
fn lane_of(topic: &str, partition: i32, lanes: usize) -> usize {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    topic.hash(&mut hasher);
    let spread = hasher.finish().wrapping_add(u64::from(partition.unsigned_abs()));
    (spread % lanes as u64) as usize
}

/// Whether `error` only says that the brokers cannot be reached right now
/// (an event librdkafka emits per failed connection attempt, recovering by
/// itself), as opposed to a problem worth backing off from.
fn is_transport_error(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode::{AllBrokersDown, BrokerTransportFailure};
    matches!(error.rdkafka_error_code(), Some(AllBrokersDown | BrokerTransportFailure))
}
