//! Configuration shared by every service: clap argument groups that each
//! service's own `Config` flattens, so that one flag means the same thing in
//! every service and every flag has a `COMMERCE_*` environment variable (what
//! the operator's Deployments set).
//!
//! The groups live next to the code they configure:
//! [`LogArgs`](crate::telemetry::LogArgs), [`AdminArgs`](crate::admin::AdminArgs),
//! [`GrpcArgs`](crate::grpc::GrpcArgs), [`ClientArgs`](crate::resilience::ClientArgs),
//! [`PeerArgs`](crate::discovery::PeerArgs), [`RedisArgs`](crate::redis::RedisArgs).
//! [`CommonArgs`] bundles the ones every service has.
//!
//! Every argument's clap id is its long flag name (`id = "grpc-addr"`), not
//! its field name: groups are flattened side by side, and two `addr` fields
//! would otherwise collide (clap's `debug_assert` in the tests catches it).
//!
//! ```ignore
//! #[derive(clap::Args)]
//! pub struct Config {
//!     #[command(flatten)]
//!     pub common: CommonArgs,
//!     #[command(flatten)]
//!     pub redis: RedisArgs,
//! }
//! ```

use crate::admin::AdminArgs;
use crate::grpc::GrpcArgs;
use crate::telemetry::LogArgs;

/// Flags every service has: logging, the admin server, the gRPC server.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CommonArgs {
    /// Log format and filter.
    #[command(flatten)]
    pub log: LogArgs,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Where the service's gRPC API is served, and how long it drains.
    #[command(flatten)]
    pub grpc: GrpcArgs,
}

