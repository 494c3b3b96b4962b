//! The admin server: `/metrics`, `/healthz` and `/readyz` on a port of their
//! own, apart from the gRPC port, so that Prometheus and the kubelet reach
//! them without a gRPC client, and a NetworkPolicy can open them to the
//! monitoring namespace only.
//!
//! - `/healthz` answers 200 as long as the process can serve HTTP at all
//!   (liveness: restart only a wedged process, never one waiting for a
//!   dependency);
//! - `/readyz` answers 200 when [`Readiness::is_ready`], else 503, with a JSON
//!   body naming each check and why it is not ready;
//! - `/metrics` renders the process-wide [`Metrics`] registry in the
//!   OpenMetrics text format.
//!
//! [`Metrics`] is the one registry of the process: the database pool, the
//! outbox relay, consumers, the gRPC layers and resilient clients all
//! register into it. [`GrpcMetricsLayer`] counts and times every gRPC request
//! a server handles, by service, method and status code.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Metric, Registry};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tower::{Layer, Service};

use crate::readiness::{CheckState, Readiness};

/// Content type of `/metrics`: OpenMetrics text, which Prometheus negotiates
/// and which carries `# EOF` so a truncated scrape is detected.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Admin server flags every service accepts.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Admin server")]
pub struct AdminArgs {
    /// Address of the admin server (`/metrics`, `/healthz`, `/readyz`).
    #[arg(
        long = "admin-addr", id = "admin-addr",
        env = "COMMERCE_ADMIN_ADDR",
        default_value_t = SocketAddr::from(([0, 0, 0, 0], commerce_topology::CLUSTER_ADMIN_PORT))
    )]
    pub addr: SocketAddr,
}

/// What can go wrong running the admin server.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The admin port is taken or not ours to bind.
    #[error("cannot bind the admin server to {addr}")]
    Bind {
        /// The configured `--admin-addr`.
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Accepting connections failed.
    #[error("the admin server failed")]
    Serve(#[source] std::io::Error),
    /// A metric could not be written out (a collector failed).
    #[error("cannot encode metrics")]
    EncodeMetrics(#[source] fmt::Error),
}

/// The process-wide metrics registry. Cheap to clone; every clone registers
/// into and renders the same registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    grpc_server: GrpcServerMetrics,
    grpc_client: GrpcClientMetrics,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    service: String,
    version: String,
}

impl Metrics {
    /// A registry holding `commerce_build_info{service, version}`, the
    /// standard `process_*` metrics (on Linux), and the gRPC server and
    /// client families. `service` is what this process runs (`order`, or
    /// `all` for the single local process).
    pub fn new(service: &str) -> Self {
        let mut registry = Registry::default();
        registry.register(
            "commerce_build",
            "Version of the running build; always 1",
            Info::new(BuildLabels {
                service: service.to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            }),
        );
        registry.register_collector(Box::new(ProcessCollector::new()));
        let grpc_server = GrpcServerMetrics::register(&mut registry);
        let grpc_client = GrpcClientMetrics::register(&mut registry);
        Self { registry: Arc::new(Mutex::new(registry)), grpc_server, grpc_client }
    }

    /// Registers one metric. Names carry the `commerce_` prefix by
    /// convention (counters get `_total` appended by the encoder).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.lock().register(name, help, metric);
    }

    /// Registers a collector that computes its values at scrape time (for
    /// state that lives elsewhere, such as a pool's size).
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.lock().register_collector(collector);
    }

    /// Renders every metric in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, AdminError> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.lock())
            .map_err(AdminError::EncodeMetrics)?;
        Ok(out)
    }

    /// Families the gRPC server's [`GrpcMetricsLayer`] records into.
    pub fn grpc_server(&self) -> &GrpcServerMetrics {
        &self.grpc_server
    }

    /// Families the resilient gRPC clients record into.
    pub fn grpc_client(&self) -> &GrpcClientMetrics {
        &self.grpc_client
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // Registration and encoding do not leave the registry half-written;
        // keep serving metrics after an unrelated panic.
        self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Labels of one gRPC method's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct GrpcCallLabels {
    /// Fully qualified service, e.g. `commerce.order.v1.OrderService`.
    pub grpc_service: String,
    /// Method name, e.g. `PlaceOrder`.
    pub grpc_method: String,
    /// Status code name as tonic spells it (`Ok`, `NotFound`, ...).
    pub grpc_code: String,
}

