//! Topic administration: bring the brokers' topics in line with the
//! catalog's [`TopicSpec`]s. Used by the operator (external state step of
//! its reconcile) and by tests and local tooling.
//!
//! The rules are those of the architecture (section 7): create what is
//! missing, add partitions when a topic has fewer than wanted, set
//! `retention.ms` when it differs, and never remove partitions. Kafka
//! cannot shrink a topic, and doing it by re-creating the topic would lose
//! events and break the key-to-partition mapping that keeps each aggregate's
//! events in order. A topic with more partitions than wanted is left as it
//! is and reported.
//!
//! Every call reads the current state first and only changes what differs,
//! so it is idempotent and a no-op reconcile writes nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use commerce_topology::TopicSpec;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// How long one admin request may take: topic creation on a busy cluster
/// takes seconds, never minutes.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a metadata request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a new topic's metadata to show its partitions.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);
/// How often to look meanwhile.
const SETTLE_POLL: Duration = Duration::from_millis(100);
/// The topic config this module manages.
const RETENTION_MS: &str = "retention.ms";

/// A topic as it should be on the brokers, under its physical name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredTopic {
    pub name: String,
    /// Minimum partition count (never reduced on the brokers).
    pub partitions: i32,
    /// `retention.ms` of the topic.
    pub retention_ms: i64,
}

impl From<TopicSpec> for DesiredTopic {
    fn from(spec: TopicSpec) -> Self {
        Self { name: spec.name.to_owned(), partitions: spec.partitions, retention_ms: spec.retention_ms }
    }
}

impl From<&TopicSpec> for DesiredTopic {
    fn from(spec: &TopicSpec) -> Self {
        (*spec).into()
    }
}

impl From<&DesiredTopic> for DesiredTopic {
    fn from(topic: &DesiredTopic) -> Self {
        topic.clone()
    }
}

/// One change made to a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicChange {
    /// The topic did not exist and was created.
    Created { partitions: i32, retention_ms: i64 },
    /// Partitions were added.
    Grew { from: i32, to: i32 },
    /// `retention.ms` was set (`from`: the previous value, if the broker
    /// reported one).
    RetentionUpdated { from: Option<i64>, to: i64 },
}

/// What [`ensure_topics`] found and did for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicReport {
    pub name: String,
    /// Changes made, in order; empty when the topic already matched.
    pub changes: Vec<TopicChange>,
    /// Partition count after the call: the desired count, or more when the
    /// topic already had more (it is never shrunk).
    pub partitions: i32,
}

impl TopicReport {
    /// True when nothing had to change.
    pub fn is_unchanged(&self) -> bool {
        self.changes.is_empty()
    }

    /// True when the topic was created by this call.
    pub fn was_created(&self) -> bool {
        self.changes.iter().any(|change| matches!(change, TopicChange::Created { .. }))
    }
}

