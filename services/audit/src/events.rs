//! The consumer's handler: every event of every domain topic becomes the
//! next entry of the chain, in the transaction that also marks the event
//! processed.

use chrono::Utc;
use commerce_platform::events::{BatchedEvent, Batching, EventHandler, HandlerError, IncomingEvent};
use opentelemetry::trace::TraceId;
use sqlx::{Postgres, Transaction};

use crate::payload::Payload;
use crate::store::{self, NewEntry};

/// Records each event it is given; it handles every type, many to a
/// transaction (`--audit-batch-events`, `--audit-batch-linger`): the trail
/// is read by people, for whom a quarter of a second is nothing, while the
/// chain takes one lock per transaction and every event would otherwise be
/// a commit of its own (about ten per order, competing with the saga's for
/// the database and the CPU).
#[derive(Debug, Clone, Copy)]
pub struct AuditEventHandler {
    pub batching: Batching,
}

/// The entry an incoming event becomes.
pub fn new_entry(event: &IncomingEvent) -> NewEntry {
    let payload = Payload::decode(event.event_type(), event.payload());
    let subject = event
        .subject()
        .map(str::to_owned)
        .or_else(|| event.key().map(|key| String::from_utf8_lossy(key).into_owned()))
        .unwrap_or_default();
    let trace_id = event
        .trace_context()
        .map(|context| context.trace_id())
        .filter(|id| *id != TraceId::INVALID)
        .map(|id| id.to_string())
        .unwrap_or_default();
    NewEntry {
        event_id: event.id(),
        event_type: event.event_type().to_owned(),
        source: event.source().to_owned(),
        subject,
        actor_id: payload.actor(),
        trace_id,
        occurred_at: event.time(),
        payload: event.payload().to_vec(),
    }
}

#[async_trait::async_trait]
impl EventHandler for AuditEventHandler {
    fn batching(&self) -> Batching {
        self.batching
    }

    /// The whole batch in two statements ([`store::append_many`]).
    async fn handle_batch(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        events: &[BatchedEvent<'_>],
    ) -> Result<(), HandlerError> {
        let entries = events.iter().map(|batched| new_entry(batched.event)).collect();
        match store::append_many(tx, entries, Utc::now()).await {
            Ok(appended) => {
                tracing::debug!(appended, "events recorded in the audit trail");
                Ok(())
            }
            Err(error) if error.is_transient() => Err(HandlerError::retryable(error)),
            Err(error) => Err(HandlerError::permanent(error)),
        }
    }

    async fn handle(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let entry = new_entry(event);
        match store::append(tx, entry, Utc::now()).await {
            Ok(Some(recorded)) => {
                tracing::debug!(
                    sequence = recorded.fields.sequence,
                    event_type = %recorded.fields.event_type,
                    "event recorded in the audit trail"
                );
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(error) if error.is_transient() => Err(HandlerError::retryable(error)),
            Err(error) => Err(HandlerError::permanent(error)),
        }
    }
}
