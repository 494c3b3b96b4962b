//! The audit tables: appending to the chain, reading it back, checking it
//! and removing what retention no longer keeps.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use crate::Error;
pub use crate::domain::Entry;
use crate::domain::{self as chain, EntryFields, Walker};

/// What the chain says about itself: its ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainEnds {
    pub head_sequence: i64,
    pub head_hash: [u8; 32],
    pub anchor_sequence: i64,
    pub anchor_hash: [u8; 32],
}

const COLUMNS: &str = "sequence, event_id, event_type, source, subject, actor_id, trace_id, \
                       occurred_at, recorded_at, payload, previous_hash, hash";

#[derive(sqlx::FromRow)]
struct EntryRow {
    sequence: i64,
    event_id: Uuid,
    event_type: String,
    source: String,
    subject: String,
    actor_id: String,
    trace_id: String,
    occurred_at: DateTime<Utc>,
    recorded_at: DateTime<Utc>,
    payload: Vec<u8>,
    previous_hash: Vec<u8>,
    hash: Vec<u8>,
}

impl From<EntryRow> for Entry {
    fn from(row: EntryRow) -> Self {
        Entry {
            fields: EntryFields {
                sequence: row.sequence,
                event_id: row.event_id,
                event_type: row.event_type,
                source: row.source,
                subject: row.subject,
                actor_id: row.actor_id,
                trace_id: row.trace_id,
                occurred_at: row.occurred_at,
                recorded_at: row.recorded_at,
                payload: row.payload,
            },
            previous_hash: row.previous_hash,
            hash: row.hash,
        }
    }
}

#[derive(sqlx::FromRow)]
struct EndsRow {
    head_sequence: i64,
    head_hash: Vec<u8>,
    anchor_sequence: i64,
    anchor_hash: Vec<u8>,
}

fn hash32(bytes: &[u8], what: &'static str) -> Result<[u8; 32], Error> {
    bytes.try_into().map_err(|_| Error::CorruptChain { what, length: bytes.len() })
}

impl TryFrom<EndsRow> for ChainEnds {
    type Error = Error;

    fn try_from(row: EndsRow) -> Result<Self, Error> {
        Ok(ChainEnds {
            head_sequence: row.head_sequence,
            head_hash: hash32(&row.head_hash, "head hash")?,
            anchor_sequence: row.anchor_sequence,
            anchor_hash: hash32(&row.anchor_hash, "anchor hash")?,
        })
    }
}

/// The chain's ends; `for_update` locks them until the transaction ends
/// (as every append does, so that appends take consecutive sequences one at
/// a time and retention never runs beside one).
pub async fn ends(conn: &mut PgConnection, for_update: bool) -> Result<ChainEnds, Error> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let row: EndsRow = sqlx::query_as(&format!(
        "SELECT head_sequence, head_hash, anchor_sequence, anchor_hash FROM audit_chain{lock}"
    ))
    .fetch_one(&mut *conn)
    .await
    .map_err(Error::ReadChain)?;
    row.try_into()
}

/// An event to record, without its place in the chain.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub event_id: Uuid,
    pub event_type: String,
    pub source: String,
    pub subject: String,
    pub actor_id: String,
    pub trace_id: String,
    pub occurred_at: DateTime<Utc>,
    pub payload: Vec<u8>,
}

impl NewEntry {
    /// The entry's fields at `sequence`, recorded at `recorded_at`, both
    /// times cut to what the database keeps (microseconds), as hashed.
    fn at(self, sequence: i64, recorded_at: DateTime<Utc>) -> EntryFields {
        EntryFields {
            sequence,
            event_id: self.event_id,
            event_type: self.event_type,
            source: self.source,
            subject: self.subject,
            actor_id: self.actor_id,
            trace_id: self.trace_id,
            occurred_at: chain::to_micros(self.occurred_at),
            recorded_at: chain::to_micros(recorded_at),
            payload: self.payload,
        }
    }
}

