//! Topic administration against the real Kafka: create with the catalog's
//! layout, grow, never shrink, update retention, and change nothing the
//! second time.

use anyhow::Context;
use commerce_platform::events::{DesiredTopic, TopicAdmin, TopicChange, TopicNames, ensure_topics};
use commerce_testkit::{
    drop_kafka_namespace, eventually, init_logging, kafka_brokers, require_kafka, unique_prefix,
};
use commerce_topology::all_topics;
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

fn admin() -> anyhow::Result<TopicAdmin> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", kafka_brokers());
    Ok(TopicAdmin::new(&config)?)
}

#[tokio::test]
async fn ensure_topics_creates_the_catalog_topics_with_their_partitions_and_is_idempotent()
-> anyhow::Result<()> {
    init_logging();
    require_kafka().await?;
    let prefix = unique_prefix();
    let names = TopicNames::new(&prefix);
    let desired: Vec<DesiredTopic> = all_topics().iter().map(|spec| names.desired(spec)).collect();

    let first = ensure_topics(&kafka_brokers(), &desired).await?;
    assert_eq!(first.len(), desired.len());
    for (report, topic) in first.iter().zip(&desired) {
        assert_eq!(report.name, topic.name);
        assert_eq!(
            report.changes,
            vec![TopicChange::Created { partitions: topic.partitions, retention_ms: topic.retention_ms }]
        );
    }
    let admin = admin()?;
    eventually("the cluster to show every topic with the catalog's partitions", || async {
        let mut looked_up: Vec<&str> = desired.iter().map(|topic| topic.name.as_str()).collect();
        let missing = format!("{}-never-created", desired[0].name);
        looked_up.push(&missing);
        let counts = admin.partition_counts(&looked_up).await?;
        // Only the topics asked about, and not the one that does not exist.
        let shown = desired.iter().all(|topic| counts.get(&topic.name) == Some(&topic.partitions))
            && counts.len() == desired.len();
        Ok(shown.then_some(()))
    })
    .await?;

    // Everything already matches (retention included): nothing changes.
    let second = ensure_topics(&kafka_brokers(), &desired).await?;
    assert!(second.iter().all(|report| report.is_unchanged()), "{second:?}");

    drop_kafka_namespace(&prefix).await;
    Ok(())
}

/// Two processes starting at once (two replicas, or `serve all` next to a
/// single service) both ensure the same new topics: one creates each topic,
/// the other hears "already exists" and must wait to see it, not mistake it
/// for a topic with no partitions and try to grow it.
#[tokio::test]
async fn two_concurrent_ensure_calls_for_the_same_new_topics_both_succeed() -> anyhow::Result<()> {
    init_logging();
    require_kafka().await?;
    let prefix = unique_prefix();
    let names = TopicNames::new(&prefix);
    let desired: Vec<DesiredTopic> = all_topics().iter().map(|spec| names.desired(spec)).collect();

    let brokers = kafka_brokers();
    let (first, second) =
        tokio::join!(ensure_topics(&brokers, desired.clone()), ensure_topics(&brokers, desired.clone()));
    let (first, second) = (first.context("first ensure")?, second.context("second ensure")?);
    for topic in &desired {
        let created = [&first, &second]
            .iter()
            .filter(|reports| {
                reports.iter().any(|report| {
                    report.name == topic.name
                        && matches!(report.changes.as_slice(), [TopicChange::Created { .. }])
                })
            })
            .count();
        assert!(created <= 1, "{} was reported created twice", topic.name);
        for reports in [&first, &second] {
            let report = reports.iter().find(|report| report.name == topic.name).expect("a report per topic");
            assert_eq!(report.partitions, topic.partitions, "{}", topic.name);
        }
    }

    drop_kafka_namespace(&prefix).await;
    Ok(())
}

