//! Processes a fault test starts, crashes and stops itself, each by its
//! PID (SIGTERM, then SIGKILL) or through the tool that recorded it, never
//! by name: the `commerce` binary's processes ([`Proc`]), a private Kafka
//! started and stopped through `e2e/scripts/kafka.sh` ([`PrivateKafka`]),
//! and a private Postgres cluster run by `pg_ctl` ([`PrivatePostgres`]).
//! Their logs and state live under [`STATE_DIR`], never in the shared
//! infrastructure's state dir, and their ports are their own, so the shared
//! Postgres, Kafka and Redis of other tests are never disturbed.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::shop::{log_tail, new_run_id};

/// Where fault tests' logs, ledgers and private Kafka and Postgres state
/// live; never the shared state dir.
pub const STATE_DIR: &str = "/var/tmp/commerce-stack-chaos";

/// The repository's root (scripts are run from there).
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
        format!("--- {} ({}) ---\n{}", self.name, self.log.display(), log_tail(&self.log, lines))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

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
        let dir = PathBuf::from(STATE_DIR).join(format!("postgres-{}", new_run_id()));
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
