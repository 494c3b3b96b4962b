//! What every Kafka client of a service shares: the flags ([`KafkaArgs`]),
//! the naming of topics and consumer groups ([`TopicNames`]), the bridge
//! from librdkafka's logs to `tracing` ([`TracingContext`]) and the loop that
//! turns broker reachability into a readiness check.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use commerce_topology::{Service, Topic, TopicSpec};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::metadata::Metadata;
use rdkafka::statistics::Statistics;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::metrics::EventMetrics;
use super::topics::DesiredTopic;
use crate::db::sleep_or_cancelled;
use crate::readiness::Check;

/// How long one metadata request of the readiness loop may take: a broker
/// that needs longer is as good as away for a request path.
pub(crate) const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// Readiness probe period while the brokers answer.
const PROBE_INTERVAL_READY: Duration = Duration::from_secs(5);
/// Probe period while they do not, so that readiness returns quickly.
const PROBE_INTERVAL_NOT_READY: Duration = Duration::from_secs(1);

/// Kafka flags every service that publishes or consumes events accepts.
#[derive(Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Kafka")]
pub struct KafkaArgs {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    #[arg(long = "kafka-brokers", env = "COMMERCE_KAFKA_BROKERS")]
    pub brokers: String,
    /// Prefix put before every catalog topic and consumer group name, so that
    /// several stacks (or test runs) can share one Kafka cluster without
    /// seeing each other's events. Empty in a stack of its own.
    #[arg(long = "kafka-name-prefix", env = "COMMERCE_KAFKA_NAME_PREFIX", default_value = "")]
    pub name_prefix: String,
    /// How long the producer keeps retrying one record before reporting it
    /// failed (`delivery.timeout.ms`). Bounded so that the outbox relay
    /// notices a lost broker and retries from the table instead of waiting
    /// for librdkafka's five-minute default.
    #[arg(
        long = "kafka-delivery-timeout",
        env = "COMMERCE_KAFKA_DELIVERY_TIMEOUT",
        default_value = "30s",
        value_parser = humantime::parse_duration
    )]
    pub delivery_timeout: Duration,
    /// How many times a consumer calls its handler for one event before the
    /// event goes to the dead-letter topic (retryable errors only; a
    /// permanent error or an undecodable record goes there at once).
    #[arg(long = "kafka-handler-attempts", env = "COMMERCE_KAFKA_HANDLER_ATTEMPTS", default_value_t = 5)]
    pub handler_attempts: u32,
    /// First delay between two handler attempts; doubles per attempt.
    #[arg(
        long = "kafka-handler-retry-backoff",
        env = "COMMERCE_KAFKA_HANDLER_RETRY_BACKOFF",
        default_value = "200ms",
        value_parser = humantime::parse_duration
    )]
    pub handler_retry_backoff: Duration,
    /// How long the group coordinator waits for a heartbeat before it takes
    /// a consumer's partitions away (`session.timeout.ms`; heartbeats go at a
    /// third of it). A consumer that stops cleanly leaves its group at once;
    /// this bounds how long the partitions of one that was killed (or lost
    /// its node) stand still. librdkafka's 45 s default held a killed order
    /// service's events for about 90 s. The broker must allow it
    /// (`group.min.session.timeout.ms`, 6 s by default).
    #[arg(
        long = "kafka-session-timeout",
        env = "COMMERCE_KAFKA_SESSION_TIMEOUT",
        default_value = "10s",
        value_parser = humantime::parse_duration
    )]
    pub session_timeout: Duration,
    /// How many of a consumer's partitions are handled at once. Records of
    /// one partition (hence of one key, one aggregate) are still handled
    /// one after another, in order; 1 handles everything in sequence.
    #[arg(
        long = "kafka-consumer-concurrency",
        env = "COMMERCE_KAFKA_CONSUMER_CONCURRENCY",
        default_value_t = 4,
        value_parser = clap::value_parser!(u16).range(1..=64)
    )]
    pub consumer_concurrency: u16,
    /// How often a consumer commits the offsets of the records it handled
    /// (`auto.commit.interval.ms`; also on a rebalance and on shutdown). A
    /// crash redelivers at most this much, which the processed-events table
    /// turns into skipped duplicates.
    #[arg(
        long = "kafka-commit-interval",
        env = "COMMERCE_KAFKA_COMMIT_INTERVAL",
        default_value = "1s",
        value_parser = humantime::parse_duration
    )]
    pub commit_interval: Duration,
    /// Extra librdkafka properties, `key=value`, comma separated: the TLS
    /// and SASL settings of a cluster (`security.protocol=sasl_ssl,
    /// ssl.ca.location=/etc/kafka/ca.pem,sasl.mechanism=SCRAM-SHA-512,
    /// sasl.username=...,sasl.password=...`). They may carry secrets: give
    /// them through the environment. librdkafka is built with OpenSSL
    /// (static), so `ssl`, `sasl_ssl`, PLAIN and SCRAM work; the broker's
    /// certificate and host name are verified unless a property says
    /// otherwise.
    #[arg(
        long = "kafka-property",
        env = "COMMERCE_KAFKA_PROPERTIES",
        value_delimiter = ',',
        value_parser = parse_property,
        hide_env_values = true
    )]
    pub properties: Vec<(String, String)>,
    /// SASL user name (`sasl.username`), for a mechanism set through
    /// `--kafka-property` (`sasl.mechanism=SCRAM-SHA-512`). A flag of its
    /// own, so that a Secret's value goes in whole (a property list is
    /// split at commas).
    #[arg(long = "kafka-sasl-username", env = "COMMERCE_KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,
    /// SASL password (`sasl.password`); never printed.
    #[arg(long = "kafka-sasl-password", env = "COMMERCE_KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub sasl_password: Option<String>,
}

