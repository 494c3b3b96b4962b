//! The email channel against a real SMTP server (aiosmtpd from PyPI,
//! installed by `e2e/scripts/smtp.sh`, started here on a loopback port and
//! writing what it accepts into a Maildir), real Postgres and real Kafka:
//! each user-visible step reaches the user's mailbox once, with its
//! template, and email the server never takes is retried, then
//! dead-lettered like an event.

mod support;

use std::time::Duration;

use clap::Parser;
use commerce_platform::events::{CloudEventAttributes, TopicNames};
use commerce_proto::events::v1 as ev;
use commerce_topology::Service;
use prost_types::Timestamp;
use support::smtp::SmtpServer;
use support::{
    TestDatabase, drop_kafka_namespace, eventually, free_port, header, init_logging, kafka_namespace,
    publish, publish_with, read_topic, service_flags,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    config: commerce_notification::Config,
}

fn now() -> Option<Timestamp> {
    Some(Timestamp { seconds: chrono::Utc::now().timestamp(), nanos: 0 })
}

/// The notification service with the email channel on, sending to `port`.
struct Notification {
    database: TestDatabase,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), commerce_notification::Error>>,
}

impl Notification {
    async fn start(prefix: &str, smtp_port: u16, extra: &[&str]) -> anyhow::Result<Self> {
        let database = TestDatabase::create("notification").await?;
        let mut flags = service_flags(&database.url, prefix, free_port(), free_port());
        flags.extend([
            format!("--email-smtp-url=smtp://127.0.0.1:{smtp_port}"),
            "--email-from=Shop <shop@example.test>".to_owned(),
            "--email-poll-interval=100ms".to_owned(),
            "--email-retry-backoff=100ms".to_owned(),
        ]);
        flags.extend(extra.iter().map(|flag| (*flag).to_owned()));
        let config = Cli::try_parse_from(flags)?.config;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(commerce_notification::serve(config, shutdown.clone()));
        Ok(Self { database, shutdown, task })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        self.database.drop_database().await
    }
}

fn registered(user: &str, email: &str, name: &str) -> ev::UserRegistered {
    ev::UserRegistered {
        user_id: user.to_owned(),
        email: email.to_owned(),
        display_name: name.to_owned(),
        occurred_at: now(),
        ..Default::default()
    }
}

