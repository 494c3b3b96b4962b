//! `/api/admin/audit*`: the audit trail and its check, for administrators
//! (every handler takes [`AdminCaller`]: 401 without a token, 403 for any
//! other role); and [`record_admin_actions`], which adds every successful
//! change an administrator makes under `/api/admin` to the trail.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use commerce_platform::resilience::idempotent;
use commerce_platform::trace_context;
use commerce_proto::audit::v1 as pb;
use commerce_proto::audit::v1::audit_service_client::AuditServiceClient;
use commerce_proto::time::timestamp;
use commerce_topology::Service;
use opentelemetry::trace::TraceId;
use uuid::Uuid;

use super::grpc;
use crate::auth::{AdminCaller, Authentication};
use crate::dto::{AuditEntry, AuditPage, AuditQuery, AuditVerification};
use crate::extract::ApiQuery;
use crate::problem::Problem;
use crate::state::AppState;

/// An RFC 3339 query parameter as a protobuf timestamp.
fn instant(name: &str, value: Option<&str>) -> Result<Option<prost_types::Timestamp>, Problem> {
    value
        .map(|text| {
            chrono::DateTime::parse_from_rfc3339(text)
                .map(|time| timestamp(time.to_utc()))
                .map_err(|_| Problem::invalid_field(format!("query:{name}"), "must be an RFC 3339 date-time"))
        })
        .transpose()
}

/// Entries of the audit trail, newest first, filtered.
pub async fn list_entries(
    State(state): State<AppState>,
    _admin: AdminCaller,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, Problem> {
    let request = pb::ListEntriesRequest {
        since: instant("since", query.since.as_deref())?,
        until: instant("until", query.until.as_deref())?,
        event_type: query.event_type.unwrap_or_default(),
        actor_id: query.actor_id.unwrap_or_default(),
        subject: query.subject.unwrap_or_default(),
        page_size: query.page_size.unwrap_or(0),
        page_token: query.page_token.unwrap_or_default(),
    };
    let response =
        state.audit()?.list_entries(idempotent(request)).await.map_err(grpc("audit"))?.into_inner();
    Ok(Json(AuditPage {
        entries: response.entries.into_iter().map(AuditEntry::from).collect(),
        next_page_token: response.next_page_token,
    }))
}

/// Checks the whole chain and reports the first entry that does not match.
pub async fn verify_chain(
    State(state): State<AppState>,
    _admin: AdminCaller,
) -> Result<Json<AuditVerification>, Problem> {
    let response = state
        .audit()?
        .verify_chain(idempotent(pb::VerifyChainRequest {}))
        .await
        .map_err(grpc("audit"))?
        .into_inner();
    if !response.intact {
        tracing::error!(
            first_broken_sequence = response.first_broken_sequence,
            problem = %response.problem,
            "the audit chain does not verify"
        );
    }
    Ok(Json(AuditVerification::from(response)))
}

/// How long recording an administrator's action may take; the change is
/// made by then, so a slow audit service delays the answer, never undoes it.
const RECORD_TIMEOUT: Duration = Duration::from_secs(3);

/// Records each successful change (any method but GET, HEAD and OPTIONS)
/// under `/api/admin` in the audit trail: who (the token's user), what
/// (method, route, path, status), when, and from which request id and
/// trace. The change is made before it is recorded; if the audit service
/// cannot take it, the action is logged at error level with every field
/// and `commerce_gateway_audit_record_failures` counts it, and the answer
/// is the change's own. A stack without the audit service records nothing.
pub async fn record_admin_actions(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let is_change = request.uri().path().starts_with("/api/admin/")
        && !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !is_change {
        return next.run(request).await;
    }
    let actor =
        request.extensions().get::<Arc<Authentication>>().and_then(|outcome| match outcome.as_ref() {
            Authentication::Verified(caller) => Some(caller.user_id.clone()),
            _ => None,
        });
    let route = request.extensions().get::<MatchedPath>().map_or("", MatchedPath::as_str).to_owned();
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let response = next.run(request).await;
    let Some(actor_id) = actor.filter(|_| response.status().is_success()) else { return response };
    let action = pb::AdminAction {
        actor_id,
        method,
        route,
        path,
        status: i32::from(response.status().as_u16()),
        request_id,
    };
    let trace_id = trace_context::current()
        .map(|span| span.trace_id())
        .filter(|id| *id != TraceId::INVALID)
        .map(|id| id.to_string())
        .unwrap_or_default();
    let record = pb::RecordAdminActionRequest {
        // Not the request id: a client may send the same one twice.
        action_id: Uuid::now_v7().to_string(),
        action: Some(action.clone()),
        trace_id,
        occurred_at: Some(timestamp(chrono::Utc::now())),
    };
    let Ok(channel) = state.peers.channel(Service::Audit) else {
        tracing::debug!(
            ?action,
            "no audit service in this stack: the administrator's action is not recorded"
        );
        return response;
    };
    // Idempotent: the action id makes a retried call record once.
    let mut client = AuditServiceClient::new(channel);
    let failure =
        match tokio::time::timeout(RECORD_TIMEOUT, client.record_admin_action(idempotent(record))).await {
            Ok(Ok(_)) => None,
            Ok(Err(status)) => Some(format!("{}: {}", status.code().description(), status.message())),
            Err(_) => Some(format!("no answer within {RECORD_TIMEOUT:?}")),
        };
    if let Some(reason) = failure {
        state.audit_record_failures.inc();
        tracing::error!(
            ?action,
            reason,
            "the audit service did not record an administrator's change (the change is made)"
        );
    }
    response
}
