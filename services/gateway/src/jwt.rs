//! Local verification of access tokens, without a call to auth per request.
//!
//! The token format and its checks are the auth service's own pure verifier,
//! [`commerce_auth::jwt::Verifier`] (compact JWS, `alg: EdDSA` only, so
//! `none`, HMAC-with-the-public-key and RSA tokens are refused before any
//! key is looked at; strict Ed25519 signature; `iss`, `aud`, `nbf`, `exp`),
//! so the edge accepts exactly what auth signs. This module owns what a
//! long-running verifier adds around it: the keys.
//!
//! Keys come from `AuthService.GetPublicKeys` through a [`KeySource`]:
//! fetched at start (retried until auth answers), refreshed when the
//! answer's `max_age` runs out, and refreshed early when a token names a
//! `kid` the cache does not know (auth rotated its key). That early refresh
//! is rate-limited (`--jwt-key-refresh-min-interval`), so tokens with
//! invented key ids cannot make the gateway hammer auth. A refresh swaps in
//! a new verifier atomically; requests in flight keep the one they hold.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use commerce_auth::jwt::{Role, VerifyError as TokenError};
use commerce_proto::auth::v1::PublicKey;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Key cache lifetime when auth does not say (`max_age` unset).
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// Bounds on the periodic refresh: not more often than every 10 s whatever
/// auth says, at least hourly.
const MIN_MAX_AGE: Duration = Duration::from_secs(10);
const MAX_MAX_AGE: Duration = Duration::from_secs(3600);
/// Retry delays of a failed periodic fetch (auth not up yet).
const RETRY_BASE: Duration = Duration::from_millis(200);
const RETRY_CAP: Duration = Duration::from_secs(10);

/// The verified identity behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `sub`: the user id.
    pub user_id: String,
    /// The token's role (auth issues one per user; a list keeps room for more).
    pub roles: Vec<Role>,
    /// `jti`, for logs.
    pub token_id: String,
}

impl Caller {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn is_admin(&self) -> bool {
        self.has(Role::Admin)
    }
}

/// One answer of the key source.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub keys: Vec<PublicKey>,
    /// How long the answer may be cached.
    pub max_age: Option<Duration>,
}

/// Where keys come from (auth's `GetPublicKeys`; tests may hand in sets).
pub trait KeySource: Send + Sync + 'static {
    fn fetch(&self) -> impl std::future::Future<Output = Result<KeySet, String>> + Send;
}

/// What a verifier checks besides the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectations {
    pub issuer: String,
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// Shortest time between two fetches triggered by unknown key ids.
    pub refresh_min_interval: Duration,
}

/// Verifies tokens against a cache of keys.
pub struct Verifier<S> {
    source: S,
    expectations: Expectations,
    current: RwLock<Arc<commerce_auth::jwt::Verifier>>,
    /// Serializes fetches and remembers the last one, for the rate limit on
    /// unknown-kid refreshes.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// How long the last answer may be cached: the periodic refresher's
    /// interval.
    max_age: RwLock<Duration>,
}

impl<S> fmt::Debug for Verifier<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier").field("current", &self.verifier()).finish_non_exhaustive()
    }
}

impl<S> Verifier<S> {
    fn verifier(&self) -> Arc<commerce_auth::jwt::Verifier> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl<S: KeySource> Verifier<S> {
    /// A verifier that knows no key until the first fetch.
    pub fn new(source: S, expectations: Expectations) -> Self {
        let empty = commerce_auth::jwt::Verifier::empty(&expectations.issuer, &expectations.audience)
            .with_leeway(expectations.leeway);
        Self {
            source,
            expectations,
            current: RwLock::new(Arc::new(empty)),
            last_fetch: tokio::sync::Mutex::new(None),
            max_age: RwLock::new(DEFAULT_MAX_AGE),
        }
    }

    /// Verifies `token` (without the `Bearer ` prefix).
    pub async fn verify(&self, token: &str) -> Result<Caller, TokenError> {
        let claims = match self.verifier().verify(token) {
            Err(TokenError::UnknownKey { .. }) => {
                self.refresh_for_unknown_key().await;
                self.verifier().verify(token)
            }
            other => other,
        }?;
        Ok(Caller {
            user_id: claims.sub.to_string(),
            roles: vec![claims.role],
            token_id: claims.jti.to_string(),
        })
    }

    /// Fetches keys now, replacing the verifier on success.
    pub async fn refresh(&self) -> Result<usize, String> {
        let mut last = self.last_fetch.lock().await;
        self.fetch_locked(&mut last).await
    }

    async fn fetch_locked(&self, last: &mut Option<Instant>) -> Result<usize, String> {
        *last = Some(Instant::now());
        let set = self.source.fetch().await?;
        // One unusable key must not cost the usable ones.
        let usable: Vec<PublicKey> = set
            .keys
            .into_iter()
            .filter(|key| {
                let ok = key.algorithm == commerce_auth::jwt::ALGORITHM && key.public_key.len() == 32;
                if !ok {
                    tracing::warn!(kid = %key.key_id, algorithm = %key.algorithm, "ignoring an unusable access-token key");
                }
                ok
            })
            .collect();
        let verifier = commerce_auth::jwt::Verifier::from_public_keys(
            &usable,
            &self.expectations.issuer,
            &self.expectations.audience,
        )
        .map_err(|error| error.to_string())?
        .with_leeway(self.expectations.leeway);
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(verifier);
        let max_age = set.max_age.unwrap_or(DEFAULT_MAX_AGE).clamp(MIN_MAX_AGE, MAX_MAX_AGE);
        *self.max_age.write().unwrap_or_else(std::sync::PoisonError::into_inner) = max_age;
        tracing::info!(keys = usable.len(), ?max_age, "access-token keys loaded");
        Ok(usable.len())
    }

    /// A token named a key we lack: fetch, unless a fetch happened less
    /// than the minimum interval ago (the answer would be the same, or the
    /// kid is invented). Concurrent callers wait for one fetch.
    async fn refresh_for_unknown_key(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.expectations.refresh_min_interval) {
            return;
        }
        if let Err(error) = self.fetch_locked(&mut last).await {
            tracing::warn!(%error, "cannot refresh access-token keys");
        }
    }

