//! The idempotent Kafka producer every service publishes through (the outbox
//! relay, and consumers writing dead letters).
//!
//! Idempotence (`enable.idempotence=true`, which implies `acks=all` and at
//! most five requests in flight) makes the broker drop the duplicates that
//! librdkafka's own retries would otherwise write, and keeps the records of
//! one partition in the order they were sent even across retries: the
//! property that keeps one aggregate's events in order.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message as _, OwnedHeaders};
use rdkafka::producer::future_producer::{Delivery, DeliveryFuture};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::EventPayload;
use super::cloudevents::CloudEventAttributes;
use super::kafka::{KafkaArgs, METADATA_TIMEOUT, TopicNames, TracingContext, millis, spawn_broker_watch};
use crate::errors::error_chain;
use crate::readiness::Check;

/// Name of the readiness check of a service's producer.
pub const READINESS_CHECK: &str = "kafka-producer";

/// Something failed while producing.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error("cannot create the Kafka producer")]
    CreateProducer(#[source] KafkaError),
    /// librdkafka refused the record before sending (queue full, record too
    /// large, unknown partition).
    #[error("cannot queue a record for topic {topic}")]
    QueueRecord {
        topic: String,
        #[source]
        source: KafkaError,
    },
    /// The broker did not acknowledge the record within the delivery
    /// timeout, or rejected it.
    #[error("the broker did not acknowledge a record for topic {topic}")]
    DeliverRecord {
        topic: String,
        #[source]
        source: KafkaError,
    },
}

type SharedProducer = Arc<FutureProducer<TracingContext>>;

/// The producer slots alive in this process, by their complete librdkafka
/// configuration. Services run in one process (`commerce serve all`, `local
/// up`) with the same brokers and properties share one producer instead of
/// one each: every librdkafka client has its own threads, connections and
/// buffers. Measured on the one-process shop of ten services (`local up`,
/// 15 s after start, twice each): 69.8-72.9 MiB and 72 threads with a
/// producer per service, 57.4-58.3 MiB and 44 threads with one. Records stay independent
/// (idempotence numbers them per partition, and each service awaits its
/// own acknowledgements); what is shared is the connection and its fate, as
/// the process already is. A slot goes when its last user drops it.
static PRODUCERS: LazyLock<Mutex<Vec<Registered>>> = LazyLock::new(|| Mutex::new(Vec::new()));

/// A producer's complete librdkafka configuration, the registry's key.
type ProducerConfig = BTreeMap<String, String>;
/// One entry of [`PRODUCERS`]: a configuration and its slot while alive.
type Registered = (ProducerConfig, Weak<ProducerSlot>);

/// The slot of this process with exactly `config`, created if none is.
fn shared_slot(config: &ClientConfig) -> Result<Arc<ProducerSlot>, ProducerError> {
    let key: ProducerConfig =
        config.config_map().into_iter().map(|(name, value)| (name.to_owned(), value.to_owned())).collect();
    let mut producers = PRODUCERS.lock().unwrap_or_else(PoisonError::into_inner);
    producers.retain(|(_, slot)| slot.strong_count() > 0);
    if let Some(existing) = producers.iter().filter(|(same, _)| *same == key).find_map(|(_, s)| s.upgrade()) {
        return Ok(existing);
    }
    let slot = Arc::new(ProducerSlot::new(config, partition_has_leader)?);
    producers.push((key, Arc::downgrade(&slot)));
    Ok(slot)
}

/// Whether the brokers, asked through `producer`'s own client, show
/// `topic` [`partition`] (any partition when negative: not assigned yet)
/// with a leader. Blocks up to the metadata timeout.
fn partition_has_leader(producer: &FutureProducer<TracingContext>, topic: &str, partition: i32) -> bool {
    let Ok(metadata) = producer.client().fetch_metadata(Some(topic), METADATA_TIMEOUT) else {
        return false;
    };
    metadata.topics().iter().filter(|found| found.name() == topic && found.error().is_none()).any(|found| {
        found.partitions().iter().any(|found| {
            (partition < 0 || found.id() == partition) && found.leader() >= 0 && found.error().is_none()
        })
    })
}

fn create(config: &ClientConfig) -> Result<SharedProducer, ProducerError> {
    Ok(Arc::new(config.create_with_context(TracingContext).map_err(ProducerError::CreateProducer)?))
}

