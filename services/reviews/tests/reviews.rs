//! The reviews service against a real Postgres: only a buyer whose order
//! was delivered reviews, once; lists filter, sort and page; reports fill the
//! moderation queue and a removal takes the review out of the rating; every
//! change publishes the product's whole rating with a growing version, also
//! under concurrent reviews of one product.

mod support;

use chrono::Utc;
use commerce_proto::events::EventPayload;
use commerce_proto::events::v1 as ev;
use commerce_proto::reviews::v1 as pb;
use commerce_proto::reviews::v1::review_service_server::ReviewService;
use commerce_reviews::grpc::ReviewGrpc;
use commerce_reviews::store;
use prost::Message;
use support::{TestDatabase, outbox};
use tonic::{Code, Request};

const PRODUCT: &str = "0191e3a4-0000-7000-8000-000000000001";

async fn service() -> anyhow::Result<(TestDatabase, ReviewGrpc)> {
    let database = TestDatabase::create_with_pool_size("reviews", &commerce_reviews::MIGRATOR, 12).await?;
    let grpc = ReviewGrpc::new(database.pool.clone());
    Ok((database, grpc))
}

/// `user` ordered `products` in `order` and it was delivered.
async fn delivered(
    database: &TestDatabase,
    order: &str,
    user: &str,
    products: &[&str],
) -> anyhow::Result<()> {
    let mut conn = database.pool.acquire().await?;
    let products: Vec<String> = products.iter().map(|p| (*p).to_owned()).collect();
    store::record_placed(&mut conn, order, user, &products, Utc::now()).await?;
    store::record_delivered(&mut conn, order, Utc::now()).await?;
    Ok(())
}

fn create(user: &str, product: &str, rating: i32, title: &str) -> Request<pb::CreateReviewRequest> {
    Request::new(pb::CreateReviewRequest {
        user_id: user.to_owned(),
        product_id: product.to_owned(),
        rating,
        title: title.to_owned(),
        body: format!("{title}, said {user}"),
    })
}

/// The product ratings the outbox carries, in order: (type, count, total, version).
async fn published_ratings(database: &TestDatabase) -> anyhow::Result<Vec<(String, i64, i64, i64)>> {
    let mut ratings = Vec::new();
    for row in outbox(&database.pool).await? {
        assert_eq!(row.topic, "commerce.reviews.v1");
        let rating = match row.event_type.as_str() {
            ev::ReviewCreated::TYPE => ev::ReviewCreated::decode(row.payload.as_slice())?.product_rating,
            ev::ReviewUpdated::TYPE => ev::ReviewUpdated::decode(row.payload.as_slice())?.product_rating,
            ev::ReviewModerated::TYPE => ev::ReviewModerated::decode(row.payload.as_slice())?.product_rating,
            _ => continue,
        }
        .expect("every rating event carries the product's rating");
        let short = row.event_type.trim_start_matches("commerce.events.v1.").to_owned();
        ratings.push((short, rating.review_count, rating.stars_total, rating.version));
    }
    Ok(ratings)
}

#[tokio::test]
async fn only_a_buyer_whose_order_was_delivered_reviews_the_product_once_and_edits_it() -> anyhow::Result<()>
{
    let (database, grpc) = service().await?;

    let refused = grpc.create_review(create("u1", PRODUCT, 5, "Great")).await.expect_err("no purchase yet");
    assert_eq!(refused.code(), Code::PermissionDenied, "{}", refused.message());
    assert!(refused.message().contains(PRODUCT), "{}", refused.message());

    // Placed but cancelled before delivery: still no purchase.
    let mut conn = database.pool.acquire().await?;
    store::record_placed(&mut conn, "o-cancelled", "u1", &[PRODUCT.to_owned()], Utc::now()).await?;
    store::forget_placed(&mut conn, "o-cancelled").await?;
    assert_eq!(store::record_delivered(&mut conn, "o-cancelled", Utc::now()).await?, 0);
    drop(conn);
    let refused = grpc.create_review(create("u1", PRODUCT, 5, "Great")).await.expect_err("cancelled");
    assert_eq!(refused.code(), Code::PermissionDenied);

    delivered(&database, "o1", "u1", &[PRODUCT, "other-product"]).await?;
    let bad = grpc.create_review(create("u1", PRODUCT, 6, "Great")).await.expect_err("six stars");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("rating:"), "{}", bad.message());

    let review = grpc.create_review(create("u1", PRODUCT, 5, "Great")).await?.into_inner();
    assert_eq!((review.rating, review.status()), (5, pb::ReviewStatus::Published));
    let again = grpc.create_review(create("u1", PRODUCT, 4, "Again")).await.expect_err("one per product");
    assert_eq!(again.code(), Code::AlreadyExists);
    assert!(again.message().contains(&review.id), "names the review to edit: {}", again.message());

    let edit = |user: &str, rating: i32, clear: &[&str]| {
        Request::new(pb::UpdateReviewRequest {
            user_id: user.to_owned(),
            review_id: review.id.clone(),
            rating,
            title: String::new(),
            body: String::new(),
            clear: clear.iter().map(|field| (*field).to_owned()).collect(),
        })
    };
    let stranger = grpc.update_review(edit("u2", 1, &[])).await.expect_err("not the author");
    assert_eq!(stranger.code(), Code::NotFound);
    let edited = grpc.update_review(edit("u1", 3, &["title"])).await?.into_inner();
    assert_eq!((edited.rating, edited.title.as_str()), (3, ""));
    assert_eq!(edited.body, review.body, "a field neither given nor cleared keeps its value");
    let mine = grpc
        .list_user_reviews(Request::new(pb::ListUserReviewsRequest {
            user_id: "u1".to_owned(),
            ..Default::default()
        }))
        .await?
        .into_inner();
    assert_eq!(mine.reviews, [edited], "the author's export lists it");

    assert_eq!(
        published_ratings(&database).await?,
        [("ReviewCreated".to_owned(), 1, 5, 1), ("ReviewUpdated".to_owned(), 1, 3, 2)]
    );
    database.drop_database().await
}

