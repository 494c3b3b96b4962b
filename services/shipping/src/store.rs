//! The shipping database: shipments and their tracking history, on
//! connections the caller owns so the outbox row commits with the change.

use chrono::{DateTime, Utc};
use commerce_proto::common::v1::Address;
use prost::Message;
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use crate::Error;
use crate::domain::ShipmentStatus;

/// A shipment as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Shipment {
    pub id: Uuid,
    pub order_id: String,
    pub user_id: String,
    /// Empty while PENDING.
    pub courier_id: String,
    pub status: ShipmentStatus,
    pub address: Address,
    pub tracking_number: String,
    pub halt_reason: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct ShipmentRow {
    id: Uuid,
    order_id: String,
    user_id: String,
    courier_id: String,
    status: String,
    address: Vec<u8>,
    tracking_number: String,
    halt_reason: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    delivered_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, order_id, user_id, courier_id, status, address, tracking_number, halt_reason, created_at, updated_at, delivered_at";

impl TryFrom<ShipmentRow> for Shipment {
    type Error = Error;

    fn try_from(row: ShipmentRow) -> Result<Self, Error> {
        let status = ShipmentStatus::parse(&row.status).ok_or_else(|| Error::DecodeStoredShipment {
            id: row.id,
            problem: format!("unknown status {}", row.status),
        })?;
        let address = Address::decode(row.address.as_slice())
            .map_err(|error| Error::DecodeStoredShipment { id: row.id, problem: error.to_string() })?;
        Ok(Shipment {
            id: row.id,
            order_id: row.order_id,
            user_id: row.user_id,
            courier_id: row.courier_id,
            status,
            address,
            tracking_number: row.tracking_number,
            halt_reason: row.halt_reason,
            created_at: row.created_at,
            updated_at: row.updated_at,
            delivered_at: row.delivered_at,
        })
    }
}

/// One step of a shipment's history.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TrackingEvent {
    pub status: String,
    pub description: String,
    pub location: String,
    pub actor_id: String,
    pub occurred_at: DateTime<Utc>,
}

/// The next round-robin ticket.
pub async fn next_courier_ticket(conn: &mut PgConnection) -> Result<u64, Error> {
    let ticket: i64 = sqlx::query_scalar("SELECT nextval('courier_ticket')")
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::UpdateShipment)?;
    Ok(u64::try_from(ticket).unwrap_or_default())
}

/// Replaces the address of each of `user_id`'s shipments with what
/// [`anonymised_address`](commerce_proto::privacy::anonymised_address) keeps
/// of it (the country); the shipments and their tracking stay. How many
/// shipments changed.
pub async fn anonymise_user(conn: &mut PgConnection, user_id: &str) -> Result<usize, Error> {
    let shipments: Vec<(Uuid, Vec<u8>)> =
        sqlx::query_as("SELECT id, address FROM shipments WHERE user_id = $1 ORDER BY id FOR UPDATE")
            .bind(user_id)
            .fetch_all(&mut *conn)
            .await
            .map_err(Error::LoadShipment)?;
    for (id, stored) in &shipments {
        let address = Address::decode(stored.as_slice())
            .map_err(|error| Error::DecodeStoredShipment { id: *id, problem: error.to_string() })?;
        let kept = commerce_proto::privacy::anonymised_address(&address);
        sqlx::query("UPDATE shipments SET address = $2 WHERE id = $1")
            .bind(id)
            .bind(kept.encode_to_vec())
            .execute(&mut *conn)
            .await
            .map_err(Error::UpdateShipment)?;
    }
    Ok(shipments.len())
}

