//! The catalog database: categories and products, with runtime-checked
//! sqlx queries. Every product write enqueues its events in the platform
//! outbox inside the same transaction (see [`events`](crate::events)).
//!
//! Text search is `ILIKE '%word%'` on name and description, every word
//! required. Chosen over Postgres full-text search because shoppers type
//! fragments ("key" should find "keyboard"), which `to_tsvector` stemming
//! does not match, and because the catalog is thousands of rows, not
//! millions: the filtered scan stays in the milliseconds and the result
//! pages are cached. A `pg_trgm` GIN index is the upgrade path if it grows
//! (the extension is not assumed to be installable on every server).

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use crate::Error;
use crate::domain::{Cursor, ListFilter, ProductDraft, ProductRow};
use crate::events;

/// Postgres' code for a unique violation.
const UNIQUE_VIOLATION: &str = "23505";
/// Postgres' code for a foreign-key violation.
const FOREIGN_KEY_VIOLATION: &str = "23503";

fn database(action: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Database { action, source }
}

fn constraint_code(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(error) => error.code().map(|code| code.into_owned()),
        _ => None,
    }
}

/// A category as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CategoryRow {
    pub id: Uuid,
    pub name: String,
    pub slug: String,
    pub parent_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// The columns of a [`ProductRow`], in its order.
pub(crate) const PRODUCT_COLUMNS: &str = "id, sku, name, description, category_id, price_units, currency, active, \
     created_at, updated_at, review_count, stars_total";

