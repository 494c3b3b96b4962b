//! The `run` subcommand: the controllers in a cluster. It serves the admin
//! endpoints at once, waits to lead (Lease), then watches CommerceStacks,
//! everything they own and the RateLimitPolicies that target them, and
//! reconciles until SIGTERM or until it loses the Lease. A second, small
//! controller reports RateLimitPolicies whose stack does not exist, which
//! the stacks' controller never sees.
//!
//! Watching a list of namespaces runs both controllers once per namespace:
//! a reflector store is filled from one watch stream, and two streams
//! (each with its own resource versions and relists) cannot safely feed one
//! store. Every set shares one [`Context`], so the reconciles of all
//! namespaces together stay within `--max-concurrent-reconciles`.
//!
//! Memory: the children are watched as metadata only and kept in no store
//! (kube's `owns_with` uses a metadata watcher that only triggers the
//! owner). The stacks and policies that are stored lose their managed
//! fields and kubectl's last-applied copy before they reach the store
//! ([`without_bookkeeping`]): no reconcile reads them, and on a stack with
//! a status they were most of its size. What else grows with the number of
//! stacks is the work of reconciles in flight, each holding its stack's
//! listed children and desired objects. Hence the bound on concurrent
//! reconciles.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use commerce_api::{CommerceStack, RateLimitPolicy};
use commerce_platform::admin;
use commerce_platform::readiness::{Check, Readiness};
use futures::{FutureExt as _, Stream, StreamExt};
use kube::api::Api;
use kube::core::DynamicObject;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::{Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::build::{names, owned_kinds};
use crate::external::cluster::ClusterExternalState;
use crate::leader::Elector;
use crate::metrics::Metrics;
use crate::reconcile::policy::{policies_targeting, policy_error_policy, reconcile_policy};
use crate::reconcile::{Context, backoff::Backoffs, error_policy, reconcile};

/// Settings of `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Watch only these namespaces, comma-separated (`a,b`); empty watches
    /// all (what the chart's ClusterRole allows).
    #[arg(long, env = "COMMERCE_WATCH_NAMESPACE", default_value = "")]
    pub watch_namespace: WatchNamespaces,
    /// How many stacks are reconciled at once, in all watched namespaces
    /// together. The operator's memory grows with this number, not with the
    /// number of stacks: each reconcile in flight holds its stack's children
    /// as listed and as desired. See [`DEFAULT_MAX_CONCURRENT_RECONCILES`].
    #[arg(long, env = "COMMERCE_MAX_CONCURRENT_RECONCILES", default_value_t = DEFAULT_MAX_CONCURRENT_RECONCILES, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_reconciles: u16,
    /// Address of the admin server: `/metrics`, `/healthz`, and `/readyz`
    /// (200 while the Kubernetes API answers and, on the leader, once every
    /// watch has listed what it watches; a standby replica is ready).
    #[arg(long, env = "COMMERCE_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,
    /// Elect a leader through a Lease before reconciling; turn off only when
    /// exactly one replica runs.
    #[arg(long, env = "COMMERCE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the Lease: the operator's own.
    #[arg(long, env = "COMMERCE_LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the Lease.
    #[arg(long, env = "COMMERCE_LEASE_NAME", default_value = "commerce-operator")]
    pub lease_name: String,
    /// Once leading, create or upgrade the project's CRDs to this
    /// operator's version before reconciling (never downgrading CRDs a newer
    /// operator wrote). The chart turns it on: Helm never upgrades a chart's
    /// `crds/`. Needs get, create and update on the two CRDs.
    #[arg(long, env = "COMMERCE_MANAGE_CRDS", default_value_t = false, action = clap::ArgAction::Set)]
    pub manage_crds: bool,
    /// This replica's identity in the election and in Events: its pod name
    /// (the chart sets it). Unset: the host name and a random suffix, unique
    /// per process.
    #[arg(long, env = "COMMERCE_POD_NAME")]
    pub identity: Option<String>,
}

