//! The auth service (`commerce.auth.v1`): users with argon2id credentials
//! and one role each (customer, admin, courier), rotating refresh tokens
//! with reuse detection, and Ed25519-signed access tokens whose public keys
//! it publishes for offline verification.
//!
//! - [`serve`] runs the service with [`Config`];
//! - the token format, the signer and the verifier the gateway uses to
//!   check access tokens without calling this service are `commerce_token`
//!   (here `jwt`);
//! - [`bootstrap_account`] creates the admin and courier accounts of local
//!   and demo stacks (`--bootstrap-admin-email` with
//!   `COMMERCE_BOOTSTRAP_ADMIN_PASSWORD`, `--bootstrap-courier-email` with
//!   `COMMERCE_BOOTSTRAP_COURIER_PASSWORD`): registration only ever creates
//!   customers, so these flags are how the other roles come to exist.

use std::path::PathBuf;

use commerce_platform::events::OutboxError;
use commerce_platform::runtime::{RuntimeError, ServiceRuntime};
use commerce_proto::auth::v1::auth_service_server::AuthServiceServer;
use commerce_token as jwt;
use commerce_topology::Service;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub mod config;
pub mod domain;
pub mod grpc;
pub mod keys;
pub mod password;
pub mod store;
pub mod users;

pub use config::{AuthArgs, Config};
pub use grpc::AuthGrpc;
pub use keys::KeyRing;

