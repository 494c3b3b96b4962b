//! The cart's flags: the platform's shared groups (Redis, peers, resilient
//! clients) plus the cart's own limits and lifetime.

use std::time::Duration;

use commerce_platform::config::CommonArgs;
use commerce_platform::discovery::PeerArgs;
use commerce_platform::events::KafkaArgs;
use commerce_platform::redis::RedisArgs;
use commerce_platform::resilience::ClientArgs;

use crate::domain::Limits;

/// Everything `commerce serve cart` reads from flags or `COMMERCE_*`
/// variables.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub peers: PeerArgs,
    #[command(flatten)]
    pub cart: CartSettings,
    /// Where the cart's events go (see `events`).
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// The cart's own settings.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Cart")]
pub struct CartSettings {
    /// How long a cart lives after its last change.
    #[arg(
        long = "cart-ttl",
        id = "cart-ttl",
        env = "COMMERCE_CART_TTL",
        default_value = "24h",
        value_parser = humantime::parse_duration
    )]
    pub ttl: Duration,
    /// Most units of one product in a cart: a shop's "max per customer",
    /// and a guard against typos holding a product's whole stock.
    #[arg(
        long = "cart-max-line-quantity",
        id = "cart-max-line-quantity",
        env = "COMMERCE_CART_MAX_LINE_QUANTITY",
        default_value_t = 99
    )]
    pub max_line_quantity: u32,
    /// Most different products in one cart: bounds the size of a cart's
    /// hash and of the catalog and inventory calls that price it.
    #[arg(
        long = "cart-max-lines",
        id = "cart-max-lines",
        env = "COMMERCE_CART_MAX_LINES",
        default_value_t = 100
    )]
    pub max_lines: usize,
}

impl Default for CartSettings {
    fn default() -> Self {
        Self { ttl: Duration::from_secs(24 * 3600), max_line_quantity: 99, max_lines: 100 }
    }
}

impl CartSettings {
    /// The limits the domain enforces.
    pub fn limits(&self) -> Limits {
        Limits { max_line_quantity: self.max_line_quantity, max_lines: self.max_lines }
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
    fn the_command_is_well_formed_and_the_cart_lives_a_day_by_default() {
        commerce_platform::config::assert_service_flags::<Config>();
        let cli = Cli::try_parse_from(["cart", "--cart-max-line-quantity=10"]).expect("flags parse");
        assert_eq!(cli.config.cart.ttl, Duration::from_secs(86_400));
        assert_eq!(cli.config.cart.limits(), Limits { max_line_quantity: 10, max_lines: 100 });
    }
}
