//! The analytics service's flags: the platform's groups.

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
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_flags_are_well_formed_and_each_has_a_commerce_environment_variable() {
        commerce_platform::config::assert_service_flags::<super::Config>();
    }
}