/// Appends `entry` at the head of the chain, within the caller's
/// transaction. An event already recorded is not recorded twice: `None`.
///
/// Two round trips: the head, locked, with whether the event is already
/// there (asked under the lock, so no twin can slip in between); then the
/// entry and the new head in one statement. (Four statements before; the
/// audit consumer appends once per event of the whole shop.)
pub async fn append(
    conn: &mut PgConnection,
    entry: NewEntry,
    recorded_at: DateTime<Utc>,
) -> Result<Option<Entry>, Error> {
    let (head_sequence, head_hash, seen): (i64, Vec<u8>, bool) = sqlx::query_as(
        "SELECT head_sequence, head_hash, EXISTS (SELECT 1 FROM audit_entries WHERE event_id = $1) \
         FROM audit_chain FOR UPDATE",
    )
    .bind(entry.event_id)
    .fetch_one(&mut *conn)
    .await
    .map_err(Error::ReadChain)?;
    if seen {
        return Ok(None);
    }
    let previous = hash32(&head_hash, "head hash")?;
    let fields = entry.at(head_sequence + 1, recorded_at);
    let hash = chain::entry_hash(&previous, &fields);
    sqlx::query(&format!(
        "WITH appended AS (INSERT INTO audit_entries ({COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING sequence, hash) \
         UPDATE audit_chain SET head_sequence = appended.sequence, head_hash = appended.hash FROM appended"
    ))
    .bind(fields.sequence)
    .bind(fields.event_id)
    .bind(&fields.event_type)
    .bind(&fields.source)
    .bind(&fields.subject)
    .bind(&fields.actor_id)
    .bind(&fields.trace_id)
    .bind(fields.occurred_at)
    .bind(fields.recorded_at)
    .bind(&fields.payload)
    .bind(previous.as_slice())
    .bind(hash.as_slice())
    .execute(&mut *conn)
    .await
    .map_err(Error::Append)?;
    Ok(Some(Entry { fields, previous_hash: previous.to_vec(), hash: hash.to_vec() }))
}

/// Appends `entries` at the head of the chain, in order, within the
/// caller's transaction; an event already recorded (before, or earlier in
/// `entries`) is not recorded twice. Returns how many were appended.
///
/// Two round trips whatever the count: the head, locked, with which of the
/// events are already there; then every new entry and the new head in one
/// statement. The audit consumer appends the events of a batch so.
pub async fn append_many(
    conn: &mut PgConnection,
    entries: Vec<NewEntry>,
    recorded_at: DateTime<Utc>,
) -> Result<usize, Error> {
    let ids: Vec<Uuid> = entries.iter().map(|entry| entry.event_id).collect();
    let (head_sequence, head_hash, seen): (i64, Vec<u8>, Vec<Uuid>) = sqlx::query_as(
        "SELECT head_sequence, head_hash, \
         ARRAY(SELECT event_id FROM audit_entries WHERE event_id = ANY($1)) FROM audit_chain FOR UPDATE",
    )
    .bind(&ids)
    .fetch_one(&mut *conn)
    .await
    .map_err(Error::ReadChain)?;
    let mut seen: std::collections::HashSet<Uuid> = seen.into_iter().collect();
    let mut previous = hash32(&head_hash, "head hash")?;
    let mut sequence = head_sequence;
    // Each new entry with the hash it links to and its own.
    let mut rows: Vec<(EntryFields, [u8; 32], [u8; 32])> = Vec::with_capacity(entries.len());
    for entry in entries {
        if !seen.insert(entry.event_id) {
            continue;
        }
        sequence += 1;
        let fields = entry.at(sequence, recorded_at);
        let hash = chain::entry_hash(&previous, &fields);
        rows.push((fields, previous, hash));
        previous = hash;
    }
    if rows.is_empty() {
        return Ok(0);
    }
    let fields: Vec<&EntryFields> = rows.iter().map(|(fields, _, _)| fields).collect();
    let text = |get: fn(&EntryFields) -> &str| fields.iter().map(|fields| get(fields)).collect::<Vec<_>>();
    sqlx::query(&format!(
        "WITH appended AS (INSERT INTO audit_entries ({COLUMNS}) \
         SELECT * FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], \
         $7::text[], $8::timestamptz[], $9::timestamptz[], $10::bytea[], $11::bytea[], $12::bytea[])) \
         UPDATE audit_chain SET head_sequence = $13, head_hash = $14"
    ))
    .bind(fields.iter().map(|fields| fields.sequence).collect::<Vec<_>>())
    .bind(fields.iter().map(|fields| fields.event_id).collect::<Vec<_>>())
    .bind(text(|fields| &fields.event_type))
    .bind(text(|fields| &fields.source))
    .bind(text(|fields| &fields.subject))
    .bind(text(|fields| &fields.actor_id))
    .bind(text(|fields| &fields.trace_id))
    .bind(fields.iter().map(|fields| fields.occurred_at).collect::<Vec<_>>())
    .bind(fields.iter().map(|fields| fields.recorded_at).collect::<Vec<_>>())
    .bind(fields.iter().map(|fields| fields.payload.as_slice()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, previous, _)| previous.as_slice()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, _, hash)| hash.as_slice()).collect::<Vec<_>>())
    .bind(sequence)
    .bind(previous.as_slice())
    .execute(&mut *conn)
    .await
    .map_err(Error::Append)?;
    Ok(rows.len())
}

