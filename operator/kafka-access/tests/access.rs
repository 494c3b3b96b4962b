//! SCRAM users and ACLs against the shared test broker's SASL_SSL listener
//! (e2e/scripts/kafka.sh: TLS, SCRAM-SHA-512, StandardAuthorizer, admin user
//! `commerce` a super user). What a user may do is checked by producing and
//! consuming as that user, not only by reading the ACLs back.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use commerce_kafka_access::{AclBinding, KafkaAccess, Operation, ResourceType, ScramMechanism};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

fn env(name: &str) -> Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set: source e2e/infra.env (make test does)"))
}

fn tls_dir() -> Result<PathBuf> {
    Ok(PathBuf::from(env("COMMERCE_KAFKA_TLS_DIR")?))
}

/// A client of the SASL_SSL listener as `user`.
fn config_as(user: &str, password: &str) -> Result<ClientConfig> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", format!("127.0.0.1:{}", env("COMMERCE_KAFKA_SASL_SSL_PORT")?))
        .set("security.protocol", "sasl_ssl")
        .set("ssl.ca.location", tls_dir()?.join("ca.pem").display().to_string())
        .set("sasl.mechanism", "SCRAM-SHA-512")
        .set("sasl.username", user)
        .set("sasl.password", password);
    Ok(config)
}

fn admin_config() -> Result<ClientConfig> {
    let file = tls_dir()?.join("scram-password");
    let password = std::fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?;
    config_as("commerce", password.trim())
}

