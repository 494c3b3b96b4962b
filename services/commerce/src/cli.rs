//! The command line: `commerce serve <service>` (one service, configured by
//! its own flags and `COMMERCE_*` variables, as in a pod), `commerce serve
//! all` / `commerce serve auth catalog ...` (several services in one process
//! on this machine's infrastructure), `commerce local up -f <stack.yaml>` and
//! `commerce load` (load on a running shop, flags from crate commerce-load).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use commerce_platform::telemetry::LogArgs;
use commerce_topology::{Service, UnknownService};

use crate::check::CheckGrpc;
use crate::infra::InfraArgs;
use crate::services::{self, Single};

/// The commerce-stack binary: every service of the shop, one image.
#[derive(Debug, Parser)]
#[command(name = "commerce", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process and moved into the one branch that runs: the
// size of a variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one service (`commerce serve order`, configured by its flags and
    /// COMMERCE_* variables, as in a pod), several in one process (`commerce
    /// serve auth catalog`) or all of them (`commerce serve all`).
    Serve {
        #[command(subcommand)]
        target: ServeTarget,
    },
    /// Run the shop on this machine.
    Local {
        #[command(subcommand)]
        command: LocalCommand,
    },
    /// Check, from inside a pod, what the image has no tools for.
    Check {
        #[command(subcommand)]
        command: CheckCommand,
    },
    /// Put load on a running shop through its gateway's REST API, as its
    /// clients would: anonymous visitors browse, search and view products;
    /// buyers sign up once, then fill carts, check out, follow their orders
    /// and cancel some. Prints running metrics, goose's tables and a summary
    /// whose failures are counted by kind of request; `--report-file
    /// run.html` writes a report with percentiles and graphs over time.
    /// Every goose option is accepted (goose's book: Runtime Options).
    Load(commerce_load::LoadArgs),
}

