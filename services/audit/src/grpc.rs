//! The `AuditService` gRPC server: recording administrators' actions,
//! listing and checking the trail, and the one `From<Error> for Status`
//! mapping.

use chrono::Utc;
use commerce_proto::audit::v1 as pb;
use commerce_proto::audit::v1::audit_service_server::AuditService;
use commerce_proto::time::{from_timestamp, timestamp};
use commerce_topology::Service;
use prost::Message as _;
use sqlx::postgres::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::Error;
use crate::payload::Payload;
use crate::store::{self, Entry, Filter, NewEntry};

const DEFAULT_PAGE_SIZE: i64 = 50;
const MAX_PAGE_SIZE: i64 = 500;
/// Longest filter text accepted (event types, user ids and aggregate ids
/// are far shorter).
const MAX_FILTER_LENGTH: usize = 200;

/// The gRPC face of the audit service.
#[derive(Debug, Clone)]
pub struct AuditGrpc {
    pool: PgPool,
}

impl AuditGrpc {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// The wire form of a stored entry, its payload rendered as JSON.
pub fn entry_to_proto(entry: &Entry) -> pb::AuditEntry {
    let fields = &entry.fields;
    pb::AuditEntry {
        sequence: fields.sequence,
        event_id: fields.event_id.to_string(),
        event_type: fields.event_type.clone(),
        source: fields.source.clone(),
        subject: fields.subject.clone(),
        actor_id: fields.actor_id.clone(),
        trace_id: fields.trace_id.clone(),
        occurred_at: Some(timestamp(fields.occurred_at)),
        recorded_at: Some(timestamp(fields.recorded_at)),
        payload_json: Payload::decode(&fields.event_type, &fields.payload).to_json(&fields.payload),
        previous_hash: hex::encode(&entry.previous_hash),
        hash: hex::encode(&entry.hash),
    }
}

fn text_filter<'a>(field: &'static str, value: &'a str) -> Result<Option<&'a str>, Error> {
    if value.len() > MAX_FILTER_LENGTH {
        return Err(Error::InvalidRequest { field, problem: "is longer than 200 bytes" });
    }
    if value.contains('\0') {
        return Err(Error::InvalidRequest { field, problem: "contains a NUL character" });
    }
    Ok((!value.is_empty()).then_some(value))
}

fn time_filter(
    field: &'static str,
    value: Option<&prost_types::Timestamp>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, Error> {
    value
        .map(|time| {
            from_timestamp(time).ok_or(Error::InvalidRequest { field, problem: "is not a valid instant" })
        })
        .transpose()
}

fn decode_page_token(token: &str) -> Result<Option<i64>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .parse::<i64>()
        .ok()
        .filter(|sequence| *sequence > 0)
        .map(Some)
        .ok_or(Error::InvalidRequest { field: "page_token", problem: "is not a token this server issued" })
}

/// The event type of entries that record an administrator's action.
pub const ADMIN_ACTION_TYPE: &str = "commerce.audit.v1.AdminAction";
/// Longest method, route or path of a recorded action.
const MAX_ACTION_FIELD: usize = 2048;

/// The entry an administrator's action becomes.
fn admin_action_entry(request: pb::RecordAdminActionRequest) -> Result<NewEntry, Error> {
    let event_id = Uuid::parse_str(&request.action_id)
        .map_err(|_| Error::InvalidRequest { field: "action_id", problem: "is not a UUID" })?;
    let action = request.action.ok_or(Error::InvalidRequest { field: "action", problem: "is missing" })?;
    for (field, value) in [
        ("action.actor_id", &action.actor_id),
        ("action.method", &action.method),
        ("action.route", &action.route),
        ("action.path", &action.path),
    ] {
        if value.is_empty() {
            return Err(Error::InvalidRequest { field, problem: "is empty" });
        }
        if value.len() > MAX_ACTION_FIELD {
            return Err(Error::InvalidRequest { field, problem: "is longer than 2048 bytes" });
        }
    }
    let trace_id = request.trace_id;
    if !(trace_id.is_empty() || (trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()))) {
        return Err(Error::InvalidRequest { field: "trace_id", problem: "is not 32 hex digits" });
    }
    let occurred_at = match request.occurred_at.as_ref() {
        Some(time) => from_timestamp(time)
            .ok_or(Error::InvalidRequest { field: "occurred_at", problem: "is not a valid instant" })?,
        None => Utc::now(),
    };
    Ok(NewEntry {
        event_id,
        event_type: ADMIN_ACTION_TYPE.to_owned(),
        source: Service::Gateway.event_source(),
        subject: action.path.clone(),
        actor_id: action.actor_id.clone(),
        trace_id,
        occurred_at,
        payload: action.encode_to_vec(),
    })
}

