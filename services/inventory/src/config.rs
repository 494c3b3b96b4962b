//! The inventory's flags: the platform's shared groups plus how long
//! reservations hold stock.

use std::time::Duration;

use commerce_platform::config::CommonArgs;
use commerce_platform::db::DatabaseArgs;
use commerce_platform::events::KafkaArgs;

/// Everything `commerce serve inventory` reads from flags or `COMMERCE_*`
/// variables.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub reservations: ReservationSettings,
}

/// How long reservations hold stock.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Reservations")]
pub struct ReservationSettings {
    /// How long a reservation holds its stock when the request names no TTL
    /// (every reservation made for an OrderPlaced). Fifteen minutes covers
    /// a payment provider's slow path; the order service fails orders still
    /// unpaid past it, and inventory releases on that failure.
    #[arg(
        long = "inventory-reservation-ttl",
        id = "inventory-reservation-ttl",
        env = "COMMERCE_INVENTORY_RESERVATION_TTL",
        default_value = "15m",
        value_parser = humantime::parse_duration
    )]
    pub default_ttl: Duration,
    /// Longest TTL a Reserve call may ask for: stock held longer than this is
    /// stock nobody else can buy.
    #[arg(
        long = "inventory-reservation-max-ttl",
        id = "inventory-reservation-max-ttl",
        env = "COMMERCE_INVENTORY_RESERVATION_MAX_TTL",
        default_value = "2h",
        value_parser = humantime::parse_duration
    )]
    pub max_ttl: Duration,
}

impl Default for ReservationSettings {
    fn default() -> Self {
        Self { default_ttl: Duration::from_secs(15 * 60), max_ttl: Duration::from_secs(2 * 3600) }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn the_command_is_well_formed_and_reservation_ttls_default() {
        commerce_platform::config::assert_service_flags::<Config>();
        let cli = Cli::try_parse_from([
            "inventory",
            "--database-url=postgres://u:p@h/commerce_inventory",
            "--kafka-brokers=127.0.0.1:59092",
        ])
        .expect("flags parse");
        assert_eq!(cli.config.reservations, ReservationSettings::default());
        let cli = Cli::try_parse_from([
            "inventory",
            "--database-url=postgres://u:p@h/commerce_inventory",
            "--kafka-brokers=127.0.0.1:59092",
            "--inventory-reservation-ttl=5m",
        ])
        .expect("flags parse");
        assert_eq!(cli.config.reservations.default_ttl, Duration::from_secs(300));
    }
}
