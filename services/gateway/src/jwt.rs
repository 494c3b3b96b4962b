//! Local verification of access tokens: Ed25519-signed JWTs (JWS compact
//! serialization, `alg: EdDSA`) checked with the auth service's public keys,
//! so no request costs a call to auth.
//!
//! Keys come from `AuthService.GetPublicKeys` through a [`KeySource`]: fetched
//! at start (retried until auth answers), refreshed when the answer's
//! `max_age` runs out, and refreshed early when a token names a `kid` the
//! cache does not know (auth rotated its key). That early refresh is
//! rate-limited (`--jwt-key-refresh-min-interval`), so tokens with invented
//! key ids cannot make the gateway hammer auth.
//!
//! Only `EdDSA` is accepted: the header's `alg` is checked before anything
//! else, so `none`, HMAC (`HS256` with the public key as secret, the classic
//! confusion attack) and RSA tokens are refused outright.
//!
//! Written here rather than taken from the auth crate (whose verifier did
//! not exist when the gateway was built) and on `ed25519-dalek` directly,
//! the crate auth signs with, instead of `jsonwebtoken`, whose RustCrypto
//! backend pulls a second major version of `ed25519-dalek`. The checks are
//! the few a JWS needs: exact `alg`, known `kid`, strict signature, `exp`,
//! `nbf`, the key's validity window.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest a token may be; anything longer is not one of ours and is not
/// worth decoding.
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Key cache lifetime when auth does not say (`max_age` unset).
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// Bounds on the periodic refresh: not more often than every 10 s whatever
/// auth says, at least hourly.
const MIN_MAX_AGE: Duration = Duration::from_secs(10);
const MAX_MAX_AGE: Duration = Duration::from_secs(3600);
/// Retry delays of a failed periodic fetch (auth not up yet).
const RETRY_BASE: Duration = Duration::from_millis(200);
const RETRY_CAP: Duration = Duration::from_secs(10);

/// What a user may do, from the token's `roles` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Customer,
    Admin,
    Courier,
}

impl Role {
    /// Accepts `customer`, `CUSTOMER`, `ROLE_CUSTOMER` and the proto enum
    /// number, so the gateway does not depend on how auth spells it.
    fn parse(value: &serde_json::Value) -> Option<Self> {
        match value {
            serde_json::Value::String(text) => {
                let text = text.to_ascii_lowercase();
                match text.strip_prefix("role_").unwrap_or(&text) {
                    "customer" => Some(Self::Customer),
                    "admin" => Some(Self::Admin),
                    "courier" => Some(Self::Courier),
                    _ => None,
                }
            }
            serde_json::Value::Number(number) => match number.as_i64() {
                Some(1) => Some(Self::Customer),
                Some(2) => Some(Self::Admin),
                Some(3) => Some(Self::Courier),
                _ => None,
            },
            _ => None,
        }
    }
}

/// The verified identity behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `sub`: the user id.
    pub user_id: String,
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

/// Why a token was refused. Every variant is a 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("tokens signed with {0:?} are not accepted; only EdDSA")]
    UnsupportedAlgorithm(String),
    #[error("the token's signing key {0:?} is unknown")]
    UnknownKey(String),
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token lacks the {0} claim")]
    MissingClaim(&'static str),
}

/// One key that verifies tokens.
#[derive(Clone)]
pub struct VerificationKey {
    pub key_id: String,
    pub key: VerifyingKey,
    /// Tokens issued before this (unix seconds) do not verify with it.
    pub not_before: Option<i64>,
    /// After this (unix seconds) it verifies nothing.
    pub expires_at: Option<i64>,
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerificationKey").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl VerificationKey {
    /// From the proto's raw 32 bytes, or its PEM when the bytes are absent.
    pub fn from_proto(key: &commerce_proto::auth::v1::PublicKey) -> Result<Self, String> {
        if !key.algorithm.is_empty() && key.algorithm != "EdDSA" {
            return Err(format!("key {} has algorithm {}, not EdDSA", key.key_id, key.algorithm));
        }
        let verifying = if let Ok(bytes) = <[u8; 32]>::try_from(key.public_key.as_slice()) {
            VerifyingKey::from_bytes(&bytes).map_err(|error| format!("key {}: {error}", key.key_id))?
        } else {
            VerifyingKey::from_public_key_pem(&key.public_key_pem).map_err(|error| format!("key {}: {error}", key.key_id))?
        };
        Ok(Self {
            key_id: key.key_id.clone(),
            key: verifying,
            not_before: key.not_before.as_ref().map(|t| t.seconds),
            expires_at: key.expires_at.as_ref().map(|t| t.seconds),
        })
    }
}

