//! The `RecommendationService` gRPC server: proto <-> the tables' lists,
//! and the one `From<Error> for Status` mapping.

use commerce_proto::common::v1::Money;
use commerce_proto::recommendation::v1 as pb;
use commerce_proto::recommendation::v1::recommendation_service_server::RecommendationService;
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use commerce_proto::time::{from_timestamp, timestamp};
use sqlx::postgres::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::store::{self, Recommended};
use crate::{DEFAULT_LIMIT, Error, MAX_LIMIT, MAX_VIEWS_PER_CALL};

/// The gRPC face of the recommendation service.
#[derive(Debug, Clone)]
pub struct RecommendationGrpc {
    pool: PgPool,
}

impl RecommendationGrpc {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn to_proto(product: Recommended) -> pb::Recommendation {
    pb::Recommendation {
        product_id: product.product_id.to_string(),
        name: product.name,
        category_id: product.category_id.map(|id| id.to_string()).unwrap_or_default(),
        price: Some(Money { currency_code: product.currency, units: product.price_units }),
        buyers: product.buyers,
        viewed_at: product.viewed_at.map(timestamp),
    }
}

fn limit(limit: i32) -> Result<i64, Error> {
    match i64::from(limit) {
        0 => Ok(DEFAULT_LIMIT),
        limit @ 1..=MAX_LIMIT => Ok(limit),
        _ => Err(Error::InvalidRequest { field: "limit", problem: "must be 0 to 20" }),
    }
}

fn product_id(raw: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(raw).map_err(|_| Error::InvalidRequest { field: "product_id", problem: "is not a UUID" })
}

fn user_id(raw: &str) -> Result<&str, Error> {
    if raw.trim().is_empty() {
        return Err(Error::InvalidRequest { field: "user_id", problem: "must not be empty" });
    }
    Ok(raw)
}

#[tonic::async_trait]
impl RecommendationService for RecommendationGrpc {
    async fn record_views(
        &self,
        request: Request<pb::RecordViewsRequest>,
    ) -> Result<Response<pb::RecordViewsResponse>, Status> {
        let request = request.into_inner();
        if request.views.len() > MAX_VIEWS_PER_CALL {
            return Err(Error::InvalidRequest { field: "views", problem: "at most 1000 per call" }.into());
        }
        let now = chrono::Utc::now();
        // The latest view of each pair: one statement cannot update a row twice.
        let mut latest: HashMap<(&str, Uuid), DateTime<Utc>> = HashMap::with_capacity(request.views.len());
        for view in &request.views {
            let at = view.viewed_at.as_ref().and_then(from_timestamp).unwrap_or(now);
            let seen = latest.entry((user_id(&view.user_id)?, product_id(&view.product_id)?)).or_insert(at);
            *seen = (*seen).max(at);
        }
        let views: Vec<store::View<'_>> = latest
            .into_iter()
            .map(|((user_id, product_id), viewed_at)| store::View { user_id, product_id, viewed_at })
            .collect();
        store::record_views(&self.pool, &views).await?;
        Ok(Response::new(pb::RecordViewsResponse {}))
    }

    async fn product_recommendations(
        &self,
        request: Request<pb::ProductRecommendationsRequest>,
    ) -> Result<Response<pb::ProductRecommendationsResponse>, Status> {
        let request = request.into_inner();
        let product = product_id(&request.product_id)?;
        let limit = limit(request.limit)?;
        let mut conn = self.pool.acquire().await.map_err(Error::Read)?;
        let also_bought = store::also_bought(&mut conn, product, limit).await?;
        let shown: Vec<Uuid> = also_bought.iter().map(|p| p.product_id).collect();
        let popular = store::popular_in_category(&mut conn, product, &shown, limit).await?;
        Ok(Response::new(pb::ProductRecommendationsResponse {
            also_bought: also_bought.into_iter().map(to_proto).collect(),
            popular_in_category: popular.into_iter().map(to_proto).collect(),
        }))
    }

    async fn user_recommendations(
        &self,
        request: Request<pb::UserRecommendationsRequest>,
    ) -> Result<Response<pb::UserRecommendationsResponse>, Status> {
        let request = request.into_inner();
        let user = user_id(&request.user_id)?;
        let limit = limit(request.limit)?;
        let mut conn = self.pool.acquire().await.map_err(Error::Read)?;
        let recently_viewed = store::recently_viewed(&mut conn, user, limit).await?;
        let recommended = store::for_user(&mut conn, user, limit).await?;
        Ok(Response::new(pb::UserRecommendationsResponse {
            recently_viewed: recently_viewed.into_iter().map(to_proto).collect(),
            recommended: recommended.into_iter().map(to_proto).collect(),
        }))
    }

    async fn list_views(
        &self,
        request: Request<pb::ListViewsRequest>,
    ) -> Result<Response<pb::ListViewsResponse>, Status> {
        let request = request.into_inner();
        let user = user_id(&request.user_id)?;
        let mut conn = self.pool.acquire().await.map_err(Error::Read)?;
        let views = store::views(&mut conn, user).await?;
        Ok(Response::new(pb::ListViewsResponse {
            views: views
                .into_iter()
                .map(|(product_id, viewed_at)| pb::View {
                    product_id: product_id.to_string(),
                    viewed_at: Some(timestamp(viewed_at)),
                })
                .collect(),
        }))
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = crate::error_chain(&error);
        match &error {
            Error::InvalidRequest { .. } => Status::invalid_argument(message),
            _ if error.is_transient() => Status::unavailable(message),
            _ => {
                tracing::error!(error = %message, "recommendation request failed");
                Status::internal("internal error")
            }
        }
    }
}
