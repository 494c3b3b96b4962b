//! Client-side balancing over re-resolved peer addresses: two real servers
//! on loopback behind one peer name, with a resolver the test controls.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commerce_platform::admin::Metrics;
use commerce_platform::discovery::{PeerArgs, Peers, Resolver};
use commerce_platform::readiness::Readiness;
use commerce_platform::resilience::{ClientArgs, ResilientChannel};
use commerce_topology::Service;
use common::{Probe, TestServer, call, start_server, wait_for};
use tokio_util::sync::CancellationToken;
use tonic::Request;

const PATIENCE: Duration = Duration::from_secs(10);
/// Short so that the tests see changes quickly; the tests wait for the
/// effect, never for a fixed time.
const RESOLVE_INTERVAL: Duration = Duration::from_millis(50);

/// A resolver answering whatever the test last set, like a headless
/// Service's DNS name as pods come and go.
#[derive(Clone)]
struct FakeResolver {
    answer: Arc<Mutex<std::io::Result<Vec<SocketAddr>>>>,
    /// How many times the channel asked.
    resolutions: Arc<AtomicUsize>,
}

impl FakeResolver {
    fn new() -> Self {
        Self { answer: Arc::new(Mutex::new(Ok(Vec::new()))), resolutions: Arc::new(AtomicUsize::new(0)) }
    }

    fn set(&self, addresses: &[SocketAddr]) {
        *self.answer.lock().expect("lock") = Ok(addresses.to_vec());
    }

    fn fail(&self) {
        *self.answer.lock().expect("lock") = Err(std::io::Error::other("SERVFAIL"));
    }
}

impl Resolver for FakeResolver {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        assert_eq!((host, port), ("catalog-headless", 50051), "the configured name is what gets resolved");
        self.resolutions.fetch_add(1, Ordering::SeqCst);
        match &*self.answer.lock().expect("lock") {
            Ok(addresses) => Ok(addresses.clone()),
            Err(error) => Err(std::io::Error::new(error.kind(), error.to_string())),
        }
    }
}

async fn replica(name: &'static str) -> TestServer {
    start_server(Probe::replying(name), Readiness::new(), &Metrics::new("test"), Duration::from_secs(5)).await
}

fn peers(resolver: FakeResolver, shutdown: CancellationToken) -> ResilientChannel {
    let args = PeerArgs {
        peers: vec!["catalog=http://catalog-headless:50051".parse().expect("valid peer")],
        resolve_interval: RESOLVE_INTERVAL,
    };
    Peers::with_resolver(&args, &ClientArgs::default(), resolver, shutdown)
        .channel(Service::Catalog)
        .expect("catalog is configured")
}

/// Who answered each of `n` calls.
async fn answers(channel: &ResilientChannel, n: usize) -> Vec<String> {
    let mut seen = Vec::with_capacity(n);
    for _ in 0..n {
        seen.push(call(channel.clone(), Request::new(String::new())).await.expect("a replica answers"));
    }
    seen
}

#[tokio::test]
async fn calls_spread_over_every_resolved_replica_and_leave_a_removed_one() {
    let (a, b) = (replica("a").await, replica("b").await);
    let resolver = FakeResolver::new();
    resolver.set(&[a.addr, b.addr]);
    let shutdown = CancellationToken::new();
    let channel = peers(resolver.clone(), shutdown.clone());

    wait_for("calls to reach both replicas", PATIENCE, || async {
        let seen = answers(&channel, 20).await;
        seen.iter().any(|name| name == "a") && seen.iter().any(|name| name == "b")
    })
    .await;

    resolver.set(&[b.addr]);
    wait_for("calls to go only to the remaining replica", PATIENCE, || async {
        answers(&channel, 20).await.iter().all(|name| name == "b")
    })
    .await;
    let after = answers(&channel, 50).await;
    assert!(after.iter().all(|name| name == "b"), "a removed replica got calls: {after:?}");

    shutdown.cancel();
    for server in [a, b] {
        server.shutdown.cancel();
        server.task.await.expect("server task").expect("clean shutdown");
    }
}

#[tokio::test]
async fn a_failed_resolution_keeps_the_last_known_replicas() {
    let (a, b) = (replica("a").await, replica("b").await);
    let resolver = FakeResolver::new();
    resolver.set(&[a.addr]);
    let shutdown = CancellationToken::new();
    let channel = peers(resolver.clone(), shutdown.clone());
    assert!(answers(&channel, 5).await.iter().all(|name| name == "a"));

    resolver.fail();
    let failed_from = resolver.resolutions.load(Ordering::SeqCst);
    wait_for("three failed resolutions", PATIENCE, || async {
        resolver.resolutions.load(Ordering::SeqCst) >= failed_from + 3
    })
    .await;
    assert!(
        answers(&channel, 20).await.iter().all(|name| name == "a"),
        "the last known replica still serves"
    );

    resolver.set(&[b.addr]);
    wait_for("calls to follow the next good answer", PATIENCE, || async {
        answers(&channel, 10).await.iter().all(|name| name == "b")
    })
    .await;

    shutdown.cancel();
    for server in [a, b] {
        server.shutdown.cancel();
        server.task.await.expect("server task").expect("clean shutdown");
    }
}

#[tokio::test]
async fn an_unconfigured_peer_is_an_error_naming_the_flag() {
    let peers = Peers::new(&PeerArgs::default(), &ClientArgs::default(), CancellationToken::new());
    let error = peers.channel(Service::Inventory).expect_err("not configured").to_string();
    assert!(error.contains("--peer inventory="), "{error}");
}
