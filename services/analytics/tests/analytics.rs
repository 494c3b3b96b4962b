//! The analytics service in process against real Postgres and Kafka: the
//! figures follow the events whatever order they arrive in, and dropping
//! the tables and reading the topics again (the consumer group's offsets
//! deleted) gives the same figures.

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Parser;
use commerce_platform::events::TopicNames;
use commerce_proto::analytics::v1 as pb;
use commerce_proto::analytics::v1::analytics_service_client::AnalyticsServiceClient;
use commerce_proto::common::v1::Money;
use commerce_proto::events::v1 as ev;
use commerce_proto::time::timestamp;
use commerce_topology::Service;
use support::{
    TestDatabase, connect, drop_kafka_namespace, eventually, free_port, init_logging, kafka_brokers,
    kafka_namespace, publish, service_flags,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    config: commerce_analytics::Config,
}

fn eur(units: i64) -> Option<Money> {
    Some(Money { currency_code: "EUR".to_owned(), units })
}

fn line(product: &str, name: &str, quantity: u32, total: i64) -> ev::order_placed::Line {
    ev::order_placed::Line {
        product_id: product.to_owned(),
        name: name.to_owned(),
        quantity,
        line_total: eur(total),
        ..Default::default()
    }
}

/// The events of four orders and two products, with two out of order: an
/// order confirmed before it is placed, and a rename older than the
/// product's latest event.
async fn publish_history(prefix: &str, yesterday: DateTime<Utc>, now: DateTime<Utc>) -> anyhow::Result<()> {
    let at = |time: DateTime<Utc>| Some(timestamp(time));
    let hour = chrono::Duration::hours(1);
    for (id, name, category) in [("p1", "Kettle", "c1"), ("p2", "Mug", "c2")] {
        let created = ev::ProductCreated {
            product_id: id.to_owned(),
            name: name.to_owned(),
            category_id: category.to_owned(),
            occurred_at: at(yesterday - hour),
            ..Default::default()
        };
        publish(prefix, &created).await?;
    }
    let stale = ev::ProductUpdated {
        product_id: "p1".to_owned(),
        name: "Old kettle".to_owned(),
        category_id: "c9".to_owned(),
        occurred_at: at(yesterday - hour * 2),
        ..Default::default()
    };
    publish(prefix, &stale).await?;

    // Two users fill carts, one of them twice the same day.
    for (user, when) in [("u1", yesterday - hour), ("u1", yesterday), ("u2", now - hour * 3)] {
        let added = ev::CartItemAdded {
            user_id: user.to_owned(),
            product_id: "p1".to_owned(),
            quantity: 1,
            occurred_at: at(when),
        };
        publish(prefix, &added).await?;
    }

    // o1: yesterday, two kettles, shipped and delivered.
    let placed = |order: &str, user: &str, lines: Vec<ev::order_placed::Line>, when: DateTime<Utc>| {
        let total = lines.iter().map(|line| line.line_total.as_ref().map_or(0, |m| m.units)).sum();
        ev::OrderPlaced {
            order_id: order.to_owned(),
            user_id: user.to_owned(),
            lines,
            total: eur(total),
            occurred_at: at(when),
            ..Default::default()
        }
    };
    publish(prefix, &placed("o1", "u1", vec![line("p1", "Kettle", 2, 2000)], yesterday)).await?;
    let confirmed = |order: &str, when: DateTime<Utc>| ev::OrderConfirmed {
        order_id: order.to_owned(),
        occurred_at: at(when),
        ..Default::default()
    };
    publish(prefix, &confirmed("o1", yesterday)).await?;
    let picked_up = ev::ShipmentStatusChanged {
        shipment_id: "s1".to_owned(),
        order_id: "o1".to_owned(),
        status: ev::ShipmentStatus::PickedUp as i32,
        occurred_at: at(yesterday + hour),
        ..Default::default()
    };
    publish(prefix, &picked_up).await?;
    let delivered = ev::OrderDelivered {
        order_id: "o1".to_owned(),
        occurred_at: at(yesterday + hour * 2),
        ..Default::default()
    };
    publish(prefix, &delivered).await?;

    // o2: today, confirmed before it is placed (as a replay may deliver
    // it), then cancelled and refunded in two parts.
    publish(prefix, &confirmed("o2", now)).await?;
    let lines = vec![line("p1", "Kettle", 1, 1000), line("p2", "Mug", 3, 900)];
    publish(prefix, &placed("o2", "u2", lines, now - hour * 2)).await?;
    let cancelled =
        ev::OrderCancelled { order_id: "o2".to_owned(), occurred_at: at(now - hour), ..Default::default() };
    publish(prefix, &cancelled).await?;
    for total in [500, 1900] {
        let refunded = ev::PaymentRefunded {
            order_id: "o2".to_owned(),
            amount: eur(if total == 500 { 500 } else { 1400 }),
            total_refunded: eur(total),
            occurred_at: at(now - hour),
            ..Default::default()
        };
        publish(prefix, &refunded).await?;
    }

    // o3: rejected. o4: placed two hours ago and heard of no more: stuck.
    publish(prefix, &placed("o3", "u1", vec![line("p2", "Mug", 9, 2700)], now - hour)).await?;
    let rejected =
        ev::OrderRejected { order_id: "o3".to_owned(), occurred_at: at(now - hour), ..Default::default() };
    publish(prefix, &rejected).await?;
    publish(prefix, &placed("o4", "u3", vec![line("p2", "Mug", 1, 300)], now - hour * 2)).await?;
    Ok(())
}

