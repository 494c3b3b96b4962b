//! The search index in Postgres: the writes the events make, and the
//! queries.
//!
//! A search runs in three statements on one connection:
//! 1. [`correct`]: each query word not in the vocabulary (`search_words`) is
//!    replaced by the most similar word that is (pg_trgm's `%`, similarity
//!    at least 0.3, through a trigram index);
//! 2. [`hits`]: the matches (`document @@ plainto_tsquery('english', ..)`)
//!    under every filter, ranked by `ts_rank_cd`, one page, highlighted by
//!    `ts_headline` on that page only;
//! 3. [`facets`]: the facet counts, each under every filter but its own.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use crate::Error;

/// A product's catalog fields, as the catalog's events carry them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogFields {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub description: String,
    pub category_id: Option<Uuid>,
    pub price_units: i64,
    pub currency: String,
    pub active: bool,
    pub changed_at: DateTime<Utc>,
}

/// Applies a product's catalog fields unless a later catalog change is
/// applied already, and adds its words to the vocabulary. True if applied.
pub async fn apply_catalog(conn: &mut PgConnection, fields: &CatalogFields) -> Result<bool, sqlx::Error> {
    let applied = sqlx::query(
        "INSERT INTO search_products \
           (product_id, sku, name, description, category_id, price_units, currency, active, catalog_changed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (product_id) DO UPDATE SET \
           sku = EXCLUDED.sku, name = EXCLUDED.name, description = EXCLUDED.description, \
           category_id = EXCLUDED.category_id, price_units = EXCLUDED.price_units, \
           currency = EXCLUDED.currency, active = EXCLUDED.active, \
           catalog_changed_at = EXCLUDED.catalog_changed_at \
         WHERE search_products.catalog_changed_at IS NULL \
            OR search_products.catalog_changed_at <= EXCLUDED.catalog_changed_at",
    )
    .bind(fields.product_id)
    .bind(&fields.sku)
    .bind(&fields.name)
    .bind(&fields.description)
    .bind(fields.category_id)
    .bind(fields.price_units)
    .bind(&fields.currency)
    .bind(fields.active)
    .bind(fields.changed_at)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        > 0;
    if applied {
        sqlx::query(
            "WITH words AS (INSERT INTO search_words (word) \
               SELECT DISTINCT word FROM unnest(tsvector_to_array(to_tsvector('simple', $1 || ' ' || $2))) AS word \
               WHERE char_length(word) BETWEEN 3 AND 40 \
               ON CONFLICT DO NOTHING) \
             INSERT INTO search_stems (stem) \
             SELECT DISTINCT stem FROM unnest(tsvector_to_array(to_tsvector('english', $1 || ' ' || $2))) AS stem \
             WHERE char_length(stem) <= 40 \
             ON CONFLICT DO NOTHING",
        )
        .bind(&fields.name)
        .bind(&fields.description)
        .execute(conn)
        .await?;
    }
    Ok(applied)
}

/// Leaves a tombstone for a deleted product: it is never found again, and
/// an older catalog event cannot bring it back.
pub async fn apply_deleted(
    conn: &mut PgConnection,
    product_id: Uuid,
    deleted_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO search_products (product_id, active, catalog_changed_at) VALUES ($1, FALSE, $2) \
         ON CONFLICT (product_id) DO UPDATE SET \
           sku = NULL, name = NULL, description = '', category_id = NULL, price_units = NULL, \
           currency = NULL, active = FALSE, catalog_changed_at = EXCLUDED.catalog_changed_at",
    )
    .bind(product_id)
    .bind(deleted_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets a product's available units (events of one product arrive in
/// order: they share a partition).
pub async fn apply_available(
    conn: &mut PgConnection,
    product_id: Uuid,
    available: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO search_products (product_id, available) VALUES ($1, $2) \
         ON CONFLICT (product_id) DO UPDATE SET available = EXCLUDED.available",
    )
    .bind(product_id)
    .bind(available)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets a product's rating unless one of that version or later is applied.
pub async fn apply_rating(
    conn: &mut PgConnection,
    product_id: Uuid,
    review_count: i64,
    stars_total: i64,
    version: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO search_products (product_id, review_count, stars_total, rating_version) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (product_id) DO UPDATE SET review_count = EXCLUDED.review_count, \
           stars_total = EXCLUDED.stars_total, rating_version = EXCLUDED.rating_version \
         WHERE search_products.rating_version < EXCLUDED.rating_version",
    )
    .bind(product_id)
    .bind(review_count)
    .bind(stars_total)
    .bind(version)
    .execute(conn)
    .await?;
    Ok(())
}

