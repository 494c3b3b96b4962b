//! The audit service in process against real Postgres and Kafka: events of
//! every domain topic become one chain in arrival order, each recorded once
//! (a redelivered event included), with the acting administrator or user
//! named; an administrator's action recorded by the gateway joins the same
//! chain once; admins filter and page the trail; the chain verifies, survives
//! retention, refuses an UPDATE, and reports the first entry someone with
//! the power to disable that guard changed.

mod support;

use std::collections::BTreeSet;

use clap::Parser;
use commerce_platform::events::CloudEventAttributes;
use commerce_proto::audit::v1 as pb;
use commerce_proto::audit::v1::audit_service_client::AuditServiceClient;
use commerce_proto::events::v1 as ev;
use support::{
    TestDatabase, connect, drop_kafka_namespace, eventually, free_port, init_logging, kafka_namespace,
    publish, publish_with, service_flags,
};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    config: commerce_audit::Config,
}

fn role_changed(user: &str, by: &str) -> ev::UserRoleChanged {
    ev::UserRoleChanged {
        user_id: user.to_owned(),
        previous_role: ev::UserRole::Customer.into(),
        role: ev::UserRole::Courier.into(),
        changed_by: by.to_owned(),
        occurred_at: None,
    }
}

fn cancelled(order: &str, by: &str) -> ev::OrderCancelled {
    ev::OrderCancelled {
        order_id: order.to_owned(),
        user_id: "customer-1".to_owned(),
        reason: "changed my mind".to_owned(),
        cancelled_by: by.to_owned(),
        ..Default::default()
    }
}

async fn all_entries(
    client: &mut AuditServiceClient<tonic::transport::Channel>,
) -> anyhow::Result<Vec<pb::AuditEntry>> {
    let mut entries = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_entries(pb::ListEntriesRequest { page_size: 2, page_token: token, ..Default::default() })
            .await?
            .into_inner();
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            return Ok(entries);
        }
        token = page.next_page_token;
    }
}

/// Waits until the trail holds at least `count` entries.
async fn recorded(
    client: &AuditServiceClient<tonic::transport::Channel>,
    count: usize,
) -> anyhow::Result<()> {
    eventually(&format!("{count} audit entries"), || {
        let mut client = client.clone();
        async move { Ok((all_entries(&mut client).await?.len() >= count).then_some(())) }
    })
    .await
}

