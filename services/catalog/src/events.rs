//! What the catalog publishes on `commerce.catalog.v1`, through the
//! platform outbox, in the transaction of the write it reports:
//! `ProductCreated`, `ProductUpdated` (+ `PriceChanged` when the price
//! moved) and `ProductDeleted`. What it consumes is in [`ratings`](crate::ratings).

use commerce_platform::events::enqueue;
use commerce_proto::common::v1::Money as ProtoMoney;
use commerce_proto::events::v1 as pb;
use commerce_proto::time::timestamp;
use prost_types::FieldMask;
use sqlx::postgres::PgConnection;

use crate::Error;
use crate::domain::{Field, Money, ProductRow};

/// The proto form of an amount.
pub fn money(money: &Money) -> ProtoMoney {
    ProtoMoney { currency_code: money.currency.clone(), units: money.units }
}

/// Enqueues `ProductCreated` for a newly inserted product.
pub async fn enqueue_created(conn: &mut PgConnection, row: &ProductRow) -> Result<(), Error> {
    let event = pb::ProductCreated {
        product_id: row.id.to_string(),
        sku: row.sku.clone(),
        name: row.name.clone(),
        category_id: row.category_id.to_string(),
        price: Some(money(&row.price())),
        active: row.active,
        occurred_at: Some(timestamp(row.created_at)),
        description: row.description.clone(),
    };
    enqueue(conn, &event).await.map_err(|error| Error::EnqueueEvent(Box::new(error)))?;
    Ok(())
}

/// Enqueues `ProductUpdated` and, if the price changed, `PriceChanged`.
pub async fn enqueue_updated(
    conn: &mut PgConnection,
    before: &ProductRow,
    after: &ProductRow,
    changed: &[Field],
) -> Result<(), Error> {
    let occurred_at = Some(timestamp(after.updated_at));
    let event = pb::ProductUpdated {
        product_id: after.id.to_string(),
        sku: after.sku.clone(),
        name: after.name.clone(),
        category_id: after.category_id.to_string(),
        price: Some(money(&after.price())),
        active: after.active,
        changed_fields: Some(FieldMask {
            paths: changed.iter().map(|field| field.name().to_owned()).collect(),
        }),
        occurred_at,
        description: after.description.clone(),
    };
    enqueue(conn, &event).await.map_err(|error| Error::EnqueueEvent(Box::new(error)))?;
    if changed.contains(&Field::Price) {
        let event = pb::PriceChanged {
            product_id: after.id.to_string(),
            previous_price: Some(money(&before.price())),
            price: Some(money(&after.price())),
            occurred_at,
        };
        enqueue(conn, &event).await.map_err(|error| Error::EnqueueEvent(Box::new(error)))?;
    }
    Ok(())
}

/// Enqueues `ProductDeleted`.
pub async fn enqueue_deleted(conn: &mut PgConnection, row: &ProductRow) -> Result<(), Error> {
    let event = pb::ProductDeleted {
        product_id: row.id.to_string(),
        sku: row.sku.clone(),
        occurred_at: Some(timestamp(chrono::Utc::now())),
    };
    enqueue(conn, &event).await.map_err(|error| Error::EnqueueEvent(Box::new(error)))?;
    Ok(())
}
