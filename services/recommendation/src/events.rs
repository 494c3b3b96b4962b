//! The recommendations' feed. From the Orders topic: `OrderPlaced` records
//! an order's products, `OrderConfirmed` makes them purchases and counts
//! them ([`store::record_confirmed`]), and an order rejected, failed or
//! cancelled before confirmation is forgotten (one order's events share a
//! partition, so the placement always comes first). From the Catalog topic:
//! each product's name, category, price and whether it is for sale.

use commerce_platform::events::{HandlerError, IncomingEvent};
use commerce_proto::events::v1 as ev;
use commerce_proto::time::from_timestamp;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::store::{self, Product};

/// Keeps purchases, pairs and products in step with the events.
#[derive(Debug, Clone, Copy, Default)]
pub struct PurchaseEventHandler;

commerce_platform::event_handler!(PurchaseEventHandler {
    ev::OrderPlaced => order_placed,
    ev::OrderConfirmed => order_confirmed,
    ev::OrderRejected => order_rejected,
    ev::OrderFailed => order_failed,
    ev::OrderCancelled => order_cancelled,
    ev::ProductCreated => product_created,
    ev::ProductUpdated => product_updated,
    ev::ProductDeleted => product_deleted,
    ev::UserErased => user_erased,
});

/// An event the recommendations cannot apply.
#[derive(Debug, thiserror::Error)]
#[error("invalid event for the recommendations: {0}")]
pub struct InvalidEvent(&'static str);

fn uuid(raw: &str, what: &'static str) -> Result<Uuid, HandlerError> {
    Uuid::parse_str(raw).map_err(|_| HandlerError::permanent(InvalidEvent(what)))
}

fn when(at: Option<&prost_types::Timestamp>, event: &IncomingEvent) -> chrono::DateTime<chrono::Utc> {
    at.and_then(from_timestamp).unwrap_or_else(|| event.time())
}

fn product(
    id: &str,
    name: String,
    category: &str,
    price: Option<commerce_proto::common::v1::Money>,
    active: bool,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Product, HandlerError> {
    let price = price.unwrap_or_default();
    Ok(Product {
        product_id: uuid(id, "product_id is not a UUID")?,
        name,
        category_id: if category.is_empty() {
            None
        } else {
            Some(uuid(category, "category_id is not a UUID")?)
        },
        price_units: price.units,
        currency: price.currency_code,
        active,
        changed_at: at,
    })
}

impl PurchaseEventHandler {
    async fn user_erased(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::UserErased,
        _event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        if e.user_id.is_empty() {
            return Err(HandlerError::permanent(InvalidEvent("UserErased without a user id")));
        }
        let rows = store::erase_user(tx, &e.user_id).await.map_err(HandlerError::retryable)?;
        tracing::info!(user_id = %e.user_id, rows, "an erased user's views and purchases were deleted");
        Ok(())
    }

    async fn order_placed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::OrderPlaced,
        _event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        if e.order_id.is_empty() || e.user_id.is_empty() {
            return Err(HandlerError::permanent(InvalidEvent("OrderPlaced without an order or user id")));
        }
        let mut products = e
            .lines
            .iter()
            .map(|line| uuid(&line.product_id, "a line's product_id is not a UUID"))
            .collect::<Result<Vec<_>, _>>()?;
        products.sort();
        products.dedup();
        store::record_placed(tx, &e.order_id, &e.user_id, &products).await.map_err(HandlerError::retryable)
    }

    async fn order_confirmed(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::OrderConfirmed,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let new = store::record_confirmed(tx, &e.order_id, when(e.occurred_at.as_ref(), event))
            .await
            .map_err(HandlerError::retryable)?;
        tracing::debug!(order_id = %e.order_id, new_products = new.len(), "purchases counted");
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
        // Cancelled after confirmation: the purchase stays counted; the
        // customer chose those products together all the same.
        store::forget_placed(tx, &e.order_id).await.map_err(HandlerError::retryable)
    }

    async fn product_created(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::ProductCreated,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let at = when(e.occurred_at.as_ref(), event);
        let product = product(&e.product_id, e.name, &e.category_id, e.price, e.active, at)?;
        store::apply_product(tx, &product).await.map_err(HandlerError::retryable)
    }

    async fn product_updated(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::ProductUpdated,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let at = when(e.occurred_at.as_ref(), event);
        let product = product(&e.product_id, e.name, &e.category_id, e.price, e.active, at)?;
        store::apply_product(tx, &product).await.map_err(HandlerError::retryable)
    }

    async fn product_deleted(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        e: ev::ProductDeleted,
        event: &IncomingEvent,
    ) -> Result<(), HandlerError> {
        let id = uuid(&e.product_id, "product_id is not a UUID")?;
        store::apply_deleted(tx, id, when(e.occurred_at.as_ref(), event))
            .await
            .map_err(HandlerError::retryable)
    }
}
