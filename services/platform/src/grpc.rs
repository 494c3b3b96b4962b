//! The gRPC server every service runs: its own tonic services plus the
//! standard health service and reflection, behind the trace and metrics
//! layers, with graceful shutdown.
//!
//! Health (`grpc.health.v1.Health`) is what Kubernetes' native gRPC probes
//! and client-side balancers ask. It reports SERVING exactly when the
//! process's [`Readiness`] is ready, i.e. when the service can do its *own*
//! work; a watcher task mirrors readiness into the health statuses (the
//! overall `""` entry and one per registered service). It never asks peers:
//! a peer being down must not take this service out of rotation too.
//!
//! Reflection (v1) serves the descriptor sets given to the builder, so that
//! `grpcurl inventory:50051 list` works against any pod without local
//! `.proto` files.
//!
//! Shutdown, when the token is cancelled: health turns NOT_SERVING (and
//! health watch streams end), the listener closes (new connections are
//! refused), open connections get an HTTP/2 GOAWAY and in-flight requests
//! finish; whatever is still running after the grace period is abandoned to
//! the process exit. Long-lived streaming RPCs of a service must watch the
//! same token and end themselves, or they run into the grace period.

use std::any::Any;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::admin::{GrpcMetricsLayer, Metrics};
use crate::readiness::{Check, Readiness};
use crate::telemetry::ServerTraceLayer;

/// How often readiness is mirrored into the health service. Readiness has no
/// change notification; a read of a small map four times a second is free,
/// and 250 ms is well inside any probe period (Kubernetes' minimum is 1 s).
pub const HEALTH_SYNC_INTERVAL: Duration = Duration::from_millis(250);

/// Name of the readiness check that says the gRPC listener is bound and
/// serving (see [`GrpcServer::ready_when_listening`]).
pub const READINESS_CHECK: &str = "grpc";

/// gRPC server flags every service accepts.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "gRPC server")]
pub struct GrpcArgs {
    /// Address the gRPC server listens on.
    #[arg(
        long = "grpc-addr", id = "grpc-addr",
        env = "COMMERCE_GRPC_ADDR",
        default_value_t = SocketAddr::from(([0, 0, 0, 0], commerce_topology::CLUSTER_GRPC_PORT))
    )]
    pub addr: SocketAddr,
    /// How long in-flight requests may take to finish after SIGTERM. 20 s
    /// leaves room, within Kubernetes' default 30 s termination grace, for
    /// consumers to commit and the process to exit cleanly.
    #[arg(
        long = "grpc-shutdown-grace", id = "grpc-shutdown-grace",
        env = "COMMERCE_GRPC_SHUTDOWN_GRACE",
        default_value = "20s",
        value_parser = humantime::parse_duration
    )]
    pub shutdown_grace: Duration,
}

