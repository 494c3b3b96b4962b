//! Discovery: from configured peer addresses to balanced gRPC channels.
//!
//! Services find each other by Kubernetes DNS. gRPC keeps one HTTP/2
//! connection open per endpoint, so calling a ClusterIP Service would pin a
//! client to whichever pod it first reached. Peers are therefore addressed
//! through *headless* Services (`http://catalog-headless:50051`), whose DNS
//! name returns one A record per ready pod, and each peer gets a
//! `Channel::balance_channel` fed by a background task that re-resolves the
//! name every `--peer-resolve-interval` and inserts or removes one endpoint
//! per address: load spreads over every replica and follows scaling and
//! rollouts. Locally the same configuration points at 127.0.0.1 ports from
//! the service catalog ([`PeerArgs::local_defaults`]).
//!
//! Resolution sits behind the [`Resolver`] trait so tests can hand in address
//! sets; [`DnsResolver`] is the real one. A failed or empty resolution keeps
//! the last known endpoints: during a DNS hiccup, stale addresses fail fast
//! (and trip the breaker), whereas an empty balancer would make every call
//! wait out its deadline.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commerce_topology::Service;
use http::Uri;
use tokio_util::sync::CancellationToken;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

use crate::admin::Metrics;
use crate::resilience::{ClientArgs, ResilientChannel};

/// Default re-resolution interval: CoreDNS serves cluster records with a 5 s
/// TTL, so resolving more often would only see the same answer.
pub const DEFAULT_RESOLVE_INTERVAL: &str = "5s";
/// How soon a peer that resolved to nothing yet is looked up again.
const EMPTY_RETRY: Duration = Duration::from_millis(500);
/// How long a connection attempt to one endpoint may take: a pod on the
/// cluster network answers in milliseconds or not at all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 keep-alive: finds a connection to a vanished pod within ~30 s even
/// when no call is made, well before conntrack entries expire.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// Pending endpoint changes buffered towards the balancer; a resolution
/// produces at most one change per replica.
const CHANGE_BUFFER: usize = 64;

/// Where to reach peers.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Peers")]
pub struct PeerArgs {
    /// A peer's gRPC address, as `service=http://host:port`. Repeatable; the
    /// environment variable takes a comma-separated list.
    #[arg(long = "peer", id = "peer", env = "COMMERCE_PEERS", value_delimiter = ',')]
    pub peers: Vec<PeerTarget>,
    /// How often peer host names are resolved again.
    #[arg(long = "peer-resolve-interval", id = "peer-resolve-interval", env = "COMMERCE_PEER_RESOLVE_INTERVAL", default_value = DEFAULT_RESOLVE_INTERVAL, value_parser = humantime::parse_duration)]
    pub resolve_interval: Duration,
}

impl PeerArgs {
    /// Every gRPC service of the catalog on its local port on 127.0.0.1:
    /// what `commerce serve all` and services run by hand use.
    pub fn local_defaults() -> Self {
        let peers = Service::ALL
            .into_iter()
            .filter_map(|service| {
                let port = service.local_ports().grpc?;
                let uri = Uri::from_str(&format!("http://127.0.0.1:{port}")).ok()?;
                Some(PeerTarget { service, uri })
            })
            .collect();
        Self { peers, resolve_interval: default_resolve_interval() }
    }

    /// These peers, plus local defaults for every service not configured.
    pub fn or_local_defaults(mut self) -> Self {
        for default in Self::local_defaults().peers {
            if self.target(default.service).is_none() {
                self.peers.push(default);
            }
        }
        self
    }

    /// Where `service` is configured, if anywhere (the last entry wins).
    pub fn target(&self, service: Service) -> Option<&PeerTarget> {
        self.peers.iter().rev().find(|target| target.service == service)
    }
}

impl Default for PeerArgs {
    fn default() -> Self {
        Self { peers: Vec::new(), resolve_interval: default_resolve_interval() }
    }
}

fn default_resolve_interval() -> Duration {
    humantime::parse_duration(DEFAULT_RESOLVE_INTERVAL).unwrap_or(Duration::from_secs(5))
}

/// One `service=http://host:port` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTarget {
    /// Which peer this address is for.
    pub service: Service,
    /// `http://host:port`: the host is resolved, the whole URI is the
    /// `:authority` calls carry.
    pub uri: Uri,
}