/// Labels of one gRPC method.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct GrpcMethodLabels {
    /// Fully qualified service, e.g. `commerce.order.v1.OrderService`.
    pub grpc_service: String,
    /// Method name, e.g. `PlaceOrder`.
    pub grpc_method: String,
}

/// The exemplar of a latency observation: the trace it was made in, so that
/// a dashboard can jump from a slow bucket to the trace that landed there.
/// Exemplars travel in the OpenMetrics text the admin server answers.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceExemplar {
    pub trace_id: String,
}

impl TraceExemplar {
    /// The exemplar of the current span's trace, if it is a sampled one
    /// (an unsampled trace is in no backend to jump to).
    pub fn current() -> Option<Self> {
        crate::trace_context::current()
            .filter(opentelemetry::trace::SpanContext::is_sampled)
            .map(|span| Self { trace_id: span.trace_id().to_string() })
    }
}

/// A latency histogram whose buckets carry [`TraceExemplar`]s.
pub type TracedHistogram = HistogramWithExemplars<TraceExemplar>;

type HistogramFamily<L> = Family<L, TracedHistogram, fn() -> TracedHistogram>;

/// Server-side gRPC request metrics.
#[derive(Debug, Clone)]
pub struct GrpcServerMetrics {
    /// `commerce_grpc_server_handled_total{grpc_service, grpc_method, grpc_code}`.
    pub handled: Family<GrpcCallLabels, Counter>,
    /// `commerce_grpc_server_handling_seconds{grpc_service, grpc_method}`:
    /// from the request's arrival to the end of its response, with the
    /// request's trace as exemplar.
    pub handling_seconds: HistogramFamily<GrpcMethodLabels>,
}

fn latency_histogram() -> TracedHistogram {
    // 1 ms to ~33 s in doublings: covers a cache hit and a call that runs
    // into the longest deadline a client sets.
    HistogramWithExemplars::new(exponential_buckets(0.001, 2.0, 16))
}

impl GrpcServerMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            handled: Family::default(),
            handling_seconds: Family::new_with_constructor(latency_histogram),
        };
        registry.register(
            "commerce_grpc_server_handled",
            "gRPC requests completed by this server, by method and status code",
            metrics.handled.clone(),
        );
        registry.register(
            "commerce_grpc_server_handling_seconds",
            "Time from a gRPC request's arrival to the end of its response",
            metrics.handling_seconds.clone(),
        );
        metrics
    }
}

/// Labels of one peer a client calls.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PeerLabels {
    /// The peer's catalog name (`catalog`, `inventory`, ...).
    pub peer: String,
}

/// Client-side metrics of the resilient gRPC channels.
#[derive(Debug, Clone)]
pub struct GrpcClientMetrics {
    /// `commerce_grpc_client_circuit_state{peer}`: 0 closed, 1 half-open, 2 open.
    pub circuit_state: Family<PeerLabels, Gauge>,
    /// `commerce_grpc_client_retries_total{peer}`: attempts after the first.
    pub retries: Family<PeerLabels, Counter>,
    /// `commerce_grpc_client_rejected_total{peer}`: calls failed fast by an
    /// open circuit, without reaching the peer.
    pub rejected: Family<PeerLabels, Counter>,
}