/// One librdkafka producer of the process and the means to replace it.
///
/// Why replace one: after a broker restart, librdkafka's idempotent
/// producer can keep one partition's records waiting until each times out,
/// while the brokers answer and the process's other partitions deliver.
/// Seen in the fault test that restarts Kafka mid-saga (the inventory and
/// shipments rows of one process timed out every 30 s for minutes, until the
/// test gave up); public reports of librdkafka clients describe the same,
/// cured only by a new producer. So when a record queued *after* a
/// partition's first timeout times out too, and a metadata request through
/// the same client shows that partition with a leader, the client is
/// suspect, not the brokers: the slot makes a new producer (a new producer
/// id; the senders send their records again, and consumers deduplicate on
/// the event id). While the brokers are away the metadata request fails
/// and nothing is replaced.
struct ProducerSlot {
    config: ClientConfig,
    producer: RwLock<Current>,
    /// Per (topic, partition): when its first record timed out with no
    /// delivery to it since.
    timing_out: Mutex<HashMap<(String, i32), Instant>>,
    /// [`partition_has_leader`], but for tests of the decision.
    leader_shown: LeaderShown,
}

type LeaderShown = fn(&FutureProducer<TracingContext>, &str, i32) -> bool;

/// The producer in use and how many times it was replaced before.
struct Current {
    generation: u64,
    producer: SharedProducer,
}

impl ProducerSlot {
    fn new(config: &ClientConfig, leader_shown: LeaderShown) -> Result<Self, ProducerError> {
        Ok(Self {
            producer: RwLock::new(Current { generation: 0, producer: create(config)? }),
            config: config.clone(),
            timing_out: Mutex::new(HashMap::new()),
            leader_shown,
        })
    }

    fn current(&self) -> (u64, SharedProducer) {
        let current = self.producer.read().unwrap_or_else(PoisonError::into_inner);
        (current.generation, current.producer.clone())
    }

    fn current_generation(&self) -> u64 {
        self.producer.read().unwrap_or_else(PoisonError::into_inner).generation
    }

    fn delivered(&self, topic: &str, partition: i32) {
        let mut timing_out = self.timing_out.lock().unwrap_or_else(PoisonError::into_inner);
        if !timing_out.is_empty() {
            timing_out.remove(&(topic.to_owned(), partition));
        }
    }

    /// A record to `topic` [`partition`], queued at `queued` on producer
    /// `generation`, timed out: replaces the producer if it is stuck (see
    /// the type's docs).
    async fn timed_out(&self, generation: u64, topic: &str, partition: i32, queued: Instant) {
        let again = {
            let mut timing_out = self.timing_out.lock().unwrap_or_else(PoisonError::into_inner);
            match timing_out.entry((topic.to_owned(), partition)) {
                Entry::Occupied(first) => queued > *first.get(),
                Entry::Vacant(entry) => {
                    entry.insert(Instant::now());
                    false
                }
            }
        };
        if !again || self.current_generation() != generation {
            return;
        }
        // Cloned here, dropped on the blocking pool: it may be the last
        // reference to a producer replaced meanwhile.
        let producer = self.current().1;
        let (name, leader_shown) = (topic.to_owned(), self.leader_shown);
        let answered = tokio::task::spawn_blocking(move || leader_shown(&producer, &name, partition)).await;
        if matches!(answered, Ok(true)) {
            self.replace(generation, topic, partition);
        }
    }

    /// Replaces producer `generation` unless another caller already did.
    fn replace(&self, generation: u64, topic: &str, partition: i32) {
        let old = {
            let mut current = self.producer.write().unwrap_or_else(PoisonError::into_inner);
            if current.generation != generation {
                return;
            }
            let fresh = match create(&self.config) {
                Ok(fresh) => fresh,
                Err(error) => {
                    tracing::error!(error = %error_chain(&error), "cannot replace a stuck Kafka producer");
                    return;
                }
            };
            current.generation += 1;
            std::mem::replace(&mut current.producer, fresh)
        };
        self.timing_out.lock().unwrap_or_else(PoisonError::into_inner).clear();
        tracing::warn!(
            topic,
            partition,
            generation = generation + 1,
            "records to a partition keep timing out while the brokers show its leader: the Kafka producer is replaced"
        );
        // Dropping a producer purges its queue, waits up to 500 ms for the
        // purge's reports and joins its threads: not on an async worker.
        tokio::task::spawn_blocking(move || drop(old));
    }
}

/// One record to produce: physical topic name, key, payload and headers.
#[derive(Debug)]
pub struct OutgoingRecord<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub headers: OwnedHeaders,
}

/// A producer of records, configured for idempotent, acknowledged delivery.
/// Cheap to clone: clones share one librdkafka producer (and its
/// connections).
#[derive(Clone)]
pub struct EventProducer {
    slot: Arc<ProducerSlot>,
    names: TopicNames,
}

impl std::fmt::Debug for EventProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventProducer").field("names", &self.names).finish_non_exhaustive()
    }
}

