//! The order database: orders with their lines and saga state. Runtime-checked
//! sqlx queries; every write that changes an order's fate happens inside a
//! transaction the caller owns, so the outbox row lands with it.

use chrono::{DateTime, Utc};
use commerce_proto::common::v1::Address;
use prost::Message;
use sqlx::postgres::{PgConnection, PgPool};
use uuid::Uuid;

use crate::Error;
use crate::domain::{OrderStatus, PricedLine, SagaState};

/// Postgres' code for a unique violation.
const UNIQUE_VIOLATION: &str = "23505";

/// An order as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub id: Uuid,
    pub user_id: String,
    pub idempotency_key: String,
    /// Fingerprint of the placement's lines (see `domain::fingerprint`).
    pub request_fingerprint: String,
    pub currency: String,
    pub total: i64,
    pub shipping_address: Address,
    pub saga: SagaState,
    pub lines: Vec<PricedLine>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    user_id: String,
    idempotency_key: String,
    request_fingerprint: String,
    status: String,
    currency: String,
    total_units: i64,
    shipping_address: Vec<u8>,
    failure_reason: String,
    reservation_id: Option<String>,
    reservation_expires_at: Option<DateTime<Utc>>,
    payment_id: Option<String>,
    shipment_id: Option<String>,
    refunded: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct LineRow {
    order_id: Uuid,
    product_id: String,
    sku: String,
    name: String,
    quantity: i32,
    unit_price_units: i64,
    line_total_units: i64,
}

const ORDER_COLUMNS: &str = "id, user_id, idempotency_key, request_fingerprint, status, currency, total_units, \
     shipping_address, failure_reason, reservation_id, reservation_expires_at, payment_id, shipment_id, refunded, \
     created_at, updated_at";

