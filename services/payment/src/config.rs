//! The payment service's flags: the platform's groups, the worker's pacing
//! and the mock provider's behaviour.

use std::time::Duration;

use commerce_platform::config::CommonArgs;
use commerce_platform::db::DatabaseArgs;
use commerce_platform::events::KafkaArgs;
use commerce_platform::resilience::ClientArgs;

use crate::provider::MockSettings;
use crate::worker::WorkerSettings;

/// Everything `serve` needs; flattened into the `commerce` binary's CLI.
/// `Debug` is derived: the secrets in it (the database URL, Kafka
/// properties) are redacted by their platform groups' own `Debug`.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Its `--client-breaker-failures` and `--client-breaker-open` also
    /// configure the breaker around the payment provider.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Which provider charges and refunds. Only `mock` is built in; any
    /// other name is refused at start-up rather than silently mocked.
    #[arg(
        long = "payment-provider",
        env = "COMMERCE_PAYMENT_PROVIDER",
        default_value = "mock",
        value_parser = parse_provider
    )]
    pub provider: ProviderKind,
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub mock: MockArgs,
}

/// The payment providers this build has an adapter for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// The deterministic in-process provider (see `provider`).
    Mock,
}

fn parse_provider(name: &str) -> Result<ProviderKind, String> {
    match name.trim() {
        "mock" => Ok(ProviderKind::Mock),
        other => Err(format!(
            "payment provider {other:?} is not available in this build; the only provider is \"mock\""
        )),
    }
}

/// How the charge/refund worker paces itself.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Payment worker")]
pub struct WorkerArgs {
    /// Longest pause between scans for due charges and refunds when none
    /// was due. Work made due by an event wakes the worker at once (Postgres
    /// NOTIFY), so this only bounds how late a retry falling due, or a
    /// notification lost while the listener reconnects, is noticed.
    #[arg(long = "payment-worker-poll-interval", env = "COMMERCE_PAYMENT_WORKER_POLL_INTERVAL", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// First delay before retrying a charge the provider could not take;
    /// doubles per attempt.
    #[arg(long = "payment-retry-base", env = "COMMERCE_PAYMENT_RETRY_BASE", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub retry_base: Duration,
    /// Longest delay between charge attempts: a provider that returns is
    /// used within this long.
    #[arg(long = "payment-retry-cap", env = "COMMERCE_PAYMENT_RETRY_CAP", default_value = "10s", value_parser = humantime::parse_duration)]
    pub retry_cap: Duration,
}

impl WorkerArgs {
    pub fn settings(&self) -> WorkerSettings {
        WorkerSettings {
            poll_interval: self.poll_interval,
            retry_base: self.retry_base,
            retry_cap: self.retry_cap,
        }
    }
}

/// The deterministic mock provider (see `provider` for its rules).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Mock payment provider")]
pub struct MockArgs {
    /// Decline every charge above this amount, in minor units (unset: no
    /// limit). Token `tok_decline` is always declined.
    #[arg(long = "mock-decline-amount-over", env = "COMMERCE_MOCK_DECLINE_AMOUNT_OVER")]
    pub decline_amount_over: Option<i64>,
    /// Delay of every provider call.
    #[arg(long = "mock-latency", env = "COMMERCE_MOCK_LATENCY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// Start with the provider switched unavailable (switch it on with
    /// `POST /mock-provider/available` on the admin port).
    #[arg(long = "mock-start-unavailable", env = "COMMERCE_MOCK_START_UNAVAILABLE", default_value_t = false)]
    pub start_unavailable: bool,
    /// Journal the mock's ledger (charges, voids, refunds) to this file and
    /// replay it at start, so that the mock remembers across a crash of the
    /// payment process which keys took money, as a real provider does; fault
    /// tests read it. Unset: the ledger lives in memory only.
    #[arg(long = "mock-ledger-file", env = "COMMERCE_MOCK_LEDGER_FILE")]
    pub ledger_file: Option<std::path::PathBuf>,
}

impl MockArgs {
    pub fn settings(&self) -> MockSettings {
        MockSettings {
            decline_amount_over: self.decline_amount_over,
            latency: self.latency,
            start_unavailable: self.start_unavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    /// The binary's view of this service's flags.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: super::Config,
    }

    #[test]
    fn the_flags_are_well_formed_and_each_has_a_commerce_environment_variable() {
        commerce_platform::config::assert_service_flags::<super::Config>();
    }

    #[test]
    fn the_mock_provider_is_the_default_and_an_unknown_provider_is_refused_by_name() {
        let required = ["payment", "--database-url=postgres://a@b/c", "--kafka-brokers=k:9092"];
        let cli = Cli::try_parse_from(required).expect("defaults parse");
        assert_eq!(cli.config.provider, super::ProviderKind::Mock);
        let cli = Cli::try_parse_from(required.into_iter().chain(["--payment-provider=mock"])).expect("mock");
        assert_eq!(cli.config.provider, super::ProviderKind::Mock);
        let error = Cli::try_parse_from(required.into_iter().chain(["--payment-provider=stripe"]))
            .err()
            .expect("stripe is refused")
            .to_string();
        assert!(
            error.contains("--payment-provider") && error.contains("\"stripe\" is not available"),
            "{error}"
        );
    }
}
