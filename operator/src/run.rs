//! The `run` subcommand: the controllers in a cluster. It serves the admin
//! endpoints at once, waits to lead (Lease), then watches CommerceStacks,
//! everything they own and the RateLimitPolicies that target them, and
//! reconciles until SIGTERM or until it loses the Lease. A second, small
//! controller reports RateLimitPolicies whose stack does not exist, which
//! the stacks' controller never sees.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use commerce_api::{CommerceStack, RateLimitPolicy};
use futures::{FutureExt as _, StreamExt};
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
use crate::reconcile::policy::{policies_targeting, policy_error_policy, reconcile_policy};
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
    /// This replica's identity in the election and in Events: its pod name
    /// (the chart sets it). Unset: the host name and a random suffix, unique
    /// per process.
    #[arg(long, env = "COMMERCE_POD_NAME")]
    pub identity: Option<String>,
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

    let identity = args.identity.clone().unwrap_or_else(default_identity);
    info!(%identity, "operator identity");
    let elector = Elector::new(client.clone(), &args.lease_namespace, &args.lease_name, &identity);
    let mut leading_since = tokio::time::Instant::now();
    if args.leader_election {
        tokio::select! {
            since = elector.acquire() => leading_since = since,
            () = shutdown_signal() => {
                info!("stopped while standing by");
                return Ok(());
            }
        }
    }
    let reporter = Reporter { controller: names::MANAGER.into(), instance: Some(identity.clone()) };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        backoffs: Backoffs::default(),
        metrics,
        external: Arc::new(ClusterExternalState::default()),
    });
    let stacks = controller(&client, &args.watch_namespace)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(error) = result {
                // Reconcile errors are logged by error_policy; these are
                // watch and queue errors.
                warn!(error = %error, "controller event");
            }
        });
    let policies = policy_controller(&client, &args.watch_namespace)
        .shutdown_on_signal()
        .run(reconcile_policy, policy_error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(error = %error, "policy controller event");
            }
        });
    let controller = futures::future::join(stacks, policies).map(|_| ());
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

/// The policy controller: RateLimitPolicies, looked at again whenever a
/// stack they target appears, changes or goes.
fn policy_controller(client: &Client, namespace: &str) -> Controller<DeserializeGuard<RateLimitPolicy>> {
    let policies: Api<DeserializeGuard<RateLimitPolicy>> = scoped(client, namespace);
    let controller = Controller::new(policies, watcher::Config::default().any_semantic());
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

fn scoped<K>(client: &Client, namespace: &str) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    if namespace.is_empty() { Api::all(client.clone()) } else { Api::namespaced(client.clone(), namespace) }
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
}
