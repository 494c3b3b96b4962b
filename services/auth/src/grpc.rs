//! The `commerce.auth.v1.AuthService` gRPC server: proto <-> domain, the
//! register/login/refresh/logout flows, and the one mapping from [`Error`]
//! to a gRPC status.

use commerce_proto::time::timestamp;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use commerce_proto::auth::v1 as pb;
use commerce_proto::auth::v1::auth_service_server::AuthService;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::config::AuthArgs;
use crate::keys::{KeyRing, PUBLIC_KEYS_MAX_AGE};
use crate::password::Hasher;
use crate::store::{self, NewRefreshToken, NewUser, UserRow};
use crate::users::{role_to_proto, user_to_proto};
use crate::{Error, domain};
use commerce_token::{Claims, Role};

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match &error {
            Error::InvalidInput(invalid) => Status::invalid_argument(invalid.0.clone()),
            Error::EmailTaken { .. } => Status::already_exists(error.to_string()),
            Error::LoginPaused { user_id, retry_after } => commerce_platform::quota::exceeded(
                error.to_string(),
                &format!("account:{user_id}"),
                "failed sign-ins in a row",
                *retry_after,
            ),
            Error::Authenticate
            | Error::RefreshRejected { .. }
            | Error::VerifyToken(_)
            | Error::UserInactive(_) => Status::unauthenticated(error.to_string()),
            Error::UserNotFound(_) => Status::not_found(error.to_string()),
            Error::WrongPassword => Status::permission_denied(error.to_string()),
            Error::LastAdmin(_) => Status::failed_precondition(error.to_string()),
            Error::Database { source: sqlx::Error::PoolTimedOut, .. } => {
                tracing::warn!(error = %error, "database unavailable");
                Status::unavailable("the auth database is unavailable; retry later")
            }
            _ => {
                tracing::error!(error = ?error, "auth request failed");
                Status::internal("internal error")
            }
        }
    }
}

/// The gRPC handler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuthGrpc {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    keys: KeyRing,
    settings: AuthArgs,
}

impl AuthGrpc {
    pub fn new(pool: PgPool, keys: KeyRing, settings: AuthArgs) -> Self {
        Self { inner: Arc::new(Inner { pool, keys, settings }) }
    }

    /// Issues an access token and a new refresh token for `user` in `family`.
    async fn issue(
        &self,
        user: &UserRow,
        family_id: Uuid,
        conn: &mut sqlx::PgConnection,
    ) -> Result<pb::TokenPair, Error> {
        let now = store::now(&mut *conn).await?;
        let refresh = new_refresh_token();
        let refresh_expires_at = now + chrono_duration(self.inner.settings.refresh_token_ttl);
        store::insert_refresh_token(
            conn,
            &NewRefreshToken {
                id: Uuid::now_v7(),
                token_hash: hash_refresh_token(&refresh),
                user_id: user.id,
                family_id,
                expires_at: refresh_expires_at,
            },
        )
        .await?;
        self.finish_pair(user, refresh, refresh_expires_at, now)
    }

