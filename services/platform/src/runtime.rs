//! The service runtime: the lifecycle every service's `serve` shares, owned
//! once here so that a service crate only says what is its own.
//!
//! [`ServiceRuntime::serve`] runs, in this order:
//!
//! 1. logging ([`telemetry::init`], a no-op when a subscriber exists), the
//!    [`Metrics`] registry and the [`Readiness`] set, with the `grpc` check
//!    registered first and not ready;
//! 2. the admin server (`/metrics`, `/healthz`, `/readyz`, plus any extra
//!    routes), bound before anything else so that `/readyz` explains every
//!    wait that follows;
//! 3. the service's wiring closure, which gets a [`Wiring`] handle to
//!    connect the database ([`Wiring::connect_database`]: retry, platform
//!    and service migrations, health check), Redis, the Kafka producer, the
//!    outbox relay, one event consumer and named background tasks, and
//!    returns its [`GrpcServer`];
//! 4. the gRPC server, whose `grpc` readiness check turns ready only once
//!    its listener is bound: `/readyz` never answers 200 while the gRPC port
//!    still refuses connections.
//!
//! It stops when `shutdown` is cancelled or when any part fails (a consumer
//! error, a panicking task, the admin server): the gRPC server drains first,
//! then the background work is cancelled and joined (consumer, relay,
//! workers, in the order they were started), producers are flushed, the
//! watchers (database health, producer readiness) end, the admin server
//! stops (so `/readyz` answers until the end) and the pools close. The
//! first failure is returned as a [`RuntimeError`] naming the failing step;
//! shutting down while still waiting for a dependency is no failure.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use commerce_topology::Service;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminError, Metrics};
use crate::config::CommonArgs;
use crate::db::{self, DatabaseArgs, DatabaseError};
use crate::errors::error_chain;
use crate::events::consumer::{self, ConsumerError, EventConsumer, EventHandler};
use crate::events::producer::{self, EventProducer, ProducerError};
use crate::events::{KafkaArgs, OutboxRelay};
use crate::grpc::{self, GrpcServer, GrpcServerError};
use crate::readiness::{Check, Readiness};
use crate::redis::{self as platform_redis, RedisArgs, RedisError};
use crate::telemetry::{self, TelemetryError};

