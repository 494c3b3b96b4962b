//! The catalog service's flags: the platform's shared groups (gRPC, admin,
//! logs, database, Kafka, Redis) plus the demo seed switch.

use commerce_platform::config::CommonArgs;
use commerce_platform::db::DatabaseArgs;
use commerce_platform::events::KafkaArgs;
use commerce_platform::redis::RedisArgs;

/// Everything `serve` needs.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Insert the demo catalog (four categories, twenty products) at start-up
    /// if missing; for local and demo stacks.
    #[arg(long = "seed-demo-catalog", id = "seed-demo-catalog", env = "COMMERCE_SEED_DEMO_CATALOG")]
    pub seed_demo_catalog: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_is_well_formed() {
        commerce_platform::config::assert_service_flags::<Config>();
    }
}