/// Reconciles in flight by default. Measured with the release build against
/// the e2e control plane (the RSS benchmark in `e2e/tests/operator.rs`, 100
/// stacks, a loaded 2-core machine): unbounded, all stacks were reconciled
/// at once and the operator peaked at 187-241 MiB RSS, about 2 MiB per
/// reconcile in flight (its stack's children as listed, with managed fields,
/// and as desired); 16 in flight passed 77 MiB, 8 peaked at 62-68 MiB, over
/// the 60 MiB budget of project issue 11; 4 stayed near 36 MiB through 75
/// stacks. Fewer in flight cost throughput: a reconcile mostly waits for the
/// API server.
pub const DEFAULT_MAX_CONCURRENT_RECONCILES: u16 = 4;

/// The namespaces `run` watches: all of them, or a list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum WatchNamespaces {
    /// Every namespace (an empty `--watch-namespace`).
    #[default]
    All,
    /// These namespaces, each once, in the order given.
    Only(Vec<String>),
}

impl WatchNamespaces {
    /// One scope per controller set: `None` for all namespaces, else each
    /// namespace.
    pub fn scopes(&self) -> Vec<Option<&str>> {
        match self {
            WatchNamespaces::All => vec![None],
            WatchNamespaces::Only(namespaces) => namespaces.iter().map(|n| Some(n.as_str())).collect(),
        }
    }
}

/// Why a `--watch-namespace` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchNamespacesError {
    /// `a,,b` or a trailing comma: probably a list templated from an empty
    /// value, which must not widen the watch to every namespace.
    #[error("an empty namespace in the list {0:?}; leave the whole value empty to watch all namespaces")]
    EmptyEntry(String),
    /// Not a DNS label (RFC 1123), so no namespace can have this name.
    #[error(
        "{0:?} is not a namespace name: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
    )]
    InvalidName(String),
}

/// Parses `""` (all namespaces) or a comma-separated list of namespace names;
/// blanks around names are ignored and a repeated name counts once (two
/// controller sets on one namespace would reconcile each stack twice).
impl FromStr for WatchNamespaces {
    type Err = WatchNamespacesError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value.trim().is_empty() {
            return Ok(WatchNamespaces::All);
        }
        let mut namespaces: Vec<String> = Vec::new();
        for entry in value.split(',').map(str::trim) {
            if entry.is_empty() {
                return Err(WatchNamespacesError::EmptyEntry(value.to_owned()));
            }
            if !is_dns_label(entry) {
                return Err(WatchNamespacesError::InvalidName(entry.to_owned()));
            }
            if !namespaces.iter().any(|n| n == entry) {
                namespaces.push(entry.to_owned());
            }
        }
        Ok(WatchNamespaces::Only(namespaces))
    }
}

/// As given on the command line: empty for all, else `a,b`.
impl fmt::Display for WatchNamespaces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchNamespaces::All => Ok(()),
            WatchNamespaces::Only(namespaces) => f.write_str(&namespaces.join(",")),
        }
    }
}

/// A namespace name: an RFC 1123 label.
fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(allowed)
        && bytes.first().is_some_and(alphanumeric)
        && bytes.last().is_some_and(alphanumeric)
}

/// The identity of a replica started without one: the host name (`$HOSTNAME`,
/// else the kernel's, as gethostname(2) returns it) and a random suffix. A
/// fixed default would let two operators started with defaults both believe
/// they hold the Lease; the suffix also tells apart two processes on one host
/// and a restarted process from its predecessor.
pub fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty());
    identity_for(host.as_deref(), &random_suffix())
}

/// `<host>-<suffix>`, or `commerce-operator-<suffix>` without a host name.
fn identity_for(host: Option<&str>, suffix: &str) -> String {
    format!("{}-{suffix}", host.unwrap_or("commerce-operator"))
}

/// Six random lowercase letters and digits.
fn random_suffix() -> String {
    use rand::Rng as _;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(6)
        .map(|byte| char::from(byte).to_ascii_lowercase())
        .collect()
}

