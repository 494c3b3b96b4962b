//! A real SMTP server for the email tests: aiosmtpd (PyPI, installed by
//! `e2e/scripts/smtp.sh` into the virtualenv `COMMERCE_SMTP_PYTHON` names),
//! on a loopback port, writing every message it accepts into a Maildir of
//! its own. Stopped by its PID when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running aiosmtpd.
#[derive(Debug)]
pub struct SmtpServer {
    child: Child,
    maildir: PathBuf,
    port: u16,
}

impl SmtpServer {
    /// Starts it on `port` and waits until it listens, so that no send meets
    /// a server still starting.
    pub fn start(port: u16) -> anyhow::Result<Self> {
        let python = std::env::var("COMMERCE_SMTP_PYTHON")
            .map_err(|_| anyhow::anyhow!("COMMERCE_SMTP_PYTHON is unset: source e2e/infra.env"))?;
        anyhow::ensure!(
            Path::new(&python).exists(),
            "{python} is missing: run `bash e2e/scripts/smtp.sh install` (make test does)"
        );
        // A Maildir that does not exist yet: aiosmtpd creates it whole.
        let maildir = std::env::temp_dir().join(format!("commerce-smtp-{}", uuid::Uuid::new_v4().simple()));
        let child = Command::new(python)
            .args(["-m", "aiosmtpd", "--nosetuid", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--class", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let server = Self { child, maildir, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "aiosmtpd did not listen on {port} within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    /// `smtp://127.0.0.1:<port>`, as `--email-smtp-url` takes it.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message delivered so far, as text (headers and body).
    pub fn messages(&self) -> anyhow::Result<Vec<String>> {
        let new = self.maildir.join("new");
        if !new.exists() {
            return Ok(Vec::new());
        }
        let mut messages = Vec::new();
        for entry in std::fs::read_dir(new)? {
            messages.push(std::fs::read_to_string(entry?.path())?);
        }
        Ok(messages)
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.maildir);
    }
}
