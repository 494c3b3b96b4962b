//! The order service's flags: the platform's groups plus its own.

use std::time::Duration;

use commerce_platform::config::CommonArgs;
use commerce_platform::db::DatabaseArgs;
use commerce_platform::discovery::PeerArgs;
use commerce_platform::events::KafkaArgs;
use commerce_platform::resilience::ClientArgs;

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
    #[command(flatten)]
    pub client: ClientArgs,
    /// Where the catalog is (prices); unconfigured peers default to loopback.
    #[command(flatten)]
    pub peers: PeerArgs,
    /// How often the sweeper looks for open orders whose stock reservation
    /// lapsed. Short enough that an order fails within seconds of its
    /// reservation, cheap because the scan uses a partial index.
    #[arg(
        long = "order-reservation-sweep-interval",
        env = "COMMERCE_ORDER_RESERVATION_SWEEP_INTERVAL",
        default_value = "5s",
        value_parser = humantime::parse_duration
    )]
    pub reservation_sweep_interval: Duration,
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_flags_are_well_formed_and_each_has_a_commerce_environment_variable() {
        commerce_platform::config::assert_service_flags::<super::Config>();
    }
}