#[tokio::test]
async fn a_product_list_filters_sorts_pages_and_summarises_every_visible_review() -> anyhow::Result<()> {
    let (database, grpc) = service().await?;
    let stars = [5, 4, 4, 2, 1];
    let mut ids = Vec::new();
    for (index, rating) in stars.into_iter().enumerate() {
        let user = format!("buyer-{index}");
        delivered(&database, &format!("o{index}"), &user, &[PRODUCT]).await?;
        ids.push(grpc.create_review(create(&user, PRODUCT, rating, "Review")).await?.into_inner().id);
    }
    // Helpful votes: the two-star review twice (one voter twice), the
    // one-star review once; an author cannot vote for their own.
    for (voter, review) in [("v1", &ids[3]), ("v2", &ids[3]), ("v2", &ids[3]), ("v1", &ids[4])] {
        let vote = pb::VoteHelpfulRequest { user_id: voter.to_owned(), review_id: review.clone() };
        grpc.vote_helpful(Request::new(vote)).await?;
    }
    let own = pb::VoteHelpfulRequest { user_id: "buyer-0".to_owned(), review_id: ids[0].clone() };
    assert_eq!(
        grpc.vote_helpful(Request::new(own)).await.expect_err("own review").code(),
        Code::InvalidArgument
    );

    let list = |rating: i32, sort: pb::ReviewSort, page_size: i32, page_token: &str| {
        Request::new(pb::ListProductReviewsRequest {
            product_id: PRODUCT.to_owned(),
            rating,
            sort: sort as i32,
            page_size,
            page_token: page_token.to_owned(),
        })
    };
    let helpful = grpc.list_product_reviews(list(0, pb::ReviewSort::MostHelpful, 0, "")).await?.into_inner();
    let order: Vec<(i32, i64)> = helpful.reviews.iter().map(|r| (r.rating, r.helpful_count)).collect();
    assert_eq!(order[..2], [(2, 2), (1, 1)]);
    let summary = helpful.summary.expect("a summary");
    assert_eq!((summary.review_count, summary.stars_total), (5, 16));
    assert_eq!(summary.count_by_stars, [1, 1, 0, 2, 1]);

    let fours = grpc.list_product_reviews(list(4, pb::ReviewSort::Newest, 0, "")).await?.into_inner();
    assert_eq!(fours.reviews.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), [&ids[2], &ids[1]]);
    assert_eq!(fours.summary.expect("a summary").review_count, 5, "the summary ignores the filter");

    let lowest = grpc.list_product_reviews(list(0, pb::ReviewSort::LowestRating, 2, "")).await?.into_inner();
    assert_eq!(lowest.reviews.iter().map(|r| r.rating).collect::<Vec<_>>(), [1, 2]);
    let next = grpc
        .list_product_reviews(list(0, pb::ReviewSort::LowestRating, 2, &lowest.next_page_token))
        .await?
        .into_inner();
    assert_eq!(next.reviews.iter().map(|r| r.rating).collect::<Vec<_>>(), [4, 4]);
    let last = grpc
        .list_product_reviews(list(0, pb::ReviewSort::LowestRating, 2, &next.next_page_token))
        .await?
        .into_inner();
    assert_eq!((last.reviews.len(), last.next_page_token.as_str()), (1, ""));

    let bad =
        grpc.list_product_reviews(list(0, pb::ReviewSort::Newest, 0, "abc")).await.expect_err("bad token");
    assert!(bad.message().starts_with("page_token:"), "{}", bad.message());
    database.drop_database().await
}

