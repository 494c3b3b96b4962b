//! The auth service's flags: the platform's shared groups plus token
//! lifetimes, the signing key source and rotation, and the bootstrap
//! accounts for local and demo stacks.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use commerce_platform::config::CommonArgs;
use commerce_platform::db::DatabaseArgs;
use commerce_platform::events::KafkaArgs;

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
    pub auth: AuthArgs,
}

/// Token, key and bootstrap settings.
#[derive(Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Auth")]
pub struct AuthArgs {
    /// `iss` of issued access tokens; verifiers (the gateway) expect the same.
    #[arg(
        long = "auth-issuer",
        id = "auth-issuer",
        env = "COMMERCE_AUTH_ISSUER",
        default_value = "commerce-auth"
    )]
    pub issuer: String,
    /// `aud` of issued access tokens.
    #[arg(
        long = "auth-audience",
        id = "auth-audience",
        env = "COMMERCE_AUTH_AUDIENCE",
        default_value = "commerce"
    )]
    pub audience: String,
    /// Lifetime of access tokens: short, because they cannot be revoked.
    #[arg(
        long = "access-token-ttl", id = "access-token-ttl",
        env = "COMMERCE_ACCESS_TOKEN_TTL", default_value = "15m", value_parser = humantime::parse_duration
    )]
    pub access_token_ttl: Duration,
    /// Lifetime of an unused refresh token.
    #[arg(
        long = "refresh-token-ttl", id = "refresh-token-ttl",
        env = "COMMERCE_REFRESH_TOKEN_TTL", default_value = "7d", value_parser = humantime::parse_duration
    )]
    pub refresh_token_ttl: Duration,
    /// PKCS#8 PEM file with the Ed25519 key to sign with (a mounted Secret
    /// the operator generates). When set, this key is the active key of this
    /// process and timed rotation is off: the operator rotates through
    /// `--next-signing-key-file`. Re-read every 30 s. When unset, keys are
    /// generated and kept in the database.
    #[arg(long = "signing-key-file", id = "signing-key-file", env = "COMMERCE_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// PKCS#8 PEM file with the key that replaces the key file's key: while
    /// the file exists it is published at once and signs from the time in
    /// `--next-signing-key-activation-file`. A missing file means no
    /// rotation is under way. Only with `--signing-key-file`.
    #[arg(
        long = "next-signing-key-file",
        id = "next-signing-key-file",
        env = "COMMERCE_NEXT_SIGNING_KEY_FILE",
        requires = "signing-key-file"
    )]
    pub next_signing_key_file: Option<PathBuf>,
    /// File with the RFC 3339 time from which the next key signs.
    #[arg(
        long = "next-signing-key-activation-file",
        id = "next-signing-key-activation-file",
        env = "COMMERCE_NEXT_SIGNING_KEY_ACTIVATION_FILE",
        requires = "next-signing-key-file"
    )]
    pub next_signing_key_activation_file: Option<PathBuf>,
    /// How long a database-generated signing key signs before a new one
    /// replaces it; `0s` disables rotation.
    #[arg(
        long = "signing-key-rotation", id = "signing-key-rotation",
        env = "COMMERCE_SIGNING_KEY_ROTATION", default_value = "30d", value_parser = humantime::parse_duration
    )]
    pub key_rotation: Duration,
    /// Email of an admin account created at start-up if missing (local and
    /// demo stacks). Needs `COMMERCE_BOOTSTRAP_ADMIN_PASSWORD`.
    #[arg(
        long = "bootstrap-admin-email",
        id = "bootstrap-admin-email",
        env = "COMMERCE_BOOTSTRAP_ADMIN_EMAIL"
    )]
    pub bootstrap_admin_email: Option<String>,
    /// Password of the bootstrap admin; environment only.
    #[arg(
        long = "bootstrap-admin-password",
        id = "bootstrap-admin-password",
        env = "COMMERCE_BOOTSTRAP_ADMIN_PASSWORD",
        hide_env_values = true,
        hide = true
    )]
    pub bootstrap_admin_password: Option<String>,
    /// Email of a courier account created at start-up if missing (demo
    /// shipments need one). Needs `COMMERCE_BOOTSTRAP_COURIER_PASSWORD`.
    #[arg(
        long = "bootstrap-courier-email",
        id = "bootstrap-courier-email",
        env = "COMMERCE_BOOTSTRAP_COURIER_EMAIL"
    )]
    pub bootstrap_courier_email: Option<String>,
    /// Password of the bootstrap courier; environment only.
    #[arg(
        long = "bootstrap-courier-password",
        id = "bootstrap-courier-password",
        env = "COMMERCE_BOOTSTRAP_COURIER_PASSWORD",
        hide_env_values = true,
        hide = true
    )]
    pub bootstrap_courier_password: Option<String>,
}

impl AuthArgs {
    /// The defaults, for tests and tools.
    pub fn new() -> Self {
        Self {
            issuer: "commerce-auth".to_owned(),
            audience: "commerce".to_owned(),
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(7 * 24 * 3600),
            signing_key_file: None,
            next_signing_key_file: None,
            next_signing_key_activation_file: None,
            key_rotation: Duration::from_secs(30 * 24 * 3600),
            bootstrap_admin_email: None,
            bootstrap_admin_password: None,
            bootstrap_courier_email: None,
            bootstrap_courier_password: None,
        }
    }
}

impl AuthArgs {
    /// The key files of file mode, when `--signing-key-file` is set.
    pub fn key_file_paths(&self) -> Option<crate::keys::FilePaths<'_>> {
        Some(crate::keys::FilePaths {
            current: self.signing_key_file.as_deref()?,
            next: self.next_signing_key_file.as_deref(),
            next_activation: self.next_signing_key_activation_file.as_deref(),
        })
    }
}

impl Default for AuthArgs {
    fn default() -> Self {
        Self::new()
    }
}

/// Bootstrap passwords are secrets: never in logs or `Debug` output.
impl fmt::Debug for AuthArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |secret: &Option<String>| secret.as_ref().map(|_| "***");
        f.debug_struct("AuthArgs")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("access_token_ttl", &self.access_token_ttl)
            .field("refresh_token_ttl", &self.refresh_token_ttl)
            .field("signing_key_file", &self.signing_key_file)
            .field("next_signing_key_file", &self.next_signing_key_file)
            .field("next_signing_key_activation_file", &self.next_signing_key_activation_file)
            .field("key_rotation", &self.key_rotation)
            .field("bootstrap_admin_email", &self.bootstrap_admin_email)
            .field("bootstrap_admin_password", &hidden(&self.bootstrap_admin_password))
            .field("bootstrap_courier_email", &self.bootstrap_courier_email)
            .field("bootstrap_courier_password", &hidden(&self.bootstrap_courier_password))
            .finish()
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
    fn the_command_is_well_formed_and_defaults_match_the_brief() {
        commerce_platform::config::assert_service_flags::<Config>();
        let cli = Cli::try_parse_from(["auth", "--database-url=postgres://a@b/c", "--kafka-brokers=k:9092"])
            .expect("parses");
        assert_eq!(cli.config.auth.access_token_ttl, Duration::from_secs(900));
        assert_eq!(cli.config.auth.refresh_token_ttl, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn bootstrap_passwords_never_show_in_debug_output() {
        let mut args = AuthArgs::new();
        args.bootstrap_admin_password = Some("hunter2hunter2".to_owned());
        assert!(!format!("{args:?}").contains("hunter2"));
    }
}