/// One answer of the key source.
#[derive(Debug, Clone)]
pub struct KeySet {
    pub keys: Vec<VerificationKey>,
    /// How long the answer may be cached.
    pub max_age: Option<Duration>,
}

/// Where keys come from (auth's `GetPublicKeys`; tests may hand in sets).
pub trait KeySource: Send + Sync + 'static {
    fn fetch(&self) -> impl std::future::Future<Output = Result<KeySet, String>> + Send;
}

/// Verifies tokens against a cache of keys.
pub struct Verifier<S> {
    source: S,
    keys: RwLock<HashMap<String, VerificationKey>>,
    /// Serializes fetches and remembers the last one, for the rate limit
    /// on unknown-kid refreshes.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// How long the last answer may be cached: the periodic refresher's
    /// interval.
    max_age: RwLock<Duration>,
    refresh_min_interval: Duration,
    leeway: Duration,
}

impl<S> fmt::Debug for Verifier<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self.read_keys().keys().cloned().collect();
        f.debug_struct("Verifier").field("keys", &keys).finish_non_exhaustive()
    }
}

impl<S> Verifier<S> {
    fn read_keys(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, VerificationKey>> {
        self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<i64>,
    nbf: Option<i64>,
    iat: Option<i64>,
    #[serde(default)]
    jti: String,
    #[serde(default)]
    roles: Vec<serde_json::Value>,
}

impl<S: KeySource> Verifier<S> {
    pub fn new(source: S, refresh_min_interval: Duration, leeway: Duration) -> Self {
        Self {
            source,
            keys: RwLock::new(HashMap::new()),
            last_fetch: tokio::sync::Mutex::new(None),
            max_age: RwLock::new(DEFAULT_MAX_AGE),
            refresh_min_interval,
            leeway,
        }
    }

    /// Verifies `token` (without the `Bearer ` prefix).
    pub async fn verify(&self, token: &str) -> Result<Caller, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: Header = decode_json(header_b64)?;
        if header.alg != "EdDSA" {
            return Err(TokenError::UnsupportedAlgorithm(header.alg));
        }
        if header.crit.is_some() {
            // We understand no extension; RFC 7515 says refuse.
            return Err(TokenError::Malformed);
        }
        let kid = header.kid.ok_or(TokenError::MissingClaim("kid"))?;
        let key = match self.key(&kid) {
            Some(key) => key,
            None => {
                self.refresh_for_unknown_key().await;
                self.key(&kid).ok_or_else(|| TokenError::UnknownKey(kid.clone()))?
            }
        };
        let signature_bytes = URL_SAFE_NO_PAD.decode(signature_b64).map_err(|_| TokenError::Malformed)?;
        let signature = Signature::from_slice(&signature_bytes).map_err(|_| TokenError::Malformed)?;
        let signing_input = &token[..header_b64.len() + 1 + claims_b64.len()];
        key.key.verify_strict(signing_input.as_bytes(), &signature).map_err(|_| TokenError::BadSignature)?;

        let claims: Claims = decode_json(claims_b64)?;
        let now = chrono::Utc::now().timestamp();
        let leeway = i64::try_from(self.leeway.as_secs()).unwrap_or(0);
        let exp = claims.exp.ok_or(TokenError::MissingClaim("exp"))?;
        if now > exp + leeway {
            return Err(TokenError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| now + leeway < nbf) {
            return Err(TokenError::NotYetValid);
        }
        if key.expires_at.is_some_and(|expires| now > expires + leeway) {
            return Err(TokenError::UnknownKey(kid));
        }
        if let (Some(not_before), Some(iat)) = (key.not_before, claims.iat)
            && iat + leeway < not_before
        {
            return Err(TokenError::BadSignature);
        }
        let user_id = claims.sub.filter(|sub| !sub.is_empty()).ok_or(TokenError::MissingClaim("sub"))?;
        let mut roles: Vec<Role> = claims.roles.iter().filter_map(Role::parse).collect();
        roles.dedup();
        Ok(Caller { user_id, roles, token_id: claims.jti })
    }

    /// Fetches keys now, replacing the cache on success.
    pub async fn refresh(&self) -> Result<usize, String> {
        let mut last = self.last_fetch.lock().await;
        self.fetch_locked(&mut last).await
    }

    async fn fetch_locked(&self, last: &mut Option<Instant>) -> Result<usize, String> {
        *last = Some(Instant::now());
        let set = self.source.fetch().await?;
        let count = set.keys.len();
        let keys = set.keys.into_iter().map(|key| (key.key_id.clone(), key)).collect();
        *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
        let max_age = set.max_age.unwrap_or(DEFAULT_MAX_AGE).clamp(MIN_MAX_AGE, MAX_MAX_AGE);
        *self.max_age.write().unwrap_or_else(std::sync::PoisonError::into_inner) = max_age;
        tracing::info!(keys = count, ?max_age, "access-token keys loaded");
        Ok(count)
    }

    /// A token named a key we lack: fetch, unless a fetch happened less
    /// than the minimum interval ago (then the answer would be the same,
    /// or the kid is invented). Concurrent callers wait for one fetch.
    async fn refresh_for_unknown_key(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.refresh_min_interval) {
            return;
        }
        if let Err(error) = self.fetch_locked(&mut last).await {
            tracing::warn!(%error, "cannot refresh access-token keys");
        }
    }

    /// Keeps the cache fresh until `shutdown`: fetches at once (retrying
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

    /// How many keys are cached (for readiness and tests).
    pub fn key_count(&self) -> usize {
        self.read_keys().len()
    }

    fn key(&self, kid: &str) -> Option<VerificationKey> {
        self.read_keys().get(kid).cloned()
    }

}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;