/// Each word as it is searched: itself when it is known (indexed as typed,
/// or an inflection of an indexed word: its English stem is indexed), a stop
/// word or shorter than three characters; else the most similar indexed
/// word; else itself.
pub async fn correct(conn: &mut PgConnection, words: &[String]) -> Result<Vec<String>, Error> {
    if words.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "SELECT CASE \
           WHEN char_length(q.word) < 3 \
             OR numnode(plainto_tsquery('english', q.word)) = 0 \
             OR EXISTS (SELECT 1 FROM search_words w WHERE w.word = q.word) \
             OR EXISTS (SELECT 1 FROM search_stems s \
                        WHERE s.stem = ANY (tsvector_to_array(to_tsvector('english', q.word)))) THEN q.word \
           ELSE coalesce((SELECT w.word FROM search_words w WHERE w.word % q.word \
                          ORDER BY similarity(w.word, q.word) DESC, w.word LIMIT 1), q.word) \
         END \
         FROM unnest($1::text[]) WITH ORDINALITY AS q(word, position) ORDER BY q.position",
    )
    .bind(words)
    .fetch_all(conn)
    .await
    .map_err(Error::Read)
}

/// The filters of a search, `None` or zero where not set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    pub category_id: Option<Uuid>,
    pub min_price: Option<i64>,
    pub max_price: Option<i64>,
    /// 0 for none.
    pub min_rating: i32,
    pub in_stock_only: bool,
}

/// One hit, highlighted.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Hit {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub category_id: Uuid,
    pub price_units: i64,
    pub currency: String,
    pub available: i64,
    pub review_count: i64,
    pub stars_total: i64,
    pub score: f32,
    pub name_highlight: String,
    pub description_highlight: String,
    pub total: i64,
}

/// The matches of `text` (every product when empty): listed, with the
/// parameters `$1` (the text) and `$2` (whether there is one).
const MATCHED: &str = "\
    WITH q AS (SELECT plainto_tsquery('english', $1) AS query), \
    matched AS MATERIALIZED ( \
      SELECT p.product_id, p.sku, p.name, p.description, p.category_id, p.price_units, p.currency, \
             p.available, p.review_count, p.stars_total, \
             CASE WHEN $2 THEN ts_rank_cd(p.document, q.query, 32) ELSE 0 END AS score \
      FROM search_products p, q \
      WHERE p.active AND p.name IS NOT NULL AND (NOT $2 OR p.document @@ q.query))";

/// The filter predicates over `matched`, parameters `$3` to `$7`.
const BY_CATEGORY: &str = "($3::uuid IS NULL OR category_id = $3)";
const BY_PRICE: &str =
    "($4::bigint IS NULL OR price_units >= $4) AND ($5::bigint IS NULL OR price_units <= $5)";
const BY_RATING: &str = "($6 = 0 OR (review_count > 0 AND stars_total >= $6 * review_count))";
const BY_STOCK: &str = "(NOT $7 OR available > 0)";

/// HTML-escapes a text column before `ts_headline` adds its marks.
fn escaped(column: &str) -> String {
    format!("replace(replace(replace({column}, '&', '&amp;'), '<', '&lt;'), '>', '&gt;')")
}

/// Whether `text` holds a query `plainto_tsquery` keeps anything of (it
/// drops stop words such as "the").
pub async fn has_terms(conn: &mut PgConnection, text: &str) -> Result<bool, Error> {
    if text.is_empty() {
        return Ok(false);
    }
    sqlx::query_scalar("SELECT numnode(plainto_tsquery('english', $1)) > 0")
        .bind(text)
        .fetch_one(conn)
        .await
        .map_err(Error::Read)
}

/// One page of hits under every filter, the most relevant first (by name
/// without a query), with the number of matches over all pages.
pub async fn hits(
    conn: &mut PgConnection,
    text: &str,
    has_text: bool,
    filters: &Filters,
    limit: i64,
    offset: i64,
) -> Result<Vec<Hit>, Error> {
    let name = escaped("name");
    let description = escaped("description");
    let sql = format!(
        "{MATCHED}, \
         page AS ( \
           SELECT *, count(*) OVER () AS total FROM matched \
           WHERE {BY_CATEGORY} AND {BY_PRICE} AND {BY_RATING} AND {BY_STOCK} \
           ORDER BY score DESC, name, product_id LIMIT $8 OFFSET $9) \
         SELECT page.product_id, page.sku, page.name, page.category_id, page.price_units, page.currency, \
                page.available, page.review_count, page.stars_total, page.score, \
                CASE WHEN $2 THEN ts_headline('english', {name}, q.query, \
                  'StartSel=<mark>, StopSel=</mark>, HighlightAll=true') ELSE {name} END AS name_highlight, \
                CASE WHEN $2 AND to_tsvector('english', page.description) @@ q.query \
                  THEN ts_headline('english', {description}, q.query, \
                    'StartSel=<mark>, StopSel=</mark>, MaxWords=24, MinWords=8, MaxFragments=2') \
                  ELSE '' END AS description_highlight, \
                page.total \
         FROM page, q ORDER BY page.score DESC, page.name, page.product_id"
    );
    sqlx::query_as(&sql)
        .bind(text)
        .bind(has_text)
        .bind(filters.category_id)
        .bind(filters.min_price)
        .bind(filters.max_price)
        .bind(filters.min_rating)
        .bind(filters.in_stock_only)
        .bind(limit)
        .bind(offset)
        .fetch_all(conn)
        .await
        .map_err(Error::Read)
}

