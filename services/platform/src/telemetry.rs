//! Telemetry: structured logs, and traces with W3C trace context carried
//! across HTTP, gRPC and Kafka.
//!
//! Every service logs JSON lines (one object per event, with the current
//! span's fields) so that a log collector can index them without parsing
//! text; `--log-format text` is for a developer's terminal.
//!
//! Traces are OpenTelemetry's: [`init`] installs the `tracing-opentelemetry`
//! layer beside the log layer, so the `tracing` spans at `info` and above
//! are OpenTelemetry spans, and exports them over OTLP/gRPC when the
//! standard variables ask for it ([`TraceExport`]: an endpoint in
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`;
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_BSP_*` and the exporter's own variables are read by the
//! OpenTelemetry SDK). Without an endpoint nothing is exported, but the
//! trace still travels and every log line still names it.
//!
//! The spans: the gateway's `http_request`; [`ServerTraceLayer`]'s
//! `grpc_request`, a child of the caller's; [`ClientTraceLayer`]'s
//! `grpc_client` (also built into
//! [`ResilientChannel`](crate::resilience::ResilientChannel)), which sends
//! its context in `traceparent`/`tracestate`; the outbox relay's
//! `outbox_publish`, a child of the span that enqueued the event, whose
//! context the Kafka record carries; the consumer's `event`, a child of it;
//! and `db_transaction` ([`crate::db::begin`]). The spans that start a
//! service's work record `trace_id` and `span_id` as fields
//! ([`trace_context::start`]), so every log line of a request or an event
//! shows the trace and the span it belongs to. One checkout can then be
//! followed through every service in a trace backend, or by grepping the
//! logs for one id.
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

use std::io::Write as _;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::trace_context;

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
    /// The `OTEL_*` variables ask for an export this build cannot do.
    #[error("{variable}={value:?} is not supported: {supported}")]
    UnsupportedExport { variable: &'static str, value: String, supported: &'static str },
    /// The OTLP exporter cannot be built from the `OTEL_EXPORTER_OTLP_*`
    /// variables (a malformed endpoint, say).
    #[error("cannot build the OTLP trace exporter")]
    BuildExporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// Whether and where spans are exported, from the standard OpenTelemetry
/// variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceExport {
    /// No endpoint is set, `OTEL_TRACES_EXPORTER=none` or
    /// `OTEL_SDK_DISABLED=true`: spans are made (their ids travel and are
    /// logged) but not exported.
    Off,
    /// OTLP over gRPC to this endpoint.
    Otlp { endpoint: String },
}

impl TraceExport {
    /// Reads the variables through `var` (the process environment in
    /// [`init`]). Only OTLP over gRPC is built in: asking for another
    /// exporter or protocol is an error rather than silence.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, TelemetryError> {
        let set =
            |name: &str| var(name).map(|value| value.trim().to_owned()).filter(|value| !value.is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|value| value.eq_ignore_ascii_case("true")) {
            return Ok(Self::Off);
        }
        match set("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(Self::Off),
            Some(other) => {
                return Err(TelemetryError::UnsupportedExport {
                    variable: "OTEL_TRACES_EXPORTER",
                    value: other.to_owned(),
                    supported: "otlp or none",
                });
            }
        }
        for variable in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
            if let Some(protocol) = set(variable) {
                if protocol != "grpc" {
                    return Err(TelemetryError::UnsupportedExport {
                        variable,
                        value: protocol,
                        supported: "grpc (OTLP over gRPC)",
                    });
                }
                break;
            }
        }
        let variable = if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some() {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        } else {
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        };
        Ok(match set(variable) {
            // A collector is reached in plain text inside the cluster (or a
            // sidecar); TLS to it is not built in, and failing every export
            // quietly would be worse than refusing to start.
            Some(endpoint) if !endpoint.starts_with("http://") => {
                return Err(TelemetryError::UnsupportedExport {
                    variable,
                    value: endpoint,
                    supported: "an http:// endpoint (OTLP over gRPC without TLS)",
                });
            }
            Some(endpoint) => Self::Otlp { endpoint },
            None => Self::Off,
        })
    }
}

