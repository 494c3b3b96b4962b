//! Reviews: `/api/products/{id}/reviews` (public list, buyers write),
//! `/api/reviews/{id}` (the author edits, anyone signed in votes or
//! reports) and `/api/admin/reviews*` (the moderation queue). The reviews
//! service decides who may review what (a delivered order line); the
//! gateway passes the verified caller, never a user id from the body.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use commerce_platform::resilience::idempotent;
use commerce_proto::reviews::v1 as pb;

use super::{grpc, page_size};
use crate::auth::{AdminCaller, Caller};
use crate::dto::{
    ModerationDecision, ModerationQueue, ModerationRequest, NewReviewRequest, PageQuery, QueuedReview,
    ReportReviewRequest, Review, ReviewPage, ReviewPatch, ReviewQuery,
};
use crate::extract::{ApiJson, ApiQuery, path_uuid};
use crate::problem::Problem;
use crate::state::AppState;

/// A product's visible reviews, filtered and sorted, with its rating summary.
pub async fn list_reviews(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ReviewQuery>,
) -> Result<Json<ReviewPage>, Problem> {
    let product_id = path_uuid("id", &id)?;
    let request = pb::ListProductReviewsRequest {
        product_id: product_id.to_string(),
        rating: query.rating.unwrap_or(0),
        sort: query.sort.map_or(0, |sort| pb::ReviewSort::from(sort) as i32),
        page_size: page_size(query.page_size),
        page_token: query.page_token.unwrap_or_default(),
    };
    let page = state.reviews()?.list_product_reviews(idempotent(request)).await.map_err(grpc("reviews"))?;
    let page = page.into_inner();
    Ok(Json(ReviewPage {
        reviews: page.reviews.into_iter().map(Review::from).collect(),
        next_page_token: page.next_page_token,
        summary: page.summary.unwrap_or_default().into(),
    }))
}

/// The caller reviews a product they received.
pub async fn create_review(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<NewReviewRequest>,
) -> Result<(StatusCode, Json<Review>), Problem> {
    let product_id = path_uuid("id", &id)?;
    let request = pb::CreateReviewRequest {
        user_id: caller.user_id,
        product_id: product_id.to_string(),
        rating: body.rating,
        title: body.title,
        body: body.body,
    };
    // Not retried: a repeat after a lost answer would meet the review it
    // wrote and answer 409.
    let review = state.reviews()?.create_review(request).await.map_err(grpc("reviews"))?;
    Ok((StatusCode::CREATED, Json(Review::from(review.into_inner()))))
}

/// The author changes their review.
pub async fn update_review(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ReviewPatch>,
) -> Result<Json<Review>, Problem> {
    let review_id = path_uuid("id", &id)?;
    let mut clear = Vec::new();
    let mut text = |name: &str, value: Option<String>| match value {
        Some(value) if value.trim().is_empty() => {
            clear.push(name.to_owned());
            String::new()
        }
        value => value.unwrap_or_default(),
    };
    let title = text("title", body.title);
    let text_body = text("body", body.body);
    let request = pb::UpdateReviewRequest {
        user_id: caller.user_id,
        review_id: review_id.to_string(),
        rating: body.rating.unwrap_or(0),
        title,
        body: text_body,
        clear,
    };
    // A replacement of what is given: the same request twice leaves the
    // same review.
    let review = state.reviews()?.update_review(idempotent(request)).await.map_err(grpc("reviews"))?;
    Ok(Json(Review::from(review.into_inner())))
}

/// The caller finds a review helpful; counted once per user.
pub async fn vote_helpful(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Review>, Problem> {
    let review_id = path_uuid("id", &id)?;
    let request = pb::VoteHelpfulRequest { user_id: caller.user_id, review_id: review_id.to_string() };
    let review = state.reviews()?.vote_helpful(idempotent(request)).await.map_err(grpc("reviews"))?;
    Ok(Json(Review::from(review.into_inner())))
}

/// The caller reports a review as abusive; it joins the moderation queue.
pub async fn report_review(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ReportReviewRequest>,
) -> Result<Json<Review>, Problem> {
    let review_id = path_uuid("id", &id)?;
    let request = pb::ReportReviewRequest {
        user_id: caller.user_id,
        review_id: review_id.to_string(),
        reason: body.reason,
    };
    let review = state.reviews()?.report_review(idempotent(request)).await.map_err(grpc("reviews"))?;
    Ok(Json(Review::from(review.into_inner())))
}

/// The moderation queue, the longest waiting first.
pub async fn moderation_queue(
    State(state): State<AppState>,
    _admin: AdminCaller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<ModerationQueue>, Problem> {
    let request = pb::ListModerationQueueRequest {
        page_size: page_size(query.page_size),
        page_token: query.page_token.unwrap_or_default(),
    };
    let queue = state.reviews()?.list_moderation_queue(idempotent(request)).await.map_err(grpc("reviews"))?;
    let queue = queue.into_inner();
    Ok(Json(ModerationQueue {
        entries: queue.entries.into_iter().map(QueuedReview::from).collect(),
        next_page_token: queue.next_page_token,
    }))
}

/// An admin keeps or removes a review.
pub async fn moderate_review(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ModerationRequest>,
) -> Result<Json<Review>, Problem> {
    let review_id = path_uuid("id", &id)?;
    let request = pb::ModerateReviewRequest {
        moderator_id: admin.user_id,
        review_id: review_id.to_string(),
        remove: body.decision == ModerationDecision::Remove,
        note: body.note,
    };
    // Not retried: a repeated removal answers 409.
    let review = state.reviews()?.moderate_review(request).await.map_err(grpc("reviews"))?;
    Ok(Json(Review::from(review.into_inner())))
}