impl EventProducer {
    /// Creates the producer. Does not connect: librdkafka connects in the
    /// background and keeps reconnecting, so a broker that is not up yet is
    /// no error here (see [`watch_readiness`](Self::watch_readiness)).
    pub fn new(args: &KafkaArgs) -> Result<Self, ProducerError> {
        let mut config = args.client_config();
        config
            .set("enable.idempotence", "true")
            // Implied by idempotence; spelled out so that nobody "tunes" it
            // away through --kafka-property without noticing the conflict.
            .set("acks", "all")
            .set("delivery.timeout.ms", millis(args.delivery_timeout))
            // Batching delay: events are small and latency matters more
            // than throughput in the saga, which crosses three topics before
            // an order is confirmed. The relay queues its whole batch before
            // awaiting it, so records still share requests; 5 ms here cost
            // about 4 ms per hop.
            .set("linger.ms", "1")
            // Same hash as the Java client's default partitioner, so a key
            // lands on the same partition whoever produces it.
            .set("partitioner", "murmur2_random")
            // A producer never creates topics (the operator or the topic
            // check at start-up does, with the catalog's layout). librdkafka
            // lets a producer's metadata requests create any topic they name
            // on a broker with auto.create.topics.enable, unless told not to.
            .set("allow.auto.create.topics", "false");
        Ok(Self { slot: shared_slot(&config)?, names: args.names() })
    }

    /// The naming of topics this producer publishes under.
    pub fn names(&self) -> &TopicNames {
        &self.names
    }

    /// The librdkafka producer in use, for what this wrapper does not
    /// offer. It may be replaced later (see [`ProducerSlot`]).
    pub fn current(&self) -> SharedProducer {
        self.slot.current().1
    }

    /// Keeps `check` in line with whether the brokers answer a metadata
    /// request about `topic` (see [`TopicNames::probe_topic`]), until
    /// `shutdown`.
    pub fn watch_readiness(
        &self,
        check: Check,
        topic: String,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        spawn_broker_watch(
            self.slot.clone(),
            |slot, topic| slot.current().1.client().fetch_metadata(Some(topic), METADATA_TIMEOUT),
            topic,
            check,
            "producer",
            shutdown,
        )
    }

    /// Queues `record` and returns the future of its acknowledgement.
    /// Records queued one after another on one partition are written in
    /// that order (idempotence), so a caller may queue a batch and then
    /// await the acknowledgements.
    pub fn queue(&self, record: OutgoingRecord<'_>) -> Result<PendingDelivery, ProducerError> {
        let topic = record.topic.to_owned();
        let mut future_record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(record.topic).headers(record.headers);
        if let Some(key) = record.key {
            future_record = future_record.key(key);
        }
        if let Some(payload) = record.payload {
            future_record = future_record.payload(payload);
        }
        // Sent under the read lock rather than through a clone: a clone
        // dropped here could be the last reference to a producer replaced
        // meanwhile, and dropping one blocks.
        let current = self.slot.producer.read().unwrap_or_else(PoisonError::into_inner);
        let generation = current.generation;
        match current.producer.send_result(future_record) {
            Ok(future) => Ok(PendingDelivery {
                topic,
                future,
                slot: self.slot.clone(),
                generation,
                queued: Instant::now(),
            }),
            Err((source, _record)) => Err(ProducerError::QueueRecord { topic, source }),
        }
    }

    /// Produces one record and waits for the broker's acknowledgement.
    pub async fn send(&self, record: OutgoingRecord<'_>) -> Result<Delivery, ProducerError> {
        self.queue(record)?.acknowledged().await
    }

    /// Queues `event` as the outbox relay publishes one: on its catalog
    /// topic (under this producer's prefix), keyed by its aggregate, as a
    /// binary-mode CloudEvent with `attributes`. For what has no outbox (the
    /// cart, kept in Redis) and for tests that stand in for a publisher.
    pub fn queue_event<E: EventPayload>(
        &self,
        event: &E,
        attributes: &CloudEventAttributes,
    ) -> Result<PendingDelivery, ProducerError> {
        let topic = self.names.topic(E::TOPIC);
        let (key, payload) = (event.key(), event.encode_to_vec());
        self.queue(OutgoingRecord {
            topic: &topic,
            key: Some(key.as_bytes()),
            payload: Some(&payload),
            headers: attributes.to_kafka_headers(),
        })
    }

    /// [`queue_event`](Self::queue_event), then waits for the broker's
    /// acknowledgement.
    pub async fn send_event<E: EventPayload>(
        &self,
        event: &E,
        attributes: &CloudEventAttributes,
    ) -> Result<Delivery, ProducerError> {
        self.queue_event(event, attributes)?.acknowledged().await
    }

    /// Waits until every queued record is acknowledged or failed, up to
    /// `timeout`; for a clean shutdown.
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.current();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        if let Ok(Err(error)) = flushed {
            tracing::warn!(error = %error, "records still unacknowledged at shutdown");
        }
    }
}