    fn finish_pair(
        &self,
        user: &UserRow,
        refresh: String,
        refresh_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<pb::TokenPair, Error> {
        let access_expires_at = now + chrono_duration(self.inner.settings.access_token_ttl);
        let claims = Claims {
            iss: self.inner.settings.issuer.clone(),
            aud: self.inner.settings.audience.clone(),
            sub: user.id,
            email: user.email.clone(),
            role: user.role(),
            iat: now.timestamp(),
            nbf: now.timestamp(),
            exp: access_expires_at.timestamp(),
            jti: Uuid::now_v7(),
        };
        let access = self.inner.keys.signer(now)?.sign(&claims);
        Ok(pb::TokenPair {
            access_token: access,
            access_token_expires_at: Some(timestamp(access_expires_at)),
            refresh_token: refresh,
            refresh_token_expires_at: Some(timestamp(refresh_expires_at)),
            token_type: "Bearer".to_owned(),
        })
    }

    async fn register(&self, request: pb::RegisterRequest) -> Result<pb::RegisterResponse, Error> {
        let email = domain::normalize_email(&request.email)?;
        domain::check_password(&request.password)?;
        let display_name = domain::display_name(&request.display_name, &email)?;
        let password_hash = hash_password(request.password).await?;
        let user = store::create_user(
            &self.inner.pool,
            NewUser { email, display_name, password_hash, role: Role::Customer },
        )
        .await?;
        tracing::info!(user_id = %user.id, "user registered");
        let mut conn = self.connection().await?;
        let tokens = self.issue(&user, Uuid::now_v7(), &mut conn).await?;
        Ok(pb::RegisterResponse { user: Some(user_to_proto(&user)), tokens: Some(tokens) })
    }

    async fn login(&self, request: pb::LoginRequest) -> Result<pb::LoginResponse, Error> {
        // A malformed email cannot match an account: same answer as a wrong
        // password, so the endpoint reveals nothing about which is wrong.
        let user = match domain::normalize_email(&request.email) {
            Ok(email) => store::find_user_by_email(&self.inner.pool, &email).await?,
            Err(_) => None,
        };
        // A known account's attempt is counted before the slow check; a
        // paused account is refused unheard (see `domain::decide_login`).
        if let Some(user) = &user
            && let Some(domain::LoginAttempt::Paused { retry_after }) =
                store::count_login_attempt(&self.inner.pool, user.id).await?
        {
            tracing::info!(user_id = %user.id, ?retry_after, "sign-in refused: the account is paused after failed attempts");
            // Whole seconds, rounded up: Retry-After has no fractions.
            let retry_after =
                Duration::from_secs(retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0));
            return Err(Error::LoginPaused { user_id: user.id, retry_after });
        }
        let verified =
            verify_password(request.password.clone(), user.as_ref().map(|user| user.password_hash.clone()))
                .await;
        let user = match user {
            Some(user) if verified && user.active => user,
            _ => return Err(Error::Authenticate),
        };
        store::reset_login_throttle(&self.inner.pool, user.id).await?;
        if crate::password::needs_rehash(&user.password_hash) {
            self.rehash(&user, request.password).await;
        }
        let mut conn = self.connection().await?;
        let tokens = self.issue(&user, Uuid::now_v7(), &mut conn).await?;
        Ok(pb::LoginResponse { user: Some(user_to_proto(&user)), tokens: Some(tokens) })
    }