impl KafkaArgs {
    /// Arguments for `brokers` with every default (tests, tools).
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            name_prefix: String::new(),
            delivery_timeout: Duration::from_secs(30),
            handler_attempts: 5,
            handler_retry_backoff: Duration::from_millis(200),
            session_timeout: Duration::from_secs(10),
            consumer_concurrency: 4,
            commit_interval: Duration::from_secs(1),
            properties: Vec::new(),
            sasl_username: None,
            sasl_password: None,
        }
    }

    /// The naming of topics and groups these flags select.
    pub fn names(&self) -> TopicNames {
        TopicNames::new(self.name_prefix.clone())
    }

    /// Configuration common to every client: brokers and extra properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        // librdkafka logs through our context (`TracingContext::log`).
        config.set_log_level(RDKafkaLogLevel::Info);
        // No client metrics pushed to the brokers (KIP-714, on by default
        // since librdkafka 2.5): the services export their own metrics, and
        // the push's latency histograms, allocated for every broker of
        // every client whether a broker asks for them or not, were 5 of the
        // 17 MiB the idle shop kept on its heap. A property can turn it on.
        config.set("enable.metrics.push", "false");
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        if let Some(username) = &self.sasl_username {
            config.set("sasl.username", username);
        }
        if let Some(password) = &self.sasl_password {
            config.set("sasl.password", password);
        }
        // OpenSSL is linked statically, so its built-in CA path is not the
        // system's: without a CA of its own, a TLS client looks for the
        // system's bundle (Debian's /etc/ssl/certs, also in the images)
        // the way librdkafka's `probe` does, so that a managed Kafka with a
        // publicly trusted certificate verifies.
        let tls = config
            .get("security.protocol")
            .is_some_and(|p| p.eq_ignore_ascii_case("ssl") || p.eq_ignore_ascii_case("sasl_ssl"));
        let own_ca = ["ssl.ca.location", "ssl.ca.pem", "ssl.ca.certificate.stores"]
            .iter()
            .any(|key| config.get(key).is_some());
        if tls && !own_ca {
            config.set("ssl.ca.location", "probe");
        }
        config
    }
}

/// A duration as librdkafka's `*.ms` properties want it.
pub(crate) fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

/// Property values may be SASL passwords: show their keys only.
impl fmt::Debug for KafkaArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let property_keys: Vec<&str> = self.properties.iter().map(|(key, _)| key.as_str()).collect();
        f.debug_struct("KafkaArgs")
            .field("brokers", &self.brokers)
            .field("name_prefix", &self.name_prefix)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("handler_attempts", &self.handler_attempts)
            .field("handler_retry_backoff", &self.handler_retry_backoff)
            .field("session_timeout", &self.session_timeout)
            .field("consumer_concurrency", &self.consumer_concurrency)
            .field("commit_interval", &self.commit_interval)
            .field("property_keys", &property_keys)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_owned(), value.to_owned())),
        _ => Err(format!("expected key=value, got {text:?}")),
    }
}

/// Physical names of the catalog's topics and consumer groups: the catalog
/// name behind an optional prefix (see [`KafkaArgs::name_prefix`]).
///
/// The outbox stores catalog names; the prefix is applied when the relay
/// publishes, so rows do not depend on where they are published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicNames {
    prefix: String,
}

impl TopicNames {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    /// The prefix, possibly empty.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A catalog topic's physical name.
    pub fn topic(&self, topic: Topic) -> String {
        self.name(topic.name())
    }

