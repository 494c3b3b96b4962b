//! The transactional outbox: how a service publishes an event without ever
//! losing it or publishing one for a change that did not happen.
//!
//! A service calls [`enqueue`] inside the database transaction that makes
//! the change the event reports; the event becomes a row of
//! `commerce_platform.outbox` that commits or rolls back with the change.
//! The [`OutboxRelay`] then publishes committed rows to Kafka with the
//! idempotent producer, waits for the broker's acknowledgement and only then
//! marks them published. A crash anywhere in between leaves the row
//! unpublished, so it is sent again: delivery is at least once, and
//! consumers deduplicate on `ce_id` (see [`consumer`](super::consumer)).
//!
//! Order: rows are published in commit-sequence order (`position`), and one
//! relay per database is active at a time (the holder of a Postgres
//! advisory lock; the others wait as hot standbys), so one aggregate's
//! events reach their partition in the order their transactions wrote them,
//! however many replicas the service runs.
//!
//! A row the brokers refuse for good (a record over the topic's size limit)
//! holds back the rows behind it rather than being skipped, since skipping
//! would break the order; it shows as a growing backlog and failure count in
//! the relay's metrics and as warnings naming the row.
//!
//! Latency: `enqueue` sends a `NOTIFY` that the relay `LISTEN`s for, so an
//! event leaves within milliseconds of its commit; a slow poll covers
//! notifications lost while the listener reconnects.

use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgListener, PgPool};
use sqlx::types::Json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use commerce_topology::Service;

use super::EventPayload;
use super::cloudevents::{CloudEventAttributes, headers_from_pairs};
use super::metrics::EventMetrics;
use super::producer::{EventProducer, OutgoingRecord, ProducerError};
use crate::backoff::Backoff;
use crate::db::sleep_or_cancelled;
use crate::errors::error_chain;
use crate::trace_context;

/// Channel of the `NOTIFY` that wakes the relay after a commit.
pub const NOTIFY_CHANNEL: &str = "commerce_platform_outbox";

/// Advisory lock key of the relay's leadership (ASCII "cpoutbox").
/// Advisory keys are per database: one leader per service database. The
/// leading session shows in `pg_locks` (`locktype = 'advisory'`,
/// `(classid::bigint << 32) | objid::bigint` = this key).
pub const RELAY_LOCK_KEY: i64 = 0x6370_6f75_7462_6f78;

/// Delays between reconnection attempts after the database went away.
const RECONNECT_BACKOFF_BASE: Duration = Duration::from_millis(500);
const RECONNECT_BACKOFF_CAP: Duration = Duration::from_secs(10);
/// Delays between publish attempts while the brokers refuse records; the
/// delivery timeout already spent some time before each.
const PUBLISH_BACKOFF_BASE: Duration = Duration::from_millis(500);
const PUBLISH_BACKOFF_CAP: Duration = Duration::from_secs(10);
/// How often the purge of old published rows runs.
const PURGE_INTERVAL: Duration = Duration::from_secs(3600);
/// Rows deleted per purge statement, so that a purge never holds many locks
/// or a long transaction.
const PURGE_BATCH: i64 = 1000;

