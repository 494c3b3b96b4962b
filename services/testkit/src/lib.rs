//! Test support shared by the service crates' integration tests, against
//! the real local infrastructure (Postgres and Kafka from `e2e/infra.env`):
//! a test database of its own per test, created through
//! `COMMERCE_POSTGRES_ADMIN_URL`; Kafka topics under a unique prefix, and
//! Kafka flags for it; free loopback ports; publishing events as another
//! service would; reading events back ([`read_topic`], [`events_of`],
//! [`count_events`], [`header`]); and bounded waiting ([`eventually`]).
//! Unreachable infrastructure fails the test with a message saying how to
//! start it, never skips it.
//!
//! [`smtp`] runs a real SMTP server for the email tests.
//!
//! [`migrated`] holds the fixtures of the tests that run against a migrated
//! database and read the platform outbox (auth, catalog, inventory, and the
//! platform's own outbox and consumer tests).
//!
//! Dev-only: the service crates list it under `[dev-dependencies]`.

pub mod migrated;
pub mod smtp;
pub mod stripe_ledger;
pub mod stripe_mock;

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use anyhow::{Context, bail};
use commerce_platform::events::{
    CloudEventAttributes, EventPayload, EventProducer, KafkaArgs, TopicNames, cloudevents, ensure_topics,
};
use commerce_topology::TopicSpec;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};
use uuid::Uuid;

const DEFAULT_POSTGRES_ADMIN_URL: &str = "postgres://postgres:commerce-dev@127.0.0.1:55432/postgres";
const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:59092";
/// Upper bound of any wait for the saga: consumer group joins take seconds.
pub const EVENTUALLY: Duration = Duration::from_secs(60);

/// The Postgres admin URL (`COMMERCE_POSTGRES_ADMIN_URL`, default the local
/// infrastructure of `e2e/infra.env`), through which test databases are made.
pub fn postgres_admin_url() -> String {
    std::env::var("COMMERCE_POSTGRES_ADMIN_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_ADMIN_URL.to_owned())
}

/// The Kafka brokers (`COMMERCE_KAFKA_BROKERS`, default the local
/// infrastructure of `e2e/infra.env`).
pub fn kafka_brokers() -> String {
    std::env::var("COMMERCE_KAFKA_BROKERS").unwrap_or_else(|_| DEFAULT_KAFKA_BROKERS.to_owned())
}

/// Logs to the test's output (`RUST_LOG` to change the filter), with spans
/// that are OpenTelemetry spans as in a service (nothing exported), so that
/// trace context travels.
pub fn init_logging() {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,commerce=info"));
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_test_writer().with_filter(filter))
        .with(commerce_platform::telemetry::unexported_trace_layer())
        .try_init();
}

/// A database created for one test.
#[derive(Debug)]
pub struct TestDatabase {
    /// The database name.
    pub name: String,
    /// A URL connecting to the database.
    pub url: String,
}

impl TestDatabase {
    /// Creates an empty database named after `service` and a unique suffix.
    pub async fn create(service: &str) -> anyhow::Result<Self> {
        let admin_url = postgres_admin_url();
        let admin_options: PgConnectOptions = admin_url.parse().context("COMMERCE_POSTGRES_ADMIN_URL")?;
        let mut admin = tokio::time::timeout(Duration::from_secs(10), admin_options.connect())
            .await
            .map_err(anyhow::Error::from)
            .and_then(|connected| connected.map_err(anyhow::Error::from))
            .with_context(|| {
                format!("Postgres is unreachable at {admin_url}; start it with `bash e2e/scripts/infra.sh up postgres`")
            })?;
        let name = format!("{service}_test_{}", Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await?;
        admin.close().await?;
        let url = admin_options.database(&name).to_url_lossy().to_string();
        Ok(Self { name, url })
    }

    /// A small connection pool to the database.
    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        Ok(PgPoolOptions::new().max_connections(4).connect(&self.url).await?)
    }

    /// Drops the database, disconnecting any session still on it.
    pub async fn drop_database(self) -> anyhow::Result<()> {
        let mut admin = postgres_admin_url().parse::<PgConnectOptions>()?.connect().await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .execute(&mut admin)
            .await?;
        Ok(())
    }
}

/// Fails with a clear message unless Kafka answers.
pub async fn require_kafka() -> anyhow::Result<()> {
    let brokers = kafka_brokers();
    let probe = brokers.clone();
    let answered = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &probe).create()?;
        consumer.fetch_metadata(None, Duration::from_secs(10)).map(|metadata| metadata.brokers().len())
    })
    .await?;
    match answered {
        Ok(seen) if seen > 0 => Ok(()),
        outcome => {
            bail!(
                "Kafka is unreachable at {brokers} ({outcome:?}); start it with `bash e2e/scripts/infra.sh up kafka`"
            )
        }
    }
}

/// A unique prefix for topic and consumer group names, so that tests never
/// see each other's records (nothing is created under it).
pub fn unique_prefix() -> String {
    format!("test-{}.", Uuid::new_v4().simple())
}

/// Creates the topics of `specs` under `names`, with the catalog's layouts.
pub async fn create_topics(names: &TopicNames, specs: &[TopicSpec]) -> anyhow::Result<()> {
    let desired: Vec<_> = specs.iter().map(|spec| names.desired(spec)).collect();
    ensure_topics(&kafka_brokers(), &desired).await?;
    Ok(())
}

