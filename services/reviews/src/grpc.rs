//! The `ReviewService` gRPC server: proto <-> domain, each change in one
//! transaction with its event, and the one `From<Error> for Status` mapping.

use std::collections::HashMap;

use commerce_proto::reviews::v1 as pb;
use commerce_proto::reviews::v1::review_service_server::ReviewService;
use commerce_proto::time::timestamp;
use sqlx::postgres::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::{self, Status as ReviewStatus};
use crate::store::{self, Review};
use crate::{Error, events};

/// The gRPC face of the reviews service.
#[derive(Debug, Clone)]
pub struct ReviewGrpc {
    pool: PgPool,
}

impl ReviewGrpc {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn to_proto(review: Review) -> pb::Review {
    pb::Review {
        status: review.status().to_proto().into(),
        id: review.id.to_string(),
        product_id: review.product_id,
        user_id: review.user_id,
        rating: i32::from(review.rating),
        title: review.title,
        body: review.body,
        helpful_count: review.helpful_count,
        report_count: review.report_count,
        created_at: Some(timestamp(review.created_at)),
        updated_at: Some(timestamp(review.updated_at)),
    }
}

fn required<'a>(field: &'static str, value: &'a str) -> Result<&'a str, Error> {
    if value.trim().is_empty() {
        return Err(Error::InvalidRequest { field, problem: "must not be empty" });
    }
    Ok(value)
}

fn review_id(id: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(id).map_err(|_| Error::ReviewNotFound)
}

fn checked<T>(result: Result<T, domain::Invalid>) -> Result<T, Error> {
    result.map_err(|invalid| Error::InvalidRequest { field: invalid.field, problem: invalid.problem })
}

impl ReviewGrpc {
    /// Locks the review's product, then the review: the order every change
    /// takes, so two changes of one product never deadlock.
    async fn lock_review(&self, tx: &mut sqlx::PgConnection, id: Uuid) -> Result<Review, Error> {
        let product = store::product_of(tx, id).await?.ok_or(Error::ReviewNotFound)?;
        store::lock_product(tx, &product).await?;
        store::find(tx, id, true).await?.ok_or(Error::ReviewNotFound)
    }
}

#[tonic::async_trait]
impl ReviewService for ReviewGrpc {
    async fn create_review(
        &self,
        request: Request<pb::CreateReviewRequest>,
    ) -> Result<Response<pb::Review>, Status> {
        let request = request.into_inner();
        let user_id = required("user_id", &request.user_id)?;
        let product_id = required("product_id", &request.product_id)?;
        let rating = checked(domain::check_rating(request.rating))?;
        checked(domain::check_text(&request.title, &request.body))?;
        let mut tx = self.pool.begin().await.map_err(Error::Write)?;
        if !store::has_purchased(&mut tx, user_id, product_id).await? {
            return Err(Error::NotAVerifiedBuyer { product_id: product_id.to_owned() }.into());
        }
        store::lock_product(&mut tx, product_id).await?;
        let review =
            store::insert(&mut tx, product_id, user_id, rating, request.title.trim(), request.body.trim())
                .await?;
        let rating = store::recount(&mut tx, product_id).await?;
        events::created(&mut tx, &review, rating).await?;
        tx.commit().await.map_err(Error::Write)?;
        Ok(Response::new(to_proto(review)))
    }

    async fn update_review(
        &self,
        request: Request<pb::UpdateReviewRequest>,
    ) -> Result<Response<pb::Review>, Status> {
        let request = request.into_inner();
        let user_id = required("user_id", &request.user_id)?;
        let id = review_id(&request.review_id)?;
        for field in &request.clear {
            if field != "title" && field != "body" {
                return Err(Error::InvalidRequest {
                    field: "clear",
                    problem: "may name only title and body",
                }
                .into());
            }
        }
        let new_rating = match request.rating {
            0 => None,
            stars => Some(checked(domain::check_rating(stars))?),
        };
        let mut tx = self.pool.begin().await.map_err(Error::Write)?;
        let before = self.lock_review(&mut tx, id).await?;
        if before.user_id != user_id {
            // Another user's review is as good as absent to this caller.
            return Err(Error::ReviewNotFound.into());
        }
        if before.status() == ReviewStatus::Removed {
            return Err(Error::ReviewRemoved.into());
        }
        let pick = |name: &str, given: &str, stored: &str| -> String {
            if request.clear.iter().any(|field| field == name) {
                String::new()
            } else if given.trim().is_empty() {
                stored.to_owned()
            } else {
                given.trim().to_owned()
            }
        };
        let title = pick("title", &request.title, &before.title);
        let body = pick("body", &request.body, &before.body);
        checked(domain::check_text(&title, &body))?;
        let rating = new_rating.unwrap_or(before.rating);
        let after = store::update_text(&mut tx, id, rating, &title, &body).await?;
        let product_rating = store::recount(&mut tx, &after.product_id).await?;
        events::updated(&mut tx, &after, before.rating, product_rating).await?;
        tx.commit().await.map_err(Error::Write)?;
        Ok(Response::new(to_proto(after)))
    }

