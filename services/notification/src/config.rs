//! The notification service's flags: the platform's groups.

use commerce_platform::config::CommonArgs;
use commerce_platform::db::DatabaseArgs;
use commerce_platform::events::KafkaArgs;

/// Everything `serve` needs; flattened into the `commerce` binary's CLI.
#[derive(Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// The database URL is a secret: `Debug` goes through `DatabaseArgs`' redacting one.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("common", &self.common)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    /// The binary's view of this service's flags.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: super::Config,
    }

    #[test]
    fn the_flags_are_well_formed_and_each_has_a_commerce_environment_variable() {
        let command = Cli::command();
        command.clone().debug_assert();
        for arg in command.get_arguments().filter(|arg| arg.get_long().is_some()) {
            let env = arg.get_env().and_then(|env| env.to_str()).unwrap_or_default();
            assert!(env.starts_with("COMMERCE_"), "--{} has env {env:?}", arg.get_long().unwrap_or_default());
        }
    }
}