/// Something failed writing to or relaying from the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("cannot write event {event_type} to the outbox")]
    InsertEvent {
        event_type: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot connect the outbox relay to the database")]
    ConnectRelay(#[source] sqlx::Error),
    #[error("cannot try the outbox relay's leader lock")]
    TryLeaderLock(#[source] sqlx::Error),
    #[error("cannot read unpublished outbox rows")]
    ReadUnpublished(#[source] sqlx::Error),
    #[error("cannot publish outbox row {id}")]
    PublishRow {
        id: Uuid,
        #[source]
        source: ProducerError,
    },
    #[error("cannot mark outbox rows published")]
    MarkPublished(#[source] sqlx::Error),
    #[error("cannot purge published outbox rows")]
    PurgePublished(#[source] sqlx::Error),
}

/// Writes `event` to the outbox as part of the caller's transaction (pass
/// `&mut *tx`) and returns its `ce_id`.
///
/// The topic is the event's catalog topic ([`EventPayload::TOPIC`]), the key
/// its aggregate id, and the headers its CloudEvents attributes with the
/// current span as `traceparent`, so that the relay's publication and the
/// consumers' work join the trace of the request that caused it.
/// Nothing is published unless the transaction commits.
pub async fn enqueue<E: EventPayload>(conn: &mut PgConnection, event: &E) -> Result<Uuid, OutboxError> {
    let attributes = CloudEventAttributes::for_event(event);
    let headers: Vec<(&str, String)> = attributes.to_header_pairs();
    // The NOTIFY is delivered at commit and dropped on rollback: exactly
    // the wake-up we want. It rides on the insert's statement, one round
    // trip for both.
    sqlx::query(
        "WITH inserted AS ( \
           INSERT INTO commerce_platform.outbox (id, topic, key, event_type, payload, headers) \
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id) \
         SELECT pg_notify($7, '') FROM inserted",
    )
    .bind(attributes.id)
    .bind(E::TOPIC.name())
    .bind(event.key())
    .bind(E::TYPE)
    .bind(event.encode_to_vec())
    .bind(Json(&headers))
    .bind(NOTIFY_CHANNEL)
    .execute(&mut *conn)
    .await
    .map_err(|source| OutboxError::InsertEvent { event_type: E::TYPE, source })?;
    tracing::debug!(event_id = %attributes.id, event_type = E::TYPE, "event enqueued in the outbox");
    Ok(attributes.id)
}

/// The `outbox_publish` span of one row: a child of the span that enqueued
/// it (its stored `traceparent`), with the event's key as `order_id` when
/// the topic is keyed by order. Returns it with the row's headers, whose
/// trace headers now name this span, so that the consumers' spans are its
/// children.
fn publish_span<'a>(
    topic: &str,
    key: &str,
    stored: &'a [(String, String)],
) -> (tracing::Span, Vec<(&'a str, String)>) {
    let header = |name: &str| stored.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str());
    let enqueued = header(trace_context::TRACEPARENT)
        .and_then(|parent| trace_context::parse(parent, header(trace_context::TRACESTATE)));
    let event_type = header(super::cloudevents::TYPE).unwrap_or_default();
    let span = tracing::info_span!(
        "outbox_publish",
        otel.name = format!("publish {event_type}"),
        otel.kind = "producer",
        messaging.destination.name = topic,
        event_type,
        order_id = tracing::field::Empty,
    );
    if super::key_is_order_id(event_type) {
        span.record("order_id", key);
    }
    let published = trace_context::start(&span, enqueued.as_ref());
    let mut headers: Vec<(&str, String)> = stored
        .iter()
        .filter(|(name, _)| name != trace_context::TRACEPARENT && name != trace_context::TRACESTATE)
        .map(|(name, value)| (name.as_str(), value.clone()))
        .collect();
    match published {
        Some(published) => headers.extend(trace_context::headers(&published)),
        // No telemetry layer: pass the stored context on as it is.
        None => headers.extend(
            stored
                .iter()
                .filter(|(name, _)| name == trace_context::TRACEPARENT || name == trace_context::TRACESTATE)
                .map(|(name, value)| (name.as_str(), value.clone())),
        ),
    }
    (span, headers)
}

/// Tuning of the relay. The defaults suit every service; tests shorten them.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Rows published per round trip: enough to keep up with a burst,
    /// small enough that one round's acknowledgements arrive quickly.
    pub batch_size: i64,
    /// Fallback poll period when no notification arrives.
    pub poll_interval: Duration,
    /// How often a standby relay tries to take over the lead.
    pub standby_interval: Duration,
    /// How long published rows are kept (for audits and replays) before
    /// they are purged: the domain topics' retention, after which the
    /// records are gone from Kafka too.
    pub retain_published: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 100,
            poll_interval: Duration::from_secs(5),
            standby_interval: Duration::from_secs(5),
            retain_published: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Publishes a service database's outbox to Kafka. Run one per process
/// (replicas elect one leader among themselves); see the module docs.
#[derive(Debug)]
pub struct OutboxRelay {
    pool: PgPool,
    producer: EventProducer,
    settings: RelaySettings,
    /// Where to count, and under which service's label; none by default.
    metrics: Option<(EventMetrics, Service)>,
}

impl OutboxRelay {
    pub fn new(pool: PgPool, producer: EventProducer) -> Self {
        Self { pool, producer, settings: RelaySettings::default(), metrics: None }
    }

    pub fn with_settings(mut self, settings: RelaySettings) -> Self {
        self.settings = settings;
        self
    }

    /// Counts published rows, failures, the backlog and leadership into
    /// `metrics`, labelled with `service`.
    pub fn with_metrics(mut self, metrics: EventMetrics, service: Service) -> Self {
        self.metrics = Some((metrics, service));
        self
    }

    fn record(&self, update: impl FnOnce(&EventMetrics, Service)) {
        if let Some((metrics, service)) = &self.metrics {
            update(metrics, *service);
        }
    }

    /// Runs until `shutdown`: waits for the lead, then publishes. Every
    /// failure (database or brokers away, leadership lost) is logged and
    /// retried; a batch in flight at shutdown is finished first.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(RECONNECT_BACKOFF_BASE, RECONNECT_BACKOFF_CAP);
        let mut connection: Option<PgConnection> = None;
        while !shutdown.is_cancelled() {
            let delay = match self.try_lead(&mut connection, &mut backoff, &shutdown).await {
                Ok(Leadership::Standby) => self.settings.standby_interval,
                Ok(Leadership::Ended) => break,
                Err(error) => {
                    // The connection (and with it the lock) is suspect.
                    connection = None;
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %error_chain(&error), retry_in = ?delay, "outbox relay failed; retrying");
                    delay
                }
            };
            if sleep_or_cancelled(delay, &shutdown).await {
                break;
            }
        }
        if let Some(connection) = connection {
            // Closing ends the session and with it the advisory lock.
            let _ = connection.close().await;
        }
        tracing::info!("outbox relay stopped");
    }

    /// One attempt at leading: takes the lock on `connection` (opened if
    /// needed) and publishes until shutdown or a database error.
    async fn try_lead(
        &self,
        connection: &mut Option<PgConnection>,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<Leadership, OutboxError> {
        let conn = match connection {
            Some(conn) => conn,
            None => connection.insert(
                PgConnection::connect_with(&self.pool.connect_options())
                    .await
                    .map_err(OutboxError::ConnectRelay)?,
            ),
        };
        let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(RELAY_LOCK_KEY)
            .fetch_one(&mut *conn)
            .await
            .map_err(OutboxError::TryLeaderLock)?;
        // The database answered: the next failure starts a fresh backoff.
        backoff.reset();
        if !leader {
            tracing::debug!("another outbox relay leads; standing by");
            return Ok(Leadership::Standby);
        }
        tracing::info!("outbox relay leads");
        self.record(|metrics, service| metrics.leading(service, true));
        let result = self.lead(conn, shutdown).await;
        self.record(|metrics, service| metrics.leading(service, false));
        if result.is_err() {
            tracing::warn!("outbox relay gives up the lead");
        }
        result.map(|()| Leadership::Ended)
    }

    /// Publishes while holding the lock, until shutdown (`Ok`) or a database
    /// error on the lock's connection (`Err`: the lock may be gone).
    async fn lead(&self, conn: &mut PgConnection, shutdown: &CancellationToken) -> Result<(), OutboxError> {
        let mut listener = None;
        let mut publish_backoff = Backoff::new(PUBLISH_BACKOFF_BASE, PUBLISH_BACKOFF_CAP);
        let mut next_purge = Instant::now();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            // Listen before reading, so a commit between the read and the
            // wait still wakes us.
            if listener.is_none() {
                listener = self.listen().await;
            }
            match self.publish_batch(conn).await {
                Ok(published) => {
                    publish_backoff.reset();
                    if published > 0
                        && i64::try_from(published).unwrap_or(i64::MAX) >= self.settings.batch_size
                    {
                        // More may be waiting: no need to wait for a wake-up.
                        continue;
                    }
                    // A batch short of the limit took every row unpublished
                    // when it was read, and all went out: the backlog was
                    // empty then, without a count (a query per round).
                    self.record(|metrics, service| {
                        metrics.unpublished(service, 0);
                        metrics.oldest_unpublished_age(service, 0.0);
                    });
                }
                Err(error @ OutboxError::PublishRow { .. }) => {
                    self.count_backlog(conn).await?;
                    let delay = publish_backoff.next_delay();
                    tracing::warn!(error = %error_chain(&error), retry_in = ?delay, "cannot publish outbox rows; retrying");
                    if sleep_or_cancelled(delay, shutdown).await {
                        return Ok(());
                    }
                    continue;
                }
                Err(error) => return Err(error),
            }
            if Instant::now() >= next_purge {
                self.purge_published(conn).await?;
                next_purge = Instant::now() + PURGE_INTERVAL;
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.settings.poll_interval) => {}
                () = next_notification(&mut listener) => {}
            }
        }
    }

    /// Counts the unpublished rows into the backlog gauge (when there are
    /// metrics): while the brokers refuse rows, the backlog grows.
    async fn count_backlog(&self, conn: &mut PgConnection) -> Result<(), OutboxError> {
        if self.metrics.is_none() {
            return Ok(());
        }
        let (backlog, age): (i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*), EXTRACT(EPOCH FROM now() - min(created_at))::float8 \
             FROM commerce_platform.outbox WHERE published_at IS NULL",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(OutboxError::ReadUnpublished)?;
        self.record(|metrics, service| {
            metrics.unpublished(service, backlog);
            metrics.oldest_unpublished_age(service, age.unwrap_or(0.0));
        });
        Ok(())
    }

    /// A listener on [`NOTIFY_CHANNEL`], or `None` (then polling alone
    /// drives the relay until the next attempt).
    async fn listen(&self) -> Option<PgListener> {
        let attempt = async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match attempt.await {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(error = %error, "cannot listen for outbox notifications; polling");
                None
            }
        }
    }

    /// Publishes the oldest unpublished rows, waits for their
    /// acknowledgements and marks the acknowledged ones published. Returns
    /// how many were published; `PublishRow` if any failed (the others
    /// stay marked).
    async fn publish_batch(&self, conn: &mut PgConnection) -> Result<usize, OutboxError> {
        type Row = (Uuid, String, String, Vec<u8>, Json<Vec<(String, String)>>, f64);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, topic, key, payload, headers, EXTRACT(EPOCH FROM now() - created_at)::float8 \
             FROM commerce_platform.outbox WHERE published_at IS NULL ORDER BY position LIMIT $1",
        )
        .bind(self.settings.batch_size)
        .fetch_all(&mut *conn)
        .await
        .map_err(OutboxError::ReadUnpublished)?;
        let Some((.., oldest)) = rows.first() else {
            return Ok(0);
        };
        // The first row is the oldest waiting (by the database's clock).
        self.record(|metrics, service| metrics.oldest_unpublished_age(service, *oldest));

        // Queue the whole batch in order, then await the acknowledgements:
        // one broker round trip per batch instead of per row. The
        // idempotent producer keeps each partition's records in queue order
        // even across its retries, and once one of them fails for good it
        // fails the later ones of that partition too, so a key's events are
        // never acknowledged out of order.
        let names = self.producer.names();
        let mut failure = None;
        let mut pending = Vec::with_capacity(rows.len());
        for (id, topic, key, payload, Json(headers), _) in &rows {
            let topic = names.name(topic);
            let (span, headers) = publish_span(&topic, key, headers);
            let record = OutgoingRecord {
                topic: &topic,
                key: Some(key.as_bytes()),
                payload: Some(payload),
                headers: headers_from_pairs(headers.iter().map(|(name, value)| (*name, value.as_str()))),
            };
            match self.producer.queue(record) {
                // The span ends when the acknowledgement is in.
                Ok(delivery) => pending.push((*id, delivery, span)),
                Err(source) => {
                    failure = Some(OutboxError::PublishRow { id: *id, source });
                    break;
                }
            }
        }
        let mut published = Vec::with_capacity(pending.len());
        for (id, delivery, span) in pending {
            match delivery.acknowledged().await {
                Ok(_) => published.push(id),
                Err(source) => {
                    trace_context::set_error(&span, error_chain(&source));
                    failure.get_or_insert(OutboxError::PublishRow { id, source });
                }
            }
        }

        if !published.is_empty() {
            // Mark what the broker has, even if a later row failed: sending
            // those again would only make duplicates.
            sqlx::query("UPDATE commerce_platform.outbox SET published_at = now() WHERE id = ANY($1)")
                .bind(&published)
                .execute(&mut *conn)
                .await
                .map_err(OutboxError::MarkPublished)?;
            tracing::debug!(count = published.len(), "outbox rows published");
            let count = u64::try_from(published.len()).unwrap_or(u64::MAX);
            self.record(|metrics, service| metrics.published(service, count));
        }
        if failure.is_some() {
            self.record(|metrics, service| metrics.publish_failed(service));
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(published.len()),
        }
    }

    /// Deletes published rows older than the retention, in small batches.
    async fn purge_published(&self, conn: &mut PgConnection) -> Result<(), OutboxError> {
        let retain_seconds = self.settings.retain_published.as_secs_f64();
        loop {
            let deleted = sqlx::query(
                "DELETE FROM commerce_platform.outbox WHERE id IN ( \
                   SELECT id FROM commerce_platform.outbox \
                   WHERE published_at < now() - make_interval(secs => $1) LIMIT $2)",
            )
            .bind(retain_seconds)
            .bind(PURGE_BATCH)
            .execute(&mut *conn)
            .await
            .map_err(OutboxError::PurgePublished)?
            .rows_affected();
            if deleted > 0 {
                tracing::info!(deleted, "purged old published outbox rows");
            }
            if i64::try_from(deleted).unwrap_or(i64::MAX) < PURGE_BATCH {
                return Ok(());
            }
        }
    }
}

/// How one attempt at leading ended.
enum Leadership {
    /// Another relay holds the lock.
    Standby,
    /// Led until shutdown.
    Ended,
}

/// Waits for the next notification; forever when there is no listener (the
/// poll timer then wakes the relay). A listener that fails is dropped, to be
/// opened again on the next round.
async fn next_notification(listener: &mut Option<PgListener>) {
    let Some(active) = listener else {
        return std::future::pending().await;
    };
    if let Err(error) = active.recv().await {
        tracing::warn!(error = %error, "outbox notifications interrupted; polling");
        *listener = None;
    }
}
