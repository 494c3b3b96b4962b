//! The built `commerce` binary against the real local infrastructure
//! (`bash e2e/scripts/infra.sh up`; settings from `e2e/infra.env`): services
//! become ready through `/readyz`, and SIGTERM stops the process cleanly.
//!
//! The shops started here are kept apart from a developer's `make up` shop
//! and from each other (tests run in parallel): ports shifted by
//! `--port-offset`, topics and consumer groups under their own
//! `--kafka-name-prefix`, databases under their own `--database-prefix`.
//! Only processes these tests start are signalled, by their PID.

use std::fs::File;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use commerce_topology::Service;

/// How long a whole shop may take to become ready: the first run creates
/// and migrates every database.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the process may take to exit after SIGTERM: above the
/// platform's 20 s drain grace, far above what an idle shop needs.
const EXIT_TIMEOUT: Duration = Duration::from_secs(40);
/// How long infrastructure may take to accept a TCP connection.
const REACH_TIMEOUT: Duration = Duration::from_secs(3);

/// The local infrastructure, from the environment with `e2e/infra.env`'s
/// defaults.
struct Infra {
    postgres_admin_url: String,
    kafka_brokers: String,
    redis_url: String,
}

impl Infra {
    fn from_env() -> Self {
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        Self {
            postgres_admin_url: var(
                "COMMERCE_POSTGRES_ADMIN_URL",
                "postgres://postgres:commerce-dev@127.0.0.1:55432/postgres",
            ),
            kafka_brokers: var("COMMERCE_KAFKA_BROKERS", "127.0.0.1:59092"),
            redis_url: var("COMMERCE_REDIS_URL", "redis://127.0.0.1:56379"),
        }
    }

    /// Fails the test, saying how to fix it, when a part does not answer.
    fn require_reachable(&self) {
        let host_port = |url: &str| {
            let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
            let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
            rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
        };
        let kafka = self.kafka_brokers.split(',').next().unwrap_or_default().to_owned();
        for (name, address) in [
            ("Postgres", host_port(&self.postgres_admin_url)),
            ("Kafka", kafka),
            ("Redis", host_port(&self.redis_url)),
        ] {
            let reachable = address
                .to_socket_addrs()
                .ok()
                .and_then(|mut addrs| addrs.next())
                .is_some_and(|addr| TcpStream::connect_timeout(&addr, REACH_TIMEOUT).is_ok());
            assert!(
                reachable,
                "{name} is unreachable at {address}: start the local infrastructure with \
                 `bash e2e/scripts/infra.sh up` (or `make infra`) and `source e2e/infra.env`"
            );
        }
    }
}

/// Services built into the binary under test (its cargo features).
fn built_in() -> Vec<Service> {
    let built = [
        (Service::Auth, cfg!(feature = "auth")),
        (Service::Catalog, cfg!(feature = "catalog")),
        (Service::Inventory, cfg!(feature = "inventory")),
        (Service::Cart, cfg!(feature = "cart")),
        (Service::Order, cfg!(feature = "order")),
        (Service::Payment, cfg!(feature = "payment")),
        (Service::Notification, cfg!(feature = "notification")),
        (Service::Shipping, cfg!(feature = "shipping")),
        (Service::Gateway, cfg!(feature = "gateway")),
    ];
    built.into_iter().filter_map(|(service, built)| built.then_some(service)).collect()
}

/// A `commerce` child process, killed (by its PID) if a test fails before it
/// exited; its output goes to a log file that failures quote.
struct Shop {
    child: Child,
    log: PathBuf,
}