/// How long shutdown waits for a producer's queued records to be
/// acknowledged. Records still queued after it are not lost: the outbox
/// relay marks rows sent only on acknowledgement, so they go out again
/// after the restart. Five seconds fits in the termination grace left
/// after the gRPC drain.
pub const PRODUCER_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A step of a service's lifecycle that failed, named after the step.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot set up logging")]
    InitTelemetry(#[source] Box<TelemetryError>),
    #[error("the admin server failed")]
    ServeAdmin(#[source] Box<AdminError>),
    #[error("cannot connect to the database")]
    ConnectDatabase(#[source] Box<DatabaseError>),
    #[error("cannot migrate the database")]
    MigrateDatabase(#[source] Box<DatabaseError>),
    #[error("cannot connect to Redis")]
    ConnectRedis(#[source] Box<RedisError>),
    #[error("cannot create the Kafka producer")]
    CreateProducer(#[source] Box<ProducerError>),
    #[error("cannot create the event consumer")]
    CreateConsumer(#[source] Box<ConsumerError>),
    #[error("the event consumer failed")]
    ConsumeEvents(#[source] Box<ConsumerError>),
    #[error("the gRPC server failed")]
    ServeGrpc(#[source] Box<GrpcServerError>),
    /// A task panicked (or was aborted); `task` is the name it was started
    /// with.
    #[error("task {task} panicked or was aborted")]
    JoinTask {
        task: &'static str,
        #[source]
        source: JoinError,
    },
}

impl RuntimeError {
    /// Whether this is a wait for a dependency that was given up because
    /// the service is stopping, rather than a failure of its own.
    fn is_cancelled_wait(&self) -> bool {
        match self {
            RuntimeError::ConnectDatabase(error) => matches!(**error, DatabaseError::ConnectCancelled { .. }),
            RuntimeError::ConnectRedis(error) => matches!(**error, RedisError::Connect { .. }),
            _ => false,
        }
    }
}

/// Runs one service: see the module documentation for the lifecycle.
///
/// ```ignore
/// ServiceRuntime::new(Service::Order, &config.common)
///     .serve(shutdown, |wiring| async move {
///         let pool = wiring.connect_database(&config.database, &MIGRATOR).await?;
///         let producer = wiring.start_producer(&config.kafka)?;
///         wiring.spawn_outbox_relay(&pool, &producer);
///         wiring.spawn_consumer(EventConsumer::new(/* .. */ wiring.consumer_check())?);
///         Ok(wiring.grpc_server().add_service(OrderServiceServer::new(handler)))
///     })
///     .await
/// ```
#[derive(Debug)]
pub struct ServiceRuntime {
    service: Service,
    common: CommonArgs,
    admin_routes: Option<axum::Router>,
}

impl ServiceRuntime {
    /// A runtime for `service` with its logging, admin and gRPC flags.
    pub fn new(service: Service, common: &CommonArgs) -> Self {
        Self { service, common: common.clone(), admin_routes: None }
    }

    /// Serves `routes` on the admin port besides `/metrics`, `/healthz` and
    /// `/readyz` (the payment mock's controls).
    pub fn admin_routes(mut self, routes: axum::Router) -> Self {
        self.admin_routes = Some(routes);
        self
    }

    /// Runs the service until `shutdown` is cancelled or a part fails.
    ///
    /// `wire` connects what the service needs through its [`Wiring`] and
    /// returns the gRPC server (from [`Wiring::grpc_server`]) with the
    /// service's handlers added. Its own errors come back unchanged; the
    /// runtime's become `E` through `From<RuntimeError>`.
    pub async fn serve<E, F, Fut>(self, shutdown: CancellationToken, wire: F) -> Result<(), E>
    where
        E: From<RuntimeError> + std::error::Error,
        F: FnOnce(Wiring) -> Fut,
        Fut: Future<Output = Result<GrpcServer, E>>,
    {
        let ServiceRuntime { service, common, admin_routes } = self;
        telemetry::init(&common.log, service.name())
            .map_err(|error| RuntimeError::InitTelemetry(Box::new(error)))?;
        let metrics = Metrics::new(service.name());
        let readiness = Readiness::new();
        // First, so that nothing can make the service look ready before the
        // gRPC listener is bound.
        let grpc_check = readiness.register(grpc::READINESS_CHECK);
        // Everything but the admin server stops on this one: the caller's
        // shutdown, or the failure of any part (without cancelling the
        // caller's token, which other services of `serve all` share).
        let stop = shutdown.child_token();
        // The admin server outlives the rest, so that `/readyz` and
        // `/metrics` answer while the service drains.
        let admin_stop = CancellationToken::new();
        let shared = Arc::new(Shared::default());

        let admin_addr = common.admin.addr;
        let listener = TcpListener::bind(admin_addr).await.map_err(|source| {
            RuntimeError::ServeAdmin(Box::new(AdminError::Bind { addr: admin_addr, source }))
        })?;
        let mut router = admin::router(readiness.clone(), metrics.clone());
        if let Some(routes) = admin_routes {
            router = router.merge(routes);
        }
        tracing::info!(addr = %admin_addr, "admin server listening");
        let admin_serve =
            axum::serve(listener, router).with_graceful_shutdown(admin_stop.clone().cancelled_owned());
        let admin_task = watch(&shared, &stop, "admin server", async move {
            admin_serve.await.map_err(|error| RuntimeError::ServeAdmin(Box::new(AdminError::Serve(error))))
        });

        let wiring = Wiring {
            service: self.service,
            common: common.clone(),
            readiness: readiness.clone(),
            metrics: metrics.clone(),
            stop: stop.clone(),
            shared: shared.clone(),
        };
        let served = match wire(wiring).await {
            Ok(server) => server
                .ready_when_listening(grpc_check)
                .serve(stop.clone())
                .await
                .map_err(|error| E::from(RuntimeError::ServeGrpc(Box::new(error)))),
            Err(error) => Err(error),
        };
        if let Err(error) = &served {
            if shared.cancelled_wait() {
                tracing::info!(service = service.name(), error = %error_chain(error), "stopped while waiting");
            } else {
                tracing::error!(service = service.name(), error = %error_chain(error), "service stopping");
            }
        }
        stop.cancel();

        let (work, watchers, producers, pools) = shared.take();
        for task in work {
            join_watcher(task).await;
        }
        for producer in producers {
            producer.flush(PRODUCER_FLUSH_TIMEOUT).await;
        }
        for task in watchers {
            join_watcher(task).await;
        }
        admin_stop.cancel();
        join_watcher(admin_task).await;
        for pool in pools {
            pool.close().await;
        }

        let mut failures = shared.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if !failures.is_empty() {
            // The first failure stopped the rest; what followed (a wait
            // given up, a server stopped early) is its consequence.
            return Err(failures.remove(0).into());
        }
        drop(failures);
        match served {
            Err(_) if shared.cancelled_wait() && shutdown.is_cancelled() => Ok(()),
            other => other,
        }
    }
}

/// What a service's wiring closure uses to start its parts. Each part it
/// starts is stopped, joined and closed by the runtime in the documented
/// order; a part that fails stops the whole service.
#[derive(Debug)]
pub struct Wiring {
    service: Service,
    common: CommonArgs,
    readiness: Readiness,
    metrics: Metrics,
    stop: CancellationToken,
    shared: Arc<Shared>,
}

impl Wiring {
    /// The service's metrics registry (for its own counters).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The service's readiness set (for checks of its own).
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Cancelled when the service stops; long-lived work of the service
    /// (peer channels, caches) watches it.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Connects to the database, retrying until it answers (shown in the
    /// `database` readiness check), runs the platform's and `migrations`,
    /// and keeps the check current until shutdown. The pool is closed last,
    /// after every task that uses it has stopped.
    pub async fn connect_database(
        &self,
        args: &DatabaseArgs,
        migrations: &'static Migrator,
    ) -> Result<PgPool, RuntimeError> {
        let check = self.readiness.register(db::READINESS_CHECK);
        let pool = db::connect_with_retry(args, &check, &self.stop).await.map_err(|error| {
            let error = RuntimeError::ConnectDatabase(Box::new(error));
            self.shared.note_cancelled_wait(&error);
            error
        })?;
        self.shared.lock().pools.push(pool.clone());
        migrate(&pool, migrations).await?;
        let health = db::spawn_health_check(pool.clone(), check, self.stop.clone());
        let task = watch(
            &self.shared,
            &self.stop,
            "database health check",
            join_spawned("database health check", health),
        );
        self.shared.lock().watchers.push(task);
        Ok(pool)
    }

    /// Connects to Redis, retrying until it answers (shown in the `redis`
    /// readiness check, kept current until shutdown).
    pub async fn connect_redis(
        &self,
        args: &RedisArgs,
    ) -> Result<::redis::aio::ConnectionManager, RuntimeError> {
        platform_redis::connect(args, &self.readiness, &self.stop).await.map_err(|error| {
            let error = RuntimeError::ConnectRedis(Box::new(error));
            self.shared.note_cancelled_wait(&error);
            error
        })
    }

    /// Creates the Kafka producer and keeps its readiness check current.
    /// It is flushed at shutdown, after the tasks that use it have stopped.
    pub fn start_producer(&self, args: &KafkaArgs) -> Result<EventProducer, RuntimeError> {
        let producer =
            EventProducer::new(args).map_err(|error| RuntimeError::CreateProducer(Box::new(error)))?;
        let check = self.readiness.register(producer::READINESS_CHECK);
        let topic = producer.names().probe_topic(self.service);
        let watch_handle = producer.watch_readiness(check, topic, self.stop.clone());
        let name = "producer readiness watch";
        let task = watch(&self.shared, &self.stop, name, join_spawned(name, watch_handle));
        let mut shared = self.shared.lock();
        shared.watchers.push(task);
        shared.producers.push(producer.clone());
        Ok(producer)
    }

    /// Starts the outbox relay that publishes the service's outbox rows
    /// through `producer`.
    pub fn spawn_outbox_relay(&self, pool: &PgPool, producer: &EventProducer) {
        let relay = OutboxRelay::new(pool.clone(), producer.clone());
        let stop = self.stop.clone();
        self.spawn_task("outbox relay", relay.run(stop));
    }

    /// Registers the consumer's readiness check; pass it to
    /// [`EventConsumer::new`].
    pub fn consumer_check(&self) -> Check {
        self.readiness.register(consumer::READINESS_CHECK)
    }

    /// Starts `consumer` (created with [`consumer_check`](Self::consumer_check));
    /// it commits and leaves its group at shutdown. Its failure stops the
    /// service.
    pub fn spawn_consumer<H: EventHandler>(&self, consumer: EventConsumer<H>) {
        let stop = self.stop.clone();
        let task = watch(&self.shared, &self.stop, "event consumer", async move {
            consumer.run(stop).await.map_err(|error| RuntimeError::ConsumeEvents(Box::new(error)))
        });
        self.shared.lock().work.push(task);
    }

    /// Creates the service's event consumer (group and topics from the
    /// catalog) with its readiness check, and starts it as
    /// [`spawn_consumer`](Self::spawn_consumer) does.
    pub fn start_consumer<H: EventHandler>(
        &self,
        service: Service,
        args: &KafkaArgs,
        pool: PgPool,
        producer: EventProducer,
        handler: H,
    ) -> Result<(), RuntimeError> {
        let consumer = EventConsumer::new(service, args, pool, producer, handler, self.consumer_check())
            .map_err(|error| RuntimeError::CreateConsumer(Box::new(error)))?;
        self.spawn_consumer(consumer);
        Ok(())
    }

    /// Starts a background task of the service (a worker, a sweeper). It
    /// must end when [`stop_token`](Self::stop_token) is cancelled; shutdown
    /// waits for it. A panic stops the service.
    pub fn spawn_task(&self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let task = watch(&self.shared, &self.stop, name, async move {
            task.await;
            Ok(())
        });
        self.shared.lock().work.push(task);
    }

    /// A gRPC server with the service's flags, readiness, metrics and the
    /// commerce descriptor set for reflection; add the service's handlers.
    pub fn grpc_server(&self) -> GrpcServer {
        GrpcServer::new(&self.common.grpc, self.readiness.clone(), &self.metrics)
            .file_descriptor_set(commerce_proto::FILE_DESCRIPTOR_SET)
    }
}

/// Runs the platform's and the service's migrations, awaited in place.
///
/// The services used to run this on a blocking thread (`spawn_blocking` +
/// `block_on`) because `Migrator::run(&pool)` borrows through a
/// higher-ranked `Acquire` bound that rustc cannot prove `Send`
/// (rust-lang/rust#102211), which made `tokio::spawn(serve(..))` fail to
/// compile. [`db::run_migrations`] migrates over one acquired connection
/// (`run_direct`), which has no such bound, so the future stays `Send`; the
/// services' `tokio::spawn(serve(..))` in their tests and in the `commerce`
/// binary check that at compile time.
async fn migrate(pool: &PgPool, migrations: &'static Migrator) -> Result<(), RuntimeError> {
    db::run_migrations(pool, migrations).await.map_err(|error| RuntimeError::MigrateDatabase(Box::new(error)))
}

/// The parts a [`Wiring`] started, for the runtime to stop in order.
#[derive(Debug, Default)]
struct Shared {
    parts: Mutex<Parts>,
    /// Failures of watched tasks, in the order they happened.
    failures: Mutex<Vec<RuntimeError>>,
}

#[derive(Debug, Default)]
struct Parts {
    /// Consumer, relay, workers: joined first, in start order.
    work: Vec<JoinHandle<()>>,
    /// Database health check, producer readiness watch: joined after the
    /// work and the producer flush.
    watchers: Vec<JoinHandle<()>>,
    producers: Vec<EventProducer>,
    pools: Vec<PgPool>,
    /// A dependency wait was given up because the service was stopping.
    cancelled_wait: bool,
}

type TakenParts = (Vec<JoinHandle<()>>, Vec<JoinHandle<()>>, Vec<EventProducer>, Vec<PgPool>);

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Parts> {
        // Plain lists: a panic elsewhere leaves them usable.
        self.parts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn note_cancelled_wait(&self, error: &RuntimeError) {
        if error.is_cancelled_wait() {
            self.lock().cancelled_wait = true;
        }
    }

    fn cancelled_wait(&self) -> bool {
        self.lock().cancelled_wait
    }

    fn take(&self) -> TakenParts {
        let mut parts = self.lock();
        (
            std::mem::take(&mut parts.work),
            std::mem::take(&mut parts.watchers),
            std::mem::take(&mut parts.producers),
            std::mem::take(&mut parts.pools),
        )
    }
}

/// Spawns `task` named `name`; when it fails or panics, records the failure
/// and cancels `stop` so that the whole service stops.
fn watch(
    shared: &Arc<Shared>,
    stop: &CancellationToken,
    name: &'static str,
    task: impl Future<Output = Result<(), RuntimeError>> + Send + 'static,
) -> JoinHandle<()> {
    let inner = tokio::spawn(task);
    let (shared, stop) = (shared.clone(), stop.clone());
    tokio::spawn(async move {
        let failure = match inner.await {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error,
            Err(source) => RuntimeError::JoinTask { task: name, source },
        };
        tracing::error!(task = name, error = %error_chain(&failure), "service part failed; stopping");
        shared.failures.lock().unwrap_or_else(PoisonError::into_inner).push(failure);
        stop.cancel();
    })
}

/// Waits for a [`watch`] wrapper; it only records, so an error here means
/// the process is going down for reasons of its own (a panicking logger).
async fn join_watcher(handle: JoinHandle<()>) {
    if let Err(error) = handle.await {
        tracing::error!(%error, "a task watcher failed");
    }
}

/// A task the platform spawned itself (health check, readiness watch) as
/// the future of a watched task, so that its panic is reported by name.
async fn join_spawned(name: &'static str, handle: JoinHandle<()>) -> Result<(), RuntimeError> {
    handle.await.map_err(|source| RuntimeError::JoinTask { task: name, source })
}
