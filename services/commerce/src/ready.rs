//! Waiting for services to become ready through their admin server's
//! `/readyz`, bounded, with an error that names every service that did not
//! make it and shows what its `/readyz` last said.

use std::time::Duration;

use commerce_api::catalog::Service;

use crate::infra::LocalWiring;

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
    last: String,
}

/// Waits until `/readyz` of every service answers 200, for at most
/// `timeout`.
pub async fn wait_until_ready(wiring: &LocalWiring, services: &[Service], timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().timeout(PROBE_TIMEOUT).no_proxy().build()?;
    let mut waiting: Vec<NotReady> = services
        .iter()
        .map(|service| NotReady {
            service: *service,
            url: format!("http://127.0.0.1:{}/readyz", wiring.ports(*service).admin),
            last: "no answer yet".to_owned(),
        })
        .collect();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut still = Vec::new();
        for mut entry in waiting {
            match probe(&client, &entry.url).await {
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
                humantime::format_duration(timeout),
                waiting.iter().map(|entry| entry.service.name()).collect::<Vec<_>>().join(", "),
                details.join("\n")
            );
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// `Ok` on 200; otherwise what was seen: the status and body, or the error.
async fn probe(client: &reqwest::Client, url: &str) -> Result<(), String> {
    match client.get(url).send().await {
        Ok(response) if response.status() == reqwest::StatusCode::OK => Ok(()),
        Ok(response) => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            Err(format!("HTTP {status}: {}", body.trim()))
        }
        Err(error) if error.is_connect() => Err("admin server not listening yet (connection refused)".to_owned()),
        Err(error) => Err(format!("request failed: {error}")),
    }
}
