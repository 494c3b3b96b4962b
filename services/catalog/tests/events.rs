//! `ProductCreated` goes through the platform outbox in the transaction
//! that inserts the product: rolled back, neither exists; committed, both
//! do.

mod common;

use commerce_catalog::domain::{Money, ProductDraft};
use commerce_catalog::store;
use commerce_proto::events::EventPayload;
use commerce_proto::events::v1::ProductCreated;
use common::{TestDatabase, outbox};
use prost::Message;

async fn draft(db: &TestDatabase) -> anyhow::Result<ProductDraft> {
    let category = store::insert_category(&db.pool, "Tools", "tools", None).await?;
    Ok(ProductDraft {
        sku: "T-1".to_owned(),
        name: "Hammer".to_owned(),
        description: String::new(),
        category_id: category.id,
        price: Money { currency: "EUR".to_owned(), units: 1500 },
        active: true,
    })
}

#[tokio::test]
async fn a_rolled_back_product_insert_leaves_neither_product_nor_event() -> anyhow::Result<()> {
    let db = TestDatabase::create("catalog", &commerce_catalog::MIGRATOR).await?;
    let draft = draft(&db).await?;
    let mut tx = db.pool.begin().await?;
    store::insert_product(&mut tx, &draft).await?;
    tx.rollback().await?;
    assert!(outbox(&db.pool).await?.is_empty());
    let products: i64 = sqlx::query_scalar("SELECT count(*) FROM products").fetch_one(&db.pool).await?;
    assert_eq!(products, 0);
    db.drop_database().await
}

#[tokio::test]
async fn a_committed_product_insert_writes_one_product_created_row_keyed_by_product() -> anyhow::Result<()> {
    let db = TestDatabase::create("catalog", &commerce_catalog::MIGRATOR).await?;
    let draft = draft(&db).await?;
    let mut tx = db.pool.begin().await?;
    let row = store::insert_product(&mut tx, &draft).await?;
    tx.commit().await?;
    let rows = outbox(&db.pool).await?;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].event_type, ProductCreated::TYPE);
    assert_eq!(rows[0].topic, ProductCreated::TOPIC.name());
    assert_eq!(rows[0].key, row.id.to_string());
    let event = ProductCreated::decode(rows[0].payload.as_slice())?;
    assert_eq!((event.sku.as_str(), event.price.map(|price| price.units)), ("T-1", Some(1500)));
    db.drop_database().await
}

#[tokio::test]
async fn a_products_rating_takes_the_highest_version_and_moves_no_updated_at() -> anyhow::Result<()> {
    let db = TestDatabase::create("catalog", &commerce_catalog::MIGRATOR).await?;
    let draft = draft(&db).await?;
    let mut conn = db.pool.acquire().await?;
    let product = store::insert_product(&mut conn, &draft).await?;
    assert_eq!((product.review_count, product.stars_total), (0, 0));

    assert!(store::apply_rating(&mut conn, product.id, 2, 9, 2).await?);
    // Older or repeated versions (a late or redelivered event) change nothing.
    assert!(!store::apply_rating(&mut conn, product.id, 1, 5, 1).await?);
    assert!(!store::apply_rating(&mut conn, product.id, 2, 9, 2).await?);
    // A product the catalog does not have is skipped, not an error.
    assert!(!store::apply_rating(&mut conn, uuid::Uuid::now_v7(), 1, 5, 1).await?);

    drop(conn);
    let read = store::get_product(&db.pool, product.id).await?.expect("the product");
    assert_eq!((read.review_count, read.stars_total), (2, 9));
    assert_eq!(read.updated_at, product.updated_at, "a rating is not a change of the product");
    db.drop_database().await
}