    /// Keeps the keys fresh until `shutdown`: fetches at once (retrying
    /// while auth is not reachable), then again each `max_age`.
    pub async fn run_refresher(self: Arc<Self>, shutdown: CancellationToken) {
        let mut retry = RETRY_BASE;
        loop {
            let delay = match self.refresh().await {
                Ok(_) => {
                    retry = RETRY_BASE;
                    *self.max_age.read().unwrap_or_else(std::sync::PoisonError::into_inner)
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?retry, "cannot fetch access-token keys; retrying");
                    let delay = retry;
                    retry = (retry * 2).min(RETRY_CAP);
                    delay
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use commerce_auth::jwt::{Claims, TokenSigner};
    use ed25519_dalek::SigningKey;
    use uuid::Uuid;

    use super::*;

    #[derive(Default)]
    struct Keys {
        keys: Mutex<Vec<PublicKey>>,
        fetches: AtomicUsize,
    }

    impl KeySource for Arc<Keys> {
        async fn fetch(&self) -> Result<KeySet, String> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            Ok(KeySet { keys: self.keys.lock().map_err(|e| e.to_string())?.clone(), max_age: None })
        }
    }

    fn public_key(signer: &TokenSigner) -> PublicKey {
        PublicKey {
            key_id: signer.kid().to_owned(),
            algorithm: "EdDSA".to_owned(),
            public_key: signer.verifying_key().to_bytes().to_vec(),
            ..Default::default()
        }
    }

    fn claims(role: Role) -> Claims {
        let now = chrono::Utc::now().timestamp();
        Claims {
            iss: "commerce-auth".into(),
            aud: "commerce".into(),
            sub: Uuid::new_v4(),
            email: "a@b.c".into(),
            role,
            iat: now,
            nbf: now,
            exp: now + 60,
            jti: Uuid::new_v4(),
        }
    }

    fn verifier(keys: &Arc<Keys>, refresh_min_interval: Duration) -> Verifier<Arc<Keys>> {
        let expectations = Expectations {
            issuer: "commerce-auth".into(),
            audience: "commerce".into(),
            leeway: Duration::ZERO,
            refresh_min_interval,
        };
        Verifier::new(keys.clone(), expectations)
    }

    #[tokio::test]
    async fn a_token_from_auths_signer_yields_its_user_and_role() {
        let signer = TokenSigner::new("k1", SigningKey::from_bytes(&[7; 32]));
        let keys = Arc::new(Keys::default());
        keys.keys.lock().expect("lock").push(public_key(&signer));
        let verifier = verifier(&keys, Duration::from_secs(60));
        let claims = claims(Role::Admin);
        let caller = verifier.verify(&signer.sign(&claims)).await.expect("valid");
        assert_eq!(caller.user_id, claims.sub.to_string());
        assert!(caller.is_admin());
    }

    #[tokio::test]
    async fn an_unknown_kid_triggers_one_refresh_per_interval() {
        let old = TokenSigner::new("old", SigningKey::from_bytes(&[1; 32]));
        let new = TokenSigner::new("new", SigningKey::from_bytes(&[2; 32]));
        let keys = Arc::new(Keys::default());
        keys.keys.lock().expect("lock").push(public_key(&old));
        let verifier = verifier(&keys, Duration::from_secs(3600));
        verifier.verify(&old.sign(&claims(Role::Customer))).await.expect("first fetch on demand");
        keys.keys.lock().expect("lock").push(public_key(&new));
        let token = new.sign(&claims(Role::Customer));
        assert!(matches!(verifier.verify(&token).await, Err(TokenError::UnknownKey { .. })));
        assert_eq!(keys.fetches.load(Ordering::SeqCst), 1, "a refresh within the interval is skipped");

        let eager = self::verifier(&keys, Duration::ZERO);
        assert!(eager.verify(&token).await.is_ok(), "an allowed refresh finds the rotated key");
    }
}