/// Something failed while administering topics.
#[derive(Debug, thiserror::Error)]
pub enum TopicAdminError {
    #[error("cannot create the Kafka admin client")]
    CreateClient(#[source] KafkaError),
    #[error("topic {topic}: {reason}")]
    ValidateSpec { topic: String, reason: &'static str },
    #[error("cannot fetch the cluster's topic metadata")]
    FetchMetadata(#[source] KafkaError),
    #[error("the metadata of topics {topics} did not settle within {SETTLE_TIMEOUT:?}")]
    SettleMetadata { topics: String },
    #[error("cannot create topic {topic}")]
    CreateTopic {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot add partitions to topic {topic}")]
    AddPartitions {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot read the configuration of topic {topic}")]
    DescribeConfig {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot update the configuration of topic {topic}")]
    AlterConfig {
        topic: String,
        #[source]
        source: KafkaError,
    },
}

/// Ensures `topics` exist as desired on the cluster at `brokers`; see the
/// module docs. Accepts the catalog's specs directly
/// (`ensure_topics(brokers, &catalog::all_topics())`) or [`DesiredTopic`]s
/// (for prefixed names, see [`TopicNames::desired`](super::TopicNames::desired)).
pub async fn ensure_topics<T>(
    brokers: &str,
    topics: impl IntoIterator<Item = T>,
) -> Result<Vec<TopicReport>, TopicAdminError>
where
    T: Into<DesiredTopic>,
{
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    TopicAdmin::new(&config)?.ensure(topics).await
}

/// A Kafka admin client for [`ensure`](Self::ensure); build it from
/// [`KafkaArgs::client_config`](super::KafkaArgs::client_config) to carry
/// TLS/SASL settings. Cheap to clone.
#[derive(Clone)]
pub struct TopicAdmin {
    client: Arc<AdminClient<DefaultClientContext>>,
}

impl std::fmt::Debug for TopicAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicAdmin").finish_non_exhaustive()
    }
}

impl TopicAdmin {
    /// The admin client `config` describes. Its metadata requests name
    /// topics, and asking about a topic never creates it
    /// (`allow.auto.create.topics` is off whatever `config` says; librdkafka
    /// turns it on for this kind of client, and a broker with
    /// `auto.create.topics.enable` would then create any topic looked up).
    pub fn new(config: &ClientConfig) -> Result<Self, TopicAdminError> {
        let mut config = config.clone();
        config.set("allow.auto.create.topics", "false");
        let client = config.create().map_err(TopicAdminError::CreateClient)?;
        Ok(Self { client: Arc::new(client) })
    }

    /// Partition counts of those of `names` that exist.
    pub async fn partition_counts(&self, names: &[&str]) -> Result<HashMap<String, i32>, TopicAdminError> {
        Ok(self
            .fetch_topics(names)
            .await?
            .into_iter()
            .map(|(name, state)| (name, state.partitions))
            .collect())
    }

    /// Those of `names` that exist, as the metadata shows them.
    ///
    /// One metadata request per topic, never one for the whole cluster: a
    /// shared cluster holds thousands of topics that are not ours, and
    /// librdkafka parses and caches every topic a response lists (11 MiB of
    /// the operator's heap with 5,000 topics, against 60 MiB in all with
    /// 100 stacks); ACLs may also let us describe only our own topics.
    async fn fetch_topics(&self, names: &[&str]) -> Result<HashMap<String, TopicState>, TopicAdminError> {
        let client = self.client.clone();
        let names: Vec<String> = names.iter().map(|&name| name.to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let mut topics = HashMap::with_capacity(names.len());
            for name in &names {
                let metadata = client.inner().fetch_metadata(Some(name), METADATA_TIMEOUT)?;
                for topic in metadata.topics().iter().filter(|topic| topic.name() == name) {
                    let error = topic.error().map(RDKafkaErrorCode::from);
                    if error == Some(RDKafkaErrorCode::UnknownTopicOrPartition) {
                        continue;
                    }
                    let partitions = i32::try_from(topic.partitions().len()).unwrap_or(i32::MAX);
                    // A topic just created (by us or anyone) shows up with an
                    // error such as LeaderNotAvailable and no partitions for
                    // a moment.
                    let settled = error.is_none() && partitions > 0;
                    topics.insert(topic.name().to_owned(), TopicState { partitions, settled });
                }
            }
            Ok(topics)
        })
        .await
        .map_err(|_| TopicAdminError::FetchMetadata(KafkaError::Canceled))?
        .map_err(TopicAdminError::FetchMetadata)
    }

    /// Like [`fetch_topics`](Self::fetch_topics), but waits (briefly) until
    /// every one of `names` that exists has settled metadata, so that a
    /// topic created a moment ago is not mistaken for one without
    /// partitions. With `must_exist`, it also waits for topics that are not
    /// in the metadata yet: one that another process has just created (our
    /// create said "already exists") may not be visible to us for a moment.
    async fn fetch_settled_topics(
        &self,
        names: &[&str],
        must_exist: bool,
    ) -> Result<HashMap<String, TopicState>, TopicAdminError> {
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            let topics = self.fetch_topics(names).await?;
            let unsettled: Vec<&str> = names
                .iter()
                .copied()
                .filter(|name| topics.get(*name).map_or(must_exist, |state| !state.settled))
                .collect();
            if unsettled.is_empty() {
                return Ok(topics);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TopicAdminError::SettleMetadata { topics: unsettled.join(", ") });
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }

    /// `retention.ms` of `topic` as the broker reports it, and the topic's
    /// other explicitly set configs (kept when retention is altered).
    async fn topic_config(
        &self,
        topic: &str,
    ) -> Result<(Option<i64>, BTreeMap<String, String>), TopicAdminError> {
        let describe_error = |source| TopicAdminError::DescribeConfig { topic: topic.to_owned(), source };
        let results = self
            .client
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &options())
            .await
            .map_err(describe_error)?;
        let resource = match results.into_iter().next() {
            Some(Ok(resource)) => resource,
            Some(Err(code)) => return Err(describe_error(KafkaError::AdminOp(code))),
            None => {
                return Err(describe_error(KafkaError::AdminOp(RDKafkaErrorCode::UnknownTopicOrPartition)));
            }
        };
        let retention =
            resource.get(RETENTION_MS).and_then(|entry| entry.value.as_deref()).and_then(|v| v.parse().ok());
        let overrides = resource
            .entries
            .iter()
            .filter(|entry| {
                entry.source == ConfigSource::DynamicTopic && !entry.is_sensitive && !entry.is_read_only
            })
            .filter_map(|entry| entry.value.clone().map(|value| (entry.name.clone(), value)))
            .collect();
        Ok((retention, overrides))
    }

    /// Brings each topic in line with its desired layout, in order; stops at
    /// the first failure (a retry redoes only what is still missing).
    pub async fn ensure<T>(
        &self,
        topics: impl IntoIterator<Item = T>,
    ) -> Result<Vec<TopicReport>, TopicAdminError>
    where
        T: Into<DesiredTopic>,
    {
        let topics: Vec<DesiredTopic> = topics.into_iter().map(Into::into).collect();
        for topic in &topics {
            if topic.partitions < 1 {
                return Err(TopicAdminError::ValidateSpec {
                    topic: topic.name.clone(),
                    reason: "needs at least one partition",
                });
            }
            if topic.retention_ms < -1 {
                return Err(TopicAdminError::ValidateSpec {
                    topic: topic.name.clone(),
                    reason: "retention must be -1 (forever) or a number of milliseconds",
                });
            }
        }
        let names: Vec<&str> = topics.iter().map(|topic| topic.name.as_str()).collect();
        let existing = self.fetch_settled_topics(&names, false).await?;
        let mut reports = Vec::with_capacity(topics.len());
        for topic in &topics {
            let report = match existing.get(&topic.name) {
                None => match self.create(topic).await? {
                    Some(report) => report,
                    // Created by someone else meanwhile: treat as existing.
                    None => {
                        let current = self.fetch_settled_topics(&[topic.name.as_str()], true).await?;
                        let partitions = current.get(&topic.name).map_or(0, |state| state.partitions);
                        self.update(topic, partitions).await?
                    }
                },
                Some(state) => self.update(topic, state.partitions).await?,
            };
            if report.is_unchanged() {
                tracing::debug!(topic = %topic.name, "topic unchanged");
            } else {
                tracing::info!(topic = %topic.name, changes = ?report.changes, "topic updated");
            }
            reports.push(report);
        }
        Ok(reports)
    }

    /// Creates `topic`; `None` if it already exists.
    async fn create(&self, topic: &DesiredTopic) -> Result<Option<TopicReport>, TopicAdminError> {
        let retention = topic.retention_ms.to_string();
        // Replication -1: the broker's default.replication.factor (KIP-464),
        // which the cluster's operator sets for its size (1 locally, 3 in
        // production).
        let new_topic = NewTopic::new(&topic.name, topic.partitions, TopicReplication::Fixed(-1))
            .set(RETENTION_MS, &retention);
        let create_error = |source| TopicAdminError::CreateTopic { topic: topic.name.clone(), source };
        let results = self.client.create_topics(&[new_topic], &options()).await.map_err(create_error)?;
        match results.into_iter().next() {
            Some(Ok(_)) | None => Ok(Some(TopicReport {
                name: topic.name.clone(),
                changes: vec![TopicChange::Created {
                    partitions: topic.partitions,
                    retention_ms: topic.retention_ms,
                }],
                partitions: topic.partitions,
            })),
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(None),
            Some(Err((_, code))) => Err(create_error(KafkaError::AdminOp(code))),
        }
    }

    /// Grows partitions and sets retention of an existing topic as needed.
    async fn update(&self, topic: &DesiredTopic, current: i32) -> Result<TopicReport, TopicAdminError> {
        let mut changes = Vec::new();
        let mut partitions = current;
        if current < topic.partitions {
            let wanted = usize::try_from(topic.partitions).unwrap_or(1);
            let add_error = |source| TopicAdminError::AddPartitions { topic: topic.name.clone(), source };
            let results = self
                .client
                .create_partitions(&[NewPartitions::new(&topic.name, wanted)], &options())
                .await
                .map_err(add_error)?;
            if let Some(Err((_, code))) = results.into_iter().next() {
                return Err(add_error(KafkaError::AdminOp(code)));
            }
            changes.push(TopicChange::Grew { from: current, to: topic.partitions });
            partitions = topic.partitions;
        } else if current > topic.partitions {
            tracing::info!(
                topic = %topic.name,
                current,
                desired = topic.partitions,
                "topic has more partitions than desired; partitions are never removed"
            );
        }

        let (retention, mut overrides) = self.topic_config(&topic.name).await?;
        if retention != Some(topic.retention_ms) {
            // AlterConfigs replaces the topic's whole set of overrides, so
            // the others are sent back unchanged along with the new
            // retention.
            overrides.insert(RETENTION_MS.to_owned(), topic.retention_ms.to_string());
            let alter = overrides
                .iter()
                .fold(AlterConfig::new(ResourceSpecifier::Topic(&topic.name)), |alter, (key, value)| {
                    alter.set(key, value)
                });
            let alter_error = |source| TopicAdminError::AlterConfig { topic: topic.name.clone(), source };
            let results = self.client.alter_configs(&[alter], &options()).await.map_err(alter_error)?;
            if let Some(Err((_, code))) = results.into_iter().next() {
                return Err(alter_error(KafkaError::AdminOp(code)));
            }
            changes.push(TopicChange::RetentionUpdated { from: retention, to: topic.retention_ms });
        }
        Ok(TopicReport { name: topic.name.clone(), changes, partitions })
    }
}

/// A topic as the cluster's metadata shows it.
#[derive(Debug, Clone, Copy)]
struct TopicState {
    partitions: i32,
    /// False while the topic is being created (error, or no partitions yet).
    settled: bool,
}

fn options() -> AdminOptions {
    AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT)).operation_timeout(Some(ADMIN_TIMEOUT))
}
