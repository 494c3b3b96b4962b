//! Telemetry: structured logs, and W3C trace context carried across gRPC.
//!
//! Every service logs JSON lines (one object per event, with the current
//! span's fields) so that a log collector can index them without parsing
//! text; `--log-format text` is for a developer's terminal.
//!
//! Tracing across services is deliberately small: no exporter, just the
//! `traceparent` header. [`ServerTraceLayer`] makes each incoming gRPC request
//! a span of its own (a child of the caller's) and runs it in
//! [`trace_context::scope`] and a `tracing` span carrying `trace_id`,
//! `span_id` and `parent_span_id`, so every log line of the request shows
//! the trace and the span it belongs to;
//! [`ClientTraceLayer`] (also built into
//! [`ResilientChannel`](crate::resilience::ResilientChannel)) sends
//! [`trace_context::outgoing`] with every call, so the next service's logs
//! carry the same trace id. One checkout can then be followed through every
//! service by grepping for one id.
//!
//! The scope is a tokio task-local: work a handler moves to `tokio::spawn`
//! must take the context along (`trace_context::scope(current, fut)`), and
//! the frames of a server-streaming response body are produced outside it.
//!
//! Log lines bound for a standard output that is not a terminal (a file, a
//! pipe, a container log) are buffered and written out by a thread of their
//! own every [`FLUSH_INTERVAL`]: the gateway writes an access-log line per
//! request, and one `write` per line, under the lock of standard output that
//! every worker thread contends for, cost it a quarter of its throughput on
//! its read path. A line therefore reaches the output up to
//! [`FLUSH_INTERVAL`] late; [`flush`] writes what is waiting (the binary
//! calls it before it exits), and a process killed outright loses at most
//! that interval's lines. On a terminal lines are written at once.

use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::trace_context::{self, TRACEPARENT, TraceContext};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line: what log collectors in a cluster index.
    #[default]
    Json,
    /// Human-readable lines for a terminal.
    Text,
}

/// Logging flags every service accepts.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log line format.
    #[arg(long = "log-format", id = "log-format", env = "COMMERCE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub format: LogFormat,
    /// Which events to log, in `tracing` filter syntax, e.g.
    /// `info,commerce_order=debug,sqlx=warn`.
    #[arg(long = "log-filter", id = "log-filter", env = "COMMERCE_LOG_FILTER", default_value = "info")]
    pub filter: String,
}

impl Default for LogArgs {
    fn default() -> Self {
        Self { format: LogFormat::Json, filter: "info".to_owned() }
    }
}