    /// The physical name for any catalog name (as stored in the outbox).
    pub fn name(&self, catalog_name: &str) -> String {
        format!("{}{catalog_name}", self.prefix)
    }

    /// A service's consumer group.
    pub fn consumer_group(&self, service: Service) -> String {
        self.name(&service.consumer_group())
    }

    /// A service's dead-letter topic.
    pub fn dead_letter_topic(&self, service: Service) -> String {
        self.name(&service.dead_letter_topic())
    }

    /// The topic a readiness probe of `service`'s clients asks about: the
    /// first it produces, else the first it consumes, else its dead-letter
    /// topic (see [`spawn_broker_watch`]).
    pub fn probe_topic(&self, service: Service) -> String {
        let spec = service.spec();
        match spec.produces.first().or_else(|| spec.consumes.first()) {
            Some(topic) => self.topic(*topic),
            None => self.dead_letter_topic(service),
        }
    }

    /// A catalog topic layout under its physical name, for
    /// [`ensure_topics`](super::topics::ensure_topics).
    pub fn desired(&self, spec: &TopicSpec) -> DesiredTopic {
        DesiredTopic {
            name: self.name(spec.name),
            partitions: spec.partitions,
            retention_ms: spec.retention_ms,
        }
    }
}

/// Client context of the producers and admin clients: librdkafka's log
/// lines and global errors go to `tracing` (so they are JSON lines with the
/// rest). Consumers use [`LagContext`], which logs the same way.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingContext;

impl ClientContext for TracingContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Transient (a broker went away, librdkafka reconnects by itself);
        // readiness reports the lasting cases.
        tracing::warn!(target: "librdkafka", error = %error, "{reason}");
    }
}

/// How often librdkafka reports a consumer's statistics (and so its lag).
pub(crate) const LAG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The consumers' context: [`TracingContext`]'s logging, and each assigned
/// partition's lag (high watermark minus the group's committed offset) from
/// librdkafka's statistics, every [`LAG_INTERVAL`], into
/// `commerce_events_consumer_lag` once metrics are attached. The statistics
/// come from the fetches the consumer makes anyway: no extra request.
#[derive(Debug, Clone, Default)]
pub struct LagContext {
    metrics: Arc<std::sync::OnceLock<(EventMetrics, Service)>>,
}

impl LagContext {
    /// Reports the lag of `service`'s partitions into `metrics` from now on.
    pub(crate) fn attach(&self, metrics: EventMetrics, service: Service) {
        let _ = self.metrics.set((metrics, service));
    }
}

impl ClientContext for LagContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        TracingContext.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        TracingContext.error(error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        let Some((metrics, service)) = self.metrics.get() else { return };
        for (topic, partitions) in &statistics.topics {
            // Partition -1 is librdkafka's internal "unassigned" one.
            for (partition, stats) in partitions.partitions.iter().filter(|(id, _)| **id >= 0) {
                // -1: not assigned here (any more), or not known yet.
                let lag = (stats.consumer_lag >= 0).then_some(stats.consumer_lag);
                metrics.consumer_lag(*service, topic, *partition, lag);
            }
        }
    }
}

impl ConsumerContext for LagContext {
    fn post_rebalance(&self, _consumer: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        log_rebalance(rebalance);
    }
}

/// Logs a consumer's partition assignment or revocation.
fn log_rebalance(rebalance: &Rebalance<'_>) {
    match rebalance {
        Rebalance::Assign(partitions) => {
            let assigned: Vec<String> =
                partitions.elements().iter().map(|p| format!("{}/{}", p.topic(), p.partition())).collect();
            tracing::info!(partitions = ?assigned, "partitions assigned");
        }
        Rebalance::Revoke(partitions) => {
            tracing::info!(count = partitions.count(), "partitions revoked");
        }
        Rebalance::Error(error) => tracing::warn!(error = %error, "rebalance failed"),
    }
}