/// A client for `config` that counts every request it sends in `metrics`
/// (by HTTP method), so `/metrics` shows how many writes a reconcile made.
pub fn counting_client(config: kube::Config, metrics: Arc<Metrics>) -> Result<Client, kube::Error> {
    let count = tower::util::MapRequestLayer::new(move |request: http::Request<kube::client::Body>| {
        metrics.observe_request(request.method().as_str());
        request
    });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&count)
        .with_layer(&RequestSpanLayer)
        .build())
}

/// Makes each API request but a watch a `kube_request` span: a child of
/// the reconcile it is made in, so that a reconcile's trace shows its reads
/// and writes. Watches last minutes and belong to no reconcile.
#[derive(Debug, Clone, Copy)]
struct RequestSpanLayer;

impl<S> tower::Layer<S> for RequestSpanLayer {
    type Service = RequestSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestSpan { inner }
    }
}

/// The service [`RequestSpanLayer`] builds.
#[derive(Debug, Clone)]
struct RequestSpan<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for RequestSpan<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use tracing::Instrument as _;
        let watch =
            request.uri().query().is_some_and(|query| query.split('&').any(|pair| pair == "watch=true"));
        let span = if watch {
            tracing::Span::none()
        } else {
            let span =
                tracing::info_span!("kube_request", otel.name = %request.method(), otel.kind = "client");
            commerce_platform::trace_context::set_attribute(
                &span,
                opentelemetry::KeyValue::new("url.path", request.uri().path().to_owned()),
            );
            span
        };
        let future = self.inner.call(request);
        future.instrument(span)
    }
}

/// Runs the controller until SIGTERM/SIGINT or the loss of the Lease;
/// `metrics` are served on the admin address (pass the ones
/// [`counting_client`] counts into).
pub async fn run(client: Client, args: RunArgs, metrics: Arc<Metrics>) -> Result<(), std::io::Error> {
    let listener = tokio::net::TcpListener::bind(args.admin_addr).await?;
    // The platform's admin server, as every service has it: /metrics,
    // /healthz, and a /readyz that is 200 only while every check holds.
    let readiness = Readiness::new();
    let apiserver = readiness.register(READY_APISERVER);
    let reconciling = readiness.register(READY_RECONCILING);
    apiserver.set_not_ready("not asked yet");
    reconciling.set_not_ready("starting");
    let admin_stopped = CancellationToken::new();
    let _stop_admin = admin_stopped.clone().drop_guard();
    let registry = metrics.registry().clone();
    tokio::spawn(async move {
        if let Err(error) = admin::serve_on(listener, readiness, registry, admin_stopped).await {
            warn!(error = %commerce_platform::error_chain(&error), "the admin server stopped");
        }
    });
    tokio::spawn(watch_apiserver(client.clone(), apiserver));

    let identity = args.identity.clone().unwrap_or_else(default_identity);
    info!(%identity, "operator identity");
    let elector = Elector::new(client.clone(), &args.lease_namespace, &args.lease_name, &identity);
    let mut leading_since = tokio::time::Instant::now();
    metrics.set_leader(!args.leader_election);
    if args.leader_election {
        // A standby replica is ready: it is what it should be, and a
        // rollout of the operator's Deployment must not wait for a Lease
        // that the old leader holds.
        reconciling.set_ready();
        tokio::select! {
            since = elector.acquire() => {
                leading_since = since;
                metrics.set_leader(true);
            }
            () = shutdown_signal() => {
                info!("stopped while standing by");
                return Ok(());
            }
        }
    }
    if args.manage_crds {
        // Before the first watch: a watch of the old schema would decode
        // (and a reconcile would write) stacks without the new fields.
        if let Err(error) = crate::crd::install(&client).await {
            warn!(error = %crate::reconcile::error_chain(&error), "cannot bring the CRDs to this operator's version");
            elector.release().await;
            return Err(std::io::Error::other(error));
        }
    }
    let reporter = Reporter { controller: names::MANAGER.into(), instance: Some(identity.clone()) };
    let external = Arc::new(ClusterExternalState::default());
    let topic_drift = external.check_topics_every(crate::external::topic_watch::TOPIC_CHECK_INTERVAL);
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        backoffs: Backoffs::default(),
        metrics,
        external: external.clone(),
    });
    let permits = Arc::new(Semaphore::new(usize::from(args.max_concurrent_reconciles)));
    info!(
        namespaces = %args.watch_namespace,
        max_concurrent_reconciles = args.max_concurrent_reconciles,
        "watching (no namespaces listed: all)"
    );
    let scopes = args.watch_namespace.scopes();
    reconciling.set_not_ready("listing the stacks and policies");
    let mut sets = Vec::new();
    let mut listed = Vec::new();
    let mut stores = Vec::new();
    for (scope, topic_drift) in scopes.iter().zip(fan_out(topic_drift, scopes.len())) {
        let (set, set_listed, store) =
            controller_set(&client, *scope, topic_drift, ctx.clone(), permits.clone());
        sets.push(set);
        listed.push(set_listed);
        stores.push(store);
    }
    ctx.metrics.watch_stacks(stores);
    tokio::spawn(async move {
        // Ready once every watch has listed what it watches: before that,
        // a reconcile could miss a stack or a policy.
        if futures::future::join_all(listed).await.into_iter().all(|listed| listed) {
            info!("every stack and policy listed; reconciling");
            reconciling.set_ready();
        }
    });
    let controller = futures::future::join_all(sets).map(|_| ());
    if args.leader_election {
        tokio::select! {
            () = controller => {
                info!("controller stopped");
                elector.release().await;
            }
            // Dropping the controller stops reconciling at once, before
            // the Lease can expire for the other candidates.
            () = elector.keep(leading_since) => warn!("lost the Lease; exiting so that a new leader takes over"),
        }
    } else {
        controller.await;
    }
    Ok(())
}

