//! The audit service's flags: the platform's groups plus retention.

use std::time::Duration;

use commerce_platform::config::CommonArgs;
use commerce_platform::db::DatabaseArgs;
use commerce_platform::events::KafkaArgs;

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
    /// How long entries are kept, counted from when they were recorded;
    /// older ones are removed from the start of the chain, which stays
    /// verifiable from the last one removed. `0s` keeps every entry.
    #[arg(long = "audit-retention", env = "COMMERCE_AUDIT_RETENTION", default_value = "400days", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// How often retention runs.
    #[arg(long = "audit-retention-interval", env = "COMMERCE_AUDIT_RETENTION_INTERVAL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub retention_interval: Duration,
    /// Events recorded per transaction at most (1: one transaction per
    /// event).
    #[arg(long = "audit-batch-events", env = "COMMERCE_AUDIT_BATCH_EVENTS", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..))]
    pub batch_events: u16,
    /// How long a consumer lane gathers events before recording them: the
    /// trail lags by up to this much, and the shop's database sees that
    /// many fewer commits.
    #[arg(long = "audit-batch-linger", env = "COMMERCE_AUDIT_BATCH_LINGER", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub batch_linger: Duration,
}

impl Config {
    /// How the consumer groups events into transactions.
    pub fn batching(&self) -> commerce_platform::events::Batching {
        commerce_platform::events::Batching {
            max_events: usize::from(self.batch_events),
            linger: self.batch_linger,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_flags_are_well_formed_and_each_has_a_commerce_environment_variable() {
        commerce_platform::config::assert_service_flags::<super::Config>();
    }
}