#[tokio::test]
async fn reports_queue_a_review_and_a_removal_takes_it_out_of_the_list_and_the_rating() -> anyhow::Result<()>
{
    let (database, grpc) = service().await?;
    delivered(&database, "o1", "author", &[PRODUCT]).await?;
    delivered(&database, "o2", "fair", &[PRODUCT]).await?;
    let abusive = grpc.create_review(create("author", PRODUCT, 1, "Rubbish")).await?.into_inner();
    let fair = grpc.create_review(create("fair", PRODUCT, 4, "Fine")).await?.into_inner();

    let report = |user: &str, review: &str, reason: &str| {
        Request::new(pb::ReportReviewRequest {
            user_id: user.to_owned(),
            review_id: review.to_owned(),
            reason: reason.to_owned(),
        })
    };
    let own = grpc.report_review(report("author", &abusive.id, "self")).await.expect_err("own review");
    assert_eq!(own.code(), Code::InvalidArgument);
    let blank = grpc.report_review(report("r1", &abusive.id, "  ")).await.expect_err("no reason");
    assert!(blank.message().starts_with("reason:"), "{}", blank.message());
    let flagged = grpc.report_review(report("r1", &abusive.id, "insults")).await?.into_inner();
    assert_eq!((flagged.status(), flagged.report_count), (pb::ReviewStatus::Flagged, 1));
    let twice = grpc.report_review(report("r1", &abusive.id, "insults again")).await?.into_inner();
    assert_eq!(twice.report_count, 1, "one report per user counts");
    grpc.report_review(report("r2", &abusive.id, "spam")).await?;
    grpc.report_review(report("r1", &fair.id, "disagree")).await?;

    let queue = grpc
        .list_moderation_queue(Request::new(pb::ListModerationQueueRequest::default()))
        .await?
        .into_inner();
    let queued: Vec<(String, Vec<String>)> = queue
        .entries
        .iter()
        .map(|e| {
            (e.review.clone().unwrap_or_default().id, e.reports.iter().map(|r| r.reason.clone()).collect())
        })
        .collect();
    assert_eq!(
        queued,
        [
            (abusive.id.clone(), vec!["insults".to_owned(), "spam".to_owned()]),
            (fair.id.clone(), vec!["disagree".to_owned()])
        ]
    );

    let moderate = |review: &str, remove: bool| {
        Request::new(pb::ModerateReviewRequest {
            moderator_id: "admin".to_owned(),
            review_id: review.to_owned(),
            remove,
            note: "checked".to_owned(),
        })
    };
    let removed = grpc.moderate_review(moderate(&abusive.id, true)).await?.into_inner();
    assert_eq!((removed.status(), removed.report_count), (pb::ReviewStatus::Removed, 0));
    let kept = grpc.moderate_review(moderate(&fair.id, false)).await?.into_inner();
    assert_eq!(kept.status(), pb::ReviewStatus::Published);
    let again = grpc.moderate_review(moderate(&abusive.id, true)).await.expect_err("removed already");
    assert_eq!(again.code(), Code::FailedPrecondition);

    let queue = grpc
        .list_moderation_queue(Request::new(pb::ListModerationQueueRequest::default()))
        .await?
        .into_inner();
    assert!(queue.entries.is_empty(), "moderation settles the queue");
    let gone = grpc.get_review(Request::new(pb::GetReviewRequest { review_id: abusive.id.clone() })).await;
    assert_eq!(gone.expect_err("removed").code(), Code::NotFound);
    let list = grpc
        .list_product_reviews(Request::new(pb::ListProductReviewsRequest {
            product_id: PRODUCT.to_owned(),
            ..Default::default()
        }))
        .await?
        .into_inner();
    assert_eq!(list.reviews.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), [fair.id.as_str()]);
    let edit = pb::UpdateReviewRequest {
        user_id: "author".to_owned(),
        review_id: abusive.id.clone(),
        rating: 5,
        ..Default::default()
    };
    let edit = grpc.update_review(Request::new(edit)).await.expect_err("removed");
    assert_eq!(edit.code(), Code::FailedPrecondition);

    let flagged_events = outbox(&database.pool)
        .await?
        .into_iter()
        .filter(|row| row.event_type == ev::ReviewFlagged::TYPE)
        .count();
    assert_eq!(flagged_events, 3, "one ReviewFlagged per counted report");
    assert_eq!(
        published_ratings(&database).await?,
        [
            ("ReviewCreated".to_owned(), 1, 1, 1),
            ("ReviewCreated".to_owned(), 2, 5, 2),
            ("ReviewModerated".to_owned(), 1, 4, 3),
            ("ReviewModerated".to_owned(), 1, 4, 4),
        ]
    );
    database.drop_database().await
}