/// Name of the readiness check that the apiserver answers.
const READY_APISERVER: &str = "apiserver";
/// Name of the readiness check that the controllers have listed what they
/// watch (or that this replica stands by for the Lease).
const READY_RECONCILING: &str = "reconciling";
/// How often the apiserver is asked for its version, for `/readyz`.
const APISERVER_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Keeps `check` saying whether the apiserver answers (`GET /version`).
async fn watch_apiserver(client: Client, check: Check) {
    let mut ticks = tokio::time::interval(APISERVER_CHECK_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match client.apiserver_version().await {
            Ok(_) => check.set_ready(),
            Err(error) => check.set_not_ready(format!("the Kubernetes API does not answer: {error}")),
        }
    }
}

/// Whether `store` was filled by its watch's first list (false: its writer
/// went first). Asked again every half second: kube's `wait_until_ready`
/// wakes only the last of several waiters, and the controller waits on the
/// same store.
async fn listed<K>(store: &reflector::Store<K>) -> bool
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        if let Ok(ready) = tokio::time::timeout(LISTED_POLL, store.wait_until_ready()).await {
            return ready.is_ok();
        }
    }
}

/// How often [`listed`] asks again.
const LISTED_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// The stacks' and the policies' controllers for one scope (a namespace, or
/// all of them with `None`), run until SIGTERM/SIGINT, a future that says
/// whether both listed what they watch (false: they stopped first), and the
/// stacks' store (for the per-stack metrics). A
/// stack's reconcile starts only with one of `permits`, shared by every
/// scope's controller.
fn controller_set(
    client: &Client,
    scope: Option<&str>,
    topic_drift: impl Stream<Item = ()> + Send + 'static,
    ctx: Arc<Context>,
    permits: Arc<Semaphore>,
) -> (
    impl Future<Output = ()> + Send + 'static,
    impl Future<Output = bool> + Send + 'static,
    reflector::Store<DeserializeGuard<CommerceStack>>,
) {
    let bounded_reconcile = move |stack: Arc<DeserializeGuard<CommerceStack>>, ctx: Arc<Context>| {
        let permits = permits.clone();
        async move {
            // The semaphore is never closed; were it, reconciling unbounded
            // beats not reconciling.
            let _permit = permits.acquire_owned().await.ok();
            // Boxed once running: a reconcile waiting for a permit keeps
            // only this small future, not the pipeline's whole state.
            Box::pin(reconcile(stack, ctx)).await
        }
    };
    let stacks = controller(client, scope);
    let stacks_store = stacks.store();
    let stacks = stacks
        // A topic deleted out of band wakes every stack's reconcile
        // (reads only for the stacks it does not concern).
        .reconcile_all_on(topic_drift)
        .shutdown_on_signal()
        .run(bounded_reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(error) = result {
                // Reconcile errors are logged by error_policy; these are
                // watch and queue errors.
                warn!(error = %error, "controller event");
            }
        });
    // Policy reconciles are not bounded: each reads the policies of one
    // namespace and writes small statuses.
    let policies = policy_controller(client, scope);
    let policies_store = policies.store();
    let stacks_for_metrics = stacks_store.clone();
    let listed = async move {
        let (stacks, policies) = futures::future::join(listed(&stacks_store), listed(&policies_store)).await;
        stacks && policies
    };
    let policies = policies.shutdown_on_signal().run(reconcile_policy, policy_error_policy, ctx).for_each(
        |result| async move {
            if let Err(error) = result {
                warn!(error = %error, "policy controller event");
            }
        },
    );
    (futures::future::join(stacks, policies).map(|_| ()), listed, stacks_for_metrics)
}