/// A unique topic/group prefix, with every catalog topic (and dead-letter
/// topic) created under it.
pub async fn kafka_namespace() -> anyhow::Result<String> {
    require_kafka().await?;
    let prefix = unique_prefix();
    create_topics(&TopicNames::new(prefix.clone()), &commerce_topology::all_topics()).await?;
    Ok(prefix)
}

/// Kafka flags for a test's own producers and consumers: the local brokers,
/// names under `prefix`, and short timeouts and retries.
pub fn kafka_args(prefix: &str) -> KafkaArgs {
    KafkaArgs {
        name_prefix: prefix.to_owned(),
        delivery_timeout: Duration::from_secs(20),
        handler_retry_backoff: Duration::from_millis(50),
        ..KafkaArgs::new(kafka_brokers())
    }
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// Flags every service test passes: loopback ports, its database, Kafka
/// under `prefix`, fast retries.
pub fn service_flags(database_url: &str, prefix: &str, grpc_port: u16, admin_port: u16) -> Vec<String> {
    vec![
        "test".to_owned(),
        "--log-format=text".to_owned(),
        format!("--grpc-addr=127.0.0.1:{grpc_port}"),
        format!("--admin-addr=127.0.0.1:{admin_port}"),
        "--grpc-shutdown-grace=2s".to_owned(),
        format!("--database-url={database_url}"),
        format!("--kafka-brokers={}", kafka_brokers()),
        format!("--kafka-name-prefix={prefix}"),
        "--kafka-handler-retry-backoff=50ms".to_owned(),
    ]
}

/// Publishes `event` as its owning service would (CloudEvents headers,
/// keyed by its aggregate), under `prefix`. Returns the record's ce_id.
pub async fn publish<E: EventPayload>(prefix: &str, event: &E) -> anyhow::Result<Uuid> {
    let attributes = CloudEventAttributes::for_event(event);
    publish_with(prefix, event, &attributes).await?;
    Ok(attributes.id)
}

/// Publishes `event` with given attributes (to redeliver a record: same id).
pub async fn publish_with<E: EventPayload>(
    prefix: &str,
    event: &E,
    attributes: &CloudEventAttributes,
) -> anyhow::Result<()> {
    let args = KafkaArgs { name_prefix: prefix.to_owned(), ..KafkaArgs::new(kafka_brokers()) };
    EventProducer::new(&args)?.send_event(event, attributes).await?;
    Ok(())
}

/// Polls `check` until it returns `Some`, or fails after `EVENTUALLY`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {EVENTUALLY:?} waiting for {what} (last error: {last_error:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connects a gRPC channel to a service started in the test, waiting for it
/// to listen.
pub async fn connect(port: u16) -> anyhow::Result<tonic::transport::Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?;
    eventually("the gRPC server to listen", || {
        let endpoint = endpoint.clone();
        async move { Ok(endpoint.connect().await.ok()) }
    })
    .await
}

/// How many records of type `E` with key `key` the topic `E::TOPIC` holds
/// under `prefix`.
pub async fn count_events<E: EventPayload>(prefix: &str, key: &str) -> anyhow::Result<usize> {
    let topic = TopicNames::new(prefix.to_owned()).topic(E::TOPIC);
    let records = read_topic(&topic).await?;
    Ok(records
        .iter()
        .filter(|record| event_type(record) == Some(E::TYPE) && record.key() == Some(key.as_bytes()))
        .count())
}

/// Records of `topic` (a physical name) that are `E`s, decoded, in offset
/// order per partition.
pub async fn events_of<E: EventPayload>(topic: &str) -> anyhow::Result<Vec<E>> {
    let mut events = Vec::new();
    for record in read_topic(topic).await? {
        if event_type(&record) == Some(E::TYPE) {
            events.push(E::decode(record.payload().unwrap_or_default())?);
        }
    }
    Ok(events)
}

/// The `ce_type` header of a record.
pub fn event_type(record: &OwnedMessage) -> Option<&str> {
    header(record, cloudevents::TYPE)
}

/// The value of header `name` of a record, as text.
pub fn header<'a>(record: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    record
        .headers()?
        .iter()
        .find(|header| header.key == name)
        .and_then(|header| header.value)
        .and_then(|value| std::str::from_utf8(value).ok())
}

/// Every record of `topic` (a physical name) from the beginning up to the
/// high watermarks it had when called; fails after 30 s of reading.
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
            .map(|p| p.id())
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
                bail!("timed out reading {topic} up to its high watermarks");
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

/// Deletes every topic under `prefix` (a test's namespace), best effort:
/// the shared broker should not collect a dozen topics per test run.
pub async fn drop_kafka_namespace(prefix: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let brokers = kafka_brokers();
    let Ok(admin): Result<AdminClient<DefaultClientContext>, _> =
        ClientConfig::new().set("bootstrap.servers", &brokers).create()
    else {
        return;
    };
    let Ok(metadata) = admin.inner().fetch_metadata(None, Duration::from_secs(10)) else {
        return;
    };
    let topics: Vec<String> = metadata
        .topics()
        .iter()
        .map(|topic| topic.name().to_owned())
        .filter(|name| name.starts_with(prefix))
        .collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    if !names.is_empty() {
        let _ = admin.delete_topics(&names, &AdminOptions::new()).await;
    }
}

/// A minimal HTTP/1.1 request to a loopback admin port (the tests need no
/// HTTP client crate): returns the status code and the body.
pub async fn http(port: u16, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response.split_whitespace().nth(1).context("no status line")?.parse()?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    Ok((status, body))
}
