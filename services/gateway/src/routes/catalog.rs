//! `/api/products` and `/api/categories`: public catalog reads. Products
//! and their pages are answered from the [`catalog_cache`](crate::catalog_cache)
//! when it holds a current answer.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use commerce_platform::resilience::idempotent;
use commerce_proto::catalog::v1 as pb;
use commerce_proto::common::v1::Money;

use super::{grpc, missing, page_size};
use crate::auth::OptionalCaller;
use crate::catalog_cache::{Key, Lookup, PageKey, json_response, render};
use crate::dto::{Category, CategoryList, Product, ProductPage, ProductQuery};
use crate::extract::{ApiQuery, path_uuid};
use crate::problem::Problem;
use crate::state::AppState;

pub async fn list_products(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ProductQuery>,
) -> Result<Response, Problem> {
    let currency = query.currency.clone().unwrap_or_default();
    let price = |units: Option<i64>| units.map(|units| Money { currency_code: currency.clone(), units });
    let request = pb::ListProductsRequest {
        page_size: page_size(query.page_size),
        page_token: query.page_token.unwrap_or_default(),
        category_id: query.category.map(|id| id.to_string()).unwrap_or_default(),
        query: query.q.unwrap_or_default(),
        min_price: price(query.min_price),
        max_price: price(query.max_price),
        include_inactive: false,
    };
    let key = Key::Page(PageKey::of(&request));
    let version = match state.catalog_cache.lookup(&key) {
        Lookup::Hit(body) => return Ok(json_response(body)),
        Lookup::Miss(version) => Some(version),
        Lookup::Bypass => None,
    };
    let response =
        state.catalog()?.list_products(idempotent(request)).await.map_err(grpc("catalog"))?.into_inner();
    let body = render(&ProductPage {
        products: response.products.into_iter().map(Product::from).collect(),
        next_page_token: response.next_page_token,
        total_size: response.total_size,
    })?;
    if let Some(version) = version {
        state.catalog_cache.store(key, version, body.clone());
    }
    Ok(json_response(body))
}

pub async fn get_product(
    State(state): State<AppState>,
    OptionalCaller(viewer): OptionalCaller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id = path_uuid("id", &id)?;
    if let Some(viewer) = viewer {
        state.product_views.record(&viewer.user_id, id);
    }
    let key = Key::Product(id);
    let version = match state.catalog_cache.lookup(&key) {
        Lookup::Hit(body) => return Ok(json_response(body)),
        Lookup::Miss(version) => Some(version),
        Lookup::Bypass => None,
    };
    let request = pb::GetProductRequest { id: id.to_string() };
    let response =
        state.catalog()?.get_product(idempotent(request)).await.map_err(grpc("catalog"))?.into_inner();
    let product = response.product.ok_or_else(|| missing("catalog", "product"))?;
    let body = render(&Product::from(product))?;
    if let Some(version) = version {
        state.catalog_cache.store(key, version, body.clone());
    }
    Ok(json_response(body))
}

pub async fn list_categories(State(state): State<AppState>) -> Result<Json<CategoryList>, Problem> {
    let request = pb::ListCategoriesRequest { parent_id: String::new() };
    let response =
        state.catalog()?.list_categories(idempotent(request)).await.map_err(grpc("catalog"))?.into_inner();
    Ok(Json(CategoryList { categories: response.categories.into_iter().map(Category::from).collect() }))
}
