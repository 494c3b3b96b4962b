//! The notification service's flags: the platform's groups, and the email
//! channel's.

use std::time::Duration;

use commerce_platform::config::CommonArgs;
use commerce_platform::db::DatabaseArgs;
use commerce_platform::events::KafkaArgs;

/// Everything `serve` needs; flattened into the `commerce` binary's CLI.
/// `Debug` is derived: the secrets in it (the database URL, Kafka
/// properties, the SMTP URL's password) are redacted by their groups' own
/// `Debug`.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub email: EmailArgs,
}

/// The email channel: off unless an SMTP server is given.
#[derive(Clone, clap::Args)]
#[command(next_help_heading = "Email")]
pub struct EmailArgs {
    /// The SMTP server that takes the shop's email, as lettre reads it:
    /// `smtp://host:port` (plain, for a relay on the same host or node),
    /// `smtp://host:587?tls=required` (STARTTLS) or `smtps://host:465`
    /// (TLS). Empty: no email is sent, the in-app inbox works alone.
    #[arg(long = "email-smtp-url", env = "COMMERCE_EMAIL_SMTP_URL", default_value = "")]
    pub smtp_url: String,
    /// The SMTP user name, when the server wants a login (with the password
    /// it replaces credentials in the URL, which need no escaping here).
    #[arg(long = "email-smtp-username", env = "COMMERCE_EMAIL_SMTP_USERNAME", default_value = "")]
    pub smtp_username: String,
    /// The SMTP password.
    #[arg(
        long = "email-smtp-password",
        env = "COMMERCE_EMAIL_SMTP_PASSWORD",
        default_value = "",
        hide_env_values = true
    )]
    pub smtp_password: String,
    /// The sender of every email.
    #[arg(
        long = "email-from",
        env = "COMMERCE_EMAIL_FROM",
        default_value = "commerce-stack <no-reply@shop.local>"
    )]
    pub from: String,
    /// Sending attempts of one email before it is dead-lettered; an answer
    /// the server means for good (5xx) dead-letters it at once.
    #[arg(long = "email-max-attempts", env = "COMMERCE_EMAIL_MAX_ATTEMPTS", default_value_t = 8)]
    pub max_attempts: u32,
    /// Delay before the second attempt; it doubles with each failure, up to
    /// five minutes.
    #[arg(
        long = "email-retry-backoff",
        env = "COMMERCE_EMAIL_RETRY_BACKOFF",
        default_value = "2s",
        value_parser = humantime::parse_duration
    )]
    pub retry_backoff: Duration,
    /// How often the mailer looks for due email when nothing woke it.
    #[arg(
        long = "email-poll-interval",
        env = "COMMERCE_EMAIL_POLL_INTERVAL",
        default_value = "1s",
        value_parser = humantime::parse_duration
    )]
    pub poll_interval: Duration,
}

impl EmailArgs {
    /// Whether the email channel is on.
    pub fn enabled(&self) -> bool {
        !self.smtp_url.trim().is_empty()
    }
}

impl std::fmt::Debug for EmailArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailArgs")
            .field("smtp_url", &commerce_platform::url::redact(&self.smtp_url))
            .field("smtp_username", &self.smtp_username)
            .field("smtp_password", &if self.smtp_password.is_empty() { "" } else { "***" })
            .field("from", &self.from)
            .field("max_attempts", &self.max_attempts)
            .field("retry_backoff", &self.retry_backoff)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_flags_are_well_formed_and_each_has_a_commerce_environment_variable() {
        commerce_platform::config::assert_service_flags::<super::Config>();
    }
}
