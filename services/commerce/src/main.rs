//! `commerce`: the one binary of the shop's services (ARCHITECTURE section 2).
//!
//! - `commerce serve <service>`: one service per process, as in a pod;
//! - `commerce serve all` / `commerce serve auth catalog ...`: several or all
//!   services in one process on this machine's infrastructure;
//! - `commerce local up -f <stack.yaml>`: the whole shop from a CommerceStack
//!   file, ready to use.
//!
//! `main` only parses and dispatches; the work is in the modules.

mod cli;
mod demo;
mod infra;
mod local;
mod ready;
mod services;
mod supervisor;

use std::process::ExitCode;

use commerce_platform::{shutdown, telemetry};

use crate::cli::{Command, LocalCommand, ServeAll, ServeTarget};
use crate::infra::LocalWiring;
use crate::services::ServiceConfig;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "commerce failed");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: cli::Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { target: ServeTarget::Single(single) } => {
            // The service sets up its own logging from its flags.
            let config = ServiceConfig::from(single);
            supervisor::run(vec![config], shutdown::on_signal()).await
        }
        Command::Serve { target: ServeTarget::All(all) } => serve_all(all).await,
        Command::Local { command: LocalCommand::Up(up) } => {
            telemetry::init(&up.log, "local")?;
            local::up(up, shutdown::on_signal()).await
        }
    }
}

/// `commerce serve all`: prepares databases and topics, then serves.
async fn serve_all(all: ServeAll) -> anyhow::Result<()> {
    telemetry::init(&all.log, "all")?;
    let services = if all.services.is_empty() { services::built_in() } else { all.services };
    let wiring = LocalWiring::new(&all.infra, &all.log)?;
    let configs = services
        .iter()
        .map(|service| ServiceConfig::local(*service, &wiring, &[]))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let shutdown = shutdown::on_signal();
    tokio::select! {
        prepared = async {
            wiring.ensure_databases(&services).await?;
            wiring.ensure_topics().await
        } => prepared?,
        () = shutdown.cancelled() => return Ok(()),
    }
    supervisor::run(configs, shutdown).await
}
