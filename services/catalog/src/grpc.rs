//! The `commerce.catalog.v1.CatalogService` gRPC server: proto <-> domain,
//! reads through the cache, writes in transactions with their events, and
//! the one mapping from [`Error`] to a gRPC status.
//!
//! Role checks (admin-only writes, `include_inactive`) happen at the
//! gateway; this service validates input only.

use commerce_proto::time::timestamp;
use std::collections::HashSet;
use std::sync::Arc;

use commerce_proto::catalog::v1 as pb;
use commerce_proto::catalog::v1::catalog_service_server::CatalogService;
use commerce_proto::common::v1::Money as ProtoMoney;
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::Error;
use crate::cache::Cache;
use crate::domain::ProductRow;
use crate::domain::{self, Cursor, InvalidInput, ListFilter, Money, ProductDraft};
use crate::events;
use crate::store::{self, CategoryRow};

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match &error {
            Error::InvalidInput(invalid) => Status::invalid_argument(invalid.0.clone()),
            Error::SkuTaken { .. } | Error::SlugTaken { .. } => Status::already_exists(error.to_string()),
            Error::CategoryNotFound { .. } | Error::ProductNotFound { .. } => {
                Status::not_found(error.to_string())
            }
            Error::Database { source: sqlx::Error::PoolTimedOut, .. } => {
                tracing::warn!(error = %error, "database unavailable");
                Status::unavailable("the catalog database is unavailable; retry later")
            }
            _ => {
                tracing::error!(error = ?error, "catalog request failed");
                Status::internal("internal error")
            }
        }
    }
}

/// The gRPC handler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CatalogGrpc {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    cache: Cache,
}

fn parse_id(value: &str, field: &str) -> Result<Uuid, InvalidInput> {
    Uuid::parse_str(value.trim()).map_err(|_| InvalidInput(format!("{field} {value:?} is not a valid UUID")))
}

fn optional_id(value: &str, field: &str) -> Result<Option<Uuid>, InvalidInput> {
    if value.trim().is_empty() { Ok(None) } else { parse_id(value, field).map(Some) }
}

fn money_from(proto: Option<&ProtoMoney>, field: &str) -> Result<Money, InvalidInput> {
    let money = proto.ok_or_else(|| InvalidInput(format!("{field} is required")))?;
    Ok(Money { currency: money.currency_code.trim().to_owned(), units: money.units })
}

/// The proto view of a product.
pub fn product_to_proto(row: &ProductRow) -> pb::Product {
    pb::Product {
        id: row.id.to_string(),
        sku: row.sku.clone(),
        name: row.name.clone(),
        description: row.description.clone(),
        category_id: row.category_id.to_string(),
        price: Some(events::money(&row.price())),
        active: row.active,
        created_at: Some(timestamp(row.created_at)),
        updated_at: Some(timestamp(row.updated_at)),
        review_count: row.review_count,
        stars_total: row.stars_total,
    }
}

fn category_to_proto(row: &CategoryRow) -> pb::Category {
    pb::Category {
        id: row.id.to_string(),
        name: row.name.clone(),
        slug: row.slug.clone(),
        parent_id: row.parent_id.map(|id| id.to_string()).unwrap_or_default(),
        created_at: Some(timestamp(row.created_at)),
    }
}

