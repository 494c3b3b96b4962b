//! The analytics tables (`migrations/`): written by the events, read by the
//! reports. Every write is an upsert whose result does not depend on the
//! order of the events: a step's first moment wins, refunds only grow, and a
//! product keeps its latest catalog event.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;

use crate::Error;

/// One line of a placed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub product_id: String,
    pub name: String,
    pub quantity: i64,
    pub total_units: i64,
}

/// A step an order reaches after it is placed; each has its column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Confirmed,
    Shipped,
    Delivered,
    Rejected,
    Failed,
    Cancelled,
}

impl Step {
    fn column(self) -> &'static str {
        match self {
            Step::Confirmed => "confirmed_at",
            Step::Shipped => "shipped_at",
            Step::Delivered => "delivered_at",
            Step::Rejected => "rejected_at",
            Step::Failed => "failed_at",
            Step::Cancelled => "cancelled_at",
        }
    }
}

/// Records a placed order and its lines (a row made earlier by a later
/// step's event is completed).
pub async fn record_placed(
    conn: &mut PgConnection,
    order_id: &str,
    user_id: &str,
    currency: &str,
    total_units: i64,
    placed_at: DateTime<Utc>,
    lines: &[Line],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO orders (order_id, user_id, currency, total_units, placed_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (order_id) DO UPDATE SET user_id = excluded.user_id, currency = excluded.currency, \
           total_units = excluded.total_units, placed_at = excluded.placed_at",
    )
    .bind(order_id)
    .bind(user_id)
    .bind(currency)
    .bind(total_units)
    .bind(placed_at)
    .execute(&mut *conn)
    .await?;
    for line in lines {
        sqlx::query(
            "INSERT INTO order_lines (order_id, product_id, name, quantity, line_total_units) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_id, product_id) DO NOTHING",
        )
        .bind(order_id)
        .bind(&line.product_id)
        .bind(&line.name)
        .bind(line.quantity)
        .bind(line.total_units)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Records that the order reached `step` at `at`; the earliest moment wins.
pub async fn record_step(
    conn: &mut PgConnection,
    order_id: &str,
    step: Step,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let column = step.column();
    sqlx::query(&format!(
        "INSERT INTO orders (order_id, {column}) VALUES ($1, $2) ON CONFLICT (order_id) DO UPDATE \
         SET {column} = LEAST(orders.{column}, excluded.{column})"
    ))
    .bind(order_id)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records that `refunded_units` of the order were refunded in all.
pub async fn record_refund(
    conn: &mut PgConnection,
    order_id: &str,
    refunded_units: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO orders (order_id, refunded_units) VALUES ($1, $2) ON CONFLICT (order_id) DO UPDATE \
         SET refunded_units = GREATEST(orders.refunded_units, excluded.refunded_units)",
    )
    .bind(order_id)
    .bind(refunded_units.max(0))
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a product's name and category as of `at`, unless a later
/// catalog event was recorded already.
pub async fn record_product(
    conn: &mut PgConnection,
    product_id: &str,
    name: &str,
    category_id: &str,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO products (product_id, name, category_id, changed_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (product_id) DO UPDATE SET name = excluded.name, category_id = excluded.category_id, \
           changed_at = excluded.changed_at WHERE products.changed_at <= excluded.changed_at",
    )
    .bind(product_id)
    .bind(name)
    .bind(category_id)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records that `user_id` put something in a cart at `at`; the first
/// moment of each UTC day wins.
pub async fn record_cart_add(
    conn: &mut PgConnection,
    user_id: &str,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cart_adds (user_id, day, first_at) VALUES ($1, ($2 AT TIME ZONE 'UTC')::date, $2) \
         ON CONFLICT (user_id, day) DO UPDATE SET first_at = LEAST(cart_adds.first_at, excluded.first_at)",
    )
    .bind(user_id)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// How [`sales`] groups the confirmed orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    Day,
    Product,
    Category,
}

/// One group of [`sales`].
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SalesRow {
    pub key: String,
    pub label: String,
    pub currency: String,
    pub orders: i64,
    pub units: i64,
    pub revenue_units: i64,
    pub refunded_units: i64,
}

/// The orders confirmed in `[from, to)`, grouped.
pub async fn sales(
    conn: &mut PgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    grouping: Grouping,
) -> Result<Vec<SalesRow>, Error> {
    let sql = match grouping {
        // Units per order first, so that an order of many lines counts
        // its total once.
        Grouping::Day => {
            "WITH confirmed AS ( \
               SELECT o.order_id, o.currency, o.total_units, o.refunded_units, \
                 to_char(o.confirmed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, \
                 (SELECT COALESCE(sum(quantity), 0) FROM order_lines l WHERE l.order_id = o.order_id) AS units \
               FROM orders o WHERE o.confirmed_at >= $1 AND o.confirmed_at < $2 AND o.placed_at IS NOT NULL) \
             SELECT day AS key, day AS label, currency, count(*) AS orders, sum(units)::bigint AS units, \
               sum(total_units)::bigint AS revenue_units, sum(refunded_units)::bigint AS refunded_units \
             FROM confirmed GROUP BY day, currency ORDER BY day, currency"
        }
        Grouping::Product => {
            "SELECT l.product_id AS key, COALESCE(max(p.name), max(l.name)) AS label, o.currency, \
               count(DISTINCT o.order_id) AS orders, sum(l.quantity)::bigint AS units, \
               sum(l.line_total_units)::bigint AS revenue_units, 0::bigint AS refunded_units \
             FROM orders o JOIN order_lines l ON l.order_id = o.order_id \
             LEFT JOIN products p ON p.product_id = l.product_id \
             WHERE o.confirmed_at >= $1 AND o.confirmed_at < $2 \
             GROUP BY l.product_id, o.currency ORDER BY revenue_units DESC, key, o.currency"
        }
        Grouping::Category => {
            "SELECT COALESCE(p.category_id, '') AS key, COALESCE(p.category_id, '') AS label, o.currency, \
               count(DISTINCT o.order_id) AS orders, sum(l.quantity)::bigint AS units, \
               sum(l.line_total_units)::bigint AS revenue_units, 0::bigint AS refunded_units \
             FROM orders o JOIN order_lines l ON l.order_id = o.order_id \
             LEFT JOIN products p ON p.product_id = l.product_id \
             WHERE o.confirmed_at >= $1 AND o.confirmed_at < $2 \
             GROUP BY 1, 2, o.currency ORDER BY revenue_units DESC, key, o.currency"
        }
    };
    sqlx::query_as(sql).bind(from).bind(to).fetch_all(conn).await.map_err(Error::Read)
}

/// What became of the orders placed in `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, sqlx::FromRow)]
pub struct Funnel {
    /// Users who put something in a cart.
    pub carts: i64,
    pub placed: i64,
    pub confirmed: i64,
    pub delivered: i64,
    pub rejected: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub refunded: i64,
}

pub async fn funnel(
    conn: &mut PgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Funnel, Error> {
    sqlx::query_as(
        "SELECT (SELECT count(DISTINCT user_id) FROM cart_adds WHERE first_at >= $1 AND first_at < $2) AS carts, \
           count(*) AS placed, count(confirmed_at) AS confirmed, count(delivered_at) AS delivered, \
           count(rejected_at) AS rejected, count(failed_at) AS failed, count(cancelled_at) AS cancelled, \
           count(*) FILTER (WHERE refunded_units > 0) AS refunded \
         FROM orders WHERE placed_at >= $1 AND placed_at < $2",
    )
    .bind(from)
    .bind(to)
    .fetch_one(conn)
    .await
    .map_err(Error::Read)
}

/// Orders placed since `day_start`, and the revenue of those confirmed
/// since then per currency.
pub async fn today(
    conn: &mut PgConnection,
    day_start: DateTime<Utc>,
) -> Result<(i64, Vec<(String, i64)>), Error> {
    let placed: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE placed_at >= $1")
        .bind(day_start)
        .fetch_one(&mut *conn)
        .await
        .map_err(Error::Read)?;
    let revenue: Vec<(String, i64)> = sqlx::query_as(
        "SELECT currency, sum(total_units)::bigint FROM orders \
         WHERE confirmed_at >= $1 AND placed_at IS NOT NULL GROUP BY currency ORDER BY currency",
    )
    .bind(day_start)
    .fetch_all(&mut *conn)
    .await
    .map_err(Error::Read)?;
    Ok((placed, revenue))
}

/// An order that has been in one status longer than expected.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Stuck {
    pub order_id: String,
    pub status: String,
    pub since: DateTime<Utc>,
    pub expected_within_seconds: i64,
}

/// How long an order may stay placed (waiting for stock and payment),
/// confirmed (waiting for the courier) and shipped (on its way), in
/// seconds; longer is stuck.
pub const EXPECTED_WITHIN: [(&str, i64); 3] =
    [("placed", 15 * 60), ("confirmed", 2 * 24 * 3600), ("shipped", 7 * 24 * 3600)];

/// The orders stuck at `now`, the longest stuck first, at most `limit`.
pub async fn stuck(conn: &mut PgConnection, now: DateTime<Utc>, limit: i64) -> Result<Vec<Stuck>, Error> {
    let [(_, placed), (_, confirmed), (_, shipped)] = EXPECTED_WITHIN;
    sqlx::query_as(
        "WITH open AS ( \
           SELECT order_id, \
             CASE WHEN shipped_at IS NOT NULL THEN 'shipped' \
                  WHEN confirmed_at IS NOT NULL THEN 'confirmed' ELSE 'placed' END AS status, \
             COALESCE(shipped_at, confirmed_at, placed_at) AS since \
           FROM orders \
           WHERE placed_at IS NOT NULL AND delivered_at IS NULL AND rejected_at IS NULL \
             AND failed_at IS NULL AND cancelled_at IS NULL), \
         limits AS (SELECT * FROM (VALUES ('placed', $2::bigint), ('confirmed', $3::bigint), \
           ('shipped', $4::bigint)) AS l (status, seconds)) \
         SELECT open.order_id, open.status, open.since, limits.seconds AS expected_within_seconds \
         FROM open JOIN limits USING (status) \
         WHERE open.since < $1 - make_interval(secs => limits.seconds) \
         ORDER BY open.since, open.order_id LIMIT $5",
    )
    .bind(now)
    .bind(placed)
    .bind(confirmed)
    .bind(shipped)
    .bind(limit)
    .fetch_all(conn)
    .await
    .map_err(Error::Read)
}
