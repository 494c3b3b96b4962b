//! The order service alone against real Postgres and Kafka: placement priced
//! by an in-process catalog, and the saga driven by events published the way
//! inventory, payment and shipping publish them.

mod support;

use commerce_proto::events::v1 as ev;
use commerce_proto::order::v1 as pb;
use support::catalog::{self, product};
use support::harness::{OrderService, place_request, timestamp_in};
use support::{count_events, drop_kafka_namespace, eventually, init_logging, kafka_namespace, publish};
use tokio_util::sync::CancellationToken;

struct Env {
    prefix: String,
    order: OrderService,
    catalog_port: u16,
    catalog_stop: CancellationToken,
}

async fn env() -> anyhow::Result<Env> {
    init_logging();
    let prefix = kafka_namespace().await?;
    let catalog_stop = CancellationToken::new();
    let catalog_port = catalog::start(
        vec![
            product("apple", 150, true),
            product("pear", 1999, true),
            product("retired", 500, false),
            product("bullion", i64::MAX / 2, true),
        ],
        catalog_stop.clone(),
    )
    .await?;
    let order = OrderService::start(&prefix, catalog_port).await?;
    Ok(Env { prefix, order, catalog_port, catalog_stop })
}

impl Env {
    async fn stop(self) -> anyhow::Result<()> {
        self.catalog_stop.cancel();
        self.order.stop().await?;
        drop_kafka_namespace(&self.prefix).await;
        Ok(())
    }

    async fn place(&self, user: &str, key: &str, lines: &[(&str, u32)]) -> anyhow::Result<pb::Order> {
        let response =
            self.order.client.clone().place_order(place_request(user, key, lines, "tok_ok")).await?;
        response.into_inner().order.ok_or_else(|| anyhow::anyhow!("no order"))
    }

    /// Publishes StockReserved for the order; returns the event's id.
    async fn reserve(&self, order_id: &str, expires_in_seconds: i64) -> anyhow::Result<uuid::Uuid> {
        publish(
            &self.prefix,
            &ev::StockReserved {
                order_id: order_id.to_owned(),
                reservation_id: format!("res-{order_id}"),
                lines: vec![],
                expires_at: Some(timestamp_in(expires_in_seconds)),
                occurred_at: Some(timestamp_in(0)),
            },
        )
        .await
    }

    /// Publishes PaymentCaptured for the order; returns the event's id.
    async fn capture(&self, order_id: &str) -> anyhow::Result<uuid::Uuid> {
        publish(
            &self.prefix,
            &ev::PaymentCaptured {
                order_id: order_id.to_owned(),
                payment_id: format!("pay-{order_id}"),
                occurred_at: Some(timestamp_in(0)),
                ..Default::default()
            },
        )
        .await
    }

    /// Waits until the order service has recorded event `id` as processed:
    /// whatever it did about it is committed (in the same transaction).
    async fn wait_processed(&self, id: uuid::Uuid) -> anyhow::Result<()> {
        let pool = self.order.database.pool().await?;
        eventually(&format!("event {id} recorded as processed"), || {
            let pool = pool.clone();
            async move {
                let found: Option<i32> = sqlx::query_scalar(
                    "SELECT 1 FROM commerce_platform.processed_events WHERE event_id = $1",
                )
                .bind(id)
                .fetch_optional(&pool)
                .await?;
                Ok(found.map(|_| ()))
            }
        })
        .await
    }

    /// How many events of type `E` about `key` the order service has written
    /// to its outbox, published or not.
    async fn written<E: commerce_proto::events::EventPayload>(&self, key: &str) -> anyhow::Result<i64> {
        let pool = self.order.database.pool().await?;
        let count = sqlx::query_scalar(
            "SELECT count(*) FROM commerce_platform.outbox WHERE event_type = $1 AND key = $2",
        )
        .bind(E::TYPE)
        .bind(key)
        .fetch_one(&pool)
        .await?;
        Ok(count)
    }

