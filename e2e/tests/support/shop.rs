//! The shop under test: the `commerce` binary run as `commerce serve all`
//! in a child process, on the loopback infrastructure of `e2e/infra.env`,
//! isolated from any other shop on the same machine.
//!
//! Isolation: every start gets a run id (`<unix seconds>x<random>`) that
//! names its own databases (`e2e_<run>_<service>`), its own Kafka topics and
//! consumer groups (prefix `e2e-<run>.`), its own rate-limit keys in Redis,
//! and a port offset whose ports were free a moment before the start. So
//! reruns, concurrent runs and a developer's `make up` never see each
//! other's data. Databases and topics of ended runs are dropped at the next
//! start ([`collect_stale_runs`]).
//!
//! Lifetime: the child is started through a tiny `sh` watchdog whose stdin
//! is a pipe from this test process. When the test process ends, however it
//! ends (even `SIGKILL`), the pipe closes and the watchdog sends `SIGTERM` to
//! the recorded PID of `commerce` only, then waits for it. There is no global
//! teardown hook in libtest, so this is what stops the shared shop
//! ([`shared`]) after the last test. A shop started with [`Shop::start`] for
//! one test is stopped by [`Shop::stop`] (or when dropped).
//!
//! Also what every shop under test needs, the split shops of the fault
//! tests (`super::fault`) included: the binary ([`binary_path`]), the
//! infrastructure's variables ([`infra_var`]), run ids ([`new_run_id`]),
//! free ports ([`ports_free`]), log tails ([`log_tail`]) and dropping a
//! shop's topics ([`drop_topics_matching`]).

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use commerce_topology::{LOCAL_ADMIN_BASE, LOCAL_GRPC_BASE, LOCAL_HTTP_PORT, Service};

use super::invariants::Databases;

/// Bootstrap accounts the shop's auth service creates at start-up
/// (`COMMERCE_BOOTSTRAP_*`): the admin manages products and stock, the
/// courier moves shipments. A shop under test listens on 127.0.0.1 only.
pub const ADMIN_EMAIL: &str = "admin@e2e.commerce.test";
pub const ADMIN_PASSWORD: &str = "e2e-admin-password";
pub const COURIER_EMAIL: &str = "courier@e2e.commerce.test";
pub const COURIER_PASSWORD: &str = "e2e-courier-password";

/// How long a cold shop may take to become ready: it starts in about 5 s on
/// an idle machine; builds running beside the tests can make it ten times
/// slower.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the shop may take to stop after SIGTERM (it drains in ~2 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// A run at least this old with no connection to its databases has ended
/// (see [`collect_stale_runs`]); younger ones may still be starting.
const STALE_AFTER: Duration = Duration::from_secs(10 * 60);
/// Port offsets tried: multiples of 100 from 2000 to 11900, so that every
/// shifted port stays below Linux's ephemeral range (32768-60999), where
/// outgoing connections take their local ports.
const OFFSET_STEPS: u64 = 100;
/// Attempts to start on a fresh offset when the child dies before it is
/// ready (another process took a port between the check and the bind).
const START_ATTEMPTS: usize = 3;

/// Settings that differ between shops under test.
#[derive(Debug, Clone, Default)]
pub struct ShopOptions {
    /// Extra `COMMERCE_*` variables for the child (service flags that
    /// `serve all` does not set, such as a short reservation TTL).
    pub env: Vec<(String, String)>,
}

impl ShopOptions {
    /// A shop whose reservations expire after `ttl` and whose order sweeper
    /// looks every `sweep`.
    pub fn short_reservations(ttl: &str, sweep: &str) -> Self {
        Self {
            env: vec![
                ("COMMERCE_INVENTORY_RESERVATION_TTL".to_owned(), ttl.to_owned()),
                ("COMMERCE_ORDER_RESERVATION_SWEEP_INTERVAL".to_owned(), sweep.to_owned()),
            ],
        }
    }
}

/// A running shop and where to reach it.
#[derive(Debug)]
pub struct Shop {
    /// Base URL of the gateway (`http://127.0.0.1:<port>`).
    pub gateway_url: String,
    /// PID of the `commerce` process (not of its watchdog).
    pub pid: u32,
    /// The run id naming its databases and topics.
    pub run_id: String,
    /// Added to every catalog port.
    pub port_offset: u16,
    /// Where the child's stdout and stderr go.
    pub log_path: PathBuf,
    /// The Postgres admin URL and the database prefix.
    pub databases: Databases,
    /// Kafka bootstrap brokers and the topic/group prefix of this shop.
    pub kafka_brokers: String,
    pub kafka_prefix: String,
    /// How long the start took, from spawning (including the choice of
    /// ports) until every service was ready.
    pub cold_start: Duration,
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
}

