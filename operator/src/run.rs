//! The `run` subcommand: the controller in a cluster. It serves the admin
//! endpoints at once, waits to lead (Lease), then watches CommerceStacks,
//! everything they own and the RateLimitPolicies that target them, and
//! reconciles until SIGTERM or until it loses the Lease.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use commerce_api::{CommerceStack, RateLimitPolicy};
use futures::StreamExt;
use kube::api::Api;
use kube::core::DynamicObject;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use crate::build::{names, owned_kinds};
use crate::external::cluster::ClusterExternalState;
use crate::leader::Elector;
use crate::metrics::Metrics;
use crate::reconcile::{Context, backoff::Backoffs, error_policy, reconcile};

/// Settings of `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Watch only this namespace; empty watches all (what the chart's
    /// ClusterRole allows).
    #[arg(long, env = "COMMERCE_WATCH_NAMESPACE", default_value = "")]
    pub watch_namespace: String,
    /// Address of the admin server: `/metrics`, `/healthz`, `/readyz`.
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
    /// This replica's identity in the election and in Events: its pod name.
    #[arg(long, env = "COMMERCE_POD_NAME", default_value = "commerce-operator")]
    pub identity: String,
}

/// A client for `config` that counts every request it sends in `metrics`
/// (by HTTP method), so `/metrics` shows how many writes a reconcile made.
pub fn counting_client(config: kube::Config, metrics: Arc<Metrics>) -> Result<Client, kube::Error> {
    let count = tower::util::MapRequestLayer::new(move |request: http::Request<kube::client::Body>| {
        metrics.observe_request(request.method().as_str());
        request
    });
    Ok(kube::client::ClientBuilder::try_from(config)?.with_layer(&count).build())
}

/// Runs the controller until SIGTERM/SIGINT or the loss of the Lease;
/// `metrics` are served on the admin address (pass the ones
/// [`counting_client`] counts into).
pub async fn run(client: Client, args: RunArgs, metrics: Arc<Metrics>) -> Result<(), std::io::Error> {
    let listener = tokio::net::TcpListener::bind(args.admin_addr).await?;
    info!(addr = %args.admin_addr, "admin server listening");
    let admin = Router::new()
        .route("/metrics", get(|State(metrics): State<Arc<Metrics>>| async move { metrics.encode() }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(metrics.clone());
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, admin).await {
            warn!(%error, "the admin server stopped");
        }
    });

    let elector = Elector::new(client.clone(), &args.lease_namespace, &args.lease_name, &args.identity);
    if args.leader_election {
        tokio::select! {
            () = elector.acquire() => {}
            () = shutdown_signal() => {
                info!("stopped while standing by");
                return Ok(());
            }
        }
    }
    let reporter = Reporter { controller: names::MANAGER.into(), instance: Some(args.identity.clone()) };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        backoffs: Backoffs::default(),
        metrics,
        external: Arc::new(ClusterExternalState::default()),
    });
    let controller = controller(&client, &args.watch_namespace)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                // Reconcile errors are logged by error_policy; these are
                // watch and queue errors.
                warn!(error = %error, "controller event");
            }
        });
    if args.leader_election {
        tokio::select! {
            () = controller => {
                info!("controller stopped");
                elector.release().await;
            }
            () = elector.keep() => warn!("lost the Lease; exiting so that a new leader takes over"),
        }
    } else {
        controller.await;
    }
    Ok(())
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
fn controller(client: &Client, namespace: &str) -> Controller<DeserializeGuard<CommerceStack>> {
    let stacks: Api<DeserializeGuard<CommerceStack>> = scoped(client, namespace);
    let owned = watcher::Config::default().labels(&format!("{}={}", names::MANAGED_BY_LABEL, names::MANAGER));
    let mut controller = Controller::new(stacks, watcher::Config::default().any_semantic());
    for resource in owned_kinds() {
        let api: Api<DynamicObject> = if namespace.is_empty() {
            Api::all_with(client.clone(), &resource)
        } else {
            Api::namespaced_with(client.clone(), namespace, &resource)
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

fn scoped<K>(client: &Client, namespace: &str) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    if namespace.is_empty() { Api::all(client.clone()) } else { Api::namespaced(client.clone(), namespace) }
}