#[tokio::test]
async fn ensure_topics_grows_partitions_but_never_shrinks_them() -> anyhow::Result<()> {
    init_logging();
    require_kafka().await?;
    let prefix = unique_prefix();
    let name = format!("{prefix}grow");
    let topic = |partitions| DesiredTopic { name: name.clone(), partitions, retention_ms: 3_600_000 };

    let created = ensure_topics(&kafka_brokers(), [topic(2)]).await?;
    assert!(created[0].was_created());

    let grown = ensure_topics(&kafka_brokers(), [topic(4)]).await?;
    assert_eq!(grown[0].changes, vec![TopicChange::Grew { from: 2, to: 4 }]);
    assert_eq!(grown[0].partitions, 4);
    let admin = admin()?;
    eventually("the cluster to show 4 partitions", || async {
        Ok((admin.partition_counts(&[name.as_str()]).await?.get(&name) == Some(&4)).then_some(()))
    })
    .await?;

    let fewer = ensure_topics(&kafka_brokers(), [topic(1)]).await?;
    assert!(fewer[0].is_unchanged(), "asking for fewer partitions changes nothing: {fewer:?}");
    assert_eq!(fewer[0].partitions, 4, "the report shows the partitions kept");
    assert_eq!(admin.partition_counts(&[name.as_str()]).await?.get(&name), Some(&4), "never shrunk");

    drop_kafka_namespace(&prefix).await;
    Ok(())
}

#[tokio::test]
async fn ensure_topics_updates_a_different_retention_once() -> anyhow::Result<()> {
    init_logging();
    require_kafka().await?;
    let prefix = unique_prefix();
    let name = format!("{prefix}retention");
    let topic = |retention_ms| DesiredTopic { name: name.clone(), partitions: 1, retention_ms };

    ensure_topics(&kafka_brokers(), [topic(3_600_000)]).await?;
    // Someone tuned another setting of the topic by hand.
    let client: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create()?;
    let tuned = AlterConfig::new(ResourceSpecifier::Topic(&name))
        .set("retention.ms", "3600000")
        .set("max.message.bytes", "2000000");
    for result in client.alter_configs(&[tuned], &AdminOptions::new()).await? {
        result.map_err(|(_, code)| anyhow::anyhow!("cannot tune the topic: {code}"))?;
    }
    // The broker applies config changes asynchronously; start from the state
    // the test means to set up, the hand-tuned value visible.
    eventually("the hand-tuned setting to be visible", || async {
        let described =
            client.describe_configs(&[ResourceSpecifier::Topic(&name)], &AdminOptions::new()).await?;
        let resource = described
            .into_iter()
            .next()
            .context("a description")?
            .map_err(|code| anyhow::anyhow!("{code}"))?;
        Ok((resource.get("max.message.bytes").and_then(|entry| entry.value.as_deref()) == Some("2000000"))
            .then_some(()))
    })
    .await?;

    let updated = ensure_topics(&kafka_brokers(), [topic(7_200_000)]).await?;
    assert_eq!(
        updated[0].changes,
        vec![TopicChange::RetentionUpdated { from: Some(3_600_000), to: 7_200_000 }]
    );
    let again = ensure_topics(&kafka_brokers(), [topic(7_200_000)]).await?;
    assert!(again[0].is_unchanged(), "{again:?}");

    // The hand-tuned setting survived the retention update.
    let described = client.describe_configs(&[ResourceSpecifier::Topic(&name)], &AdminOptions::new()).await?;
    let resource =
        described.into_iter().next().context("a description")?.map_err(|code| anyhow::anyhow!("{code}"))?;
    let value = |key: &str| resource.get(key).and_then(|entry| entry.value.clone());
    assert_eq!(value("retention.ms").as_deref(), Some("7200000"));
    assert_eq!(value("max.message.bytes").as_deref(), Some("2000000"), "other overrides are kept");

    drop_kafka_namespace(&prefix).await;
    Ok(())
}

#[tokio::test]
async fn ensure_topics_rejects_a_topic_without_partitions_before_touching_the_cluster() -> anyhow::Result<()>
{
    let error = ensure_topics(
        "127.0.0.1:1",
        [DesiredTopic { name: "never-created".to_owned(), partitions: 0, retention_ms: 1 }],
    )
    .await
    .expect_err("zero partitions is invalid");
    assert!(error.to_string().contains("at least one partition"), "{error}");
    Ok(())
}
