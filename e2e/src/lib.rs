//! Shared helpers for tests that run against the real infrastructure on
//! loopback started by `e2e/scripts/infra.sh` (see `e2e/infra.env` for the
//! addresses): a client for the local Kubernetes control plane that refuses
//! anything but loopback and fails loudly when the control plane is down,
//! unique names so concurrent runs never collide, and a timeout wrapper for
//! waits on conditions.

use std::{future::Future, path::PathBuf, time::Duration};

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

/// Where `e2e/infra.env` puts runtime state when `COMMERCE_STATE_DIR` is unset.
const DEFAULT_STATE_DIR: &str = "/var/tmp/commerce-stack";

/// How long a healthy local API server may take to answer `/version`; it
/// answers in milliseconds, so anything slower means it is down or wedged.
const REACHABILITY_TIMEOUT: Duration = Duration::from_secs(10);

/// The command that starts the control plane, quoted in every error.
const START_HINT: &str = "start it with `bash e2e/scripts/infra.sh up k8s` (or `make infra`)";

/// Why the local control plane cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    /// The kubeconfig written by `e2e/scripts/k8s.sh up` is missing or unreadable.
    #[error("cannot read the local kubeconfig {path}; {START_HINT}")]
    ReadKubeconfig {
        /// The path that was tried.
        path: PathBuf,
        /// Why reading or parsing it failed.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The kubeconfig does not describe a usable client configuration.
    #[error("the kubeconfig {path} is not usable")]
    BuildConfig {
        /// The kubeconfig that was read.
        path: PathBuf,
        /// What kube rejected.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The kubeconfig points somewhere other than this machine; tests never
    /// leave loopback.
    #[error("refusing to test against {url}: the kubeconfig {path} must point at 127.0.0.1")]
    NotLoopback {
        /// The kubeconfig that was read.
        path: PathBuf,
        /// The server it names.
        url: String,
    },
    /// The HTTP client could not be built (TLS material in the kubeconfig).
    #[error("cannot build a Kubernetes client from {path}")]
    BuildClient {
        /// The kubeconfig that was read.
        path: PathBuf,
        /// What kube rejected.
        #[source]
        source: kube::Error,
    },
    /// The API server did not answer `/version`.
    #[error("the local control plane at {url} is unreachable; {START_HINT}")]
    Unreachable {
        /// The server that was asked.
        url: String,
        /// The request error, if it failed rather than timed out.
        #[source]
        source: Option<kube::Error>,
    },
    /// A wait for a condition ran out of time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What was awaited, in words.
        what: String,
        /// How long it was given.
        timeout: Duration,
    },
}

/// The kubeconfig of the local control plane: `COMMERCE_KUBECONFIG` (exported
/// by `e2e/infra.env`), else `$COMMERCE_STATE_DIR/kubeconfig`. A plain
/// `KUBECONFIG` is deliberately ignored: it may point at a real cluster.
#[must_use]
pub fn local_kubeconfig_path() -> PathBuf {
    if let Some(path) = std::env::var_os("COMMERCE_KUBECONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let state = std::env::var_os("COMMERCE_STATE_DIR")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), PathBuf::from);
    state.join("kubeconfig")
}

/// A client for the local control plane, checked to be on loopback and to
/// answer. Tests call this first, so a stopped control plane fails them with
/// a message that says how to start it instead of skipping them.
///
/// # Errors
///
/// Any [`E2eError`] but `Timeout`.
pub async fn local_kube_client() -> Result<Client, E2eError> {
    kube_client_from(local_kubeconfig_path()).await
}

/// Like [`local_kube_client`], for the kubeconfig at `path`.
///
/// # Errors
///
/// Any [`E2eError`] but `Timeout`.
pub async fn kube_client_from(path: impl Into<PathBuf>) -> Result<Client, E2eError> {
    let path = path.into();
    // With two rustls providers compiled in (kube's ring, reqwest's
    // aws-lc-rs) rustls cannot pick one and panics; the first call decides.
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = Kubeconfig::read_from(&path)
        .map_err(|source| E2eError::ReadKubeconfig { path: path.clone(), source })?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| E2eError::BuildConfig { path: path.clone(), source })?;
    let url = config.cluster_url.to_string();
    if !matches!(config.cluster_url.host(), Some("127.0.0.1" | "localhost")) {
        return Err(E2eError::NotLoopback { path, url });
    }
    let client =
        Client::try_from(config).map_err(|source| E2eError::BuildClient { path: path.clone(), source })?;
    match tokio::time::timeout(REACHABILITY_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(source)) => Err(E2eError::Unreachable { url, source: Some(source) }),
        Err(_elapsed) => Err(E2eError::Unreachable { url, source: None }),
    }
}

/// `prefix-<8 hex digits>`: a name (DNS label) no other run uses, so tests
/// may run concurrently, and leftovers of a crashed run never collide.
#[must_use]
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..8])
}

/// Awaits `future` for at most `timeout`; `what` names it in the error.
///
/// # Errors
///
/// [`E2eError::Timeout`] when the time runs out.
pub async fn within<T>(
    what: &str,
    timeout: Duration,
    future: impl Future<Output = T>,
) -> Result<T, E2eError> {
    tokio::time::timeout(timeout, future)
        .await
        .map_err(|_elapsed| E2eError::Timeout { what: what.to_owned(), timeout })
}