/// The process's tracer provider, once [`init`] made it; [`flush`] shuts it
/// down, exporting what is queued.
static TRACER_PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The tracer of this process's spans: exporting over OTLP when `export`
/// says so (the exporter reads the rest of its `OTEL_EXPORTER_OTLP_*`
/// variables itself), named `service_name` unless `OTEL_SERVICE_NAME` or
/// `OTEL_RESOURCE_ATTRIBUTES` name it.
///
/// Must run inside a Tokio runtime: the gRPC exporter's channel lives there.
fn tracer(
    export: &TraceExport,
    service_name: &str,
) -> Result<(SdkTracerProvider, SdkTracer), TelemetryError> {
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named_by_environment = std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES")
            .is_ok_and(|attributes| attributes.contains("service.name="));
    if !named_by_environment {
        resource = resource.with_service_name(service_name.to_owned());
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let mut provider = SdkTracerProvider::builder().with_resource(resource);
    if let TraceExport::Otlp { .. } = export {
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_protocol(opentelemetry_otlp::Protocol::Grpc)
            .build()
            .map_err(TelemetryError::BuildExporter)?;
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();
    let tracer = provider.tracer("commerce");
    Ok((provider, tracer))
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
///
/// Spans are exported as [`TraceExport::from_vars`] reads the environment;
/// call it inside a Tokio runtime.
pub fn init_to(args: &LogArgs, service_name: &str, stream: LogStream) -> Result<(), TelemetryError> {
    EnvFilter::try_new(&args.filter)
        .map_err(|source| TelemetryError::ParseFilter { filter: args.filter.clone(), source })?;
    if tracing::dispatcher::has_been_set() {
        tracing::debug!(service = service_name, "a log subscriber is already installed; keeping it");
        return Ok(());
    }
    let export = TraceExport::from_vars(|name| std::env::var(name).ok())?;
    let (provider, tracer) = tracer(&export, service_name)?;
    let terminal = stream.is_terminal();
    let ansi = terminal && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let installed = match stream {
        LogStream::Stdout if !terminal => {
            subscriber(args, BufferedStdout(stdout_buffer()), ansi, tracer)?.try_init()
        }
        LogStream::Stdout => subscriber(args, std::io::stdout, ansi, tracer)?.try_init(),
        LogStream::Stderr => subscriber(args, std::io::stderr, ansi, tracer)?.try_init(),
    };
    match installed {
        Ok(()) => {
            let _ = TRACER_PROVIDER.set(provider);
            tracing::info!(
                service = service_name,
                version = env!("CARGO_PKG_VERSION"),
                format = ?args.format,
                filter = %args.filter,
                traces = ?export,
                "logging initialised"
            )
        }
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

/// How long [`flush`] waits for the last spans to be exported.
const TRACE_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Exports the spans still queued (waiting up to [`TRACE_EXPORT_TIMEOUT`])
/// and writes the log lines still waiting in the buffer of standard
/// output; call it before the process exits, inside its Tokio runtime.
pub fn flush() {
    if let Some(provider) = TRACER_PROVIDER.get() {
        // A trace backend that is down is no reason to fail the exit.
        let _ = provider.shutdown_with_timeout(TRACE_EXPORT_TIMEOUT);
    }
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
/// whether text lines may carry colour codes (JSON lines never do); the
/// spans at `info` and above, whatever `--log-filter` logs (and the
/// warnings and errors within them, as span events), go to `tracer`.
fn subscriber<W>(
    args: &LogArgs,
    writer: W,
    ansi: bool,
    tracer: SdkTracer,
) -> Result<Box<dyn tracing::Subscriber + Send + Sync>, TelemetryError>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(&args.filter)
        .map_err(|source| TelemetryError::ParseFilter { filter: args.filter.clone(), source })?;
    let log = match args.format {
        // The current span carries `trace_id` and the gRPC method; the full
        // span list would repeat them on every line.
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(crate::json_lines::SpanFields)
            .event_format(crate::json_lines::JsonLines)
            .with_writer(writer)
            .with_ansi(false)
            .boxed(),
        LogFormat::Text => {
            tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(ansi).with_target(true).boxed()
        }
    };
    // One filter for the whole stack, as a layer of its own (as a per-layer
    // filter on the log layer alone, spans it enabled were at times entered
    // by neither layer): what `--log-filter` lets through is logged, and
    // every span at `info` and above is made whatever it says.
    Ok(Box::new(
        tracing_subscriber::registry().with(LogFilterAndSpans(filter)).with(log).with(trace_layer(tracer)),
    ))
}

/// Whether spans of `metadata`'s callsite are made whatever the log filter
/// says: they carry the trace (its ids, the context sent onwards, the
/// export), which must not stop at `--log-filter=warn`.
fn traced_span(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.is_span() && *metadata.level() <= tracing::Level::INFO
}

/// The log filter, widened to the spans that carry the trace
/// ([`traced_span`]). Log lines are events, which only the log filter lets
/// through; a span it would not have let through only shows as the
/// fields of the lines logged inside it.
struct LogFilterAndSpans(EnvFilter);

impl<S> tracing_subscriber::Layer<S> for LogFilterAndSpans
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        // Registered with the log filter in any case: its span directives
        // keep their state.
        let interest = tracing_subscriber::Layer::<S>::register_callsite(&self.0, metadata);
        if traced_span(metadata) { tracing::subscriber::Interest::always() } else { interest }
    }

    fn enabled(
        &self,
        metadata: &tracing::Metadata<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        traced_span(metadata) || tracing_subscriber::Layer::<S>::enabled(&self.0, metadata, ctx)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        let logged = tracing_subscriber::Layer::<S>::max_level_hint(&self.0)?;
        Some(logged.max(tracing::level_filters::LevelFilter::INFO))
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        tracing_subscriber::Layer::<S>::event_enabled(&self.0, event, ctx)
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        tracing_subscriber::Layer::<S>::on_new_span(&self.0, attrs, id, ctx);
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        tracing_subscriber::Layer::<S>::on_record(&self.0, id, values, ctx);
    }

    fn on_enter(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        tracing_subscriber::Layer::<S>::on_enter(&self.0, id, ctx);
    }

    fn on_exit(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        tracing_subscriber::Layer::<S>::on_exit(&self.0, id, ctx);
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        tracing_subscriber::Layer::<S>::on_close(&self.0, id, ctx);
    }
}

/// The layer that makes `tracing` spans OpenTelemetry spans of `tracer`:
/// spans at `info` and above, with the warnings and errors inside them as
/// span events.
fn trace_layer<S>(tracer: SdkTracer) -> impl tracing_subscriber::Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span> + Send + Sync,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_filter(SpansAndWarnings)
}

/// The trace layer's filter: spans at `info` and above, and the warnings and
/// errors within them (as span events).
///
/// It never gives a callsite `Interest::always`. A per-layer filter's
/// decision travels from `enabled` to `on_new_span` through a thread-local
/// that the next `enabled` call overwrites; for an `always` callsite the
/// macros skip `enabled`, so the span is judged by whatever was asked last.
/// sqlx asks `log_enabled!` (through tracing-log) after every query, for
/// its debug-level query log, which this filter refuses: the next span of
/// an `always` callsite on that thread then silently missed the trace layer
/// and had no OpenTelemetry side (seen: an event consumer's span created
/// after a database poll on the same thread had no trace context). Asking
/// every time costs one comparison (tokio-rs/tracing#2519).
#[derive(Debug, Clone, Copy)]
struct SpansAndWarnings;

impl SpansAndWarnings {
    fn wants(metadata: &tracing::Metadata<'_>) -> bool {
        let level = *metadata.level();
        if metadata.is_span() { level <= tracing::Level::INFO } else { level <= tracing::Level::WARN }
    }
}

impl<S> tracing_subscriber::layer::Filter<S> for SpansAndWarnings {
    fn enabled(
        &self,
        metadata: &tracing::Metadata<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        Self::wants(metadata)
    }

    fn callsite_enabled(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if Self::wants(metadata) {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::INFO)
    }
}

/// The layer [`init`] installs, exporting nothing: for a subscriber of the
/// caller's own (a test's), under which spans are OpenTelemetry spans and
/// trace context travels as in a service.
pub fn unexported_trace_layer<S>() -> impl tracing_subscriber::Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span> + Send + Sync,
{
    trace_layer(SdkTracerProvider::builder().build().tracer("commerce"))
}

/// Server-side layer: runs each request in a `grpc_request` span, a child
/// of the caller's (its `traceparent`, or a new trace), named after the
/// method, with `trace_id`, `span_id`, `parent_span_id` and an empty
/// `order_id` that order-handling methods record
/// ([`record_order_id`]).
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
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let parent = trace_context::extract_http(request.headers());
        let path = request.uri().path();
        let span = tracing::info_span!(
            "grpc_request",
            otel.name = path.trim_start_matches('/'),
            otel.kind = "server",
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent_span_id = %trace_context::parent_hex(parent.as_ref()),
            order_id = tracing::field::Empty,
        );
        trace_context::start(&span, parent.as_ref());
        trace_context::set_attribute(&span, opentelemetry::KeyValue::new("rpc.system", "grpc"));
        // Take the service that was polled ready and leave a clone behind, so
        // that `call` itself also runs inside the span (a service may do work
        // there, not only in its future).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let future = span.in_scope(|| inner.call(request));
        future.instrument(span)
    }
}