#[tonic::async_trait]
impl AuditService for AuditGrpc {
    async fn record_admin_action(
        &self,
        request: Request<pb::RecordAdminActionRequest>,
    ) -> Result<Response<pb::RecordAdminActionResponse>, Status> {
        let entry = admin_action_entry(request.into_inner())?;
        let event_id = entry.event_id;
        let mut tx = self.pool.begin().await.map_err(Error::Append)?;
        let recorded = match store::append(&mut tx, entry, Utc::now()).await? {
            Some(recorded) => recorded,
            // A retry of an action already recorded.
            None => store::find_by_event(&mut tx, event_id).await?.ok_or(Error::InvalidRequest {
                field: "action_id",
                problem: "names an entry retention has removed",
            })?,
        };
        tx.commit().await.map_err(Error::Append)?;
        Ok(Response::new(pb::RecordAdminActionResponse { entry: Some(entry_to_proto(&recorded)) }))
    }

    async fn list_entries(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let request = request.into_inner();
        let page_size = match i64::from(request.page_size) {
            size if size <= 0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        };
        let filter = Filter {
            event_type: text_filter("event_type", &request.event_type)?,
            actor_id: text_filter("actor_id", &request.actor_id)?,
            subject: text_filter("subject", &request.subject)?,
            since: time_filter("since", request.since.as_ref())?,
            until: time_filter("until", request.until.as_ref())?,
        };
        let before = decode_page_token(&request.page_token)?;
        let mut conn = self.pool.acquire().await.map_err(Error::ReadChain)?;
        let mut entries = store::list(&mut conn, &filter, page_size + 1, before).await?;
        let more = entries.len() > usize::try_from(page_size).unwrap_or(usize::MAX);
        entries.truncate(usize::try_from(page_size).unwrap_or(usize::MAX));
        let next_page_token = match entries.last() {
            Some(last) if more => last.fields.sequence.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListEntriesResponse {
            entries: entries.iter().map(entry_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn verify_chain(
        &self,
        _request: Request<pb::VerifyChainRequest>,
    ) -> Result<Response<pb::VerifyChainResponse>, Status> {
        let verification = store::verify(&self.pool).await?;
        let ends = &verification.ends;
        if let Some(broken) = &verification.broken {
            tracing::error!(sequence = broken.sequence, problem = %broken.problem, "the audit chain is broken");
        }
        Ok(Response::new(pb::VerifyChainResponse {
            intact: verification.broken.is_none(),
            entries_checked: verification.checked,
            first_broken_sequence: verification.broken.as_ref().map_or(0, |broken| broken.sequence),
            problem: verification.broken.as_ref().map(|broken| broken.problem.clone()).unwrap_or_default(),
            head_sequence: ends.head_sequence,
            head_hash: if ends.head_sequence > 0 { hex::encode(ends.head_hash) } else { String::new() },
            retained_from_sequence: ends.anchor_sequence + 1,
        }))
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = crate::error_chain(&error);
        match &error {
            Error::InvalidRequest { .. } => Status::invalid_argument(message),
            _ if error.is_transient() => Status::unavailable(message),
            _ => {
                tracing::error!(error = %message, "audit request failed");
                Status::internal("internal error")
            }
        }
    }
}
