//! The idempotent consumer against the real Postgres and Kafka: duplicates
//! have one effect, poison and hopeless events go to the dead-letter topic
//! with their error, and consumption goes on behind them.
//!
//! The consumer under test is the shipping service's (it consumes the
//! orders topic); records are produced raw, so that tests control ids,
//! keys and headers exactly. Every record of a test shares one key, hence
//! one partition, so "the next event was processed" proves the earlier
//! ones were dealt with.
//!
//! The batching tests wrap the same handler in [`Batched`], which asks the
//! consumer for batches; a batch shows in Postgres as processed-event rows
//! written by one transaction (one `xmin`).

mod events_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context;
use commerce_platform::admin::Metrics;
use commerce_platform::events::cloudevents::{self, CloudEventAttributes};
use commerce_platform::events::consumer::{
    ConsumerSettings, DLQ_ATTEMPTS, DLQ_CONSUMER_GROUP, DLQ_ERROR, DLQ_ORIGINAL_OFFSET, DLQ_ORIGINAL_TOPIC,
    DLQ_REASON,
};
use commerce_platform::events::producer::OutgoingRecord;
use commerce_platform::events::{
    Batching, EventConsumer, EventHandler, EventMetrics, EventProducer, HandlerError, IncomingEvent,
    KafkaArgs, TopicNames,
};
use commerce_platform::readiness::Readiness;
use commerce_platform::trace_context;
use commerce_proto::events::v1::{OrderCancelled, OrderPlaced};
use commerce_testkit::migrated::TestDatabase;
use commerce_testkit::{
    EVENTUALLY, create_topics, drop_kafka_namespace, eventually, header, init_logging, kafka_args,
    kafka_brokers, read_topic, require_kafka, unique_prefix,
};
use commerce_topology::{Service, Topic, all_topics};
use events_support::service_migrator;
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message as _, OwnedHeaders};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::{PgPool, Postgres, Transaction};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The consuming service: shipping consumes orders only.
const SERVICE: Service = Service::Shipping;
/// The key of every record in a test.
const KEY: &str = "one-partition";
/// Orders whose handling always fails (retryably).
const HOPELESS: &str = "order-hopeless";
/// The consuming service's own table, created by its own migration.
const EFFECTS_TABLE: &str = "CREATE TABLE effects (order_id text PRIMARY KEY, count integer NOT NULL)";

/// Counts each order's effects in `effects`, and every call in `calls`.
#[derive(Debug, Default)]
struct CountingHandler {
    calls: Arc<AtomicU32>,
    hopeless_calls: Arc<AtomicU32>,
}

commerce_platform::event_handler!(CountingHandler {
    OrderPlaced => order_placed,
});