    async fn get_review(
        &self,
        request: Request<pb::GetReviewRequest>,
    ) -> Result<Response<pb::Review>, Status> {
        let id = review_id(&request.into_inner().review_id)?;
        let mut conn = self.pool.acquire().await.map_err(Error::Read)?;
        let review = store::find(&mut conn, id, false)
            .await?
            .filter(|review| review.status() != ReviewStatus::Removed)
            .ok_or(Error::ReviewNotFound)?;
        Ok(Response::new(to_proto(review)))
    }

    async fn list_product_reviews(
        &self,
        request: Request<pb::ListProductReviewsRequest>,
    ) -> Result<Response<pb::ListProductReviewsResponse>, Status> {
        let request = request.into_inner();
        let product_id = required("product_id", &request.product_id)?;
        let rating = match request.rating {
            0 => 0,
            stars => checked(domain::check_rating(stars))?,
        };
        let sort = pb::ReviewSort::try_from(request.sort)
            .map_err(|_| Error::InvalidRequest { field: "sort", problem: "is not a known sort" })?;
        let page = checked(domain::page(request.page_size, &request.page_token))?;
        let mut conn = self.pool.acquire().await.map_err(Error::Read)?;
        let order_by = domain::order_by(sort);
        let mut reviews =
            store::list_for_product(&mut conn, product_id, rating, order_by, page.size, page.offset).await?;
        let more = reviews.len() as i64 > page.size;
        reviews.truncate(usize::try_from(page.size).unwrap_or(usize::MAX));
        let counts = store::count_by_stars(&mut conn, product_id).await?;
        let summary = pb::RatingSummary {
            review_count: counts.iter().sum(),
            stars_total: counts.iter().zip(1..).map(|(count, stars)| count * stars).sum(),
            count_by_stars: counts.to_vec(),
        };
        Ok(Response::new(pb::ListProductReviewsResponse {
            reviews: reviews.into_iter().map(to_proto).collect(),
            next_page_token: page.next_token(more),
            summary: Some(summary),
        }))
    }

    async fn vote_helpful(
        &self,
        request: Request<pb::VoteHelpfulRequest>,
    ) -> Result<Response<pb::Review>, Status> {
        let request = request.into_inner();
        let user_id = required("user_id", &request.user_id)?;
        let id = review_id(&request.review_id)?;
        let mut tx = self.pool.begin().await.map_err(Error::Write)?;
        let review = store::find(&mut tx, id, true)
            .await?
            .filter(|review| review.status() != ReviewStatus::Removed)
            .ok_or(Error::ReviewNotFound)?;
        if review.user_id == user_id {
            return Err(Error::InvalidRequest { field: "review_id", problem: "is your own review" }.into());
        }
        let review = store::vote_helpful(&mut tx, id, user_id).await?;
        tx.commit().await.map_err(Error::Write)?;
        Ok(Response::new(to_proto(review)))
    }

    async fn report_review(
        &self,
        request: Request<pb::ReportReviewRequest>,
    ) -> Result<Response<pb::Review>, Status> {
        let request = request.into_inner();
        let user_id = required("user_id", &request.user_id)?;
        let id = review_id(&request.review_id)?;
        let reason = request.reason.trim();
        checked(domain::check_reason(reason))?;
        let mut tx = self.pool.begin().await.map_err(Error::Write)?;
        let review = store::find(&mut tx, id, true)
            .await?
            .filter(|review| review.status() != ReviewStatus::Removed)
            .ok_or(Error::ReviewNotFound)?;
        if review.user_id == user_id {
            return Err(Error::InvalidRequest { field: "review_id", problem: "is your own review" }.into());
        }
        let review = match store::report(&mut tx, id, user_id, reason).await? {
            Some(flagged) => {
                events::flagged(&mut tx, &flagged, user_id, reason).await?;
                flagged
            }
            // Reported by this user before: it counts once.
            None => review,
        };
        tx.commit().await.map_err(Error::Write)?;
        Ok(Response::new(to_proto(review)))
    }

