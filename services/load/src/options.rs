//! The flags of `commerce load`: the shop's own (payment token, cancellation
//! rate, order timeout, think time) and every option of goose, flattened in
//! as goose declares them, so `--users`, `--increase-rate`, `--run-time`,
//! `--report-file`, `--threshold`, `--scenarios` and the rest pass through
//! unchanged. Where the command line leaves goose's load shape open, the run
//! gets the defaults below instead of goose's own, and the help says so.

use std::time::Duration;

use goose::config::GooseConfiguration;

/// Users when `--users` is not given (goose would start one per CPU): at
/// the 3:1 weights of the scenarios, 7 visitors and 3 buyers.
pub const DEFAULT_USERS: usize = 10;
/// Users started per second when neither `--increase-rate` nor
/// `--increase-time` is given. Slow enough that the buyers' sign-ups (two
/// password hashes each) stay inside the local shop's burst of 10 calls to
/// `/api/auth/` per client.
pub const DEFAULT_INCREASE_RATE: &str = "2";
/// How long the users run once all have started, when neither `--run-time`
/// nor `--iterations` is given: goose would run until Ctrl-C, and a load
/// generator should stop by itself.
pub const DEFAULT_RUN_TIME: &str = "1m";
/// Seconds between two prints of the running metrics (the live progress),
/// unless `--running-metrics` says otherwise.
pub const DEFAULT_RUNNING_METRICS: usize = 15;
/// The card token the mock payment provider (the local shop's) captures;
/// its other test tokens decline or fail on purpose.
pub const DEFAULT_CARD_TOKEN: &str = "tok_visa";

/// Flags of `commerce load`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Payment method token of every checkout. The local shop's mock
    /// provider captures `tok_visa`; a shop with a real provider needs one of
    /// that provider's test tokens.
    #[arg(long = "card-token", env = "COMMERCE_LOAD_CARD_TOKEN", default_value = DEFAULT_CARD_TOKEN, help_heading = "Shop")]
    pub card_token: String,
    /// A buyer cancels its first confirmed order and every Nth after it,
    /// which runs the saga's compensation (refund, restock); 0 cancels none.
    #[arg(
        long = "cancel-every",
        env = "COMMERCE_LOAD_CANCEL_EVERY",
        default_value_t = 5,
        help_heading = "Shop"
    )]
    pub cancel_every: u64,
    /// How long a buyer follows a placed order until it is confirmed; an
    /// order that is not confirmed by then counts as a failed request.
    #[arg(long = "order-timeout", env = "COMMERCE_LOAD_ORDER_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, help_heading = "Shop")]
    pub order_timeout: Duration,
    /// Longest pause of a user between two of its transactions (each pause
    /// is random, up to this). 0s: no pause, the most load per user.
    #[arg(long = "think-time", env = "COMMERCE_LOAD_THINK_TIME", default_value = "0s", value_parser = humantime::parse_duration, help_heading = "Shop")]
    pub think_time: Duration,
    /// Goose's own options.
    #[command(flatten)]
    pub goose: GooseConfiguration,
}

/// The gateway of the local shop (`make up`, `commerce local up`), the
/// default target.
pub fn local_gateway() -> String {
    format!("http://127.0.0.1:{}", commerce_topology::LOCAL_HTTP_PORT)
}

