//! The reviews database. Every change that can move a product's rating
//! first locks the product's `product_ratings` row ([`lock_product`]), then
//! changes the review, then recounts ([`recount`]): under Postgres' read
//! committed the recount's snapshot is taken after the lock, so it sees
//! every review a concurrent change committed, and versions follow the
//! order of the changes.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use crate::Error;
use crate::domain::Status;

/// A review as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Review {
    pub id: Uuid,
    pub product_id: String,
    pub user_id: String,
    pub rating: i16,
    pub title: String,
    pub body: String,
    pub status: String,
    pub helpful_count: i64,
    pub report_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Review {
    pub fn status(&self) -> Status {
        Status::parse(&self.status)
    }
}

/// A product's rating and its version after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Rating {
    pub review_count: i64,
    pub stars_total: i64,
    pub version: i64,
}

/// An open report of a queued review.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Report {
    pub review_id: Uuid,
    pub user_id: String,
    pub reason: String,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, product_id, user_id, rating, title, body, status, helpful_count, report_count, created_at, updated_at";

/// Records an order's products (`OrderPlaced`); a redelivery changes nothing.
pub async fn record_placed(
    conn: &mut PgConnection,
    order_id: &str,
    user_id: &str,
    product_ids: &[String],
    placed_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO placed_orders (order_id, user_id, product_ids, placed_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(user_id)
    .bind(product_ids)
    .bind(placed_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Turns a placed order's products into purchases (`OrderDelivered`).
/// Returns how many products the order had; 0 for an order never seen
/// placed (or already delivered).
pub async fn record_delivered(
    conn: &mut PgConnection,
    order_id: &str,
    delivered_at: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let result = sqlx::query(
        "WITH delivered AS (DELETE FROM placed_orders WHERE order_id = $1 RETURNING user_id, product_ids) \
         INSERT INTO purchases (user_id, product_id, order_id, delivered_at) \
         SELECT DISTINCT user_id, unnest(product_ids), $1, $2 FROM delivered \
         ON CONFLICT DO NOTHING",
    )
    .bind(order_id)
    .bind(delivered_at)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// Forgets a placed order that ended without delivery.
pub async fn forget_placed(conn: &mut PgConnection, order_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM placed_orders WHERE order_id = $1").bind(order_id).execute(conn).await?;
    Ok(())
}

/// What an erasure leaves of `user_id` here: their reviews stay (the
/// products' ratings count them) and so do their votes and reports, each
/// under a fresh random author id that links it to nobody, not even to the
/// erased user's other reviews; what they bought goes. How many reviews
/// were anonymised.
pub async fn anonymise_user(conn: &mut PgConnection, user_id: &str) -> Result<u64, sqlx::Error> {
    let reviews =
        sqlx::query("UPDATE reviews SET user_id = 'erased:' || gen_random_uuid() WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *conn)
            .await?
            .rows_affected();
    for statement in [
        "UPDATE helpful_votes SET user_id = 'erased:' || gen_random_uuid() WHERE user_id = $1",
        "UPDATE reports SET user_id = 'erased:' || gen_random_uuid() WHERE user_id = $1",
        "DELETE FROM purchases WHERE user_id = $1",
        "DELETE FROM placed_orders WHERE user_id = $1",
    ] {
        sqlx::query(statement).bind(user_id).execute(&mut *conn).await?;
    }
    Ok(reviews)
}

/// Whether `user_id` received `product_id` in a delivered order.
pub async fn has_purchased(conn: &mut PgConnection, user_id: &str, product_id: &str) -> Result<bool, Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM purchases WHERE user_id = $1 AND product_id = $2)")
        .bind(user_id)
        .bind(product_id)
        .fetch_one(conn)
        .await
        .map_err(Error::Read)
}

/// Locks the product's rating row, creating it if needed. Call before
/// changing any of the product's reviews in the same transaction.
pub async fn lock_product(conn: &mut PgConnection, product_id: &str) -> Result<(), Error> {
    sqlx::query("INSERT INTO product_ratings (product_id) VALUES ($1) ON CONFLICT (product_id) DO NOTHING")
        .bind(product_id)
        .execute(&mut *conn)
        .await
        .map_err(Error::Write)?;
    sqlx::query("SELECT 1 FROM product_ratings WHERE product_id = $1 FOR UPDATE")
        .bind(product_id)
        .execute(conn)
        .await
        .map_err(Error::Write)?;
    Ok(())
}

/// Recounts the product's visible reviews and moves its version on.
pub async fn recount(conn: &mut PgConnection, product_id: &str) -> Result<Rating, Error> {
    sqlx::query_as(
        "UPDATE product_ratings r SET \
           review_count = c.review_count, stars_total = c.stars_total, version = r.version + 1 \
         FROM (SELECT count(*) AS review_count, coalesce(sum(rating), 0)::bigint AS stars_total \
               FROM reviews WHERE product_id = $1 AND status <> 'removed') c \
         WHERE r.product_id = $1 \
         RETURNING r.review_count, r.stars_total, r.version",
    )
    .bind(product_id)
    .fetch_one(conn)
    .await
    .map_err(Error::Write)
}

/// Inserts a review; [`Error::AlreadyReviewed`] names the user's existing
/// review of the product.
pub async fn insert(
    conn: &mut PgConnection,
    product_id: &str,
    user_id: &str,
    rating: i16,
    title: &str,
    body: &str,
) -> Result<Review, Error> {
    let inserted = sqlx::query_as(&format!(
        "INSERT INTO reviews (id, product_id, user_id, rating, title, body) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (product_id, user_id) DO NOTHING RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(product_id)
    .bind(user_id)
    .bind(rating)
    .bind(title)
    .bind(body)
    .fetch_optional(&mut *conn)
    .await
    .map_err(Error::Write)?;
    match inserted {
        Some(review) => Ok(review),
        None => {
            let review_id: Uuid =
                sqlx::query_scalar("SELECT id FROM reviews WHERE product_id = $1 AND user_id = $2")
                    .bind(product_id)
                    .bind(user_id)
                    .fetch_one(conn)
                    .await
                    .map_err(Error::Read)?;
            Err(Error::AlreadyReviewed { review_id })
        }
    }
}

/// One review, removed ones included; locked for the transaction with
/// `for_update`.
pub async fn find(conn: &mut PgConnection, id: Uuid, for_update: bool) -> Result<Option<Review>, Error> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM reviews WHERE id = $1{lock}"))
        .bind(id)
        .fetch_optional(conn)
        .await
        .map_err(Error::Read)
}

/// The product a review is of, to lock before the review itself.
pub async fn product_of(conn: &mut PgConnection, id: Uuid) -> Result<Option<String>, Error> {
    sqlx::query_scalar("SELECT product_id FROM reviews WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
        .map_err(Error::Read)
}

/// Writes an author's edit.
pub async fn update_text(
    conn: &mut PgConnection,
    id: Uuid,
    rating: i16,
    title: &str,
    body: &str,
) -> Result<Review, Error> {
    sqlx::query_as(&format!(
        "UPDATE reviews SET rating = $2, title = $3, body = $4, updated_at = now() WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(rating)
    .bind(title)
    .bind(body)
    .fetch_one(conn)
    .await
    .map_err(Error::Write)
}

/// Counts a helpful vote once per user; the review as it stands after.
pub async fn vote_helpful(conn: &mut PgConnection, id: Uuid, user_id: &str) -> Result<Review, Error> {
    sqlx::query_as(&format!(
        "WITH vote AS (INSERT INTO helpful_votes (review_id, user_id) VALUES ($1, $2) \
                       ON CONFLICT DO NOTHING RETURNING 1) \
         UPDATE reviews SET helpful_count = helpful_count + (SELECT count(*) FROM vote) \
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(user_id)
    .fetch_one(conn)
    .await
    .map_err(Error::Write)
}

/// Files a user's report; `None` when they reported the review before (it
/// counts once). A published review becomes flagged.
pub async fn report(
    conn: &mut PgConnection,
    id: Uuid,
    user_id: &str,
    reason: &str,
) -> Result<Option<Review>, Error> {
    let filed = sqlx::query(
        "INSERT INTO reports (review_id, user_id, reason) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(user_id)
    .bind(reason)
    .execute(&mut *conn)
    .await
    .map_err(Error::Write)?;
    if filed.rows_affected() == 0 {
        return Ok(None);
    }
    sqlx::query_as(&format!(
        "UPDATE reviews SET report_count = report_count + 1, status = 'flagged', \
           flagged_at = coalesce(flagged_at, now()) \
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .fetch_one(conn)
    .await
    .map(Some)
    .map_err(Error::Write)
}

/// An admin's decision: the review is removed or published again, and its
/// open reports are settled.
pub async fn moderate(conn: &mut PgConnection, id: Uuid, remove: bool) -> Result<Review, Error> {
    sqlx::query("UPDATE reports SET settled = TRUE WHERE review_id = $1 AND NOT settled")
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(Error::Write)?;
    sqlx::query_as(&format!(
        "UPDATE reviews SET status = $2, report_count = 0, flagged_at = NULL, updated_at = now() \
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(if remove { "removed" } else { "published" })
    .fetch_one(conn)
    .await
    .map_err(Error::Write)
}

/// One page of a product's visible reviews, one more than `limit` if there
/// are more. `order_by` is one of [`domain::order_by`](crate::domain::order_by)'s texts.
pub async fn list_for_product(
    conn: &mut PgConnection,
    product_id: &str,
    rating: i16,
    order_by: &'static str,
    limit: i64,
    offset: i64,
) -> Result<Vec<Review>, Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM reviews \
         WHERE product_id = $1 AND status <> 'removed' AND ($2 = 0 OR rating = $2) \
         ORDER BY {order_by} LIMIT $3 OFFSET $4"
    ))
    .bind(product_id)
    .bind(rating)
    .bind(limit + 1)
    .bind(offset)
    .fetch_all(conn)
    .await
    .map_err(Error::Read)
}

/// Visible reviews per star count, index 0 holding the one-star ones.
pub async fn count_by_stars(conn: &mut PgConnection, product_id: &str) -> Result<[i64; 5], Error> {
    let rows: Vec<(i16, i64)> = sqlx::query_as(
        "SELECT rating, count(*) FROM reviews WHERE product_id = $1 AND status <> 'removed' GROUP BY rating",
    )
    .bind(product_id)
    .fetch_all(conn)
    .await
    .map_err(Error::Read)?;
    let mut counts = [0; 5];
    for (stars, count) in rows {
        if let Some(slot) = usize::try_from(stars - 1).ok().and_then(|index| counts.get_mut(index)) {
            *slot = count;
        }
    }
    Ok(counts)
}

/// One page of the moderation queue, one more than `limit` if there are more.
pub async fn queue(conn: &mut PgConnection, limit: i64, offset: i64) -> Result<Vec<Review>, Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM reviews WHERE status = 'flagged' ORDER BY flagged_at, id LIMIT $1 OFFSET $2"
    ))
    .bind(limit + 1)
    .bind(offset)
    .fetch_all(conn)
    .await
    .map_err(Error::Read)
}

/// The open reports of the given reviews, the oldest first.
pub async fn open_reports(conn: &mut PgConnection, review_ids: &[Uuid]) -> Result<Vec<Report>, Error> {
    sqlx::query_as(
        "SELECT review_id, user_id, reason, created_at FROM reports \
         WHERE review_id = ANY($1) AND NOT settled ORDER BY created_at, user_id",
    )
    .bind(review_ids)
    .fetch_all(conn)
    .await
    .map_err(Error::Read)
}

/// One page of a user's reviews, removed ones included, the newest first;
/// one more than `limit` if there are more.
pub async fn list_for_user(
    conn: &mut PgConnection,
    user_id: &str,
    limit: i64,
    offset: i64,
) -> Result<Vec<Review>, Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM reviews WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
    ))
    .bind(user_id)
    .bind(limit + 1)
    .bind(offset)
    .fetch_all(conn)
    .await
    .map_err(Error::Read)
}
