//! `/api/admin/*`: catalog and stock management, every order, and the
//! rate-limit rules. Every handler takes [`AdminCaller`]: 401 without a
//! token, 403 for any other role. Product writes tell the
//! [`catalog_cache`](crate::catalog_cache), so that the writer's next read
//! through this gateway sees the write.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use commerce_platform::resilience::idempotent;
use commerce_proto::catalog::v1 as catalog_pb;
use commerce_proto::inventory::v1 as inventory_pb;
use commerce_proto::order::v1 as order_pb;
use serde::Serialize;

use super::{grpc, missing, page_size};
use crate::auth::AdminCaller;
use crate::dto::{
    AdminOrderQuery, Category, CreateCategoryRequest, CreateProductRequest, OrderPage, Product,
    RestockRequest, StockLevel, UpdateProductRequest, quantity_u32,
};
use crate::extract::{ApiJson, ApiQuery, Validate, path_uuid};
use crate::problem::{FieldError, Problem};
use crate::ratelimit::RulesError;
use crate::ratelimit::rules::{EffectiveRule, Rule};
use crate::state::AppState;

pub async fn create_product(
    State(state): State<AppState>,
    _admin: AdminCaller,
    ApiJson(body): ApiJson<CreateProductRequest>,
) -> Result<(StatusCode, Json<Product>), Problem> {
    let request = catalog_pb::CreateProductRequest {
        sku: body.sku,
        name: body.name,
        description: body.description,
        category_id: body.category_id.to_string(),
        price: Some(body.price.into()),
        active: body.active,
    };
    let answer = state.catalog()?.create_product(request).await;
    state.catalog_cache.written();
    let response = answer.map_err(grpc("catalog"))?.into_inner();
    let product = response.product.ok_or_else(|| missing("catalog", "product"))?;
    Ok((StatusCode::CREATED, Json(Product::from(product))))
}

pub async fn update_product(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateProductRequest>,
) -> Result<Json<Product>, Problem> {
    let id = path_uuid("id", &id)?;
    // Setting fields to given values is idempotent.
    let request = idempotent(body.into_proto(id));
    let answer = state.catalog()?.update_product(request).await;
    state.catalog_cache.written();
    let response = answer.map_err(grpc("catalog"))?.into_inner();
    let product = response.product.ok_or_else(|| missing("catalog", "product"))?;
    Ok(Json(Product::from(product)))
}

pub async fn delete_product(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id = path_uuid("id", &id)?;
    let request = idempotent(catalog_pb::DeleteProductRequest { id: id.to_string() });
    let answer = state.catalog()?.delete_product(request).await;
    state.catalog_cache.written();
    answer.map_err(grpc("catalog"))?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn create_category(
    State(state): State<AppState>,
    _admin: AdminCaller,
    ApiJson(body): ApiJson<CreateCategoryRequest>,
) -> Result<(StatusCode, Json<Category>), Problem> {
    let request = catalog_pb::CreateCategoryRequest {
        name: body.name,
        slug: body.slug,
        parent_id: body.parent_id.map(|id| id.to_string()).unwrap_or_default(),
    };
    let response = state.catalog()?.create_category(request).await.map_err(grpc("catalog"))?.into_inner();
    let category = response.category.ok_or_else(|| missing("catalog", "category"))?;
    Ok((StatusCode::CREATED, Json(Category::from(category))))
}

pub async fn restock(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(product_id): Path<String>,
    ApiJson(body): ApiJson<RestockRequest>,
) -> Result<Json<StockLevel>, Problem> {
    let product_id = path_uuid("product_id", &product_id)?;
    // Not idempotent (each call adds stock): never retried.
    let request = inventory_pb::RestockRequest {
        product_id: product_id.to_string(),
        quantity: quantity_u32(body.quantity),
        note: body.note,
    };
    let response = state.inventory()?.restock(request).await.map_err(grpc("inventory"))?.into_inner();
    let stock = response.stock.ok_or_else(|| missing("inventory", "stock"))?;
    Ok(Json(StockLevel::from(stock)))
}

pub async fn list_orders(
    State(state): State<AppState>,
    _admin: AdminCaller,
    ApiQuery(query): ApiQuery<AdminOrderQuery>,
) -> Result<Json<OrderPage>, Problem> {
    let request = order_pb::ListOrdersRequest {
        user_id: query.user_id.map(|id| id.to_string()).unwrap_or_default(),
        page_size: page_size(query.page_size),
        page_token: query.page_token.unwrap_or_default(),
        status: query.status.map_or(0, |status| order_pb::OrderStatus::from(status) as i32),
    };
    super::orders::list(&state, request).await
}

/// The effective rate-limit rules.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct RateLimitRules {
    /// `redis` when counters are shared, `local` while falling back.
    pub backend: String,
    pub rules: Vec<EffectiveRule>,
}

pub async fn list_rate_limits(State(state): State<AppState>, _admin: AdminCaller) -> Json<RateLimitRules> {
    let limiter = &state.rate_limiter;
    let backend = if limiter.limiter().in_fallback() { "local" } else { "redis" };
    Json(RateLimitRules { backend: backend.to_owned(), rules: limiter.effective().as_ref().clone() })
}

impl Validate for Rule {
    fn validate(&self) -> Vec<FieldError> {
        match Rule::validate(self) {
            Ok(()) => Vec::new(),
            Err(error) => vec![FieldError::new("/", error)],
        }
    }
}

fn rules_problem(error: RulesError) -> Problem {
    match error {
        RulesError::InvalidRule(detail) => Problem::invalid_field("/", detail),
        RulesError::RedisUnavailable | RulesError::WriteRule(_) => {
            tracing::warn!(error = %error, "cannot change stored rate-limit rules");
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", error.to_string())
        }
    }
}

/// Stores a rule in Redis; every replica applies it at its next reload.
pub async fn put_rate_limit(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(name): Path<String>,
    ApiJson(rule): ApiJson<Rule>,
) -> Result<Json<Rule>, Problem> {
    if rule.name != name {
        return Err(Problem::invalid_field("/name", format!("must equal the name in the path ({name})")));
    }
    state.rate_limiter.store_rule(&rule).await.map_err(rules_problem)?;
    Ok(Json(rule))
}

pub async fn delete_rate_limit(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(name): Path<String>,
) -> Result<StatusCode, Problem> {
    if state.rate_limiter.delete_rule(&name).await.map_err(rules_problem)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("no rule named {name} is stored in Redis")))
    }
}