/// The auth service's own migrations (`services/auth/migrations/`).
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Everything that can fail in the auth service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input breaks a rule (email shape, password policy, ...).
    #[error(transparent)]
    InvalidInput(#[from] domain::InvalidInput),
    #[error("email {email} is already registered")]
    EmailTaken { email: String },
    /// Unknown email or wrong password, deliberately indistinguishable.
    #[error("wrong email or password")]
    Authenticate,
    /// Too many failed sign-ins to one account in a row
    /// ([`domain::decide_login`]); refused without checking the password.
    #[error("too many failed sign-ins to this account; try again in {} s", retry_after.as_secs())]
    LoginPaused { user_id: Uuid, retry_after: std::time::Duration },
    #[error("refresh token rejected: {reason}")]
    RefreshRejected { reason: &'static str },
    #[error("access token rejected")]
    VerifyToken(#[source] jwt::VerifyError),
    #[error("user {0} does not exist or is deactivated")]
    UserInactive(Uuid),
    #[error("user {0} does not exist")]
    UserNotFound(Uuid),
    /// An erasure confirmed with a password that is not the user's.
    #[error("the password does not match the account")]
    WrongPassword,
    /// A role change that would leave no active administrator.
    #[error("user {0} is the last active administrator; make another user an administrator first")]
    LastAdmin(Uuid),
    /// argon2 failed (its error type does not implement `std::error::Error`
    /// on every target, hence the message).
    #[error("cannot hash or verify a password: {0}")]
    HashPassword(String),
    #[error("database operation failed: {action}")]
    Database {
        action: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot write an event to the outbox")]
    EnqueueEvent(#[source] Box<OutboxError>),
    #[error("no signing key is active yet")]
    NoSigningKey,
    #[error("cannot read the signing key file {path}")]
    ReadSigningKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the signing key file {path} is not an Ed25519 PKCS#8 PEM key: {reason}")]
    ParseSigningKey { path: PathBuf, reason: String },
    #[error("stored signing key {kid} cannot be decoded")]
    DecodeStoredKey { kid: String },
    #[error(
        "bootstrap account {email} is configured without a password (set its COMMERCE_BOOTSTRAP_*_PASSWORD)"
    )]
    BootstrapWithoutPassword { email: String },
    /// A step of the service's lifecycle (database, Kafka, servers) failed.
    #[error(transparent)]
    Run(#[from] RuntimeError),
}

/// Runs the auth service until `shutdown` on the platform's
/// [`ServiceRuntime`]: admin server first (so `/readyz` explains any wait),
/// then the database (retried until it answers), migrations, signing keys,
/// bootstrap accounts, the outbox relay and the gRPC server. `/readyz`
/// turns 200 only once the gRPC listener is bound.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    ServiceRuntime::new(Service::Auth, &config.common)
        .serve(shutdown, |wiring| async move {
            let pool = wiring.connect_database(&config.database, &MIGRATOR).await?;

            let keys = KeyRing::new(&config.auth.issuer, &config.auth.audience);
            prepare_keys(&pool, &keys, &config.auth).await?;
            wiring.spawn_task(
                "signing key maintenance",
                maintain_keys(pool.clone(), keys.clone(), config.auth.clone(), wiring.stop_token()),
            );

            for (email, password, role) in [
                (&config.auth.bootstrap_admin_email, &config.auth.bootstrap_admin_password, jwt::Role::Admin),
                (
                    &config.auth.bootstrap_courier_email,
                    &config.auth.bootstrap_courier_password,
                    jwt::Role::Courier,
                ),
            ] {
                if let Some(email) = email {
                    let password = password
                        .as_ref()
                        .ok_or_else(|| Error::BootstrapWithoutPassword { email: email.clone() })?;
                    bootstrap_account(&pool, email, password, role).await?;
                }
            }

            let producer = wiring.start_producer(&config.kafka)?;
            wiring.spawn_outbox_relay(&pool, &producer);

            let handler = AuthGrpc::new(pool, keys, config.auth.clone());
            Ok(wiring.grpc_server().add_service(AuthServiceServer::new(handler)))
        })
        .await
}

/// Installs the key files' keys (file mode) or makes sure a database key
/// exists, then loads the ring.
pub async fn prepare_keys(pool: &PgPool, keys: &KeyRing, args: &AuthArgs) -> Result<(), Error> {
    let now = store::now(pool).await?;
    match args.key_file_paths() {
        Some(paths) => {
            keys::install_file_keys(pool, keys, paths, args.access_token_ttl, now).await?;
        }
        None => {
            keys::maintain(pool, args.key_rotation, args.access_token_ttl, now).await?;
        }
    }
    keys.reload(pool).await
}

/// How often expired refresh tokens are deleted.
const REFRESH_TOKEN_PURGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);
/// How long an expired refresh token is kept before deletion: a day of
/// audit trail ("why was I logged out?") without growing without bound.
const REFRESH_TOKEN_RETENTION: std::time::Duration = std::time::Duration::from_secs(86_400);

/// Reloads keys every [`keys::RELOAD_INTERVAL`]: in file mode re-reads the
/// key files first (the kubelet refreshes a mounted Secret in place, so a
/// next key the operator adds is published and then signs without a pod
/// restart), in database mode rotates them when due; purges expired
/// refresh tokens hourly. Failures are logged and retried next round.
async fn maintain_keys(pool: PgPool, keys: KeyRing, args: AuthArgs, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(keys::RELOAD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    let mut last_purge: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if last_purge.is_none_or(|at| at.elapsed() >= REFRESH_TOKEN_PURGE_INTERVAL) {
            last_purge = Some(tokio::time::Instant::now());
            match store::purge_expired_refresh_tokens(&pool, REFRESH_TOKEN_RETENTION).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "purged expired refresh tokens"),
                Err(error) => tracing::warn!(error = %error, "cannot purge expired refresh tokens"),
            }
        }
        let maintained = match (store::now(&pool).await, args.key_file_paths()) {
            (Err(error), _) => Err(error),
            (Ok(now), Some(paths)) => {
                keys::install_file_keys(&pool, &keys, paths, args.access_token_ttl, now).await.map(drop)
            }
            (Ok(now), None) => {
                keys::maintain(&pool, args.key_rotation, args.access_token_ttl, now).await.map(drop)
            }
        };
        if let Err(error) = maintained {
            tracing::warn!(error = %error, "signing key maintenance failed; retrying next round");
        }
        if let Err(error) = keys.reload(&pool).await {
            tracing::warn!(error = %error, "cannot reload signing keys; keeping the previous ones");
        }
    }
}

/// Creates `email` with `role` and `password` if no account has that email;
/// an existing account is left untouched (its password may have been
/// changed since). Publishes `UserRegistered` like a registration.
pub async fn bootstrap_account(
    pool: &PgPool,
    email: &str,
    password: &str,
    role: jwt::Role,
) -> Result<(), Error> {
    let email = domain::normalize_email(email)?;
    domain::check_password(password)?;
    if store::find_user_by_email(pool, &email).await?.is_some() {
        tracing::info!(%email, %role, "bootstrap account exists already");
        return Ok(());
    }
    let password_hash = grpc::hash_password(password.to_owned()).await?;
    let display_name = domain::display_name("", &email)?;
    match store::create_user(pool, store::NewUser { email: email.clone(), display_name, password_hash, role })
        .await
    {
        // A replica starting at the same time won the race: same outcome.
        Ok(_) | Err(Error::EmailTaken { .. }) => {
            tracing::info!(%email, %role, "bootstrap account ready");
            Ok(())
        }
        Err(error) => Err(error),
    }
}