/// The shop shared by every test of this test binary, started on first use.
/// Panics with the start error (the same one in every test) if it cannot
/// start.
pub fn shared() -> &'static Shop {
    static SHOP: OnceLock<Result<Shop, String>> = OnceLock::new();
    let shop = SHOP.get_or_init(|| {
        // Started on a thread of its own with its own runtime: each test has
        // its own runtime, and nothing in the shared value may depend on the
        // runtime of the test that happened to come first.
        std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            match runtime {
                Ok(runtime) => runtime.block_on(Shop::start(ShopOptions::default())),
                Err(error) => Err(anyhow::Error::from(error)),
            }
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the shop's start thread panicked")))
        .map_err(|error| format!("{error:#}"))
    });
    match shop {
        Ok(shop) => shop,
        Err(error) => panic!("the shop under test did not start: {error}"),
    }
}

/// Where the `commerce` binary is: `$COMMERCE_BIN` if set (benchmarks
/// point it at a release build), else `$CARGO_TARGET_DIR/debug/commerce`,
/// the target directory defaulting to `~/.cache/commerce-stack/target` as in
/// the Makefile.
pub fn binary_path() -> anyhow::Result<PathBuf> {
    if let Some(binary) = std::env::var_os("COMMERCE_BIN") {
        let binary = PathBuf::from(binary);
        if !binary.is_file() {
            bail!("COMMERCE_BIN={} is not a file", binary.display());
        }
        return Ok(binary);
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME").context("neither CARGO_TARGET_DIR nor HOME is set")?;
            PathBuf::from(home).join(".cache/commerce-stack/target")
        }
    };
    let binary = target.join("debug/commerce");
    if !binary.is_file() {
        bail!(
            "{} does not exist: build it first with `cargo build -p commerce` \
             (with CARGO_TARGET_DIR={})",
            binary.display(),
            target.display()
        );
    }
    Ok(binary)
}

/// A required infrastructure variable from `e2e/infra.env`.
pub fn infra_var(name: &str) -> anyhow::Result<String> {
    std::env::var(name).map_err(|_| {
        anyhow::anyhow!("{name} is not set: run the tests with `source e2e/infra.env` (or `make test`)")
    })
}

impl Shop {
    /// Starts a fresh, isolated shop and waits until every service is ready.
    pub async fn start(options: ShopOptions) -> anyhow::Result<Self> {
        let binary = binary_path()?;
        let admin_url = infra_var("COMMERCE_POSTGRES_ADMIN_URL")?;
        let kafka_brokers = infra_var("COMMERCE_KAFKA_BROKERS")?;
        let redis_url = infra_var("COMMERCE_REDIS_URL")?;
        let run_id = new_run_id();
        let databases = Databases::new(&admin_url, &format!("e2e_{run_id}_"));
        databases.check_reachable().await?;
        collect_stale_runs(&databases, &kafka_brokers).await;
        let started = Instant::now();
        let kafka_prefix = format!("e2e-{run_id}.");
        // Every Redis key of this shop (carts, catalog cache, rate limits):
        // shops of concurrent tests share one Redis and nothing in it.
        let redis_prefix = format!("e2e.{run_id}");
        let log_dir = std::env::temp_dir().join("commerce-e2e");
        std::fs::create_dir_all(&log_dir).with_context(|| format!("cannot create {}", log_dir.display()))?;
        let log_path = log_dir.join(format!("shop-{run_id}.log"));
        let ledger_path = log_dir.join(format!("ledger-{run_id}.jsonl"));
        let databases = databases.with_mock_ledger(ledger_path.clone());
        let ledger = ledger_path.display().to_string();

        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let offset = free_port_offset()?;
            let spawned = spawn_watchdog(
                &binary,
                &log_path,
                offset,
                &options,
                &[
                    ("COMMERCE_POSTGRES_ADMIN_URL", admin_url.as_str()),
                    ("COMMERCE_KAFKA_BROKERS", kafka_brokers.as_str()),
                    ("COMMERCE_REDIS_URL", redis_url.as_str()),
                    ("COMMERCE_DATABASE_PREFIX", databases.prefix.as_str()),
                    ("COMMERCE_KAFKA_NAME_PREFIX", kafka_prefix.as_str()),
                    ("COMMERCE_REDIS_KEY_PREFIX", redis_prefix.as_str()),
                    ("COMMERCE_MOCK_LEDGER_FILE", ledger.as_str()),
                ],
            )?;
            let (mut child, stdin, pid) = spawned;
            match wait_until_ready(offset, &mut child, &log_path).await {
                Ok(()) => {
                    return Ok(Self {
                        gateway_url: format!("http://127.0.0.1:{}", LOCAL_HTTP_PORT + offset),
                        pid,
                        run_id,
                        port_offset: offset,
                        log_path,
                        databases,
                        kafka_brokers,
                        kafka_prefix,
                        cold_start: started.elapsed(),
                        watchdog: Mutex::new(Some((child, stdin))),
                    });
                }
                Err(error) => {
                    drop(stdin);
                    let _ = wait_child(&mut child, STOP_TIMEOUT);
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("the shop never started")))
    }

