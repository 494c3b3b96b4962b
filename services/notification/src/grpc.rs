//! The `NotificationService` gRPC server and the one `From<Error> for Status`.

use chrono::{DateTime, Utc};
use commerce_proto::notification::v1 as pb;
use commerce_proto::notification::v1::notification_service_server::NotificationService;
use commerce_proto::time::timestamp;
use sqlx::postgres::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::Error;
use crate::store::{self, Notification};

const DEFAULT_PAGE_SIZE: i64 = 20;
const MAX_PAGE_SIZE: i64 = 100;

/// The gRPC face of the notification service.
#[derive(Debug, Clone)]
pub struct NotificationGrpc {
    pool: PgPool,
}

impl NotificationGrpc {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn to_proto(notification: &Notification) -> pb::Notification {
    pb::Notification {
        id: notification.id.to_string(),
        user_id: notification.user_id.clone(),
        kind: notification.kind,
        title: notification.title.clone(),
        body: notification.body.clone(),
        order_id: notification.order_id.clone(),
        channel: notification.channel,
        created_at: Some(timestamp(notification.created_at)),
        read: notification.read_at.is_some(),
        read_at: notification.read_at.map(timestamp),
    }
}

fn decode_page_token(token: &str) -> Result<Option<(DateTime<Utc>, Uuid)>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid =
        || Error::InvalidRequest { field: "page_token", problem: "is not a token this server issued" };
    let (micros, id) = token.split_once('_').ok_or_else(invalid)?;
    let time = micros.parse().ok().and_then(DateTime::from_timestamp_micros).ok_or_else(invalid)?;
    Ok(Some((time, Uuid::parse_str(id).map_err(|_| invalid())?)))
}

#[tonic::async_trait]
impl NotificationService for NotificationGrpc {
    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        let request = request.into_inner();
        if request.user_id.is_empty() {
            return Err(Error::InvalidRequest { field: "user_id", problem: "is empty" }.into());
        }
        let page_size = match i64::from(request.page_size) {
            size if size <= 0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        };
        let after = decode_page_token(&request.page_token)?;
        let mut rows =
            store::list(&self.pool, &request.user_id, request.unread_only, page_size + 1, after).await?;
        let limit = usize::try_from(page_size).unwrap_or(usize::MAX);
        let next_page_token = if rows.len() > limit {
            rows.truncate(limit);
            rows.last()
                .map(|last| format!("{}_{}", last.created_at.timestamp_micros(), last.id.simple()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let unread_count = store::unread_count(&self.pool, &request.user_id).await?;
        Ok(Response::new(pb::ListNotificationsResponse {
            notifications: rows.iter().map(to_proto).collect(),
            next_page_token,
            unread_count,
        }))
    }

    async fn mark_read(
        &self,
        request: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        let request = request.into_inner();
        if request.user_id.is_empty() {
            return Err(Error::InvalidRequest { field: "user_id", problem: "is empty" }.into());
        }
        let ids = request
            .notification_ids
            .iter()
            .map(|id| Uuid::parse_str(id))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Error::InvalidRequest {
                field: "notification_ids",
                problem: "contains a non-UUID",
            })?;
        let marked_count = store::mark_read(&self.pool, &request.user_id, &ids, request.all).await?;
        Ok(Response::new(pb::MarkReadResponse { marked_count }))
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = crate::error_chain(&error);
        match &error {
            Error::InvalidRequest { .. } => Status::invalid_argument(message),
            Error::LoadNotifications(_) | Error::StoreNotification(_) => Status::unavailable(message),
            _ => {
                tracing::error!(error = %message, "notification request failed");
                Status::internal("internal error")
            }
        }
    }
}
