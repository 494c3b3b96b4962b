//! The infrastructure scripts recover from a machine that stopped with them
//! running: the processes are gone, their pid files and data are not.
//!
//! Each test runs a private Postgres (own state directory, own free port)
//! through e2e/scripts/postgres.sh, so the shared one that other tests use is
//! never touched.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// A Postgres managed by the project's script in a private state directory;
/// stopped (by the script, through its pid file) and removed on drop.
struct PrivatePostgres {
    state: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    fn new() -> Result<Self> {
        // Under /var/tmp like the shared state: the unprivileged postgres user
        // must be able to reach the data directory.
        let state = PathBuf::from(format!("/var/tmp/commerce-stack-script-test-{}", uuid::Uuid::new_v4()));
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Ok(Self { state, port })
    }

    fn script(&self, verb: &str) -> Result<Output> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(verb)
            .env("COMMERCE_STATE_DIR", &self.state)
            .env("COMMERCE_POSTGRES_PORT", self.port.to_string())
            // Derived from the port in infra.env unless inherited.
            .env_remove("COMMERCE_POSTGRES_ADMIN_URL")
            .env_remove("COMMERCE_KUBECONFIG")
            .output()
            .with_context(|| format!("running {} {verb}", script.display()))?;
        Ok(out)
    }

    fn up(&self) -> Result<String> {
        let out = self.script("up")?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure!(out.status.success(), "postgres.sh up failed ({}):\n{stderr}", out.status);
        Ok(stderr)
    }

    fn status(&self) -> Result<String> {
        let out = self.script("status")?;
        ensure!(out.status.success(), "postgres.sh status failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn recorded_pid(&self) -> Result<u32> {
        let file = self.state.join("postgres/pid");
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        text.trim().parse().with_context(|| format!("pid file {} holds {text:?}", file.display()))
    }

    fn postmaster_pid_file(&self) -> PathBuf {
        self.state.join("postgres/data/postmaster.pid")
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Err(e) = self.script("down") {
            eprintln!("stopping the private postgres: {e:#}");
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// True while `pid` is a process that has not exited (a zombie has).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => {
            stat.rsplit_once(')').is_some_and(|(_, rest)| rest.split_whitespace().next() != Some("Z"))
        }
        Err(_) => false,
    }
}

/// The direct children of `pid`, read from /proc.
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).ok().and_then(|stat| {
                let (_, rest) = stat.rsplit_once(')')?;
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            }) == Some(pid)
        })
        .collect()
}

/// What a machine that stops does to a server: every one of its processes
/// dies at once, without a chance to clean up.
fn kill_abruptly(postmaster: u32) -> Result<()> {
    let mut victims = children(postmaster);
    victims.insert(0, postmaster);
    let status = Command::new("kill").arg("-KILL").args(victims.iter().map(u32::to_string)).status()?;
    ensure!(status.success(), "kill -KILL {victims:?} failed");
    let deadline = Instant::now() + Duration::from_secs(30);
    while victims.iter().any(|&p| alive(p)) {
        if Instant::now() > deadline {
            bail!("processes {victims:?} still alive 30 s after SIGKILL");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn postgres_comes_back_up_after_its_processes_died_with_the_machine() -> Result<()> {
    let pg = PrivatePostgres::new()?;
    pg.up()?;
    let first = pg.recorded_pid()?;
    ensure!(pg.status()?.contains(&format!("up (pid {first})")), "status after up: {}", pg.status()?);

    kill_abruptly(first)?;
    // The crash leaves postmaster.pid naming the dead postmaster.
    let stale = std::fs::read_to_string(pg.postmaster_pid_file())?;
    ensure!(
        stale.lines().next() == Some(first.to_string().as_str()),
        "postmaster.pid after the kill: {stale:?}"
    );
    ensure!(pg.status()?.contains("down"), "status after the kill: {}", pg.status()?);

    let log = pg.up()?;
    ensure!(log.contains("removing a stale postmaster.pid"), "up did not report the stale pid file:\n{log}");
    let second = pg.recorded_pid()?;
    ensure!(second != first && alive(second), "recorded pid {second} after restart (first was {first})");
    ensure!(pg.status()?.contains(&format!("up (pid {second})")), "status after restart: {}", pg.status()?);

    // `down` stops the restarted server through the pid it recorded.
    let out = pg.script("down")?;
    ensure!(out.status.success(), "down failed: {}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(second) {
        ensure!(Instant::now() < deadline, "postmaster {second} still alive after down");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn postgres_up_adopts_a_postmaster_whose_pid_was_never_recorded() -> Result<()> {
    let pg = PrivatePostgres::new()?;
    pg.up()?;
    let pid = pg.recorded_pid()?;
    // As if `up` had been interrupted between starting the server and
    // writing its pid file.
    std::fs::remove_file(pg.state.join("postgres/pid"))?;
    ensure!(pg.status()?.contains("down"), "status without a pid file: {}", pg.status()?);

    let log = pg.up()?;
    ensure!(log.contains("unrecorded; recording it"), "up did not adopt the running server:\n{log}");
    ensure!(pg.recorded_pid()? == pid, "adopted pid {} is not the running {pid}", pg.recorded_pid()?);
    ensure!(pg.status()?.contains(&format!("up (pid {pid})")), "status after adopting: {}", pg.status()?);
    Ok(())
}
