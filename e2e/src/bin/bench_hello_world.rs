//! The yardstick of the read-path benchmark (e2e/tests/read_path.rs): a
//! bare axum server with one route answering `Hello, World!`, on tokio's
//! multi-thread runtime like the gateway, so that the gateway's figures
//! can be given as a ratio to what axum itself does on the same machine in
//! the same run.
//!
//! Binds `127.0.0.1:0` (or the address given as the first argument) and
//! prints one line, `listening on <addr> (<profile>)`, which the benchmark
//! reads to find the port and to refuse an unoptimised build.

use axum::Router;
use axum::routing::get;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    println!("listening on {} ({profile})", listener.local_addr()?);
    let app = Router::new().route("/", get(|| async { "Hello, World!" }));
    axum::serve(listener, app).await
}