impl CountingHandler {
    async fn order_placed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        order: OrderPlaced,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let current = trace_context::current().expect("the handler runs inside a span");
        assert_eq!(Some(&current), event.trace_context(), "the handler runs inside the event's span");
        if order.order_id == HOPELESS {
            self.hopeless_calls.fetch_add(1, Ordering::SeqCst);
            return Err(HandlerError::retryable("the warehouse system is down"));
        }
        sqlx::query(
            "INSERT INTO effects (order_id, count) VALUES ($1, 1) \
             ON CONFLICT (order_id) DO UPDATE SET count = effects.count + 1",
        )
        .bind(&order.order_id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// `H`, asking the consumer for batches.
struct Batched<H>(H, Batching);

#[commerce_platform::events::__private::async_trait]
impl<H: EventHandler> EventHandler for Batched<H> {
    fn handles(&self, event_type: &str) -> bool {
        self.0.handles(event_type)
    }

    fn batching(&self) -> Batching {
        self.1
    }

    async fn handle(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        self.0.handle(tx, event).await
    }
}

/// The batches of the tests: up to 64 events, gathered for up to 300 ms.
const BATCHES: Batching = Batching { max_events: 64, linger: Duration::from_millis(300) };

/// Processed-event rows and the transactions that wrote them.
async fn processed_rows_and_transactions(pool: &PgPool) -> anyhow::Result<(i64, i64)> {
    Ok(sqlx::query_as("SELECT count(*), count(DISTINCT xmin::text) FROM commerce_platform.processed_events")
        .fetch_one(pool)
        .await?)
}

/// One test's world: database, topics, producer, running consumer.
struct Harness {
    database: TestDatabase,
    names: TopicNames,
    producer: EventProducer,
    calls: Arc<AtomicU32>,
    hopeless_calls: Arc<AtomicU32>,
    metrics: Metrics,
    shutdown: CancellationToken,
    consumer: JoinHandle<Result<(), commerce_platform::events::ConsumerError>>,
}

impl Harness {
    async fn start(max_attempts: u32) -> anyhow::Result<Self> {
        let (database, prefix) = Self::prepare().await?;
        Self::start_consumer(database, &prefix, max_attempts).await
    }

    /// A new database with the effects table, and the test's topics under a
    /// new prefix.
    async fn prepare() -> anyhow::Result<(TestDatabase, String)> {
        init_logging();
        require_kafka().await?;
        let database = TestDatabase::create("platform", &service_migrator(EFFECTS_TABLE).await?).await?;
        let prefix = unique_prefix();
        let names = TopicNames::new(&prefix);
        let dead_letters = all_topics()
            .into_iter()
            .find(|spec| spec.name == SERVICE.dead_letter_topic())
            .context("the catalog has the service's dead-letter topic")?;
        create_topics(&names, &[Topic::Orders.spec(), dead_letters]).await?;
        Ok((database, prefix))
    }

    /// Runs the service's consumer on `database` and the topics under `prefix`.
    async fn start_consumer(database: TestDatabase, prefix: &str, max_attempts: u32) -> anyhow::Result<Self> {
        Self::start_batching_consumer(database, prefix, max_attempts, Batching::ONE_BY_ONE).await
    }

    /// Runs the service's consumer, in batches as `batching` says.
    async fn start_batching_consumer(
        database: TestDatabase,
        prefix: &str,
        max_attempts: u32,
        batching: Batching,
    ) -> anyhow::Result<Self> {
        let names = TopicNames::new(prefix);
        let args = kafka_args(prefix);
        let producer = EventProducer::new(&args)?;
        let handler = CountingHandler::default();
        let (calls, hopeless_calls) = (handler.calls.clone(), handler.hopeless_calls.clone());
        let readiness = Readiness::new();
        let consumer = EventConsumer::new(
            SERVICE,
            &args,
            database.pool.clone(),
            producer.clone(),
            Batched(handler, batching),
            readiness.register("kafka-consumer"),
        )?
        .with_settings(ConsumerSettings { max_attempts, retry_backoff: Duration::from_millis(20) });
        let metrics = Metrics::new("consumer-test");
        let consumer = consumer.with_metrics(EventMetrics::register(&metrics));
        assert_eq!(consumer.group(), format!("{prefix}commerce-shipping"));
        let shutdown = CancellationToken::new();
        let consumer = tokio::spawn(consumer.run(shutdown.clone()));
        Ok(Self { database, names, producer, calls, hopeless_calls, metrics, shutdown, consumer })
    }

    fn orders_topic(&self) -> String {
        self.names.topic(Topic::Orders)
    }

    fn dead_letter_topic(&self) -> String {
        self.names.dead_letter_topic(SERVICE)
    }

    /// Produces one raw record on the orders topic; returns its offset.
    async fn produce(&self, headers: OwnedHeaders, payload: &[u8]) -> anyhow::Result<i64> {
        let topic = self.orders_topic();
        let delivery = self
            .producer
            .send(OutgoingRecord {
                topic: &topic,
                key: Some(KEY.as_bytes()),
                payload: Some(payload),
                headers,
            })
            .await?;
        Ok(delivery.offset)
    }

    /// Produces a well-formed `OrderPlaced` with the given attributes.
    async fn produce_event(&self, attributes: &CloudEventAttributes, order_id: &str) -> anyhow::Result<i64> {
        let payload = OrderPlaced { order_id: order_id.to_owned(), ..OrderPlaced::default() }.encode_to_vec();
        self.produce(attributes.to_kafka_headers(), &payload).await
    }

    async fn effect_count(&self, order_id: &str) -> anyhow::Result<Option<i32>> {
        Ok(sqlx::query_scalar("SELECT count FROM effects WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(&self.database.pool)
            .await?)
    }

    async fn wait_for_effect(&self, order_id: &str) -> anyhow::Result<()> {
        let pool: &PgPool = &self.database.pool;
        eventually(&format!("{order_id} to have an effect"), || async move {
            let count: Option<i32> = sqlx::query_scalar("SELECT count FROM effects WHERE order_id = $1")
                .bind(order_id)
                .fetch_optional(pool)
                .await?;
            Ok(count.is_some().then_some(()))
        })
        .await
    }

    /// Stops the consumer, which must stop cleanly (and commit).
    async fn stop(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(EVENTUALLY, &mut self.consumer)
            .await
            .context("the consumer does not stop")???;
        Ok(())
    }

    /// Stops the consumer and deletes the test's database and topics.
    async fn finish(mut self) -> anyhow::Result<()> {
        if !self.consumer.is_finished() {
            self.stop().await?;
        }
        self.database.drop_database().await?;
        drop_kafka_namespace(self.names.prefix()).await;
        Ok(())
    }
}

/// The group's committed offsets on `topic`, for partitions that have one.
fn committed_offsets(group: &str, topic: &str) -> anyhow::Result<Vec<i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut partitions = TopicPartitionList::new();
    for partition in metadata.topics().first().context("topic metadata")?.partitions() {
        partitions.add_partition(topic, partition.id());
    }
    let committed = consumer.committed_offsets(partitions, Duration::from_secs(10))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|element| match element.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        })
        .collect())
}

