//! The service runtime over real loopback ports: `/readyz` waits for the
//! gRPC listener, shutdown joins background work while the admin server
//! still answers, a failing task stops the service with its name in the
//! error, and a shutdown while waiting for the database is no failure.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::Duration;

use clap::Parser;
use commerce_platform::config::CommonArgs;
use commerce_platform::db::DatabaseArgs;
use commerce_platform::runtime::{RuntimeError, ServiceRuntime};
use commerce_topology::Service;
use common::{Probe, call, wait_for};
use sqlx::migrate::Migrator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::Request;
use tonic::transport::Endpoint;

/// Generous bound for conditions that hold within milliseconds on a quiet
/// machine; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(10);

/// No service migrations: the platform's tables are all a test needs.
static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

/// A port that was free a moment ago (the runtime binds its configured
/// addresses itself, so a test cannot hand it a bound listener).
async fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
    listener.local_addr().expect("local address")
}

async fn common_args() -> CommonArgs {
    let (admin, grpc) = (free_addr().await, free_addr().await);
    Cli::try_parse_from([
        "test".to_owned(),
        format!("--admin-addr={admin}"),
        format!("--grpc-addr={grpc}"),
        "--grpc-shutdown-grace=5s".to_owned(),
        "--log-format=text".to_owned(),
    ])
    .expect("flags parse")
    .common
}

/// The status code and body of one HTTP/1.1 GET, or `None` when nothing
/// listens.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw)).await.ok()?.ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

#[tokio::test]
async fn readyz_is_503_until_the_grpc_listener_is_bound_then_200() {
    let common = common_args().await;
    let (admin, grpc) = (common.admin.addr, common.grpc.addr);
    let shutdown = CancellationToken::new();
    let (release, released) = oneshot::channel::<()>();
    let service = tokio::spawn(ServiceRuntime::new(Service::Order, &common).serve(
        shutdown.clone(),
        |wiring| async move {
            // Everything the service needs is "ready" at once; the server
            // is handed over only when the test says so.
            wiring.readiness().register("dependency").set_ready();
            let _ = released.await;
            Ok::<_, RuntimeError>(wiring.grpc_server().add_service(Probe::replying("pong")))
        },
    ));

    wait_for("the admin server to answer", PATIENCE, || async { get(admin, "/readyz").await.is_some() })
        .await;
    let (status, body) = get(admin, "/readyz").await.expect("readyz answers");
    assert_eq!(status, 503, "ready before the gRPC listener exists: {body}");
    assert!(body.contains(r#"{"name":"grpc","ready":false"#), "{body}");
    assert!(TcpStream::connect(grpc).await.is_err(), "nothing should listen on the gRPC port yet");

    release.send(()).expect("the wiring waits");
    wait_for("/readyz to answer 200", PATIENCE, || async {
        get(admin, "/readyz").await.is_some_and(|(status, _)| status == 200)
    })
    .await;
    // Ready means the gRPC port takes requests.
    let channel = Endpoint::from_shared(format!("http://{grpc}"))
        .expect("uri")
        .connect()
        .await
        .expect("the gRPC listener is bound once /readyz says ready");
    assert_eq!(call(channel, Request::new("ping".to_owned())).await.expect("call"), "pong");

    shutdown.cancel();
    service.await.expect("join").expect("clean shutdown");
    assert!(get(admin, "/readyz").await.is_none(), "the admin server stops with the service");
}

#[tokio::test]
async fn shutdown_joins_background_tasks_while_the_admin_server_still_answers() {
    let common = common_args().await;
    let admin = common.admin.addr;
    let shutdown = CancellationToken::new();
    let drained = Arc::new(AtomicBool::new(false));
    let admin_status_during_drain = Arc::new(AtomicU16::new(0));
    let service = {
        let (drained, admin_status) = (drained.clone(), admin_status_during_drain.clone());
        tokio::spawn(ServiceRuntime::new(Service::Order, &common).serve(shutdown.clone(), move |wiring| {
            let stop = wiring.stop_token();
            wiring.spawn_task("slow drainer", async move {
                stop.cancelled().await;
                // Work that takes a while to finish after the stop.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let status = get(admin, "/healthz").await.map_or(0, |(status, _)| status);
                admin_status.store(status, Ordering::SeqCst);
                drained.store(true, Ordering::SeqCst);
            });
            async move { Ok::<_, RuntimeError>(wiring.grpc_server()) }
        }))
    };

    wait_for("/readyz to answer 200", PATIENCE, || async {
        get(admin, "/readyz").await.is_some_and(|(status, _)| status == 200)
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, service).await.expect("stops in time").expect("join").expect("clean");
    assert!(drained.load(Ordering::SeqCst), "serve returned before its background task finished");
    assert_eq!(
        admin_status_during_drain.load(Ordering::SeqCst),
        200,
        "the admin server must outlive the background tasks"
    );
}

#[tokio::test]
async fn a_panicking_task_stops_the_service_and_is_named_in_the_error() {
    let common = common_args().await;
    let shutdown = CancellationToken::new();
    let served = ServiceRuntime::new(Service::Order, &common).serve(shutdown.clone(), |wiring| {
        wiring.spawn_task("doomed worker", async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            panic!("the worker broke");
        });
        async move { Ok::<_, RuntimeError>(wiring.grpc_server()) }
    });
    let error = tokio::time::timeout(PATIENCE, served)
        .await
        .expect("the failure stops the service without a shutdown signal")
        .expect_err("a panicking task is a failure");
    assert!(
        matches!(error, RuntimeError::JoinTask { task: "doomed worker", .. }),
        "unexpected error: {error:?}"
    );
    assert!(!shutdown.is_cancelled(), "the caller's token is the caller's to cancel");
}

#[tokio::test]
async fn shutting_down_while_waiting_for_the_database_is_no_failure() {
    let common = common_args().await;
    let admin = common.admin.addr;
    // Nothing listens there: the runtime keeps retrying.
    let database = DatabaseArgs::new(format!("postgres://commerce:secret@{}/nowhere", free_addr().await));
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(ServiceRuntime::new(Service::Order, &common).serve(
        shutdown.clone(),
        |wiring| async move {
            wiring.connect_database(&database, &NO_MIGRATIONS).await?;
            Ok::<_, RuntimeError>(wiring.grpc_server())
        },
    ));

    wait_for("/readyz to name the database it waits for", PATIENCE, || async {
        get(admin, "/readyz")
            .await
            .is_some_and(|(status, body)| status == 503 && body.contains("cannot connect to the database"))
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, service)
        .await
        .expect("stops in time")
        .expect("join")
        .expect("giving up the wait at shutdown is no failure");
}