impl GrpcClientMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            circuit_state: Family::default(),
            retries: Family::default(),
            rejected: Family::default(),
        };
        registry.register(
            "commerce_grpc_client_circuit_state",
            "Circuit breaker state per peer: 0 closed, 1 half-open, 2 open",
            metrics.circuit_state.clone(),
        );
        registry.register(
            "commerce_grpc_client_retries",
            "gRPC call attempts after the first, per peer",
            metrics.retries.clone(),
        );
        registry.register(
            "commerce_grpc_client_rejected",
            "gRPC calls failed fast by an open circuit, per peer",
            metrics.rejected.clone(),
        );
        metrics
    }
}

/// Standard `process_*` metrics read from `/proc/self` at scrape time: CPU,
/// memory and file descriptors are the first things to look at when a pod
/// misbehaves, and reading them costs a few syscalls per scrape.
#[derive(Debug)]
struct ProcessCollector {
    start_time_seconds: f64,
}

impl ProcessCollector {
    fn new() -> Self {
        let start_time_seconds =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        Self { start_time_seconds }
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times: fixed at 100 by the
/// Linux ABI (USER_HZ) on every architecture the images are built for.
const USER_HZ: f64 = 100.0;
/// Page size for `statm`; 4 KiB on the x86-64 and arm64 kernels we run on.
const PAGE_SIZE: f64 = 4096.0;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let start = ConstGauge::new(self.start_time_seconds);
        start.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            None,
            start.metric_type(),
        )?)?;
        if let Some(cpu) = read_cpu_seconds() {
            let cpu = ConstCounter::new(cpu);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                cpu.metric_type(),
            )?)?;
        }
        if let Some(rss) = read_resident_bytes() {
            let rss = ConstGauge::new(rss);
            rss.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                None,
                rss.metric_type(),
            )?)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let fds = ConstGauge::new(i64::try_from(fds.count()).unwrap_or(i64::MAX));
            fds.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                fds.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

fn read_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces; fields after its closing
    // parenthesis are fixed: utime and stime are fields 14 and 15.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

fn read_resident_bytes() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * PAGE_SIZE)
}

/// The admin routes, for a caller that serves them itself.
pub fn router(readiness: Readiness, metrics: Metrics) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(readiness)
        .route("/metrics", get(render_metrics).with_state(metrics))
}

/// Binds `args.addr` and serves the admin routes until `shutdown`.
pub async fn serve(
    args: &AdminArgs,
    readiness: Readiness,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), AdminError> {
    let listener =
        TcpListener::bind(args.addr).await.map_err(|source| AdminError::Bind { addr: args.addr, source })?;
    serve_on(listener, readiness, metrics, shutdown).await
}

/// Serves the admin routes on an already bound listener (tests bind port 0)
/// until `shutdown`, then finishes the requests in flight.
pub async fn serve_on(
    listener: TcpListener,
    readiness: Readiness,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), AdminError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin server listening");
    }
    axum::serve(listener, router(readiness, metrics))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(AdminError::Serve)
}

async fn healthz() -> &'static str {
    "ok\n"
}

#[derive(serde::Serialize)]
struct ReadyBody {
    ready: bool,
    checks: Vec<ReadyCheck>,
}

#[derive(serde::Serialize)]
struct ReadyCheck {
    name: String,
    ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

async fn readyz(State(readiness): State<Readiness>) -> Response {
    let checks: Vec<ReadyCheck> = readiness
        .snapshot()
        .into_iter()
        .map(|(name, state)| match state {
            CheckState::Ready => ReadyCheck { name, ready: true, reason: None },
            CheckState::NotReady(reason) => ReadyCheck { name, ready: false, reason: Some(reason) },
        })
        .collect();
    // Same rule as `Readiness::is_ready`, computed from this one snapshot so
    // that the status code and the body always agree.
    let ready = !checks.is_empty() && checks.iter().all(|check| check.ready);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(ReadyBody { ready, checks })).into_response()
}