async fn verify(
    client: &mut AuditServiceClient<tonic::transport::Channel>,
) -> anyhow::Result<pb::VerifyChainResponse> {
    Ok(client.verify_chain(pb::VerifyChainRequest {}).await?.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_chained_once_filtered_for_admins_and_a_changed_entry_breaks_the_chain()
-> anyhow::Result<()> {
    init_logging();
    let prefix = kafka_namespace().await?;
    let database = TestDatabase::create("audit").await?;
    let grpc_port = free_port();
    let mut flags = service_flags(&database.url, &prefix, grpc_port, free_port());
    // Retention is driven by the test below, not by the clock.
    flags.push("--audit-retention=0s".to_owned());
    let config = Cli::try_parse_from(flags)?.config;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(commerce_audit::serve(config, shutdown.clone()));
    let mut client = AuditServiceClient::new(connect(grpc_port).await?);

    // Five events over three topics; one of them is delivered twice. The
    // first two (one user's, so one partition) come within the consumer's
    // linger and are recorded as one batch; each later one is recorded
    // before the next is published, so it is a batch of its own with its
    // own recorded_at (retention below counts on that; the twin deliveries
    // share a batch, or follow one another).
    let registered =
        ev::UserRegistered { user_id: "user-1".into(), email: "a@example.com".into(), ..Default::default() };
    publish(&prefix, &registered).await?;
    publish(&prefix, &role_changed("user-1", "admin-7")).await?;
    recorded(&client, 2).await?;
    let cancel = cancelled("order-1", "customer-1");
    let attributes = CloudEventAttributes::for_event(&cancel);
    publish_with(&prefix, &cancel, &attributes).await?;
    publish_with(&prefix, &cancel, &attributes).await?;
    recorded(&client, 3).await?;
    publish(
        &prefix,
        &ev::ShipmentHalted {
            shipment_id: "shipment-1".into(),
            order_id: "order-1".into(),
            ..Default::default()
        },
    )
    .await?;
    recorded(&client, 4).await?;
    publish(&prefix, &role_changed("user-2", "admin-7")).await?;
    recorded(&client, 5).await?;
    // Give a duplicate the time to show up if it were recorded.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let entries = all_entries(&mut client).await?;
    assert_eq!(entries.len(), 5, "the redelivered event is recorded once: {entries:#?}");
    let sequences: Vec<i64> = entries.iter().map(|entry| entry.sequence).collect();
    assert_eq!(sequences, [5, 4, 3, 2, 1], "newest first, no gaps, paged two at a time");
    let ids: BTreeSet<&str> = entries.iter().map(|entry| entry.event_id.as_str()).collect();
    assert_eq!(ids.len(), 5);
    for pair in entries.windows(2) {
        assert_eq!(
            pair[0].previous_hash, pair[1].hash,
            "entry {} links to {}",
            pair[0].sequence, pair[1].sequence
        );
    }
    assert_eq!(entries.last().map(|e| e.previous_hash.as_str()), Some("0".repeat(64).as_str()));

    let role_changes: Vec<&pb::AuditEntry> =
        entries.iter().filter(|entry| entry.event_type == "commerce.events.v1.UserRoleChanged").collect();
    assert_eq!(role_changes.len(), 2);
    assert!(role_changes.iter().all(|entry| entry.actor_id == "admin-7" && entry.source == "/commerce/auth"));
    let json: serde_json::Value = serde_json::from_str(&role_changes[0].payload_json)?;
    assert_eq!(json["role"], "USER_ROLE_COURIER", "{json}");
    let cancellation = entries
        .iter()
        .find(|entry| entry.event_type == "commerce.events.v1.OrderCancelled")
        .expect("recorded");
    assert_eq!((cancellation.actor_id.as_str(), cancellation.subject.as_str()), ("customer-1", "order-1"));
    assert_eq!(cancellation.event_id, attributes.id.to_string());
    let registration = entries
        .iter()
        .find(|entry| entry.event_type == "commerce.events.v1.UserRegistered")
        .expect("recorded");
    assert_eq!(registration.actor_id, "", "a registration names nobody else as its actor");

    // Filters.
    let by_admin = client
        .list_entries(pb::ListEntriesRequest { actor_id: "admin-7".into(), ..Default::default() })
        .await?
        .into_inner();
    assert_eq!(by_admin.entries.len(), 2);
    let about_order = client
        .list_entries(pb::ListEntriesRequest { subject: "order-1".into(), ..Default::default() })
        .await?
        .into_inner();
    assert_eq!(about_order.entries.len(), 1, "the shipment's events are keyed by the shipment");
    let of_type = client
        .list_entries(pb::ListEntriesRequest {
            event_type: "commerce.events.v1.ShipmentHalted".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(of_type.entries.len(), 1);
    let future = client
        .list_entries(pb::ListEntriesRequest {
            since: Some(commerce_proto::time::timestamp(chrono::Utc::now() + chrono::Duration::hours(1))),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(future.entries.is_empty());
    let bad_token = client
        .list_entries(pb::ListEntriesRequest { page_token: "not-a-token".into(), ..Default::default() })
        .await
        .expect_err("a token the server did not issue");
    assert_eq!(bad_token.code(), tonic::Code::InvalidArgument);

    // An administrator's action, as the gateway records it; a retry of the
    // call records it once.
    let action = pb::RecordAdminActionRequest {
        action_id: uuid::Uuid::now_v7().to_string(),
        action: Some(pb::AdminAction {
            actor_id: "admin-7".into(),
            method: "PUT".into(),
            route: "/api/admin/ratelimits/{name}".into(),
            path: "/api/admin/ratelimits/login".into(),
            status: 200,
            request_id: "req-1".into(),
        }),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        occurred_at: Some(commerce_proto::time::timestamp(chrono::Utc::now())),
    };
    let recorded = client.record_admin_action(action.clone()).await?.into_inner().entry.expect("an entry");
    let again = client.record_admin_action(action.clone()).await?.into_inner().entry.expect("an entry");
    assert_eq!((recorded.sequence, again.sequence), (6, 6), "recorded once");
    assert_eq!(recorded.event_type, commerce_audit::grpc::ADMIN_ACTION_TYPE);
    assert_eq!(
        (recorded.actor_id.as_str(), recorded.subject.as_str(), recorded.source.as_str()),
        ("admin-7", "/api/admin/ratelimits/login", "/commerce/gateway")
    );
    assert_eq!(recorded.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    let json: serde_json::Value = serde_json::from_str(&recorded.payload_json)?;
    assert_eq!(
        (json["route"].as_str(), json["status"].as_i64()),
        (Some("/api/admin/ratelimits/{name}"), Some(200))
    );
    let mut nameless = action.clone();
    nameless.action_id = uuid::Uuid::now_v7().to_string();
    if let Some(action) = nameless.action.as_mut() {
        action.actor_id.clear();
    }
    let refused = client.record_admin_action(nameless).await.expect_err("an action without an actor");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("actor_id"), "{}", refused.message());

    // The chain verifies.
    let intact = verify(&mut client).await?;
    assert!(intact.intact, "{intact:?}");
    assert_eq!((intact.entries_checked, intact.head_sequence, intact.retained_from_sequence), (6, 6, 1));
    assert_eq!(intact.head_hash, recorded.hash);

    // Retention removes the start of the chain; what remains still verifies.
    let pool = database.pool().await?;
    let cutoff: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT recorded_at + interval '1 microsecond' FROM audit_entries WHERE sequence = 2",
    )
    .fetch_one(&pool)
    .await?;
    let mut conn = pool.acquire().await?;
    assert_eq!(commerce_audit::store::prune(&mut conn, cutoff).await?, 2);
    drop(conn);
    let pruned = verify(&mut client).await?;
    assert!(pruned.intact, "{pruned:?}");
    assert_eq!((pruned.entries_checked, pruned.retained_from_sequence), (4, 3));

    // Entries are append-only...
    let update = sqlx::query("UPDATE audit_entries SET actor_id = 'someone-else' WHERE sequence = 4")
        .execute(&pool)
        .await
        .expect_err("an UPDATE of an audit entry is refused");
    assert!(update.to_string().contains("append-only"), "{update}");
    // ...and whoever can lift that guard is still caught by the chain.
    sqlx::query("ALTER TABLE audit_entries DISABLE TRIGGER audit_entries_append_only").execute(&pool).await?;
    sqlx::query("UPDATE audit_entries SET actor_id = 'someone-else' WHERE sequence = 4")
        .execute(&pool)
        .await?;
    let tampered = verify(&mut client).await?;
    assert!(!tampered.intact);
    assert_eq!(tampered.first_broken_sequence, 4, "{tampered:?}");
    assert!(tampered.problem.contains("does not match its content"), "{}", tampered.problem);
    assert_eq!(tampered.entries_checked, 1, "entry 3 was checked before 4 broke");
    // A removed entry in the middle is reported where the gap starts.
    sqlx::query("UPDATE audit_entries SET actor_id = 'admin-7' WHERE sequence = 4").execute(&pool).await?;
    sqlx::query("DELETE FROM audit_entries WHERE sequence = 4").execute(&pool).await?;
    let gap = verify(&mut client).await?;
    assert!(!gap.intact);
    assert_eq!(gap.first_broken_sequence, 4, "{gap:?}");
    assert!(gap.problem.contains("missing"), "{}", gap.problem);

    shutdown.cancel();
    task.await??;
    pool.close().await;
    database.drop_database().await?;
    drop_kafka_namespace(&prefix).await;
    Ok(())
}