/// Copies every item of `trigger` to `count` streams, one per controller set
/// (a stream has one consumer). An item means "look at everything again", so
/// a set that has not taken the last one yet needs no second: capacity 1,
/// and a lagging receiver's `Lagged` counts as an item.
fn fan_out(
    trigger: impl Stream<Item = ()> + Send + 'static,
    count: usize,
) -> Vec<impl Stream<Item = ()> + Send + 'static> {
    let (sender, _) = broadcast::channel::<()>(1);
    let receivers: Vec<_> = (0..count).map(|_| sender.subscribe()).collect();
    tokio::spawn(async move {
        let mut trigger = std::pin::pin!(trigger);
        // Ends (dropping `trigger`, which stops its producer) once every
        // set is gone or `trigger` ends.
        while trigger.next().await.is_some() {
            if sender.send(()).is_err() {
                return;
            }
        }
    });
    receivers
        .into_iter()
        .map(|receiver| {
            futures::stream::unfold(receiver, |mut receiver| async move {
                match receiver.recv().await {
                    Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => Some(((), receiver)),
                    Err(broadcast::error::RecvError::Closed) => None,
                }
            })
        })
        .collect()
}

/// Resolves on SIGTERM or SIGINT. In its container the operator is PID 1,
/// for which SIGTERM has no default action: without a handler, a standby
/// replica (which runs no controller, and so none of kube's handlers) would
/// ignore the kubelet's stop and be killed only when the grace period ends.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            warn!(%error, "cannot listen for SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The controller: stacks, what they own (metadata only, by the managed-by
/// label), and the policies that target them.
fn controller(client: &Client, namespace: Option<&str>) -> Controller<DeserializeGuard<CommerceStack>> {
    let stacks: Api<DeserializeGuard<CommerceStack>> = scoped(client, namespace);
    let owned = watcher::Config::default().labels(&format!("{}={}", names::MANAGED_BY_LABEL, names::MANAGER));
    let mut controller = stored(stacks);
    for resource in owned_kinds() {
        let api: Api<DynamicObject> = match namespace {
            None => Api::all_with(client.clone(), &resource),
            Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
        };
        controller = controller.owns_with(api, resource, owned.clone());
    }
    let policies: Api<DeserializeGuard<RateLimitPolicy>> = scoped(client, namespace);
    controller.watches(policies, watcher::Config::default(), |guard| {
        let policy = guard.0.ok()?;
        let namespace = policy.namespace()?;
        Some(ObjectRef::new(&policy.spec.target_ref.name).within(&namespace))
    })
}