#[derive(Debug, Subcommand)]
pub enum CheckCommand {
    /// Ask a gRPC server's health service (grpc.health.v1) whether it is
    /// SERVING; exit 0 only if it is. Tells whether this pod can reach
    /// another (DNS, Services, NetworkPolicies).
    Grpc(CheckGrpc),
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum ServeTarget {
    #[command(flatten)]
    Single(Single),
    /// Several or all services in one process, each on its local ports with
    /// its own database on the local Postgres (created if absent), topics
    /// created if absent. `commerce serve auth catalog` is short for
    /// `commerce serve all --services auth,catalog`.
    All(ServeAll),
}

/// Flags of `commerce serve all`.
#[derive(Debug, clap::Args)]
pub struct ServeAll {
    /// Services to run, comma separated; every built-in service when unset.
    #[arg(long = "services", env = "COMMERCE_SERVICES", value_delimiter = ',')]
    pub services: Vec<Service>,
    #[command(flatten)]
    pub infra: InfraArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// Run the shop a CommerceStack file describes on this machine: create
    /// databases and topics, start the enabled services in this process, wait
    /// until they are ready, seed demo products and stock, and print the
    /// gateway's URL with example requests. Runs until Ctrl-C or SIGTERM.
    Up(LocalUp),
}

/// Flags of `commerce local up`.
#[derive(Debug, clap::Args)]
pub struct LocalUp {
    /// The CommerceStack file, the same the operator reads (e.g.
    /// manifests/examples/local.yaml). Its services, auth token lifetimes,
    /// payment provider and CORS origins apply; infrastructure comes from
    /// the flags below instead of the file.
    #[arg(short = 'f', long = "file", env = "COMMERCE_LOCAL_STACK_FILE")]
    pub file: PathBuf,
    /// How long every service may take to become ready.
    #[arg(long = "ready-timeout", env = "COMMERCE_LOCAL_READY_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub ready_timeout: Duration,
    /// Units each demo product starts with (set only for a product that was
    /// never stocked, so a restart keeps the shop's stock).
    #[arg(long = "demo-stock", env = "COMMERCE_LOCAL_DEMO_STOCK", default_value_t = 100, value_parser = clap::value_parser!(i64).range(0..))]
    pub demo_stock: i64,
    /// Start with an empty catalog: no demo products, no stock, no demo
    /// accounts.
    #[arg(long = "no-demo", env = "COMMERCE_LOCAL_NO_DEMO")]
    pub no_demo: bool,
    #[command(flatten)]
    pub infra: InfraArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Parses the process arguments; exits with clap's usage message (status 2)
/// on an error, as clap does.
pub fn parse() -> Cli {
    let args = match expand_service_lists(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(message) => {
            eprintln!(
                "error: {message}\n\nUsage: commerce serve <SERVICE>... [OPTIONS]\n\nFor more information, try 'commerce serve --help'."
            );
            std::process::exit(2);
        }
    };
    let matches = command().get_matches_from(args);
    Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
}

/// The clap command, with each service subcommand described by its catalog
/// summary, and `local up` logging text for a person: its own progress and
/// every warning, without each service's info lines.
pub fn command() -> clap::Command {
    Cli::command()
        .mut_subcommand("serve", |serve| {
            services::built_in().into_iter().fold(serve, |serve, service| {
                serve.mut_subcommand(service.name(), |sub| {
                    sub.about(format!("The {service} service: {}", service.spec().summary))
                })
            })
        })
        .mut_subcommand("local", |local| {
            local.mut_subcommand("up", |up| {
                up.mut_arg("log-format", |arg| arg.default_value("text"))
                    .mut_arg("log-filter", |arg| arg.default_value("warn,commerce::=info"))
            })
        })
        .mut_subcommand("load", commerce_load::describe_defaults)
}

/// Rewrites `commerce serve a b ...` (two or more service names) into
/// `commerce serve all --services a,b,...`, and rejects a name that is not a
/// built-in service with a message listing the ones that are.
pub fn expand_service_lists(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    if args.get(1).and_then(|arg| arg.to_str()) != Some("serve") {
        return Ok(args);
    }
    let names: Vec<&str> =
        args[2..].iter().map_while(|arg| arg.to_str().filter(|arg| !arg.starts_with('-'))).collect();
    let built_in = services::built_in();
    let check = |name: &str| -> Result<Service, String> {
        let service = name.parse::<Service>().map_err(|error: UnknownService| {
            let mut message = format!("{error}; or all");
            if built_in.len() < Service::ALL.len() {
                message.push_str(&format!(" (built into this binary: {})", services::names(&built_in)));
            }
            message
        })?;
        if built_in.contains(&service) {
            Ok(service)
        } else {
            Err(format!(
                "service {service} is not built into this binary (built in: {})",
                services::names(&built_in)
            ))
        }
    };
    match names.as_slice() {
        [] | ["help", ..] | ["all"] => Ok(args),
        [single] => check(single).map(|_| args),
        several => {
            if several.contains(&"all") {
                return Err("`all` cannot be combined with service names".to_owned());
            }
            let services = several.iter().map(|name| check(name)).collect::<Result<Vec<_>, _>>()?;
            let mut rewritten: Vec<OsString> = args[..2].to_vec();
            rewritten.push("all".into());
            rewritten.push(format!("--services={}", services::names(&services).replace(", ", ",")).into());
            rewritten.extend(args[2 + several.len()..].iter().cloned());
            Ok(rewritten)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn the_command_is_well_formed() {
        command().debug_assert();
    }

    #[test]
    fn several_service_names_become_serve_all_with_a_service_list() {
        let built_in = services::built_in();
        let [first, second, ..] = built_in.as_slice() else { return };
        let line = format!("commerce serve {first} {second} --kafka-brokers=k:1");
        let expected = format!("commerce serve all --services={first},{second} --kafka-brokers=k:1");
        assert_eq!(expand_service_lists(args(&line)), Ok(args(&expected)));
    }

    #[test]
    fn one_service_all_and_other_commands_pass_unchanged() {
        for line in
            ["commerce serve all --port-offset=3", "commerce local up -f x.yaml", "commerce serve --help"]
        {
            assert_eq!(expand_service_lists(args(line)), Ok(args(line)));
        }
    }

    #[test]
    fn an_unknown_service_is_rejected_with_the_known_ones_listed() {
        for line in ["commerce serve basket", "commerce serve auth basket"] {
            let error = expand_service_lists(args(line)).expect_err(line);
            assert!(
                error.contains("basket") && error.contains("inventory") && error.contains("all"),
                "{error}"
            );
        }
    }

    #[test]
    fn a_service_list_parses_into_serve_all() {
        let matches = command()
            .try_get_matches_from(args(
                "commerce serve all --services=order,payment --postgres-admin-url=postgres://u:p@h/db",
            ))
            .expect("parses");
        let cli = Cli::from_arg_matches(&matches).expect("builds");
        let Command::Serve { target: ServeTarget::All(all) } = cli.command else { panic!("{cli:?}") };
        assert_eq!(all.services, [Service::Order, Service::Payment]);
    }

    #[test]
    fn load_takes_the_shops_flags_and_passes_goose_options_through() {
        let matches = command()
            .try_get_matches_from(args(
                "commerce load --host http://shop.example.com -u 4 -r 2 -t 5m --report-file run.html \
                 --report-file run.json --cancel-every 3 --order-timeout 10s",
            ))
            .expect("parses");
        let cli = Cli::from_arg_matches(&matches).expect("builds");
        let Command::Load(load) = cli.command else { panic!("{cli:?}") };
        assert_eq!(load.goose.host.as_deref(), Some("http://shop.example.com"));
        assert_eq!(load.goose.users, Some(4));
        assert_eq!(load.goose.increase_rate.as_deref(), Some("2"));
        assert_eq!(load.goose.run_time.as_deref(), Some("5m"));
        assert_eq!(load.goose.report_file, ["run.html", "run.json"]);
        assert_eq!(load.card_token, "tok_visa");
        assert_eq!((load.cancel_every, load.order_timeout), (3, Duration::from_secs(10)));
    }

    #[test]
    fn load_help_shows_the_shops_defaults_and_the_host_variable() {
        let mut command = command();
        let load = command.find_subcommand_mut("load").expect("a load subcommand");
        let help = load.render_long_help().to_string();
        for expected in ["COMMERCE_LOAD_HOST", "http://127.0.0.1:8080", "[default: 10]", "--report-file"] {
            assert!(help.contains(expected), "{expected} missing from:\n{help}");
        }
        assert!(!help.contains("one per CPU"), "goose's own default of --users shows:\n{help}");
    }
}
