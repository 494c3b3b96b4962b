//! `/api/admin/*`: catalog and stock management, every order, users and
//! their roles, and the rate-limit rules. Every handler takes [`AdminCaller`]: 401 without a
//! token, 403 for any other role. Product writes tell the
//! [`catalog_cache`](crate::catalog_cache), so that the writer's next read
//! through this gateway sees the write.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use commerce_platform::resilience::idempotent;
use commerce_proto::auth::v1 as auth_pb;
use commerce_proto::catalog::v1 as catalog_pb;
use commerce_proto::inventory::v1 as inventory_pb;
use commerce_proto::order::v1 as order_pb;
use serde::{Deserialize, Serialize};

use super::{grpc, missing, page_size};
use crate::auth::AdminCaller;
use crate::contract;
use crate::dto::{
    AdminOrderQuery, AdminUser, AdminUserQuery, Category, CreateCategoryRequest, CreateProductRequest,
    OrderPage, Product, RestockRequest, SetUserRoleRequest, StockLevel, UpdateProductRequest, UserPage,
    quantity_u32,
};
use crate::extract::{ApiJson, ApiQuery, path_uuid};
use crate::problem::Problem;
use crate::ratelimit::RulesError;
use crate::ratelimit::rules::{EffectiveRule, KeyKind, Rule, RuleMatch};
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

/// Users, newest first, optionally found by text or role.
pub async fn list_users(
    State(state): State<AppState>,
    _admin: AdminCaller,
    ApiQuery(query): ApiQuery<AdminUserQuery>,
) -> Result<Json<UserPage>, Problem> {
    let request = auth_pb::ListUsersRequest {
        query: query.q.unwrap_or_default(),
        role: query.role.map_or(0, |role| auth_pb::Role::from(role) as i32),
        page_size: page_size(query.page_size),
        page_token: query.page_token.unwrap_or_default(),
    };
    let response = state.auth()?.list_users(idempotent(request)).await.map_err(grpc("auth"))?.into_inner();
    Ok(Json(UserPage {
        users: response.users.into_iter().map(AdminUser::from).collect(),
        next_page_token: response.next_page_token,
        total_size: response.total_size,
    }))
}

/// Gives a user another role, effective from the user's next token
/// (sign-in or refresh). 409 for the last active administrator.
pub async fn set_user_role(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SetUserRoleRequest>,
) -> Result<Json<AdminUser>, Problem> {
    let id = path_uuid("id", &id)?;
    // Setting a role to a given value is idempotent.
    let request = idempotent(auth_pb::SetUserRoleRequest {
        user_id: id.to_string(),
        role: auth_pb::Role::from(body.role) as i32,
        changed_by: admin.user_id.clone(),
    });
    let response = state.auth()?.set_user_role(request).await.map_err(grpc("auth"))?.into_inner();
    let user = response.user.ok_or_else(|| missing("auth", "user"))?;
    Ok(Json(AdminUser::from(user)))
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

/// Body of `PUT /api/admin/ratelimits/{name}`: a rule, named by the path.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleBody {
    #[serde(rename = "match")]
    pub matcher: RuleBodyMatch,
    pub key: KeyKind,
    /// Header carrying the API key, for `key: api_key` (default `x-api-key`).
    #[serde(default)]
    #[schemars(regex(pattern = HEADER_NAME))]
    pub header: Option<String>,
    /// Requests allowed per `period`, sustained.
    #[schemars(range(min = 1, max = u32::MAX))]
    pub rate: u32,
    /// The period of `rate`: a number and one unit (`ms`, `s`, `m`, `h`,
    /// `d`), from 1ms to 7 days.
    #[schemars(regex(pattern = PERIOD))]
    pub period: String,
    /// Requests that may arrive at once.
    #[schemars(range(min = 1, max = u32::MAX))]
    pub burst: u32,
    /// Switches off a rule of the same name from the rules file.
    #[serde(default)]
    pub disabled: bool,
}

/// What requests a stored rule counts.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleBodyMatch {
    /// Path pattern from the root: `*` is one segment, a trailing `/**`
    /// any rest.
    #[schemars(regex(pattern = contract::RULE_PATH), length(max = 512))]
    pub path: String,
    /// Upper-case HTTP methods; empty or absent means all.
    #[serde(default)]
    #[schemars(inner(regex(pattern = "^[A-Z]+$")), length(max = 16))]
    pub methods: Vec<String>,
}

/// 1 ms to 7 days, in one unit: every value the pattern admits is in range.
const PERIOD: &str =
    "^([1-9][0-9]{0,5}ms|[1-9][0-9]{0,4}s|[1-9][0-9]{0,3}m|([1-9][0-9]?|1[0-5][0-9]|16[0-8])h|[1-7]d)$";
/// An HTTP header field name (RFC 9110 token).
const HEADER_NAME: &str = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";

/// The schema of the `{name}` path parameter of the rate-limit routes.
pub fn rule_name_schema() -> serde_json::Value {
    serde_json::json!({"type": "string", "pattern": contract::RULE_NAME, "maxLength": 64})
}

/// The rule named `name` in the path, checked against [`rule_name_schema`].
fn rule_name(name: &str) -> Result<(), Problem> {
    static SCHEMA: std::sync::LazyLock<jsonschema::Validator> = std::sync::LazyLock::new(|| {
        contract::compile(&rule_name_schema()).unwrap_or_else(|error| panic!("rule name schema: {error}"))
    });
    let errors = contract::violations(&SCHEMA, &serde_json::Value::from(name), contract::Part::Body);
    match errors.first() {
        None => Ok(()),
        Some(error) => Err(Problem::invalid_field("path:name", error.detail.clone())),
    }
}

impl RuleBody {
    /// The rule this body stores under `name`.
    fn into_rule(self, name: String) -> Result<Rule, Problem> {
        let period = humantime::parse_duration(&self.period)
            .map_err(|error| Problem::invalid_field("/period", error.to_string()))?;
        Ok(Rule {
            name,
            matcher: RuleMatch { path: self.matcher.path, methods: self.matcher.methods },
            key: self.key,
            header: self.header,
            rate: self.rate,
            period,
            burst: self.burst,
            disabled: self.disabled,
        })
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
    ApiJson(body): ApiJson<RuleBody>,
) -> Result<Json<Rule>, Problem> {
    rule_name(&name)?;
    let rule = body.into_rule(name)?;
    state.rate_limiter.store_rule(&rule).await.map_err(rules_problem)?;
    Ok(Json(rule))
}

pub async fn delete_rate_limit(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(name): Path<String>,
) -> Result<StatusCode, Problem> {
    rule_name(&name)?;
    if state.rate_limiter.delete_rule(&name).await.map_err(rules_problem)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("no rule named {name} is stored in Redis")))
    }
}
