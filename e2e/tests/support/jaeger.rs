//! A Jaeger v2 (the trace backend) for the tests that export spans: built
//! from its Go module by `e2e/scripts/jaeger.sh`, run as a child process
//! with in-memory storage, listening on loopback only, stopped by its PID.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};

use super::procs::{Proc, free_port, repo_root};

/// A Jaeger v2 with in-memory storage, stopped by its PID when dropped.
pub struct Jaeger {
    pub process: Proc,
    /// `http://127.0.0.1:<port>`: the OTLP/gRPC receiver.
    pub otlp: String,
    /// `http://127.0.0.1:<port>`: the query API.
    pub query: String,
    dir: PathBuf,
}

impl Jaeger {
    pub fn start() -> Result<Self> {
        let script = repo_root().join("e2e/scripts/jaeger.sh");
        let run = |args: &[&str]| -> Result<String> {
            let output = Command::new("bash").arg(&script).args(args).output()?;
            ensure!(
                output.status.success(),
                "jaeger.sh {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            Ok(String::from_utf8(output.stdout)?)
        };
        let binary = PathBuf::from(run(&["path"])?.trim());
        let (otlp_port, query_port) = (free_port(), free_port());
        let config = run(&["config", &otlp_port.to_string(), &query_port.to_string()])?;
        let dir = std::env::temp_dir().join(format!("commerce-jaeger-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join("jaeger.yaml");
        std::fs::write(&config_path, config)?;
        let args = vec!["--config".to_owned(), format!("file:{}", config_path.display())];
        let process = Proc::spawn("jaeger", &binary, args, Vec::new(), dir.join("jaeger.log"))?;
        Ok(Self {
            process,
            otlp: format!("http://127.0.0.1:{otlp_port}"),
            query: format!("http://127.0.0.1:{query_port}"),
            dir,
        })
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        self.process.stop(Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Jaeger {
    /// Waits until the query API answers.
    pub async fn wait_ready(&self, http: &reqwest::Client) -> Result<()> {
        super::wait_for("Jaeger's query API", Duration::from_secs(60), || async {
            let answer = http.get(format!("{}/api/services", self.query)).send().await;
            Ok(answer.ok().filter(|answer| answer.status().is_success()).map(|_| ()))
        })
        .await
        .map(|_| ())
        .map_err(|error| error.context(self.process.log_tail(20)))
    }
}