/// The policy controller: RateLimitPolicies, looked at again whenever a
/// stack they target appears, changes or goes.
fn policy_controller(
    client: &Client,
    namespace: Option<&str>,
) -> Controller<DeserializeGuard<RateLimitPolicy>> {
    let policies: Api<DeserializeGuard<RateLimitPolicy>> = scoped(client, namespace);
    let controller = stored(policies);
    let store = controller.store();
    let stacks: Api<DeserializeGuard<CommerceStack>> = scoped(client, namespace);
    controller.watches(stacks, watcher::Config::default().any_semantic(), move |guard| {
        let metadata = match &guard.0 {
            Ok(stack) => &stack.metadata,
            Err(invalid) => &invalid.metadata,
        };
        let (Some(namespace), Some(name)) = (metadata.namespace.as_deref(), metadata.name.as_deref()) else {
            return Vec::new();
        };
        policies_targeting(&store.state(), namespace, name)
    })
}

/// A controller of the objects of `api`, stored without their bookkeeping
/// ([`without_bookkeeping`]); otherwise what `Controller::new` builds.
fn stored<K>(api: Api<DeserializeGuard<K>>) -> Controller<DeserializeGuard<K>>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let objects = watcher(api, watcher::Config::default().any_semantic())
        .modify(without_bookkeeping)
        .reflect(writer)
        .applied_objects();
    Controller::for_stream(objects, store)
}