async fn create_topic(name: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = admin_config()?.create()?;
    let results = admin
        .create_topics(&[NewTopic::new(name, 1, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await?;
    for result in results {
        result.map_err(|(topic, code)| anyhow::anyhow!("creating {topic}: {code}"))?;
    }
    Ok(())
}

async fn delete_topics(names: &[&str]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = admin_config()?.create()?;
    admin.delete_topics(names, &AdminOptions::new()).await?;
    Ok(())
}

/// Produces one record to `topic` as the client of `config`.
async fn produce(config: &ClientConfig, topic: &str) -> Result<(), KafkaError> {
    let producer: FutureProducer = config.clone().set("message.timeout.ms", "10000").create()?;
    producer
        .send(FutureRecord::<(), _>::to(topic).payload("hello"), Duration::from_secs(10))
        .await
        .map(|_| ())
        .map_err(|(error, _)| error)
}

/// The first record of `topic` read in group `group`, or the error.
async fn consume(config: &ClientConfig, topic: &str, group: &str) -> Result<String, KafkaError> {
    let consumer: StreamConsumer = config
        .clone()
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()?;
    consumer.subscribe(&[topic])?;
    match tokio::time::timeout(Duration::from_secs(20), consumer.recv()).await {
        Ok(Ok(message)) => Ok(String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned()),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(KafkaError::MessageConsumption(RDKafkaErrorCode::RequestTimedOut)),
    }
}

fn refused(
    outcome: Result<impl std::fmt::Debug, KafkaError>,
    code: RDKafkaErrorCode,
    what: &str,
) -> Result<()> {
    match outcome {
        Ok(value) => bail!("{what} succeeded: {value:?}"),
        Err(error) => {
            ensure!(
                error.rdkafka_error_code() == Some(code),
                "{what}: refused with {error}, expected {code:?}"
            );
            Ok(())
        }
    }
}

#[tokio::test]
async fn a_scram_user_with_prefixed_acls_reaches_its_topics_and_groups_and_nothing_else() -> Result<()> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let own = format!("access-{run}.own.");
    let other = format!("access-{run}.other.");
    let (own_topic, other_topic) = (format!("{own}events"), format!("{other}events"));
    create_topic(&own_topic).await?;
    create_topic(&other_topic).await?;
    // Something to read on the other topic, written by the admin.
    produce(&admin_config()?, &other_topic).await.context("the admin producing")?;

    let access = KafkaAccess::new(&admin_config()?)?;
    let user = format!("access-{run}");
    let principal = format!("User:{user}");
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let outcome = async {
        access.upsert_scram_credential(&user, ScramMechanism::Sha512, &password, 8192).await?;
        // Again, with the same password: no error, still valid.
        access.upsert_scram_credential(&user, ScramMechanism::Sha512, &password, 8192).await?;
        let wanted = vec![
            AclBinding::allow_prefixed(ResourceType::Topic, &own, &principal, Operation::Read),
            AclBinding::allow_prefixed(ResourceType::Topic, &own, &principal, Operation::Write),
            AclBinding::allow_prefixed(ResourceType::Group, &own, &principal, Operation::Read),
        ];
        access.create_acls(&wanted).await?;
        // Creating what exists is no error.
        access.create_acls(&wanted[..1]).await?;
        let mut listed = access.acls_of(&principal).await?;
        listed.sort();
        let mut expected = wanted.clone();
        expected.sort();
        ensure!(listed == expected, "the broker holds {listed:?}, expected {expected:?}");

        // ACLs take effect on the broker's metadata image: a moment after
        // the controller took them.
        let as_user = config_as(&user, &password)?;
        let mut produced = produce(&as_user, &own_topic).await;
        for _ in 0..20 {
            if produced.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            produced = produce(&as_user, &own_topic).await;
        }
        produced.context("the user producing to its own topic")?;
        let read =
            consume(&as_user, &own_topic, &format!("{own}group")).await.context("reading its own topic")?;
        ensure!(read == "hello", "read {read:?}");
        refused(
            produce(&as_user, &other_topic).await,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            "producing to the other prefix's topic",
        )?;
        refused(
            consume(&as_user, &other_topic, &format!("{own}group-2")).await,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            "reading the other prefix's topic",
        )?;
        refused(
            consume(&as_user, &own_topic, &format!("{other}group")).await,
            RDKafkaErrorCode::GroupAuthorizationFailed,
            "joining the other prefix's group",
        )?;

        ensure!(access.delete_acls_of(&principal).await? == 3, "not all three ACLs were deleted");
        ensure!(access.acls_of(&principal).await?.is_empty(), "ACLs left after deleting them");
        ensure!(
            access.delete_scram_credential(&user, ScramMechanism::Sha512).await?,
            "no credential to delete"
        );
        ensure!(
            !access.delete_scram_credential(&user, ScramMechanism::Sha512).await?,
            "a deleted credential was deleted again"
        );
        Ok(())
    }
    .await;
    // Clean up whatever the outcome.
    let _ = access.delete_acls_of(&principal).await;
    let _ = access.delete_scram_credential(&user, ScramMechanism::Sha512).await;
    let _ = delete_topics(&[&own_topic, &other_topic]).await;
    outcome
}

#[tokio::test]
async fn a_user_without_rights_is_refused_with_the_brokers_reason() -> Result<()> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let user = format!("access-{run}");
    let password = "not-an-admin";
    let admin = KafkaAccess::new(&admin_config()?)?;
    admin.upsert_scram_credential(&user, ScramMechanism::Sha512, password, 4096).await?;
    let outcome = async {
        let not_admin = KafkaAccess::new(&config_as(&user, password)?)?;
        let binding =
            AclBinding::allow_prefixed(ResourceType::Topic, "x.", &format!("User:{user}"), Operation::Read);
        match not_admin.create_acls(&[binding]).await {
            Ok(()) => bail!("a user without rights created an ACL"),
            Err(error) => ensure!(
                error.code() == Some(RDKafkaErrorCode::ClusterAuthorizationFailed),
                "refused for another reason: {error}"
            ),
        }
        match not_admin.upsert_scram_credential("someone-else", ScramMechanism::Sha512, "pw", 4096).await {
            Ok(()) => bail!("a user without rights set a credential"),
            Err(error) => ensure!(
                error.code() == Some(RDKafkaErrorCode::ClusterAuthorizationFailed),
                "refused for another reason: {error}"
            ),
        }
        Ok(())
    }
    .await;
    let _ = admin.delete_scram_credential(&user, ScramMechanism::Sha512).await;
    outcome
}