    /// Waits until exactly `expected` events of type `E` about `key` are on
    /// their topic (the relay publishes asynchronously).
    async fn wait_for_events<E: commerce_proto::events::EventPayload>(
        &self,
        key: &str,
        expected: usize,
    ) -> anyhow::Result<()> {
        eventually(&format!("{expected} {} for {key}", E::TYPE), || async move {
            let count = count_events::<E>(&self.prefix, key).await?;
            anyhow::ensure!(count <= expected, "{count} {} for {key}, expected {expected}", E::TYPE);
            Ok((count == expected).then_some(()))
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placing_an_order_prices_it_from_the_catalog_and_is_idempotent() -> anyhow::Result<()> {
    let env = env().await?;
    let order = env.place("u1", "key-1", &[("apple", 2), ("pear", 1), ("apple", 1)]).await?;
    assert_eq!(order.status(), pb::OrderStatus::Pending);
    assert_eq!(
        order.total.as_ref().map(|total| total.units),
        Some(3 * 150 + 1999),
        "catalog prices, merged lines"
    );
    assert_eq!(order.lines.len(), 2);
    assert_eq!(order.lines[0].sku, "SKU-apple");

    let again = env.place("u1", "key-1", &[("pear", 1), ("apple", 3)]).await?;
    assert_eq!(again.id, order.id, "a retry returns the same order");

    let reused =
        env.order.client.clone().place_order(place_request("u1", "key-1", &[("apple", 1)], "tok_ok")).await;
    assert_eq!(reused.expect_err("different lines").code(), tonic::Code::AlreadyExists);

    // Unknown, retired, or so dear that the total overflows: refused as a
    // precondition on the catalog's state (the gateway answers 422).
    for (product_id, quantity, needle) in
        [("ghost", 1, "ghost"), ("retired", 1, "retired"), ("bullion", 3, "overflows")]
    {
        let status = env
            .order
            .client
            .clone()
            .place_order(place_request(
                "u1",
                &format!("key-{product_id}"),
                &[(product_id, quantity)],
                "tok_ok",
            ))
            .await
            .expect_err("bad product");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains(needle), "{}", status.message());
    }
    let status = env
        .order
        .client
        .clone()
        .place_order(place_request("u1", "key-zero", &[("apple", 0)], "tok_ok"))
        .await
        .expect_err("zero quantity");
    assert!(status.message().contains("lines[0].quantity"), "{}", status.message());

    env.wait_for_events::<ev::OrderPlaced>(&order.id, 1).await?;
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_confirms_once_whichever_of_payment_and_reservation_comes_first() -> anyhow::Result<()> {
    let env = env().await?;
    let reserved_first = env.place("u2", "a", &[("apple", 1)]).await?;
    let paid_first = env.place("u2", "b", &[("pear", 1)]).await?;
    // The open-orders gauges (counted every 15 s in the service; here once,
    // on its database): two orders pending.
    let gauges =
        commerce_order::metrics::SagaMetrics::register(&commerce_platform::admin::Metrics::new("order"));
    gauges.count_open(&env.order.database.pool().await?).await?;
    let open = gauges.open("pending");
    assert_eq!(open, 2, "open pending orders");
    let age = gauges.oldest_open_age();
    assert!(age > 0.0 && age < 60.0, "the oldest open order waited {age} s");

    env.reserve(&reserved_first.id, 900).await?;
    env.order.wait_for_status(&reserved_first.id, pb::OrderStatus::Reserved).await?;
    env.capture(&reserved_first.id).await?;

    env.capture(&paid_first.id).await?;
    let second_capture = env.capture(&paid_first.id).await?; // a second delivery with a new id
    env.reserve(&paid_first.id, 900).await?;

    for order in [&reserved_first, &paid_first] {
        let confirmed = env.order.wait_for_status(&order.id, pb::OrderStatus::Confirmed).await?;
        assert_eq!(confirmed.reservation_id, format!("res-{}", order.id));
        assert_eq!(confirmed.payment_id, format!("pay-{}", order.id));
    }
    let late_reservation = env.reserve(&paid_first.id, 900).await?; // late duplicate
    // Only once both duplicates are recorded as processed is "one
    // confirmation" a finding: before that, a second one could still come.
    for duplicate in [second_capture, late_reservation] {
        env.wait_processed(duplicate).await?;
    }
    for order in [&reserved_first, &paid_first] {
        assert_eq!(env.written::<ev::OrderConfirmed>(&order.id).await?, 1, "{}", order.id);
        env.wait_for_events::<ev::OrderConfirmed>(&order.id, 1).await?;
    }
    // Two confirmations counted, whatever the duplicates; none open any more.
    assert_eq!(env.order.metric("commerce_order_saga_outcomes_total{outcome=\"confirmed\"}").await?, 2.0);
    gauges.count_open(&env.order.database.pool().await?).await?;
    assert_eq!((gauges.open("pending"), gauges.open("reserved")), (0, 0));
    assert_eq!(gauges.oldest_open_age(), 0.0);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stock_rejects_and_a_declined_payment_fails_the_order() -> anyhow::Result<()> {
    let env = env().await?;
    let rejected = env.place("u3", "a", &[("apple", 1)]).await?;
    let declined = env.place("u3", "b", &[("apple", 1)]).await?;
    publish(
        &env.prefix,
        &ev::StockReservationFailed {
            order_id: rejected.id.clone(),
            shortfalls: vec![],
            occurred_at: Some(timestamp_in(0)),
        },
    )
    .await?;
    env.reserve(&declined.id, 900).await?;
    publish(
        &env.prefix,
        &ev::PaymentFailed {
            order_id: declined.id.clone(),
            reason: ev::payment_failed::Reason::Declined.into(),
            detail: "card declined".to_owned(),
            occurred_at: Some(timestamp_in(0)),
            ..Default::default()
        },
    )
    .await?;
    env.order.wait_for_status(&rejected.id, pb::OrderStatus::Rejected).await?;
    let failed = env.order.wait_for_status(&declined.id, pb::OrderStatus::Failed).await?;
    assert!(failed.failure_reason.contains("card declined"), "{}", failed.failure_reason);
    env.wait_for_events::<ev::OrderRejected>(&rejected.id, 1).await?;
    env.wait_for_events::<ev::OrderFailed>(&declined.id, 1).await?;
    // Each outcome counted once, with its duration.
    for outcome in ["rejected", "failed"] {
        let series = format!("commerce_order_saga_outcomes_total{{outcome=\"{outcome}\"}}");
        assert_eq!(env.order.metric(&series).await?, 1.0, "{series}");
        let series = format!("commerce_order_saga_duration_seconds_count{{outcome=\"{outcome}\"}}");
        assert_eq!(env.order.metric(&series).await?, 1.0, "{series}");
    }
    assert_eq!(env.order.metric("commerce_order_saga_outcomes_total{outcome=\"confirmed\"}").await?, 0.0);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_reservation_fails_the_order_and_a_late_payment_changes_nothing() -> anyhow::Result<()> {
    let env = env().await?;
    let order = env.place("u4", "a", &[("apple", 1)]).await?;
    env.reserve(&order.id, 1).await?;
    let failed = env.order.wait_for_status(&order.id, pb::OrderStatus::Failed).await?;
    assert!(failed.failure_reason.contains("expired"), "{}", failed.failure_reason);
    env.capture(&order.id).await?;
    let late = eventually("the late payment to be recorded", || async {
        let order = env.order.get(&order.id).await?;
        Ok((!order.payment_id.is_empty()).then_some(order))
    })
    .await?;
    assert_eq!(late.status(), pb::OrderStatus::Failed, "a late capture does not revive the order");
    env.wait_for_events::<ev::OrderFailed>(&order.id, 1).await?;
    assert_eq!(count_events::<ev::OrderConfirmed>(&env.prefix, &order.id).await?, 0);
    // Failed by the sweeper, counted once: the late capture moved nothing.
    assert_eq!(env.order.metric("commerce_order_saga_outcomes_total{outcome=\"failed\"}").await?, 1.0);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_is_allowed_until_shipment_and_orders_list_page_by_page() -> anyhow::Result<()> {
    let env = env().await?;
    let pending = env.place("u5", "a", &[("apple", 1)]).await?;
    let shipped = env.place("u5", "b", &[("apple", 1)]).await?;
    let _third = env.place("u5", "c", &[("pear", 1)]).await?;
    let mut client = env.order.client.clone();

    let denied = client
        .cancel_order(pb::CancelOrderRequest {
            id: pending.id.clone(),
            reason: "x".to_owned(),
            user_id: "intruder".to_owned(),
        })
        .await
        .expect_err("not theirs");
    assert_eq!(denied.code(), tonic::Code::NotFound);
    for _ in 0..2 {
        let cancelled = client
            .cancel_order(pb::CancelOrderRequest {
                id: pending.id.clone(),
                reason: "changed my mind".to_owned(),
                user_id: "u5".to_owned(),
            })
            .await?
            .into_inner()
            .order
            .expect("order");
        assert_eq!(cancelled.status(), pb::OrderStatus::Cancelled, "cancelling twice is idempotent");
    }
    env.wait_for_events::<ev::OrderCancelled>(&pending.id, 1).await?;
    // Cancelled twice, counted once.
    assert_eq!(env.order.metric("commerce_order_saga_outcomes_total{outcome=\"cancelled\"}").await?, 1.0);

    env.reserve(&shipped.id, 900).await?;
    env.capture(&shipped.id).await?;
    env.order.wait_for_status(&shipped.id, pb::OrderStatus::Confirmed).await?;
    let mut moving = ev::ShipmentStatusChanged {
        shipment_id: "ship-1".to_owned(),
        order_id: shipped.id.clone(),
        user_id: "u5".to_owned(),
        occurred_at: Some(timestamp_in(0)),
        ..Default::default()
    };
    moving.set_status(ev::ShipmentStatus::PickedUp);
    publish(&env.prefix, &moving).await?;
    env.order.wait_for_status(&shipped.id, pb::OrderStatus::Shipped).await?;
    let refused = client
        .cancel_order(pb::CancelOrderRequest {
            id: shipped.id.clone(),
            reason: "late".to_owned(),
            user_id: String::new(),
        })
        .await
        .expect_err("shipped");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    publish(
        &env.prefix,
        &ev::ShipmentDelivered {
            shipment_id: "ship-1".to_owned(),
            order_id: shipped.id.clone(),
            user_id: "u5".to_owned(),
            occurred_at: Some(timestamp_in(0)),
            ..Default::default()
        },
    )
    .await?;
    let delivered = env.order.wait_for_status(&shipped.id, pb::OrderStatus::Delivered).await?;
    assert_eq!(delivered.shipment_id, "ship-1");
    env.wait_for_events::<ev::OrderDelivered>(&shipped.id, 1).await?;

    let first = client
        .list_orders(pb::ListOrdersRequest { user_id: "u5".to_owned(), page_size: 2, ..Default::default() })
        .await?
        .into_inner();
    assert_eq!(first.total_size, 3);
    assert_eq!(first.orders.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = client
        .list_orders(pb::ListOrdersRequest {
            user_id: "u5".to_owned(),
            page_size: 2,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(second.orders.len(), 1);
    assert!(second.next_page_token.is_empty());
    let mut ids: Vec<String> =
        first.orders.iter().chain(&second.orders).map(|order| order.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "pages do not overlap");
    let others = client
        .list_orders(pb::ListOrdersRequest { user_id: "someone-else".to_owned(), ..Default::default() })
        .await?
        .into_inner();
    assert_eq!(others.total_size, 0, "a user sees only their own orders");
    env.stop().await
}

/// The next message of a watch stream, within 10 s.
async fn next_change(
    stream: &mut tonic::Streaming<pb::OrderStatusChange>,
) -> anyhow::Result<Option<pb::OrderStatusChange>> {
    Ok(tokio::time::timeout(std::time::Duration::from_secs(10), stream.message()).await??)
}

fn seen(change: &pb::OrderStatusChange) -> (u64, pb::OrderStatus) {
    (change.version, change.status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_one_replica_streams_every_change_made_through_another_and_resumes_after_a_version()
-> anyhow::Result<()> {
    let env = env().await?;
    let replica = env.order.replica(&env.prefix, env.catalog_port).await?;
    let watch = |user: &str, order: &str, after: u64| pb::WatchOrdersRequest {
        user_id: user.to_owned(),
        order_id: order.to_owned(),
        after_version: after,
    };
    let earlier = env.place("u7", "earlier", &[("pear", 1)]).await?;
    // Every order of u7, on the replica: the snapshot holds the earlier one.
    let mut everything = replica.client.clone().watch_orders(watch("u7", "", 0)).await?.into_inner();
    let first = next_change(&mut everything).await?.expect("the snapshot");
    assert_eq!((first.order_id.as_str(), seen(&first)), (earlier.id.as_str(), (1, pb::OrderStatus::Pending)));

    let order = env.place("u7", "watched", &[("apple", 1)]).await?;
    let mut stream = replica.client.clone().watch_orders(watch("u7", &order.id, 0)).await?.into_inner();
    let placed = next_change(&mut stream).await?.expect("the placement");
    assert_eq!(seen(&placed), (1, pb::OrderStatus::Pending), "the history starts at the placement");
    assert_eq!(placed.user_id, "u7");

    // Another user's order reads as missing; a watch needs an order or a user.
    let intruder =
        replica.client.clone().watch_orders(watch("u8", &order.id, 0)).await.expect_err("not theirs");
    assert_eq!(intruder.code(), tonic::Code::NotFound);
    let firehose = replica.client.clone().watch_orders(watch("", "", 0)).await.expect_err("no filter");
    assert_eq!(firehose.code(), tonic::Code::InvalidArgument);

    // Driven by events the first replica or the replica consumes, committed
    // by whichever: the watch on the replica sees each change in order.
    let started = std::time::Instant::now();
    env.reserve(&order.id, 900).await?;
    let reserved = next_change(&mut stream).await?.expect("reserved");
    assert_eq!(seen(&reserved), (2, pb::OrderStatus::Reserved));
    env.capture(&order.id).await?;
    let confirmed = next_change(&mut stream).await?.expect("confirmed");
    assert_eq!(seen(&confirmed), (3, pb::OrderStatus::Confirmed));
    eprintln!("placed -> confirmed seen live in {:?}", started.elapsed());
    // Cancelled through the first replica: terminal, so the stream ends.
    env.order
        .client
        .clone()
        .cancel_order(pb::CancelOrderRequest {
            id: order.id.clone(),
            reason: "changed my mind".to_owned(),
            user_id: "u7".to_owned(),
        })
        .await?;
    let cancelled = next_change(&mut stream).await?.expect("cancelled");
    assert_eq!(seen(&cancelled), (4, pb::OrderStatus::Cancelled));
    assert_eq!(cancelled.failure_reason, "changed my mind");
    assert_eq!(next_change(&mut stream).await?, None, "the stream ends after a terminal status");

    // The user's watch saw the same changes of the new order, in order.
    let mut of_order = Vec::new();
    while of_order.len() < 4 {
        let change = next_change(&mut everything).await?.expect("a change");
        if change.order_id == order.id {
            of_order.push(seen(&change));
        }
    }
    assert_eq!(
        of_order,
        [
            (1, pb::OrderStatus::Pending),
            (2, pb::OrderStatus::Reserved),
            (3, pb::OrderStatus::Confirmed),
            (4, pb::OrderStatus::Cancelled)
        ]
    );

    // A client that reconnects after version 2 gets the rest, on either replica.
    for client in [env.order.client.clone(), replica.client.clone()] {
        let mut resumed = client.clone().watch_orders(watch("u7", &order.id, 2)).await?.into_inner();
        let mut rest = Vec::new();
        while let Some(change) = next_change(&mut resumed).await? {
            rest.push(seen(&change));
        }
        assert_eq!(rest, [(3, pb::OrderStatus::Confirmed), (4, pb::OrderStatus::Cancelled)]);
    }
    drop(everything);
    replica.stop().await?;
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_users_orders_keep_their_lines_and_amounts_and_only_the_country_of_the_address()
-> anyhow::Result<()> {
    let env = env().await?;
    let first = env.place("leaving", "key-1", &[("apple", 2)]).await?;
    let second = env.place("leaving", "key-2", &[("pear", 1)]).await?;
    let other = env.place("staying", "key-1", &[("apple", 1)]).await?;
    publish(
        &env.prefix,
        &ev::UserErased { user_id: "leaving".to_owned(), occurred_at: Some(timestamp_in(0)) },
    )
    .await?;

    let bare = commerce_proto::common::v1::Address {
        country_code: support::harness::address().country_code,
        ..Default::default()
    };
    let read = |id: String| {
        let mut client = env.order.client.clone();
        async move {
            let order = client.get_order(pb::GetOrderRequest { id }).await?.into_inner().order;
            order.ok_or_else(|| anyhow::anyhow!("no order"))
        }
    };
    eventually("the erased user's orders to lose their addresses", || async {
        let (first, second) = (read(first.id.clone()).await?, read(second.id.clone()).await?);
        Ok((first.shipping_address.as_ref() == Some(&bare)
            && second.shipping_address.as_ref() == Some(&bare))
        .then_some(()))
    })
    .await?;
    let kept = read(first.id.clone()).await?;
    assert_eq!((kept.user_id.as_str(), kept.lines.len()), ("leaving", 1), "the order and its lines stay");
    assert_eq!(kept.total, first.total, "and its amount");
    let untouched = read(other.id.clone()).await?;
    assert_eq!(
        untouched.shipping_address,
        Some(support::harness::address()),
        "another user's order is untouched"
    );
    env.stop().await
}