/// Asserts what every service's `Config` must hold, for its unit tests:
/// clap accepts the flattened command (no two flags or ids clash, which
/// clap only reports at parse time otherwise) and every long flag has a
/// `COMMERCE_*` environment variable, which is how the operator's
/// Deployments configure the service. Panics naming the offending flag.
pub fn assert_service_flags<C: clap::Args>() {
    let command = C::augment_args(clap::Command::new("commerce"));
    command.clone().debug_assert();
    for arg in command.get_arguments().filter(|arg| arg.get_long().is_some()) {
        let env = arg.get_env().and_then(|env| env.to_str()).unwrap_or_default();
        assert!(env.starts_with("COMMERCE_"), "--{} has env {env:?}", arg.get_long().unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use clap::{CommandFactory, Parser};
    use commerce_topology::Service;

    use super::*;
    use crate::discovery::PeerArgs;
    use crate::redis::RedisArgs;
    use crate::resilience::ClientArgs;
    use crate::telemetry::LogFormat;

    /// A binary's view: every group flattened, as a service would.
    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        peers: PeerArgs,
        #[command(flatten)]
        redis: RedisArgs,
    }

    /// Parses `args` as if no `COMMERCE_*` variable were set, whatever the
    /// environment of the test run.
    fn parse(args: &[&str]) -> Result<TestCli, clap::Error> {
        use clap::FromArgMatches;
        let mut command = TestCli::command();
        for id in command.get_arguments().map(|arg| arg.get_id().clone()).collect::<Vec<_>>() {
            command = command.mut_arg(id, |arg| arg.env(None::<&str>));
        }
        let matches =
            command.try_get_matches_from(std::iter::once("commerce").chain(args.iter().copied()))?;
        TestCli::from_arg_matches(&matches)
    }

    /// Set in the child process of the environment test.
    const CHILD_MARKER: &str = "COMMERCE_PLATFORM_CONFIG_TEST_CHILD";

    #[test]
    fn the_command_is_well_formed() {
        TestCli::command().debug_assert();
    }

    #[test]
    fn every_flag_has_a_commerce_environment_variable() {
        let command = TestCli::command();
        for arg in command.get_arguments().filter(|arg| arg.get_long().is_some()) {
            let env = arg.get_env().and_then(|env| env.to_str()).unwrap_or_default();
            assert!(env.starts_with("COMMERCE_"), "--{} has env {env:?}", arg.get_long().unwrap_or_default());
        }
    }

    #[test]
    fn defaults_need_no_flags() {
        let cli = parse(&[]).expect("defaults parse");
        assert_eq!(cli.common.log.format, LogFormat::Json);
        assert_eq!(cli.common.log.filter, "info");
        assert_eq!(cli.common.admin.addr, "0.0.0.0:9090".parse::<SocketAddr>().expect("addr"));
        assert_eq!(cli.common.grpc.addr, "0.0.0.0:50051".parse::<SocketAddr>().expect("addr"));
        assert_eq!(cli.common.grpc.shutdown_grace, Duration::from_secs(20));
        assert_eq!(cli.client, ClientArgs::default());
        assert!(cli.peers.peers.is_empty());
        assert_eq!(cli.peers.resolve_interval, Duration::from_secs(5));
    }

    #[test]
    fn flags_parse_with_humantime_durations_and_repeated_peers() {
        let cli = parse(&[
            "--log-format=text",
            "--log-filter=debug,h2=info",
            "--admin-addr=127.0.0.1:9101",
            "--grpc-addr=127.0.0.1:50052",
            "--grpc-shutdown-grace=1m 30s",
            "--client-deadline=750ms",
            "--client-max-retries=4",
            "--client-backoff-base=10ms",
            "--client-backoff-cap=2s",
            "--client-breaker-failures=3",
            "--client-breaker-open=30s",
            "--client-breaker-half-open-probes=2",
            "--peer=catalog=http://catalog-headless:50051",
            "--peer",
            "inventory=http://inventory-headless:50051",
            "--redis-url=redis://127.0.0.1:56379",
        ])
        .expect("flags parse");
        assert_eq!(cli.common.log.format, LogFormat::Text);
        assert_eq!(cli.common.log.filter, "debug,h2=info");
        assert_eq!(cli.common.grpc.shutdown_grace, Duration::from_secs(90));
        assert_eq!(
            cli.client,
            ClientArgs {
                deadline: Duration::from_millis(750),
                max_retries: 4,
                backoff_base: Duration::from_millis(10),
                backoff_cap: Duration::from_secs(2),
                breaker_failures: 3,
                breaker_open: Duration::from_secs(30),
                half_open_probes: 2,
            }
        );
        let services: Vec<Service> = cli.peers.peers.iter().map(|peer| peer.service).collect();
        assert_eq!(services, [Service::Catalog, Service::Inventory]);
        assert_eq!(cli.redis.url, "redis://127.0.0.1:56379");
    }

    /// Environment variables are read by clap from the real process
    /// environment, which a test must not change in-process (`set_var` is
    /// unsafe and races other test threads), so this test runs
    /// [`environment_child`] in a child process with the variables set.
    #[test]
    fn environment_variables_parse_and_flags_override_them() {
        let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"));
        child.args(["--exact", "config::tests::environment_child", "--nocapture"]);
        for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("COMMERCE_")) {
            child.env_remove(name);
        }
        child
            .env(CHILD_MARKER, "1")
            .env("COMMERCE_LOG_FORMAT", "text")
            .env("COMMERCE_GRPC_SHUTDOWN_GRACE", "5s")
            .env("COMMERCE_CLIENT_MAX_RETRIES", "7")
            .env("COMMERCE_CLIENT_DEADLINE", "300ms")
            .env("COMMERCE_PEERS", "catalog=http://catalog-headless:50051,order=http://order-headless:50051")
            .env("COMMERCE_REDIS_URL", "redis://redis:6379");
        let output = child.output().expect("run the child test");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "child failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("environment parsed"), "the child did not run the check:\n{stdout}");
    }

    /// The child half of the test above; does nothing when run directly.
    #[test]
    fn environment_child() {
        if std::env::var_os(CHILD_MARKER).is_none() {
            return;
        }
        let cli = TestCli::try_parse_from(["commerce", "--client-max-retries=1"]).expect("env parses");
        assert_eq!(cli.common.log.format, LogFormat::Text);
        assert_eq!(cli.common.grpc.shutdown_grace, Duration::from_secs(5));
        assert_eq!(cli.client.max_retries, 1, "a flag overrides its variable");
        assert_eq!(cli.client.deadline, Duration::from_millis(300));
        let services: Vec<Service> = cli.peers.peers.iter().map(|peer| peer.service).collect();
        assert_eq!(services, [Service::Catalog, Service::Order]);
        assert_eq!(cli.peers.target(Service::Order).and_then(|peer| peer.uri.host()), Some("order-headless"));
        assert_eq!(cli.redis.url, "redis://redis:6379");
        println!("environment parsed");
    }

    #[test]
    fn invalid_values_are_rejected_with_the_flag_named() {
        for args in [
            &["--grpc-shutdown-grace=soon"][..],
            &["--client-breaker-failures=0"],
            &["--peer=shop=http://shop:1"],
            &["--log-format=xml"],
        ] {
            let error = parse(args).expect_err("invalid").to_string();
            let flag = args[0].split('=').next().unwrap_or_default();
            assert!(error.contains(flag), "{args:?}: {error}");
        }
    }
}