    async fn list_moderation_queue(
        &self,
        request: Request<pb::ListModerationQueueRequest>,
    ) -> Result<Response<pb::ListModerationQueueResponse>, Status> {
        let request = request.into_inner();
        let page = checked(domain::page(request.page_size, &request.page_token))?;
        let mut conn = self.pool.acquire().await.map_err(Error::Read)?;
        let mut reviews = store::queue(&mut conn, page.size, page.offset).await?;
        let more = reviews.len() as i64 > page.size;
        reviews.truncate(usize::try_from(page.size).unwrap_or(usize::MAX));
        let ids: Vec<Uuid> = reviews.iter().map(|review| review.id).collect();
        let mut reports: HashMap<Uuid, Vec<pb::Report>> = HashMap::new();
        for report in store::open_reports(&mut conn, &ids).await? {
            reports.entry(report.review_id).or_default().push(pb::Report {
                user_id: report.user_id,
                reason: report.reason,
                created_at: Some(timestamp(report.created_at)),
            });
        }
        let entries = reviews
            .into_iter()
            .map(|review| pb::QueuedReview {
                reports: reports.remove(&review.id).unwrap_or_default(),
                review: Some(to_proto(review)),
            })
            .collect();
        Ok(Response::new(pb::ListModerationQueueResponse { entries, next_page_token: page.next_token(more) }))
    }

    async fn moderate_review(
        &self,
        request: Request<pb::ModerateReviewRequest>,
    ) -> Result<Response<pb::Review>, Status> {
        let request = request.into_inner();
        let moderator_id = required("moderator_id", &request.moderator_id)?;
        let id = review_id(&request.review_id)?;
        let note = request.note.trim();
        checked(domain::check_note(note))?;
        let mut tx = self.pool.begin().await.map_err(Error::Write)?;
        let before = self.lock_review(&mut tx, id).await?;
        if before.status() == ReviewStatus::Removed {
            return Err(Error::ReviewRemoved.into());
        }
        let after = store::moderate(&mut tx, id, request.remove).await?;
        let rating = store::recount(&mut tx, &after.product_id).await?;
        events::moderated(&mut tx, &after, moderator_id, note, rating).await?;
        tx.commit().await.map_err(Error::Write)?;
        tracing::info!(review_id = %id, moderator_id, removed = request.remove, "review moderated");
        Ok(Response::new(to_proto(after)))
    }

    async fn list_user_reviews(
        &self,
        request: Request<pb::ListUserReviewsRequest>,
    ) -> Result<Response<pb::ListUserReviewsResponse>, Status> {
        Ok(Response::new(self.user_reviews(request.into_inner()).await?))
    }
}

impl ReviewGrpc {
    /// [`ReviewService::list_user_reviews`], outside the trait so that the
    /// trait's body stays a table of the RPCs.
    async fn user_reviews(
        &self,
        request: pb::ListUserReviewsRequest,
    ) -> Result<pb::ListUserReviewsResponse, Error> {
        let user_id = required("user_id", &request.user_id)?;
        let page = checked(domain::page(request.page_size, &request.page_token))?;
        let mut conn = self.pool.acquire().await.map_err(Error::Read)?;
        let mut reviews = store::list_for_user(&mut conn, user_id, page.size, page.offset).await?;
        let more = reviews.len() as i64 > page.size;
        reviews.truncate(usize::try_from(page.size).unwrap_or(usize::MAX));
        Ok(pb::ListUserReviewsResponse {
            reviews: reviews.into_iter().map(to_proto).collect(),
            next_page_token: page.next_token(more),
        })
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = crate::error_chain(&error);
        match &error {
            Error::InvalidRequest { .. } => Status::invalid_argument(message),
            Error::NotAVerifiedBuyer { .. } => Status::permission_denied(message),
            Error::AlreadyReviewed { .. } => Status::already_exists(message),
            Error::ReviewNotFound => Status::not_found(message),
            Error::ReviewRemoved => Status::failed_precondition(message),
            _ if error.is_transient() => Status::unavailable(message),
            _ => {
                tracing::error!(error = %message, "reviews request failed");
                Status::internal("internal error")
            }
        }
    }
}
