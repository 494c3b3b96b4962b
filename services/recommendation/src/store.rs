//! The recommendation tables: the writes the events and views make, and
//! the lists read from them.

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{Error, VIEWS_KEPT};

/// A product as the catalog's events describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub product_id: Uuid,
    pub name: String,
    pub category_id: Option<Uuid>,
    pub price_units: i64,
    pub currency: String,
    pub active: bool,
    pub changed_at: DateTime<Utc>,
}

/// Applies a product's catalog fields unless a later change is applied.
pub async fn apply_product(conn: &mut PgConnection, product: &Product) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO products (product_id, name, category_id, price_units, currency, active, changed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (product_id) DO UPDATE SET name = EXCLUDED.name, category_id = EXCLUDED.category_id, \
           price_units = EXCLUDED.price_units, currency = EXCLUDED.currency, active = EXCLUDED.active, \
           changed_at = EXCLUDED.changed_at \
         WHERE products.changed_at <= EXCLUDED.changed_at",
    )
    .bind(product.product_id)
    .bind(&product.name)
    .bind(product.category_id)
    .bind(product.price_units)
    .bind(&product.currency)
    .bind(product.active)
    .bind(product.changed_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A deleted product is never recommended again (a tombstone: no older
/// event brings it back).
pub async fn apply_deleted(
    conn: &mut PgConnection,
    product_id: Uuid,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO products (product_id, active, changed_at) VALUES ($1, FALSE, $2) \
         ON CONFLICT (product_id) DO UPDATE SET active = FALSE, changed_at = EXCLUDED.changed_at \
         WHERE products.changed_at <= EXCLUDED.changed_at",
    )
    .bind(product_id)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records an order's products (`OrderPlaced`); a redelivery changes nothing.
pub async fn record_placed(
    conn: &mut PgConnection,
    order_id: &str,
    user_id: &str,
    product_ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO placed_orders (order_id, user_id, product_ids) VALUES ($1, $2, $3) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(user_id)
    .bind(product_ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets a placed order that ended unconfirmed.
pub async fn forget_placed(conn: &mut PgConnection, order_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM placed_orders WHERE order_id = $1").bind(order_id).execute(conn).await?;
    Ok(())
}

/// Turns a confirmed order's products into purchases and counts the
/// products new to the buyer: one more buyer each, and one more shared
/// buyer for each pair with the buyer's other purchases (the latest 100).
/// Returns the products new to the buyer; none for an order never seen
/// placed or confirmed before.
pub async fn record_confirmed(
    conn: &mut PgConnection,
    order_id: &str,
    confirmed_at: DateTime<Utc>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let placed: Option<(String, Vec<Uuid>)> =
        sqlx::query_as("DELETE FROM placed_orders WHERE order_id = $1 RETURNING user_id, product_ids")
            .bind(order_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((user_id, products)) = placed else { return Ok(Vec::new()) };
    let new: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO purchases (user_id, product_id, first_bought_at) \
         SELECT $1, product_id, $3 FROM unnest($2::uuid[]) AS product_id \
         ON CONFLICT DO NOTHING RETURNING product_id",
    )
    .bind(&user_id)
    .bind(&products)
    .bind(confirmed_at)
    .fetch_all(&mut *conn)
    .await?;
    if new.is_empty() {
        return Ok(new);
    }
    sqlx::query(
        "INSERT INTO product_buyers (product_id, buyers) SELECT unnest($1::uuid[]), 1 \
         ON CONFLICT (product_id) DO UPDATE SET buyers = product_buyers.buyers + 1",
    )
    .bind(&new)
    .execute(&mut *conn)
    .await?;
    // An unordered pair {new, other} once: when the other is not new, or
    // when both are and the new one sorts first.
    sqlx::query(
        "WITH mine AS (SELECT product_id FROM purchases WHERE user_id = $1 \
                       ORDER BY first_bought_at DESC, product_id LIMIT 100), \
         pairs AS (SELECT n AS a, m.product_id AS b FROM unnest($2::uuid[]) AS n, mine m \
                   WHERE m.product_id <> n AND (m.product_id <> ALL ($2) OR n < m.product_id)) \
         INSERT INTO product_pairs (product_id, other_id, buyers) \
         SELECT a, b, 1 FROM pairs UNION ALL SELECT b, a, 1 FROM pairs \
         ON CONFLICT (product_id, other_id) DO UPDATE SET buyers = product_pairs.buyers + 1",
    )
    .bind(&user_id)
    .bind(&new)
    .execute(conn)
    .await?;
    Ok(new)
}

/// How long an erased user's id is kept so that late views of theirs are
/// dropped: far longer than a gateway keeps views (about a second).
pub const ERASED_KEPT_FOR: &str = "1 day";

/// Advisory lock key that orders views against erasures: [`record_views`]
/// holds it shared, [`erase_user`] exclusively. ASCII "recviews"; advisory
/// keys are per database, so it only has to differ from the platform's.
const VIEWS_LOCK_KEY: i64 = 0x7265_6376_6965_7773;

/// Deletes what the service knows of `user_id`: their views, purchases
/// and placed orders, and keeps their id for [`ERASED_KEPT_FOR`] so that
/// views sent after this (by a gateway replica that collected them before)
/// are dropped. The counts of buyers per product and pair stay: they are
/// sums over many customers and name nobody.
///
/// Runs in the caller's transaction. The exclusive lock waits for views
/// being written and holds new ones until the commit, after which they see
/// the erased id: without it, a batch inserted while this ran would not be
/// seen by its delete, and would not see its erased id either.
pub async fn erase_user(conn: &mut PgConnection, user_id: &str) -> Result<u64, sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(VIEWS_LOCK_KEY).execute(&mut *conn).await?;
    sqlx::query(&format!(
        "WITH expired AS (DELETE FROM erased_users WHERE erased_at < now() - interval '{ERASED_KEPT_FOR}') \
         INSERT INTO erased_users (user_id, erased_at) VALUES ($1, now()) \
         ON CONFLICT (user_id) DO UPDATE SET erased_at = EXCLUDED.erased_at"
    ))
    .bind(user_id)
    .execute(&mut *conn)
    .await?;
    let mut deleted = 0;
    for statement in [
        "DELETE FROM views WHERE user_id = $1",
        "DELETE FROM purchases WHERE user_id = $1",
        "DELETE FROM placed_orders WHERE user_id = $1",
    ] {
        deleted += sqlx::query(statement).bind(user_id).execute(&mut *conn).await?.rows_affected();
    }
    Ok(deleted)
}

/// A user's latest view of a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View<'a> {
    pub user_id: &'a str,
    pub product_id: Uuid,
    pub viewed_at: DateTime<Utc>,
}

/// Records `views` (one per user and product) in one transaction, keeping
/// each user's latest [`VIEWS_KEPT`]; a view older than the one stored
/// changes nothing, and views of a user erased within [`ERASED_KEPT_FOR`]
/// are dropped.
pub async fn record_views(pool: &PgPool, views: &[View<'_>]) -> Result<(), Error> {
    if views.is_empty() {
        return Ok(());
    }
    let users: Vec<&str> = views.iter().map(|view| view.user_id).collect();
    let products: Vec<Uuid> = views.iter().map(|view| view.product_id).collect();
    let times: Vec<DateTime<Utc>> = views.iter().map(|view| view.viewed_at).collect();
    let mut tx = pool.begin().await.map_err(Error::Write)?;
    // Shared: batches do not wait for each other, only for an erasure.
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(VIEWS_LOCK_KEY)
        .execute(&mut *tx)
        .await
        .map_err(Error::Write)?;
    sqlx::query(
        "INSERT INTO views (user_id, product_id, viewed_at) \
         SELECT v.* FROM UNNEST($1::text[], $2::uuid[], $3::timestamptz[]) AS v (user_id, product_id, viewed_at) \
         WHERE NOT EXISTS (SELECT 1 FROM erased_users e WHERE e.user_id = v.user_id) \
         ON CONFLICT (user_id, product_id) DO UPDATE SET viewed_at = GREATEST(views.viewed_at, EXCLUDED.viewed_at)",
    )
    .bind(&users)
    .bind(&products)
    .bind(&times)
    .execute(&mut *tx)
    .await
    .map_err(Error::Write)?;
    sqlx::query(
        "DELETE FROM views v USING ( \
           SELECT user_id, product_id, \
                  row_number() OVER (PARTITION BY user_id ORDER BY viewed_at DESC, product_id) AS place \
           FROM views WHERE user_id = ANY($1)) ranked \
         WHERE v.user_id = ranked.user_id AND v.product_id = ranked.product_id AND ranked.place > $2",
    )
    .bind(&users)
    .bind(VIEWS_KEPT)
    .execute(&mut *tx)
    .await
    .map_err(Error::Write)?;
    tx.commit().await.map_err(Error::Write)
}

/// A product to recommend, with its count of buyers (or the time of the view).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Recommended {
    pub product_id: Uuid,
    pub name: String,
    pub category_id: Option<Uuid>,
    pub price_units: i64,
    pub currency: String,
    pub buyers: i64,
    pub viewed_at: Option<DateTime<Utc>>,
}

const SHOWN: &str = "p.product_id, p.name, p.category_id, p.price_units, p.currency";

/// Active products that buyers of `product_id` also bought, the most shared
/// buyers first.
pub async fn also_bought(
    conn: &mut PgConnection,
    product_id: Uuid,
    limit: i64,
) -> Result<Vec<Recommended>, Error> {
    sqlx::query_as(&format!(
        "SELECT {SHOWN}, pp.buyers, NULL::timestamptz AS viewed_at FROM product_pairs pp \
         JOIN products p ON p.product_id = pp.other_id AND p.active \
         WHERE pp.product_id = $1 ORDER BY pp.buyers DESC, p.name, p.product_id LIMIT $2"
    ))
    .bind(product_id)
    .bind(limit)
    .fetch_all(conn)
    .await
    .map_err(Error::Read)
}

/// The best-selling active products of `product_id`'s category, but for it
/// and `except`.
pub async fn popular_in_category(
    conn: &mut PgConnection,
    product_id: Uuid,
    except: &[Uuid],
    limit: i64,
) -> Result<Vec<Recommended>, Error> {
    sqlx::query_as(&format!(
        "SELECT {SHOWN}, coalesce(b.buyers, 0) AS buyers, NULL::timestamptz AS viewed_at \
         FROM products p LEFT JOIN product_buyers b ON b.product_id = p.product_id \
         WHERE p.active AND p.category_id = (SELECT category_id FROM products WHERE product_id = $1) \
           AND p.product_id <> $1 AND p.product_id <> ALL ($2) \
         ORDER BY buyers DESC, p.name, p.product_id LIMIT $3"
    ))
    .bind(product_id)
    .bind(except)
    .bind(limit)
    .fetch_all(conn)
    .await
    .map_err(Error::Read)
}

/// The user's recently viewed active products, the latest first.
pub async fn recently_viewed(
    conn: &mut PgConnection,
    user_id: &str,
    limit: i64,
) -> Result<Vec<Recommended>, Error> {
    sqlx::query_as(&format!(
        "SELECT {SHOWN}, coalesce(b.buyers, 0) AS buyers, v.viewed_at FROM views v \
         JOIN products p ON p.product_id = v.product_id AND p.active \
         LEFT JOIN product_buyers b ON b.product_id = p.product_id \
         WHERE v.user_id = $1 ORDER BY v.viewed_at DESC, p.product_id LIMIT $2"
    ))
    .bind(user_id)
    .bind(limit)
    .fetch_all(conn)
    .await
    .map_err(Error::Read)
}

/// Products for a user: those most bought together with what they bought
/// and recently viewed, then the shop's best sellers; never one they
/// bought.
pub async fn for_user(conn: &mut PgConnection, user_id: &str, limit: i64) -> Result<Vec<Recommended>, Error> {
    sqlx::query_as(&format!(
        "WITH bought AS (SELECT product_id FROM purchases WHERE user_id = $1), \
         seeds AS (SELECT product_id FROM bought \
                   UNION SELECT product_id FROM (SELECT product_id FROM views WHERE user_id = $1 \
                                                 ORDER BY viewed_at DESC LIMIT 20) recent), \
         related AS (SELECT pp.other_id AS product_id, sum(pp.buyers) AS score FROM product_pairs pp \
                     WHERE pp.product_id IN (SELECT product_id FROM seeds) \
                       AND pp.other_id NOT IN (SELECT product_id FROM bought) \
                     GROUP BY pp.other_id), \
         ranked AS (SELECT product_id, score, 0 AS tier FROM related \
                    UNION ALL \
                    SELECT b.product_id, b.buyers, 1 FROM product_buyers b \
                    WHERE b.product_id NOT IN (SELECT product_id FROM bought) \
                      AND b.product_id NOT IN (SELECT product_id FROM related)) \
         SELECT {SHOWN}, r.score::bigint AS buyers, NULL::timestamptz AS viewed_at FROM ranked r \
         JOIN products p ON p.product_id = r.product_id AND p.active \
         ORDER BY r.tier, r.score DESC, p.name, p.product_id LIMIT $2"
    ))
    .bind(user_id)
    .bind(limit)
    .fetch_all(conn)
    .await
    .map_err(Error::Read)
}

/// Every view kept of a user, the latest first.
pub async fn views(conn: &mut PgConnection, user_id: &str) -> Result<Vec<(Uuid, DateTime<Utc>)>, Error> {
    sqlx::query_as(
        "SELECT product_id, viewed_at FROM views WHERE user_id = $1 ORDER BY viewed_at DESC, product_id",
    )
    .bind(user_id)
    .fetch_all(conn)
    .await
    .map_err(Error::Read)
}
