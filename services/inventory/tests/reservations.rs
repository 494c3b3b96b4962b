//! Reservations against a real Postgres: concurrency (never oversold),
//! all-or-nothing, the stock arithmetic of every transition, and
//! idempotency per order. Driven through the gRPC handlers (what the cart,
//! admins and tests call) and the store functions the saga consumer uses.

mod support;

use std::time::Duration;

use anyhow::Context;
use commerce_inventory::ReservationSettings;
use commerce_inventory::domain::{Line, ReleaseReason};
use commerce_inventory::grpc::InventoryGrpc;
use commerce_inventory::metrics::InventoryMetrics;
use commerce_inventory::store::{
    self, Adjustment, ReservationKey, ReserveOutcome, ReserveRequest, Transition, TransitionOutcome,
};
use commerce_proto::inventory::v1 as pb;
use commerce_proto::inventory::v1::inventory_service_server::InventoryService;
use futures::future::join_all;
use support::{TestDatabase, counters, outbox_counts, test_database};
use tonic::{Code, Request};

fn grpc(database: &TestDatabase) -> InventoryGrpc {
    InventoryGrpc::new(database.pool.clone(), ReservationSettings::default())
}

async fn set_stock(grpc: &InventoryGrpc, product_id: &str, available: i64) -> anyhow::Result<()> {
    grpc.set_stock(Request::new(pb::SetStockRequest {
        product_id: product_id.to_owned(),
        available,
        note: "test".to_owned(),
    }))
    .await?;
    Ok(())
}

fn reserve_request(order_id: &str, lines: &[(&str, u32)]) -> Request<pb::ReserveRequest> {
    Request::new(pb::ReserveRequest {
        order_id: order_id.to_owned(),
        lines: lines
            .iter()
            .map(|(product_id, quantity)| pb::StockLine {
                product_id: (*product_id).to_owned(),
                quantity: *quantity,
            })
            .collect(),
        ttl: None,
    })
}