/// Creates a category. [`Error::SlugTaken`] for a used slug,
/// [`Error::CategoryNotFound`] for an unknown parent.
pub async fn insert_category(
    pool: &PgPool,
    name: &str,
    slug: &str,
    parent_id: Option<Uuid>,
) -> Result<CategoryRow, Error> {
    sqlx::query_as::<_, CategoryRow>(
        "INSERT INTO categories (id, name, slug, parent_id) VALUES ($1, $2, $3, $4) \
         RETURNING id, name, slug, parent_id, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(slug)
    .bind(parent_id)
    .fetch_one(pool)
    .await
    .map_err(|source| match constraint_code(&source).as_deref() {
        Some(UNIQUE_VIOLATION) => Error::SlugTaken { slug: slug.to_owned() },
        Some(FOREIGN_KEY_VIOLATION) => Error::CategoryNotFound { id: parent_id.unwrap_or_default() },
        _ => Error::Database { action: "insert a category", source },
    })
}

/// Categories ordered by name; only `parent_id`'s children when given.
pub async fn list_categories(pool: &PgPool, parent_id: Option<Uuid>) -> Result<Vec<CategoryRow>, Error> {
    sqlx::query_as::<_, CategoryRow>(
        "SELECT id, name, slug, parent_id, created_at FROM categories \
         WHERE ($1::uuid IS NULL OR parent_id = $1) ORDER BY name, id",
    )
    .bind(parent_id)
    .fetch_all(pool)
    .await
    .map_err(database("list categories"))
}

/// The catalog's version: moved by every committed change to products
/// (a trigger; see migrations/0002_catalog_version.sql).
pub async fn catalog_version(pool: &PgPool) -> Result<i64, Error> {
    sqlx::query_scalar::<_, i64>("SELECT version FROM catalog_version")
        .fetch_one(pool)
        .await
        .map_err(database("read the catalog version"))
}

/// Inserts a product and enqueues `ProductCreated` on `conn` (inside the
/// caller's transaction).
pub async fn insert_product(conn: &mut PgConnection, draft: &ProductDraft) -> Result<ProductRow, Error> {
    let row = sqlx::query_as::<_, ProductRow>(&format!(
        "INSERT INTO products (id, sku, name, description, category_id, price_units, currency, active) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {PRODUCT_COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(&draft.sku)
    .bind(&draft.name)
    .bind(&draft.description)
    .bind(draft.category_id)
    .bind(draft.price.units)
    .bind(&draft.price.currency)
    .bind(draft.active)
    .fetch_one(&mut *conn)
    .await
    .map_err(|source| product_write_error(source, draft, "insert a product"))?;
    events::enqueue_created(conn, &row).await?;
    Ok(row)
}

fn product_write_error(source: sqlx::Error, draft: &ProductDraft, action: &'static str) -> Error {
    match constraint_code(&source).as_deref() {
        Some(UNIQUE_VIOLATION) => Error::SkuTaken { sku: draft.sku.clone() },
        Some(FOREIGN_KEY_VIOLATION) => Error::CategoryNotFound { id: draft.category_id },
        _ => Error::Database { action, source },
    }
}

/// One product, active or not.
pub async fn get_product(pool: &PgPool, id: Uuid) -> Result<Option<ProductRow>, Error> {
    sqlx::query_as::<_, ProductRow>(&format!("SELECT {PRODUCT_COLUMNS} FROM products WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(database("get a product"))
}

/// One product, locked for the rest of the transaction.
pub async fn lock_product(conn: &mut PgConnection, id: Uuid) -> Result<Option<ProductRow>, Error> {
    sqlx::query_as::<_, ProductRow>(&format!(
        "SELECT {PRODUCT_COLUMNS} FROM products WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
    .map_err(database("lock a product"))
}

/// Writes `draft` over product `id` (locked by the caller).
pub async fn update_product(
    conn: &mut PgConnection,
    id: Uuid,
    draft: &ProductDraft,
) -> Result<ProductRow, Error> {
    sqlx::query_as::<_, ProductRow>(&format!(
        "UPDATE products SET sku = $2, name = $3, description = $4, category_id = $5, price_units = $6, \
         currency = $7, active = $8, updated_at = now() WHERE id = $1 RETURNING {PRODUCT_COLUMNS}"
    ))
    .bind(id)
    .bind(&draft.sku)
    .bind(&draft.name)
    .bind(&draft.description)
    .bind(draft.category_id)
    .bind(draft.price.units)
    .bind(&draft.price.currency)
    .bind(draft.active)
    .fetch_one(conn)
    .await
    .map_err(|source| product_write_error(source, draft, "update a product"))
}

/// Deletes a product; the deleted row, or `None` if there was none.
pub async fn delete_product(conn: &mut PgConnection, id: Uuid) -> Result<Option<ProductRow>, Error> {
    sqlx::query_as::<_, ProductRow>(&format!(
        "DELETE FROM products WHERE id = $1 RETURNING {PRODUCT_COLUMNS}"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
    .map_err(database("delete a product"))
}

/// Products with these ids (duplicates once), active or not.
pub async fn batch_get_products(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<ProductRow>, Error> {
    sqlx::query_as::<_, ProductRow>(&format!("SELECT {PRODUCT_COLUMNS} FROM products WHERE id = ANY($1)"))
        .bind(ids)
        .fetch_all(pool)
        .await
        .map_err(database("get products by id"))
}

fn push_filter(builder: &mut QueryBuilder<'_, Postgres>, filter: &ListFilter) {
    builder.push(" WHERE true");
    if !filter.include_inactive {
        builder.push(" AND active");
    }
    if let Some(category_id) = filter.category_id {
        builder.push(" AND category_id = ").push_bind(category_id);
    }
    for pattern in filter.like_patterns() {
        builder
            .push(" AND (name ILIKE ")
            .push_bind(pattern.clone())
            .push(" OR description ILIKE ")
            .push_bind(pattern)
            .push(")");
    }
    if let Some(currency) = filter.price_currency() {
        builder.push(" AND currency = ").push_bind(currency.to_owned());
    }
    if let Some(min) = &filter.min_price {
        builder.push(" AND price_units >= ").push_bind(min.units);
    }
    if let Some(max) = &filter.max_price {
        builder.push(" AND price_units <= ").push_bind(max.units);
    }
}

/// One page of products ordered by (name, id) after `cursor`, at most
/// `limit` of them, plus whether more follow and how many match in total.
pub async fn list_products(
    pool: &PgPool,
    filter: &ListFilter,
    cursor: Option<&Cursor>,
    limit: i64,
) -> Result<(Vec<ProductRow>, bool, i64), Error> {
    let mut query = QueryBuilder::<Postgres>::new(format!("SELECT {PRODUCT_COLUMNS} FROM products"));
    push_filter(&mut query, filter);
    if let Some(cursor) = cursor {
        query
            .push(" AND (name, id) > (")
            .push_bind(cursor.name.clone())
            .push(", ")
            .push_bind(cursor.id)
            .push(")");
    }
    // One extra row tells whether another page follows.
    query.push(" ORDER BY name, id LIMIT ").push_bind(limit + 1);
    let mut rows =
        query.build_query_as::<ProductRow>().fetch_all(pool).await.map_err(database("list products"))?;
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));

    let mut count = QueryBuilder::<Postgres>::new("SELECT count(*) FROM products");
    push_filter(&mut count, filter);
    let total: i64 = count.build_query_scalar().fetch_one(pool).await.map_err(database("count products"))?;
    Ok((rows, more, total))
}

/// Sets a product's rating to what a reviews event says, unless the row
/// already holds a rating of that version or a later one (a redelivery or a
/// late event). True if the row changed; false also for a product the
/// catalog does not have (deleted since).
pub async fn apply_rating(
    conn: &mut PgConnection,
    product_id: Uuid,
    review_count: i64,
    stars_total: i64,
    version: i64,
) -> Result<bool, Error> {
    let result = sqlx::query(
        "UPDATE products SET review_count = $2, stars_total = $3, rating_version = $4 \
         WHERE id = $1 AND rating_version < $4",
    )
    .bind(product_id)
    .bind(review_count)
    .bind(stars_total)
    .bind(version)
    .execute(conn)
    .await
    .map_err(database("apply a product's rating"))?;
    Ok(result.rows_affected() > 0)
}