    /// Stores the password of `user`, just verified, hashed again with
    /// today's parameters. A failure is logged, not returned: the sign-in
    /// itself succeeded, and the next one tries again.
    async fn rehash(&self, user: &store::UserRow, password: String) {
        let replaced = match hash_password(password).await {
            Ok(hash) => {
                store::replace_password_hash(&self.inner.pool, user.id, &user.password_hash, &hash).await
            }
            Err(error) => Err(error),
        };
        match replaced {
            Ok(true) => {
                tracing::info!(user_id = %user.id, "password hashed again with today's argon2 parameters")
            }
            // Changed meanwhile (another sign-in rehashed it first).
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(user_id = %user.id, error = %error, "the password could not be hashed again")
            }
        }
    }

    async fn erase(&self, request: pb::EraseUserRequest) -> Result<pb::EraseUserResponse, Error> {
        let id = Uuid::parse_str(&request.user_id)
            .map_err(|_| domain::InvalidInput(format!("user_id {:?} is not a UUID", request.user_id)))?;
        let mut conn = self.connection().await?;
        let user = store::find_user(&mut conn, id).await?.ok_or(Error::UserNotFound(id))?;
        drop(conn);
        // Counted like a sign-in: the confirmation is no way around the
        // pause that guards the password.
        if let Some(domain::LoginAttempt::Paused { retry_after }) =
            store::count_login_attempt(&self.inner.pool, id).await?
        {
            let retry_after =
                Duration::from_secs(retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0));
            return Err(Error::LoginPaused { user_id: id, retry_after });
        }
        if !verify_password(request.password, Some(user.password_hash.clone())).await {
            return Err(Error::WrongPassword);
        }
        let erased_at = store::erase_user(&self.inner.pool, id).await?;
        tracing::info!(user_id = %id, "a user erased their account");
        Ok(pb::EraseUserResponse { erased_at: Some(timestamp(erased_at)) })
    }

    async fn refresh(&self, request: pb::RefreshRequest) -> Result<pb::RefreshResponse, Error> {
        let hash = hash_refresh_token(&request.refresh_token);
        let mut tx = self
            .inner
            .pool
            .begin()
            .await
            .map_err(|source| Error::Database { action: "begin refresh", source })?;
        let now = store::now(&mut *tx).await?;
        let Some(token) = store::lock_refresh_token(&mut tx, &hash).await? else {
            return Err(Error::RefreshRejected { reason: "unknown refresh token" });
        };
        let state = domain::RefreshTokenState { revoked_at: token.revoked_at, expires_at: token.expires_at };
        match domain::decide_refresh(state, now) {
            domain::RefreshDecision::Expired => {
                Err(Error::RefreshRejected { reason: "refresh token expired" })
            }
            domain::RefreshDecision::RevokeFamily => {
                let revoked = store::revoke_family(&mut tx, token.family_id).await?;
                tx.commit()
                    .await
                    .map_err(|source| Error::Database { action: "commit family revocation", source })?;
                tracing::warn!(
                    user_id = %token.user_id, family_id = %token.family_id, revoked,
                    "a revoked refresh token was presented again; revoked its whole family"
                );
                Err(Error::RefreshRejected {
                    reason: "refresh token already used; every session of this login was revoked",
                })
            }
            domain::RefreshDecision::Rotate => {
                let Some(user) = store::find_user(&mut tx, token.user_id).await?.filter(|user| user.active)
                else {
                    return Err(Error::UserInactive(token.user_id));
                };
                let successor = new_refresh_token();
                let successor_id = Uuid::now_v7();
                let expires_at = now + chrono_duration(self.inner.settings.refresh_token_ttl);
                store::revoke_rotated(&mut tx, token.id, successor_id).await?;
                store::insert_refresh_token(
                    &mut tx,
                    &NewRefreshToken {
                        id: successor_id,
                        token_hash: hash_refresh_token(&successor),
                        user_id: user.id,
                        family_id: token.family_id,
                        expires_at,
                    },
                )
                .await?;
                let tokens = self.finish_pair(&user, successor, expires_at, now)?;
                tx.commit().await.map_err(|source| Error::Database { action: "commit refresh", source })?;
                Ok(pb::RefreshResponse { tokens: Some(tokens) })
            }
        }
    }

    async fn validate(&self, request: pb::ValidateTokenRequest) -> Result<pb::ValidateTokenResponse, Error> {
        let verify = |keys: &KeyRing| keys.verifier().verify(&request.access_token);
        let claims = match verify(&self.inner.keys) {
            // A key rotated by another replica: reload once and retry.
            Err(commerce_token::VerifyError::UnknownKey { .. }) => {
                self.inner.keys.reload(&self.inner.pool).await?;
                verify(&self.inner.keys)
            }
            other => other,
        }
        .map_err(Error::VerifyToken)?;
        let key_id = token_kid(&request.access_token).unwrap_or_default();
        let mut conn = self.connection().await?;
        let Some(user) = store::find_user(&mut conn, claims.sub).await?.filter(|user| user.active) else {
            return Err(Error::UserInactive(claims.sub));
        };
        Ok(pb::ValidateTokenResponse {
            claims: Some(pb::TokenClaims {
                user_id: claims.sub.to_string(),
                roles: vec![role_to_proto(claims.role) as i32],
                token_id: claims.jti.to_string(),
                key_id,
                issued_at: Some(timestamp(claims.issued_at())),
                expires_at: Some(timestamp(claims.expires_at())),
            }),
            user: Some(user_to_proto(&user)),
        })
    }

    async fn connection(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, Error> {
        self.inner
            .pool
            .acquire()
            .await
            .map_err(|source| Error::Database { action: "acquire a connection", source })
    }
}

