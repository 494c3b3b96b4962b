//! The email channel's sender: the relay of the `emails` table to an SMTP
//! server (lettre).
//!
//! Emails are queued in the transaction that handled their event
//! ([`enqueue`]), so an email exists exactly when its notification does, and
//! a server that is away never holds the event consumer up. The mailer
//! claims due rows (`FOR UPDATE SKIP LOCKED`, so replicas share the work and
//! never send one row twice at once), sends them, and records the outcome:
//! - accepted: `sent`;
//! - refused for now (a 4xx answer, a connection or TLS failure, a timeout):
//!   tried again after a backoff that doubles up to five minutes;
//! - refused for good (a 5xx answer, an address that does not parse), or
//!   still refused after `--email-max-attempts`: written to the service's
//!   dead-letter topic with the `dlq_*` headers of dead-lettered events,
//!   then marked `dead`. A row is only marked once the topic has it.
//!
//! Delivery is at least once: a crash between the server's acceptance and
//! the `sent` mark sends the email again. Each email's `Message-ID` is fixed
//! by its row id, so a receiving system can tell the two copies are one.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use commerce_platform::events::EventProducer;
use commerce_platform::events::consumer::{DLQ_ATTEMPTS, DLQ_ERROR, DLQ_REASON, DLQ_TIME};
use commerce_platform::events::producer::OutgoingRecord;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use prometheus_client::metrics::counter::Counter;
use rdkafka::message::{Header, OwnedHeaders};
use sqlx::postgres::{PgConnection, PgListener, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Error;
use crate::config::EmailArgs;
use crate::email::{Recipient, Rendered};

/// The channel [`enqueue`] notifies.
const CHANNEL: &str = "notification_email";
/// Emails claimed per round.
const BATCH: i64 = 16;
/// Longest wait between two attempts of one email.
const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// Longest wait for the SMTP server within one send.
const SMTP_TIMEOUT: Duration = Duration::from_secs(15);
/// Dead-letter header: what was given up on (an email, not an event).
pub const DLQ_KIND: &str = "dlq_kind";

/// Queues `rendered` for `recipient`, once per (user, source event); wakes
/// the mailer at commit. `false` when that event already queued it.
pub async fn enqueue(
    conn: &mut PgConnection,
    recipient: &Recipient,
    rendered: &Rendered,
    source_event_id: Uuid,
) -> Result<bool, Error> {
    let inserted = sqlx::query(
        "WITH queued AS ( \
           INSERT INTO emails (id, user_id, to_address, template, subject, body, source_event_id) \
           VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (user_id, source_event_id) DO NOTHING RETURNING id) \
         SELECT pg_notify($8, '') FROM queued",
    )
    .bind(Uuid::now_v7())
    .bind(&recipient.user_id)
    .bind(&recipient.email)
    .bind(rendered.template)
    .bind(&rendered.subject)
    .bind(&rendered.body)
    .bind(source_event_id)
    .bind(CHANNEL)
    .fetch_optional(&mut *conn)
    .await
    .map_err(Error::StoreNotification)?;
    Ok(inserted.is_some())
}

/// What the mailer counts.
#[derive(Debug, Clone, Default)]
pub struct MailerMetrics {
    pub sent: Counter,
    pub retried: Counter,
    pub dead_lettered: Counter,
}

impl MailerMetrics {
    pub fn register(metrics: &commerce_platform::admin::Metrics) -> Self {
        let this = Self::default();
        metrics.register(
            "commerce_notification_emails_sent",
            "Emails the SMTP server accepted",
            this.sent.clone(),
        );
        metrics.register(
            "commerce_notification_emails_retried",
            "Sending attempts refused for now, to be tried again",
            this.retried.clone(),
        );
        metrics.register(
            "commerce_notification_emails_dead_lettered",
            "Emails given up on and written to the dead-letter topic",
            this.dead_lettered.clone(),
        );
        this
    }
}

/// The SMTP side of the mailer, checked from the flags before the service
/// starts: a URL or sender that does not parse stops it with their name.
#[derive(Clone)]
pub struct SmtpSettings {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    max_attempts: u32,
    backoff: Duration,
    poll_interval: Duration,
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings").field("from", &self.from).finish_non_exhaustive()
    }
}