/// A queued record whose acknowledgement is still to come.
pub struct PendingDelivery {
    topic: String,
    future: DeliveryFuture,
    /// Where to report the outcome, and of which producer.
    slot: Arc<ProducerSlot>,
    generation: u64,
    queued: Instant,
}

impl std::fmt::Debug for PendingDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingDelivery").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl PendingDelivery {
    /// Waits for the broker's answer.
    pub async fn acknowledged(self) -> Result<Delivery, ProducerError> {
        match self.future.await {
            Ok(Ok(delivery)) => {
                self.slot.delivered(&self.topic, delivery.partition);
                Ok(delivery)
            }
            Ok(Err((source, message))) => {
                if source == KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut) {
                    self.slot.timed_out(self.generation, &self.topic, message.partition(), self.queued).await;
                }
                Err(ProducerError::DeliverRecord { topic: self.topic, source })
            }
            // The producer was dropped with the record in its queue.
            Err(_canceled) => {
                Err(ProducerError::DeliverRecord { topic: self.topic, source: KafkaError::Canceled })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(brokers: &str, prefix: &str) -> KafkaArgs {
        KafkaArgs { name_prefix: prefix.to_owned(), ..KafkaArgs::new(brokers.to_owned()) }
    }

    #[test]
    fn producers_with_the_same_configuration_share_one_client_and_keep_their_own_names() {
        // Brokers no test uses: creating a producer does not connect.
        let first = EventProducer::new(&args("127.0.0.1:1", "one")).unwrap();
        let second = EventProducer::new(&args("127.0.0.1:1", "two")).unwrap();
        assert!(Arc::ptr_eq(&first.current(), &second.current()), "one librdkafka producer for both");
        assert_ne!(first.names(), second.names(), "each keeps its own topic names");
        let elsewhere = EventProducer::new(&args("127.0.0.1:2", "one")).unwrap();
        assert!(!Arc::ptr_eq(&first.current(), &elsewhere.current()), "other brokers, other producer");

        let weak = Arc::downgrade(&first.current());
        drop((first, second));
        assert_eq!(weak.strong_count(), 0, "the producer goes with its last user");
        let again = EventProducer::new(&args("127.0.0.1:1", "one")).unwrap();
        assert!(weak.upgrade().is_none() && Arc::strong_count(&again.current()) == 2, "a new one is made");
    }

    /// A slot for brokers no test uses (creating a producer does not
    /// connect), whose metadata check answers `shown`.
    fn slot(shown: LeaderShown) -> ProducerSlot {
        ProducerSlot::new(&args("127.0.0.1:1", "slot").client_config(), shown).unwrap()
    }

    #[tokio::test]
    async fn a_partition_timing_out_again_while_its_leader_is_shown_gets_a_new_producer_once() {
        let slot = slot(|_, _, _| true);
        let (generation, first) = slot.current();
        let queued = Instant::now();
        slot.timed_out(generation, "orders", 2, queued).await;
        assert_eq!(slot.current_generation(), 0, "a first timeout may be the brokers restarting");
        slot.timed_out(generation, "orders", 2, queued).await;
        assert_eq!(slot.current_generation(), 0, "records queued before the first timeout are of that round");
        slot.timed_out(generation, "orders", 3, Instant::now()).await;
        assert_eq!(slot.current_generation(), 0, "another partition counts on its own");

        slot.timed_out(generation, "orders", 2, Instant::now()).await;
        let (generation, second) = slot.current();
        assert_eq!(generation, 1, "a record queued after the first timeout timed out too: replaced");
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(slot.timing_out.lock().unwrap().is_empty(), "the new producer starts with a clean record");

        // Late reports of records of the old producer change nothing.
        slot.timed_out(0, "orders", 3, queued).await;
        slot.timed_out(0, "orders", 3, Instant::now()).await;
        assert_eq!(slot.current_generation(), 1, "one replacement per stuck producer");
    }

    #[tokio::test]
    async fn a_delivery_clears_its_partitions_timeouts_and_unanswered_metadata_replaces_nothing() {
        let slot = self::slot(|_, _, _| true);
        slot.timed_out(0, "orders", 2, Instant::now()).await;
        slot.delivered("orders", 2);
        slot.timed_out(0, "orders", 2, Instant::now()).await;
        assert_eq!(slot.current_generation(), 0, "a delivery in between: the partition moves");

        let away = self::slot(|_, _, _| false);
        away.timed_out(0, "orders", 2, Instant::now()).await;
        away.timed_out(0, "orders", 2, Instant::now()).await;
        away.timed_out(0, "orders", 2, Instant::now()).await;
        assert_eq!(away.current_generation(), 0, "no leader shown: the brokers are away, not the producer");
    }
}
