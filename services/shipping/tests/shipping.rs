//! The shipping service in process against real Postgres and Kafka: a
//! confirmed order gets a shipment with a round-robin courier, couriers move
//! it along the transition table (invalid moves are FAILED_PRECONDITION), a
//! cancelled order halts its shipment, and every change is published.

mod support;

use clap::Parser;
use commerce_proto::events::v1 as ev;
use commerce_proto::shipping::v1 as pb;
use commerce_proto::shipping::v1::shipping_service_client::ShippingServiceClient;
use prost_types::Timestamp;
use support::{
    TestDatabase, connect, count_events, drop_kafka_namespace, eventually, free_port, init_logging,
    kafka_namespace, publish, service_flags,
};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    config: commerce_shipping::Config,
}

fn now() -> Option<Timestamp> {
    let now = chrono::Utc::now();
    Some(Timestamp { seconds: now.timestamp(), nanos: 0 })
}

fn confirmed(order_id: &str) -> ev::OrderConfirmed {
    ev::OrderConfirmed {
        order_id: order_id.to_owned(),
        user_id: "customer".to_owned(),
        shipping_address: Some(commerce_proto::common::v1::Address {
            line1: "1 Road".to_owned(),
            city: "Town".to_owned(),
            country_code: "DE".to_owned(),
            ..Default::default()
        }),
        occurred_at: now(),
        ..Default::default()
    }
}

fn update(
    shipment: &pb::Shipment,
    status: pb::ShipmentStatus,
    courier: &str,
) -> pb::UpdateShipmentStatusRequest {
    pb::UpdateShipmentStatusRequest {
        shipment_id: shipment.id.clone(),
        status: status.into(),
        courier_id: courier.to_owned(),
        note: String::new(),
        location: "depot".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipments_follow_the_transition_table_and_halt_when_the_order_is_cancelled() -> anyhow::Result<()> {
    init_logging();
    let prefix = kafka_namespace().await?;
    let database = TestDatabase::create("shipping").await?;
    let grpc_port = free_port();
    let mut flags = service_flags(&database.url, &prefix, grpc_port, free_port());
    flags.push("--shipping-couriers=courier-a,courier-b".to_owned());
    let config = Cli::try_parse_from(flags)?.config;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(commerce_shipping::serve(config, shutdown.clone()));
    let mut client = ShippingServiceClient::new(connect(grpc_port).await?);

    publish(&prefix, &confirmed("order-1")).await?;
    publish(&prefix, &confirmed("order-2")).await?;
    publish(&prefix, &confirmed("order-1")).await?; // redelivered with a new id: still one shipment
    let tracker = client.clone();
    let track = |order_id: &'static str| {
        let client = tracker.clone();
        async move {
            eventually(&format!("a shipment for {order_id}"), || {
                let mut client = client.clone();
                async move {
                    match client
                        .track_shipment(pb::TrackShipmentRequest { order_id: order_id.to_owned() })
                        .await
                    {
                        Ok(response) => Ok(Some(response.into_inner())),
                        Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
                        Err(status) => Err(status.into()),
                    }
                }
            })
            .await
        }
    };
    let first = track("order-1").await?.shipment.expect("shipment");
    let second = track("order-2").await?.shipment.expect("shipment");
    assert_eq!(first.status(), pb::ShipmentStatus::Assigned);
    let mut couriers = [first.courier_id.clone(), second.courier_id.clone()];
    couriers.sort();
    assert_eq!(couriers, ["courier-a", "courier-b"], "round-robin");
    assert!(first.tracking_number.starts_with("TRK"));

    let courier = first.courier_id.clone();
    let skip = client.update_shipment_status(update(&first, pb::ShipmentStatus::Delivered, &courier)).await;
    assert_eq!(skip.expect_err("skipping steps").code(), tonic::Code::FailedPrecondition);
    let stranger =
        client.update_shipment_status(update(&first, pb::ShipmentStatus::PickedUp, "someone-else")).await;
    assert_eq!(stranger.expect_err("not their shipment").code(), tonic::Code::PermissionDenied);
    for status in [
        pb::ShipmentStatus::PickedUp,
        pb::ShipmentStatus::PickedUp,
        pb::ShipmentStatus::InTransit,
        pb::ShipmentStatus::Delivered,
    ] {
        let moved = client
            .update_shipment_status(update(&first, status, &courier))
            .await?
            .into_inner()
            .shipment
            .expect("shipment");
        assert_eq!(moved.status(), status);
    }
    let back = client.update_shipment_status(update(&first, pb::ShipmentStatus::InTransit, &courier)).await;
    assert_eq!(back.expect_err("delivered is final").code(), tonic::Code::FailedPrecondition);
    let history = track("order-1").await?;
    assert_eq!(history.events.len(), 4, "created, picked up, in transit, delivered (the repeat is a no-op)");
    assert!(history.shipment.expect("shipment").delivered_at.is_some());

    publish(
        &prefix,
        &ev::OrderCancelled {
            order_id: "order-2".to_owned(),
            user_id: "customer".to_owned(),
            reason: "changed my mind".to_owned(),
            occurred_at: now(),
            ..Default::default()
        },
    )
    .await?;
    let halted = eventually("order-2's shipment to halt", || async {
        let shipment = track("order-2").await?.shipment.expect("shipment");
        Ok((shipment.status() == pb::ShipmentStatus::Halted).then_some(shipment))
    })
    .await?;
    assert!(halted.halt_reason.contains("changed my mind"), "{}", halted.halt_reason);

    let listed = client
        .list_shipments(pb::ListShipmentsRequest {
            courier_id: courier.clone(),
            page_size: 10,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(listed.total_size, 1);
    assert_eq!(listed.shipments[0].id, first.id);

    eventually("every change published once", || async {
        let created = count_events::<ev::ShipmentCreated>(&prefix, &first.id).await?;
        let changed = count_events::<ev::ShipmentStatusChanged>(&prefix, &first.id).await?;
        let delivered = count_events::<ev::ShipmentDelivered>(&prefix, &first.id).await?;
        let halted_events = count_events::<ev::ShipmentHalted>(&prefix, &second.id).await?;
        anyhow::ensure!(created <= 1 && changed <= 2 && delivered <= 1 && halted_events <= 1, "duplicates");
        Ok((created == 1 && changed == 2 && delivered == 1 && halted_events == 1).then_some(()))
    })
    .await?;

    // The customer erases their account: their shipments and tracking stay,
    // with nothing of the address but its country.
    publish(&prefix, &ev::UserErased { user_id: "customer".to_owned(), occurred_at: now() }).await?;
    let bare = commerce_proto::common::v1::Address { country_code: "DE".to_owned(), ..Default::default() };
    eventually("the erased customer's shipments to lose their addresses", || async {
        let first = track("order-1").await?;
        let second = track("order-2").await?.shipment.expect("shipment");
        let shipment = first.shipment.expect("shipment");
        anyhow::ensure!(first.events.len() == 4, "the tracking stays");
        Ok((shipment.address.as_ref() == Some(&bare) && second.address.as_ref() == Some(&bare)).then_some(()))
    })
    .await?;

    shutdown.cancel();
    task.await??;
    drop_kafka_namespace(&prefix).await;
    database.drop_database().await
}