/// What can go wrong running the gRPC server.
#[derive(Debug, thiserror::Error)]
pub enum GrpcServerError {
    /// The gRPC port is taken or not ours to bind.
    #[error("cannot bind the gRPC server to {addr}")]
    Bind {
        /// The configured `--grpc-addr`.
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A descriptor set given to the builder does not decode.
    #[error("cannot build the reflection service from the descriptor sets")]
    BuildReflection(#[source] tonic_reflection::server::Error),
    /// The server stopped with a transport error.
    #[error("the gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
    /// Requests were still running when the grace period ended; the process
    /// exit cuts them off.
    #[error("in-flight gRPC requests did not finish within the {grace:?} shutdown grace")]
    Drain {
        /// The configured `--grpc-shutdown-grace`.
        grace: Duration,
    },
}

/// Builds and runs a service's gRPC server.
///
/// ```ignore
/// GrpcServer::new(&config.grpc, readiness.clone(), &metrics)
///     .file_descriptor_set(commerce_proto::FILE_DESCRIPTOR_SET)
///     .add_service(OrderServiceServer::new(handler))
///     .serve(shutdown)
///     .await?;
/// ```
#[derive(Debug)]
pub struct GrpcServer {
    args: GrpcArgs,
    readiness: Readiness,
    metrics: Metrics,
    routes: Routes,
    /// Names reported in the health service besides the overall `""`.
    service_names: Vec<&'static str>,
    /// Encoded `FileDescriptorSet`s served by reflection.
    descriptor_sets: Vec<&'static [u8]>,
    /// Marked ready once the listener is bound and serving, not ready again
    /// when shutdown starts; `None` when the caller tracks that itself.
    listening: Option<Check>,
}

impl GrpcServer {
    /// A server with no services yet, configured from `args`, reporting
    /// health from `readiness` and request metrics into `metrics`.
    pub fn new(args: &GrpcArgs, readiness: Readiness, metrics: &Metrics) -> Self {
        Self {
            args: args.clone(),
            readiness,
            metrics: metrics.clone(),
            routes: Routes::default(),
            service_names: Vec::new(),
            descriptor_sets: Vec::new(),
            listening: None,
        }
    }

    /// Reports through `check` whether this server accepts requests: ready
    /// once its listener is bound, not ready from the moment shutdown starts.
    ///
    /// Register the check (usually [`READINESS_CHECK`]) before anything else
    /// can become ready: otherwise `/readyz` may answer 200 while the gRPC
    /// port still refuses connections, and Kubernetes would route traffic to
    /// a pod that cannot take it.
    pub fn ready_when_listening(mut self, check: Check) -> Self {
        self.listening = Some(check);
        self
    }

    /// Adds a generated tonic server (`XServiceServer::new(handler)`); its
    /// name gets a health status of its own.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.service_names.push(S::NAME);
        self.routes = self.routes.add_service(service);
        self
    }

    /// Adds an encoded `FileDescriptorSet` for reflection (usually
    /// `commerce_proto::FILE_DESCRIPTOR_SET`). The health service's own
    /// descriptors are always included.
    pub fn file_descriptor_set(mut self, encoded: &'static [u8]) -> Self {
        self.descriptor_sets.push(encoded);
        self
    }

    /// Binds the configured address and serves until `shutdown`.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), GrpcServerError> {
        let addr = self.args.addr;
        let listener =
            TcpListener::bind(addr).await.map_err(|source| GrpcServerError::Bind { addr, source })?;
        self.serve_on(listener, shutdown).await
    }

    /// Serves on an already bound listener (tests bind port 0) until
    /// `shutdown`, then drains within the grace period.
    pub async fn serve_on(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), GrpcServerError> {
        let local_addr = listener.local_addr().ok();
        let GrpcServer { args, readiness, metrics, routes, service_names, descriptor_sets, listening } = self;

        let reflection = shared_reflection(&descriptor_sets, || {
            let mut reflection = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
            for set in &descriptor_sets {
                reflection = reflection.register_encoded_file_descriptor_set(set);
            }
            reflection.build_v1().map_err(GrpcServerError::BuildReflection)
        })?;

        let (reporter, health) = tonic_health::server::health_reporter();
        let mut health_names = vec![""];
        health_names.extend(service_names.iter().copied());
        // Not serving until readiness says so, before the first connection.
        let mut mirror = HealthMirror { reporter, names: health_names, last: None };
        mirror.sync(readiness.is_ready()).await;

        let routes = routes.add_service(health).add_service(reflection);
        let watcher = tokio::spawn(mirror_readiness(mirror, readiness, shutdown.clone()));

        let layers =
            tower::ServiceBuilder::new().layer(ServerTraceLayer).layer(GrpcMetricsLayer::new(&metrics));
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let signal = {
            let (shutdown, listening) = (shutdown.clone(), listening.clone());
            async move {
                shutdown.cancelled().await;
                if let Some(check) = &listening {
                    check.set_not_ready("shutting down");
                }
                // Health must say NOT_SERVING before the listener closes, so
                // that a balancer watching it stops sending first.
                if let Err(error) = watcher.await {
                    tracing::warn!(%error, "health watcher failed");
                }
                tracing::info!("gRPC server draining");
            }
        };
        tracing::info!(addr = ?local_addr, services = ?service_names, "gRPC server listening");
        // The listener is bound (it was handed in bound) and the server is
        // built: connections are accepted from here on.
        if let Some(check) = &listening
            && !shutdown.is_cancelled()
        {
            check.set_ready();
        }
        let server = tonic::transport::Server::builder()
            .layer(layers)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, signal);
        tokio::pin!(server);

