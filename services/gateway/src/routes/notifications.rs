//! `/api/notifications`: the caller's inbox.

use axum::Json;
use axum::extract::State;
use commerce_platform::resilience::idempotent;
use commerce_proto::notification::v1 as pb;

use super::{grpc, page_size};
use crate::auth::Caller;
use crate::dto::{Notification, NotificationPage, NotificationQuery};
use crate::extract::ApiQuery;
use crate::problem::Problem;
use crate::state::AppState;

pub async fn list_notifications(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<NotificationQuery>,
) -> Result<Json<NotificationPage>, Problem> {
    let request = pb::ListNotificationsRequest {
        user_id: caller.user_id,
        page_size: page_size(query.page_size),
        page_token: query.page_token.unwrap_or_default(),
        unread_only: query.unread_only,
    };
    let response = state
        .notification()?
        .list_notifications(idempotent(request))
        .await
        .map_err(grpc("notification"))?
        .into_inner();
    Ok(Json(NotificationPage {
        notifications: response.notifications.into_iter().map(Notification::from).collect(),
        next_page_token: response.next_page_token,
        unread_count: response.unread_count,
    }))
}