/// Drops what the API server and kubectl keep about an object's writers:
/// its managed fields (one entry per field manager, each a tree of every
/// field it set) and kubectl's last-applied copy of the whole object. The
/// operator decides from spec, status and the rest of the metadata only.
fn without_bookkeeping<K: kube::Resource>(guard: &mut DeserializeGuard<K>) {
    let metadata = match &mut guard.0 {
        Ok(object) => object.meta_mut(),
        Err(invalid) => &mut invalid.metadata,
    };
    metadata.managed_fields = None;
    if let Some(annotations) = metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// The annotation where client-side `kubectl apply` keeps the whole object.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// An Api over `namespace`, or over all namespaces with `None`.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        None => Api::all(client.clone()),
        Some(namespace) => Api::namespaced(client.clone(), namespace),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: RunArgs,
    }

    #[test]
    fn two_operators_started_with_defaults_have_different_identities() {
        // No fixed default: run() picks default_identity() for each process.
        let parsed = Cli::try_parse_from(["commerce-operator"]).unwrap();
        if std::env::var_os("COMMERCE_POD_NAME").is_none() {
            assert_eq!(parsed.args.identity, None);
        }
        let (first, second) = (default_identity(), default_identity());
        assert_ne!(first, second);
        let (first_host, first_suffix) = first.rsplit_once('-').unwrap();
        assert_eq!(first_host, second.rsplit_once('-').unwrap().0, "both start with the host name");
        assert_eq!(first_suffix.len(), 6);
        assert!(first_suffix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()), "{first}");
    }

    #[test]
    fn the_default_identity_is_the_host_name_and_a_suffix() {
        assert_eq!(identity_for(Some("node-1"), "x7k2q9"), "node-1-x7k2q9");
        assert_eq!(identity_for(None, "x7k2q9"), "commerce-operator-x7k2q9");
    }

    #[test]
    fn a_given_identity_is_used_as_is() {
        let parsed = Cli::try_parse_from(["commerce-operator", "--identity", "pod-a"]).unwrap();
        assert_eq!(parsed.args.identity.as_deref(), Some("pod-a"));
    }

    fn only(namespaces: &[&str]) -> WatchNamespaces {
        WatchNamespaces::Only(namespaces.iter().map(|n| n.to_string()).collect())
    }

    #[test]
    fn an_empty_watch_namespace_watches_all_and_one_name_watches_that_namespace() {
        assert_eq!("".parse(), Ok(WatchNamespaces::All));
        assert_eq!("  ".parse(), Ok(WatchNamespaces::All));
        assert_eq!(WatchNamespaces::All.scopes(), vec![None]);
        assert_eq!("shop".parse(), Ok(only(&["shop"])));
        assert_eq!(only(&["shop"]).scopes(), vec![Some("shop")]);
    }

    #[test]
    fn a_comma_separated_watch_namespace_is_a_list_without_blanks_or_repeats() {
        assert_eq!("a,b".parse(), Ok(only(&["a", "b"])));
        assert_eq!(" team-a , b2 ,team-a".parse(), Ok(only(&["team-a", "b2"])));
        assert_eq!(only(&["a", "b"]).scopes(), vec![Some("a"), Some("b")]);
        assert_eq!(only(&["a", "b"]).to_string(), "a,b");
    }

    #[test]
    fn an_empty_entry_or_an_impossible_namespace_name_is_refused() {
        for value in ["a,,b", "a,", ",a", ","] {
            assert_eq!(
                value.parse::<WatchNamespaces>(),
                Err(WatchNamespacesError::EmptyEntry(value.into())),
                "{value:?}"
            );
        }
        let too_long = "n".repeat(64);
        for name in ["Shop", "-a", "a-", "a_b", "a.b", too_long.as_str()] {
            let value = format!("ok,{name}");
            assert_eq!(
                value.parse::<WatchNamespaces>(),
                Err(WatchNamespacesError::InvalidName(name.into())),
                "{value:?}"
            );
        }
        assert!("n".repeat(63).parse::<WatchNamespaces>().is_ok());
    }

    #[test]
    fn the_flag_and_its_environment_variable_take_the_list() {
        let parsed = Cli::try_parse_from(["commerce-operator", "--watch-namespace", "a,b"]).unwrap();
        assert_eq!(parsed.args.watch_namespace, only(&["a", "b"]));
        let error = Cli::try_parse_from(["commerce-operator", "--watch-namespace", "a,B"]).unwrap_err();
        assert!(error.to_string().contains("\"B\" is not a namespace name"), "{error}");
        if std::env::var_os("COMMERCE_WATCH_NAMESPACE").is_none() {
            let parsed = Cli::try_parse_from(["commerce-operator"]).unwrap();
            assert_eq!(parsed.args.watch_namespace, WatchNamespaces::All);
        }
        if std::env::var_os("COMMERCE_MAX_CONCURRENT_RECONCILES").is_none() {
            let parsed = Cli::try_parse_from(["commerce-operator"]).unwrap();
            assert_eq!(parsed.args.max_concurrent_reconciles, DEFAULT_MAX_CONCURRENT_RECONCILES);
        }
        assert!(Cli::try_parse_from(["commerce-operator", "--max-concurrent-reconciles", "0"]).is_err());
    }

    #[tokio::test]
    async fn every_controller_set_gets_each_topic_drift() {
        let (sender, receiver) = tokio::sync::mpsc::channel::<()>(4);
        let trigger =
            futures::stream::unfold(receiver, |mut r| async move { r.recv().await.map(|()| ((), r)) });
        let mut sets: Vec<_> = fan_out(trigger, 2).into_iter().map(Box::pin).collect();
        sender.send(()).await.unwrap();
        for set in &mut sets {
            let item = tokio::time::timeout(std::time::Duration::from_secs(5), set.next()).await.unwrap();
            assert_eq!(item, Some(()));
        }
        drop(sender);
        for set in &mut sets {
            let end = tokio::time::timeout(std::time::Duration::from_secs(5), set.next()).await.unwrap();
            assert_eq!(end, None, "the copies end with the trigger");
        }
    }
}
