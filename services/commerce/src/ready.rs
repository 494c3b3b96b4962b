//! Waiting for services to become ready through their admin server's
//! `/readyz`, bounded, with an error that names every service that did not
//! make it and shows what its `/readyz` last said.

use std::time::Duration;

use commerce_topology::Service;

use crate::infra::LocalWiring;
use crate::services::ServiceConfig;
use crate::supervisor::{self, Launcher};
use tokio_util::sync::CancellationToken;

/// What to do when a wave is not ready in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTimeout {
    /// Fail: the caller promised a ready shop (`local up`).
    Fail,
    /// Log and start the next wave anyway: services retry their
    /// dependencies and show the wait in `/readyz` (`serve all`).
    Continue,
}

/// How a launch in waves ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launched {
    /// Every wave was started (and, with [`OnTimeout::Fail`], is ready).
    All,
    /// Shutdown began first: a signal, or a service failed (the supervisor
    /// reports which).
    ShutDown,
}

/// Launches `configs` wave by wave ([`supervisor::waves`]), waiting for each
/// wave's `/readyz` before the next; `timeout` bounds the whole start.
/// Stops launching if shutdown begins meanwhile.
pub async fn launch_in_waves(
    launcher: &Launcher,
    configs: Vec<ServiceConfig>,
    wiring: &LocalWiring,
    timeout: Duration,
    on_timeout: OnTimeout,
    shutdown: &CancellationToken,
) -> anyhow::Result<Launched> {
    let services: Vec<Service> = configs.iter().map(ServiceConfig::service).collect();
    let mut configs: Vec<Option<ServiceConfig>> = configs.into_iter().map(Some).collect();
    let deadline = tokio::time::Instant::now() + timeout;
    for wave in supervisor::waves(&services) {
        for service in &wave {
            if let Some(config) =
                services.iter().position(|s| s == service).and_then(|index| configs[index].take())
            {
                launcher.launch(config);
            }
        }
        let ready = tokio::select! {
            ready = wait_until_ready(wiring, &wave, deadline, timeout) => ready,
            () = shutdown.cancelled() => return Ok(Launched::ShutDown),
        };
        match (ready, on_timeout) {
            (Ok(()), _) => {}
            (Err(error), OnTimeout::Fail) => return Err(error),
            (Err(error), OnTimeout::Continue) => {
                tracing::warn!(error = format!("{error:#}"), "starting the next services anyway");
            }
        }
    }
    Ok(Launched::All)
}

/// Pause between two rounds of probes: readiness checks of the platform
/// refresh every 250 ms to 1 s, so probing faster would only repeat answers.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// How long one probe may take: a local admin server answers in
/// milliseconds; a hanging one counts as not ready.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The last answer of a service that is not ready yet.
#[derive(Debug, Clone)]
struct NotReady {
    service: Service,
    url: String,
    /// The port clients use (gRPC, or the gateway's HTTP): `/readyz` says
    /// the service's dependencies are fine, which some services report
    /// before their server is bound (auth hashes its bootstrap accounts
    /// first), and a caller started then would find nothing listening.
    serving: u16,
    last: String,
}

/// Waits until `/readyz` of every service answers 200 and its serving port
/// accepts connections, until `deadline`; `budget` is the time the caller
/// allowed in all, for the message.
pub async fn wait_until_ready(
    wiring: &LocalWiring,
    services: &[Service],
    deadline: tokio::time::Instant,
    budget: Duration,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().timeout(PROBE_TIMEOUT).no_proxy().build()?;
    let mut waiting: Vec<NotReady> = services
        .iter()
        .map(|service| NotReady {
            service: *service,
            url: format!("http://127.0.0.1:{}/readyz", wiring.ports(*service).admin),
            serving: {
                let ports = wiring.ports(*service);
                ports.grpc.or(ports.http).unwrap_or(ports.admin)
            },
            last: "no answer yet".to_owned(),
        })
        .collect();
    loop {
        let mut still = Vec::new();
        for mut entry in waiting {
            match probe(&client, &entry.url, entry.serving).await {
                Ok(()) => tracing::info!(service = %entry.service, "ready"),
                Err(last) => {
                    entry.last = last;
                    still.push(entry);
                }
            }
        }
        waiting = still;
        if waiting.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let details: Vec<String> = waiting
                .iter()
                .map(|entry| format!("  {} ({}): {}", entry.service, entry.url, entry.last))
                .collect();
            anyhow::bail!(
                "not ready within {}: {}\n{}",
                humantime::format_duration(budget),
                waiting.iter().map(|entry| entry.service.name()).collect::<Vec<_>>().join(", "),
                details.join("\n")
            );
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// `Ok` on 200 with `serving` accepting connections; otherwise what was
/// seen: the status and body, or the error.
async fn probe(client: &reqwest::Client, url: &str, serving: u16) -> Result<(), String> {
    match client.get(url).send().await {
        Ok(response) if response.status() == reqwest::StatusCode::OK => {
            match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(("127.0.0.1", serving)))
                .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => {
                    Err(format!("/readyz is 200, but nothing accepts on port {serving} yet ({error})"))
                }
                Err(_) => Err(format!(
                    "/readyz is 200, but port {serving} does not accept within {PROBE_TIMEOUT:?}"
                )),
            }
        }
        Ok(response) => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            Err(format!("HTTP {status}: {}", body.trim()))
        }
        Err(error) if error.is_connect() => {
            Err("admin server not listening yet (connection refused)".to_owned())
        }
        Err(error) => Err(format!("request failed: {error}")),
    }
}