/// Inserts a shipment unless its order has one; `false` when it existed.
pub async fn insert(conn: &mut PgConnection, shipment: &Shipment) -> Result<bool, Error> {
    let inserted = sqlx::query(
        "INSERT INTO shipments (id, order_id, user_id, courier_id, status, address, tracking_number) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(shipment.id)
    .bind(&shipment.order_id)
    .bind(&shipment.user_id)
    .bind(&shipment.courier_id)
    .bind(shipment.status.as_str())
    .bind(shipment.address.encode_to_vec())
    .bind(&shipment.tracking_number)
    .execute(&mut *conn)
    .await
    .map_err(Error::UpdateShipment)?;
    Ok(inserted.rows_affected() == 1)
}

/// A shipment by id or order id, optionally locked.
pub async fn find(
    conn: &mut PgConnection,
    id: Option<Uuid>,
    order_id: Option<&str>,
    for_update: bool,
) -> Result<Option<Shipment>, Error> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let row: Option<ShipmentRow> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM shipments WHERE id = $1 OR order_id = $2{lock}"))
            .bind(id)
            .bind(order_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(Error::LoadShipment)?;
    row.map(Shipment::try_from).transpose()
}

/// Stores a shipment's new status, courier and halt reason.
pub async fn save(conn: &mut PgConnection, shipment: &Shipment) -> Result<DateTime<Utc>, Error> {
    sqlx::query_scalar(
        "UPDATE shipments SET status = $2, courier_id = $3, halt_reason = $4, updated_at = now(), \
         delivered_at = CASE WHEN $2 = 'DELIVERED' THEN now() ELSE delivered_at END WHERE id = $1 RETURNING updated_at",
    )
    .bind(shipment.id)
    .bind(shipment.status.as_str())
    .bind(&shipment.courier_id)
    .bind(&shipment.halt_reason)
    .fetch_one(&mut *conn)
    .await
    .map_err(Error::UpdateShipment)
}

/// Appends a step to a shipment's history.
pub async fn track(
    conn: &mut PgConnection,
    shipment_id: Uuid,
    status: ShipmentStatus,
    description: &str,
    location: &str,
    actor_id: &str,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO tracking_events (shipment_id, status, description, location, actor_id) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(shipment_id)
    .bind(status.as_str())
    .bind(description)
    .bind(location)
    .bind(actor_id)
    .execute(&mut *conn)
    .await
    .map_err(Error::UpdateShipment)?;
    Ok(())
}

/// A shipment's history, oldest first.
pub async fn history(conn: &mut PgConnection, shipment_id: Uuid) -> Result<Vec<TrackingEvent>, Error> {
    sqlx::query_as(
        "SELECT status, description, location, actor_id, occurred_at FROM tracking_events WHERE shipment_id = $1 ORDER BY id",
    )
    .bind(shipment_id)
    .fetch_all(&mut *conn)
    .await
    .map_err(Error::LoadShipment)
}

/// Which shipments a listing shows; `None` does not filter.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListFilter<'a> {
    pub courier_id: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub status: Option<ShipmentStatus>,
}

/// A page of shipments, oldest first, after the keyset cursor.
pub async fn list(
    conn: &mut PgConnection,
    filter: ListFilter<'_>,
    page_size: i64,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<(Vec<Shipment>, i64), Error> {
    let ListFilter { courier_id, user_id, status } = filter;
    let status = status.map(ShipmentStatus::as_str);
    let filter = "($1::text IS NULL OR courier_id = $1) AND ($2::text IS NULL OR status = $2) \
                  AND ($3::text IS NULL OR user_id = $3)";
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM shipments WHERE {filter}"))
        .bind(courier_id)
        .bind(status)
        .bind(user_id)
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::LoadShipment)?;
    let (after_time, after_id) = after.map_or((None, None), |(time, id)| (Some(time), Some(id)));
    let rows: Vec<ShipmentRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM shipments WHERE {filter} \
         AND ($4::timestamptz IS NULL OR (created_at, id) > ($4, $5)) ORDER BY created_at, id LIMIT $6"
    ))
    .bind(courier_id)
    .bind(status)
    .bind(user_id)
    .bind(after_time)
    .bind(after_id)
    .bind(page_size)
    .fetch_all(&mut *conn)
    .await
    .map_err(Error::LoadShipment)?;
    let shipments = rows.into_iter().map(Shipment::try_from).collect::<Result<Vec<_>, _>>()?;
    Ok((shipments, total))
}
