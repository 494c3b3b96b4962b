//! `/api/admin/audit*`: the audit trail and its check, for administrators
//! (every handler takes [`AdminCaller`]: 401 without a token, 403 for any
//! other role).

use axum::Json;
use axum::extract::State;
use commerce_platform::resilience::idempotent;
use commerce_proto::audit::v1 as pb;
use commerce_proto::time::timestamp;

use super::grpc;
use crate::auth::AdminCaller;
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
