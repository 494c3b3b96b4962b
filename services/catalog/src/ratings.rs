//! The catalog's consumer of `commerce.reviews.v1`: each product's average
//! rating and review count, shown with the product.
//!
//! Every review event carries the product's whole rating after the change
//! and a version ([`store::apply_rating`] keeps the highest), so the catalog
//! needs no review of its own and a redelivered event changes nothing. The
//! product's cache entry is dropped after the commit, never before: dropped
//! earlier, a read between the drop and the commit could cache the old
//! rating again.

use commerce_platform::events::{HandlerError, IncomingEvent};
use commerce_proto::events::v1 as ev;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::cache::Cache;
use crate::store;

/// Applies each review event's product rating.
#[derive(Debug, Clone)]
pub struct RatingEventHandler {
    cache: Cache,
}

impl RatingEventHandler {
    pub fn new(cache: Cache) -> Self {
        Self { cache }
    }
}

commerce_platform::event_handler!(RatingEventHandler {
    ev::ReviewCreated => review_created,
    ev::ReviewUpdated => review_updated,
    ev::ReviewModerated => review_moderated,
} committed => drop_cached_products);

fn product_id(raw: &str) -> Result<Uuid, HandlerError> {
    Uuid::parse_str(raw).map_err(|_| HandlerError::permanent(InvalidRatingEvent("product_id is not a UUID")))
}

/// A review event the catalog cannot apply.
#[derive(Debug, thiserror::Error)]
#[error("invalid review event: {0}")]
pub struct InvalidRatingEvent(&'static str);

async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    product: &str,
    rating: Option<ev::review_created::ProductRating>,
) -> Result<(), HandlerError> {
    let product_id = product_id(product)?;
    let rating = rating.ok_or_else(|| HandlerError::permanent(InvalidRatingEvent("no product_rating")))?;
    if rating.review_count < 0 || rating.stars_total < 0 || rating.version < 1 {
        return Err(HandlerError::permanent(InvalidRatingEvent("negative count or total, or no version")));
    }
    let changed =
        store::apply_rating(tx, product_id, rating.review_count, rating.stars_total, rating.version)
            .await
            .map_err(HandlerError::retryable)?;
    if !changed {
        tracing::debug!(%product_id, version = rating.version, "rating not applied: older, or no such product");
    }
    Ok(())
}

impl RatingEventHandler {
    async fn review_created(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::ReviewCreated,
        _event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        apply(tx, &e.product_id, e.product_rating).await
    }

    async fn review_updated(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::ReviewUpdated,
        _event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        apply(tx, &e.product_id, e.product_rating).await
    }

    async fn review_moderated(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::ReviewModerated,
        _event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        apply(tx, &e.product_id, e.product_rating).await
    }

    /// After the commit: the products' cached entries and pages go.
    async fn drop_cached_products(&self, events: &[&IncomingEvent]) {
        for event in events {
            if let Some(id) = event
                .key()
                .and_then(|key| std::str::from_utf8(key).ok())
                .and_then(|key| Uuid::parse_str(key).ok())
            {
                self.cache.invalidate(Some(id)).await;
            }
        }
    }
}
