//! The notification service in process against real Postgres and Kafka: one
//! notification per user-visible event, stored once even when the event is
//! delivered twice, listed per user page by page, and marked read.

mod support;

use clap::Parser;
use commerce_platform::events::CloudEventAttributes;
use commerce_proto::events::v1 as ev;
use commerce_proto::notification::v1 as pb;
use commerce_proto::notification::v1::notification_service_client::NotificationServiceClient;
use prost_types::Timestamp;
use support::{
    TestDatabase, connect, drop_kafka_namespace, eventually, free_port, init_logging, kafka_namespace,
    publish, publish_with, service_flags,
};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    config: commerce_notification::Config,
}

fn now() -> Option<Timestamp> {
    let now = chrono::Utc::now();
    Some(Timestamp { seconds: now.timestamp(), nanos: 0 })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_visible_step_is_notified_once_even_when_delivered_twice() -> anyhow::Result<()> {
    init_logging();
    let prefix = kafka_namespace().await?;
    let database = TestDatabase::create("notification").await?;
    let grpc_port = free_port();
    let config = Cli::try_parse_from(service_flags(&database.url, &prefix, grpc_port, free_port()))?.config;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(commerce_notification::serve(config, shutdown.clone()));
    let mut client = NotificationServiceClient::new(connect(grpc_port).await?);

    let placed = ev::OrderPlaced {
        order_id: "order-1".to_owned(),
        user_id: "alice".to_owned(),
        total: Some(commerce_proto::common::v1::Money { currency_code: "EUR".to_owned(), units: 2500 }),
        occurred_at: now(),
        ..Default::default()
    };
    let attributes = CloudEventAttributes::for_event(&placed);
    publish_with(&prefix, &placed, &attributes).await?;
    publish_with(&prefix, &placed, &attributes).await?; // the same record again
    // Not user-visible: no notification.
    publish(
        &prefix,
        &ev::PaymentCaptured {
            order_id: "order-1".to_owned(),
            user_id: "alice".to_owned(),
            occurred_at: now(),
            ..Default::default()
        },
    )
    .await?;
    publish(
        &prefix,
        &ev::OrderConfirmed {
            order_id: "order-1".to_owned(),
            user_id: "alice".to_owned(),
            occurred_at: now(),
            ..Default::default()
        },
    )
    .await?;
    publish(
        &prefix,
        &ev::OrderPlaced {
            order_id: "order-9".to_owned(),
            user_id: "bob".to_owned(),
            occurred_at: now(),
            ..Default::default()
        },
    )
    .await?;
    let delivered = ev::ShipmentDelivered {
        shipment_id: "s1".to_owned(),
        order_id: "order-1".to_owned(),
        user_id: "alice".to_owned(),
        occurred_at: now(),
        ..Default::default()
    };
    publish(&prefix, &delivered).await?;

    let listed = eventually("alice's delivery notification", || {
        let mut client = client.clone();
        async move {
            let response = client
                .list_notifications(pb::ListNotificationsRequest {
                    user_id: "alice".to_owned(),
                    page_size: 50,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let has = |kind| response.notifications.iter().any(|n| n.kind() == kind);
            let done = has(pb::NotificationKind::OrderDelivered) && has(pb::NotificationKind::OrderConfirmed);
            Ok(done.then_some(response))
        }
    })
    .await?;
    // One order's events share a partition and are handled in order, so
    // the redelivered OrderPlaced was handled before OrderConfirmed.
    let mut kinds: Vec<i32> = listed.notifications.iter().map(|n| n.kind).collect();
    kinds.sort_unstable();
    let mut expected = [
        pb::NotificationKind::OrderPlaced as i32,
        pb::NotificationKind::OrderConfirmed as i32,
        pb::NotificationKind::OrderDelivered as i32,
    ];
    expected.sort_unstable();
    assert_eq!(kinds, expected, "one per step, none for the payment capture");
    let placed_note =
        listed.notifications.iter().find(|n| n.kind() == pb::NotificationKind::OrderPlaced).expect("placed");
    assert!(placed_note.body.contains("25.00 EUR"), "{}", placed_note.body);
    assert_eq!(listed.unread_count, 3);

    let page = client
        .list_notifications(pb::ListNotificationsRequest {
            user_id: "alice".to_owned(),
            page_size: 2,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(page.notifications.len(), 2);
    let rest = client
        .list_notifications(pb::ListNotificationsRequest {
            user_id: "alice".to_owned(),
            page_size: 2,
            page_token: page.next_page_token.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(rest.notifications.len(), 1);
    assert!(rest.next_page_token.is_empty());

    let marked = client
        .mark_read(pb::MarkReadRequest {
            user_id: "alice".to_owned(),
            notification_ids: vec![listed.notifications[0].id.clone()],
            all: false,
        })
        .await?
        .into_inner();
    assert_eq!(marked.marked_count, 1);
    let bob_tries = client
        .mark_read(pb::MarkReadRequest {
            user_id: "bob".to_owned(),
            notification_ids: vec![listed.notifications[1].id.clone()],
            all: false,
        })
        .await?
        .into_inner();
    assert_eq!(bob_tries.marked_count, 0, "other users' ids are ignored");
    let unread = client
        .list_notifications(pb::ListNotificationsRequest {
            user_id: "alice".to_owned(),
            unread_only: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(unread.notifications.len(), 2);
    assert_eq!(unread.unread_count, 2);

    shutdown.cancel();
    task.await??;
    drop_kafka_namespace(&prefix).await;
    database.drop_database().await
}
