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
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_flags_are_well_formed_and_each_has_a_commerce_environment_variable() {
        commerce_platform::config::assert_service_flags::<super::Config>();
    }
}
