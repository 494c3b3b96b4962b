//! The notification database: each user's inbox.

use chrono::{DateTime, Utc};
use commerce_proto::notification::v1::NotificationKind;
use sqlx::postgres::{PgConnection, PgPool};
use uuid::Uuid;

use crate::Error;
use crate::domain::Draft;
use crate::email::Recipient;

/// A stored notification.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Notification {
    pub id: Uuid,
    pub user_id: String,
    /// `NotificationKind` number.
    pub kind: i32,
    pub title: String,
    pub body: String,
    pub order_id: String,
    /// `Channel` number.
    pub channel: i32,
    pub source_event_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub read_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str =
    "id, user_id, kind, title, body, order_id, channel, source_event_id, created_at, read_at";

/// Stores a draft made from event `source_event_id`; `false` when that
/// event already produced this user's notification.
pub async fn insert(
    conn: &mut PgConnection,
    draft: &Draft,
    channel: i32,
    source_event_id: Uuid,
) -> Result<bool, Error> {
    let inserted = sqlx::query(
        "INSERT INTO notifications (id, user_id, kind, title, body, order_id, channel, source_event_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (user_id, source_event_id) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(&draft.user_id)
    .bind(draft.kind as i32)
    .bind(&draft.title)
    .bind(&draft.body)
    .bind(&draft.order_id)
    .bind(channel)
    .bind(source_event_id)
    .execute(&mut *conn)
    .await
    .map_err(Error::StoreNotification)?;
    Ok(inserted.rows_affected() == 1)
}

/// A page of a user's notifications, newest first, after the cursor.
pub async fn list(
    pool: &PgPool,
    user_id: &str,
    unread_only: bool,
    page_size: i64,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Vec<Notification>, Error> {
    let (after_time, after_id) = after.map_or((None, None), |(time, id)| (Some(time), Some(id)));
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM notifications WHERE user_id = $1 AND (NOT $2 OR read_at IS NULL) \
         AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) ORDER BY created_at DESC, id DESC LIMIT $5"
    ))
    .bind(user_id)
    .bind(unread_only)
    .bind(after_time)
    .bind(after_id)
    .bind(page_size)
    .fetch_all(pool)
    .await
    .map_err(Error::LoadNotifications)
}

/// How many of a user's notifications are unread.
pub async fn unread_count(pool: &PgPool, user_id: &str) -> Result<i64, Error> {
    sqlx::query_scalar("SELECT count(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL")
        .bind(user_id)
        .fetch_one(pool)
        .await
        .map_err(Error::LoadNotifications)
}

/// Marks the given (or all) unread notifications of a user read; returns
/// how many changed. Other users' ids are ignored by the user filter.
pub async fn mark_read(pool: &PgPool, user_id: &str, ids: &[Uuid], all: bool) -> Result<i64, Error> {
    let result = sqlx::query(
        "UPDATE notifications SET read_at = now() WHERE user_id = $1 AND read_at IS NULL AND ($2 OR id = ANY($3))",
    )
    .bind(user_id)
    .bind(all)
    .bind(ids)
    .execute(pool)
    .await
    .map_err(Error::StoreNotification)?;
    Ok(i64::try_from(result.rows_affected()).unwrap_or(i64::MAX))
}

/// Records (or updates) where a user's email goes.
pub async fn upsert_recipient(conn: &mut PgConnection, recipient: &Recipient) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO recipients (user_id, email, display_name) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id) DO UPDATE SET email = excluded.email, display_name = excluded.display_name, \
         updated_at = now()",
    )
    .bind(&recipient.user_id)
    .bind(&recipient.email)
    .bind(&recipient.display_name)
    .execute(&mut *conn)
    .await
    .map_err(Error::StoreNotification)?;
    Ok(())
}

/// Deletes everything the service keeps about `user_id`: notifications,
/// emails (sent or waiting) and where their email went. How many rows went.
pub async fn erase_user(conn: &mut PgConnection, user_id: &str) -> Result<u64, Error> {
    let mut deleted = 0;
    for statement in [
        "DELETE FROM notifications WHERE user_id = $1",
        "DELETE FROM emails WHERE user_id = $1",
        "DELETE FROM recipients WHERE user_id = $1",
    ] {
        deleted += sqlx::query(statement)
            .bind(user_id)
            .execute(&mut *conn)
            .await
            .map_err(Error::StoreNotification)?
            .rows_affected();
    }
    Ok(deleted)
}

/// The user's notifications stored within `window` that have no email: those
/// drafted while the user's address was not known yet, oldest first, each
/// with the id of the event it was made from.
pub async fn unmailed(
    conn: &mut PgConnection,
    user_id: &str,
    window: std::time::Duration,
) -> Result<Vec<(Draft, Uuid)>, Error> {
    let rows: Vec<(i32, String, String, String, Uuid)> = sqlx::query_as(
        "SELECT n.kind, n.title, n.body, n.order_id, n.source_event_id FROM notifications n \
         WHERE n.user_id = $1 AND n.created_at > now() - make_interval(secs => $2) \
         AND NOT EXISTS (SELECT 1 FROM emails e WHERE e.user_id = n.user_id AND e.source_event_id = n.source_event_id) \
         ORDER BY n.created_at, n.id",
    )
    .bind(user_id)
    .bind(window.as_secs_f64())
    .fetch_all(&mut *conn)
    .await
    .map_err(Error::LoadNotifications)?;
    Ok(rows
        .into_iter()
        .map(|(kind, title, body, order_id, source_event_id)| {
            let kind = NotificationKind::try_from(kind).unwrap_or(NotificationKind::Unspecified);
            (Draft { user_id: user_id.to_owned(), kind, title, body, order_id }, source_event_id)
        })
        .collect())
}

/// Where a user's email goes, if the service has heard of the user.
pub async fn recipient(conn: &mut PgConnection, user_id: &str) -> Result<Option<Recipient>, Error> {
    sqlx::query_as("SELECT user_id, email, display_name FROM recipients WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(Error::LoadNotifications)
}