/// What can go wrong setting telemetry up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `--log-filter` is not valid filter syntax; failing at start-up beats
    /// silently logging nothing.
    #[error("cannot parse log filter {filter:?}")]
    ParseFilter {
        /// The filter as given.
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogStream {
    /// Standard output: the services.
    #[default]
    Stdout,
    /// Standard error: the operator, whose standard output is `render`'s
    /// and `crd`'s YAML.
    Stderr,
}

impl LogStream {
    fn is_terminal(self) -> bool {
        use std::io::IsTerminal as _;
        match self {
            LogStream::Stdout => std::io::stdout().is_terminal(),
            LogStream::Stderr => std::io::stderr().is_terminal(),
        }
    }
}

/// Installs the process-wide log subscriber, writing to standard output.
///
/// Safe to call more than once (tests do, from many test functions): when a
/// subscriber is already installed the first one stays and this returns
/// `Ok`. Only an invalid filter is an error.
pub fn init(args: &LogArgs, service_name: &str) -> Result<(), TelemetryError> {
    init_to(args, service_name, LogStream::Stdout)
}

/// [`init`], writing to `stream`. Text lines carry ANSI colours only when
/// `stream` is a terminal (and `NO_COLOR` is unset): redirected to a file, a
/// pipe or a container log they are plain text.
pub fn init_to(args: &LogArgs, service_name: &str, stream: LogStream) -> Result<(), TelemetryError> {
    let terminal = stream.is_terminal();
    let ansi = terminal && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let installed = match stream {
        LogStream::Stdout if !terminal => subscriber(args, BufferedStdout(stdout_buffer()), ansi)?.try_init(),
        LogStream::Stdout => subscriber(args, std::io::stdout, ansi)?.try_init(),
        LogStream::Stderr => subscriber(args, std::io::stderr, ansi)?.try_init(),
    };
    match installed {
        Ok(()) => tracing::info!(
            service = service_name,
            version = env!("CARGO_PKG_VERSION"),
            format = ?args.format,
            filter = %args.filter,
            "logging initialised"
        ),
        Err(_) => {
            tracing::debug!(service = service_name, "a log subscriber is already installed; keeping it")
        }
    }
    Ok(())
}

/// How long a log line may wait in the buffer of standard output.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// Buffered bytes that wake the writing thread before its interval is up
/// (about a thousand access-log lines).
const WAKE_AT_BYTES: usize = 256 << 10;
/// Buffered bytes past which a logging thread writes the buffer out itself,
/// as an unbuffered writer would: when standard output blocks (a full pipe)
/// logging slows the process down rather than filling its memory.
const MAX_PENDING_BYTES: usize = 8 << 20;

/// The buffer of standard output's log lines and its writing thread's
/// wake-up call.
struct LogBuffer {
    pending: Mutex<Vec<u8>>,
    /// Standard output (a capture in tests); locked while a taken buffer is
    /// written, so that buffers reach it in the order they were filled.
    output: Mutex<Box<dyn std::io::Write + Send>>,
    wake: Condvar,
}

impl LogBuffer {
    fn new(output: Box<dyn std::io::Write + Send>) -> Self {
        Self {
            pending: Mutex::new(Vec::with_capacity(WAKE_AT_BYTES)),
            output: Mutex::new(output),
            wake: Condvar::new(),
        }
    }

    /// Writes out what is waiting.
    fn flush(&self) {
        let mut output = self.output.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let taken =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        if !taken.is_empty() {
            // Nowhere to report a failed write of the log itself.
            let _ = output.write_all(&taken).and_then(|()| output.flush());
        }
    }
}

/// The buffer of standard output, once logging uses it.
static STDOUT_BUFFER: OnceLock<Arc<LogBuffer>> = OnceLock::new();

/// The process's one buffer of standard output, and its writing thread
/// (started with it).
fn stdout_buffer() -> Arc<LogBuffer> {
    STDOUT_BUFFER
        .get_or_init(|| {
            let buffer = Arc::new(LogBuffer::new(Box::new(std::io::stdout())));
            let writer = buffer.clone();
            let spawned = std::thread::Builder::new().name("log-writer".to_owned()).spawn(move || {
                loop {
                    let pending = writer.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let waited = writer.wake.wait_timeout(pending, FLUSH_INTERVAL);
                    drop(waited);
                    writer.flush();
                }
            });
            if let Err(error) = spawned {
                // Lines are then written when the buffer fills and at exit.
                eprintln!("cannot start the log-writing thread: {error}");
            }
            buffer
        })
        .clone()
}

/// Writes the log lines still waiting in the buffer of standard output;
/// call it before the process exits.
pub fn flush() {
    if let Some(buffer) = STDOUT_BUFFER.get() {
        buffer.flush();
    }
}

/// A [`MakeWriter`](tracing_subscriber::fmt::MakeWriter) into [`LogBuffer`].
#[derive(Clone)]
struct BufferedStdout(Arc<LogBuffer>);

/// One line's writer: appends to the buffer.
struct BufferedLine<'a>(&'a LogBuffer);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BufferedStdout {
    type Writer = BufferedLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        BufferedLine(&self.0)
    }
}

impl std::io::Write for BufferedLine<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut pending = self.0.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        pending.extend_from_slice(bytes);
        let size = pending.len();
        drop(pending);
        if size >= MAX_PENDING_BYTES {
            self.0.flush();
        } else if size >= WAKE_AT_BYTES {
            self.0.wake.notify_one();
        }
        Ok(bytes.len())
    }

    /// The writing thread flushes within [`FLUSH_INTERVAL`].
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The subscriber [`init_to`] installs, writing to `writer`; `ansi` says
/// whether text lines may carry colour codes (JSON lines never do).
fn subscriber<W>(
    args: &LogArgs,
    writer: W,
    ansi: bool,
) -> Result<Box<dyn tracing::Subscriber + Send + Sync>, TelemetryError>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(&args.filter)
        .map_err(|source| TelemetryError::ParseFilter { filter: args.filter.clone(), source })?;
    Ok(match args.format {
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt()
                .json()
                .with_env_filter(filter)
                .with_writer(writer)
                .with_ansi(false)
                .with_target(true)
                // The current span carries `trace_id` and the gRPC method; the
                // full span list would repeat them on every line.
                .with_current_span(true)
                .with_span_list(false)
                .flatten_event(true)
                .finish(),
        ),
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(writer)
                .with_ansi(ansi)
                .with_target(true)
                .finish(),
        ),
    })
}