fn confirmed(order: &str, user: &str) -> ev::OrderConfirmed {
    ev::OrderConfirmed {
        order_id: order.to_owned(),
        user_id: user.to_owned(),
        total: Some(commerce_proto::common::v1::Money { currency_code: "EUR".to_owned(), units: 2500 }),
        occurred_at: now(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_step_reaches_the_users_mailbox_once_with_its_template() -> anyhow::Result<()> {
    init_logging();
    let prefix = kafka_namespace().await?;
    let port = free_port();
    let smtp = SmtpServer::start(port)?;
    let service = Notification::start(&prefix, port, &[]).await?;

    publish(&prefix, &registered("alice", "alice@example.test", "Alice")).await?;
    let order = confirmed("order-7", "alice");
    let attributes = CloudEventAttributes::for_event(&order);
    publish_with(&prefix, &order, &attributes).await?;
    publish_with(&prefix, &order, &attributes).await?; // the same record again
    // Not user-visible: no email. A user the service never heard of: none.
    publish(
        &prefix,
        &ev::PaymentCaptured {
            order_id: "order-7".to_owned(),
            user_id: "alice".to_owned(),
            ..Default::default()
        },
    )
    .await?;
    publish(&prefix, &confirmed("order-8", "stranger")).await?;

    let messages = eventually("two emails in the mailbox", || async {
        let messages = smtp.messages()?;
        anyhow::ensure!(messages.len() <= 2, "more than two emails: {messages:#?}");
        Ok((messages.len() == 2).then_some(messages))
    })
    .await?;
    let welcome = messages.iter().find(|m| m.contains("Subject: Welcome to the shop")).expect("the welcome");
    let confirmation =
        messages.iter().find(|m| m.contains("Subject: Your order is confirmed")).expect("the confirmation");
    for message in [welcome, confirmation] {
        assert!(message.contains("To: alice@example.test"), "{message}");
        assert!(message.contains("From: Shop <shop@example.test>"), "{message}");
        assert!(message.contains("Message-ID: <"), "{message}");
        assert!(message.contains("Hello Alice,"), "{message}");
    }
    assert!(confirmation.contains("Order: order-7"), "{confirmation}");
    assert!(confirmation.contains("25.00 EUR"), "{confirmation}");

    // The stranger's notification is in-app only; both of alice's emails
    // are marked sent once.
    let pool = service.database.pool().await?;
    let rows: Vec<(String, String, i32)> =
        sqlx::query_as("SELECT template, status, attempts FROM emails ORDER BY template")
            .fetch_all(&pool)
            .await?;
    assert_eq!(
        rows,
        [("order_confirmed".to_owned(), "sent".to_owned(), 1), ("welcome".to_owned(), "sent".to_owned(), 1)]
    );
    // Still two after a while: the duplicate record queued nothing more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.messages()?.len(), 2);
    service.stop().await?;
    drop_kafka_namespace(&prefix).await;
    Ok(())
}

/// The users topic and the order topics are consumed side by side, so an
/// order step can be handled before the registration of its customer: its
/// email waits for the address, unless the step is older than the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_handled_before_the_registration_is_mailed_when_the_address_arrives() -> anyhow::Result<()> {
    init_logging();
    let prefix = kafka_namespace().await?;
    let port = free_port();
    let smtp = SmtpServer::start(port)?;
    let service = Notification::start(&prefix, port, &[]).await?;
    let pool = service.database.pool().await?;

    publish(&prefix, &confirmed("order-old", "dave")).await?;
    publish(&prefix, &confirmed("order-new", "dave")).await?;
    eventually("both steps in dave's inbox", || async {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications WHERE user_id = 'dave'")
            .fetch_one(&pool)
            .await?;
        Ok((count == 2).then_some(()))
    })
    .await?;
    // One of them is old news by the time the address arrives.
    sqlx::query(
        "UPDATE notifications SET created_at = now() - interval '2 hours' WHERE order_id = 'order-old'",
    )
    .execute(&pool)
    .await?;
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM emails").fetch_one(&pool).await?;
    assert_eq!(queued, 0, "no address yet, so no email");

    publish(&prefix, &registered("dave", "dave@example.test", "Dave")).await?;
    let messages = eventually("the welcome and the recent step", || async {
        let messages = smtp.messages()?;
        anyhow::ensure!(messages.len() <= 2, "more than two emails: {messages:#?}");
        Ok((messages.len() == 2).then_some(messages))
    })
    .await?;
    assert!(messages.iter().any(|m| m.contains("Subject: Welcome to the shop")), "{messages:#?}");
    let confirmation =
        messages.iter().find(|m| m.contains("Subject: Your order is confirmed")).expect("the confirmation");
    assert!(confirmation.contains("To: dave@example.test"), "{confirmation}");
    assert!(confirmation.contains("Hello Dave,"), "{confirmation}");
    assert!(confirmation.contains("Order: order-new"), "{confirmation}");
    let orders: Vec<String> = sqlx::query_scalar(
        "SELECT n.order_id FROM emails e JOIN notifications n USING (user_id, source_event_id) ORDER BY 1",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(orders, ["", "order-new"], "the welcome and the recent step only");
    service.stop().await?;
    drop_kafka_namespace(&prefix).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_the_server_never_takes_is_retried_then_dead_lettered_and_a_later_server_gets_the_rest()
-> anyhow::Result<()> {
    init_logging();
    let prefix = kafka_namespace().await?;
    // Nothing listens on the port yet.
    let port = free_port();
    let service = Notification::start(&prefix, port, &["--email-max-attempts=3"]).await?;
    let pool = service.database.pool().await?;

    publish(&prefix, &registered("bob", "bob@example.test", "Bob")).await?;
    publish(&prefix, &registered("carol", "not an address", "Carol")).await?;
    let dead: Vec<(String, i32, String)> = eventually("both emails given up on", || async {
        let rows: Vec<(String, i32, String)> = sqlx::query_as(
            "SELECT to_address, attempts, last_error FROM emails WHERE status = 'dead' ORDER BY to_address",
        )
        .fetch_all(&pool)
        .await?;
        Ok((rows.len() == 2).then_some(rows))
    })
    .await?;
    // Bob's: three refused connections. Carol's: refused for good at once.
    assert_eq!((dead[0].0.as_str(), dead[0].1), ("bob@example.test", 3), "{dead:?}");
    assert_eq!((dead[1].0.as_str(), dead[1].1), ("not an address", 1), "{dead:?}");

    let topic = TopicNames::new(prefix.clone()).dead_letter_topic(Service::Notification);
    let records = eventually("two dead-lettered emails", || async {
        let records = read_topic(&topic).await?;
        Ok((records.len() == 2).then_some(records))
    })
    .await?;
    let mut reasons: Vec<(String, String, String)> = records
        .iter()
        .map(|record| {
            let get = |name: &str| header(record, name).unwrap_or_default().to_owned();
            (get("dlq_kind"), get("dlq_reason"), get("dlq_attempts"))
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("email".to_owned(), "permanent".to_owned(), "1".to_owned()),
            ("email".to_owned(), "retries_exhausted".to_owned(), "3".to_owned()),
        ]
    );

    // The server comes up: the next email is sent on its first attempt.
    let smtp = SmtpServer::start(port)?;
    publish(&prefix, &confirmed("order-9", "bob")).await?;
    eventually("the confirmation arrives", || async {
        let messages = smtp.messages()?;
        Ok(messages.iter().any(|m| m.contains("Subject: Your order is confirmed")).then_some(()))
    })
    .await?;
    service.stop().await?;
    drop_kafka_namespace(&prefix).await;
    Ok(())
}
