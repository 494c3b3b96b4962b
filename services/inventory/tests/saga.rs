//! The inventory service end to end on real Postgres and Kafka: `serve`
//! runs with its consumer and outbox relay; the test produces the order and
//! catalog events the other services would and watches what inventory
//! publishes on its topic.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use commerce_inventory::store::{self, Adjustment};
use commerce_inventory::{Config, ReservationSettings};
use commerce_platform::admin::AdminArgs;
use commerce_platform::config::CommonArgs;
use commerce_platform::db::DatabaseArgs;
use commerce_platform::events::EventProducer;
use commerce_platform::grpc::GrpcArgs;
use commerce_platform::telemetry::LogArgs;
use commerce_proto::events::v1::{
    OrderCancelled, OrderConfirmed, OrderFailed, OrderPlaced, ProductCreated, StockCommitted, StockReleased,
    StockReservationFailed, StockReserved, order_failed, order_placed, stock_released,
};
use commerce_testkit::kafka_args;
use commerce_testkit::{drop_kafka_namespace, event_type, events_of, kafka_namespace, read_topic};
use commerce_topology::{Service, Topic};
use rdkafka::message::Message;
use support::{counters, eventually, produce, test_database};
use tokio_util::sync::CancellationToken;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn order_placed(order_id: &str, product_id: &str, quantity: u32) -> OrderPlaced {
    OrderPlaced {
        order_id: order_id.to_owned(),
        user_id: "user-1".to_owned(),
        lines: vec![order_placed::Line { product_id: product_id.to_owned(), quantity, ..Default::default() }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_consumer_reserves_commits_and_returns_stock_and_publishes_each_step() -> anyhow::Result<()> {
    support::init_logging();
    let prefix = kafka_namespace().await?;
    let kafka = kafka_args(&prefix);
    let names = kafka.names();
    let database = test_database(5).await?;

    let config = Config {
        common: CommonArgs {
            log: LogArgs::default(),
            admin: AdminArgs { addr: loopback() },
            grpc: GrpcArgs { addr: loopback(), shutdown_grace: Duration::from_secs(5) },
        },
        database: DatabaseArgs::new(database.url.clone()),
        kafka: kafka.clone(),
        reservations: ReservationSettings::default(),
    };
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(commerce_inventory::serve(config, shutdown.clone()));
    let producer = EventProducer::new(&kafka)?;
    let inventory_topic = names.topic(Topic::Inventory);
    let pool = database.pool.clone();

    // A new product gets a stock row with zero units.
    produce(&producer, &ProductCreated { product_id: "p-e2e".to_owned(), ..Default::default() }).await?;
    eventually("the product has a stock row", || async {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM stock WHERE product_id = 'p-e2e'")
            .fetch_one(&pool)
            .await?;
        Ok(rows == 1)
    })
    .await?;
    assert_eq!(counters(&pool, "p-e2e").await?, (0, 0, 0));
    let mut tx = pool.begin().await?;
    store::adjust_stock(&mut tx, "p-e2e", Adjustment::Set(5), "initial").await?;
    tx.commit().await?;

    // The same order placed twice (two event ids) holds stock once.
    produce(&producer, &order_placed("o-e2e", "p-e2e", 2)).await?;
    produce(&producer, &order_placed("o-e2e", "p-e2e", 2)).await?;
    produce(&producer, &order_placed("o-short", "p-e2e", 100)).await?;
    eventually("StockReserved for o-e2e is published", || async {
        Ok(events_of::<StockReserved>(&inventory_topic).await?.iter().any(|e| e.order_id == "o-e2e"))
    })
    .await?;
    eventually("StockReservationFailed for o-short is published", || async {
        Ok(events_of::<StockReservationFailed>(&inventory_topic)
            .await?
            .iter()
            .any(|e| e.order_id == "o-short"))
    })
    .await?;
    let group = names.consumer_group(Service::Inventory);
    eventually("all three OrderPlaced are processed", || async {
        let processed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM commerce_platform.processed_events \
             WHERE consumer_group = $1 AND event_type = 'commerce.events.v1.OrderPlaced'",
        )
        .bind(&group)
        .fetch_one(&pool)
        .await?;
        Ok(processed == 3)
    })
    .await?;
    let reservations: i64 = sqlx::query_scalar("SELECT count(*) FROM reservations WHERE order_id = 'o-e2e'")
        .fetch_one(&pool)
        .await?;
    assert_eq!(reservations, 1, "one reservation per order");
    assert_eq!(counters(&pool, "p-e2e").await?, (3, 2, 0));
    let reserved = events_of::<StockReserved>(&inventory_topic).await?;
    assert_eq!(reserved.iter().filter(|e| e.order_id == "o-e2e").count(), 1, "StockReserved published once");
    let reservation_id = reserved[0].reservation_id.clone();
    assert_eq!(reserved[0].lines[0].quantity, 2);
    assert!(reserved[0].expires_at.is_some());

    // Confirmation commits, cancellation after it returns the sold stock.
    produce(
        &producer,
        &OrderConfirmed {
            order_id: "o-e2e".to_owned(),
            reservation_id: reservation_id.clone(),
            ..Default::default()
        },
    )
    .await?;
    eventually("StockCommitted is published", || async {
        Ok(events_of::<StockCommitted>(&inventory_topic)
            .await?
            .iter()
            .any(|e| e.reservation_id == reservation_id))
    })
    .await?;
    assert_eq!(counters(&pool, "p-e2e").await?, (3, 0, 2));
    produce(
        &producer,
        &OrderCancelled {
            order_id: "o-e2e".to_owned(),
            reservation_id: reservation_id.clone(),
            was_paid: true,
            ..Default::default()
        },
    )
    .await?;
    eventually("StockReleased with was_committed is published", || async {
        Ok(events_of::<StockReleased>(&inventory_topic)
            .await?
            .iter()
            .any(|e| e.order_id == "o-e2e" && e.was_committed))
    })
    .await?;
    assert_eq!(counters(&pool, "p-e2e").await?, (5, 0, 0), "initial stock is whole again");

    // An order the order service failed (its reservation expired) gives its
    // held stock back, with the reason.
    produce(&producer, &order_placed("o-expired", "p-e2e", 4)).await?;
    eventually("o-expired is reserved", || async { Ok(counters(&pool, "p-e2e").await? == (1, 4, 0)) })
        .await?;
    produce(
        &producer,
        &OrderFailed {
            order_id: "o-expired".to_owned(),
            reason: order_failed::Reason::ReservationExpired as i32,
            ..Default::default()
        },
    )
    .await?;
    eventually("StockReleased for the expired reservation is published", || async {
        Ok(events_of::<StockReleased>(&inventory_topic).await?.iter().any(|e| {
            e.order_id == "o-expired"
                && e.reason == stock_released::Reason::Expired as i32
                && !e.was_committed
        }))
    })
    .await?;
    assert_eq!(counters(&pool, "p-e2e").await?, (5, 0, 0));

    // A contradiction (confirming an order that holds nothing) cannot heal:
    // it goes to the dead-letter topic, and consumption goes on.
    produce(&producer, &OrderConfirmed { order_id: "o-unknown".to_owned(), ..Default::default() }).await?;
    let dead_letters = names.dead_letter_topic(Service::Inventory);
    eventually("the contradiction is dead-lettered", || async {
        Ok(read_topic(&dead_letters).await?.iter().any(|record| {
            event_type(record) == Some("commerce.events.v1.OrderConfirmed")
                && record.key() == Some("o-unknown".as_bytes())
        }))
    })
    .await?;
    produce(&producer, &ProductCreated { product_id: "p-after".to_owned(), ..Default::default() }).await?;
    eventually("events after the dead letter are still handled", || async {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM stock WHERE product_id = 'p-after'")
            .fetch_one(&pool)
            .await?;
        Ok(rows == 1)
    })
    .await?;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), service).await???;
    database.drop_database().await?;
    drop_kafka_namespace(&prefix).await;
    Ok(())
}