/// The trace an incoming request belongs to: its `traceparent` header, or a
/// new root when it has none or a malformed one (a bad header must never fail
/// the request).
pub fn extract(headers: &http::HeaderMap) -> TraceContext {
    received(headers).unwrap_or_else(TraceContext::new_root)
}

/// The valid `traceparent` of `headers`, if any.
pub fn received(headers: &http::HeaderMap) -> Option<TraceContext> {
    headers.get(TRACEPARENT).and_then(|value| value.to_str().ok()).and_then(TraceContext::parse)
}

/// The hex of a parent span id for a log field (empty for a root).
pub fn parent_hex(parent: Option<[u8; 8]>) -> String {
    parent.map(hex::encode).unwrap_or_default()
}

/// Sets `traceparent` to [`trace_context::outgoing`] unless the caller already
/// set one explicitly.
pub fn inject(headers: &mut http::HeaderMap) {
    if headers.contains_key(TRACEPARENT) {
        return;
    }
    // A formatted context is always plain ASCII, so this cannot fail; if it
    // ever did, sending no header only starts a new trace downstream.
    if let Ok(value) = HeaderValue::from_str(&trace_context::outgoing().to_string()) {
        headers.insert(TRACEPARENT, value);
    }
}

/// A tonic interceptor that adds `traceparent`, for clients built with
/// `XClient::with_interceptor(channel, telemetry::traceparent_interceptor)`
/// rather than over a [`ResilientChannel`](crate::resilience::ResilientChannel).
pub fn traceparent_interceptor(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    if !request.metadata().contains_key(TRACEPARENT)
        && let Ok(value) = trace_context::outgoing().to_string().parse()
    {
        request.metadata_mut().insert(TRACEPARENT, value);
    }
    Ok(request)
}

/// Server-side layer: runs each request as a child span of the caller's,
/// inside its trace's scope and a `grpc_request` span with `trace_id`,
/// `span_id`, `parent_span_id` and `method`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerTraceLayer;

impl<S> Layer<S> for ServerTraceLayer {
    type Service = ServerTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTrace { inner }
    }
}

/// The service [`ServerTraceLayer`] builds.
#[derive(Debug, Clone)]
pub struct ServerTrace<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for ServerTrace<S>
where
    S: Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // This request is a span of its own, a child of the caller's.
        let (context, parent) = TraceContext::serving(received(request.headers()));
        let span = tracing::info_span!(
            "grpc_request",
            trace_id = %context.trace_id_hex(),
            span_id = %context.span_id_hex(),
            parent_span_id = %parent_hex(parent),
            method = %request.uri().path(),
        );
        // Take the service that was polled ready and leave a clone behind, so
        // that `call` itself also runs inside the scope (a service may do work
        // there, not only in its future).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(trace_context::scope(context, async move { inner.call(request).await }.instrument(span)))
    }
}

/// Client-side layer: adds `traceparent` (a child of the caller's trace) to
/// every outgoing request. Put it directly around the `Channel`, so that the
/// header is computed in the calling task, where the trace scope is.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientTraceLayer;

impl<S> Layer<S> for ClientTraceLayer {
    type Service = ClientTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientTrace { inner }
    }
}

