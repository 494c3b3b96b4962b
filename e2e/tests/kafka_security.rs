//! Kafka over TLS and SASL/SCRAM, with the services' own client settings:
//! every client here is configured as a service configures its own, from
//! `--kafka-brokers` and `--kafka-property` (`commerce_platform::events::KafkaArgs`),
//! and the round trip goes through the services' producer.
//!
//! The shared test broker (e2e/scripts/kafka.sh) has, beside its plaintext
//! listener, an SSL listener (`COMMERCE_KAFKA_SSL_PORT`) and a SASL_SSL
//! listener with SCRAM-SHA-512 (`COMMERCE_KAFKA_SASL_SSL_PORT`, user
//! `commerce`), whose certificate a CA made by the script signed
//! (`$COMMERCE_KAFKA_TLS_DIR/ca.pem`). Refusals are asserted by what
//! librdkafka reports (a certificate that does not verify, an authentication
//! that fails), not only by a call timing out.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use commerce_platform::events::KafkaArgs;
use commerce_platform::events::producer::{EventProducer, OutgoingRecord};
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedHeaders};

/// How long a refused client is given to say why: librdkafka reports a
/// failed handshake or authentication within a second here.
const REFUSAL_WINDOW: Duration = Duration::from_secs(15);

/// The flags of a service, parsed as a service parses them.
#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    kafka: KafkaArgs,
}

fn env(name: &str) -> Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set: source e2e/infra.env (make test does)"))
}

fn tls_dir() -> Result<PathBuf> {
    Ok(PathBuf::from(env("COMMERCE_KAFKA_TLS_DIR")?))
}

fn ssl_brokers() -> Result<String> {
    Ok(format!("127.0.0.1:{}", env("COMMERCE_KAFKA_SSL_PORT")?))
}

fn sasl_ssl_brokers() -> Result<String> {
    Ok(format!("127.0.0.1:{}", env("COMMERCE_KAFKA_SASL_SSL_PORT")?))
}

fn ca() -> Result<String> {
    Ok(tls_dir()?.join("ca.pem").display().to_string())
}

fn scram_password() -> Result<String> {
    let file = tls_dir()?.join("scram-password");
    Ok(std::fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?.trim().to_owned())
}

/// `KafkaArgs` from `--kafka-brokers brokers --kafka-property properties`.
fn service_args(brokers: &str, properties: &str) -> Result<KafkaArgs> {
    let mut argv = vec!["service", "--kafka-brokers", brokers];
    if !properties.is_empty() {
        argv.extend(["--kafka-property", properties]);
    }
    Ok(Flags::try_parse_from(argv)?.kafka)
}

/// What librdkafka reported through a client's context: errors and
/// warnings, as text.
#[derive(Clone, Default)]
struct Reports(Arc<Mutex<Vec<String>>>);

impl Reports {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn mention(&self, needle: &str) -> bool {
        let needle = needle.to_lowercase();
        self.all().iter().any(|r| r.to_lowercase().contains(&needle))
    }
}

impl ClientContext for Reports {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(format!("{facility}: {message}"));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(format!("{error}: {reason}"));
    }
}

impl ConsumerContext for Reports {}

/// Asks the brokers for the cluster's metadata with `args`' settings;
/// returns what the client reported and whether the request succeeded
/// (with the broker ids seen).
async fn metadata(args: &KafkaArgs, timeout: Duration) -> Result<(Reports, Result<Vec<i32>, KafkaError>)> {
    let reports = Reports::default();
    let consumer: BaseConsumer<Reports> = args.client_config().create_with_context(reports.clone())?;
    let answer = tokio::task::spawn_blocking(move || {
        consumer.fetch_metadata(None, timeout).map(|m| m.brokers().iter().map(|b| b.id()).collect())
    })
    .await?;
    Ok((reports, answer))
}

/// Asks for metadata with `args` until the client reports something that
/// contains one of `reasons` (within [`REFUSAL_WINDOW`]); fails if the
/// brokers answer instead. Returns how long the refusal took to be said.
async fn refused_for(args: &KafkaArgs, reasons: &[&str]) -> Result<Duration> {
    let reports = Reports::default();
    let consumer: BaseConsumer<Reports> = args.client_config().create_with_context(reports.clone())?;
    let reasons: Vec<String> = reasons.iter().map(|r| (*r).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        loop {
            if let Ok(metadata) = consumer.fetch_metadata(None, Duration::from_millis(500)) {
                let brokers: Vec<i32> = metadata.brokers().iter().map(|b| b.id()).collect();
                bail!(
                    "the brokers answered ({brokers:?}) where a refusal was expected; reports: {:?}",
                    reports.all()
                );
            }
            // Errors reach the context when the client's queue is polled.
            let _ = consumer.poll(Duration::from_millis(100));
            if reasons.iter().any(|r| reports.mention(r)) {
                return Ok(started.elapsed());
            }
            ensure!(
                started.elapsed() < REFUSAL_WINDOW,
                "no answer, but within {REFUSAL_WINDOW:?} the client reported none of {reasons:?}: {:?}",
                reports.all()
            );
        }
    })
    .await?
}

