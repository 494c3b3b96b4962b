//! The catalog's gRPC flows against a real Postgres (no Redis here; the
//! cache has its own tests): validation, CRUD, update masks and their
//! events, listing with filters and keyset pages, BatchGetProducts, and the
//! demo seed.

mod common;

use commerce_catalog::{Cache, CatalogGrpc};
use commerce_platform::admin::Metrics;
use commerce_proto::catalog::v1 as pb;
use commerce_proto::catalog::v1::catalog_service_server::CatalogService;
use commerce_proto::common::v1::Money;
use commerce_proto::events::EventPayload;
use commerce_proto::events::v1::{PriceChanged, ProductCreated, ProductDeleted, ProductUpdated};
use common::{TestDatabase, outbox};
use prost::Message;
use tonic::{Code, Request};

async fn fixture() -> anyhow::Result<(TestDatabase, CatalogGrpc)> {
    let db = TestDatabase::create("catalog", &commerce_catalog::MIGRATOR).await?;
    // No Redis connection: every read goes to Postgres.
    let grpc = CatalogGrpc::new(
        db.pool.clone(),
        Cache::new(&Metrics::new("catalog"), commerce_platform::redis::DEFAULT_KEY_PREFIX),
    );
    Ok((db, grpc))
}

fn eur(units: i64) -> Option<Money> {
    Some(Money { currency_code: "EUR".to_owned(), units })
}

async fn category(grpc: &CatalogGrpc, slug: &str) -> anyhow::Result<String> {
    let created = CatalogService::create_category(
        grpc,
        Request::new(pb::CreateCategoryRequest {
            name: slug.to_uppercase(),
            slug: slug.to_owned(),
            parent_id: String::new(),
        }),
    )
    .await?;
    Ok(created.into_inner().category.expect("category").id)
}

fn product_request(sku: &str, name: &str, category_id: &str, cents: i64) -> pb::CreateProductRequest {
    pb::CreateProductRequest {
        sku: sku.to_owned(),
        name: name.to_owned(),
        description: format!("{name} description"),
        category_id: category_id.to_owned(),
        price: eur(cents),
        active: true,
    }
}

async fn create(grpc: &CatalogGrpc, request: pb::CreateProductRequest) -> Result<pb::Product, tonic::Status> {
    CatalogService::create_product(grpc, Request::new(request))
        .await
        .map(|r| r.into_inner().product.expect("product"))
}

async fn list(
    grpc: &CatalogGrpc,
    request: pb::ListProductsRequest,
) -> Result<pb::ListProductsResponse, tonic::Status> {
    CatalogService::list_products(grpc, Request::new(request)).await.map(tonic::Response::into_inner)
}

#[tokio::test]
async fn invalid_products_are_rejected_with_the_fitting_status() -> anyhow::Result<()> {
    let (db, grpc) = fixture().await?;
    let kitchen = category(&grpc, "kitchen").await?;
    create(&grpc, product_request("KN-1", "Knife", &kitchen, 1000)).await?;

    let cases = [
        (product_request("KN-2", "  ", &kitchen, 1000), Code::InvalidArgument, "name must not be empty"),
        (product_request("KN-3", "Pan", &kitchen, -1), Code::InvalidArgument, "price must not be negative"),
        (product_request("KN-1", "Other", &kitchen, 5), Code::AlreadyExists, "KN-1"),
        (
            product_request("KN-4", "Pot", "00000000-0000-4000-8000-000000000999", 5),
            Code::NotFound,
            "category",
        ),
        (product_request("KN-5", "Pot", "not-a-uuid", 5), Code::InvalidArgument, "category_id"),
    ];
    for (request, code, message) in cases {
        let error = create(&grpc, request).await.expect_err(message);
        assert_eq!(error.code(), code, "{error:?}");
        assert!(error.message().contains(message), "{:?} should mention {message}", error.message());
    }
    let duplicate_slug = CatalogService::create_category(
        &grpc,
        Request::new(pb::CreateCategoryRequest {
            name: "K".into(),
            slug: "kitchen".into(),
            parent_id: String::new(),
        }),
    )
    .await
    .expect_err("slug taken");
    assert_eq!(duplicate_slug.code(), Code::AlreadyExists);
    db.drop_database().await
}

