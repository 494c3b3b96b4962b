//! The payment service's flags: the platform's groups, the worker's pacing
//! and the mock provider's behaviour.

use std::path::{Path, PathBuf};
use std::time::Duration;

use commerce_platform::config::CommonArgs;
use commerce_platform::db::DatabaseArgs;
use commerce_platform::events::KafkaArgs;
use commerce_platform::resilience::ClientArgs;

use crate::provider::MockSettings;
use crate::stripe::StripeSettings;
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
    /// Which provider charges and refunds: `mock` (in process, no money
    /// moves) or `stripe` (see `--stripe-*`). Any other name is refused at
    /// start-up rather than silently mocked.
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
    #[command(flatten)]
    pub stripe: StripeArgs,
}

/// The payment providers this build has an adapter for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// The deterministic in-process provider (see `provider`).
    Mock,
    /// Stripe's PaymentIntents (see `stripe`).
    Stripe,
}

fn parse_provider(name: &str) -> Result<ProviderKind, String> {
    match name.trim() {
        "mock" => Ok(ProviderKind::Mock),
        "stripe" => Ok(ProviderKind::Stripe),
        other => Err(format!(
            "payment provider {other:?} is not available in this build; the providers are \"mock\" and \"stripe\""
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

/// The Stripe adapter (`--payment-provider=stripe`). The secrets are read
/// from files, as the operator mounts them from the stack's
/// `payment.credentialsSecret`, so that they appear in no process listing
/// and no environment.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Stripe payment provider")]
pub struct StripeArgs {
    /// Stripe's API, or a stripe-mock in tests.
    #[arg(
        long = "stripe-api-base",
        env = "COMMERCE_STRIPE_API_BASE",
        default_value = "https://api.stripe.com"
    )]
    pub api_base: String,
    /// File holding the secret API key (`sk_live_...`); required with
    /// `--payment-provider=stripe`.
    #[arg(long = "stripe-secret-key-file", env = "COMMERCE_STRIPE_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// File holding the webhook endpoint's signing secret (`whsec_...`).
    /// Unset, or naming a file that does not exist (a credentials Secret
    /// without that key): webhooks are refused, and outcomes Stripe settles
    /// later (a payment still processing) are noticed by the worker's
    /// retries only.
    #[arg(long = "stripe-webhook-secret-file", env = "COMMERCE_STRIPE_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Longest wait for one call to Stripe.
    #[arg(long = "stripe-timeout", env = "COMMERCE_STRIPE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// What the Stripe adapter was configured with, its secrets read.
#[derive(Debug, Clone)]
pub struct StripeConfig {
    pub settings: StripeSettings,
    /// The webhook signing secret, if webhooks are on.
    pub webhook_secret: Option<WebhookSecret>,
}

/// A webhook signing secret; `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(pub String);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl StripeArgs {
    /// Reads the secrets; the error names the flag and the file.
    pub fn load(&self) -> Result<StripeConfig, String> {
        let secret_key_file = self.secret_key_file.as_ref().ok_or_else(|| {
            "--payment-provider=stripe needs --stripe-secret-key-file (COMMERCE_STRIPE_SECRET_KEY_FILE)"
                .to_owned()
        })?;
        let secret_key = read_secret("--stripe-secret-key-file", secret_key_file)?;
        let webhook_secret = match &self.webhook_secret_file {
            Some(path) if !path.exists() => {
                tracing::warn!(path = %path.display(), "no Stripe webhook signing secret; webhooks are refused");
                None
            }
            Some(path) => Some(WebhookSecret(read_secret("--stripe-webhook-secret-file", path)?)),
            None => None,
        };
        url::Url::parse(&self.api_base)
            .map_err(|error| format!("--stripe-api-base {:?} is not a URL: {error}", self.api_base))?;
        Ok(StripeConfig {
            settings: StripeSettings { api_base: self.api_base.clone(), secret_key, timeout: self.timeout },
            webhook_secret,
        })
    }
}

/// The trimmed contents of a secret's file, which must not be empty.
fn read_secret(flag: &str, path: &Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|error| format!("{flag} {}: {error}", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!("{flag} {} is empty", path.display()));
    }
    Ok(secret.to_owned())
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
        let cli =
            Cli::try_parse_from(required.into_iter().chain(["--payment-provider=stripe"])).expect("stripe");
        assert_eq!(cli.config.provider, super::ProviderKind::Stripe);
        let error = Cli::try_parse_from(required.into_iter().chain(["--payment-provider=adyen"]))
            .err()
            .expect("adyen is refused")
            .to_string();
        assert!(
            error.contains("--payment-provider") && error.contains("\"adyen\" is not available"),
            "{error}"
        );
    }

    #[test]
    fn stripe_needs_a_secret_key_file_that_is_not_empty_and_names_the_flag_when_it_is_missing() {
        let required = ["payment", "--database-url=postgres://a@b/c", "--kafka-brokers=k:9092"];
        let cli = Cli::try_parse_from(required).expect("defaults parse");
        let error = cli.config.stripe.load().expect_err("no key file");
        assert!(error.contains("--stripe-secret-key-file"), "{error}");

        let dir = std::env::temp_dir().join(format!("commerce-stripe-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let key = dir.join("secretKey");
        std::fs::write(&key, "  \n").expect("written");
        let with_key = format!("--stripe-secret-key-file={}", key.display());
        let cli = Cli::try_parse_from(required.into_iter().chain([with_key.as_str()])).expect("parses");
        let error = cli.config.stripe.load().expect_err("empty key");
        assert!(error.contains("is empty") && error.contains("secretKey"), "{error}");

        std::fs::write(&key, "sk_test_123\n").expect("written");
        let webhook = dir.join("webhookSecret");
        std::fs::write(&webhook, "whsec_abc").expect("written");
        let with_webhook = format!("--stripe-webhook-secret-file={}", webhook.display());
        let cli = Cli::try_parse_from(required.into_iter().chain([with_key.as_str(), with_webhook.as_str()]))
            .expect("parses");
        let loaded = cli.config.stripe.load().expect("loads");
        assert_eq!(loaded.settings.secret_key, "sk_test_123");
        assert_eq!(loaded.webhook_secret, Some(super::WebhookSecret("whsec_abc".to_owned())));
        assert!(
            !format!("{loaded:?}").contains("whsec_abc") && !format!("{loaded:?}").contains("sk_test_123")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