/// The entry recording event `event_id`, if there is one.
pub async fn find_by_event(conn: &mut PgConnection, event_id: Uuid) -> Result<Option<Entry>, Error> {
    let row: Option<EntryRow> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM audit_entries WHERE event_id = $1"))
            .bind(event_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(Error::ReadChain)?;
    Ok(row.map(Entry::from))
}

/// Filters of a listing; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter<'a> {
    pub event_type: Option<&'a str>,
    pub actor_id: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// Up to `limit` entries matching `filter`, newest first, older than
/// sequence `before` when given.
pub async fn list(
    conn: &mut PgConnection,
    filter: &Filter<'_>,
    limit: i64,
    before: Option<i64>,
) -> Result<Vec<Entry>, Error> {
    let rows: Vec<EntryRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM audit_entries \
         WHERE ($1::text IS NULL OR event_type = $1) AND ($2::text IS NULL OR actor_id = $2) \
           AND ($3::text IS NULL OR subject = $3) AND ($4::timestamptz IS NULL OR occurred_at >= $4) \
           AND ($5::timestamptz IS NULL OR occurred_at < $5) AND ($6::bigint IS NULL OR sequence < $6) \
         ORDER BY sequence DESC LIMIT $7"
    ))
    .bind(filter.event_type)
    .bind(filter.actor_id)
    .bind(filter.subject)
    .bind(filter.since)
    .bind(filter.until)
    .bind(before)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
    .map_err(Error::ReadChain)?;
    Ok(rows.into_iter().map(Entry::from).collect())
}

/// What a check of the whole chain found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub checked: i64,
    pub broken: Option<chain::Break>,
    pub ends: ChainEnds,
}

/// Entries read per query while checking.
const VERIFY_PAGE: i64 = 1_000;

/// Checks every retained entry, in pages, within one repeatable-read
/// snapshot so that appends during the check do not move the head under it.
pub async fn verify(pool: &sqlx::PgPool) -> Result<Verification, Error> {
    let mut tx =
        pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(Error::ReadChain)?;
    let outcome = verify_in_snapshot(&mut tx).await;
    // Read only: ending it either way changes nothing.
    let _ = tx.rollback().await;
    outcome
}

async fn verify_in_snapshot(conn: &mut PgConnection) -> Result<Verification, Error> {
    let ends = ends(conn, false).await?;
    let mut walker = Walker::after(ends.anchor_sequence, ends.anchor_hash);
    let mut after = ends.anchor_sequence;
    loop {
        let rows: Vec<EntryRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM audit_entries WHERE sequence > $1 ORDER BY sequence LIMIT $2"
        ))
        .bind(after)
        .bind(VERIFY_PAGE)
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::ReadChain)?;
        let Some(last) = rows.last() else { break };
        after = last.sequence;
        for row in rows {
            if let Err(broken) = walker.step(&Entry::from(row)) {
                return Ok(Verification { checked: walker.checked(), broken: Some(broken), ends });
            }
        }
    }
    let broken = walker.finish(ends.head_sequence, &ends.head_hash).err();
    Ok(Verification { checked: walker.checked(), broken, ends })
}

/// Removes the entries recorded before `cutoff` from the start of the
/// chain, moving its anchor to the last one removed; returns how many went.
pub async fn prune(conn: &mut PgConnection, cutoff: DateTime<Utc>) -> Result<u64, Error> {
    let ends = ends(conn, true).await?;
    let last: Option<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT sequence, hash FROM audit_entries WHERE sequence > $1 AND recorded_at < $2 \
         ORDER BY sequence DESC LIMIT 1",
    )
    .bind(ends.anchor_sequence)
    .bind(cutoff)
    .fetch_optional(&mut *conn)
    .await
    .map_err(Error::ReadChain)?;
    let Some((sequence, hash)) = last else { return Ok(0) };
    let removed = sqlx::query("DELETE FROM audit_entries WHERE sequence <= $1")
        .bind(sequence)
        .execute(&mut *conn)
        .await
        .map_err(Error::Prune)?
        .rows_affected();
    sqlx::query("UPDATE audit_chain SET anchor_sequence = $1, anchor_hash = $2")
        .bind(sequence)
        .bind(hash)
        .execute(&mut *conn)
        .await
        .map_err(Error::Prune)?;
    Ok(removed)
}