impl OrderRow {
    fn into_order(self, lines: Vec<PricedLine>) -> Result<Order, Error> {
        let status = OrderStatus::parse(&self.status).ok_or_else(|| Error::DecodeStoredOrder {
            id: self.id,
            problem: format!("unknown status {}", self.status),
        })?;
        let shipping_address = Address::decode(self.shipping_address.as_slice())
            .map_err(|error| Error::DecodeStoredOrder { id: self.id, problem: error.to_string() })?;
        Ok(Order {
            id: self.id,
            user_id: self.user_id,
            idempotency_key: self.idempotency_key,
            request_fingerprint: self.request_fingerprint,
            currency: self.currency,
            total: self.total_units,
            shipping_address,
            saga: SagaState {
                status,
                reservation_id: self.reservation_id,
                reservation_expires_at: self.reservation_expires_at,
                payment_id: self.payment_id,
                shipment_id: self.shipment_id,
                refunded: self.refunded,
                failure_reason: self.failure_reason,
            },
            lines,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

impl From<LineRow> for PricedLine {
    fn from(row: LineRow) -> Self {
        PricedLine {
            product_id: row.product_id,
            sku: row.sku,
            name: row.name,
            quantity: u32::try_from(row.quantity).unwrap_or_default(),
            unit_price: row.unit_price_units,
            line_total: row.line_total_units,
        }
    }
}

/// Attaches lines to rows, keeping the rows' order.
async fn with_lines(conn: &mut PgConnection, rows: Vec<OrderRow>) -> Result<Vec<Order>, Error> {
    let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
    let lines: Vec<LineRow> = sqlx::query_as(
        "SELECT order_id, product_id, sku, name, quantity, unit_price_units, line_total_units \
         FROM order_lines WHERE order_id = ANY($1) ORDER BY order_id, position",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(Error::LoadOrder)?;
    let mut orders = Vec::with_capacity(rows.len());
    for row in rows {
        let own: Vec<PricedLine> =
            lines.iter().filter(|line| line.order_id == row.id).map(|line| clone_line(line).into()).collect();
        orders.push(row.into_order(own)?);
    }
    Ok(orders)
}

fn clone_line(line: &LineRow) -> LineRow {
    LineRow {
        order_id: line.order_id,
        product_id: line.product_id.clone(),
        sku: line.sku.clone(),
        name: line.name.clone(),
        quantity: line.quantity,
        unit_price_units: line.unit_price_units,
        line_total_units: line.line_total_units,
    }
}

/// Replaces the shipping address of each of `user_id`'s orders with what
/// [`anonymised_address`](commerce_proto::privacy::anonymised_address) keeps
/// of it (the country): the orders, their lines and amounts stay, as the
/// shop's books need them. How many orders changed.
pub async fn anonymise_user(conn: &mut PgConnection, user_id: &str) -> Result<usize, Error> {
    let orders: Vec<(Uuid, Vec<u8>)> =
        sqlx::query_as("SELECT id, shipping_address FROM orders WHERE user_id = $1 ORDER BY id FOR UPDATE")
            .bind(user_id)
            .fetch_all(&mut *conn)
            .await
            .map_err(Error::LoadOrder)?;
    for (id, stored) in &orders {
        let address = Address::decode(stored.as_slice())
            .map_err(|error| Error::DecodeStoredOrder { id: *id, problem: error.to_string() })?;
        let kept = commerce_proto::privacy::anonymised_address(&address);
        sqlx::query("UPDATE orders SET shipping_address = $2, updated_at = now() WHERE id = $1")
            .bind(id)
            .bind(kept.encode_to_vec())
            .execute(&mut *conn)
            .await
            .map_err(Error::UpdateOrder)?;
    }
    Ok(orders.len())
}

/// Inserts a new order with its lines. `Ok(false)` when (user,
/// idempotency key) already exists: the caller looks the existing one up.
pub async fn insert_order(conn: &mut PgConnection, order: &Order) -> Result<bool, Error> {
    let inserted = sqlx::query(
        "INSERT INTO orders (id, user_id, idempotency_key, request_fingerprint, status, currency, total_units, \
         shipping_address, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
    )
    .bind(order.id)
    .bind(&order.user_id)
    .bind(&order.idempotency_key)
    .bind(&order.request_fingerprint)
    .bind(order.saga.status.as_str())
    .bind(&order.currency)
    .bind(order.total)
    .bind(order.shipping_address.encode_to_vec())
    .bind(order.created_at)
    .execute(&mut *conn)
    .await;
    match inserted {
        Ok(_) => {}
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some(UNIQUE_VIOLATION) => {
            return Ok(false);
        }
        Err(error) => return Err(Error::InsertOrder(error)),
    }
    for (position, line) in order.lines.iter().enumerate() {
        sqlx::query(
            "INSERT INTO order_lines (order_id, position, product_id, sku, name, quantity, unit_price_units, \
             line_total_units) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(order.id)
        .bind(i32::try_from(position).unwrap_or(i32::MAX))
        .bind(&line.product_id)
        .bind(&line.sku)
        .bind(&line.name)
        .bind(i32::try_from(line.quantity).unwrap_or(i32::MAX))
        .bind(line.unit_price)
        .bind(line.line_total)
        .execute(&mut *conn)
        .await
        .map_err(Error::InsertOrder)?;
    }
    Ok(true)
}

/// The order a user placed with an idempotency key, if any.
pub async fn find_by_idempotency_key(
    pool: &PgPool,
    user_id: &str,
    key: &str,
) -> Result<Option<Order>, Error> {
    let mut conn = pool.acquire().await.map_err(Error::LoadOrder)?;
    let row: Option<OrderRow> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = $1 AND idempotency_key = $2"
    ))
    .bind(user_id)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await
    .map_err(Error::LoadOrder)?;
    Ok(with_lines(&mut conn, row.into_iter().collect()).await?.pop())
}

/// One order, read without a lock.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Order>, Error> {
    let mut conn = pool.acquire().await.map_err(Error::LoadOrder)?;
    fetch(&mut conn, id, false).await
}

/// One order, locked `FOR UPDATE` until the caller's transaction ends: the
/// single-writer rule for an order's fate.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<Order>, Error> {
    fetch(conn, id, true).await
}

async fn fetch(conn: &mut PgConnection, id: Uuid, for_update: bool) -> Result<Option<Order>, Error> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let row: Option<OrderRow> =
        sqlx::query_as(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1{lock}"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(Error::LoadOrder)?;
    Ok(with_lines(conn, row.into_iter().collect()).await?.pop())
}

/// Stores a new saga state.
pub async fn save_saga(conn: &mut PgConnection, id: Uuid, saga: &SagaState) -> Result<DateTime<Utc>, Error> {
    sqlx::query_scalar(
        "UPDATE orders SET status = $2, reservation_id = $3, reservation_expires_at = $4, payment_id = $5, \
         shipment_id = $6, refunded = $7, failure_reason = $8, updated_at = now() WHERE id = $1 RETURNING updated_at",
    )
    .bind(id)
    .bind(saga.status.as_str())
    .bind(&saga.reservation_id)
    .bind(saga.reservation_expires_at)
    .bind(&saga.payment_id)
    .bind(&saga.shipment_id)
    .bind(saga.refunded)
    .bind(&saga.failure_reason)
    .fetch_one(&mut *conn)
    .await
    .map_err(Error::UpdateOrder)
}

/// A page of orders, newest first, after the keyset cursor `after`.
#[derive(Debug)]
pub struct OrderPage {
    pub orders: Vec<Order>,
    /// Cursor of the last order, when more follow.
    pub next: Option<(DateTime<Utc>, Uuid)>,
    pub total: i64,
}

/// Lists orders of one user (or every user), optionally in one status.
pub async fn list(
    pool: &PgPool,
    user_id: Option<&str>,
    status: Option<OrderStatus>,
    page_size: i64,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<OrderPage, Error> {
    let mut conn = pool.acquire().await.map_err(Error::ListOrders)?;
    let status = status.map(OrderStatus::as_str);
    let filter = "($1::text IS NULL OR user_id = $1) AND ($2::text IS NULL OR status = $2)";
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM orders WHERE {filter}"))
        .bind(user_id)
        .bind(status)
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::ListOrders)?;
    let (after_time, after_id) = after.map_or((None, None), |(time, id)| (Some(time), Some(id)));
    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE {filter} \
         AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) \
         ORDER BY created_at DESC, id DESC LIMIT $5"
    ))
    .bind(user_id)
    .bind(status)
    .bind(after_time)
    .bind(after_id)
    .bind(page_size + 1)
    .fetch_all(&mut *conn)
    .await
    .map_err(Error::ListOrders)?;
    let mut orders = with_lines(&mut conn, rows).await?;
    let next = if orders.len() > usize::try_from(page_size).unwrap_or(usize::MAX) {
        orders.truncate(usize::try_from(page_size).unwrap_or(usize::MAX));
        orders.last().map(|order| (order.created_at, order.id))
    } else {
        None
    };
    Ok(OrderPage { orders, next, total })
}

/// Ids of open orders whose reservation lapsed at `now`, oldest first.
pub async fn lapsed_reservations(pool: &PgPool, now: DateTime<Utc>, limit: i64) -> Result<Vec<Uuid>, Error> {
    sqlx::query_scalar(
        "SELECT id FROM orders WHERE status IN ('PENDING', 'RESERVED') AND reservation_expires_at <= $1 \
         ORDER BY reservation_expires_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(Error::LoadOrder)
}