impl SmtpSettings {
    /// The settings of `args`; `None` when the channel is off.
    pub fn from_args(args: &EmailArgs) -> Result<Option<Self>, Error> {
        if !args.enabled() {
            return Ok(None);
        }
        let mut transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(args.smtp_url.trim())
            .map_err(|error| Error::ConfigureEmail(format!("--email-smtp-url: {error}")))?
            .timeout(Some(SMTP_TIMEOUT));
        if !args.smtp_username.is_empty() {
            transport = transport
                .credentials(Credentials::new(args.smtp_username.clone(), args.smtp_password.clone()));
        }
        let transport = transport.build();
        let from = args
            .from
            .parse::<Mailbox>()
            .map_err(|error| Error::ConfigureEmail(format!("--email-from {:?}: {error}", args.from)))?;
        Ok(Some(Self {
            transport,
            from,
            max_attempts: args.max_attempts.max(1),
            backoff: args.retry_backoff,
            poll_interval: args.poll_interval,
        }))
    }
}

/// The sender.
#[derive(Debug)]
pub struct Mailer {
    pool: PgPool,
    smtp: SmtpSettings,
    producer: EventProducer,
    dead_letter_topic: String,
    metrics: MailerMetrics,
}

/// A row claimed for sending.
#[derive(Debug, sqlx::FromRow)]
struct Due {
    id: Uuid,
    to_address: String,
    template: String,
    subject: String,
    body: String,
    source_event_id: Uuid,
    attempts: i32,
}

/// How one attempt went.
enum Attempt {
    Sent,
    Again(String),
    GiveUp(String),
}

impl Mailer {
    /// A mailer sending through `smtp`, dead-lettering through `producer`
    /// to `dead_letter_topic`.
    pub fn new(
        pool: PgPool,
        smtp: SmtpSettings,
        producer: EventProducer,
        dead_letter_topic: String,
        metrics: MailerMetrics,
    ) -> Self {
        Self { pool, smtp, producer, dead_letter_topic, metrics }
    }