#[tokio::test]
async fn a_product_is_created_read_updated_by_mask_and_deleted_with_its_events() -> anyhow::Result<()> {
    let (db, grpc) = fixture().await?;
    let kitchen = category(&grpc, "kitchen").await?;
    let created = create(&grpc, product_request("KN-1", "Knife", &kitchen, 1000)).await?;
    let fetched =
        CatalogService::get_product(&grpc, Request::new(pb::GetProductRequest { id: created.id.clone() }))
            .await?
            .into_inner()
            .product;
    assert_eq!(fetched.as_ref(), Some(&created));

    // Only the price is in the mask: the name in the request is ignored.
    let mut patch = created.clone();
    patch.price = eur(1250);
    patch.name = "Ignored".to_owned();
    let updated = CatalogService::update_product(
        &grpc,
        Request::new(pb::UpdateProductRequest {
            product: Some(patch),
            update_mask: Some(prost_types::FieldMask { paths: vec!["price".to_owned()] }),
        }),
    )
    .await?
    .into_inner()
    .product
    .expect("product");
    assert_eq!(updated.price, eur(1250));
    assert_eq!(updated.name, "Knife");

    let bad_mask = CatalogService::update_product(
        &grpc,
        Request::new(pb::UpdateProductRequest {
            product: Some(updated.clone()),
            update_mask: Some(prost_types::FieldMask { paths: vec!["created_at".to_owned()] }),
        }),
    )
    .await
    .expect_err("created_at is not updatable");
    assert_eq!(bad_mask.code(), Code::InvalidArgument);

    for _ in 0..2 {
        CatalogService::delete_product(
            &grpc,
            Request::new(pb::DeleteProductRequest { id: created.id.clone() }),
        )
        .await?;
    }
    let gone =
        CatalogService::get_product(&grpc, Request::new(pb::GetProductRequest { id: created.id.clone() }))
            .await
            .expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);

    let rows = outbox(&db.pool).await?;
    let types: Vec<&str> = rows.iter().map(|row| row.event_type.as_str()).collect();
    assert_eq!(types, [ProductCreated::TYPE, ProductUpdated::TYPE, PriceChanged::TYPE, ProductDeleted::TYPE]);
    assert!(rows.iter().all(|row| row.key == created.id && row.topic == ProductCreated::TOPIC.name()));
    let changed = PriceChanged::decode(rows[2].payload.as_slice())?;
    assert_eq!((changed.previous_price, changed.price), (eur(1000), eur(1250)));
    let update = ProductUpdated::decode(rows[1].payload.as_slice())?;
    assert_eq!(update.changed_fields.map(|mask| mask.paths), Some(vec!["price".to_owned()]));
    db.drop_database().await
}

async fn version(grpc: &CatalogGrpc) -> anyhow::Result<i64> {
    let answer =
        CatalogService::get_catalog_version(grpc, Request::new(pb::GetCatalogVersionRequest {})).await?;
    Ok(answer.into_inner().version)
}

#[tokio::test]
async fn the_catalog_version_moves_with_each_committed_product_change_only() -> anyhow::Result<()> {
    let (db, grpc) = fixture().await?;
    let kitchen = category(&grpc, "pantry").await?;
    let start = version(&grpc).await?;

    let created = create(&grpc, product_request("PT-1", "Pot", &kitchen, 900)).await?;
    let after_create = version(&grpc).await?;
    assert!(after_create > start, "a new product moves the version ({start} -> {after_create})");

    CatalogService::get_product(&grpc, Request::new(pb::GetProductRequest { id: created.id.clone() }))
        .await?;
    list(&grpc, pb::ListProductsRequest { page_size: 10, ..Default::default() }).await?;
    category(&grpc, "larder").await?;
    assert_eq!(version(&grpc).await?, after_create, "reads and categories leave it");

    // A write that fails rolls back, and its bump with it.
    let unknown_category = uuid::Uuid::new_v4().to_string();
    let refused = create(&grpc, product_request("PT-2", "Pan", &unknown_category, 900)).await;
    assert_eq!(refused.expect_err("no such category").code(), Code::NotFound);
    let taken = create(&grpc, product_request("PT-1", "Pot again", &kitchen, 900)).await;
    assert_eq!(taken.expect_err("SKU taken").code(), Code::AlreadyExists);
    assert_eq!(version(&grpc).await?, after_create, "failed writes leave it");

    let mut patch = created.clone();
    patch.price = eur(950);
    CatalogService::update_product(
        &grpc,
        Request::new(pb::UpdateProductRequest {
            product: Some(patch),
            update_mask: Some(prost_types::FieldMask { paths: vec!["price".to_owned()] }),
        }),
    )
    .await?;
    let after_update = version(&grpc).await?;
    assert!(after_update > after_create, "an update moves it");
    CatalogService::delete_product(&grpc, Request::new(pb::DeleteProductRequest { id: created.id })).await?;
    assert!(version(&grpc).await? > after_update, "a deletion moves it");
    db.drop_database().await
}