impl Shop {
    fn start(name: &str, args: &[String], infra: &Infra) -> Self {
        let log = std::env::temp_dir().join(format!("commerce-test-{name}-{}.log", std::process::id()));
        let file = File::create(&log).expect("create the child's log file");
        let child = Command::new(env!("CARGO_BIN_EXE_commerce"))
            .args(args)
            .env("COMMERCE_POSTGRES_ADMIN_URL", &infra.postgres_admin_url)
            .env("COMMERCE_KAFKA_BROKERS", &infra.kafka_brokers)
            .env("COMMERCE_REDIS_URL", &infra.redis_url)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the log file"))
            .stderr(file)
            .spawn()
            .expect("start the commerce binary");
        Self { child, log }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits until every admin port's `/readyz` answers 200.
    async fn wait_ready(&mut self, admin_ports: &[(Service, u16)]) {
        let client =
            reqwest::Client::builder().timeout(Duration::from_secs(2)).no_proxy().build().expect("client");
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last: Vec<(Service, String)> = Vec::new();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "commerce exited early with {status}; log {}:\n{}",
                    self.log.display(),
                    self.log_tail()
                );
            }
            last.clear();
            for (service, port) in admin_ports {
                let url = format!("http://127.0.0.1:{port}/readyz");
                match client.get(&url).send().await {
                    Ok(response) if response.status() == reqwest::StatusCode::OK => {}
                    Ok(response) => {
                        let status = response.status();
                        last.push((
                            *service,
                            format!("{status}: {}", response.text().await.unwrap_or_default()),
                        ));
                    }
                    Err(error) => last.push((*service, format!("{url}: {error}"))),
                }
            }
            if last.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not ready within {READY_TIMEOUT:?}: {last:#?}\nlog {}:\n{}",
                self.log.display(),
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Sends SIGTERM to the child by its PID and waits for its exit.
    async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the child") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "commerce did not exit within {EXIT_TIMEOUT:?} of SIGTERM; log {}:\n{}",
                self.log.display(),
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        // Only if a test failed before the child exited: this PID is ours.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The first of `first`, `first + 100`, ... `first + 400` at which every
/// shifted local port (each service's gRPC, HTTP and admin port) is free now.
///
/// The offsets keep every shifted port below Linux's ephemeral range
/// (32768-60999), where outgoing connections take their local ports: a port
/// found free there could be taken by one of the many connections a shop
/// starting in parallel opens before our process bound it (seen: 54052).
/// They also keep clear of the e2e shops' offsets (2000-11900, ports up to
/// about 21100): from 13000 the lowest shifted port is 21080. Each test has
/// its own range, so tests running side by side never pick the same ports.
fn free_port_offset(first: u16) -> u16 {
    assert!(
        (13_000..=23_000).contains(&first),
        "offset {first} would meet the e2e shops' ports or the ephemeral range"
    );
    (0..5u16)
        .map(|step| first + step * 100)
        .find(|offset| {
            Service::ALL.iter().all(|service| {
                let ports = service.local_ports();
                [ports.grpc, ports.http, Some(ports.admin)]
                    .into_iter()
                    .flatten()
                    .all(|port| std::net::TcpListener::bind(("127.0.0.1", port + offset)).is_ok())
            })
        })
        .unwrap_or_else(|| panic!("no port offset from {first} to {} has every local port free", first + 400))
}

#[tokio::test]
async fn every_built_in_service_becomes_ready_in_one_process_and_stops_cleanly_on_sigterm() {
    let infra = Infra::from_env();
    infra.require_reachable();
    let offset = free_port_offset(13_000);
    let services = built_in();
    let names: Vec<&str> = services.iter().map(|service| service.name()).collect();
    let args = vec![
        "serve".to_owned(),
        "all".to_owned(),
        format!("--services={}", names.join(",")),
        format!("--port-offset={offset}"),
        "--kafka-name-prefix=commerce-cli-test.".to_owned(),
        "--database-prefix=commerce_clitest_".to_owned(),
    ];
    let mut shop = Shop::start("all", &args, &infra);
    let admin_ports: Vec<(Service, u16)> =
        services.iter().map(|service| (*service, service.local_ports().admin + offset)).collect();
    shop.wait_ready(&admin_ports).await;

    let status = shop.terminate().await;
    assert!(
        status.success(),
        "exit after SIGTERM: {status}; log {}:\n{}",
        shop.log.display(),
        shop.log_tail()
    );
    let log = std::fs::read_to_string(&shop.log).unwrap_or_default();
    assert!(
        log.contains("every service stopped cleanly"),
        "log {}:\n{}",
        shop.log.display(),
        shop.log_tail()
    );
}

#[cfg(feature = "cart")]
#[tokio::test]
async fn one_service_serves_from_its_own_flags_as_in_a_pod_and_stops_cleanly_on_sigterm() {
    let infra = Infra::from_env();
    infra.require_reachable();
    // The cart has no database, so no preparation is needed: as in a pod,
    // where the operator created everything beforehand.
    let offset = free_port_offset(14_000);
    let ports = Service::Cart.local_ports();
    let grpc = ports.grpc.expect("the cart serves gRPC") + offset;
    let admin = ports.admin + offset;
    let args = vec![
        "serve".to_owned(),
        "cart".to_owned(),
        format!("--grpc-addr=127.0.0.1:{grpc}"),
        format!("--admin-addr=127.0.0.1:{admin}"),
        format!("--redis-url={}", infra.redis_url),
    ];
    let mut shop = Shop::start("cart", &args, &infra);
    shop.wait_ready(&[(Service::Cart, admin)]).await;

    let status = shop.terminate().await;
    assert!(
        status.success(),
        "exit after SIGTERM: {status}; log {}:\n{}",
        shop.log.display(),
        shop.log_tail()
    );
}

/// `local up` on its own ports, databases and topics: it announces a ready
/// shop, the gateway lists the seeded demo products, and SIGTERM stops it.
#[cfg(all(feature = "gateway", feature = "catalog", feature = "inventory", feature = "auth"))]
#[tokio::test]
async fn local_up_runs_the_example_stack_with_demo_products_and_stops_cleanly_on_sigterm() {
    let infra = Infra::from_env();
    infra.require_reachable();
    let offset = free_port_offset(15_000);
    let stack = format!("{}/../../manifests/examples/local.yaml", env!("CARGO_MANIFEST_DIR"));
    let args = vec![
        "local".to_owned(),
        "up".to_owned(),
        format!("--file={stack}"),
        format!("--port-offset={offset}"),
        "--kafka-name-prefix=commerce-cli-test-up.".to_owned(),
        "--database-prefix=commerce_clitestup_".to_owned(),
    ];
    let mut shop = Shop::start("local-up", &args, &infra);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if std::fs::read_to_string(&shop.log).unwrap_or_default().contains("is ready:") {
            break;
        }
        if let Ok(Some(status)) = shop.child.try_wait() {
            panic!("local up exited early with {status}; log {}:\n{}", shop.log.display(), shop.log_tail());
        }
        assert!(Instant::now() < deadline, "no ready shop within {READY_TIMEOUT:?}:\n{}", shop.log_tail());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let gateway = Service::Gateway.local_ports().http.expect("the gateway serves HTTP") + offset;
    let products = reqwest::get(format!("http://127.0.0.1:{gateway}/api/products?page_size=50"))
        .await
        .expect("GET /api/products")
        .text()
        .await
        .expect("a body");
    // The first demo product's fixed id (commerce_catalog::seed).
    assert!(products.contains("00000000-0000-4000-8000-000000002001"), "no demo products: {products}");

    let status = shop.terminate().await;
    assert!(
        status.success(),
        "exit after SIGTERM: {status}; log {}:\n{}",
        shop.log.display(),
        shop.log_tail()
    );
}

#[test]
fn an_unknown_service_name_is_rejected_with_the_known_ones_listed() {
    let output = Command::new(env!("CARGO_BIN_EXE_commerce"))
        .args(["serve", "basket"])
        .output()
        .expect("run the commerce binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(stderr.contains("\"basket\""), "the unknown name is not quoted back:\n{stderr}");
    for service in Service::ALL {
        assert!(stderr.contains(service.name()), "{service} is not listed:\n{stderr}");
    }
}
