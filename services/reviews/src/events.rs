//! Events in and out.
//!
//! - **In**, from the Orders topic: `OrderPlaced` records the order's
//!   products, `OrderDelivered` makes them purchases (each entitles its buyer
//!   to one review per product), and an order rejected, failed or cancelled
//!   before delivery is forgotten. Events of one order share a partition, so
//!   the placement is always handled before the delivery.
//! - **Out**, through the outbox in the transaction of the change:
//!   `ReviewCreated`, `ReviewUpdated`, `ReviewFlagged` and `ReviewModerated`.

use chrono::Utc;
use commerce_platform::events::{HandlerError, IncomingEvent, enqueue};
use commerce_proto::events::v1 as ev;
use commerce_proto::time::{from_timestamp, timestamp};
use sqlx::postgres::PgConnection;
use sqlx::{Postgres, Transaction};

use crate::Error;
use crate::store::{self, Rating, Review};

/// Learns purchases from the Orders topic.
#[derive(Debug, Clone, Copy, Default)]
pub struct PurchaseEventHandler;

commerce_platform::event_handler!(PurchaseEventHandler {
    ev::OrderPlaced => order_placed,
    ev::OrderDelivered => order_delivered,
    ev::OrderRejected => order_rejected,
    ev::OrderFailed => order_failed,
    ev::OrderCancelled => order_cancelled,
    ev::UserErased => user_erased,
});

fn missing(problem: &'static str) -> HandlerError {
    HandlerError::permanent(Error::InvalidRequest { field: "event", problem })
}

impl PurchaseEventHandler {
    async fn user_erased(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::UserErased,
        _event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        if e.user_id.is_empty() {
            return Err(missing("UserErased without a user id"));
        }
        let reviews = store::anonymise_user(tx, &e.user_id).await.map_err(HandlerError::retryable)?;
        tracing::info!(user_id = %e.user_id, reviews, "an erased user's reviews were anonymised");
        Ok(())
    }

    async fn order_placed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::OrderPlaced,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        if e.order_id.is_empty() || e.user_id.is_empty() {
            return Err(missing("OrderPlaced without an order or user id"));
        }
        let mut products: Vec<String> = e.lines.into_iter().map(|line| line.product_id).collect();
        products.sort();
        products.dedup();
        let placed_at = e.occurred_at.as_ref().and_then(from_timestamp).unwrap_or_else(|| event.time());
        store::record_placed(tx, &e.order_id, &e.user_id, &products, placed_at)
            .await
            .map_err(HandlerError::retryable)
    }

    async fn order_delivered(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::OrderDelivered,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let delivered_at = e.occurred_at.as_ref().and_then(from_timestamp).unwrap_or_else(|| event.time());
        let products =
            store::record_delivered(tx, &e.order_id, delivered_at).await.map_err(HandlerError::retryable)?;
        if products == 0 {
            // Placed before this service's topic history begins, or a
            // redelivery: nothing to record, and nothing lost by skipping.
            tracing::info!(order_id = %e.order_id, "delivered order not seen placed; no purchase recorded");
        }
        Ok(())
    }

    async fn order_rejected(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::OrderRejected,
        _event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        store::forget_placed(tx, &e.order_id).await.map_err(HandlerError::retryable)
    }

    async fn order_failed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::OrderFailed,
        _event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        store::forget_placed(tx, &e.order_id).await.map_err(HandlerError::retryable)
    }

    async fn order_cancelled(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::OrderCancelled,
        _event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        // A cancellation after delivery leaves the purchase: the buyer had
        // the product in hand and may still say what they thought of it.
        store::forget_placed(tx, &e.order_id).await.map_err(HandlerError::retryable)
    }
}

fn product_rating(rating: Rating) -> Option<ev::review_created::ProductRating> {
    Some(ev::review_created::ProductRating {
        review_count: rating.review_count,
        stars_total: rating.stars_total,
        version: rating.version,
    })
}

async fn publish<E: commerce_platform::events::EventPayload>(
    conn: &mut PgConnection,
    event: &E,
) -> Result<(), Error> {
    enqueue(conn, event).await.map(drop).map_err(|error| Error::Enqueue(Box::new(error)))
}

/// Enqueues `ReviewCreated`.
pub async fn created(conn: &mut PgConnection, review: &Review, rating: Rating) -> Result<(), Error> {
    let event = ev::ReviewCreated {
        product_id: review.product_id.clone(),
        review_id: review.id.to_string(),
        user_id: review.user_id.clone(),
        rating: i32::from(review.rating),
        product_rating: product_rating(rating),
        occurred_at: Some(timestamp(review.created_at)),
    };
    publish(conn, &event).await
}

/// Enqueues `ReviewUpdated`.
pub async fn updated(
    conn: &mut PgConnection,
    review: &Review,
    previous_rating: i16,
    rating: Rating,
) -> Result<(), Error> {
    let event = ev::ReviewUpdated {
        product_id: review.product_id.clone(),
        review_id: review.id.to_string(),
        user_id: review.user_id.clone(),
        rating: i32::from(review.rating),
        previous_rating: i32::from(previous_rating),
        product_rating: product_rating(rating),
        occurred_at: Some(timestamp(review.updated_at)),
    };
    publish(conn, &event).await
}

/// Enqueues `ReviewFlagged`.
pub async fn flagged(
    conn: &mut PgConnection,
    review: &Review,
    reporter_id: &str,
    reason: &str,
) -> Result<(), Error> {
    let event = ev::ReviewFlagged {
        product_id: review.product_id.clone(),
        review_id: review.id.to_string(),
        reporter_id: reporter_id.to_owned(),
        reason: reason.to_owned(),
        report_count: i32::try_from(review.report_count).unwrap_or(i32::MAX),
        occurred_at: Some(timestamp(Utc::now())),
    };
    publish(conn, &event).await
}

/// Enqueues `ReviewModerated`.
pub async fn moderated(
    conn: &mut PgConnection,
    review: &Review,
    moderator_id: &str,
    note: &str,
    rating: Rating,
) -> Result<(), Error> {
    let event = ev::ReviewModerated {
        product_id: review.product_id.clone(),
        review_id: review.id.to_string(),
        moderator_id: moderator_id.to_owned(),
        removed: review.status() == crate::domain::Status::Removed,
        note: note.to_owned(),
        product_rating: product_rating(rating),
        occurred_at: Some(timestamp(review.updated_at)),
    };
    publish(conn, &event).await
}
