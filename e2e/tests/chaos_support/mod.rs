//! What the fault tests (`tests/chaos.rs`, `tests/chaos_scale.rs`) share: the `commerce` binary run
//! as separate, PID-recorded child processes on a private port offset with
//! private databases, topic and Redis-key prefixes (so the shared Postgres,
//! Kafka and Redis of other tests are used but never disturbed); a private
//! Kafka started and stopped through `e2e/scripts/kafka.sh`; a REST client
//! for the gateway; and the saga invariants of ARCHITECTURE section 4 as SQL.
//!
//! Every process started here is a child of the test, stopped by its PID
//! (SIGTERM, then SIGKILL) when its handle drops; nothing is signalled by name.

// Each fault-test binary uses a different part of this module.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Row as _;
use sqlx::postgres::{PgPool, PgPoolOptions};

/// The catalog's services in `Service::ALL` order, which assigns local ports.
pub const SERVICES: [&str; 9] =
    ["auth", "catalog", "inventory", "cart", "order", "payment", "notification", "shipping", "gateway"];
/// Services with a database of their own.
pub const DATABASE_SERVICES: [&str; 7] =
    ["auth", "catalog", "inventory", "order", "payment", "notification", "shipping"];
/// `commerce_topology::LOCAL_GRPC_BASE`, `LOCAL_ADMIN_BASE`, `LOCAL_HTTP_PORT`.
const GRPC_BASE: u16 = 50051;
const ADMIN_BASE: u16 = 9101;
const HTTP_PORT: u16 = 8080;
/// Order states a test may stop waiting at: final ones and CONFIRMED (stable
/// until a courier moves the shipment).
pub const SETTLED: [&str; 6] = ["CONFIRMED", "REJECTED", "FAILED", "CANCELLED", "SHIPPED", "DELIVERED"];
/// The bootstrap admin every shop here creates (environment only).
pub const ADMIN_EMAIL: &str = "chaos-admin@example.test";
pub const ADMIN_PASSWORD: &str = "chaos-admin-password-1";
/// How long the saga may take to settle after the last fault.
pub const SETTLE: Duration = Duration::from_secs(180);
/// Where logs and the private Kafka's state live; never the shared state dir.
pub const STATE_DIR: &str = "/var/tmp/commerce-stack-chaos";

/// Serialises the tests of this binary: each runs a whole shop, and two at
/// once on two cores would turn timing margins into flakes.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Port offsets start here: gRPC ports land on 62051 and above, beyond the
/// kernel's ephemeral range (32768-60999), so a restarted service can bind
/// its port again even while other tests open many outgoing connections;
/// admin ports on 21101+, the gateway on 20080+.
const PORT_OFFSET_BASE: u16 = 12000;
/// Next port-offset slot, so that consecutive shops never reuse ports that a
/// stopping process may still hold.
static NEXT_SLOT: AtomicU16 = AtomicU16::new(0);

/// The `commerce` binary built by `cargo build -p commerce`.
pub fn binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/commerce-stack/target")
    });
    let binary = target.join("debug/commerce");
    assert!(
        binary.is_file(),
        "the commerce binary is missing at {}; build it first: \
         CARGO_TARGET_DIR={} cargo build -p commerce",
        binary.display(),
        target.display()
    );
    binary
}

/// A value of `e2e/infra.env`, from the environment or its default there.
pub fn infra(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| match var {
        "COMMERCE_POSTGRES_ADMIN_URL" => "postgres://postgres:commerce-dev@127.0.0.1:55432/postgres".into(),
        "COMMERCE_REDIS_URL" => "redis://127.0.0.1:56379".into(),
        "COMMERCE_KAFKA_BROKERS" => "127.0.0.1:59092".into(),
        other => panic!("no default for {other}"),
    })
}

/// A short id, unique per test run, for names (databases, prefixes, emails).
pub fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e has a parent").to_path_buf()
}

/// Whether nothing listens on or holds 127.0.0.1:`port`.
pub fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A free port outside every fixed range of the project.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind an ephemeral port");
    listener.local_addr().expect("address").port()
}

// ------------------------------------------------------------------ processes

/// A child process of the test, restartable, stopped by PID.
pub struct Proc {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Starts `program args` with `envs` (inherited `COMMERCE_*` variables
    /// removed so nothing points at another shop), output appended to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: Vec<String>,
        envs: Vec<(String, String)>,
        log: PathBuf,
    ) -> Result<Self> {
        let mut proc =
            Self { name: name.to_owned(), program: program.to_path_buf(), args, envs, log, child: None };
        proc.start()?;
        Ok(proc)
    }