/// The matches under every filter (for a page beyond the last, whose query
/// returns no row to carry the total).
pub async fn count(
    conn: &mut PgConnection,
    text: &str,
    has_text: bool,
    filters: &Filters,
) -> Result<i64, Error> {
    let sql = format!(
        "{MATCHED} SELECT count(*) FROM matched WHERE {BY_CATEGORY} AND {BY_PRICE} AND {BY_RATING} AND {BY_STOCK}"
    );
    sqlx::query_scalar(&sql)
        .bind(text)
        .bind(has_text)
        .bind(filters.category_id)
        .bind(filters.min_price)
        .bind(filters.max_price)
        .bind(filters.min_rating)
        .bind(filters.in_stock_only)
        .fetch_one(conn)
        .await
        .map_err(Error::Read)
}

/// One facet count: the facet (`category`, `price`, `rating`, `stock`),
/// its value and the count.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FacetRow {
    pub facet: String,
    pub value: String,
    pub count: i64,
}

/// The facet counts of the matches, each under every filter but its own.
/// Price bands come as the index of their lower bound in
/// [`PRICE_BANDS`](crate::domain::PRICE_BANDS), ratings as the minimum.
pub async fn facets(
    conn: &mut PgConnection,
    text: &str,
    has_text: bool,
    filters: &Filters,
) -> Result<Vec<FacetRow>, Error> {
    let sql = format!(
        "{MATCHED} \
         SELECT 'category' AS facet, category_id::text AS value, count(*) AS count FROM matched \
           WHERE {BY_PRICE} AND {BY_RATING} AND {BY_STOCK} GROUP BY category_id \
         UNION ALL \
         SELECT 'price', (greatest(width_bucket(price_units, ARRAY[0, 1000, 2500, 5000, 10000]::bigint[]), 1) - 1)::text, \
                count(*) FROM matched \
           WHERE {BY_CATEGORY} AND {BY_RATING} AND {BY_STOCK} GROUP BY 2 \
         UNION ALL \
         SELECT 'rating', stars::text, count(*) FROM matched, generate_series(1, 4) AS stars \
           WHERE {BY_CATEGORY} AND {BY_PRICE} AND {BY_STOCK} \
             AND review_count > 0 AND stars_total >= stars * review_count GROUP BY stars \
         UNION ALL \
         SELECT 'stock', (available > 0)::text, count(*) FROM matched \
           WHERE {BY_CATEGORY} AND {BY_PRICE} AND {BY_RATING} GROUP BY 2 \
         ORDER BY 1, 2"
    );
    sqlx::query_as(&sql)
        .bind(text)
        .bind(has_text)
        .bind(filters.category_id)
        .bind(filters.min_price)
        .bind(filters.max_price)
        .bind(filters.min_rating)
        .bind(filters.in_stock_only)
        .fetch_all(conn)
        .await
        .map_err(Error::Read)
}

/// One completion.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Completion {
    pub product_id: Uuid,
    pub name: String,
    pub highlight: String,
}

/// Product names matching `tsquery` (a [`prefix_query`](crate::domain::prefix_query)),
/// the best match first, then the most reviewed.
pub async fn suggest(conn: &mut PgConnection, tsquery: &str, limit: i64) -> Result<Vec<Completion>, Error> {
    let name = escaped("name");
    let sql = format!(
        "SELECT product_id, name, \
                ts_headline('simple', {name}, q.query, 'StartSel=<mark>, StopSel=</mark>, HighlightAll=true') AS highlight \
         FROM search_products, to_tsquery('simple', $1) AS q(query) \
         WHERE active AND name IS NOT NULL AND name_words @@ q.query \
         ORDER BY ts_rank(name_words, q.query) DESC, review_count DESC, name, product_id LIMIT $2"
    );
    sqlx::query_as(&sql).bind(tsquery).bind(limit).fetch_all(conn).await.map_err(Error::Read)
}
