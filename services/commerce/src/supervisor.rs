//! Runs several services in one process under one shutdown token: SIGTERM
//! (or Ctrl-C) stops them all gracefully, and a service that fails (or stops
//! on its own) is logged and stops the rest, so the process exits non-zero
//! instead of limping on with part of the shop.

use std::time::Duration;

use commerce_api::catalog::Service;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::services::{ServiceConfig, names};

/// How long the services may take to stop once shutdown began. Above the
/// platform's default gRPC/HTTP shutdown grace (20 s), so a drain that keeps
/// within its own bound is never cut short here.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves every config until `shutdown` is cancelled or one of them ends.
///
/// Each service gets a child of `shutdown`: a service that cancels its own
/// token on the way out stops only itself, and this function decides for the
/// rest. Returns an error naming every service that failed or stopped
/// before shutdown was requested.
pub async fn run(configs: Vec<ServiceConfig>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut running = JoinSet::new();
    let mut pending: Vec<Service> = Vec::new();
    for config in configs {
        let service = config.service();
        let token = shutdown.child_token();
        pending.push(service);
        running.spawn(async move { (service, config.serve(token).await) });
    }
    tracing::info!(services = %names(&pending), "services started");

    let mut failures = Vec::new();
    let mut stop_deadline = None;
    loop {
        let next = match stop_deadline {
            None => tokio::select! {
                next = running.join_next() => next,
                () = shutdown.cancelled() => {
                    stop_deadline = Some(tokio::time::Instant::now() + STOP_TIMEOUT);
                    continue;
                }
            },
            Some(deadline) => match tokio::time::timeout_at(deadline, running.join_next()).await {
                Ok(next) => next,
                Err(_) => {
                    let message = format!("services {} did not stop within {STOP_TIMEOUT:?}", names(&pending));
                    tracing::error!("{message}");
                    running.abort_all();
                    failures.push(message);
                    break;
                }
            },
        };
        let Some(joined) = next else { break };
        let (service, result) = match joined {
            Ok(outcome) => outcome,
            Err(error) => {
                // A panic in a service task: its identity is lost with it.
                failures.push(format!("a service task panicked: {error}"));
                shutdown.cancel();
                continue;
            }
        };
        pending.retain(|s| *s != service);
        match result {
            Err(error) => {
                tracing::error!(service = %service, error = format!("{error:#}"), "service failed; stopping the others");
                failures.push(format!("{error:#}"));
                shutdown.cancel();
            }
            Ok(()) if !shutdown.is_cancelled() => {
                tracing::error!(service = %service, "service stopped on its own; stopping the others");
                failures.push(format!("service {service} stopped before shutdown was requested"));
                shutdown.cancel();
            }
            Ok(()) => tracing::info!(service = %service, "service stopped"),
        }
    }
    if failures.is_empty() {
        tracing::info!("every service stopped cleanly");
        Ok(())
    } else {
        anyhow::bail!(failures.join("; "))
    }
}
