//! The index's feed: the catalog's product events (name, SKU, description,
//! category, price, whether it is listed), inventory's availability
//! (`StockRestocked` and `StockAvailabilityChanged`, both absolute) and the
//! reviews' product ratings (whole, versioned). Each is applied in the
//! transaction that records the event as processed; each product's events
//! of one topic share a partition and arrive in order, and an event for a
//! product the index has not seen yet makes a row that the catalog's event
//! completes.

use commerce_platform::events::{HandlerError, IncomingEvent};
use commerce_proto::events::v1 as ev;
use commerce_proto::time::from_timestamp;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::store::{self, CatalogFields};

/// Keeps the index in step with the events.
#[derive(Debug, Clone, Copy, Default)]
pub struct IndexEventHandler;

commerce_platform::event_handler!(IndexEventHandler {
    ev::ProductCreated => product_created,
    ev::ProductUpdated => product_updated,
    ev::ProductDeleted => product_deleted,
    ev::StockRestocked => stock_restocked,
    ev::StockAvailabilityChanged => availability_changed,
    ev::ReviewCreated => review_created,
    ev::ReviewUpdated => review_updated,
    ev::ReviewModerated => review_moderated,
});

/// An event the index cannot apply.
#[derive(Debug, thiserror::Error)]
#[error("invalid event for the search index: {0}")]
pub struct InvalidEvent(&'static str);

fn product_id(raw: &str) -> Result<Uuid, HandlerError> {
    Uuid::parse_str(raw).map_err(|_| HandlerError::permanent(InvalidEvent("product_id is not a UUID")))
}

fn category_id(raw: &str) -> Result<Option<Uuid>, HandlerError> {
    if raw.is_empty() {
        return Ok(None);
    }
    Uuid::parse_str(raw)
        .map(Some)
        .map_err(|_| HandlerError::permanent(InvalidEvent("category_id is not a UUID")))
}

fn when(at: Option<&prost_types::Timestamp>, event: &IncomingEvent) -> chrono::DateTime<chrono::Utc> {
    at.and_then(from_timestamp).unwrap_or_else(|| event.time())
}

#[allow(clippy::too_many_arguments)]
async fn apply_catalog(
    tx: &mut Transaction<'_, Postgres>,
    event: &IncomingEvent,
    product: &str,
    sku: String,
    name: String,
    description: String,
    category: &str,
    price: Option<commerce_proto::common::v1::Money>,
    active: bool,
    at: Option<&prost_types::Timestamp>,
) -> Result<(), HandlerError> {
    let price = price.unwrap_or_default();
    let fields = CatalogFields {
        product_id: product_id(product)?,
        sku,
        name,
        description,
        category_id: category_id(category)?,
        price_units: price.units,
        currency: price.currency_code,
        active,
        changed_at: when(at, event),
    };
    store::apply_catalog(tx, &fields).await.map(drop).map_err(HandlerError::retryable)
}

async fn apply_rating(
    tx: &mut Transaction<'_, Postgres>,
    product: &str,
    rating: Option<ev::review_created::ProductRating>,
) -> Result<(), HandlerError> {
    let rating = rating.ok_or_else(|| HandlerError::permanent(InvalidEvent("no product_rating")))?;
    store::apply_rating(tx, product_id(product)?, rating.review_count, rating.stars_total, rating.version)
        .await
        .map_err(HandlerError::retryable)
}

impl IndexEventHandler {
    async fn product_created(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::ProductCreated,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let at = e.occurred_at;
        apply_catalog(
            tx,
            event,
            &e.product_id,
            e.sku,
            e.name,
            e.description,
            &e.category_id,
            e.price,
            e.active,
            at.as_ref(),
        )
        .await
    }

    async fn product_updated(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::ProductUpdated,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let at = e.occurred_at;
        apply_catalog(
            tx,
            event,
            &e.product_id,
            e.sku,
            e.name,
            e.description,
            &e.category_id,
            e.price,
            e.active,
            at.as_ref(),
        )
        .await
    }

    async fn product_deleted(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::ProductDeleted,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        store::apply_deleted(tx, product_id(&e.product_id)?, when(e.occurred_at.as_ref(), event))
            .await
            .map_err(HandlerError::retryable)
    }

    async fn stock_restocked(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::StockRestocked,
        _event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        store::apply_available(tx, product_id(&e.product_id)?, e.available)
            .await
            .map_err(HandlerError::retryable)
    }

    async fn availability_changed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::StockAvailabilityChanged,
        _event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        store::apply_available(tx, product_id(&e.product_id)?, e.available)
            .await
            .map_err(HandlerError::retryable)
    }

    async fn review_created(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::ReviewCreated,
        _event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        apply_rating(tx, &e.product_id, e.product_rating).await
    }

    async fn review_updated(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::ReviewUpdated,
        _event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        apply_rating(tx, &e.product_id, e.product_rating).await
    }

    async fn review_moderated(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::ReviewModerated,
        _event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        apply_rating(tx, &e.product_id, e.product_rating).await
    }
}