fn reservation_of(response: pb::ReserveResponse) -> Option<pb::Reservation> {
    match response.result {
        Some(pb::reserve_response::Result::Reservation(reservation)) => Some(reservation),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_reservations_for_the_last_ten_units_let_exactly_ten_succeed() -> anyhow::Result<()>
{
    support::init_logging();
    let database = test_database(20).await?;
    let metrics = InventoryMetrics::default();
    let grpc = grpc(&database).with_metrics(metrics.clone());
    set_stock(&grpc, "last-ten", 10).await?;

    let attempts = (0..50).map(|i| {
        let grpc = grpc.clone();
        tokio::spawn(
            async move { grpc.reserve(reserve_request(&format!("order-{i}"), &[("last-ten", 1)])).await },
        )
    });
    let mut reserved = 0;
    let mut rejected = 0;
    for outcome in join_all(attempts).await {
        match outcome?.context("reserve call")?.into_inner().result {
            Some(pb::reserve_response::Result::Reservation(_)) => reserved += 1,
            Some(pb::reserve_response::Result::Rejected(rejection)) => {
                assert_eq!(rejection.shortfalls.len(), 1);
                rejected += 1;
            }
            None => anyhow::bail!("a reserve answer without a result"),
        }
    }
    assert_eq!((reserved, rejected), (10, 40));
    assert_eq!((metrics.count("reserved"), metrics.count("rejected")), (10, 40), "counted in the metrics");
    assert_eq!(counters(&database.pool, "last-ten").await?, (0, 10, 0), "available 0, reserved 10, sold 0");
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM reservations WHERE status = 'HELD'")
        .fetch_one(&database.pool)
        .await?;
    assert_eq!(held, 10);
    let events = outbox_counts(&database.pool).await?;
    assert_eq!(events.get("commerce.events.v1.StockReserved"), Some(&10));
    assert_eq!(events.get("commerce.events.v1.StockReservationFailed"), Some(&40));
    database.drop_database().await
}

#[tokio::test]
async fn a_reservation_with_one_short_line_holds_nothing() -> anyhow::Result<()> {
    support::init_logging();
    let database = test_database(5).await?;
    let grpc = grpc(&database);
    set_stock(&grpc, "plenty", 5).await?;
    set_stock(&grpc, "scarce", 1).await?;

    let response = grpc
        .reserve(reserve_request("order-short", &[("plenty", 2), ("scarce", 2), ("never-stocked", 1)]))
        .await?;
    let Some(pb::reserve_response::Result::Rejected(rejection)) = response.into_inner().result else {
        anyhow::bail!("expected a rejection");
    };
    let short: Vec<(String, u32, i64)> =
        rejection.shortfalls.into_iter().map(|s| (s.product_id, s.requested, s.available)).collect();
    assert_eq!(
        short,
        [("never-stocked".to_owned(), 1, 0), ("scarce".to_owned(), 2, 1)],
        "only the short lines"
    );
    assert_eq!(counters(&database.pool, "plenty").await?, (5, 0, 0), "the line that fitted is not held");
    assert_eq!(counters(&database.pool, "scarce").await?, (1, 0, 0));
    let reservations: i64 =
        sqlx::query_scalar("SELECT count(*) FROM reservations").fetch_one(&database.pool).await?;
    assert_eq!(reservations, 0);

    // Asking again for the same order gives the same answer, even after a
    // restock: the order was rejected and stays so.
    set_stock(&grpc, "scarce", 10).await?;
    let again = grpc.reserve(reserve_request("order-short", &[("plenty", 2), ("scarce", 2)])).await?;
    assert!(reservation_of(again.into_inner()).is_none(), "a rejected order is not reserved later");
    assert_eq!(counters(&database.pool, "plenty").await?, (5, 0, 0));
    database.drop_database().await
}

#[tokio::test]
async fn commit_release_and_return_keep_initial_stock_equal_to_available_plus_reserved_plus_sold()
-> anyhow::Result<()> {
    support::init_logging();
    let database = test_database(5).await?;
    let grpc = grpc(&database);
    let product = "widget";
    set_stock(&grpc, product, 20).await?;
    let invariant = |(available, reserved, sold): (i64, i64, i64)| {
        assert_eq!(available + reserved + sold, 20, "initial = available + reserved + sold");
    };

    // Reserve 5 and commit (order confirmed).
    let first = reservation_of(grpc.reserve(reserve_request("o1", &[(product, 5)])).await?.into_inner())
        .context("o1 reserved")?;
    assert_eq!(counters(&database.pool, product).await?, (15, 5, 0));
    let committed = grpc
        .commit_reservation(Request::new(pb::CommitReservationRequest { reservation_id: first.id.clone() }))
        .await?
        .into_inner()
        .reservation
        .context("committed reservation")?;
    assert_eq!(committed.status, pb::ReservationStatus::Committed as i32);
    assert_eq!(counters(&database.pool, product).await?, (15, 0, 5));
    // Committing again changes nothing; releasing a committed one is refused.
    grpc.commit_reservation(Request::new(pb::CommitReservationRequest { reservation_id: first.id.clone() }))
        .await?;
    assert_eq!(counters(&database.pool, product).await?, (15, 0, 5));
    let refused = grpc
        .release_reservation(Request::new(pb::ReleaseReservationRequest {
            reservation_id: first.id.clone(),
            reason: pb::ReleaseReason::PaymentFailed as i32,
        }))
        .await
        .expect_err("a committed reservation cannot be released");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    invariant(counters(&database.pool, product).await?);

    // Reserve 3 and release it (payment failed), twice.
    let second = reservation_of(grpc.reserve(reserve_request("o2", &[(product, 3)])).await?.into_inner())
        .context("o2 reserved")?;
    assert_eq!(counters(&database.pool, product).await?, (12, 3, 5));
    for _ in 0..2 {
        let released = grpc
            .release_reservation(Request::new(pb::ReleaseReservationRequest {
                reservation_id: second.id.clone(),
                reason: pb::ReleaseReason::PaymentFailed as i32,
            }))
            .await?
            .into_inner()
            .reservation
            .context("released reservation")?;
        assert_eq!(released.release_reason, pb::ReleaseReason::PaymentFailed as i32);
    }
    assert_eq!(counters(&database.pool, product).await?, (15, 0, 5));
    let late_commit = grpc
        .commit_reservation(Request::new(pb::CommitReservationRequest { reservation_id: second.id.clone() }))
        .await
        .expect_err("a released reservation cannot be committed");
    assert_eq!(late_commit.code(), Code::FailedPrecondition);

    // The saga's cancellation path: a committed order cancelled returns its
    // sold stock; a held one cancelled releases it. Both idempotent.
    let mut tx = database.pool.begin().await?;
    let outcome = store::transition(&mut tx, ReservationKey::Order("o1"), Transition::Cancel).await?;
    tx.commit().await?;
    let Some(TransitionOutcome::Applied(returned)) = outcome else { anyhow::bail!("o1 should be returned") };
    assert!(returned.was_committed);
    assert_eq!(returned.release_reason, Some(ReleaseReason::Cancelled));
    assert_eq!(counters(&database.pool, product).await?, (20, 0, 0));

    let mut tx = database.pool.begin().await?;
    store::reserve(
        &mut tx,
        ReserveRequest {
            order_id: "o3".to_owned(),
            lines: vec![Line::new(product, 4)],
            ttl: Duration::from_secs(60),
        },
    )
    .await?;
    tx.commit().await?;
    assert_eq!(counters(&database.pool, product).await?, (16, 4, 0));
    for expected_applied in [true, false] {
        let mut tx = database.pool.begin().await?;
        let outcome = store::transition(&mut tx, ReservationKey::Order("o3"), Transition::Cancel).await?;
        tx.commit().await?;
        assert_eq!(matches!(outcome, Some(TransitionOutcome::Applied(_))), expected_applied);
    }
    assert_eq!(counters(&database.pool, product).await?, (20, 0, 0));

    // Restocking adds to available only.
    grpc.restock(Request::new(pb::RestockRequest {
        product_id: product.to_owned(),
        quantity: 7,
        note: "delivery 42".to_owned(),
    }))
    .await?;
    assert_eq!(counters(&database.pool, product).await?, (27, 0, 0));
    let events = outbox_counts(&database.pool).await?;
    assert_eq!(events.get("commerce.events.v1.StockCommitted"), Some(&1));
    assert_eq!(events.get("commerce.events.v1.StockReleased"), Some(&3), "o2 release, o1 return, o3 release");
    database.drop_database().await
}

#[tokio::test]
async fn reserving_the_same_order_twice_makes_one_reservation() -> anyhow::Result<()> {
    support::init_logging();
    let database = test_database(5).await?;
    let mut tx = database.pool.begin().await?;
    store::adjust_stock(&mut tx, "p", Adjustment::Set(10), "").await?;
    tx.commit().await?;

    let request = || ReserveRequest {
        order_id: "same-order".to_owned(),
        lines: vec![Line::new("p", 2), Line::new("p", 1)],
        ttl: Duration::from_secs(900),
    };
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let mut tx = database.pool.begin().await?;
        outcomes.push(store::reserve(&mut tx, request()).await?);
        tx.commit().await?;
    }
    let (ReserveOutcome::Reserved(first), ReserveOutcome::AlreadyReserved(second)) =
        (&outcomes[0], &outcomes[1])
    else {
        anyhow::bail!("expected a reservation then the same one again, got {outcomes:?}");
    };
    assert_eq!(first.id, second.id);
    assert_eq!(first.lines, vec![Line::new("p", 3)], "repeated products are merged");
    assert_eq!(counters(&database.pool, "p").await?, (7, 3, 0), "held once");
    assert_eq!(outbox_counts(&database.pool).await?.get("commerce.events.v1.StockReserved"), Some(&1));
    database.drop_database().await
}

#[tokio::test]
async fn invalid_requests_are_refused_with_invalid_argument_and_unknown_reservations_with_not_found()
-> anyhow::Result<()> {
    support::init_logging();
    let database = test_database(5).await?;
    let grpc = grpc(&database);
    let zero = grpc.reserve(reserve_request("o", &[("p", 0)])).await.expect_err("zero quantity");
    assert_eq!(zero.code(), Code::InvalidArgument);
    let no_order = grpc.reserve(reserve_request("", &[("p", 1)])).await.expect_err("no order id");
    assert_eq!(no_order.code(), Code::InvalidArgument);
    let negative = grpc
        .set_stock(Request::new(pb::SetStockRequest {
            product_id: "p".to_owned(),
            available: -1,
            note: String::new(),
        }))
        .await
        .expect_err("negative stock");
    assert_eq!(negative.code(), Code::InvalidArgument);
    let missing = grpc
        .commit_reservation(Request::new(pb::CommitReservationRequest {
            reservation_id: uuid::Uuid::new_v4().to_string(),
        }))
        .await
        .expect_err("no such reservation");
    assert_eq!(missing.code(), Code::NotFound);

    // A never-stocked product reads as zeros, not NOT_FOUND.
    let stock = grpc
        .get_stock(Request::new(pb::GetStockRequest { product_id: "unknown".to_owned() }))
        .await?
        .into_inner()
        .stock
        .context("stock")?;
    assert_eq!((stock.available, stock.reserved, stock.sold), (0, 0, 0));
    set_stock(&grpc, "p", 3).await?;
    let availability = grpc
        .check_availability(Request::new(pb::CheckAvailabilityRequest {
            lines: vec![
                pb::StockLine { product_id: "p".to_owned(), quantity: 3 },
                pb::StockLine { product_id: "unknown".to_owned(), quantity: 1 },
            ],
        }))
        .await?
        .into_inner();
    let answers: Vec<(bool, i64)> =
        availability.lines.iter().map(|l| (l.available, l.available_quantity)).collect();
    assert_eq!(answers, [(true, 3), (false, 0)]);
    assert!(!availability.all_available);
    database.drop_database().await
}

#[tokio::test]
async fn the_low_stock_list_names_the_products_at_or_under_the_limit_the_fewest_first() -> anyhow::Result<()>
{
    let database = test_database(5).await?;
    let grpc = grpc(&database);
    for (product, available) in [("plenty", 50), ("five", 5), ("none", 0), ("two", 2), ("six", 6)] {
        set_stock(&grpc, product, available).await?;
    }
    let list = |max_available: i64, limit: i32| {
        let grpc = grpc.clone();
        async move {
            let request = Request::new(pb::ListLowStockRequest { max_available, limit });
            anyhow::Ok(grpc.list_low_stock(request).await?.into_inner().stock)
        }
    };
    let low: Vec<(String, i64)> =
        list(5, 0).await?.into_iter().map(|level| (level.product_id, level.available)).collect();
    assert_eq!(low, [("none".to_owned(), 0), ("two".to_owned(), 2), ("five".to_owned(), 5)]);
    assert_eq!(list(5, 2).await?.len(), 2, "the limit holds");
    let refused = grpc
        .list_low_stock(Request::new(pb::ListLowStockRequest { max_available: 5, limit: 101 }))
        .await
        .expect_err("a limit over 100");
    assert_eq!(refused.code(), Code::InvalidArgument);
    database.drop_database().await
}
