//! The admin server over real HTTP on loopback: what Prometheus and the
//! kubelet see.

use std::net::SocketAddr;
use std::time::Duration;

use commerce_platform::admin::{self, METRICS_CONTENT_TYPE, Metrics};
use commerce_platform::readiness::Readiness;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(10);

struct Admin {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), admin::AdminError>>,
}

async fn start(readiness: Readiness, metrics: Metrics) -> Admin {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind an ephemeral port");
    let addr = listener.local_addr().expect("local address");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(admin::serve_on(listener, readiness, metrics, shutdown.clone()));
    Admin { addr, shutdown, task }
}

/// A response as the wire carried it.
struct HttpResponse {
    status: u16,
    /// Header lines, lower-cased.
    headers: Vec<String>,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}: ");
        self.headers.iter().find_map(|line| line.strip_prefix(&prefix))
    }
}

/// One HTTP/1.1 GET on a fresh connection, the way a probe makes it.
async fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the admin server");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send the request");
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read");
    let raw = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    HttpResponse { status, headers: lines.map(str::to_ascii_lowercase).collect(), body: body.to_owned() }
}

#[tokio::test]
async fn healthz_answers_ok_even_when_not_ready() {
    let readiness = Readiness::new();
    let _database = readiness.register("database");
    let admin = start(readiness, Metrics::new("test")).await;

    let response = get(admin.addr, "/healthz").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, "ok\n");

    admin.shutdown.cancel();
    admin.task.await.expect("task").expect("clean shutdown");
}

#[tokio::test]
async fn readyz_is_503_with_each_reason_until_every_check_is_ready() {
    let readiness = Readiness::new();
    let admin = start(readiness.clone(), Metrics::new("test")).await;

    let response = get(admin.addr, "/readyz").await;
    assert_eq!(response.status, 503, "nothing registered yet is not ready");

    let database = readiness.register("database");
    let kafka = readiness.register("kafka");
    database.set_ready();
    kafka.set_not_ready("broker 127.0.0.1:59092 unreachable");
    let response = get(admin.addr, "/readyz").await;
    assert_eq!(response.status, 503);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&response.body).expect("JSON body");
    assert_eq!(
        body,
        serde_json::json!({
            "ready": false,
            "checks": [
                { "name": "database", "ready": true },
                { "name": "kafka", "ready": false, "reason": "broker 127.0.0.1:59092 unreachable" },
            ],
        })
    );

    kafka.set_ready();
    let response = get(admin.addr, "/readyz").await;
    assert_eq!(response.status, 200);
    let body: serde_json::Value = serde_json::from_str(&response.body).expect("JSON body");
    assert_eq!(body["ready"], true);

    admin.shutdown.cancel();
    admin.task.await.expect("task").expect("clean shutdown");
}

#[tokio::test]
async fn metrics_are_served_as_openmetrics_text_with_everything_registered() {
    let metrics = Metrics::new("order");
    let published = Counter::<u64>::default();
    metrics.register("commerce_outbox_published", "Outbox rows published", published.clone());
    published.inc_by(3);
    let admin = start(Readiness::new(), metrics).await;

    let response = get(admin.addr, "/metrics").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some(METRICS_CONTENT_TYPE));
    let body = &response.body;
    assert!(body.contains("commerce_outbox_published_total 3"), "{body}");
    assert!(body.contains(r#"commerce_build_info{service="order",version=""#), "{body}");
    assert!(body.contains("process_start_time_seconds"), "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");

    admin.shutdown.cancel();
    admin.task.await.expect("task").expect("clean shutdown");
}

#[tokio::test]
async fn the_admin_server_stops_on_shutdown() {
    let admin = start(Readiness::new(), Metrics::new("test")).await;
    assert_eq!(get(admin.addr, "/healthz").await.status, 200);

    admin.shutdown.cancel();
    tokio::time::timeout(PATIENCE, admin.task)
        .await
        .expect("stops promptly")
        .expect("task")
        .expect("clean shutdown");
    assert!(TcpStream::connect(admin.addr).await.is_err(), "the port is closed after shutdown");
}
