//! The transactional outbox against the real Postgres and Kafka: what
//! commits is published even across a crash, what rolls back never is,
//! only one relay per database publishes, and the platform's migrations
//! live beside a service's own.

mod events_support;

use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use commerce_platform::admin::Metrics;
use commerce_platform::db::{self, DatabaseArgs};
use commerce_platform::events::cloudevents::{self, CloudEventAttributes};
use commerce_platform::events::outbox::{RELAY_LOCK_KEY, RelaySettings};
use commerce_platform::events::{
    EventMetrics, EventPayload, EventProducer, KafkaArgs, OutboxRelay, TopicNames, enqueue,
};
use commerce_platform::readiness::Readiness;
use commerce_platform::trace_context::{self, TRACEPARENT};
use commerce_proto::events::v1::OrderPlaced;
use commerce_testkit::migrated::TestDatabase;
use commerce_testkit::{
    EVENTUALLY, create_topics, drop_kafka_namespace, eventually, header, init_logging, kafka_args,
    read_topic, require_kafka, unique_prefix,
};
use commerce_topology::{Service, Topic};
use events_support::service_migrator;
use prost::Message as _;
use rdkafka::message::Message as _;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

/// Set (to the database URL) only in the helper process of
/// [`an_event_committed_before_a_crash_is_published_by_a_later_relay`].
const CRASH_HELPER_DATABASE_URL: &str = "COMMERCE_TEST_CRASH_HELPER_DATABASE_URL";
/// The order id the helper writes.
const CRASH_HELPER_ORDER_ID: &str = "COMMERCE_TEST_CRASH_HELPER_ORDER_ID";

/// The test service's own table, created by its own migration.
const SERVICE_MIGRATION: &str = "CREATE TABLE orders (id text PRIMARY KEY, status text NOT NULL);";

fn order_placed(order_id: &str) -> OrderPlaced {
    OrderPlaced {
        order_id: order_id.to_owned(),
        user_id: "user-1".to_owned(),
        occurred_at: Some(prost_types::Timestamp { seconds: 1_750_000_000, nanos: 0 }),
        ..OrderPlaced::default()
    }
}

/// A database with the platform's tables and the test service's `orders`
/// table, installed through [`db::run_migrations`].
async fn service_database() -> anyhow::Result<TestDatabase> {
    TestDatabase::create("platform", &service_migrator(SERVICE_MIGRATION).await?).await
}

/// Stores an order and its event in one transaction, as a service does.
async fn place_order(pool: &PgPool, order_id: &str) -> anyhow::Result<Uuid> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO orders (id, status) VALUES ($1, 'PENDING')")
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
    let event_id = enqueue(&mut tx, &order_placed(order_id)).await?;
    tx.commit().await?;
    Ok(event_id)
}

fn start_relay(pool: &PgPool, prefix: &str, shutdown: &CancellationToken) -> anyhow::Result<JoinHandle<()>> {
    let producer = EventProducer::new(&kafka_args(prefix))?;
    let relay = OutboxRelay::new(pool.clone(), producer).with_settings(RelaySettings {
        standby_interval: Duration::from_millis(200),
        ..RelaySettings::default()
    });
    Ok(tokio::spawn(relay.run(shutdown.clone())))
}

async fn published_at_is_set(pool: &PgPool, event_id: Uuid) -> anyhow::Result<bool> {
    let published: Option<bool> =
        sqlx::query_scalar("SELECT published_at IS NOT NULL FROM commerce_platform.outbox WHERE id = $1")
            .bind(event_id)
            .fetch_optional(pool)
            .await?;
    Ok(published == Some(true))
}

/// Not a test: the helper process of
/// [`an_event_committed_before_a_crash_is_published_by_a_later_relay`]. It
/// commits an order and its event, prints the event id and trace id, and
/// aborts before any relay could run.
#[tokio::test]
#[ignore = "helper process, started by an_event_committed_before_a_crash_is_published_by_a_later_relay"]
async fn crash_helper_commits_an_order_then_aborts() {
    let url = std::env::var(CRASH_HELPER_DATABASE_URL).expect("run only by the crash test");
    let order_id = std::env::var(CRASH_HELPER_ORDER_ID).expect("run only by the crash test");
    let readiness = Readiness::new();
    let check = readiness.register(db::READINESS_CHECK);
    let pool = db::connect_with_retry(&DatabaseArgs::new(url), &check, &CancellationToken::new())
        .await
        .expect("the helper reaches the database");
    init_logging();
    let span = tracing::info_span!("placing");
    let trace = trace_context::start(&span, None).expect("an OpenTelemetry span");
    let event_id = place_order(&pool, &order_id).instrument(span).await.expect("the order commits");
    println!("event_id={event_id} trace_id={}", trace.trace_id());
    use std::io::Write as _;
    std::io::stdout().flush().expect("stdout");
    // No destructor, no flush of anything else, no relay: a crash.
    std::process::abort();
}