#[tokio::test]
async fn concurrent_reviews_of_one_product_publish_every_count_with_distinct_versions() -> anyhow::Result<()>
{
    let (database, grpc) = service().await?;
    let buyers = 10;
    for index in 0..buyers {
        delivered(&database, &format!("o{index}"), &format!("b{index}"), &[PRODUCT]).await?;
    }
    let writes = (0..buyers).map(|index| {
        let grpc = grpc.clone();
        tokio::spawn(
            async move { grpc.create_review(create(&format!("b{index}"), PRODUCT, 4, "Good")).await },
        )
    });
    for write in futures::future::join_all(writes).await {
        write??;
    }
    let mut ratings = published_ratings(&database).await?;
    ratings.sort_by_key(|rating| rating.3);
    // Each change saw every one committed before it: the counts are 1..=10
    // in version order, never a count two writers both published.
    let expected: Vec<(String, i64, i64, i64)> =
        (1..=buyers).map(|n| ("ReviewCreated".to_owned(), n, 4 * n, n)).collect();
    assert_eq!(ratings, expected);
    database.drop_database().await
}

#[tokio::test]
async fn an_erased_users_reviews_and_votes_stay_under_random_authors_and_their_purchases_go()
-> anyhow::Result<()> {
    let (database, grpc) = service().await?;
    for (order, user) in [("o1", "leaving"), ("o2", "staying"), ("o3", "leaving-too")] {
        delivered(&database, order, user, &[PRODUCT]).await?;
    }
    let kept = grpc.create_review(create("staying", PRODUCT, 4, "Solid")).await?.into_inner();
    let gone = grpc.create_review(create("leaving", PRODUCT, 2, "Meh")).await?.into_inner();
    grpc.create_review(create("leaving-too", PRODUCT, 5, "Lovely")).await?;
    // Two users who will both be erased vote for the same review.
    for voter in ["leaving", "leaving-too"] {
        let vote = pb::VoteHelpfulRequest { user_id: voter.to_owned(), review_id: kept.id.clone() };
        grpc.vote_helpful(Request::new(vote)).await?;
    }

    let mut conn = database.pool.acquire().await?;
    assert_eq!(store::anonymise_user(&mut conn, "leaving").await?, 1);
    assert_eq!(store::anonymise_user(&mut conn, "leaving-too").await?, 1);
    assert_eq!(store::anonymise_user(&mut conn, "never-here").await?, 0);

    let authors: Vec<(String, String)> =
        sqlx::query_as("SELECT id::text, user_id FROM reviews ORDER BY created_at")
            .fetch_all(&database.pool)
            .await?;
    assert_eq!(authors.len(), 3, "every review stays: {authors:?}");
    let erased: Vec<&str> =
        authors.iter().filter(|(id, _)| *id != kept.id).map(|(_, user)| user.as_str()).collect();
    assert!(erased.iter().all(|user| user.starts_with("erased:")), "{authors:?}");
    assert_ne!(erased[0], erased[1], "two erased authors are not one");
    assert!(authors.iter().any(|(id, user)| *id == kept.id && user == "staying"), "{authors:?}");
    let voters: Vec<String> =
        sqlx::query_scalar("SELECT user_id FROM helpful_votes").fetch_all(&database.pool).await?;
    assert!(voters.len() == 2 && voters.iter().all(|voter| voter.starts_with("erased:")), "{voters:?}");
    let purchases: Vec<String> =
        sqlx::query_scalar("SELECT user_id FROM purchases").fetch_all(&database.pool).await?;
    assert_eq!(purchases, vec!["staying".to_owned()], "the erased users' purchases went");

    let summary = grpc
        .list_product_reviews(Request::new(pb::ListProductReviewsRequest {
            product_id: PRODUCT.to_owned(),
            ..Default::default()
        }))
        .await?
        .into_inner();
    assert_eq!(summary.reviews.len(), 3, "the product keeps its reviews");
    assert!(summary.reviews.iter().any(|review| review.id == gone.id && review.helpful_count == 0));
    let listed = grpc
        .list_user_reviews(Request::new(pb::ListUserReviewsRequest {
            user_id: "leaving".to_owned(),
            ..Default::default()
        }))
        .await?
        .into_inner();
    assert!(listed.reviews.is_empty(), "nothing is found under the erased user's id");
    database.drop_database().await
}
