//! Services reach a Postgres that requires TLS, as managed Postgres services
//! do, through the `sslmode`/`sslrootcert` parameters of their database URL:
//! the server's certificate is verified against the given CA, a server
//! signed by another CA is refused, and `sslmode=require` never falls back
//! to plain text.
//!
//! The server is a private cluster with `ssl=on` and a certificate for
//! 127.0.0.1 signed by a CA this test makes with `openssl`.

mod private_postgres;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use commerce_platform::db::{self, DatabaseArgs, DatabaseError};
use commerce_platform::readiness::Readiness;
use private_postgres::PrivatePostgres;
use tokio_util::sync::CancellationToken;

fn openssl(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("openssl").args(args).output().context("running openssl")?;
    ensure!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    Ok(())
}

/// A CA (`<name>-ca.pem`, `<name>-ca.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) -> anyhow::Result<()> {
    let key = dir.join(format!("{name}-ca.key")).display().to_string();
    let cert = dir.join(format!("{name}-ca.pem")).display().to_string();
    openssl(&["genrsa", "-out", &key, "2048"])?;
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &key,
        "-subj",
        &format!("/CN={name} test CA"),
        "-days",
        "2",
        "-out",
        &cert,
    ])
}

/// `server.key` and `server.pem` for 127.0.0.1, signed by CA `ca`.
fn make_server_cert(dir: &Path, ca: &str) -> anyhow::Result<()> {
    let path = |file: &str| dir.join(file).display().to_string();
    let extensions = dir.join("server.ext");
    std::fs::write(&extensions, "subjectAltName=IP:127.0.0.1,DNS:localhost\n")?;
    openssl(&["genrsa", "-out", &path("server.key"), "2048"])?;
    openssl(&[
        "req",
        "-new",
        "-key",
        &path("server.key"),
        "-subj",
        "/CN=127.0.0.1",
        "-out",
        &path("server.csr"),
    ])?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path("server.csr"),
        "-CA",
        &path(&format!("{ca}-ca.pem")),
        "-CAkey",
        &path(&format!("{ca}-ca.key")),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &extensions.display().to_string(),
        "-out",
        &path("server.pem"),
    ])
}

/// A private Postgres with `ssl=on`, its certificate signed by the `good`
/// CA; a second CA, `other`, signed nothing the server has.
async fn tls_postgres() -> anyhow::Result<PrivatePostgres> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let cluster = PrivatePostgres::init(port)?;
    let dir = cluster.dir().to_owned();
    make_ca(&dir, "good")?;
    make_ca(&dir, "other")?;
    make_server_cert(&dir, "good")?;
    for file in ["server.key", "server.pem"] {
        cluster.give_to_server(&dir.join(file))?;
    }
    // Postgres refuses a key others can read.
    std::fs::set_permissions(dir.join("server.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    cluster.start_with(&format!(
        "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
        dir.join("server.pem").display(),
        dir.join("server.key").display()
    ))?;
    Ok(cluster)
}

/// Connects as a service does, giving up (with the last error) after `within`.
async fn connect(url: &str, within: Duration) -> Result<sqlx::PgPool, DatabaseError> {
    let readiness = Readiness::new();
    let check = readiness.register(db::READINESS_CHECK);
    let shutdown = CancellationToken::new();
    let give_up = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(within).await;
        give_up.cancel();
    });
    db::connect_with_retry(&DatabaseArgs::new(url), &check, &shutdown).await
}

/// The last connection error behind a cancelled connect, as text.
fn last_error(error: &DatabaseError) -> String {
    commerce_platform::error_chain(error)
}

#[tokio::test]
async fn a_server_certificate_signed_by_the_given_ca_is_verified_and_the_session_is_encrypted()
-> anyhow::Result<()> {
    let cluster = tls_postgres().await?;
    let ca = cluster.dir().join("good-ca.pem");
    let url = format!("{}?sslmode=verify-full&sslrootcert={}", cluster.url(), ca.display());
    let pool = connect(&url, Duration::from_secs(30)).await.map_err(|e| anyhow::anyhow!(last_error(&e)))?;
    let (ssl, version): (bool, Option<String>) =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await?;
    ensure!(ssl, "the session is not encrypted");
    eprintln!("session encrypted with {version:?}");
    ensure!(version.as_deref().is_some_and(|v| v.starts_with("TLS")), "protocol {version:?}");
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() -> anyhow::Result<()> {
    let cluster = tls_postgres().await?;
    let other = cluster.dir().join("other-ca.pem");
    let url = format!("{}?sslmode=verify-full&sslrootcert={}", cluster.url(), other.display());
    let error = connect(&url, Duration::from_secs(3)).await.expect_err("an unknown issuer must be refused");
    let text = last_error(&error);
    ensure!(text.to_ascii_lowercase().contains("certificate"), "the error names the certificate: {text}");
    Ok(())
}

#[tokio::test]
async fn sslmode_require_never_falls_back_to_plain_text() -> anyhow::Result<()> {
    // A server without TLS (ssl is off by default in a new cluster).
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let cluster = PrivatePostgres::init(port)?;
    cluster.start()?;
    let plain = connect(&cluster.url(), Duration::from_secs(30)).await;
    ensure!(plain.is_ok(), "the server answers in plain text: {:?}", plain.err().map(|e| last_error(&e)));

    let error = connect(&format!("{}?sslmode=require", cluster.url()), Duration::from_secs(3))
        .await
        .expect_err("require must not connect without TLS");
    let text = last_error(&error);
    ensure!(
        text.to_ascii_lowercase().contains("ssl") || text.to_ascii_lowercase().contains("tls"),
        "the error says TLS was required: {text}"
    );
    Ok(())
}