#[tonic::async_trait]
impl AuthService for AuthGrpc {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        Ok(Response::new(AuthGrpc::register(self, request.into_inner()).await?))
    }

    async fn login(&self, request: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        Ok(Response::new(AuthGrpc::login(self, request.into_inner()).await?))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        Ok(Response::new(AuthGrpc::refresh(self, request.into_inner()).await?))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let hash = hash_refresh_token(&request.into_inner().refresh_token);
        store::revoke_by_hash(&self.inner.pool, &hash).await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn validate_token(
        &self,
        request: Request<pb::ValidateTokenRequest>,
    ) -> Result<Response<pb::ValidateTokenResponse>, Status> {
        Ok(Response::new(self.validate(request.into_inner()).await?))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        Ok(Response::new(crate::users::list(&self.inner.pool, request.into_inner()).await?))
    }

    async fn set_user_role(
        &self,
        request: Request<pb::SetUserRoleRequest>,
    ) -> Result<Response<pb::SetUserRoleResponse>, Status> {
        Ok(Response::new(crate::users::set_role(&self.inner.pool, request.into_inner()).await?))
    }

    async fn erase_user(
        &self,
        request: Request<pb::EraseUserRequest>,
    ) -> Result<Response<pb::EraseUserResponse>, Status> {
        Ok(Response::new(self.erase(request.into_inner()).await?))
    }

    async fn get_public_keys(
        &self,
        _request: Request<pb::GetPublicKeysRequest>,
    ) -> Result<Response<pb::GetPublicKeysResponse>, Status> {
        // Straight from the database, so a key another replica just
        // created is published at once; the database's clock, read once,
        // judges the keys and is published with them.
        let clock = store::now(&self.inner.pool).await?;
        self.inner.keys.reload_at(&self.inner.pool, clock).await?;
        let keys = self
            .inner
            .keys
            .published()
            .into_iter()
            .map(|key| pb::PublicKey {
                key_id: key.kid,
                algorithm: commerce_token::ALGORITHM.to_owned(),
                curve: commerce_token::CURVE.to_owned(),
                public_key: key.public_key.to_vec(),
                public_key_pem: key.public_key_pem,
                not_before: Some(timestamp(key.activates_at)),
                expires_at: key.expires_at.map(timestamp),
            })
            .collect();
        Ok(Response::new(pb::GetPublicKeysResponse {
            keys,
            max_age: Some(prost_types::Duration {
                seconds: i64::try_from(PUBLIC_KEYS_MAX_AGE.as_secs()).unwrap_or(60),
                nanos: 0,
            }),
            clock: Some(timestamp(clock)),
        }))
    }
}

/// The `kid` header of a compact JWS, if readable.
fn token_kid(token: &str) -> Option<String> {
    let header = URL_SAFE_NO_PAD.decode(token.split('.').next()?).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
    header.get("kid")?.as_str().map(str::to_owned)
}

/// A new opaque refresh token: 256 random bits, base64url.
fn new_refresh_token() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What is stored of a refresh token: its SHA-256. A fast hash is right
/// here (unlike passwords): the token has 256 bits of entropy.
pub fn hash_refresh_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Hashes a password with argon2id ([`crate::password`]: reused work
/// areas, as many hashes at once as CPUs).
pub async fn hash_password(password: String) -> Result<String, Error> {
    Hasher::shared().hash(password).await.map_err(Error::HashPassword)
}

/// Verifies `password` against `hash`; with no hash (unknown user) it
/// verifies against a dummy hash anyway, so that response time does not
/// tell whether an email is registered.
async fn verify_password(password: String, hash: Option<String>) -> bool {
    static DUMMY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    let hasher = Hasher::shared();
    let known = hash.is_some();
    let hash = match hash {
        Some(hash) => hash,
        None => DUMMY
            .get_or_init(|| async { hasher.hash("not a real password".to_owned()).await.unwrap_or_default() })
            .await
            .clone(),
    };
    hasher.verify(password, hash).await && known
}

fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or_default()
}