#[tokio::test]
async fn an_event_committed_before_a_crash_is_published_by_a_later_relay() -> anyhow::Result<()> {
    init_logging();
    require_kafka().await?;
    let database = service_database().await?;
    let prefix = unique_prefix();
    let names = TopicNames::new(&prefix);
    create_topics(&names, &[Topic::Orders.spec()]).await?;

    // The helper process commits the order and its event, then dies.
    let order_id = format!("order-{}", Uuid::new_v4());
    let output = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "crash_helper_commits_an_order_then_aborts",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_HELPER_DATABASE_URL, &database.url)
        .env(CRASH_HELPER_ORDER_ID, &order_id)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(EVENTUALLY, output).await.context("the helper process hangs")??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.signal() == Some(6),
        "the helper must die by SIGABRT, got {:?}; stdout: {stdout}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |name: &str| {
        stdout
            .split_whitespace()
            .find_map(|word| word.strip_prefix(&format!("{name}=")).map(str::to_owned))
            .with_context(|| format!("the helper printed no {name}: {stdout}"))
    };
    let event_id: Uuid = field("event_id")?.parse()?;
    let trace_id = field("trace_id")?;

    // Its commit survived, unpublished.
    let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
        .bind(&order_id)
        .fetch_one(&database.pool)
        .await?;
    assert_eq!(status, "PENDING");
    assert!(!published_at_is_set(&database.pool, event_id).await?, "nothing ran a relay yet");

    // A relay started afterwards publishes it, with its CloudEvents headers.
    let shutdown = CancellationToken::new();
    let relay = start_relay(&database.pool, &prefix, &shutdown)?;
    let topic = names.topic(Topic::Orders);
    let event_id_text = event_id.to_string();
    let record = eventually(&format!("event {event_id} on {topic}"), || async {
        Ok(read_topic(&topic)
            .await?
            .into_iter()
            .find(|record| header(record, cloudevents::ID) == Some(&event_id_text)))
    })
    .await?;

    assert_eq!(record.key(), Some(order_id.as_bytes()), "keyed by the aggregate id");
    assert_eq!(header(&record, cloudevents::SPECVERSION), Some("1.0"));
    assert_eq!(header(&record, cloudevents::TYPE), Some(OrderPlaced::TYPE));
    assert_eq!(header(&record, cloudevents::SOURCE), Some("/commerce/order"));
    assert_eq!(header(&record, cloudevents::SUBJECT), Some(order_id.as_str()));
    assert_eq!(header(&record, cloudevents::CONTENT_TYPE), Some("application/protobuf"));
    assert_eq!(header(&record, cloudevents::TIME), Some("2025-06-15T15:06:40.000000Z"));
    let traceparent = header(&record, TRACEPARENT).context("traceparent header")?;
    let trace = trace_context::parse(traceparent, None).context("a valid traceparent")?;
    assert_eq!(trace.trace_id().to_string(), trace_id, "the event continues the helper's trace");
    let attributes = CloudEventAttributes::from_kafka_headers(record.headers())?;
    assert_eq!(attributes.id, event_id);
    assert_eq!(attributes.id.get_version_num(), 7, "ce_id is a UUID v7");
    let payload = OrderPlaced::decode(record.payload().context("a payload")?)?;
    assert_eq!(payload, order_placed(&order_id));

    eventually("the row to be marked published", || async {
        Ok(published_at_is_set(&database.pool, event_id).await?.then_some(()))
    })
    .await?;
    let copies = read_topic(&topic)
        .await?
        .iter()
        .filter(|r| header(r, cloudevents::ID) == Some(&event_id_text))
        .count();
    assert_eq!(copies, 1, "published once");

    shutdown.cancel();
    tokio::time::timeout(EVENTUALLY, relay).await??;
    database.drop_database().await?;
    drop_kafka_namespace(&prefix).await;
    Ok(())
}