impl PeerTarget {
    fn host_port(&self) -> Result<(String, u16), DiscoveryError> {
        let host = self.uri.host().ok_or_else(|| DiscoveryError::ParsePeer {
            entry: self.uri.to_string(),
            reason: "the address has no host".to_owned(),
        })?;
        // `[::1]` in a URI is `::1` to the resolver.
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = self.uri.port_u16().ok_or_else(|| DiscoveryError::ParsePeer {
            entry: self.uri.to_string(),
            reason: "the address has no port".to_owned(),
        })?;
        Ok((host, port))
    }
}

impl FromStr for PeerTarget {
    type Err = DiscoveryError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| DiscoveryError::ParsePeer { entry: entry.to_owned(), reason };
        let (name, address) = entry
            .trim()
            .split_once('=')
            .ok_or_else(|| invalid("expected service=http://host:port".to_owned()))?;
        let service = Service::from_name(name.trim()).ok_or_else(|| {
            invalid(format!(
                "unknown service {name:?}; known: {}",
                Service::names().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let uri = Uri::from_str(address.trim()).map_err(|error| invalid(error.to_string()))?;
        if uri.scheme_str() != Some("http") {
            return Err(invalid(
                "only http:// addresses are supported (traffic stays in the cluster)".to_owned(),
            ));
        }
        let target = Self { service, uri };
        target.host_port()?;
        Ok(target)
    }
}

/// What can go wrong finding peers.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// A `--peer` entry is malformed.
    #[error("invalid peer {entry:?}: {reason}")]
    ParsePeer {
        /// The entry as given.
        entry: String,
        /// What is wrong with it, for the person fixing the configuration.
        reason: String,
    },
    /// Code asked for a peer the configuration does not name.
    #[error("no address configured for peer {service} (--peer {service}=http://host:port)")]
    FindPeer {
        /// The peer asked for.
        service: Service,
    },
    /// tonic rejected the peer's address as an endpoint.
    #[error("cannot build an endpoint for {address}")]
    BuildEndpoint {
        /// The peer's configured address.
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Turns a host name into the addresses of its replicas.
pub trait Resolver: Send + Sync + 'static {
    /// Every address `host` currently resolves to, each with `port`.
    fn resolve(&self, host: &str, port: u16)
    -> impl Future<Output = std::io::Result<Vec<SocketAddr>>> + Send;
}

/// The system resolver (`getaddrinfo` on a blocking thread), which in a pod
/// asks the cluster DNS.
#[derive(Debug, Clone, Copy, Default)]
pub struct DnsResolver;

impl Resolver for DnsResolver {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// A channel balanced over every address `target`'s host resolves to, kept
/// up to date by a task that re-resolves every `interval` until `shutdown`.
///
/// Must be called inside a tokio runtime.
pub fn balanced_channel<R: Resolver>(
    target: &PeerTarget,
    resolver: Arc<R>,
    interval: Duration,
    shutdown: CancellationToken,
) -> Result<Channel, DiscoveryError> {
    let (host, port) = target.host_port()?;
    let (channel, changes) = Channel::balance_channel::<SocketAddr>(CHANGE_BUFFER);
    let template = endpoint_template(&target.uri)?;
    let service = target.service;
    tokio::spawn(async move {
        let mut current: HashSet<SocketAddr> = HashSet::new();
        let mut delay = Duration::ZERO;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
            // While no endpoint is known, every call waits out its deadline:
            // look again soon rather than a whole interval later (a peer
            // started at the same time has no ready pod at first).
            delay = if current.is_empty() { interval.min(EMPTY_RETRY) } else { interval };
            let resolved = tokio::select! {
                () = shutdown.cancelled() => break,
                resolved = resolver.resolve(&host, port) => resolved,
            };
            let next: HashSet<SocketAddr> = match resolved {
                Ok(addresses) if !addresses.is_empty() => addresses.into_iter().collect(),
                Ok(_) => {
                    tracing::warn!(peer = %service, %host, "peer resolved to no address; keeping the last known");
                    continue;
                }
                Err(error) => {
                    tracing::warn!(peer = %service, %host, %error, "cannot resolve peer; keeping the last known");
                    continue;
                }
            };
            for gone in current.difference(&next) {
                tracing::info!(peer = %service, address = %gone, "peer endpoint removed");
                if changes.send(Change::Remove(*gone)).await.is_err() {
                    return; // Every clone of the channel is gone.
                }
            }
            for new in next.difference(&current) {
                match template.endpoint(*new) {
                    Ok(endpoint) => {
                        tracing::info!(peer = %service, address = %new, "peer endpoint added");
                        if changes.send(Change::Insert(*new, endpoint)).await.is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(peer = %service, address = %new, %error, "cannot use peer endpoint")
                    }
                }
            }
            current = next;
        }
        tracing::debug!(peer = %service, "peer resolution stopped");
    });
    Ok(channel)
}

/// The settings every endpoint of a peer shares; the address is filled in
/// per replica.
#[derive(Debug, Clone)]
struct EndpointTemplate {
    origin: Uri,
}

impl EndpointTemplate {
    fn endpoint(&self, address: SocketAddr) -> Result<Endpoint, tonic::transport::Error> {
        Ok(Endpoint::from_shared(format!("http://{address}"))?
            // Calls carry the peer's name as `:authority`, not the pod IP.
            .origin(self.origin.clone())
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_while_idle(true))
    }
}

fn endpoint_template(uri: &Uri) -> Result<EndpointTemplate, DiscoveryError> {
    // Validate once, up front, that the URI makes a usable endpoint.
    Endpoint::from_shared(uri.to_string())
        .map_err(|source| DiscoveryError::BuildEndpoint { address: uri.to_string(), source })?;
    Ok(EndpointTemplate { origin: uri.clone() })
}

/// The peers of one service: a resilient, balanced channel per peer, made
/// on first use and shared afterwards.
pub struct Peers<R: Resolver = DnsResolver> {
    args: PeerArgs,
    client: ClientArgs,
    resolver: Arc<R>,
    metrics: Option<Metrics>,
    shutdown: CancellationToken,
    channels: Mutex<BTreeMap<Service, ResilientChannel>>,
}

impl<R: Resolver> std::fmt::Debug for Peers<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").field("args", &self.args).finish_non_exhaustive()
    }
}

impl Peers<DnsResolver> {
    /// Peers resolved through DNS.
    pub fn new(args: &PeerArgs, client: &ClientArgs, shutdown: CancellationToken) -> Self {
        Self::with_resolver(args, client, DnsResolver, shutdown)
    }
}

impl<R: Resolver> Peers<R> {
    /// Peers resolved by `resolver` (tests inject address sets).
    pub fn with_resolver(
        args: &PeerArgs,
        client: &ClientArgs,
        resolver: R,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            args: args.clone(),
            client: client.clone(),
            resolver: Arc::new(resolver),
            metrics: None,
            shutdown,
            channels: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records client metrics (retries, breaker state) per peer.
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// The channel to `service`, for `XClient::new(..)`. The first call
    /// starts the peer's resolution task, so it must run inside a tokio
    /// runtime.
    pub fn channel(&self, service: Service) -> Result<ResilientChannel, DiscoveryError> {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(channel) = channels.get(&service) {
            return Ok(channel.clone());
        }
        let target = self.args.target(service).ok_or(DiscoveryError::FindPeer { service })?;
        let channel = balanced_channel(
            target,
            self.resolver.clone(),
            self.args.resolve_interval,
            self.shutdown.clone(),
        )?;
        let mut resilient = ResilientChannel::new(service.name(), channel, &self.client);
        if let Some(metrics) = &self.metrics {
            resilient = resilient.with_metrics(metrics);
        }
        channels.insert(service, resilient.clone());
        Ok(resilient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_entry_parses_and_bad_ones_say_why() {
        let target: PeerTarget = "catalog=http://catalog-headless:50051".parse().expect("valid");
        assert_eq!(target.service, Service::Catalog);
        assert_eq!(target.host_port().expect("host and port"), ("catalog-headless".to_owned(), 50051));

        for (entry, needle) in [
            ("catalog", "expected service="),
            ("shop=http://x:1", "unknown service"),
            ("catalog=https://x:1", "only http://"),
            ("catalog=http://x", "no port"),
        ] {
            let error = entry.parse::<PeerTarget>().expect_err(entry).to_string();
            assert!(error.contains(needle), "{entry}: {error}");
        }
    }

    #[test]
    fn local_defaults_cover_every_grpc_service_on_loopback() {
        let args = PeerArgs::local_defaults();
        let catalog = args.target(Service::Catalog).expect("catalog");
        let port = Service::Catalog.local_ports().grpc.expect("catalog speaks gRPC");
        assert_eq!(catalog.uri.to_string(), format!("http://127.0.0.1:{port}/"));
        assert!(args.target(Service::Gateway).is_none(), "the gateway has no gRPC port");

        let configured = PeerArgs {
            peers: vec!["catalog=http://catalog-headless:50051".parse().expect("valid")],
            ..PeerArgs::default()
        }
        .or_local_defaults();
        assert_eq!(
            configured.target(Service::Catalog).expect("catalog").uri.host(),
            Some("catalog-headless")
        );
        assert!(configured.target(Service::Inventory).is_some());
    }
}