/// Creates a topic, produces a record with the services' producer and reads
/// it back, all with `args`' settings; deletes the topic.
async fn round_trip(args: &KafkaArgs) -> Result<()> {
    let topic = format!("commerce-security-{}", uuid::Uuid::new_v4().simple());
    let admin: AdminClient<Reports> = args.client_config().create_with_context(Reports::default())?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in
        admin.create_topics(&[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))], &options).await?
    {
        result.map_err(|(name, code)| anyhow::anyhow!("creating {name}: {code}"))?;
    }
    let outcome = async {
        let producer = EventProducer::new(args)?;
        let payload = b"an order placed over TLS";
        producer
            .send(OutgoingRecord {
                topic: &topic,
                key: Some(b"order-1"),
                payload: Some(payload),
                headers: OwnedHeaders::new(),
            })
            .await?;
        let mut config = args.client_config();
        config.set("group.id", &topic).set("auto.offset.reset", "earliest");
        let consumer: StreamConsumer<Reports> = config.create_with_context(Reports::default())?;
        consumer.subscribe(&[&topic])?;
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .context("no record read back within 30 s")??;
        ensure!(message.payload() == Some(&payload[..]), "read back {:?}", message.payload());
        Ok(())
    }
    .await;
    admin.delete_topics(&[&topic], &options).await?;
    outcome
}

#[tokio::test]
async fn a_client_that_trusts_the_brokers_ca_connects_over_verified_tls_and_round_trips_a_record()
-> Result<()> {
    // librdkafka verifies the broker's name too (ssl.endpoint.identification.algorithm
    // defaults to https): the certificate names 127.0.0.1.
    let args = service_args(&ssl_brokers()?, &format!("security.protocol=ssl,ssl.ca.location={}", ca()?))?;
    let (reports, answer) = metadata(&args, Duration::from_secs(30)).await?;
    let brokers = answer.with_context(|| format!("metadata over TLS: {:?}", reports.all()))?;
    ensure!(brokers == [1], "brokers {brokers:?}");
    round_trip(&args).await
}

#[tokio::test]
async fn a_client_that_trusts_another_ca_is_refused_with_a_certificate_error() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("commerce-other-ca-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let other_ca = dir.join("ca.pem");
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", "/CN=another CA", "-keyout"])
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(&other_ca)
        .output()
        .context("openssl")?;
    ensure!(made.status.success(), "openssl: {}", String::from_utf8_lossy(&made.stderr));
    let args = service_args(
        &ssl_brokers()?,
        &format!("security.protocol=ssl,ssl.ca.location={}", other_ca.display()),
    )?;
    let refused = refused_for(&args, &["certificate verify failed"]).await;
    std::fs::remove_dir_all(&dir)?;
    println!("FIGURE wrong CA: refused (certificate verify failed) after {:.2} s", refused?.as_secs_f64());
    // Without a CA of its own, a client trusts the system's CAs (the
    // services probe the usual bundle paths), which do not know the test CA.
    let args = service_args(&ssl_brokers()?, "security.protocol=ssl")?;
    refused_for(&args, &["certificate verify failed"]).await?;
    Ok(())
}

#[tokio::test]
async fn scram_over_tls_with_the_right_password_round_trips_a_record_and_a_wrong_one_is_refused() -> Result<()>
{
    let settings = |password: &str| -> Result<String> {
        Ok(format!(
            "security.protocol=sasl_ssl,ssl.ca.location={},sasl.mechanism=SCRAM-SHA-512,\
             sasl.username=commerce,sasl.password={password}",
            ca()?
        ))
    };
    let args = service_args(&sasl_ssl_brokers()?, &settings(&scram_password()?)?)?;
    // The password given as a property never shows in the flags' Debug form.
    ensure!(!format!("{args:?}").contains(&scram_password()?), "the SASL password is in {args:?}");
    round_trip(&args).await?;

    let wrong = service_args(&sasl_ssl_brokers()?, &settings("not-the-password")?)?;
    let refused = refused_for(&wrong, &["authentication failed"]).await?;
    println!(
        "FIGURE wrong SCRAM password: refused (authentication failed) after {:.2} s",
        refused.as_secs_f64()
    );
    // A client without SASL at the SASL_SSL listener is refused too.
    let anonymous =
        service_args(&sasl_ssl_brokers()?, &format!("security.protocol=ssl,ssl.ca.location={}", ca()?))?;
    ensure!(
        metadata(&anonymous, Duration::from_secs(5)).await?.1.is_err(),
        "a client without SASL was served"
    );
    Ok(())
}

#[tokio::test]
async fn a_plaintext_client_at_the_tls_listener_fails_cleanly_and_says_why() -> Result<()> {
    // No TLS from the client: the broker sees garbage in a handshake and
    // drops the connection; the client reports it and returns an error
    // within its timeout instead of hanging or crashing.
    let args = service_args(&ssl_brokers()?, "")?;
    let refused = refused_for(
        &args,
        // What librdkafka's error callback says.
        &["all broker connections are down"],
    )
    .await?;
    println!("FIGURE plaintext to TLS: refused after {:.2} s", refused.as_secs_f64());
    // And TLS to the plaintext listener fails its handshake.
    let brokers = env("COMMERCE_KAFKA_BROKERS")?;
    let args = service_args(&brokers, &format!("security.protocol=ssl,ssl.ca.location={}", ca()?))?;
    refused_for(&args, &["ssl handshake failed", "handshake"]).await?;
    Ok(())
}