impl CatalogGrpc {
    pub fn new(pool: PgPool, cache: Cache) -> Self {
        Self { inner: Arc::new(Inner { pool, cache }) }
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, Error> {
        self.inner
            .pool
            .begin()
            .await
            .map_err(|source| Error::Database { action: "begin a transaction", source })
    }

    async fn create_product(&self, request: pb::CreateProductRequest) -> Result<pb::Product, Error> {
        let draft = domain::validate_product(ProductDraft {
            sku: request.sku,
            name: request.name,
            description: request.description,
            category_id: parse_id(&request.category_id, "category_id")?,
            price: money_from(request.price.as_ref(), "price")?,
            active: request.active,
        })?;
        let mut tx = self.begin().await?;
        let row = store::insert_product(&mut tx, &draft).await?;
        tx.commit().await.map_err(|source| Error::Database { action: "commit a new product", source })?;
        self.inner.cache.invalidate(Some(row.id)).await;
        tracing::info!(product_id = %row.id, sku = %row.sku, "product created");
        Ok(product_to_proto(&row))
    }

    async fn get_product(&self, id: &str) -> Result<pb::Product, Error> {
        let id = parse_id(id, "id")?;
        let lookup = self.inner.cache.product::<pb::Product>(id).await;
        if let Some(product) = lookup.value {
            return Ok(product);
        }
        let row = store::get_product(&self.inner.pool, id).await?.ok_or(Error::ProductNotFound { id })?;
        let product = product_to_proto(&row);
        self.inner.cache.store_product(id, lookup.generation, &product).await;
        Ok(product)
    }

    async fn update_product(&self, request: pb::UpdateProductRequest) -> Result<pb::Product, Error> {
        let patch = request.product.ok_or_else(|| InvalidInput("product is required".to_owned()))?;
        let id = parse_id(&patch.id, "product.id")?;
        let fields =
            domain::parse_update_mask(request.update_mask.map(|mask| mask.paths).as_deref().unwrap_or(&[]))?;
        let mut tx = self.begin().await?;
        let current = store::lock_product(&mut tx, id).await?.ok_or(Error::ProductNotFound { id })?;
        // Fields outside the mask may be absent from the request: take
        // them from the current product so that parsing them cannot fail.
        let masked = |field| fields.contains(&field);
        let patch_draft = ProductDraft {
            sku: patch.sku,
            name: patch.name,
            description: patch.description,
            category_id: if masked(domain::Field::CategoryId) {
                parse_id(&patch.category_id, "product.category_id")?
            } else {
                current.category_id
            },
            price: if masked(domain::Field::Price) {
                money_from(patch.price.as_ref(), "product.price")?
            } else {
                current.price()
            },
            active: patch.active,
        };
        let (next, changed) = domain::apply_update(&current.draft(), &patch_draft, &fields)?;
        if changed.is_empty() {
            return Ok(product_to_proto(&current));
        }
        let row = store::update_product(&mut tx, id, &next).await?;
        events::enqueue_updated(&mut tx, &current, &row, &changed).await?;
        tx.commit().await.map_err(|source| Error::Database { action: "commit a product update", source })?;
        self.inner.cache.invalidate(Some(id)).await;
        tracing::info!(product_id = %id, changed = ?changed, "product updated");
        Ok(product_to_proto(&row))
    }

    async fn delete_product(&self, id: &str) -> Result<(), Error> {
        let id = parse_id(id, "id")?;
        let mut tx = self.begin().await?;
        if let Some(row) = store::delete_product(&mut tx, id).await? {
            events::enqueue_deleted(&mut tx, &row).await?;
            tx.commit()
                .await
                .map_err(|source| Error::Database { action: "commit a product deletion", source })?;
            self.inner.cache.invalidate(Some(id)).await;
            tracing::info!(product_id = %id, "product deleted");
        }
        Ok(())
    }

    async fn list_products(
        &self,
        request: pb::ListProductsRequest,
    ) -> Result<pb::ListProductsResponse, Error> {
        let limit = domain::page_size(request.page_size)?;
        let bound = |money: Option<ProtoMoney>| {
            money.map(|money| Money { currency: money.currency_code.trim().to_owned(), units: money.units })
        };
        let filter = ListFilter::new(
            optional_id(&request.category_id, "category_id")?,
            &request.query,
            bound(request.min_price),
            bound(request.max_price),
            request.include_inactive,
        )?;
        let cursor = if request.page_token.is_empty() {
            None
        } else {
            Some(Cursor::decode(&request.page_token, &filter)?)
        };
        let fingerprint = format!("{}:{}:{}", filter.fingerprint(), limit, request.page_token);
        let lookup = self.inner.cache.list::<pb::ListProductsResponse>(&fingerprint).await;
        if let Some(page) = lookup.value {
            return Ok(page);
        }
        let (rows, more, total) =
            store::list_products(&self.inner.pool, &filter, cursor.as_ref(), limit).await?;
        let next_page_token = match rows.last() {
            Some(last) if more => {
                Cursor { name: last.name.clone(), id: last.id, filter: filter.fingerprint() }.encode()
            }
            _ => String::new(),
        };
        let page = pb::ListProductsResponse {
            products: rows.iter().map(product_to_proto).collect(),
            next_page_token,
            total_size: total,
        };
        self.inner.cache.store_list(&fingerprint, lookup.generation, &page).await;
        Ok(page)
    }

    async fn batch_get(
        &self,
        request: pb::BatchGetProductsRequest,
    ) -> Result<pb::BatchGetProductsResponse, Error> {
        if request.ids.len() > domain::MAX_BATCH_IDS {
            return Err(InvalidInput(format!(
                "at most {} ids per call (got {})",
                domain::MAX_BATCH_IDS,
                request.ids.len()
            ))
            .into());
        }
        // Unparsable ids match no product: reported missing like unknown
        // ones, so a caller rejects exactly the lines that name them.
        let mut seen = HashSet::new();
        let requested: Vec<(String, Option<Uuid>)> = request
            .ids
            .into_iter()
            .filter(|id| seen.insert(id.clone()))
            .map(|id| {
                let parsed = Uuid::parse_str(id.trim()).ok();
                (id, parsed)
            })
            .collect();
        let ids: Vec<Uuid> = requested.iter().filter_map(|(_, id)| *id).collect();
        let rows = store::batch_get_products(&self.inner.pool, &ids).await?;
        let found: HashSet<Uuid> = rows.iter().map(|row| row.id).collect();
        let missing_ids = requested
            .into_iter()
            .filter(|(_, id)| !id.is_some_and(|id| found.contains(&id)))
            .map(|(raw, _)| raw)
            .collect();
        Ok(pb::BatchGetProductsResponse {
            products: rows.iter().map(product_to_proto).collect(),
            missing_ids,
        })
    }

    async fn create_category(&self, request: pb::CreateCategoryRequest) -> Result<pb::Category, Error> {
        let (name, slug) = domain::validate_category(&request.name, &request.slug)?;
        let parent_id = optional_id(&request.parent_id, "parent_id")?;
        let row = store::insert_category(&self.inner.pool, &name, &slug, parent_id).await?;
        Ok(category_to_proto(&row))
    }
}

#[tonic::async_trait]
impl CatalogService for CatalogGrpc {
    async fn create_product(
        &self,
        request: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::CreateProductResponse>, Status> {
        let product = CatalogGrpc::create_product(self, request.into_inner()).await?;
        Ok(Response::new(pb::CreateProductResponse { product: Some(product) }))
    }

    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::GetProductResponse>, Status> {
        let product = CatalogGrpc::get_product(self, &request.into_inner().id).await?;
        Ok(Response::new(pb::GetProductResponse { product: Some(product) }))
    }

    async fn update_product(
        &self,
        request: Request<pb::UpdateProductRequest>,
    ) -> Result<Response<pb::UpdateProductResponse>, Status> {
        let product = CatalogGrpc::update_product(self, request.into_inner()).await?;
        Ok(Response::new(pb::UpdateProductResponse { product: Some(product) }))
    }

    async fn delete_product(
        &self,
        request: Request<pb::DeleteProductRequest>,
    ) -> Result<Response<pb::DeleteProductResponse>, Status> {
        CatalogGrpc::delete_product(self, &request.into_inner().id).await?;
        Ok(Response::new(pb::DeleteProductResponse {}))
    }

    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        Ok(Response::new(CatalogGrpc::list_products(self, request.into_inner()).await?))
    }

