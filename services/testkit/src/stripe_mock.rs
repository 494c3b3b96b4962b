//! stripe-mock, Stripe's official mock of its API (built from its Go module
//! by `e2e/scripts/stripe-mock.sh`), with `-strict-version-check`, so that a
//! request of another API version than the adapter's is refused as Stripe's
//! own spec would. Stopped by its PID when dropped.
//!
//! It listens on loopback only, on ports the system chooses (it prints
//! them): its HTTPS listener too, which otherwise takes port 12112 on every
//! interface, so that two tests' mocks would collide.
//!
//! It checks each request against Stripe's OpenAPI document and answers
//! with fixtures; it keeps no state.

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running stripe-mock.
#[derive(Debug)]
pub struct StripeMock {
    child: Child,
    port: u16,
}

impl StripeMock {
    /// Builds it if it is not cached yet, starts it and waits until it
    /// listens.
    pub fn start() -> anyhow::Result<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../e2e/scripts/stripe-mock.sh");
        let output = Command::new("bash").arg(&script).arg("path").stderr(Stdio::inherit()).output()?;
        anyhow::ensure!(output.status.success(), "{} path failed", script.display());
        let binary = String::from_utf8(output.stdout)?.trim().to_owned();
        let mut child = Command::new(&binary)
            .args(["-http-addr", "127.0.0.1:", "-https-addr", "127.0.0.1:", "-strict-version-check"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        // It prints `Listening for HTTP at address: 127.0.0.1:<port>` once
        // it listens; the thread then drains the rest until it exits.
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix("Listening for HTTP at address: ") {
                    let _ =
                        port_tx.send(address.rsplit(':').next().and_then(|port| port.parse::<u16>().ok()));
                }
            }
        });
        let mut mock = Self { child, port: 0 };
        match port_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(port)) => mock.port = port,
            _ => anyhow::bail!("stripe-mock did not say where it listens within 20 s"),
        }
        Ok(mock)
    }

    /// `http://127.0.0.1:<port>`, as `--stripe-api-base` takes it.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for StripeMock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
