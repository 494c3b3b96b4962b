//! `commerce-operator`: `crd` prints the CRDs, `render -f stack.yaml` prints
//! the objects a stack becomes, `run` reconciles stacks in a cluster.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use commerce_platform::telemetry;

/// The commerce-stack operator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print every CRD of the project as multi-document YAML.
    Crd,
    /// Print the objects the CommerceStacks in a file become (RateLimitPolicies
    /// in the same file join the stacks they target), for a GitOps review.
    Render {
        /// YAML file with CommerceStack and RateLimitPolicy documents; `-`
        /// reads standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Namespace of resources that name none.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Reconcile CommerceStacks in the cluster of the kubeconfig or the
    /// in-cluster service account.
    Run {
        #[command(flatten)]
        args: commerce_operator::run::RunArgs,
        /// `--log-format` and `--log-filter`, as every service takes them.
        #[command(flatten)]
        log: telemetry::LogArgs,
    },
}

fn main() -> anyhow::Result<()> {
    // Built together with the rest of the workspace, rustls has two crypto
    // providers compiled in (kube's ring, reqwest's aws-lc-rs via other
    // crates) and cannot pick one on its own: choose kube's, before any client
    // exists. An error only means a provider was installed already.
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let output = match cli.command {
        Command::Run { args, log } => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            return runtime.block_on(async {
                // On standard error: standard output is for `render` and
                // `crd`. Inside the runtime: the trace exporter lives there.
                telemetry::init_to(&log, "commerce-operator", telemetry::LogStream::Stderr)
                    .context("setting up logging")?;
                let ran = async {
                    let config =
                        kube::Config::infer().await.context("reading the Kubernetes client configuration")?;
                    let metrics = std::sync::Arc::new(commerce_operator::metrics::Metrics::default());
                    let client = commerce_operator::run::counting_client(config, metrics.clone())
                        .context("connecting to the Kubernetes API")?;
                    commerce_operator::run::run(client, args, metrics).await.context("running the controller")
                }
                .await;
                // The last spans are exported before the process exits.
                telemetry::flush();
                ran
            });
        }
        Command::Crd => commerce_operator::crd::crds_yaml()?,
        Command::Render { file, namespace } => {
            let yaml = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
            };
            commerce_operator::render::render(&yaml, &namespace)
                .with_context(|| format!("rendering {}", file.display()))?
        }
    };
    std::io::stdout().lock().write_all(output.as_bytes())?;
    Ok(())
}