async fn render_metrics(State(metrics): State<Metrics>) -> Response {
    match metrics.encode() {
        Ok(body) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response(),
        Err(error) => {
            tracing::error!(error = %error, "cannot encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Server layer that counts and times every gRPC request by service, method
/// and status code, into [`Metrics::grpc_server`].
///
/// The status is read where gRPC puts it: the response headers for an error
/// answered without a body (what tonic sends for `Err(Status)`), otherwise
/// the trailers at the end of the body. Unknown paths (which tonic answers
/// `Unimplemented`) are recorded as `unknown` so a scanner cannot blow up
/// the label set.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    metrics: GrpcServerMetrics,
}

impl GrpcMetricsLayer {
    /// Records into `metrics`' gRPC server families.
    pub fn new(metrics: &Metrics) -> Self {
        Self { metrics: metrics.grpc_server.clone() }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService { inner, metrics: self.metrics.clone() }
    }
}

/// The service [`GrpcMetricsLayer`] builds.
#[derive(Debug, Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: GrpcServerMetrics,
}

impl<S, B, ResBody> Service<http::Request<B>> for GrpcMetricsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: http_body::Body + Unpin,
{
    type Response = http::Response<MetricsBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let mut recording = Recording {
            metrics: self.metrics.clone(),
            path: request.uri().path().to_owned(),
            started: Instant::now(),
            // Inside the request's span (the trace layer is outside this one).
            exemplar: TraceExemplar::current(),
            code: None,
            ended: false,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            match response.await {
                Ok(response) => {
                    recording.code =
                        tonic::Status::from_header_map(response.headers()).map(|status| status.code());
                    Ok(response.map(|inner| MetricsBody { inner, recording: Some(recording) }))
                }
                Err(error) => {
                    recording.code = Some(Code::Unknown);
                    drop(recording);
                    Err(error)
                }
            }
        })
    }
}

/// A response body that records its request's metrics when it is finished
/// (or dropped, when the client went away).
#[derive(Debug)]
pub struct MetricsBody<B> {
    inner: B,
    recording: Option<Recording>,
}

#[derive(Debug)]
struct Recording {
    metrics: GrpcServerMetrics,
    path: String,
    started: Instant,
    exemplar: Option<TraceExemplar>,
    /// The status once seen, in the headers or the trailers.
    code: Option<Code>,
    /// Whether the body ran to its end (a body dropped earlier means the
    /// client cancelled).
    ended: bool,
}

impl Drop for Recording {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(if self.ended { Code::Unknown } else { Code::Cancelled });
        let (service, method) = match self.path.trim_start_matches('/').split_once('/') {
            Some((service, method)) if code != Code::Unimplemented => (service, method),
            _ => ("unknown", "unknown"),
        };
        let method_labels =
            GrpcMethodLabels { grpc_service: service.to_owned(), grpc_method: method.to_owned() };
        self.metrics.handling_seconds.get_or_create(&method_labels).observe(
            self.started.elapsed().as_secs_f64(),
            self.exemplar.take(),
            None,
        );
        self.metrics
            .handled
            .get_or_create(&GrpcCallLabels {
                grpc_service: method_labels.grpc_service,
                grpc_method: method_labels.grpc_method,
                grpc_code: format!("{code:?}"),
            })
            .inc();
    }
}

impl<B> http_body::Body for MetricsBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(recording)) = (frame.trailers_ref(), this.recording.as_mut())
                    && let Some(status) = tonic::Status::from_header_map(trailers)
                {
                    recording.code = Some(status.code());
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(recording) = this.recording.as_mut() {
                    recording.code.get_or_insert(Code::Internal);
                }
            }
            Poll::Ready(None) => {
                if let Some(recording) = this.recording.as_mut() {
                    recording.ended = true;
                }
                // Record now rather than when hyper gets round to dropping us.
                this.recording = None;
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_build_info_and_process_metrics() {
        let metrics = Metrics::new("order");
        let text = metrics.encode().expect("encodes");
        assert!(
            text.contains(&format!(
                "commerce_build_info{{service=\"order\",version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(text.contains("process_start_time_seconds"), "{text}");
        if cfg!(target_os = "linux") {
            assert!(text.contains("process_resident_memory_bytes"), "{text}");
            assert!(text.contains("process_cpu_seconds_total"), "{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
