//! Fixtures shared by the database and event tests (outbox, consumer,
//! topics, late_dependencies): a database of their own per test on the
//! local Postgres, unique topic names on the local Kafka, and a reader that
//! scans a topic up to its high watermark.
//!
//! The infrastructure comes from `e2e/scripts/infra.sh up postgres kafka`;
//! its addresses are read from the same variables as `e2e/infra.env`, with
//! the same defaults. A test whose infrastructure is unreachable fails with
//! a message saying how to start it: it never skips silently.

#![allow(dead_code)] // Each test binary uses a different part.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use anyhow::{Context, bail};
use commerce_platform::events::{DesiredTopic, KafkaArgs, TopicNames, ensure_topics};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};
use uuid::Uuid;

/// Default of `COMMERCE_POSTGRES_ADMIN_URL` in `e2e/infra.env`.
const DEFAULT_POSTGRES_ADMIN_URL: &str = "postgres://postgres:commerce-dev@127.0.0.1:55432/postgres";
/// Default of `COMMERCE_KAFKA_BROKERS` in `e2e/infra.env`.
const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:59092";
/// How long a test waits for something it expects to happen.
pub const EVENTUALLY: Duration = Duration::from_secs(60);

pub fn postgres_admin_url() -> String {
    std::env::var("COMMERCE_POSTGRES_ADMIN_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_ADMIN_URL.to_owned())
}

pub fn kafka_brokers() -> String {
    std::env::var("COMMERCE_KAFKA_BROKERS").unwrap_or_else(|_| DEFAULT_KAFKA_BROKERS.to_owned())
}

/// Logs of the code under test, shown for failing tests (`RUST_LOG` to
/// tune; warnings and up by default).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,commerce_platform=info")),
        )
        .with_test_writer()
        .try_init();
}

/// A database created for one test; dropped by [`TestDatabase::drop_database`].
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDatabase {
    /// Creates `platform_test_<uuid>` through the admin URL and connects a
    /// pool to it.
    pub async fn create() -> anyhow::Result<Self> {
        let admin_url = postgres_admin_url();
        let admin_options: PgConnectOptions = admin_url.parse().context("COMMERCE_POSTGRES_ADMIN_URL")?;
        let mut admin = tokio::time::timeout(Duration::from_secs(10), admin_options.connect())
            .await
            .map_err(anyhow::Error::from)
            .and_then(|connected| connected.map_err(anyhow::Error::from))
            .with_context(|| {
                format!(
                    "Postgres is unreachable at {}; start it with `bash e2e/scripts/infra.sh up postgres`",
                    commerce_platform::url::redact(&admin_url)
                )
            })?;
        let name = format!("platform_test_{}", Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await?;
        admin.close().await?;
        let options = admin_options.database(&name);
        let url = options.to_url_lossy().to_string();
        let pool = PgPoolOptions::new().max_connections(5).connect_with(options).await?;
        Ok(Self { name, url, pool })
    }

    /// Closes the pool and drops the database (with any session still on it).
    pub async fn drop_database(self) -> anyhow::Result<()> {
        self.pool.close().await;
        let mut admin = postgres_admin_url().parse::<PgConnectOptions>()?.connect().await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .execute(&mut admin)
            .await?;
        Ok(())
    }
}

/// A unique prefix for topic and group names, so tests never see each
/// other's records.
pub fn unique_prefix() -> String {
    format!("test-{}.", Uuid::new_v4().simple())
}

/// Kafka flags for a test: local brokers, the test's prefix, short retries.
pub fn kafka_args(prefix: &str) -> KafkaArgs {
    KafkaArgs {
        name_prefix: prefix.to_owned(),
        delivery_timeout: Duration::from_secs(20),
        handler_retry_backoff: Duration::from_millis(50),
        ..KafkaArgs::new(kafka_brokers())
    }
}

/// Fails clearly when the local Kafka does not answer.
pub async fn require_kafka() -> anyhow::Result<()> {
    let brokers = kafka_brokers();
    let probe_brokers = brokers.clone();
    let answered = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &probe_brokers).create()?;
        consumer.fetch_metadata(None, Duration::from_secs(10)).map(|metadata| metadata.brokers().len())
    })
    .await?;
    match answered {
        Ok(brokers_seen) if brokers_seen > 0 => Ok(()),
        outcome => bail!(
            "Kafka is unreachable at {brokers} ({outcome:?}); start it with `bash e2e/scripts/infra.sh up kafka`"
        ),
    }
}

/// Creates the test's topics (catalog layouts under `names`).
pub async fn create_topics(names: &TopicNames, specs: &[commerce_topology::TopicSpec]) -> anyhow::Result<()> {
    let desired: Vec<DesiredTopic> = specs.iter().map(|spec| names.desired(spec)).collect();
    ensure_topics(&kafka_brokers(), &desired).await?;
    Ok(())
}

/// Deletes topics a test created (best effort: the test's result does not
/// depend on it).
pub async fn delete_topics(topics: &[String]) {
    let Ok(admin): Result<AdminClient<DefaultClientContext>, _> =
        ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create()
    else {
        return;
    };
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let _ = admin.delete_topics(&names, &AdminOptions::new()).await;
}

/// Every record of `topic` from the beginning up to the high watermarks at
/// the time of the call.
pub async fn read_topic(topic: &str) -> anyhow::Result<Vec<OwnedMessage>> {
    let topic = topic.to_owned();
    let brokers = kafka_brokers();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<OwnedMessage>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("reader-{}", Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .create()?;
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .first()
            .context("no metadata for the topic")?
            .partitions()
            .iter()
            .map(|partition| partition.id())
            .collect();
        let mut assignment = TopicPartitionList::new();
        let mut remaining: HashMap<i32, i64> = HashMap::new();
        for partition in partitions {
            let (low, high) = consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
            if high > low {
                assignment.add_partition_offset(&topic, partition, Offset::Beginning)?;
                remaining.insert(partition, high);
            }
        }
        let mut records = Vec::new();
        if remaining.is_empty() {
            return Ok(records);
        }
        consumer.assign(&assignment)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !remaining.is_empty() {
            if std::time::Instant::now() > deadline {
                bail!("timed out reading {topic} up to its high watermarks; still missing {remaining:?}");
            }
            let Some(received) = consumer.poll(Duration::from_millis(500)) else { continue };
            let message = received?;
            let partition = message.partition();
            if let Some(&high) = remaining.get(&partition) {
                if message.offset() < high {
                    records.push(message.detach());
                }
                if message.offset() + 1 >= high {
                    remaining.remove(&partition);
                }
            }
        }
        Ok(records)
    })
    .await?
}

/// Waits (re-reading the topic) until a record of `topic` satisfies
/// `matches`, and returns it.
pub async fn wait_for_record(
    topic: &str,
    matches: impl Fn(&OwnedMessage) -> bool,
) -> anyhow::Result<OwnedMessage> {
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        if let Some(record) = read_topic(topic).await?.into_iter().find(|record| matches(record)) {
            return Ok(record);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no matching record on {topic} within {EVENTUALLY:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The value of header `name` of `record`, as text.
pub fn header<'a>(record: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    record
        .headers()?
        .iter()
        .find(|header| header.key == name)
        .and_then(|header| header.value)
        .and_then(|value| std::str::from_utf8(value).ok())
}

/// Polls `condition` until it holds or [`EVENTUALLY`] passes.
pub async fn eventually<F, Fut>(what: &str, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        if condition().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {EVENTUALLY:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