/// Keeps `check` in line with whether the brokers answer a metadata
/// request through `holder`'s client, until `shutdown`.
///
/// librdkafka reconnects by itself and never fails a client for an absent
/// broker; asking for metadata is the cheapest end-to-end proof that this
/// client can talk to the cluster. The request blocks, so it runs on the
/// blocking pool.
///
/// It asks about `topic` alone (the brokers come with any answer). Asked
/// about every topic, each probe's answer grows with the cluster: with the
/// 2,600 topics (15,000 partitions) a shared development broker had
/// gathered, every client's probe every five seconds stalled the whole
/// process's relays and consumers for 20-50 ms at once (a periodic p99 of
/// the saga), and a production cluster shared by many teams is no smaller.
pub(crate) fn spawn_broker_watch<T>(
    holder: Arc<T>,
    fetch_metadata: fn(&T, &str) -> KafkaResult<Metadata>,
    topic: String,
    check: Check,
    what: &'static str,
    shutdown: CancellationToken,
) -> JoinHandle<()>
where
    T: Send + Sync + 'static,
{
    tokio::spawn(async move {
        loop {
            let (target, topic) = (holder.clone(), topic.clone());
            let probe = tokio::task::spawn_blocking(move || {
                fetch_metadata(&target, &topic).map(|metadata| metadata.brokers().len())
            })
            .await;
            let ready = match probe {
                Ok(Ok(brokers)) if brokers > 0 => {
                    check.set_ready();
                    true
                }
                Ok(Ok(_)) => {
                    check.set_not_ready(format!("{what}: the cluster reports no brokers"));
                    false
                }
                Ok(Err(error)) => {
                    check.set_not_ready(format!("{what}: cannot reach the Kafka brokers: {error}"));
                    false
                }
                Err(join_error) => {
                    check.set_not_ready(format!("{what}: metadata probe failed: {join_error}"));
                    false
                }
            };
            let interval = if ready { PROBE_INTERVAL_READY } else { PROBE_INTERVAL_NOT_READY };
            if sleep_or_cancelled(interval, &shutdown).await {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
    }

    #[test]
    fn flags_parse_with_defaults_and_properties() {
        let cli = Cli::try_parse_from([
            "test",
            "--kafka-brokers=127.0.0.1:59092",
            "--kafka-property=security.protocol=SASL_SSL,sasl.password=a=b",
        ])
        .expect("flags parse");
        assert_eq!(cli.kafka.handler_attempts, 5);
        assert_eq!(cli.kafka.delivery_timeout, Duration::from_secs(30));
        assert_eq!(
            cli.kafka,
            KafkaArgs { properties: cli.kafka.properties.clone(), ..KafkaArgs::new("127.0.0.1:59092") }
        );
        assert!(
            Cli::try_parse_from(["test", "--kafka-brokers=x", "--kafka-consumer-concurrency=0"]).is_err(),
            "a consumer handles at least one partition at a time"
        );
        assert_eq!(
            cli.kafka.properties,
            vec![
                ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
                ("sasl.password".to_owned(), "a=b".to_owned())
            ]
        );
        assert!(!format!("{:?}", cli.kafka).contains("a=b"), "property values must not be printed");
        assert!(Cli::try_parse_from(["test", "--kafka-brokers=x", "--kafka-property=novalue"]).is_err());
    }

    #[test]
    fn tls_and_scram_clients_are_created_and_trust_the_systems_cas_unless_given_their_own() {
        let with = |properties: &[(&str, &str)]| {
            let mut args = KafkaArgs::new("127.0.0.1:1");
            args.properties = properties.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            args.client_config()
        };
        let scram = with(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "shop"),
            ("sasl.password", "secret"),
        ]);
        assert_eq!(scram.get("ssl.ca.location"), Some("probe"));
        let created = scram.create::<rdkafka::producer::BaseProducer>();
        assert!(created.is_ok(), "SASL_SSL with SCRAM: {:?}", created.err());
        let own_ca = with(&[("security.protocol", "ssl"), ("ssl.ca.location", "/etc/kafka/ca.pem")]);
        assert_eq!(own_ca.get("ssl.ca.location"), Some("/etc/kafka/ca.pem"));
        let inline_ca = with(&[("security.protocol", "ssl"), ("ssl.ca.pem", "-----BEGIN CERTIFICATE-----")]);
        assert_eq!(inline_ca.get("ssl.ca.location"), None);
        let plaintext = with(&[("security.protocol", "sasl_plaintext"), ("sasl.mechanism", "PLAIN")]);
        assert_eq!(plaintext.get("ssl.ca.location"), None, "no CA for a plaintext client");
    }

    #[test]
    fn names_come_from_the_catalog_behind_the_prefix() {
        let plain = TopicNames::default();
        assert_eq!(plain.topic(Topic::Orders), "commerce.orders.v1");
        assert_eq!(plain.consumer_group(Service::Inventory), "commerce-inventory");
        let prefixed = TopicNames::new("t1.");
        assert_eq!(prefixed.topic(Topic::Orders), "t1.commerce.orders.v1");
        assert_eq!(prefixed.dead_letter_topic(Service::Shipping), "t1.commerce.dlq.shipping.v1");
        assert_eq!(prefixed.consumer_group(Service::Shipping), "t1.commerce-shipping");
        let desired = prefixed.desired(&Topic::Payments.spec());
        assert_eq!(desired.name, "t1.commerce.payments.v1");
        assert_eq!(desired.partitions, Topic::Payments.spec().partitions);
    }
}