/// Tells goose's flags inside `commerce load` about this command: `--host`
/// also reads `COMMERCE_LOAD_HOST`, the flags whose default this crate
/// changes show that default instead of goose's, and goose's `-V` (the
/// goose version) replaces clap's version flag, which would clash with it.
pub fn describe_defaults(load: clap::Command) -> clap::Command {
    fn short(arg: clap::Arg, help: String) -> clap::Arg {
        // Goose's long help describes goose's default; the short one, with
        // ours, serves `--help` too.
        arg.help(help).long_help(None::<&'static str>)
    }
    load.disable_version_flag(true)
        .mut_arg("host", |arg| {
            short(
                arg.env("COMMERCE_LOAD_HOST"),
                format!(
                    "The shop's gateway: the local shop's, or a cluster's Ingress URL such as \
                 http://shop.example.com [default: {}]",
                    local_gateway()
                ),
            )
        })
        .mut_arg("users", |arg| short(arg, format!("Concurrent users [default: {DEFAULT_USERS}]")))
        .mut_arg("increase_rate", |arg| {
            short(arg, format!("Users started per second [default: {DEFAULT_INCREASE_RATE}]"))
        })
        .mut_arg("run_time", |arg| {
            short(
                arg,
                format!("Run this long after all users start, such as 5m [default: {DEFAULT_RUN_TIME}]"),
            )
        })
        .mut_arg("running_metrics", |arg| {
            short(arg, format!("Print running metrics every N seconds [default: {DEFAULT_RUNNING_METRICS}]"))
        })
        .mut_arg("no_telnet", |arg| {
            short(
                arg,
                "Disable the telnet Controller [on in commerce load, unless --no-autostart]".to_owned(),
            )
        })
        .mut_arg("no_reset_metrics", |arg| {
            short(
                arg,
                "Keep metrics from the ramp up [on in commerce load; --iterations and --test-plan \
             never reset them]"
                    .to_owned(),
            )
        })
}

/// `config` with this crate's defaults where the command line left goose's
/// choice open, skipping every default that goose would refuse beside what
/// was given (a test plan sets its own users and times, `--iterations`
/// takes no run time):
/// - the local shop's gateway as host;
/// - [`DEFAULT_USERS`] users started at [`DEFAULT_INCREASE_RATE`] a second
///   for [`DEFAULT_RUN_TIME`], and running metrics every
///   [`DEFAULT_RUNNING_METRICS`] seconds;
/// - metrics kept from the ramp up, so that the buyers' sign-ups (made while
///   users start) and any error then are in the summary and the report;
/// - no telnet Controller (goose opens one on 127.0.0.1:5116 by default),
///   unless `--no-autostart` waits for a Controller.
pub fn with_shop_defaults(mut config: GooseConfiguration) -> GooseConfiguration {
    config.host.get_or_insert_with(local_gateway);
    let planned = has_test_plan(&config);
    let counted = config.iterations.is_some_and(|iterations| iterations > 0);
    if !planned {
        config.users.get_or_insert(DEFAULT_USERS);
        if config.increase_time.is_none() {
            config.increase_rate.get_or_insert_with(|| DEFAULT_INCREASE_RATE.to_owned());
        }
        if !counted {
            config.run_time.get_or_insert_with(|| DEFAULT_RUN_TIME.to_owned());
            config.no_reset_metrics = true;
        }
    }
    config.running_metrics.get_or_insert(DEFAULT_RUNNING_METRICS);
    if !config.no_autostart {
        config.no_telnet = true;
    }
    config
}

/// Whether the run sends load (rather than printing goose's version, its
/// scenario list, or rendering a report from an earlier run's JSON).
pub fn runs_load(config: &GooseConfiguration) -> bool {
    !(config.version || config.list || config.scenarios_list || config.render_report.is_some())
}

/// Whether `--test-plan` was given. Goose keeps the parsed plan private but
/// serializes it with the rest of the configuration.
fn has_test_plan(config: &GooseConfiguration) -> bool {
    serde_json::to_value(config).is_ok_and(|value| !value["test_plan"].is_null())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> GooseConfiguration {
        GooseConfiguration::parse_args_default(args).expect("goose parses the flags")
    }

    #[test]
    fn an_empty_command_line_gets_the_shops_defaults() {
        let config = with_shop_defaults(parsed(&[]));
        assert_eq!(config.host.as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(config.users, Some(DEFAULT_USERS));
        assert_eq!(config.increase_rate.as_deref(), Some(DEFAULT_INCREASE_RATE));
        assert_eq!(config.run_time.as_deref(), Some(DEFAULT_RUN_TIME));
        assert_eq!(config.running_metrics, Some(DEFAULT_RUNNING_METRICS));
        assert!(config.no_reset_metrics);
        assert!(config.no_telnet);
    }

    #[test]
    fn given_options_win_over_the_defaults() {
        let config = with_shop_defaults(parsed(&[
            "--host",
            "https://shop.example.com",
            "-u",
            "3",
            "-r",
            "1.5",
            "-t",
            "5m",
            "--running-metrics",
            "60",
        ]));
        assert_eq!(config.host.as_deref(), Some("https://shop.example.com"));
        assert_eq!(config.users, Some(3));
        assert_eq!(config.increase_rate.as_deref(), Some("1.5"));
        assert_eq!(config.run_time.as_deref(), Some("5m"));
        assert_eq!(config.running_metrics, Some(60));
    }

    #[test]
    fn a_test_plan_keeps_its_own_users_and_times() {
        let config = with_shop_defaults(parsed(&["--test-plan", "4,10s;4,30s;0,5s"]));
        assert_eq!(config.users, None);
        assert_eq!(config.increase_rate, None);
        assert_eq!(config.run_time, None);
        assert!(!config.no_reset_metrics, "goose refuses --no-reset-metrics with a test plan");
    }

    #[test]
    fn iterations_get_users_but_no_run_time() {
        let config = with_shop_defaults(parsed(&["--iterations", "3"]));
        assert_eq!(config.users, Some(DEFAULT_USERS));
        assert_eq!(config.run_time, None);
        assert!(!config.no_reset_metrics, "goose refuses --no-reset-metrics with --iterations");
    }

    #[test]
    fn an_increase_time_replaces_the_default_increase_rate() {
        let config = with_shop_defaults(parsed(&["--increase-time", "20s"]));
        assert_eq!(config.increase_rate, None);
        assert_eq!(config.increase_time.as_deref(), Some("20s"));
    }

    #[test]
    fn waiting_for_a_controller_keeps_the_telnet_controller() {
        assert!(!with_shop_defaults(parsed(&["--no-autostart"])).no_telnet);
    }

    #[test]
    fn information_flags_send_no_load() {
        assert!(runs_load(&parsed(&[])));
        for flag in ["--list", "--scenarios-list"] {
            assert!(!runs_load(&parsed(&[flag])), "{flag}");
        }
        assert!(!runs_load(&parsed(&["--render-report", "old.json", "--report-file", "old.html"])));
    }
}