    struct Fixed(Vec<VerificationKey>);

    impl KeySource for Fixed {
        async fn fetch(&self) -> Result<KeySet, String> {
            Ok(KeySet { keys: self.0.clone(), max_age: None })
        }
    }

    fn sign(key: &SigningKey, header: serde_json::Value, claims: serde_json::Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    fn verifier(signing: &SigningKey) -> Verifier<Fixed> {
        let key = VerificationKey { key_id: "k1".into(), key: signing.verifying_key(), not_before: None, expires_at: None };
        Verifier::new(Fixed(vec![key]), Duration::from_secs(10), Duration::from_secs(0))
    }

    fn claims(exp_offset: i64) -> serde_json::Value {
        let now = chrono::Utc::now().timestamp();
        serde_json::json!({"sub": "u1", "exp": now + exp_offset, "iat": now, "jti": "t1", "roles": ["ROLE_ADMIN", "customer"]})
    }

    #[tokio::test]
    async fn a_valid_token_yields_its_user_and_roles() {
        let signing = SigningKey::from_bytes(&[7; 32]);
        let verifier = verifier(&signing);
        let token = sign(&signing, serde_json::json!({"alg": "EdDSA", "kid": "k1", "typ": "JWT"}), claims(60));
        let caller = verifier.verify(&token).await.expect("valid");
        assert_eq!(caller.user_id, "u1");
        assert_eq!(caller.roles, [Role::Admin, Role::Customer]);
    }

    #[tokio::test]
    async fn expired_tampered_and_foreign_algorithm_tokens_are_refused() {
        let signing = SigningKey::from_bytes(&[7; 32]);
        let verifier = verifier(&signing);
        let header = serde_json::json!({"alg": "EdDSA", "kid": "k1"});
        let expired = sign(&signing, header.clone(), claims(-120));
        assert_eq!(verifier.verify(&expired).await, Err(TokenError::Expired));

        let good = sign(&signing, header.clone(), claims(60));
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged_claims = URL_SAFE_NO_PAD.encode(claims(3600).to_string());
        parts[1] = &forged_claims;
        assert_eq!(verifier.verify(&parts.join(".")).await, Err(TokenError::BadSignature));

        for alg in ["none", "HS256", "RS256"] {
            let token = sign(&signing, serde_json::json!({"alg": alg, "kid": "k1"}), claims(60));
            assert_eq!(verifier.verify(&token).await, Err(TokenError::UnsupportedAlgorithm(alg.into())));
        }
        let other = SigningKey::from_bytes(&[9; 32]);
        assert_eq!(verifier.verify(&sign(&other, header, claims(60))).await, Err(TokenError::BadSignature));
        assert_eq!(verifier.verify("a.b").await, Err(TokenError::Malformed));
    }
}