#[tokio::test]
async fn a_rolled_back_transaction_publishes_nothing() -> anyhow::Result<()> {
    init_logging();
    require_kafka().await?;
    let database = service_database().await?;
    let prefix = unique_prefix();
    let names = TopicNames::new(&prefix);
    create_topics(&names, &[Topic::Orders.spec()]).await?;

    let mut tx = database.pool.begin().await?;
    sqlx::query("INSERT INTO orders (id, status) VALUES ('rolled-back', 'PENDING')")
        .execute(&mut *tx)
        .await?;
    let rolled_back = enqueue(&mut tx, &order_placed("rolled-back")).await?;
    tx.rollback().await?;
    // Enqueued after the rolled-back one: once the relay has published it,
    // it has been past the point where the other would have been.
    let committed = place_order(&database.pool, "committed").await?;

    let shutdown = CancellationToken::new();
    let metrics = Metrics::new("outbox-test");
    let relay = OutboxRelay::new(database.pool.clone(), EventProducer::new(&kafka_args(&prefix))?)
        .with_metrics(EventMetrics::register(&metrics), Service::Order);
    let relay = tokio::spawn(relay.run(shutdown.clone()));
    eventually("the committed event to be published", || async {
        Ok(published_at_is_set(&database.pool, committed).await?.then_some(()))
    })
    .await?;
    eventually("the metrics to show one published event and an empty backlog", || async {
        let exposition = metrics.encode()?;
        Ok([
            r#"commerce_outbox_published_events_total{service="order"} 1"#,
            r#"commerce_outbox_unpublished_events{service="order"} 0"#,
            r#"commerce_outbox_oldest_unpublished_age_seconds{service="order"} 0"#,
            r#"commerce_outbox_relay_leader{service="order"} 1"#,
        ]
        .iter()
        .all(|line| exposition.contains(line))
        .then_some(()))
    })
    .await?;

    let topic = names.topic(Topic::Orders);
    let records = read_topic(&topic).await?;
    let ids: Vec<&str> = records.iter().filter_map(|record| header(record, cloudevents::ID)).collect();
    assert_eq!(ids, vec![committed.to_string().as_str()], "only the committed event is on the topic");
    assert!(!ids.contains(&rolled_back.to_string().as_str()));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM commerce_platform.outbox WHERE id = $1")
        .bind(rolled_back)
        .fetch_one(&database.pool)
        .await?;
    assert_eq!(rows, 0, "the rolled-back row never existed for the relay");

    shutdown.cancel();
    tokio::time::timeout(EVENTUALLY, relay).await??;
    database.drop_database().await?;
    drop_kafka_namespace(&prefix).await;
    Ok(())
}

/// While the brokers take nothing, the relay's gauges say how many rows wait
/// and for how long, so that "the outbox is not draining" can alert.
#[tokio::test]
async fn while_no_broker_answers_the_backlog_and_its_age_show_on_the_metrics() -> anyhow::Result<()> {
    init_logging();
    let database = service_database().await?;
    place_order(&database.pool, "waiting").await?;
    let unreachable = KafkaArgs {
        // Nothing listens on port 1 of the loopback; a short delivery
        // timeout makes each attempt fail quickly.
        delivery_timeout: std::time::Duration::from_secs(1),
        ..KafkaArgs::new("127.0.0.1:1".to_owned())
    };
    let shutdown = CancellationToken::new();
    let metrics = Metrics::new("outbox-test");
    let producer = EventProducer::new(&unreachable)?;
    let client = producer.current();
    let relay = OutboxRelay::new(database.pool.clone(), producer.clone())
        .with_metrics(EventMetrics::register(&metrics), Service::Order);
    let relay = tokio::spawn(relay.run(shutdown.clone()));
    let age = |exposition: &str| {
        exposition.lines().find_map(|line| {
            line.strip_prefix(r#"commerce_outbox_oldest_unpublished_age_seconds{service="order"} "#)?
                .parse::<f64>()
                .ok()
        })
    };
    let first = eventually("the backlog of one row to show, with its age", || async {
        let exposition = metrics.encode()?;
        let waiting = exposition.contains(r#"commerce_outbox_unpublished_events{service="order"} 1"#);
        Ok(age(&exposition).filter(|age| waiting && *age > 0.0))
    })
    .await?;
    // Three more seconds: at least two more attempts, each timed out.
    eventually("the age to grow while the row waits", || async {
        Ok(age(&metrics.encode()?).filter(|age| *age >= first + 3.0).map(|_| ()))
    })
    .await?;
    assert!(!any_published(&database.pool).await?, "nothing was published");
    assert!(
        Arc::ptr_eq(&client, &producer.current()),
        "records time out while no broker answers: the brokers are away, not the producer stuck"
    );
    shutdown.cancel();
    tokio::time::timeout(EVENTUALLY, relay).await??;
    database.drop_database().await?;
    Ok(())
}

/// Whether any outbox row is marked published.
async fn any_published(pool: &PgPool) -> anyhow::Result<bool> {
    Ok(sqlx::query_scalar("SELECT count(*) > 0 FROM commerce_platform.outbox WHERE published_at IS NOT NULL")
        .fetch_one(pool)
        .await?)
}

/// Sessions holding the relay's leader lock in the test database.
async fn relay_lock_holders(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database() \
           AND ((l.classid::bigint << 32) | l.objid::bigint) = $1",
    )
    .bind(RELAY_LOCK_KEY)
    .fetch_one(pool)
    .await?)
}

