//! Runs several services in one process under one shutdown token: SIGTERM
//! (or Ctrl-C) stops them all gracefully, and a service that fails (or stops
//! on its own) is logged and stops the rest, so the process exits non-zero
//! instead of limping on with part of the shop.
//!
//! Services are launched through a [`Launcher`] while the supervisor runs, so
//! that a caller can start them in waves (callees before their callers, see
//! [`waves`]) and still have a failure in an early wave stop everything.

use std::time::Duration;

use commerce_topology::Service;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::services::{ServiceConfig, names};

/// How long the services may take to stop once shutdown began. Above the
/// platform's default gRPC/HTTP shutdown grace (20 s), so a drain that keeps
/// within its own bound is never cut short here.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Hands services to a running supervisor. Dropping it says that no more
/// will come: the supervisor then ends when the last service has stopped.
#[derive(Debug)]
pub struct Launcher {
    sender: mpsc::UnboundedSender<ServiceConfig>,
}

impl Launcher {
    /// Starts `config`'s service (unless shutdown has begun, in which case it
    /// is dropped unstarted).
    pub fn launch(&self, config: ServiceConfig) {
        // A closed channel means the supervisor has ended: nothing to start.
        let _ = self.sender.send(config);
    }
}

/// Starts a supervisor; the handle yields `Ok` when every service stopped
/// cleanly after shutdown was requested, and an error naming every service
/// that failed, stopped on its own or did not stop in time.
pub fn start(shutdown: CancellationToken) -> (Launcher, JoinHandle<anyhow::Result<()>>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    (Launcher { sender }, tokio::spawn(supervise(receiver, shutdown)))
}

/// Serves `configs` until `shutdown` is cancelled or one of them ends.
pub async fn run(configs: Vec<ServiceConfig>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (launcher, handle) = start(shutdown);
    for config in configs {
        launcher.launch(config);
    }
    drop(launcher);
    handle.await?
}

/// The order in which to start `services`: each wave holds the services whose
/// callees (the catalog's `calls`) are all in earlier waves, so a caller that
/// talks to a peer at start-up (the gateway fetching signing keys) finds it
/// serving, instead of opening its circuit breaker on a peer that is merely
/// a second late.
pub fn waves(services: &[Service]) -> Vec<Vec<Service>> {
    let mut remaining: Vec<Service> = services.to_vec();
    let mut started: Vec<Service> = Vec::new();
    let mut waves = Vec::new();
    while !remaining.is_empty() {
        let ready = |service: &Service| {
            service.spec().calls.iter().all(|callee| started.contains(callee) || !services.contains(callee))
        };
        let (wave, rest): (Vec<Service>, Vec<Service>) = remaining.iter().partition(|service| ready(service));
        if wave.is_empty() {
            // The catalog's calls form no cycle (its tests check that no
            // service calls itself or the gateway); should one appear, start
            // the rest together rather than never.
            waves.push(remaining);
            break;
        }
        started.extend(&wave);
        waves.push(wave);
        remaining = rest;
    }
    waves
}

async fn supervise(
    mut receiver: mpsc::UnboundedReceiver<ServiceConfig>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut running = JoinSet::new();
    let mut pending: Vec<Service> = Vec::new();
    let mut failures = Vec::new();
    let mut accepting = true;
    let mut stop_deadline: Option<tokio::time::Instant> = None;
    loop {
        if running.is_empty() && (!accepting || stop_deadline.is_some()) {
            break;
        }
        tokio::select! {
            config = receiver.recv(), if accepting && stop_deadline.is_none() => match config {
                Some(config) => {
                    let service = config.service();
                    let token = shutdown.child_token();
                    tracing::info!(service = %service, "starting");
                    pending.push(service);
                    running.spawn(async move { (service, config.serve(token).await) });
                }
                None => accepting = false,
            },
            () = shutdown.cancelled(), if stop_deadline.is_none() => {
                stop_deadline = Some(tokio::time::Instant::now() + STOP_TIMEOUT);
            }
            () = sleep_until(stop_deadline) => {
                let message = format!("services {} did not stop within {STOP_TIMEOUT:?}", names(&pending));
                tracing::error!("{message}");
                running.abort_all();
                failures.push(message);
                break;
            }
            Some(joined) = running.join_next() => {
                let (service, result) = match joined {
                    Ok(outcome) => outcome,
                    Err(error) => {
                        // A panicking service task: its name went with it.
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
        }
    }
    if failures.is_empty() {
        tracing::info!("every service stopped cleanly");
        Ok(())
    } else {
        anyhow::bail!(failures.join("; "))
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callees_start_in_earlier_waves_than_their_callers() {
        let waves = waves(&Service::ALL);
        let wave_of =
            |service: Service| waves.iter().position(|wave| wave.contains(&service)).expect("scheduled");
        for service in Service::ALL {
            for callee in service.spec().calls {
                assert!(
                    wave_of(*callee) < wave_of(service),
                    "{callee} must start before {service}: {waves:?}"
                );
            }
        }
        assert_eq!(waves.iter().map(Vec::len).sum::<usize>(), Service::ALL.len());
        assert_eq!(waves.last(), Some(&vec![Service::Gateway]));
    }

    #[test]
    fn a_callee_that_is_not_run_does_not_hold_its_callers_back() {
        assert_eq!(waves(&[Service::Gateway, Service::Auth]), [vec![Service::Auth], vec![Service::Gateway]]);
        assert_eq!(waves(&[Service::Cart]), [vec![Service::Cart]]);
    }

    #[tokio::test]
    async fn an_empty_supervisor_ends_when_its_launcher_is_dropped() {
        let result =
            tokio::time::timeout(Duration::from_secs(5), run(Vec::new(), CancellationToken::new())).await;
        assert!(matches!(result, Ok(Ok(()))), "{result:?}");
    }
}