/// What the reports say: sales by day, product and category, the funnel,
/// and the dashboard's stuck orders.
#[derive(Debug, Clone, PartialEq)]
struct Figures {
    days: Vec<pb::SalesRow>,
    products: Vec<pb::SalesRow>,
    categories: Vec<pb::SalesRow>,
    funnel: pb::GetFunnelResponse,
    stuck: Vec<(String, String)>,
}

async fn figures(
    mut client: AnalyticsServiceClient<tonic::transport::Channel>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<Figures> {
    let sales = |group_by: pb::SalesGrouping| {
        let request = pb::GetSalesRequest {
            from: Some(timestamp(from)),
            to: Some(timestamp(to)),
            group_by: group_by as i32,
        };
        let mut client = client.clone();
        async move { anyhow::Ok(client.get_sales(request).await?.into_inner().rows) }
    };
    let days = sales(pb::SalesGrouping::Day).await?;
    let products = sales(pb::SalesGrouping::Product).await?;
    let categories = sales(pb::SalesGrouping::Category).await?;
    let funnel = client
        .get_funnel(pb::GetFunnelRequest { from: Some(timestamp(from)), to: Some(timestamp(to)) })
        .await?
        .into_inner();
    let dashboard = client.get_dashboard(pb::GetDashboardRequest {}).await?.into_inner();
    let stuck = dashboard.stuck_orders.into_iter().map(|order| (order.order_id, order.status)).collect();
    Ok(Figures { days, products, categories, funnel, stuck })
}

fn row(key: &str, label: &str, orders: i64, units: i64, revenue: i64, refunded: i64) -> pb::SalesRow {
    pb::SalesRow {
        key: key.to_owned(),
        label: label.to_owned(),
        currency: "EUR".to_owned(),
        orders,
        units,
        revenue_units: revenue,
        refunded_units: refunded,
    }
}

fn start(
    database: &TestDatabase,
    prefix: &str,
    grpc_port: u16,
) -> anyhow::Result<(CancellationToken, JoinHandle<Result<(), commerce_analytics::Error>>)> {
    let config = Cli::try_parse_from(service_flags(&database.url, prefix, grpc_port, free_port()))?.config;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(commerce_analytics::serve(config, shutdown.clone()));
    Ok((shutdown, task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_figures_follow_the_events_and_a_replay_into_empty_tables_gives_the_same() -> anyhow::Result<()> {
    init_logging();
    let prefix = kafka_namespace().await?;
    let now = Utc::now();
    let yesterday = now - chrono::Duration::days(1);
    publish_history(&prefix, yesterday, now).await?;
    let (from, to) = (now - chrono::Duration::days(2), now + chrono::Duration::hours(1));

    let database = TestDatabase::create("analytics").await?;
    let grpc_port = free_port();
    let (shutdown, task) = start(&database, &prefix, grpc_port)?;
    let mut client = AnalyticsServiceClient::new(connect(grpc_port).await?);
    let first = eventually("the analytics to read every event", || {
        let client = client.clone();
        async move {
            let figures = figures(client, from, to).await?;
            let funnel = &figures.funnel;
            let done = funnel.carts == 2
                && funnel.placed == 4
                && funnel.refunded == 1
                && figures.products.len() == 2;
            Ok(done.then_some(figures))
        }
    })
    .await?;

    let day = |at: DateTime<Utc>| at.format("%Y-%m-%d").to_string();
    assert_eq!(
        first.days,
        vec![
            row(&day(yesterday), &day(yesterday), 1, 2, 2000, 0),
            row(&day(now), &day(now), 1, 4, 1900, 1900)
        ],
        "confirmed orders by day; the rejected and the unconfirmed are not sales"
    );
    assert_eq!(
        first.products,
        vec![row("p1", "Kettle", 2, 3, 3000, 0), row("p2", "Mug", 1, 3, 900, 0)],
        "by product, named by the latest catalog event (the older rename is ignored)"
    );
    assert_eq!(first.categories, vec![row("c1", "c1", 2, 3, 3000, 0), row("c2", "c2", 1, 3, 900, 0)]);
    let funnel = &first.funnel;
    assert_eq!(
        (funnel.carts, funnel.placed, funnel.confirmed, funnel.delivered),
        (2, 4, 2, 1),
        "two users filled carts; four orders placed, two confirmed, one delivered"
    );
    assert_eq!((funnel.rejected, funnel.failed, funnel.cancelled, funnel.refunded), (1, 0, 1, 1));
    assert_eq!((funnel.cancellation_rate, funnel.refund_rate), (0.5, 0.5));
    assert_eq!(
        first.stuck,
        vec![("o4".to_owned(), "placed".to_owned())],
        "placed two hours ago, never settled"
    );
    let dashboard = client.get_dashboard(pb::GetDashboardRequest {}).await?.into_inner();
    assert!(dashboard.dead_letters_complete, "every dead-letter topic answered");
    let mine = dashboard.dead_letters.iter().find(|dead| dead.service == "analytics").expect("its own topic");
    assert_eq!(
        (mine.topic.as_str(), mine.count),
        (TopicNames::new(prefix.clone()).dead_letter_topic(Service::Analytics).as_str(), 0)
    );

    // The replay: the tables dropped, the group's offsets deleted, the
    // topics read again from the start.
    shutdown.cancel();
    task.await??;
    let group = TopicNames::new(prefix.clone()).consumer_group(Service::Analytics);
    delete_group(&group).await?;
    database.drop_database().await?;
    let database = TestDatabase::create("analytics").await?;
    let grpc_port = free_port();
    let (shutdown, task) = start(&database, &prefix, grpc_port)?;
    let client = AnalyticsServiceClient::new(connect(grpc_port).await?);
    let again = eventually("the replay to read every event", || {
        let (client, first) = (client.clone(), first.clone());
        async move {
            let figures = figures(client, from, to).await?;
            Ok((figures == first).then_some(figures))
        }
    })
    .await?;
    assert_eq!(again, first, "the same figures from the same events");

    shutdown.cancel();
    task.await??;
    drop_kafka_namespace(&prefix).await;
    database.drop_database().await
}

/// Deletes consumer group `group` (it must be empty: its consumer gone),
/// retrying while the broker still counts the departed member.
async fn delete_group(group: &str) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create()?;
    eventually("the consumer group to be deleted", || async {
        let results = admin.delete_groups(&[group], &AdminOptions::new()).await?;
        Ok(results.into_iter().all(|result| result.is_ok()).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}