#[tokio::test]
async fn only_one_relay_per_database_leads_and_a_standby_takes_over_in_order() -> anyhow::Result<()> {
    init_logging();
    require_kafka().await?;
    let database = service_database().await?;
    let prefix = unique_prefix();
    let names = TopicNames::new(&prefix);
    create_topics(&names, &[Topic::Orders.spec()]).await?;

    let first_shutdown = CancellationToken::new();
    let first = start_relay(&database.pool, &prefix, &first_shutdown)?;
    eventually("the first relay to lead", || async {
        Ok((relay_lock_holders(&database.pool).await? == 1).then_some(()))
    })
    .await?;
    let second_shutdown = CancellationToken::new();
    let second = start_relay(&database.pool, &prefix, &second_shutdown)?;

    // Three events of one order, published by whichever relay leads.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let mut tx = database.pool.begin().await?;
        ids.push(enqueue(&mut tx, &order_placed("order-ordered")).await?);
        tx.commit().await?;
    }
    for id in &ids {
        eventually("the events to be published", || async {
            Ok(published_at_is_set(&database.pool, *id).await?.then_some(()))
        })
        .await?;
    }
    assert_eq!(relay_lock_holders(&database.pool).await?, 1, "the standby must not lead too");

    // The leader stops; the standby takes over and publishes what follows.
    first_shutdown.cancel();
    tokio::time::timeout(EVENTUALLY, first).await??;
    for _ in 0..3 {
        let mut tx = database.pool.begin().await?;
        ids.push(enqueue(&mut tx, &order_placed("order-ordered")).await?);
        tx.commit().await?;
    }
    for id in &ids[3..] {
        eventually("the standby to publish", || async {
            Ok(published_at_is_set(&database.pool, *id).await?.then_some(()))
        })
        .await?;
    }
    assert_eq!(relay_lock_holders(&database.pool).await?, 1);

    // One key, one partition, in enqueue order.
    let topic = names.topic(Topic::Orders);
    let records = read_topic(&topic).await?;
    let mut on_topic: Vec<(i64, Uuid)> = records
        .iter()
        .filter_map(|record| Some((record.offset(), header(record, cloudevents::ID)?.parse().ok()?)))
        .collect();
    on_topic.sort();
    let published: Vec<Uuid> = on_topic.into_iter().map(|(_, id)| id).collect();
    assert_eq!(published, ids, "one order's events arrive in the order they were written");
    assert!(records.iter().all(|record| record.partition() == records[0].partition()));

    second_shutdown.cancel();
    tokio::time::timeout(EVENTUALLY, second).await??;
    database.drop_database().await?;
    drop_kafka_namespace(&prefix).await;
    Ok(())
}

#[tokio::test]
async fn service_and_platform_migrations_keep_separate_histories() -> anyhow::Result<()> {
    init_logging();
    let database = service_database().await?;
    // Both sides have a version 1 and neither trips over the other's.
    let service: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM public._sqlx_migrations ORDER BY version")
            .fetch_all(&database.pool)
            .await?;
    let platform: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM commerce_platform._sqlx_migrations ORDER BY version")
            .fetch_all(&database.pool)
            .await?;
    assert_eq!(service, vec![1]);
    assert_eq!(platform.first(), Some(&1));
    // Running everything again (a restart, a second replica) is a no-op.
    let migrator = service_migrator(SERVICE_MIGRATION).await?;
    let (again, twice) = tokio::join!(
        db::run_migrations(&database.pool, &migrator),
        db::run_migrations(&database.pool, &migrator)
    );
    again?;
    twice?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables \
         WHERE table_schema IN ('public', 'commerce_platform') ORDER BY 1",
    )
    .fetch_all(&database.pool)
    .await?;
    assert_eq!(
        tables,
        [
            "commerce_platform._sqlx_migrations",
            "commerce_platform.outbox",
            "commerce_platform.processed_events",
            "public._sqlx_migrations",
            "public.orders"
        ]
    );
    database.drop_database().await?;
    Ok(())
}
