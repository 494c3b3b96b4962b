//! `commerce check grpc ADDRESS`: asks a gRPC server's standard health
//! service (grpc.health.v1) whether it is SERVING, trying again until it is
//! or `--timeout` has passed, and exits 0 only if it is.
//!
//! The images have no shell and no client tools, so this is how a person
//! (or a test) finds out from inside the cluster whether one pod can reach
//! another: DNS, Services, NetworkPolicies. `kubectl run --image
//! ghcr.io/commerce-stack/commerce:VERSION probe -- check grpc HOST:PORT`.
//! It tries again because a new pod is often not yet known to everything
//! on its path (a NetworkPolicy engine adds its address a moment later).

use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::time::Instant;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The default of `--timeout`.
pub const DEFAULT_TIMEOUT: &str = "5s";

/// Flags of `commerce check grpc`.
#[derive(Debug, clap::Args)]
pub struct CheckGrpc {
    /// host:port of the server, e.g. shop-inventory.shop.svc:50051.
    pub address: String,
    /// The service to ask about; empty asks about the server as a whole.
    #[arg(long, default_value = "")]
    pub service: String,
    /// How long connecting and answering may take together.
    #[arg(long, default_value = DEFAULT_TIMEOUT, value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

/// How long one attempt may take to connect: a pod on the cluster network
/// answers in milliseconds, so a second only passes when packets are
/// dropped, and then the next attempt may fare better.
const ATTEMPT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between two attempts.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// Asks `args.address` for the health of `args.service` (the server as a
/// whole when empty) until it says SERVING or `args.timeout` has passed.
pub async fn grpc(args: &CheckGrpc) -> anyhow::Result<()> {
    let address = &args.address;
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .with_context(|| format!("{address:?} is not a host:port"))?
        .connect_timeout(ATTEMPT_CONNECT_TIMEOUT.min(args.timeout))
        .timeout(args.timeout);
    let deadline = Instant::now() + args.timeout;
    let mut attempts = 0;
    let mut last = String::from("no attempt finished");
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ask(endpoint.clone(), &args.service)).await {
            Ok(Ok(ServingStatus::Serving)) => {
                println!("{address}: SERVING (attempt {attempts})");
                return Ok(());
            }
            Ok(Ok(status)) => last = format!("it answers {}", status.as_str_name()),
            Ok(Err(error)) => last = format!("{error:#}"),
            Err(_) => break,
        }
        if Instant::now() + RETRY_AFTER >= deadline {
            break;
        }
        tokio::time::sleep(RETRY_AFTER).await;
    }
    bail!("{address} was not SERVING within {:?} ({attempts} attempts); last: {last}", args.timeout)
}

async fn ask(endpoint: Endpoint, service: &str) -> anyhow::Result<ServingStatus> {
    let uri = endpoint.uri().clone();
    let channel = endpoint.connect().await.with_context(|| format!("cannot connect to {uri}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest { service: service.to_owned() })
        .await
        .with_context(|| format!("the health check of {uri} failed"))?;
    Ok(response.into_inner().status())
}
