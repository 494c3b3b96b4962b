//! Recommendations: `/api/products/{id}/recommendations` for anyone, and
//! `/api/recommendations/me` for the signed-in caller (their views are
//! recorded by `GET /api/products/{id}`).

use axum::Json;
use axum::extract::{Path, State};
use commerce_platform::resilience::idempotent;
use commerce_proto::recommendation::v1 as pb;

use super::grpc;
use crate::auth::Caller;
use crate::dto::{ProductRecommendations, RecommendationQuery, UserRecommendations};
use crate::extract::{ApiQuery, path_uuid};
use crate::problem::Problem;
use crate::state::AppState;

/// What its buyers also bought, and its category's best sellers.
pub async fn for_product(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<RecommendationQuery>,
) -> Result<Json<ProductRecommendations>, Problem> {
    let product_id = path_uuid("id", &id)?;
    let request = pb::ProductRecommendationsRequest {
        product_id: product_id.to_string(),
        limit: query.limit.unwrap_or(0),
    };
    let found = state
        .recommendation()?
        .product_recommendations(idempotent(request))
        .await
        .map_err(grpc("recommendation"))?;
    Ok(Json(ProductRecommendations::from(found.into_inner())))
}

/// The caller's recently viewed products and products for them.
pub async fn for_me(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<RecommendationQuery>,
) -> Result<Json<UserRecommendations>, Problem> {
    let request = pb::UserRecommendationsRequest { user_id: caller.user_id, limit: query.limit.unwrap_or(0) };
    let found = state
        .recommendation()?
        .user_recommendations(idempotent(request))
        .await
        .map_err(grpc("recommendation"))?;
    Ok(Json(UserRecommendations::from(found.into_inner())))
}
