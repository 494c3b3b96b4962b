//! The idempotent Kafka producer every service publishes through (the outbox
//! relay, and consumers writing dead letters).
//!
//! Idempotence (`enable.idempotence=true`, which implies `acks=all` and at
//! most five requests in flight) makes the broker drop the duplicates that
//! librdkafka's own retries would otherwise write, and keeps the records of
//! one partition in the order they were sent even across retries: the
//! property that keeps one aggregate's events in order.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::future_producer::{Delivery, DeliveryFuture};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::kafka::{KafkaArgs, TopicNames, TracingContext, millis, spawn_broker_watch};
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

/// The producers alive in this process, by their complete librdkafka
/// configuration. Services run in one process (`commerce serve all`, `local
/// up`) with the same brokers and properties share one producer instead of
/// one each: every librdkafka client has its own threads, connections and
/// buffers. Measured on the one-process shop of ten services (`local up`,
/// 15 s after start, twice each): 69.8-72.9 MiB and 72 threads with a
/// producer per service, 57.4-58.3 MiB and 44 threads with one. Records stay independent
/// (idempotence numbers them per partition, and each service awaits its
/// own acknowledgements); what is shared is the connection and its fate, as
/// the process already is. A producer goes when its last user drops it.
static PRODUCERS: LazyLock<Mutex<Vec<Registered>>> = LazyLock::new(|| Mutex::new(Vec::new()));

/// A producer's complete librdkafka configuration, the registry's key.
type ProducerConfig = BTreeMap<String, String>;
/// One entry of [`PRODUCERS`]: a configuration and its producer while alive.
type Registered = (ProducerConfig, Weak<FutureProducer<TracingContext>>);

/// The producer of this process with exactly `config`, created if none is.
fn shared_producer(config: &ClientConfig) -> Result<SharedProducer, ProducerError> {
    let key: ProducerConfig =
        config.config_map().into_iter().map(|(name, value)| (name.to_owned(), value.to_owned())).collect();
    let mut producers = PRODUCERS.lock().unwrap_or_else(PoisonError::into_inner);
    producers.retain(|(_, producer)| producer.strong_count() > 0);
    if let Some(existing) = producers.iter().filter(|(same, _)| *same == key).find_map(|(_, p)| p.upgrade()) {
        return Ok(existing);
    }
    let producer: SharedProducer =
        Arc::new(config.create_with_context(TracingContext).map_err(ProducerError::CreateProducer)?);
    producers.push((key, Arc::downgrade(&producer)));
    Ok(producer)
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
    inner: Arc<FutureProducer<TracingContext>>,
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
        Ok(Self { inner: shared_producer(&config)?, names: args.names() })
    }

    /// The naming of topics this producer publishes under.
    pub fn names(&self) -> &TopicNames {
        &self.names
    }

    /// The librdkafka producer, for what this wrapper does not offer.
    pub fn inner(&self) -> &FutureProducer<TracingContext> {
        &self.inner
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
            self.inner.clone(),
            |producer| producer.client(),
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
        match self.inner.send_result(future_record) {
            Ok(future) => Ok(PendingDelivery { topic, future }),
            Err((source, _record)) => Err(ProducerError::QueueRecord { topic, source }),
        }
    }

    /// Produces one record and waits for the broker's acknowledgement.
    pub async fn send(&self, record: OutgoingRecord<'_>) -> Result<Delivery, ProducerError> {
        self.queue(record)?.acknowledged().await
    }

    /// Waits until every queued record is acknowledged or failed, up to
    /// `timeout`; for a clean shutdown.
    pub async fn flush(&self, timeout: Duration) {
        let inner = self.inner.clone();
        let flushed = tokio::task::spawn_blocking(move || inner.flush(timeout)).await;
        if let Ok(Err(error)) = flushed {
            tracing::warn!(error = %error, "records still unacknowledged at shutdown");
        }
    }
}

/// A queued record whose acknowledgement is still to come.
pub struct PendingDelivery {
    topic: String,
    future: DeliveryFuture,
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
            Ok(Ok(delivery)) => Ok(delivery),
            Ok(Err((source, _message))) => Err(ProducerError::DeliverRecord { topic: self.topic, source }),
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
        assert!(Arc::ptr_eq(&first.inner, &second.inner), "one librdkafka producer for both");
        assert_ne!(first.names(), second.names(), "each keeps its own topic names");
        let elsewhere = EventProducer::new(&args("127.0.0.1:2", "one")).unwrap();
        assert!(!Arc::ptr_eq(&first.inner, &elsewhere.inner), "other brokers, other producer");

        let weak = Arc::downgrade(&first.inner);
        drop((first, second));
        assert_eq!(weak.strong_count(), 0, "the producer goes with its last user");
        let again = EventProducer::new(&args("127.0.0.1:1", "one")).unwrap();
        assert!(weak.upgrade().is_none() && Arc::strong_count(&again.inner) == 1, "a new one is made");
    }
}
