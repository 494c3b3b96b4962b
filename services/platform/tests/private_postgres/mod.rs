//! A Postgres cluster of a test's own, in a temporary directory, on a port
//! of its own: for tests that need a server they may start late, stop, or
//! configure differently from the shared one (TLS).
#![allow(dead_code)] // Each test binary uses a different part.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail, ensure};
use uuid::Uuid;

/// A Postgres cluster of the test's own, in a temporary directory.
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres_user: bool,
}

impl PrivatePostgres {
    /// `initdb` into a new directory (trust authentication on loopback).
    pub fn init(port: u16) -> anyhow::Result<Self> {
        let bin = postgres_bin_dir()?;
        let dir = std::env::temp_dir().join(format!("commerce-late-postgres-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let as_postgres_user = is_root()?;
        if as_postgres_user {
            // Postgres refuses to run as root; its directory must be its own.
            let uid = id(&["-u", "postgres"])?;
            let gid = id(&["-g", "postgres"])?;
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        let cluster = Self { bin, dir, port, as_postgres_user };
        let data = cluster.data_dir();
        cluster.run("initdb", &["-D", &data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])?;
        Ok(cluster)
    }

    pub fn data_dir(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    pub fn start(&self) -> anyhow::Result<()> {
        self.start_with("")
    }

    /// Starts the server with extra `-c name=value` options.
    pub fn start_with(&self, extra_options: &str) -> anyhow::Result<()> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=off {extra_options}",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("postgres.log").display().to_string();
        self.run("pg_ctl", &["start", "-w", "-t", "60", "-D", &self.data_dir(), "-l", &log, "-o", &options])
    }

    pub fn stop(&self, mode: &str) -> anyhow::Result<()> {
        self.run("pg_ctl", &["stop", "-w", "-t", "60", "-m", mode, "-D", &self.data_dir()])
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The cluster's own directory (the data directory's parent).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes `path` the server's own (it runs as `postgres` when we are root).
    pub fn give_to_server(&self, path: &Path) -> anyhow::Result<()> {
        if self.as_postgres_user {
            let uid = id(&["-u", "postgres"])?;
            let gid = id(&["-g", "postgres"])?;
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    /// Runs one of Postgres' programs, as `postgres` when we are root.
    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            Command::new(&path)
        };
        // The postmaster that pg_ctl starts must not hold our pipes open.
        let status =
            command.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status()?;
        if !status.success() {
            let log = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
            bail!("{program} {args:?} failed with {status}; server log:\n{log}");
        }
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // Through pg_ctl and the cluster's own pid file: nothing else is
        // signalled. A cluster already stopped makes this fail harmlessly.
        let _ = self.stop("immediate");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest installed server's `bin` directory, or `COMMERCE_POSTGRES_BIN_DIR`.
fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("COMMERCE_POSTGRES_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql; install Postgres with `bash e2e/scripts/infra.sh up postgres`")?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            Path::new(&bin.join("initdb")).exists().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, bin)| bin).context("no Postgres server with initdb under /usr/lib/postgresql")
}

/// `id <args>` as a number.
fn id(args: &[&str]) -> anyhow::Result<u32> {
    let output = Command::new("id").args(args).output()?;
    ensure!(output.status.success(), "id {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8(output.stdout)?.trim().parse()?)
}

fn is_root() -> anyhow::Result<bool> {
    Ok(id(&["-u"])? == 0)
}