    fn start(&mut self) -> Result<()> {
        std::fs::create_dir_all(self.log.parent().expect("log dir"))?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut command = Command::new(&self.program);
        command.args(&self.args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        for (key, _) in std::env::vars().filter(|(key, _)| key.starts_with("COMMERCE_")) {
            command.env_remove(key);
        }
        command.envs(self.envs.iter().map(|(k, v)| (k, v)));
        let child = command.spawn().with_context(|| format!("cannot start {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether the child was started and has exited on its own (a crash,
    /// not a kill or stop by the test).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(Some(_))))
    }

    /// SIGKILL: the crash the test is about (no drain, no offset commit).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the same command again after a kill or stop.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.start()
    }

    /// SIGTERM (graceful), then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else { return };
        if let Ok(None) = child.try_wait() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// The last `lines` lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        format!(
            "--- {} ({}) ---\n{}",
            self.name,
            self.log.display(),
            all[all.len().saturating_sub(lines)..].join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

// ------------------------------------------------------------------- Kafka

/// A private Kafka on its own ports and state dir (`<STATE_DIR>/kafka-<port>`,
/// so two of them never share a pid file), run by the project's
/// script (`kafka.sh up`/`down`, which stops it by its recorded PID).
pub struct PrivateKafka {
    pub port: u16,
    controller_port: u16,
    /// Node id, replicas, and how to join node 1 (a second node's settings).
    node_env: Vec<(String, String)>,
}

impl PrivateKafka {
    /// The broker on 127.0.0.1:`port`; not started yet.
    pub fn new(port: u16, controller_port: u16) -> Self {
        Self { port, controller_port, node_env: Vec::new() }
    }

    /// A cluster of two nodes, started: node 1 (broker and controller) on
    /// `ports[0]` with its controller on `ports[1]`, node 2 (a broker) on
    /// `ports[2]` (`ports[3]` for its listener for pods); every topic, the
    /// internal ones too, has a replica on each.
    pub fn cluster_of_two(ports: [u16; 4]) -> Result<(Self, Self)> {
        let replicas = ("COMMERCE_KAFKA_REPLICAS".to_owned(), "2".to_owned());
        let first = Self { node_env: vec![replicas.clone()], ..Self::new(ports[0], ports[1]) };
        first.up()?;
        let cluster_id =
            std::fs::read_to_string(format!("{STATE_DIR}/kafka-{}/kafka/cluster-id", first.port))
                .context("node 1 has no cluster id")?;
        let second = Self {
            port: ports[2],
            // Node 2 joins node 1's controller; its own listener for pods
            // takes the next port.
            controller_port: ports[3] - 1,
            node_env: vec![
                replicas,
                ("COMMERCE_KAFKA_NODE_ID".to_owned(), "2".to_owned()),
                ("COMMERCE_KAFKA_QUORUM".to_owned(), format!("1@127.0.0.1:{}", ports[1])),
                ("COMMERCE_KAFKA_CLUSTER_ID".to_owned(), cluster_id.trim().to_owned()),
            ],
        };
        second.up()?;
        Ok((first, second))
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn script(&self, verb: &str) -> Result<()> {
        let output = Command::new("bash")
            .arg(repo_root().join("e2e/scripts/kafka.sh"))
            .arg(verb)
            .env("COMMERCE_STATE_DIR", format!("{STATE_DIR}/kafka-{}", self.port))
            .env("COMMERCE_KAFKA_PORT", self.port.to_string())
            .env("COMMERCE_KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            // Its listener for the real node's pods must not take the shared
            // broker's port either.
            .env("COMMERCE_KAFKA_POD_PORT", (self.controller_port + 1).to_string())
            // Nor the shared broker's TLS listeners: a private one has none.
            .env("COMMERCE_KAFKA_SSL_PORT", "")
            .env("COMMERCE_KAFKA_SASL_SSL_PORT", "")
            .env("COMMERCE_KAFKA_BROKERS", self.brokers())
            .envs(self.node_env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .output()
            .context("cannot run e2e/scripts/kafka.sh")?;
        if !output.status.success() {
            bail!(
                "kafka.sh {verb} (port {}) failed: {}{}",
                self.port,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// Starts the broker and waits until it serves metadata.
    pub fn up(&self) -> Result<()> {
        self.script("up")
    }

    /// Stops the broker (SIGTERM, controlled shutdown, by recorded PID).
    pub fn down(&self) -> Result<()> {
        self.script("down")
    }

    /// Kills the broker (SIGKILL by recorded PID: no controlled shutdown).
    pub fn kill(&self) -> Result<()> {
        self.script("kill")
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        if let Err(error) = self.down() {
            eprintln!("{error:#}");
        }
    }
}

// -------------------------------------------------------------------- shop

/// One shop: a port offset, database/topic/Redis prefixes, and the processes
/// serving it.
pub struct Shop {
    pub run: String,
    pub offset: u16,
    pub postgres_admin_url: String,
    pub kafka_brokers: String,
    pub redis_url: String,
    pub procs: Vec<Proc>,
    pub http: reqwest::Client,
    pools: HashMap<String, PgPool>,
}

impl Shop {
    /// A shop on a free port offset whose services use `kafka_brokers` and
    /// `postgres_admin_url` (the shared Redis always).
    pub fn new(kafka_brokers: String, postgres_admin_url: String) -> Result<Self> {
        std::fs::create_dir_all(PathBuf::from(STATE_DIR).join("ledgers"))?;
        let offset = (0..40)
            .map(|_| PORT_OFFSET_BASE + 20 * (NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % 40))
            .find(|offset| {
                (0..9u16).all(|i| port_free(GRPC_BASE + offset + i) && port_free(ADMIN_BASE + offset + i))
                    && port_free(HTTP_PORT + offset)
            })
            .context("no free port offset for a private shop")?;
        Ok(Self {
            run: run_id(),
            offset,
            postgres_admin_url,
            kafka_brokers,
            redis_url: infra("COMMERCE_REDIS_URL"),
            procs: Vec::new(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(15)).build()?,
            pools: HashMap::new(),
        })
    }

    pub fn database_prefix(&self) -> String {
        format!("chaos_{}_", self.run)
    }

    pub fn redis_prefix(&self) -> String {
        format!("chaos.{}", self.run)
    }

    fn index(service: &str) -> u16 {
        SERVICES.iter().position(|s| *s == service).expect("a catalog service") as u16
    }

    pub fn grpc_port(&self, service: &str) -> u16 {
        GRPC_BASE + self.offset + Self::index(service)
    }

    pub fn admin_url(&self, service: &str) -> String {
        format!("http://127.0.0.1:{}", ADMIN_BASE + self.offset + Self::index(service))
    }

    pub fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", HTTP_PORT + self.offset)
    }

    fn log_path(&self, name: &str) -> PathBuf {
        PathBuf::from(STATE_DIR).join("logs").join(format!("{}-{name}.log", self.run))
    }

    /// The mock payment provider's journal (`--mock-ledger-file`): what
    /// money it took, voided and refunded, kept across the payment
    /// process's crashes and read by [`check_invariants`].
    pub fn ledger_path(&self) -> PathBuf {
        PathBuf::from(STATE_DIR).join("ledgers").join(format!("{}.jsonl", self.run))
    }

    /// The environment every process of this shop gets.
    fn base_env(&self) -> Vec<(String, String)> {
        vec![
            ("COMMERCE_MOCK_LEDGER_FILE".into(), self.ledger_path().display().to_string()),
            ("COMMERCE_BOOTSTRAP_ADMIN_EMAIL".into(), ADMIN_EMAIL.into()),
            ("COMMERCE_BOOTSTRAP_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into()),
            ("COMMERCE_REDIS_KEY_PREFIX".into(), self.redis_prefix()),
            // The saga tests place orders fast from one IP.
            ("COMMERCE_RATELIMIT_DEFAULT_PER_MINUTE".into(), "0".into()),
            ("COMMERCE_RATELIMIT_AUTH_PER_MINUTE".into(), "0".into()),
        ]
    }

    /// `commerce serve all --services=<services>` on this shop's wiring, as
    /// process `name`; `env` overrides the base environment. Returns its index.
    pub fn serve(&mut self, name: &str, services: &[&str], env: &[(&str, &str)]) -> Result<usize> {
        let args = vec![
            "serve".to_owned(),
            "all".to_owned(),
            format!("--services={}", services.join(",")),
            format!("--postgres-admin-url={}", self.postgres_admin_url),
            format!("--kafka-brokers={}", self.kafka_brokers),
            format!("--redis-url={}", self.redis_url),
            format!("--kafka-name-prefix=chaos-{}.", self.run),
            format!("--database-prefix={}", self.database_prefix()),
            format!("--port-offset={}", self.offset),
            "--log-format=json".to_owned(),
        ];
        self.spawn(name, args, env)
    }

    /// A process of `commerce <args>` with this shop's environment.
    pub fn spawn(&mut self, name: &str, args: Vec<String>, env: &[(&str, &str)]) -> Result<usize> {
        let mut envs = self.base_env();
        for (key, value) in env {
            envs.retain(|(k, _)| k != key);
            envs.push(((*key).to_owned(), (*value).to_owned()));
        }
        let proc = Proc::spawn(name, &binary(), args, envs, self.log_path(name))?;
        self.procs.push(proc);
        Ok(self.procs.len() - 1)
    }

    /// The ends of every process log, for failure messages.
    pub fn logs(&self, lines: usize) -> String {
        self.procs.iter().map(|proc| proc.log_tail(lines)).collect::<Vec<_>>().join("\n")
    }

    /// GET `url`: status and body, or the connection error as text.
    pub async fn get(&self, url: &str) -> std::result::Result<(StatusCode, String), String> {
        match self.http.get(url).timeout(Duration::from_secs(3)).send().await {
            Ok(response) => {
                let status = response.status();
                Ok((status, response.text().await.unwrap_or_default()))
            }
            Err(error) => Err(error.to_string()),
        }
    }

    /// Waits until `/readyz` of every one of `services` answers 200.
    pub async fn wait_ready(&mut self, services: &[&str], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for service in services {
            let url = format!("{}/readyz", self.admin_url(service));
            loop {
                let last = self.get(&url).await;
                if matches!(last, Ok((StatusCode::OK, _))) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{service} not ready within {timeout:?}: {last:?}\n{}", self.logs(15));
                }
                if let Some(proc) = self.procs.iter_mut().find_map(|proc| proc.exited().then_some(proc)) {
                    bail!("{} exited while waiting for {service}:\n{}", proc.name, proc.log_tail(15));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// A pool on `service`'s database.
    pub async fn db(&mut self, service: &str) -> Result<PgPool> {
        if let Some(pool) = self.pools.get(service) {
            return Ok(pool.clone());
        }
        let mut url =
            url_with_database(&self.postgres_admin_url, &format!("{}{service}", self.database_prefix()));
        url.push_str("");
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .with_context(|| format!("cannot connect to {service}'s database"))?;
        self.pools.insert(service.to_owned(), pool.clone());
        Ok(pool)
    }

    /// Stops every process gracefully and drops the shop's databases and
    /// topics.
    pub async fn teardown(mut self) {
        for proc in self.procs.iter_mut().rev() {
            proc.stop(Duration::from_secs(20));
        }
        if let Err(error) = delete_topics(&self.kafka_brokers, &format!("chaos-{}.", self.run)).await {
            eprintln!("cannot delete this shop's topics: {error:#}");
        }
        for (_, pool) in self.pools.drain() {
            pool.close().await;
        }
        if let Ok(admin) = PgPoolOptions::new().max_connections(1).connect(&self.postgres_admin_url).await {
            for service in DATABASE_SERVICES {
                let name = format!("{}{service}", self.database_prefix());
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&admin)
                    .await;
            }
            admin.close().await;
        }
        let _ = std::fs::remove_file(self.ledger_path());
    }
}

/// Deletes every topic whose name starts with `prefix`.
async fn delete_topics(brokers: &str, prefix: &str) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("socket.timeout.ms", "10000")
        .create()?;
    let metadata = admin.inner().fetch_metadata(None, Duration::from_secs(10))?;
    let names: Vec<String> = metadata
        .topics()
        .iter()
        .map(|topic| topic.name().to_owned())
        .filter(|name| name.starts_with(prefix))
        .collect();
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

/// `url` with its path (database) replaced by `database`.
pub fn url_with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[authority_end..].find('/').map(|i| i + authority_end).unwrap_or(base.len());
    format!("{}/{database}{query}", &base[..path_start])
}

// -------------------------------------------------------------------- REST

/// A gateway client with a bearer token.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub token: String,
}

/// A REST response: status and JSON body (Null when not JSON).
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Api {
    /// Logs in (or registers, for a customer) and keeps the access token.
    pub async fn session(
        base: &str,
        http: &reqwest::Client,
        email: &str,
        password: &str,
        register: bool,
    ) -> Result<Self> {
        let mut api = Self { base: base.to_owned(), http: http.clone(), token: String::new() };
        let login = json!({ "email": email, "password": password });
        let timeout = Duration::from_secs(30);
        let reply = if register {
            let body = json!({ "email": email, "password": password, "display_name": "Chaos" });
            match api.retrying("POST", "/api/auth/register", Some(body), None, timeout).await {
                Ok(reply) => reply,
                // A retried registration whose first attempt went through
                // (the answer was lost): the account exists, log in.
                Err(error) if error.to_string().contains("409") => {
                    api.retrying("POST", "/api/auth/login", Some(login), None, timeout).await?
                }
                Err(error) => return Err(error),
            }
        } else {
            api.retrying("POST", "/api/auth/login", Some(login), None, timeout).await?
        };
        let path = if register { "/api/auth/register" } else { "/api/auth/login" };
        api.token = reply.body["tokens"]["access_token"]
            .as_str()
            .with_context(|| format!("no access token from {path}: {}", reply.body))?
            .to_owned();
        Ok(api)
    }

    /// One request.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> Result<Reply> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if !self.token.is_empty() {
            request = request.bearer_auth(&self.token);
        }
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        Ok(Reply { status, body: serde_json::from_str(&text).unwrap_or(Value::Null) })
    }

    /// A request repeated (same body, same idempotency key) while the shop
    /// answers 5xx or not at all, until `timeout`; a 4xx is returned as is.
    pub async fn retrying(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
        timeout: Duration,
    ) -> Result<Reply> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.call(method, path, body.clone(), key).await {
                Ok(reply) if !reply.status.is_server_error() => {
                    if reply.status.is_success() {
                        return Ok(reply);
                    }
                    bail!("{method} {path} -> {}: {}", reply.status, reply.body);
                }
                Ok(reply) => format!("{}: {}", reply.status, reply.body),
                Err(error) => format!("{error:#}"),
            };
            if Instant::now() > deadline {
                bail!("{method} {path} did not succeed within {timeout:?}; last: {last}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Places an order (retried with one idempotency key); returns its id.
    pub async fn place_order(&self, lines: &[(&str, i64)], token: &str) -> Result<String> {
        let key = uuid::Uuid::new_v4().to_string();
        let body = json!({
            "lines": lines.iter().map(|(id, qty)| json!({ "product_id": id, "quantity": qty })).collect::<Vec<_>>(),
            "shipping_address": {
                "recipient_name": "Chaos Monkey", "line1": "1 Fault Street", "city": "Berlin",
                "postal_code": "10115", "country_code": "DE"
            },
            "payment_method_token": token,
        });
        let reply =
            self.retrying("POST", "/api/orders", Some(body), Some(&key), Duration::from_secs(90)).await?;
        Ok(reply.body["id"].as_str().context("order without id")?.to_owned())
    }
}

/// Creates a category and one product per entry of `stock`, restocked to
/// that many units; returns the product ids in order.
pub async fn seed_products(admin: &Api, run: &str, stock: &[i64]) -> Result<Vec<String>> {
    let t = Duration::from_secs(30);
    let category = admin
        .retrying(
            "POST",
            "/api/admin/categories",
            Some(json!({ "name": "Chaos", "slug": format!("chaos-{run}") })),
            None,
            t,
        )
        .await?;
    let category = category.body["id"].as_str().context("category id")?.to_owned();
    let mut ids = Vec::new();
    for (i, units) in stock.iter().enumerate() {
        let product = admin
            .retrying(
                "POST",
                "/api/admin/products",
                Some(json!({
                    "sku": format!("CHAOS-{run}-{i}"), "name": format!("Chaos item {i}"),
                    "category_id": category, "price": { "currency": "EUR", "amount_minor": 1000 + 250 * i as i64 },
                })),
                None,
                t,
            )
            .await?;
        let id = product.body["id"].as_str().context("product id")?.to_owned();
        admin
            .retrying(
                "POST",
                &format!("/api/admin/inventory/{id}/restock"),
                Some(json!({ "quantity": units })),
                None,
                t,
            )
            .await?;
        ids.push(id);
    }
    Ok(ids)
}

// -------------------------------------------------------------- invariants

/// Waits until `check` returns `Ok(true)`, polling every 250 ms, for at most
/// `timeout`; `what` names the condition in the error.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    loop {
        let last = check().await;
        if matches!(last, Ok(true)) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("{what}: not reached within {timeout:?} (last check: {last:?})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Order id -> status, for `ids`.
pub async fn order_statuses(order_db: &PgPool, ids: &[String]) -> Result<HashMap<String, String>> {
    let rows = sqlx::query("SELECT id::text AS id, status FROM orders WHERE id::text = ANY($1)")
        .bind(ids)
        .fetch_all(order_db)
        .await?;
    Ok(rows.iter().map(|row| (row.get("id"), row.get("status"))).collect())
}

/// Unpublished outbox rows in `db`.
pub async fn unpublished(db: &PgPool) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM commerce_platform.outbox WHERE published_at IS NULL")
        .fetch_one(db)
        .await?)
}

/// Waits until the shop is quiet (every order of `ids` settled, no held
/// reservation, no pending charge or refund, every outbox row published),
/// then checks the invariants of ARCHITECTURE section 4; returns every
/// violation found (empty = all hold).
pub async fn check_invariants(
    shop: &mut Shop,
    ids: &[String],
    initial: &HashMap<String, i64>,
    timeout: Duration,
) -> Result<Vec<String>> {
    let order_db = shop.db("order").await?;
    let inventory_db = shop.db("inventory").await?;
    let payment_db = shop.db("payment").await?;
    let mut all_dbs = Vec::new();
    for service in DATABASE_SERVICES {
        all_dbs.push((service, shop.db(service).await?));
    }
    wait_for("every order settled", timeout, || async {
        let statuses = order_statuses(&order_db, ids).await?;
        let unsettled: Vec<_> = ids
            .iter()
            .filter(|id| !statuses.get(*id).is_some_and(|s| SETTLED.contains(&s.as_str())))
            .map(|id| format!("{id}: {}", statuses.get(id).map_or("missing", String::as_str)))
            .collect();
        if unsettled.is_empty() {
            return Ok(true);
        }
        // Said in the failure: which orders hang where, and what is unsent.
        let mut unsent = Vec::new();
        for (service, db) in &all_dbs {
            unsent.push(format!("{service}: {}", unpublished(db).await?));
        }
        bail!("unsettled {unsettled:?}; unpublished outbox rows {unsent:?}")
    })
    .await
    .with_context(|| shop.logs(20))?;
    wait_for("quiet: no held reservation, pending charge or refund, unpublished event", timeout, || async {
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM reservations r WHERE status = 'HELD'",
        )
        .fetch_one(&inventory_db)
        .await?;
        let pending: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM payments WHERE status = 'PENDING' AND intent_received AND stock_reserved) \
                  + (SELECT count(*) FROM refunds WHERE status = 'PENDING')",
        )
        .fetch_one(&payment_db)
        .await?;
        let mut unsent = 0;
        for (_, db) in &all_dbs {
            unsent += unpublished(db).await?;
        }
        Ok(held == 0 && pending == 0 && unsent == 0)
    })
    .await
    .with_context(|| shop.logs(20))?;

    let mut violations = Vec::new();
    // Stock: initial = available + reserved + sold, and nothing left reserved.
    let products: Vec<String> = initial.keys().cloned().collect();
    let rows =
        sqlx::query("SELECT product_id, available, reserved, sold FROM stock WHERE product_id = ANY($1)")
            .bind(&products)
            .fetch_all(&inventory_db)
            .await?;
    for row in &rows {
        let product: String = row.get("product_id");
        let (available, reserved, sold): (i64, i64, i64) =
            (row.get("available"), row.get("reserved"), row.get("sold"));
        if available + reserved + sold != initial[&product] {
            violations.push(format!(
                "product {product}: {available} available + {reserved} reserved + {sold} sold != initial {}",
                initial[&product]
            ));
        }
        if reserved != 0 {
            violations.push(format!("product {product}: {reserved} still reserved when quiet"));
        }
    }
    if rows.len() != products.len() {
        violations.push(format!("stock rows for {} of {} products", rows.len(), products.len()));
    }
    // No order charged twice: at most one payment row and one completed refund per order.
    let twice: Vec<String> = sqlx::query_scalar(
        "SELECT order_id FROM payments WHERE order_id = ANY($1) GROUP BY order_id HAVING count(*) > 1",
    )
    .bind(ids)
    .fetch_all(&payment_db)
    .await?;
    for order in twice {
        violations.push(format!("order {order} has several payments"));
    }
    let payments: HashMap<String, (String, i64, i64)> = sqlx::query(
        "SELECT order_id, status, amount_units, refunded_units FROM payments WHERE order_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&payment_db)
    .await?
    .iter()
    .map(|row| (row.get("order_id"), (row.get("status"), row.get("amount_units"), row.get("refunded_units"))))
    .collect();
    let refunds: HashMap<String, i64> = sqlx::query(
        "SELECT p.order_id, count(*) AS n FROM refunds r JOIN payments p ON p.id = r.payment_id \
         WHERE r.status = 'COMPLETED' AND p.order_id = ANY($1) GROUP BY p.order_id",
    )
    .bind(ids)
    .fetch_all(&payment_db)
    .await?
    .iter()
    .map(|row| (row.get("order_id"), row.get("n")))
    .collect();
    let reservations: HashMap<String, String> =
        sqlx::query("SELECT order_id, status FROM reservations WHERE order_id = ANY($1)")
            .bind(ids)
            .fetch_all(&inventory_db)
            .await?
            .iter()
            .map(|row| (row.get("order_id"), row.get("status")))
            .collect();
    let orders = sqlx::query(
        "SELECT id::text AS id, status, refunded, total_units FROM orders WHERE id::text = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&order_db)
    .await?;
    for row in &orders {
        let id: String = row.get("id");
        let status: String = row.get("status");
        let refunded: bool = row.get("refunded");
        let total: i64 = row.get("total_units");
        let payment = payments.get(&id).map(|(s, a, r)| (s.as_str(), *a, *r));
        let reservation = reservations.get(&id).map(String::as_str);
        let refund_count = refunds.get(&id).copied().unwrap_or(0);
        if refund_count > 1 {
            violations.push(format!("order {id}: {refund_count} completed refunds"));
        }
        match status.as_str() {
            "CONFIRMED" | "SHIPPED" | "DELIVERED" => {
                if payment.map(|p| p.0) != Some("CAPTURED") || payment.map(|p| p.1) != Some(total) {
                    violations.push(format!("{status} order {id} (total {total}): payment {payment:?}"));
                }
                if reservation != Some("COMMITTED") {
                    violations
                        .push(format!("{status} order {id}: reservation {reservation:?}, not COMMITTED"));
                }
            }
            "CANCELLED" | "FAILED" | "REJECTED" => {
                let charged =
                    matches!(payment.map(|p| p.0), Some("CAPTURED" | "REFUNDED" | "PARTIALLY_REFUNDED"));
                if charged && (payment.map(|p| p.0) != Some("REFUNDED") || refund_count != 1) {
                    violations.push(format!(
                        "{status} order {id} was charged but not refunded: payment {payment:?}, {refund_count} refunds"
                    ));
                }
                if charged && status == "CANCELLED" && !refunded {
                    violations.push(format!("cancelled order {id} was refunded but does not show it"));
                }
                if matches!(reservation, Some("HELD" | "COMMITTED")) {
                    violations.push(format!("{status} order {id}: reservation {reservation:?}"));
                }
            }
            other => violations.push(format!("order {id} is {other}, not settled")),
        }
    }
    if orders.len() != ids.len() {
        violations.push(format!("{} of {} orders stored", orders.len(), ids.len()));
    }
    violations.extend(money_violations(&shop.ledger_path(), &orders)?);
    Ok(violations)
}

/// The provider's side of the money, from the mock's journal (which
/// outlives the payment process): per order at most one capture; a
/// confirmed order's capture kept whole; a dead order's money all given
/// back (voided or refunded); never more refunded than captured.
fn money_violations(ledger: &Path, orders: &[sqlx::postgres::PgRow]) -> Result<Vec<String>> {
    use commerce_payment::journal;
    let entries =
        journal::read(ledger).with_context(|| format!("cannot read the mock ledger {}", ledger.display()))?;
    let money = journal::money_by_charge_key(&entries);
    let mut violations = Vec::new();
    for row in orders {
        let id: String = row.get("id");
        let status: String = row.get("status");
        let total: i64 = row.get("total_units");
        let kept = money.get(&id).cloned().unwrap_or_default();
        if kept.captures > 1 {
            violations.push(format!("order {id}: the provider captured {} times", kept.captures));
        }
        if kept.refunded > kept.captured {
            violations.push(format!("order {id}: {} refunded of {} captured", kept.refunded, kept.captured));
        }
        let expected =
            if matches!(status.as_str(), "CONFIRMED" | "SHIPPED" | "DELIVERED") { total } else { 0 };
        if kept.net() != expected {
            violations.push(format!(
                "{status} order {id} (total {total}): the provider holds {} ({kept:?})",
                kept.net()
            ));
        }
    }
    Ok(violations)
}

// ---------------------------------------------------------------- Postgres

/// A private Postgres cluster (initdb in a temp dir, run as the `postgres`
/// user by `pg_ctl`, which stops it through its postmaster.pid), for tests
/// that start services before their database server exists.
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// Extra environment of the server's processes (a preloaded clock).
    server_env: Vec<(String, String)>,
}

impl PrivatePostgres {
    /// Initialises a cluster on a free port; not started yet.
    pub fn init() -> Result<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .context("no /usr/lib/postgresql: is Postgres installed (e2e/scripts/postgres.sh install)?")?
            .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
            .find(|bin| bin.join("initdb").is_file())
            .context("no initdb under /usr/lib/postgresql/*/bin")?;
        let dir = PathBuf::from(STATE_DIR).join(format!("postgres-{}", run_id()));
        std::fs::create_dir_all(&dir)?;
        let postgres = Self { port: free_port(), dir, bin, server_env: Vec::new() };
        postgres.as_postgres(Command::new("chown").args(["postgres:postgres"]).arg(&postgres.dir), false)?;
        postgres.as_postgres(
            Command::new(postgres.bin.join("initdb"))
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "-D"])
                .arg(postgres.dir.join("data")),
            true,
        )?;
        Ok(postgres)
    }

    /// Runs the server (from its next start) with its wall clock `offset`
    /// from this machine's (libfaketime's `FAKETIME`, e.g. "-20m", preloaded
    /// from `library`); timers keep real time.
    pub fn with_clock_offset(mut self, library: &str, offset: &str) -> Self {
        self.server_env = vec![
            ("LD_PRELOAD".to_owned(), library.to_owned()),
            ("FAKETIME".to_owned(), offset.to_owned()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".to_owned(), "1".to_owned()),
        ];
        self
    }

    fn as_postgres(&self, command: &mut Command, drop_privileges: bool) -> Result<()> {
        let output = if drop_privileges {
            let program = command.get_program().to_owned();
            let args: Vec<_> = command.get_args().map(ToOwned::to_owned).collect();
            let env = self.server_env.iter().map(|(key, value)| format!("{key}={value}"));
            Command::new("runuser")
                .args(["-u", "postgres", "--", "env"])
                .args(env)
                .arg(program)
                .args(args)
                .output()?
        } else {
            command.output()?
        };
        if !output.status.success() {
            bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(())
    }

    /// The superuser URL (trust authentication, loopback only).
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) -> Result<()> {
        // Room for a whole split shop's pools (seven services, several
        // processes) and the test's own connections.
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300",
            self.port,
            self.dir.display()
        );
        self.as_postgres(
            Command::new(self.bin.join("pg_ctl"))
                .args(["-w", "-t", "60", "-o", &options, "-l"])
                .arg(self.dir.join("postgres.log"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("start"),
            true,
        )
    }
}

impl PrivatePostgres {
    /// Crashes the server: `pg_ctl stop -m immediate`, which ends every
    /// server process at once without a checkpoint, so the next start
    /// recovers from the WAL, as after a crash. (A SIGKILL of the postmaster
    /// alone would leave its backends running on the shared memory, and a
    /// restart would wait for them: this is the crash Postgres can recover
    /// from at once.)
    pub fn crash(&self) -> Result<()> {
        self.as_postgres(
            Command::new(self.bin.join("pg_ctl"))
                .args(["-m", "immediate", "-w", "-D"])
                .arg(self.dir.join("data"))
                .arg("stop"),
            true,
        )
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.as_postgres(
            Command::new(self.bin.join("pg_ctl"))
                .args(["-m", "immediate", "-w", "-D"])
                .arg(self.dir.join("data"))
                .arg("stop"),
            true,
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ------------------------------------------------------------ saga drivers

/// `count` freshly registered customers of `shop`.
pub async fn customers(shop: &Shop, count: usize) -> Result<Vec<Api>> {
    let mut apis = Vec::new();
    for i in 0..count {
        let email = format!("customer{i}-{}@example.test", shop.run);
        apis.push(
            Api::session(&shop.gateway_url(), &shop.http, &email, "correct-horse-battery", true).await?,
        );
    }
    Ok(apis)
}

/// Places orders number `seed..seed + count` concurrently (order n by
/// customer n % customers; see [`place_order_number`]).
pub async fn place_orders(
    customers: &[Api],
    products: &[String],
    count: usize,
    seed: usize,
) -> Result<Vec<String>> {
    let mut handles = Vec::new();
    for n in seed..seed + count {
        let api = customers[n % customers.len()].clone();
        let products = products.to_vec();
        handles.push(tokio::spawn(async move { place_order_number(&api, &products, n).await }));
    }
    let mut ids = Vec::new();
    for handle in handles {
        ids.push(handle.await??);
    }
    Ok(ids)
}

/// [`place_orders`] in a task of its own.
pub fn spawn_wave(
    buyers: &[Api],
    products: &[String],
    count: usize,
    seed: usize,
) -> tokio::task::JoinHandle<Result<Vec<String>>> {
    let (buyers, products) = (buyers.to_vec(), products.to_vec());
    tokio::spawn(async move { place_orders(&buyers, &products, count, seed).await })
}

/// Places order number `n` for `api`: one or two lines over `products`
/// (chosen by `n`), every 7th paid with the mock's declined token, so some
/// orders fail and release their stock. Returns its id.
pub async fn place_order_number(api: &Api, products: &[String], n: usize) -> Result<String> {
    let first = &products[n % products.len()];
    let second = &products[(n + 1) % products.len()];
    let token = if n % 7 == 3 { "tok_decline" } else { "tok_visa" };
    let lines: Vec<(&str, i64)> =
        if n.is_multiple_of(3) { vec![(first, 1), (second, 2)] } else { vec![(first, 1 + (n % 2) as i64)] };
    api.place_order(&lines, token).await
}

/// Waits for the saga to settle and checks the invariants; then cancels a
/// few confirmed orders and checks again (refunds, restock). Returns how
/// long the first settling took from `started`, and the orders by status.
pub async fn settle_and_cancel(
    shop: &mut Shop,
    buyers: &[Api],
    ids: &[String],
    initial: &HashMap<String, i64>,
    started: Instant,
) -> Result<Settled> {
    let violations = check_invariants(shop, ids, initial, SETTLE).await?;
    ensure!(violations.is_empty(), "invariants violated:\n{}", violations.join("\n"));
    let settled = started.elapsed();
    let order_db = shop.db("order").await?;
    let statuses = order_statuses(&order_db, ids).await?;
    // Order n was placed by customer n % buyers (ids are in placing order).
    let confirmed: Vec<(usize, &String)> =
        ids.iter().enumerate().filter(|(_, id)| statuses[*id] == "CONFIRMED").take(3).collect();
    ensure!(!confirmed.is_empty(), "no order was confirmed: {statuses:?}");
    for (n, id) in &confirmed {
        buyers[n % buyers.len()]
            .retrying(
                "POST",
                &format!("/api/orders/{id}/cancel"),
                Some(serde_json::json!({ "reason": "chaos" })),
                None,
                Duration::from_secs(30),
            )
            .await?;
    }
    // Compensations are asynchronous: wait until each cancelled order shows
    // its refund and inventory has taken its committed stock back.
    let cancelled: Vec<String> = confirmed.iter().map(|(_, id)| (*id).clone()).collect();
    let inventory_db = shop.db("inventory").await?;
    wait_for("cancelled orders refunded and restocked", SETTLE, || async {
        let refunded: i64 =
            sqlx::query_scalar("SELECT count(*) FROM orders WHERE id::text = ANY($1) AND refunded")
                .bind(&cancelled)
                .fetch_one(&order_db)
                .await?;
        let restocked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM reservations WHERE order_id = ANY($1) AND status = 'RELEASED'",
        )
        .bind(&cancelled)
        .fetch_one(&inventory_db)
        .await?;
        Ok(refunded == cancelled.len() as i64 && restocked == cancelled.len() as i64)
    })
    .await
    .with_context(|| shop.logs(20))?;
    let violations = check_invariants(shop, ids, initial, SETTLE).await?;
    ensure!(violations.is_empty(), "invariants violated after cancellations:\n{}", violations.join("\n"));
    let statuses = order_statuses(&order_db, ids).await?;
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for status in statuses.values() {
        *by_status.entry(status.clone()).or_default() += 1;
    }
    eprintln!("{} orders settled {settled:?} after the clock started: {by_status:?}", ids.len());
    ensure!(by_status.get("CANCELLED").copied().unwrap_or(0) >= confirmed.len(), "{by_status:?}");
    Ok(Settled { after: settled, by_status, cancelled_after_payment: cancelled.len() })
}

/// What [`settle_and_cancel`] saw.
#[derive(Debug)]
pub struct Settled {
    /// From the caller's start instant to every invariant holding.
    pub after: Duration,
    /// The orders by status at the end.
    pub by_status: BTreeMap<String, usize>,
    /// Confirmed orders cancelled afterwards (each refunded and restocked).
    pub cancelled_after_payment: usize,
}

/// What the saga had in flight at a moment.
#[derive(Debug, Clone, Copy)]
pub struct InFlight {
    /// Orders accepted and not yet settled (the saga is working on them).
    pub open_orders: i64,
    /// Payments due for their charge (intent and stock both recorded).
    pub payments_due: i64,
}

/// Reads what is in flight now, from the order and payment databases.
pub async fn in_flight(order_db: &PgPool, payment_db: &PgPool) -> Result<InFlight> {
    let open_orders = sqlx::query_scalar("SELECT count(*) FROM orders WHERE NOT (status = ANY($1))")
        .bind(SETTLED.map(str::to_owned).to_vec())
        .fetch_one(order_db)
        .await?;
    let payments_due = sqlx::query_scalar(
        "SELECT count(*) FROM payments WHERE status = 'PENDING' AND intent_received AND stock_reserved",
    )
    .fetch_one(payment_db)
    .await?;
    Ok(InFlight { open_orders, payments_due })
}

/// Waits (up to 20 s, polling every 20 ms) until `hit` says a kill now
/// would hit work in flight, and returns what was; fails naming `what` if
/// that never happens, so a fault test's kill that hits nothing cannot pass.
pub async fn wait_in_flight(
    what: &str,
    order_db: &PgPool,
    payment_db: &PgPool,
    mut hit: impl FnMut(&InFlight) -> bool,
) -> Result<InFlight> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = in_flight(order_db, payment_db).await?;
        if hit(&seen) {
            return Ok(seen);
        }
        if Instant::now() > deadline {
            bail!("{what}: nothing in flight within 20 s ({seen:?})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