/// Records `order_id` on the current span (a served gRPC request's, whose
/// field it is), so that its trace can be found by order.
pub fn record_order_id(order_id: &impl std::fmt::Display) {
    tracing::Span::current().record("order_id", tracing::field::display(order_id));
}

/// The `grpc_client` span of one outgoing call to `path`, whose context the
/// request carries onwards.
pub fn client_span(path: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "grpc_client",
        otel.name = path.trim_start_matches('/'),
        otel.kind = "client",
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    trace_context::start(&span, None);
    trace_context::set_attribute(&span, opentelemetry::KeyValue::new("rpc.system", "grpc"));
    span
}

/// Client-side layer: each outgoing request is a `grpc_client` span (a
/// child of the caller's current span) and carries its context in
/// `traceparent` and `tracestate`. Put it directly around the `Channel`, so
/// that the span is made in the calling task, inside the caller's span.
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
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let span = client_span(request.uri().path());
        span.in_scope(|| trace_context::inject_http(request.headers_mut()));
        let future = span.in_scope(|| self.inner.call(request));
        future.instrument(span)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tracer that exports nothing, as without an endpoint.
    fn unexported() -> SdkTracer {
        SdkTracerProvider::builder().build().tracer("test")
    }

    /// A remote caller's span.
    fn caller() -> opentelemetry::trace::SpanContext {
        trace_context::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Some("vendor=7"))
            .expect("a valid traceparent")
    }

    #[test]
    fn the_export_is_off_without_an_endpoint_and_refuses_what_it_cannot_do() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(key, _)| *key == name).map(|(_, value)| (*value).to_owned())
        };
        assert_eq!(TraceExport::from_vars(vars(&[])).unwrap(), TraceExport::Off);
        let endpoint = "http://127.0.0.1:4317";
        assert_eq!(
            TraceExport::from_vars(vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")]))
                .unwrap(),
            TraceExport::Otlp { endpoint: endpoint.to_owned() }
        );
        assert_eq!(
            TraceExport::from_vars(vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://elsewhere:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4317"),
            ]))
            .unwrap(),
            TraceExport::Otlp { endpoint: endpoint.to_owned() },
            "the traces' own endpoint wins"
        );
        for off in [
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"), ("OTEL_SDK_DISABLED", "true")][..],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"), ("OTEL_TRACES_EXPORTER", "none")][..],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")][..],
        ] {
            let pairs: &'static [(&'static str, &'static str)] = off;
            assert_eq!(TraceExport::from_vars(vars(pairs)).unwrap(), TraceExport::Off, "{off:?}");
        }
        let refused = TraceExport::from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]))
        .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "OTEL_EXPORTER_OTLP_PROTOCOL=\"http/protobuf\" is not supported: grpc (OTLP over gRPC)"
        );
        let refused =
            TraceExport::from_vars(vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317")]))
                .unwrap_err();
        assert!(refused.to_string().contains("an http:// endpoint"), "{refused}");
        let refused = TraceExport::from_vars(vars(&[("OTEL_TRACES_EXPORTER", "zipkin")])).unwrap_err();
        assert!(refused.to_string().contains("OTEL_TRACES_EXPORTER=\"zipkin\""), "{refused}");
    }

    #[test]
    fn a_client_call_is_a_span_of_its_own_that_sends_its_context_and_keeps_an_explicit_header() {
        // Nothing logged: the spans carry the trace all the same.
        let args = LogArgs { format: LogFormat::Json, filter: "off".to_owned() };
        let subscriber = subscriber(&args, std::io::sink, false, unexported()).unwrap();
        let sent = tracing::subscriber::with_default(subscriber, || {
            let served = tracing::info_span!(
                "served",
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty
            );
            let started = trace_context::start(&served, Some(&caller())).expect("an OpenTelemetry span");
            let mut layer =
                ClientTraceLayer.layer(tower::service_fn(|request: http::Request<()>| async move {
                    Ok::<_, std::convert::Infallible>(request.headers().clone())
                }));
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            // The call is made inside the caller's span, as a client's
            // generated code makes it inside the caller's future.
            let call = served.in_scope(|| layer.call(http::Request::new(())));
            let headers = runtime.block_on(call).unwrap();
            let mut explicit = http::Request::new(());
            let header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
            explicit.headers_mut().insert(trace_context::TRACEPARENT, header.parse().unwrap());
            let kept = runtime.block_on(served.in_scope(|| layer.call(explicit))).unwrap();
            assert_eq!(kept.get(trace_context::TRACEPARENT).unwrap(), header);
            (started, headers)
        });
        let (served, headers) = sent;
        let child = trace_context::extract_http(&headers).expect("a traceparent was sent");
        assert_eq!(child.trace_id(), caller().trace_id());
        assert_ne!(child.span_id(), served.span_id(), "the call is a span of its own");
        assert_ne!(child.span_id(), caller().span_id());
        assert_eq!(headers.get(trace_context::TRACESTATE).unwrap(), "vendor=7", "the state travels on");
    }

    #[test]
    fn a_call_under_an_unsampled_start_is_neither_sampled_nor_sent_sampled_and_others_stay_sampled() {
        let args = LogArgs { format: LogFormat::Json, filter: "off".to_owned() };
        let subscriber = subscriber(&args, std::io::sink, false, unexported()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut layer = ClientTraceLayer.layer(tower::service_fn(|request: http::Request<()>| async move {
            Ok::<_, std::convert::Infallible>(request.headers().clone())
        }));
        let mut send_from = |span: &tracing::Span| {
            let headers = runtime.block_on(span.in_scope(|| layer.call(http::Request::new(())))).unwrap();
            trace_context::extract_http(&headers).expect("a traceparent was sent")
        };
        tracing::subscriber::with_default(subscriber, || {
            let poll = tracing::info_span!("poll");
            let started = trace_context::start_unsampled(&poll).expect("an OpenTelemetry span");
            assert!(!started.is_sampled() && started.is_valid());
            let sent = send_from(&poll);
            assert!(!sent.is_sampled(), "the call says it is not sampled: {sent:?}");
            assert_eq!(sent.trace_id(), started.trace_id());
            // The server continues the caller's decision.
            let served = tracing::info_span!("served");
            assert!(!trace_context::start(&served, Some(&sent)).unwrap().is_sampled());

            let request = tracing::info_span!("request");
            let sent = send_from(&request);
            assert!(sent.is_sampled(), "a call of an ordinary span is sampled: {sent:?}");
            let served = tracing::info_span!("served");
            assert!(trace_context::start(&served, Some(&sent)).unwrap().is_sampled());
        });
    }

    /// A writer that keeps what is written, as a file or pipe would.
    #[derive(Clone, Default)]
    pub(crate) struct Captured(pub(crate) std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

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
        let subscriber = subscriber(&args, move || writer.clone(), terminal, unexported()).unwrap();
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
        let subscriber = subscriber(&args, move || writer.clone(), false, unexported()).unwrap();
        let caller = caller();
        let mut request = http::Request::new(());
        for (name, value) in trace_context::headers(&caller) {
            request.headers_mut().insert(name, value.parse().unwrap());
        }
        // The served work logs, and answers with the span it ran in.
        let handler = tower::service_fn(|_request: http::Request<()>| async {
            tracing::info!("reserving stock");
            Ok::<_, std::convert::Infallible>(trace_context::current())
        });
        let mut service = ServerTraceLayer.layer(handler);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let seen = tracing::subscriber::with_default(subscriber, || {
            runtime.block_on(async { service.call(request).await }).unwrap()
        })
        .expect("the request ran in an OpenTelemetry span");
        assert_eq!(seen.trace_id(), caller.trace_id());
        assert_ne!(seen.span_id(), caller.span_id(), "the request is a span of its own");
        assert_eq!(seen.trace_state().header(), "vendor=7");

        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["message"], "reserving stock");
        assert_eq!(line["span"]["trace_id"], caller.trace_id().to_string(), "{line}");
        assert_eq!(line["span"]["span_id"], seen.span_id().to_string(), "{line}");
        assert_eq!(line["span"]["parent_span_id"], caller.span_id().to_string(), "{line}");
    }

    #[test]
    fn with_only_warnings_logged_a_warning_still_names_the_trace_and_info_lines_stay_out() {
        let captured = Captured::default();
        let writer = captured.clone();
        let args = LogArgs { format: LogFormat::Json, filter: "warn".to_owned() };
        let subscriber = subscriber(&args, move || writer.clone(), false, unexported()).unwrap();
        let served = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "served",
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty
            );
            let started = trace_context::start(&span, Some(&caller()));
            span.in_scope(|| {
                tracing::info!("reserving stock");
                tracing::warn!("stock low");
            });
            started
        })
        .expect("the span is made under a warn-only log filter");
        assert_eq!(served.trace_id(), caller().trace_id());
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> =
            text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(lines.len(), 1, "only the warning is logged: {text}");
        assert_eq!(lines[0]["message"], "stock low");
        assert_eq!(lines[0]["span"]["trace_id"], caller().trace_id().to_string(), "{text}");
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
