//! A service may start before its database and broker (the normal case when
//! a whole stack starts at once): it must wait, say so in `/readyz`, and
//! become ready on its own once they come up, then follow the database
//! going away and coming back.
//!
//! The late dependencies are real: a private Postgres cluster that the test
//! initialises and starts (`initdb`/`pg_ctl`, as the `postgres` user when
//! running as root) on a port where nothing listened before, and a loopback
//! forwarder to the local Kafka broker opened late on another such port.

mod private_postgres;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use commerce_platform::admin::{self, Metrics};
use commerce_platform::db::{self, DatabaseArgs};
use commerce_platform::events::KafkaArgs;
use commerce_platform::events::producer::{self, EventProducer};
use commerce_platform::readiness::{CheckState, Readiness};
use commerce_testkit::{EVENTUALLY, eventually, free_port, http, init_logging, kafka_brokers, require_kafka};
use private_postgres::PrivatePostgres;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

async fn readyz_status(addr: SocketAddr) -> anyhow::Result<u16> {
    Ok(http(addr.port(), "GET", "/readyz").await?.0)
}

/// Forwards every connection on `listener` to `target` until `shutdown`.
async fn forward(listener: TcpListener, target: String, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((mut inbound, _)) = accepted else { continue };
        let target = target.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Ok(mut upstream) = TcpStream::connect(&target).await {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut upstream) => {}
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_started_before_postgres_and_kafka_becomes_ready_when_they_come_up() -> anyhow::Result<()> {
    init_logging();
    // The broker the late forwarder will lead to must exist.
    require_kafka().await?;
    let postgres_port = free_port();
    let kafka_port = free_port();
    let shutdown = CancellationToken::new();

    // The service's side: readiness served over HTTP, a database connect
    // loop and a producer, both pointed at ports where nothing listens.
    let readiness = Readiness::new();
    let admin_listener = TcpListener::bind("127.0.0.1:0").await?;
    let admin_addr = admin_listener.local_addr()?;
    let admin_server = tokio::spawn(admin::serve_on(
        admin_listener,
        readiness.clone(),
        Metrics::new("late-test"),
        shutdown.clone(),
    ));

    let database_check = readiness.register(db::READINESS_CHECK);
    let database_args = DatabaseArgs {
        connect_timeout: Duration::from_secs(2),
        ..DatabaseArgs::new(format!("postgres://postgres@127.0.0.1:{postgres_port}/postgres"))
    };
    let connect = tokio::spawn({
        let (check, shutdown) = (database_check.clone(), shutdown.clone());
        async move { db::connect_with_retry(&database_args, &check, &shutdown).await }
    });
    let producer = EventProducer::new(&KafkaArgs::new(format!("127.0.0.1:{kafka_port}")))?;
    let producer_watch = producer.watch_readiness(
        readiness.register(producer::READINESS_CHECK),
        producer.names().probe_topic(commerce_topology::Service::Order),
        shutdown.clone(),
    );

    // Both fail and say why; the process keeps running, not ready.
    eventually("both dependencies to report a failure", || async {
        Ok(readiness
            .snapshot()
            .iter()
            .all(|(_, state)| matches!(state, CheckState::NotReady(reason) if reason != "starting"))
            .then_some(()))
    })
    .await?;
    assert!(!connect.is_finished(), "the connect loop keeps waiting instead of failing");
    let (status, body) = http(admin_addr.port(), "GET", "/readyz").await?;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("cannot connect to the database") && body.contains("cannot reach the Kafka brokers"),
        "{body}"
    );

    // The dependencies come up.
    let postgres = tokio::task::spawn_blocking(move || {
        let cluster = PrivatePostgres::init(postgres_port)?;
        cluster.start()?;
        anyhow::Ok(cluster)
    })
    .await??;
    let forwarder_listener = TcpListener::bind(("127.0.0.1", kafka_port)).await?;
    let broker = kafka_brokers().split(',').next().context("a broker")?.to_owned();
    let forwarder = tokio::spawn(forward(forwarder_listener, broker, shutdown.clone()));

    eventually("/readyz to answer 200", || async {
        Ok((readyz_status(admin_addr).await? == 200).then_some(()))
    })
    .await?;
    assert!(readiness.is_ready());
    let pool = tokio::time::timeout(EVENTUALLY, connect).await???;
    assert_eq!(postgres.url(), format!("postgres://postgres@127.0.0.1:{postgres_port}/postgres"));
    let answer: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await?;
    assert_eq!(answer, 1);

    // The database goes away and comes back: readiness follows.
    let health = db::spawn_health_check(pool.clone(), database_check.clone(), shutdown.clone());
    let cluster = postgres;
    let cluster = tokio::task::spawn_blocking(move || cluster.stop("fast").map(|()| cluster)).await??;
    eventually("/readyz to answer 503 without the database", || async {
        Ok((readyz_status(admin_addr).await? == 503).then_some(()))
    })
    .await?;
    let database_state = readiness.snapshot().into_iter().find(|(name, _)| name == db::READINESS_CHECK);
    assert!(matches!(database_state, Some((_, CheckState::NotReady(_)))), "{database_state:?}");
    let cluster = tokio::task::spawn_blocking(move || cluster.start().map(|()| cluster)).await??;
    eventually("/readyz to answer 200 again", || async {
        Ok((readyz_status(admin_addr).await? == 200).then_some(()))
    })
    .await?;

    shutdown.cancel();
    for task in [health, producer_watch, forwarder] {
        tokio::time::timeout(EVENTUALLY, task).await??;
    }
    tokio::time::timeout(EVENTUALLY, admin_server).await???;
    pool.close().await;
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(())
}