        let grace = args.shutdown_grace;
        tokio::select! {
            result = &mut server => {
                result.map_err(GrpcServerError::Serve)?;
                tracing::info!("gRPC server stopped");
                Ok(())
            }
            () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "gRPC requests still running after the shutdown grace; abandoning them");
                Err(GrpcServerError::Drain { grace })
            }
        }
    }
}

/// The reflection services built in this process, by the descriptor sets
/// they serve (compared by address: the sets are `'static` constants).
///
/// Why share: reflection decodes every descriptor it serves into an index
/// of symbols, about 170 KiB for the shop's protos. `serve all` runs 15
/// gRPC servers with the same sets, and built one index each: 2.6 MiB of the
/// idle shop's 17 MiB heap (heaptrack, `commerce local up`). The built
/// server keeps its state behind an `Arc`, so a clone serves the same index.
static REFLECTION: Mutex<Vec<BuiltReflection>> = Mutex::new(Vec::new());

/// One entry of [`REFLECTION`]: the sets' (address, length) pairs, and the
/// service built for them.
type BuiltReflection = (Vec<(usize, usize)>, Box<dyn Any + Send>);

/// The reflection service of `sets`, built by `build` the first time this
/// process asks for it, cloned after that.
fn shared_reflection<T, E>(sets: &[&'static [u8]], build: impl FnOnce() -> Result<T, E>) -> Result<T, E>
where
    T: Clone + Send + 'static,
{
    let key: Vec<(usize, usize)> = sets.iter().map(|set| (set.as_ptr() as usize, set.len())).collect();
    let mut built = REFLECTION.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(service) =
        built.iter().filter(|(sets, _)| *sets == key).find_map(|(_, service)| service.downcast_ref::<T>())
    {
        return Ok(service.clone());
    }
    let service = build()?;
    built.push((key, Box::new(service.clone())));
    Ok(service)
}

/// The health statuses, as last written from readiness.
struct HealthMirror {
    reporter: HealthReporter,
    names: Vec<&'static str>,
    last: Option<bool>,
}

impl HealthMirror {
    async fn sync(&mut self, serving: bool) {
        if self.last == Some(serving) {
            return;
        }
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        for name in &self.names {
            self.reporter.set_service_status(name, status).await;
        }
        if self.last.is_some() {
            tracing::info!(?status, "gRPC health changed");
        }
        self.last = Some(serving);
    }
}

/// Mirrors readiness into health until shutdown, then reports NOT_SERVING
/// and returns (the server's shutdown signal waits for that).
///
/// At shutdown the statuses are also cleared: that closes their watch
/// channels, so every open `Health/Watch` stream delivers NOT_SERVING and
/// then ends. Otherwise those endless streams would hold their connections
/// open for the whole grace period.
async fn mirror_readiness(mut mirror: HealthMirror, readiness: Readiness, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(HEALTH_SYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => mirror.sync(readiness.is_ready()).await,
        }
    }
    mirror.sync(false).await;
    for name in &mirror.names {
        mirror.reporter.clear_service_status(name).await;
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::shared_reflection;

    static FIRST: &[u8] = b"first set";
    static SECOND: &[u8] = b"second set";

    #[test]
    fn reflection_is_built_once_per_distinct_descriptor_sets() {
        let builds = AtomicUsize::new(0);
        let build = || {
            builds.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>(Arc::new(builds.load(Ordering::SeqCst)))
        };
        let one = shared_reflection(&[FIRST], build).unwrap();
        let again = shared_reflection(&[FIRST], build).unwrap();
        assert!(Arc::ptr_eq(&one, &again), "the same sets share one service");
        let other = shared_reflection(&[FIRST, SECOND], build).unwrap();
        assert!(!Arc::ptr_eq(&one, &other), "other sets get a service of their own");
        assert_eq!(builds.load(Ordering::SeqCst), 2);
        // A different type for the same sets is built, not mistaken for the first.
        let text = shared_reflection(&[FIRST], || Ok::<_, Infallible>("text")).unwrap();
        assert_eq!(text, "text");
    }
}
