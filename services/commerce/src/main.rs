//! `commerce`: the one binary of the shop's services (ARCHITECTURE section 2).
//!
//! - `commerce serve <service>`: one service per process, as in a pod;
//! - `commerce serve all` / `commerce serve auth catalog ...`: several or all
//!   services in one process on this machine's infrastructure;
//! - `commerce local up -f <stack.yaml>`: the whole shop from a CommerceStack
//!   file, ready to use;
//! - `commerce check grpc <host:port>`: a gRPC health check from inside a
//!   pod, whose image has no other tools;
//! - `commerce load`: load on a running shop through its gateway (crate
//!   commerce-load, on goose), with live metrics and an HTML report.
//!
//! `main` only parses and dispatches; the work is in the modules.

mod allocator;
mod check;
mod cli;
mod demo;
mod infra;
mod local;
mod ready;
mod services;
mod supervisor;

use std::process::ExitCode;

use commerce_platform::{shutdown, telemetry};
use commerce_topology::Service;

use crate::cli::{CheckCommand, Command, LocalCommand, ServeAll, ServeTarget};
use crate::infra::LocalWiring;
use crate::ready::OnTimeout;
use crate::services::ServiceConfig;

/// How long `serve all` waits for the services started so far before it
/// starts their callers anyway.
const WAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn main() -> ExitCode {
    allocator::tune();
    allocator::start_trimming();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async_main())
}

async fn async_main() -> ExitCode {
    let cli = cli::parse();
    let code = match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "commerce failed");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    };
    // Log lines to a file or pipe are buffered for a few milliseconds.
    telemetry::flush();
    code
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
            // The whole shop in one process: its spans are exported as "commerce".
            telemetry::init(&up.log, "commerce")?;
            local::up(up, shutdown::on_signal()).await
        }
        Command::Check { command: CheckCommand::Grpc(args) } => check::grpc(&args).await,
        Command::Load(args) => load(args).await,
    }
}

/// `commerce load`: goose logs its progress and prints its tables; the
/// summary, failures by kind of request included, closes the run.
async fn load(args: commerce_load::LoadArgs) -> anyhow::Result<()> {
    if let Some(summary) = commerce_load::run(args).await? {
        println!("\n{summary}");
    }
    Ok(())
}

/// `commerce serve all`: prepares databases and topics, then serves.
async fn serve_all(all: ServeAll) -> anyhow::Result<()> {
    // Catalog order, each once: a service listed twice would fail to bind.
    let services: Vec<Service> = if all.services.is_empty() {
        services::built_in()
    } else {
        Service::ALL.into_iter().filter(|service| all.services.contains(service)).collect()
    };
    // The service its spans are exported as: the one served, or the shop.
    let name = match services.as_slice() {
        [one] => one.name(),
        _ => "commerce",
    };
    telemetry::init(&all.log, name)?;
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
    let (launcher, supervisor) = supervisor::start(shutdown.clone());
    // Not ready in time is no reason to stop: services retry their
    // dependencies and say what they wait for in /readyz. A failure is.
    let launched =
        ready::launch_in_waves(&launcher, configs, &wiring, WAVE_TIMEOUT, OnTimeout::Continue, &shutdown)
            .await;
    drop(launcher);
    if let Err(error) = launched {
        shutdown.cancel();
        if let Err(stop_error) = supervisor.await? {
            tracing::error!(error = format!("{stop_error:#}"), "while stopping");
        }
        return Err(error);
    }
    supervisor.await?
}