/// The service [`ClientTraceLayer`] builds.
#[derive(Debug, Clone)]
pub struct ClientTrace<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for ClientTrace<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        inject(request.headers_mut());
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_malformed_traceparent_starts_a_new_root() {
        let mut headers = http::HeaderMap::new();
        let first = extract(&headers);
        headers.insert(TRACEPARENT, HeaderValue::from_static("garbage"));
        let second = extract(&headers);
        assert_ne!(first.trace_id, second.trace_id);
    }

    #[tokio::test]
    async fn inject_sends_a_child_of_the_scoped_trace_and_keeps_an_explicit_header() {
        let root = TraceContext::new_root();
        let mut headers = http::HeaderMap::new();
        trace_context::scope(root, async { inject(&mut headers) }).await;
        let sent = extract(&headers);
        assert_eq!(sent.trace_id, root.trace_id);
        assert_ne!(sent.span_id, root.span_id);

        let explicit = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        headers.insert(TRACEPARENT, explicit.clone());
        trace_context::scope(root, async { inject(&mut headers) }).await;
        assert_eq!(headers.get(TRACEPARENT), Some(&explicit));
    }

    /// A writer that keeps what is written, as a file or pipe would.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What one warning looks like through the subscriber of `format`.
    fn one_line(format: LogFormat, terminal: bool) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let args = LogArgs { format, filter: "info".to_owned() };
        let subscriber = subscriber(&args, move || writer.clone(), terminal).unwrap();
        tracing::subscriber::with_default(subscriber, || tracing::warn!(order = 7, "payment declined"));
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn text_logs_carry_colour_codes_only_on_a_terminal() {
        let piped = one_line(LogFormat::Text, false);
        assert!(piped.contains("payment declined") && piped.contains("order=7"), "{piped}");
        assert!(!piped.contains('\x1b'), "ANSI codes in a redirected log: {piped:?}");
        let terminal = one_line(LogFormat::Text, true);
        assert!(terminal.contains('\x1b'), "no colours on a terminal: {terminal:?}");
        let json = one_line(LogFormat::Json, true);
        assert!(!json.contains('\x1b'), "{json:?}");
        let line: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
        assert_eq!(line["message"], "payment declined");
    }

    #[test]
    fn a_log_line_inside_a_served_request_names_its_trace_its_span_and_the_callers_span() {
        let captured = Captured::default();
        let writer = captured.clone();
        let args = LogArgs { format: LogFormat::Json, filter: "info".to_owned() };
        let subscriber = subscriber(&args, move || writer.clone(), false).unwrap();
        let caller = TraceContext::new_root();
        let mut request = http::Request::new(());
        request.headers_mut().insert(TRACEPARENT, caller.to_string().parse().unwrap());
        // The served work logs, and answers with the context it ran in.
        let handler = tower::service_fn(|_request: http::Request<()>| async {
            tracing::info!("reserving stock");
            Ok::<_, std::convert::Infallible>(trace_context::current())
        });
        let mut service = ServerTraceLayer.layer(handler);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let seen = tracing::subscriber::with_default(subscriber, || {
            runtime.block_on(async { service.call(request).await }).unwrap()
        })
        .expect("the request ran in a trace scope");
        assert_eq!(seen.trace_id, caller.trace_id);
        assert_ne!(seen.span_id, caller.span_id, "the request is a span of its own");

        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["message"], "reserving stock");
        assert_eq!(line["span"]["trace_id"], caller.trace_id_hex(), "{line}");
        assert_eq!(line["span"]["span_id"], seen.span_id_hex(), "{line}");
        assert_eq!(line["span"]["parent_span_id"], caller.span_id_hex(), "{line}");
    }

    #[test]
    fn buffered_lines_arrive_whole_and_in_order_once_flushed() {
        let captured = Captured::default();
        let buffer = Arc::new(LogBuffer::new(Box::new(captured.clone())));
        let writers: Vec<_> = (0..4)
            .map(|thread| {
                let buffer = buffer.clone();
                std::thread::spawn(move || {
                    for line in 0..100 {
                        let text = format!("{{\"thread\":{thread},\"line\":{line}}}\n");
                        BufferedLine(&buffer).write_all(text.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        assert!(captured.0.lock().unwrap().is_empty(), "nothing is written before a flush");
        buffer.flush();
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> =
            text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(lines.len(), 400);
        for thread in 0..4 {
            let order: Vec<u64> =
                lines.iter().filter(|l| l["thread"] == thread).filter_map(|l| l["line"].as_u64()).collect();
            assert_eq!(order, (0..100).collect::<Vec<u64>>(), "thread {thread}'s lines in order");
        }
    }

    #[test]
    fn a_full_buffer_is_written_by_the_logging_thread_itself() {
        let captured = Captured::default();
        let buffer = LogBuffer::new(Box::new(captured.clone()));
        let big = vec![b'x'; MAX_PENDING_BYTES];
        BufferedLine(&buffer).write_all(&big).unwrap();
        assert_eq!(captured.0.lock().unwrap().len(), MAX_PENDING_BYTES, "no buffer grows past the bound");
    }

    #[test]
    fn an_invalid_filter_is_an_error() {
        let args = LogArgs { format: LogFormat::Text, filter: "info,[".to_owned() };
        assert!(matches!(init(&args, "test"), Err(TelemetryError::ParseFilter { .. })));
    }
}