    async fn batch_get_products(
        &self,
        request: Request<pb::BatchGetProductsRequest>,
    ) -> Result<Response<pb::BatchGetProductsResponse>, Status> {
        Ok(Response::new(self.batch_get(request.into_inner()).await?))
    }

    async fn create_category(
        &self,
        request: Request<pb::CreateCategoryRequest>,
    ) -> Result<Response<pb::CreateCategoryResponse>, Status> {
        let category = CatalogGrpc::create_category(self, request.into_inner()).await?;
        Ok(Response::new(pb::CreateCategoryResponse { category: Some(category) }))
    }

    async fn get_catalog_version(
        &self,
        _request: Request<pb::GetCatalogVersionRequest>,
    ) -> Result<Response<pb::GetCatalogVersionResponse>, Status> {
        // From Postgres on every call, never from memory or Redis: the
        // answer must count writes made through every replica.
        let version = store::catalog_version(&self.inner.pool).await?;
        Ok(Response::new(pb::GetCatalogVersionResponse { version }))
    }

    async fn list_categories(
        &self,
        request: Request<pb::ListCategoriesRequest>,
    ) -> Result<Response<pb::ListCategoriesResponse>, Status> {
        let parent_id = optional_id(&request.into_inner().parent_id, "parent_id").map_err(Error::from)?;
        let rows = store::list_categories(&self.inner.pool, parent_id).await?;
        Ok(Response::new(pb::ListCategoriesResponse {
            categories: rows.iter().map(category_to_proto).collect(),
        }))
    }
}