#[tokio::test]
async fn listing_pages_through_every_match_once_with_filters_and_capped_sizes() -> anyhow::Result<()> {
    let (db, grpc) = fixture().await?;
    let books = category(&grpc, "books").await?;
    let garden = category(&grpc, "garden").await?;
    for n in 0..25 {
        create(
            &grpc,
            product_request(&format!("BK-{n:02}"), &format!("Book {n:02}"), &books, 1000 + n * 100),
        )
        .await?;
    }
    create(&grpc, product_request("GD-1", "Garden Hose", &garden, 2500)).await?;
    let mut inactive = product_request("BK-OLD", "Book Retired", &books, 100);
    inactive.active = false;
    create(&grpc, inactive).await?;

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(
            &grpc,
            pb::ListProductsRequest {
                page_size: 10,
                page_token: token.clone(),
                category_id: books.clone(),
                ..Default::default()
            },
        )
        .await?;
        assert_eq!(page.total_size, 25, "inactive products are not listed by default");
        assert!(page.products.len() <= 10);
        seen.extend(page.products.into_iter().map(|product| product.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: Vec<String> = (0..25).map(|n| format!("Book {n:02}")).collect();
    assert_eq!(seen, expected, "every product once, ordered by name");

    let default_page = list(&grpc, pb::ListProductsRequest::default()).await?;
    assert_eq!(default_page.products.len(), 20, "default page size");
    let capped = list(&grpc, pb::ListProductsRequest { page_size: 1000, ..Default::default() }).await?;
    assert_eq!(capped.products.len(), 26, "all 26 active products fit under the cap of 100");
    let with_inactive =
        list(&grpc, pb::ListProductsRequest { include_inactive: true, page_size: 100, ..Default::default() })
            .await?;
    assert_eq!(with_inactive.total_size, 27);

    let priced = list(
        &grpc,
        pb::ListProductsRequest { min_price: eur(2000), max_price: eur(2400), ..Default::default() },
    )
    .await?;
    let names: Vec<&str> = priced.products.iter().map(|product| product.name.as_str()).collect();
    assert_eq!(names, ["Book 10", "Book 11", "Book 12", "Book 13", "Book 14"]);

    let searched =
        list(&grpc, pb::ListProductsRequest { query: "HOSE garden".to_owned(), ..Default::default() })
            .await?;
    assert_eq!(searched.products.len(), 1);
    assert_eq!(searched.products[0].sku, "GD-1");
    let wildcard =
        list(&grpc, pb::ListProductsRequest { query: "%".to_owned(), ..Default::default() }).await?;
    assert!(wildcard.products.is_empty(), "a % in the query matches literally");

    let first = list(&grpc, pb::ListProductsRequest { page_size: 5, ..Default::default() }).await?;
    let mismatched = list(
        &grpc,
        pb::ListProductsRequest {
            page_size: 5,
            page_token: first.next_page_token,
            query: "book".to_owned(),
            ..Default::default()
        },
    )
    .await
    .expect_err("token from other filters");
    assert_eq!(mismatched.code(), Code::InvalidArgument);
    db.drop_database().await
}

#[tokio::test]
async fn batch_get_returns_found_products_once_and_reports_unknown_ids() -> anyhow::Result<()> {
    let (db, grpc) = fixture().await?;
    let kitchen = category(&grpc, "kitchen").await?;
    let knife = create(&grpc, product_request("KN-1", "Knife", &kitchen, 1000)).await?;
    let mut retired = product_request("KN-2", "Old Knife", &kitchen, 900);
    retired.active = false;
    let retired = create(&grpc, retired).await?;
    let unknown = "00000000-0000-4000-8000-00000000dead".to_owned();
    let response = CatalogService::batch_get_products(
        &grpc,
        Request::new(pb::BatchGetProductsRequest {
            ids: vec![
                knife.id.clone(),
                knife.id.clone(),
                retired.id.clone(),
                unknown.clone(),
                "junk".to_owned(),
            ],
        }),
    )
    .await?
    .into_inner();
    let mut found: Vec<String> = response.products.iter().map(|product| product.id.clone()).collect();
    found.sort();
    let mut expected = vec![knife.id.clone(), retired.id.clone()];
    expected.sort();
    assert_eq!(found, expected, "inactive products are returned too; duplicates once");
    assert_eq!(response.missing_ids, vec![unknown, "junk".to_owned()]);

    let too_many = CatalogService::batch_get_products(
        &grpc,
        Request::new(pb::BatchGetProductsRequest { ids: vec![knife.id.clone(); 1001] }),
    )
    .await
    .expect_err("over the limit");
    assert_eq!(too_many.code(), Code::InvalidArgument);
    db.drop_database().await
}

#[tokio::test]
async fn the_demo_seed_is_idempotent_and_publishes_each_product_once() -> anyhow::Result<()> {
    let (db, grpc) = fixture().await?;
    let first = commerce_catalog::seed(&db.pool).await?;
    assert_eq!((first.categories_inserted, first.products_inserted), (4, 20));
    let second = commerce_catalog::seed(&db.pool).await?;
    assert_eq!((second.categories_inserted, second.products_inserted), (0, 0));
    let created =
        outbox(&db.pool).await?.into_iter().filter(|row| row.event_type == ProductCreated::TYPE).count();
    assert_eq!(created, 20);
    let page = list(&grpc, pb::ListProductsRequest { page_size: 100, ..Default::default() }).await?;
    assert_eq!(page.total_size, 20);
    let categories =
        CatalogService::list_categories(&grpc, Request::new(pb::ListCategoriesRequest::default()))
            .await?
            .into_inner()
            .categories;
    assert_eq!(categories.len(), 4);
    db.drop_database().await
}