    /// Sends due email until `shutdown`: at once when a transaction queued
    /// some, else every poll interval (retries come due that way).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut listener = self.listen().await;
        while !shutdown.is_cancelled() {
            match self.round().await {
                // A full batch: more may be due.
                Ok(claimed) if claimed == BATCH as usize => continue,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error = %crate::error_chain(&error), "the mailer's round failed; trying again");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.smtp.poll_interval) => {}
                woken = wake(&mut listener) => if !woken { listener = self.listen().await },
            }
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await.ok()?;
        listener.listen(CHANNEL).await.ok()?;
        Some(listener)
    }

    /// Claims, sends and records one batch; how many were claimed.
    async fn round(&self) -> Result<usize, Error> {
        let mut tx = commerce_platform::db::begin(&self.pool, "send emails")
            .await
            .map_err(Error::StoreNotification)?;
        let due: Vec<Due> = sqlx::query_as(
            "SELECT id, to_address, template, subject, body, source_event_id, attempts FROM emails \
             WHERE status = 'pending' AND next_attempt_at <= now() \
             ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await
        .map_err(Error::LoadNotifications)?;
        let claimed = due.len();
        for email in due {
            let attempts = email.attempts + 1;
            let outcome = match self.send(&email).await {
                Attempt::Sent => {
                    self.metrics.sent.inc();
                    sqlx::query("UPDATE emails SET status = 'sent', attempts = $2, sent_at = now(), last_error = '' WHERE id = $1")
                        .bind(email.id)
                        .bind(attempts)
                        .execute(&mut *tx)
                        .await
                }
                Attempt::Again(error)
                    if u32::try_from(attempts).unwrap_or(u32::MAX) < self.smtp.max_attempts =>
                {
                    self.metrics.retried.inc();
                    let delay = self.backoff_after(attempts);
                    tracing::info!(email_id = %email.id, attempts, retry_in = ?delay, %error, "email refused for now");
                    sqlx::query(
                        "UPDATE emails SET attempts = $2, last_error = $3, \
                         next_attempt_at = now() + make_interval(secs => $4) WHERE id = $1",
                    )
                    .bind(email.id)
                    .bind(attempts)
                    .bind(&error)
                    .bind(delay.as_secs_f64())
                    .execute(&mut *tx)
                    .await
                }
                Attempt::Again(error) => {
                    match self.dead_letter(&email, "retries_exhausted", &error, attempts).await {
                        Ok(()) => mark_dead(&mut tx, &email, attempts, &error).await,
                        Err(()) => continue,
                    }
                }
                Attempt::GiveUp(error) => match self.dead_letter(&email, "permanent", &error, attempts).await
                {
                    Ok(()) => mark_dead(&mut tx, &email, attempts, &error).await,
                    Err(()) => continue,
                },
            };
            outcome.map_err(Error::StoreNotification)?;
        }
        tx.commit().await.map_err(Error::StoreNotification)?;
        Ok(claimed)
    }

    async fn send(&self, email: &Due) -> Attempt {
        let to = match email.to_address.parse::<Mailbox>() {
            Ok(to) => to,
            Err(error) => {
                return Attempt::GiveUp(format!(
                    "the address {:?} does not parse: {error}",
                    email.to_address
                ));
            }
        };
        let message = Message::builder()
            .from(self.smtp.from.clone())
            .to(to)
            .subject(email.subject.clone())
            .message_id(Some(format!("<{}@commerce-stack>", email.id)))
            .header(ContentType::TEXT_PLAIN)
            .body(email.body.clone());
        let message = match message {
            Ok(message) => message,
            Err(error) => return Attempt::GiveUp(format!("the email does not build: {error}")),
        };
        match self.smtp.transport.send(message).await {
            Ok(_) => Attempt::Sent,
            Err(error) if error.is_permanent() => Attempt::GiveUp(crate::error_chain(&error)),
            Err(error) => Attempt::Again(crate::error_chain(&error)),
        }
    }

    /// The wait after the `attempts`-th failure.
    fn backoff_after(&self, attempts: i32) -> Duration {
        let doublings = u32::try_from(attempts.saturating_sub(1)).unwrap_or(0).min(20);
        self.smtp.backoff.saturating_mul(2u32.saturating_pow(doublings)).min(BACKOFF_CAP)
    }

    /// Writes the email to the dead-letter topic; `Err` when the broker did
    /// not take it (the row stays pending and comes again).
    async fn dead_letter(&self, email: &Due, reason: &str, error: &str, attempts: i32) -> Result<(), ()> {
        let payload = serde_json::json!({
            "email_id": email.id,
            "to": email.to_address,
            "template": email.template,
            "subject": email.subject,
            "source_event_id": email.source_event_id,
        })
        .to_string();
        let key = email.id.to_string();
        let attempts_text = attempts.to_string();
        let time = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        let mut headers = OwnedHeaders::new();
        for (name, value) in [
            (DLQ_KIND, "email"),
            (DLQ_ERROR, error),
            (DLQ_REASON, reason),
            (DLQ_ATTEMPTS, attempts_text.as_str()),
            (DLQ_TIME, time.as_str()),
            ("content-type", "application/json"),
        ] {
            headers = headers.insert(Header { key: name, value: Some(value) });
        }
        let record = OutgoingRecord {
            topic: &self.dead_letter_topic,
            key: Some(key.as_bytes()),
            payload: Some(payload.as_bytes()),
            headers,
        };
        match self.producer.send(record).await {
            Ok(_) => {
                self.metrics.dead_lettered.inc();
                tracing::warn!(email_id = %email.id, reason, attempts, error, topic = %self.dead_letter_topic, "email dead-lettered");
                Ok(())
            }
            Err(send_error) => {
                tracing::error!(email_id = %email.id, error = %crate::error_chain(&send_error), "cannot dead-letter an email; it stays queued");
                Err(())
            }
        }
    }
}

async fn mark_dead(
    conn: &mut PgConnection,
    email: &Due,
    attempts: i32,
    error: &str,
) -> Result<sqlx::postgres::PgQueryResult, sqlx::Error> {
    sqlx::query("UPDATE emails SET status = 'dead', attempts = $2, last_error = $3 WHERE id = $1")
        .bind(email.id)
        .bind(attempts)
        .bind(error)
        .execute(conn)
        .await
}

/// Waits for a notification; `false` when the listener is gone (it is then
/// made again).
async fn wake(listener: &mut Option<PgListener>) -> bool {
    match listener {
        Some(listener) => listener.recv().await.is_ok(),
        None => std::future::pending().await,
    }
}