/// Attributes of an `OrderPlaced` for `order_id`, in a new trace.
fn attributes_for(order_id: &str) -> CloudEventAttributes {
    CloudEventAttributes::for_event(&OrderPlaced { order_id: order_id.to_owned(), ..OrderPlaced::default() })
}

#[tokio::test]
async fn the_same_event_delivered_twice_has_one_effect() -> anyhow::Result<()> {
    let harness = Harness::start(3).await?;
    let duplicate = attributes_for("order-twice");
    harness.produce_event(&duplicate, "order-twice").await?;
    harness.produce_event(&duplicate, "order-twice").await?;
    harness.produce_event(&attributes_for("order-after"), "order-after").await?;

    harness.wait_for_effect("order-after").await?;
    assert_eq!(harness.effect_count("order-twice").await?, Some(1), "the redelivery changed nothing");
    assert_eq!(harness.calls.load(Ordering::SeqCst), 2, "the duplicate never reached the handler");
    let processed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM commerce_platform.processed_events WHERE event_id = $1")
            .bind(duplicate.id)
            .fetch_one(&harness.database.pool)
            .await?;
    assert_eq!(processed, 1);
    assert!(read_topic(&harness.dead_letter_topic()).await?.is_empty(), "nothing was dead-lettered");
    eventually("the metrics to count two handled events and one duplicate", || async {
        let exposition = harness.metrics.encode()?;
        Ok([
            r#"commerce_events_consumed_total{service="shipping",outcome="handled"} 2"#,
            r#"commerce_events_consumed_total{service="shipping",outcome="duplicate"} 1"#,
        ]
        .iter()
        .all(|line| exposition.contains(line))
        .then_some(()))
    })
    .await?;
    // Once the offsets are committed (every second) and the statistics
    // come (every 5 s), the records' partition shows no lag.
    let lag_prefix =
        format!(r#"commerce_events_consumer_lag{{service="shipping",topic="{}""#, harness.orders_topic());
    eventually("the orders partition to show a lag of 0", || async {
        let exposition = harness.metrics.encode()?;
        let lags: Vec<&str> = exposition.lines().filter(|line| line.starts_with(&lag_prefix)).collect();
        Ok((!lags.is_empty() && lags.iter().all(|line| line.ends_with(" 0"))).then_some(()))
    })
    .await?;

    // A clean stop commits the offsets of everything processed.
    let mut harness = harness;
    harness.stop().await?;
    let (group, topic) = (harness.names.consumer_group(SERVICE), harness.orders_topic());
    let committed = tokio::task::spawn_blocking(move || committed_offsets(&group, &topic)).await??;
    assert_eq!(committed, vec![3], "the group's committed position is past all three records");
    harness.finish().await
}

#[tokio::test]
async fn a_poison_event_lands_on_the_dead_letter_topic_and_the_next_event_is_still_processed()
-> anyhow::Result<()> {
    let harness = Harness::start(3).await?;
    // Headers without ce_id: not one of our events.
    let mut headers = attributes_for("order-no-id").to_header_pairs();
    headers.retain(|(name, _)| *name != cloudevents::ID);
    let no_id = cloudevents::headers_from_pairs(headers.iter().map(|(k, v)| (*k, v.as_str())));
    let poison_offset = harness.produce(no_id, b"not even protobuf").await?;
    // Valid headers, a payload that is not an OrderPlaced.
    let undecodable = attributes_for("order-garbage");
    let undecodable_offset = harness.produce(undecodable.to_kafka_headers(), &[0xff, 0xff, 0xff]).await?;
    harness.produce_event(&attributes_for("order-next"), "order-next").await?;

    harness.wait_for_effect("order-next").await?;
    let dead_letters = read_topic(&harness.dead_letter_topic()).await?;
    assert_eq!(dead_letters.len(), 2, "both poison records were parked");

    let poison = &dead_letters[0];
    assert_eq!(poison.payload(), Some(&b"not even protobuf"[..]), "the original payload is kept");
    assert_eq!(poison.key(), Some(KEY.as_bytes()));
    assert_eq!(header(poison, DLQ_REASON), Some("poison"));
    let error = header(poison, DLQ_ERROR).context("error header")?;
    assert!(error.contains("ce_id"), "the error names the missing header: {error}");
    assert_eq!(header(poison, DLQ_ORIGINAL_TOPIC), Some(harness.orders_topic().as_str()));
    assert_eq!(header(poison, DLQ_ORIGINAL_OFFSET), Some(poison_offset.to_string().as_str()));
    assert_eq!(header(poison, DLQ_ATTEMPTS), Some("0"));
    assert_eq!(header(poison, DLQ_CONSUMER_GROUP), Some(harness.names.consumer_group(SERVICE).as_str()));
    assert_eq!(
        header(poison, cloudevents::TYPE),
        Some("commerce.events.v1.OrderPlaced"),
        "original headers kept"
    );

    let garbage = &dead_letters[1];
    assert_eq!(header(garbage, DLQ_REASON), Some("permanent"), "an undecodable payload is not retried");
    assert_eq!(header(garbage, DLQ_ATTEMPTS), Some("1"));
    assert_eq!(header(garbage, DLQ_ORIGINAL_OFFSET), Some(undecodable_offset.to_string().as_str()));
    assert_eq!(header(garbage, cloudevents::ID), Some(undecodable.id.to_string().as_str()));
    let error = header(garbage, DLQ_ERROR).context("error header")?;
    assert!(error.contains("cannot decode the payload"), "{error}");
    harness.finish().await
}

#[tokio::test]
async fn a_handler_that_keeps_failing_goes_to_the_dead_letter_topic_after_the_configured_attempts()
-> anyhow::Result<()> {
    let harness = Harness::start(3).await?;
    let hopeless = attributes_for(HOPELESS);
    harness.produce_event(&hopeless, HOPELESS).await?;
    harness.produce_event(&attributes_for("order-next"), "order-next").await?;

    harness.wait_for_effect("order-next").await?;
    assert_eq!(harness.hopeless_calls.load(Ordering::SeqCst), 3, "exactly the configured attempts");
    let dead_letters = read_topic(&harness.dead_letter_topic()).await?;
    assert_eq!(dead_letters.len(), 1);
    let parked = &dead_letters[0];
    assert_eq!(header(parked, DLQ_REASON), Some("retries_exhausted"));
    assert_eq!(header(parked, DLQ_ATTEMPTS), Some("3"));
    assert_eq!(header(parked, cloudevents::ID), Some(hopeless.id.to_string().as_str()));
    let error = header(parked, DLQ_ERROR).context("error header")?;
    assert!(error.contains("the warehouse system is down"), "{error}");
    assert_eq!(harness.effect_count(HOPELESS).await?, None, "failed attempts left no effect");
    let processed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM commerce_platform.processed_events WHERE event_id = $1")
            .bind(hopeless.id)
            .fetch_one(&harness.database.pool)
            .await?;
    assert_eq!(processed, 0, "a dead-lettered event stays replayable");
    harness.finish().await
}

/// Where the killed-consumer helper process finds the test's database.
const KILLED_HELPER_DATABASE_URL: &str = "COMMERCE_TEST_KILLED_CONSUMER_DATABASE_URL";
/// ... and the test's topic prefix (hence the consumer group).
const KILLED_HELPER_PREFIX: &str = "COMMERCE_TEST_KILLED_CONSUMER_PREFIX";
/// ... the orders it handles before it dies, comma separated.
const KILLED_HELPER_ORDERS: &str = "COMMERCE_TEST_KILLED_CONSUMER_ORDERS";
/// ... and its offset commit interval in seconds.
const KILLED_HELPER_COMMIT_SECONDS: &str = "COMMERCE_TEST_KILLED_CONSUMER_COMMIT_SECONDS";
/// ... and whether it handles events in batches (`BATCHES`), if set.
const KILLED_HELPER_BATCHES: &str = "COMMERCE_TEST_KILLED_CONSUMER_BATCHES";

/// Helper process of the tests that kill a consumer: joins the group,
/// handles the orders it is told, then dies without leaving the group or
/// committing, as a process that is killed or loses its node does.
#[tokio::test]
#[ignore = "helper process, started by the tests that kill a consumer (run_killed_consumer)"]
async fn killed_consumer_helper_handles_its_orders_then_aborts() {
    let url = std::env::var(KILLED_HELPER_DATABASE_URL).expect("run only by a killing test");
    let prefix = std::env::var(KILLED_HELPER_PREFIX).expect("run only by a killing test");
    let orders = std::env::var(KILLED_HELPER_ORDERS).expect("run only by a killing test");
    let commit_seconds: u64 = std::env::var(KILLED_HELPER_COMMIT_SECONDS)
        .expect("run only by a killing test")
        .parse()
        .expect("seconds");
    init_logging();
    let pool = PgPool::connect(&url).await.expect("the helper reaches the database");
    let args = KafkaArgs { commit_interval: Duration::from_secs(commit_seconds), ..kafka_args(&prefix) };
    let producer = EventProducer::new(&args).expect("producer");
    let batching =
        if std::env::var_os(KILLED_HELPER_BATCHES).is_some() { BATCHES } else { Batching::ONE_BY_ONE };
    let consumer = EventConsumer::new(
        SERVICE,
        &args,
        pool.clone(),
        producer,
        Batched(CountingHandler::default(), batching),
        Readiness::new().register("kafka-consumer"),
    )
    .expect("consumer");
    let _running = tokio::spawn(consumer.run(CancellationToken::new()));
    let orders: Vec<String> = orders.split(',').map(str::to_owned).collect();
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        let handled: i64 = sqlx::query_scalar("SELECT count(*) FROM effects WHERE order_id = ANY($1)")
            .bind(&orders)
            .fetch_one(&pool)
            .await
            .expect("query effects");
        if handled == orders.len() as i64 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the helper handled {handled} of {orders:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // No shutdown, no commit, no LeaveGroup, no destructor: the coordinator
    // only learns of the death when heartbeats stop.
    std::process::abort();
}

/// Runs the helper on `database` and the topics under `prefix` until it has
/// handled `orders` and died by SIGABRT; it commits offsets every
/// `commit_interval`, and handles events in batches if `batches`.
async fn run_killed_consumer(
    database: &TestDatabase,
    prefix: &str,
    orders: &[String],
    commit_interval: Duration,
    batches: bool,
    produce: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    use std::os::unix::process::ExitStatusExt as _;
    let mut helper = tokio::process::Command::new(std::env::current_exe()?);
    if batches {
        helper.env(KILLED_HELPER_BATCHES, "1");
    }
    let helper = helper
        .args([
            "--exact",
            "killed_consumer_helper_handles_its_orders_then_aborts",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(KILLED_HELPER_DATABASE_URL, &database.url)
        .env(KILLED_HELPER_PREFIX, prefix)
        .env(KILLED_HELPER_ORDERS, orders.join(","))
        .env(KILLED_HELPER_COMMIT_SECONDS, commit_interval.as_secs().to_string())
        .kill_on_drop(true)
        .output();
    let (output, produced) = tokio::join!(tokio::time::timeout(EVENTUALLY, helper), produce);
    produced?;
    let output = output.context("the helper process hangs")??;
    anyhow::ensure!(
        output.status.signal() == Some(6),
        "the helper must die by SIGABRT, got {:?}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Sends an `OrderPlaced` for `order_id` keyed by the order, so that orders
/// spread over the topic's partitions.
async fn produce_keyed(producer: &EventProducer, topic: &str, order_id: &str) -> anyhow::Result<()> {
    let payload = OrderPlaced { order_id: order_id.to_owned(), ..OrderPlaced::default() }.encode_to_vec();
    producer
        .send(OutgoingRecord {
            topic,
            key: Some(order_id.as_bytes()),
            payload: Some(&payload),
            headers: attributes_for(order_id).to_kafka_headers(),
        })
        .await?;
    Ok(())
}

/// A consumer that dies without leaving its group holds its partitions until
/// the session timeout (`--kafka-session-timeout`, 10 s by default) expires;
/// then a new member gets them. With librdkafka's default of 45 s this takes
/// more than 45 s, so the bound below tells the two apart.
#[tokio::test]
async fn a_killed_consumers_partitions_move_to_a_new_member_within_the_session_timeout() -> anyhow::Result<()>
{
    let (database, prefix) = Harness::prepare().await?;
    let producer = EventProducer::new(&kafka_args(&prefix))?;
    let topic = TopicNames::new(&prefix).topic(Topic::Orders);
    let first = ["order-first".to_owned()];
    run_killed_consumer(&database, &prefix, &first, Duration::from_secs(1), false, async {
        let payload =
            OrderPlaced { order_id: "order-first".to_owned(), ..OrderPlaced::default() }.encode_to_vec();
        producer
            .send(OutgoingRecord {
                topic: &topic,
                key: Some(KEY.as_bytes()),
                payload: Some(&payload),
                headers: attributes_for("order-first").to_kafka_headers(),
            })
            .await?;
        Ok(())
    })
    .await?;

    // A new member joins the same group and must get the partition once the
    // dead one's session has expired.
    let killed_at = std::time::Instant::now();
    let harness = Harness::start_consumer(database, &prefix, 3).await?;
    harness.produce_event(&attributes_for("order-second"), "order-second").await?;
    harness.wait_for_effect("order-second").await?;
    let took = killed_at.elapsed();
    eprintln!("a new member handled the next event {took:?} after the old one was killed");
    assert_eq!(harness.effect_count("order-first").await?, Some(1), "order-first was handled once");
    let bound = Duration::from_secs(40);
    anyhow::ensure!(took < bound, "the partition stood still for {took:?} (bound {bound:?})");
    harness.finish().await
}

#[tokio::test]
async fn an_event_type_the_handler_does_not_act_on_is_skipped_without_a_transaction() -> anyhow::Result<()> {
    let mut harness = Harness::start(3).await?;
    let cancelled = OrderCancelled { order_id: "order-cancelled".to_owned(), ..OrderCancelled::default() };
    let ignored = CloudEventAttributes::for_event(&cancelled);
    harness.produce(ignored.to_kafka_headers(), &cancelled.encode_to_vec()).await?;
    harness.produce_event(&attributes_for("order-after"), "order-after").await?;

    harness.wait_for_effect("order-after").await?;
    assert_eq!(harness.calls.load(Ordering::SeqCst), 1, "only the OrderPlaced reached the handler");
    let processed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM commerce_platform.processed_events WHERE event_id = $1")
            .bind(ignored.id)
            .fetch_one(&harness.database.pool)
            .await?;
    assert_eq!(processed, 0, "no transaction recorded the ignored event");
    eventually("the metrics to count one ignored and one handled event", || async {
        let exposition = harness.metrics.encode()?;
        Ok([
            r#"commerce_events_consumed_total{service="shipping",outcome="handled"} 1"#,
            r#"commerce_events_consumed_total{service="shipping",outcome="ignored"} 1"#,
        ]
        .iter()
        .all(|line| exposition.contains(line))
        .then_some(()))
    })
    .await?;
    harness.stop().await?;
    let (group, topic) = (harness.names.consumer_group(SERVICE), harness.orders_topic());
    let committed = tokio::task::spawn_blocking(move || committed_offsets(&group, &topic)).await??;
    assert_eq!(committed, vec![2], "the ignored record's offset is committed with the next one");
    harness.finish().await
}

/// Offsets are committed periodically, not per record: a consumer killed
/// between two commits has handled records whose offsets the group never
/// saw. The next member gets them all again, and the processed-events table
/// turns every one into a skipped duplicate: nothing lost, nothing applied
/// twice, across partitions handled at once.
#[tokio::test]
async fn a_consumer_killed_before_its_periodic_commit_is_redelivered_and_nothing_is_applied_twice()
-> anyhow::Result<()> {
    killed_before_its_commit(false).await
}

/// The same with batches: the killed consumer and the next member handle
/// events many to a transaction, and still nothing is lost or applied
/// twice.
#[tokio::test]
async fn a_batching_consumer_killed_before_its_periodic_commit_is_redelivered_and_nothing_is_applied_twice()
-> anyhow::Result<()> {
    killed_before_its_commit(true).await
}

async fn killed_before_its_commit(batches: bool) -> anyhow::Result<()> {
    const ORDERS: usize = 24;
    let (database, prefix) = Harness::prepare().await?;
    let producer = EventProducer::new(&kafka_args(&prefix))?;
    let names = TopicNames::new(&prefix);
    let topic = names.topic(Topic::Orders);
    let orders: Vec<String> = (0..ORDERS).map(|index| format!("order-batch-{index}")).collect();
    // The helper commits once an hour: it dies with nothing committed.
    run_killed_consumer(&database, &prefix, &orders, Duration::from_secs(3600), batches, async {
        for order in &orders {
            produce_keyed(&producer, &topic, order).await?;
        }
        Ok(())
    })
    .await?;
    let (group, orders_topic) = (names.consumer_group(SERVICE), topic.clone());
    let committed = tokio::task::spawn_blocking(move || committed_offsets(&group, &orders_topic)).await??;
    assert_eq!(committed, Vec::<i64>::new(), "the killed consumer committed nothing");
    let partitions: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT kafka_partition) FROM commerce_platform.processed_events")
            .fetch_one(&database.pool)
            .await?;
    assert!(partitions > 1, "the orders spread over several partitions ({partitions})");
    let (rows, transactions) = processed_rows_and_transactions(&database.pool).await?;
    eprintln!("the killed consumer recorded {rows} events in {transactions} transactions");
    assert_eq!(rows, ORDERS as i64);
    if batches {
        assert!(transactions < rows, "the events were handled in batches: {transactions} transactions");
    } else {
        assert_eq!(transactions, rows, "one transaction per event");
    }

    let batching = if batches { BATCHES } else { Batching::ONE_BY_ONE };
    let mut harness = Harness::start_batching_consumer(database, &prefix, 3, batching).await?;
    let expected =
        format!(r#"commerce_events_consumed_total{{service="shipping",outcome="duplicate"}} {ORDERS}"#);
    eventually("the new member to skip every redelivered event as a duplicate", || async {
        Ok(harness.metrics.encode()?.contains(&expected).then_some(()))
    })
    .await?;
    assert_eq!(harness.calls.load(Ordering::SeqCst), 0, "no redelivered event reached the handler");
    let counts: Vec<i32> = sqlx::query_scalar("SELECT count FROM effects ORDER BY order_id")
        .fetch_all(&harness.database.pool)
        .await?;
    assert_eq!(counts, vec![1; ORDERS], "every order has exactly one effect");
    harness.stop().await?;
    let (group, topic) = (harness.names.consumer_group(SERVICE), harness.orders_topic());
    let committed: i64 =
        tokio::task::spawn_blocking(move || committed_offsets(&group, &topic)).await??.iter().sum();
    assert_eq!(committed, ORDERS as i64, "the new member committed past every record");
    harness.finish().await
}

/// Events queued for a batching handler share one transaction; when one of
/// a batch fails, the batch rolls back and its events are handled one by
/// one, so the failing one alone is retried and dead-lettered and the
/// others each have exactly one effect.
#[tokio::test]
async fn a_batch_with_a_failing_event_is_handled_one_by_one_and_only_that_event_is_dead_lettered()
-> anyhow::Result<()> {
    let (database, prefix) = Harness::prepare().await?;
    let harness = Harness::start_batching_consumer(database, &prefix, 3, BATCHES).await?;
    // A run of good events: batched.
    let first: Vec<String> = (0..10).map(|index| format!("order-first-{index}")).collect();
    for order in &first {
        harness.produce_event(&attributes_for(order), order).await?;
    }
    harness.wait_for_effect("order-first-9").await?;
    let (rows, transactions) = processed_rows_and_transactions(&harness.database.pool).await?;
    eprintln!("ten queued events were recorded in {transactions} transactions");
    assert_eq!(rows, 10);
    assert!(transactions < rows, "the queued events were handled in batches: {transactions} transactions");
    assert_eq!(harness.calls.load(Ordering::SeqCst), 10, "each event reached the handler once");

    // A run with a hopeless event in the middle.
    let second: Vec<String> = (0..6).map(|index| format!("order-second-{index}")).collect();
    let hopeless = attributes_for(HOPELESS);
    for (index, order) in second.iter().enumerate() {
        if index == 3 {
            harness.produce_event(&hopeless, HOPELESS).await?;
        }
        harness.produce_event(&attributes_for(order), order).await?;
    }
    harness.wait_for_effect("order-second-5").await?;
    for order in first.iter().chain(&second) {
        assert_eq!(harness.effect_count(order).await?, Some(1), "{order} has exactly one effect");
    }
    assert_eq!(harness.effect_count(HOPELESS).await?, None, "failed attempts left no effect");
    // The batch's attempt, then the configured three alone.
    let hopeless_calls = harness.hopeless_calls.load(Ordering::SeqCst);
    assert!(
        (3..=4).contains(&hopeless_calls),
        "the hopeless event was tried {hopeless_calls} times (a batch attempt, then three alone)"
    );
    let dead_letters = read_topic(&harness.dead_letter_topic()).await?;
    assert_eq!(dead_letters.len(), 1, "only the hopeless event was dead-lettered");
    assert_eq!(header(&dead_letters[0], cloudevents::ID), Some(hopeless.id.to_string().as_str()));
    assert_eq!(header(&dead_letters[0], DLQ_ATTEMPTS), Some("3"), "its attempts alone");
    let (rows, _) = processed_rows_and_transactions(&harness.database.pool).await?;
    assert_eq!(rows, 16, "every good event is recorded as processed, the hopeless one is not");
    harness.finish().await
}
