//! Process shutdown: one token, cancelled on SIGTERM or Ctrl-C, that every
//! server, relay and consumer of the process watches so they stop accepting,
//! drain and commit before the process exits.

use tokio_util::sync::CancellationToken;

/// Returns a token that is cancelled when the process receives SIGTERM (what
/// Kubernetes sends before killing a pod) or SIGINT (Ctrl-C locally).
///
/// Call once, in `main`; hand clones (or `child_token()`s) to every task.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining");
        cancel.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    // If the handler cannot be installed the process can still be stopped by
    // SIGKILL; waiting forever on that branch is the honest fallback.
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