    /// The admin port of `service` in this shop (for `/readyz`, `/metrics`,
    /// the mock payment provider's switches).
    pub fn admin_port(&self, service: Service) -> u16 {
        service.local_ports().admin + self.port_offset
    }

    /// Stops this shop: SIGTERM to its PID (through the watchdog), then
    /// waits for it to exit. Idempotent.
    pub fn stop(&self) -> anyhow::Result<()> {
        let taken = self.watchdog.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some((mut child, stdin)) = taken {
            drop(stdin);
            wait_child(&mut child, STOP_TIMEOUT)
                .with_context(|| format!("commerce (pid {}) did not stop", self.pid))?;
        }
        Ok(())
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// `<unix seconds>x<8 hex digits>`: sortable by age, unique per start, and
/// valid in database names, topic names, Redis keys and email addresses.
pub fn new_run_id() -> String {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{seconds}x{}", &random[..8])
}

/// The start time of a run id made by [`new_run_id`].
fn run_started(run_id: &str) -> Option<u64> {
    run_id.split('x').next()?.parse().ok()
}

/// A port offset whose every port (gRPC, admin, HTTP of each service) can
/// be bound right now.
fn free_port_offset() -> anyhow::Result<u16> {
    let seed = uuid::Uuid::new_v4().as_u128();
    for attempt in 0..100u128 {
        let step = u64::try_from((seed + attempt) % 100).unwrap_or(0);
        let offset = u16::try_from(2000 + step * OFFSET_STEPS).unwrap_or(2000);
        if ports_free(offset) {
            return Ok(offset);
        }
    }
    bail!("no free port offset found above {LOCAL_GRPC_BASE}/{LOCAL_ADMIN_BASE}/{LOCAL_HTTP_PORT}")
}

/// Whether every port of a shop on `offset` (gRPC, admin, HTTP of each
/// service) can be bound on 127.0.0.1 right now.
pub fn ports_free(offset: u16) -> bool {
    let ports = Service::ALL.iter().flat_map(|service| {
        let ports = service.local_ports();
        [ports.grpc, ports.http, Some(ports.admin)].into_iter().flatten().map(move |port| port + offset)
    });
    let mut ports: Vec<u16> = ports.collect();
    ports.push(LOCAL_HTTP_PORT + offset);
    ports.iter().all(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
}

/// The watchdog: runs `commerce serve all` in the background, prints its
/// PID, waits for its stdin to close, then SIGTERMs that PID and waits.
const WATCHDOG: &str = r#"log="$1"; shift
"$@" </dev/null >>"$log" 2>&1 &
child=$!
echo "$child"
while read -r _; do :; done
kill -TERM "$child" 2>/dev/null
wait "$child""#;

fn spawn_watchdog(
    binary: &std::path::Path,
    log_path: &std::path::Path,
    offset: u16,
    options: &ShopOptions,
    infra: &[(&str, &str)],
) -> anyhow::Result<(Child, ChildStdin, u32)> {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(WATCHDOG)
        .arg("commerce-e2e-watchdog")
        .arg(log_path)
        .arg(binary)
        .args(["serve", "all", &format!("--port-offset={offset}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (name, value) in infra {
        command.env(name, value);
    }
    command
        .env("COMMERCE_BOOTSTRAP_ADMIN_EMAIL", ADMIN_EMAIL)
        .env("COMMERCE_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("COMMERCE_BOOTSTRAP_COURIER_EMAIL", COURIER_EMAIL)
        .env("COMMERCE_BOOTSTRAP_COURIER_PASSWORD", COURIER_PASSWORD)
        // Rate limiting has its own tests; here hundreds of requests from
        // one IP (50 buyers at once) must not be limited, and the counters
        // of other runs in the shared Redis must not count.
        .env("COMMERCE_RATELIMIT_DEFAULT_PER_MINUTE", "0")
        .env("COMMERCE_RATELIMIT_AUTH_PER_MINUTE", "0")
        // The debug build hashes a password (argon2id) in about half a
        // second of CPU, several times longer when the cores are busy, so
        // the default 2 s deadline of gRPC calls (gateway -> auth) gives
        // 504s on registrations that a release build answers in 50 ms.
        // The gateway's request timeout must stay above the deadline.
        .env("COMMERCE_CLIENT_DEADLINE", "10s")
        // Postgres allows 100 connections for everything on the machine
        // (other shops under test included); 7 databases x 4 leaves room.
        .env("COMMERCE_DATABASE_MAX_CONNECTIONS", "4")
        .env("COMMERCE_HTTP_REQUEST_TIMEOUT", "30s")
        .env("COMMERCE_LOG_FILTER", "info");
    for (name, value) in &options.env {
        command.env(name, value);
    }
    let mut child = command.spawn().context("cannot run sh to start the shop")?;
    let stdin = child.stdin.take().context("the watchdog has no stdin")?;
    let stdout = child.stdout.take().context("the watchdog has no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).context("cannot read the shop's PID")?;
    let pid =
        line.trim().parse::<u32>().with_context(|| format!("the watchdog printed {line:?}, not a PID"))?;
    Ok((child, stdin, pid))
}

/// Waits until every service's `/readyz` answers 200 and the gateway
/// serves, failing early (with the log's tail) if the child exits.
async fn wait_until_ready(offset: u16, child: &mut Child, log_path: &std::path::Path) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).no_proxy().build()?;
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut waiting: Vec<Service> = Service::ALL.to_vec();
    let mut last = String::new();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the shop exited with {status} before it was ready; log {}:\n{}",
                log_path.display(),
                log_tail(log_path, 20)
            );
        }
        let mut still = Vec::new();
        for service in waiting {
            let url = format!("http://127.0.0.1:{}/readyz", service.local_ports().admin + offset);
            match client.get(&url).send().await {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => {
                    last = format!(
                        "{service}: {} {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    );
                    still.push(service);
                }
                Err(error) => {
                    last = format!("{service}: {error}");
                    still.push(service);
                }
            }
        }
        waiting = still;
        if waiting.is_empty() {
            let gateway = format!("http://127.0.0.1:{}/api/products", LOCAL_HTTP_PORT + offset);
            match client.get(&gateway).send().await {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => last = format!("gateway: GET /api/products is {}", response.status()),
                Err(error) => last = format!("gateway: {error}"),
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the shop was not ready within {READY_TIMEOUT:?} (last: {last}); log {}:\n{}",
                log_path.display(),
                log_tail(log_path, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last `lines` lines of a log, for error messages.
pub fn log_tail(log_path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log_path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits for the watchdog (and so the shop) to exit, bounded.
fn wait_child(child: &mut Child, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Drops databases and topics of ended shops under test (a killed test
/// run cannot clean up after itself, and a finished one has no teardown
/// hook): a run older than [`STALE_AFTER`] whose databases nobody is
/// connected to has ended, since a running shop's outbox relays and
/// consumers hold connections all the time. Its topics go once its
/// databases are gone. Best effort: a failure only leaves clutter.
async fn collect_stale_runs(databases: &Databases, kafka_brokers: &str) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let stale = |run_id: &str| run_started(run_id).is_some_and(|start| start + STALE_AFTER.as_secs() < now);
    let _ = databases.drop_matching(|name| run_of_database(name).is_some_and(stale)).await;
    let Ok(remaining) = databases.e2e_database_names().await else { return };
    let live: Vec<&str> = remaining.iter().filter_map(|name| run_of_database(name)).collect();
    let _ = drop_topics_matching(kafka_brokers, |topic| {
        topic
            .strip_prefix("e2e-")
            .and_then(|rest| rest.split('.').next())
            .is_some_and(|run| stale(run) && !live.contains(&run))
    })
    .await;
}

/// The run id in a shop's database name (`e2e_<run>_<service>`).
fn run_of_database(name: &str) -> Option<&str> {
    name.strip_prefix("e2e_").and_then(|rest| rest.split('_').next())
}

/// Deletes every topic whose name satisfies `matches`; fails naming a topic
/// the broker did not delete.
pub async fn drop_topics_matching(brokers: &str, matches: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).set("socket.timeout.ms", "10000").create()?;
    let metadata = admin.inner().fetch_metadata(None, Duration::from_secs(10))?;
    let names: Vec<String> =
        metadata.topics().iter().map(|topic| topic.name().to_owned()).filter(|name| matches(name)).collect();
    if names.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.delete_topics(&names, &options).await? {
        if let Err((topic, code)) = result {
            bail!("cannot delete topic {topic}: {code}");
        }
    }
    Ok(())
}
