//! Local verification of access tokens, without a call to auth per request.
//!
//! The token format and its checks are the auth service's own pure verifier,
//! [`commerce_token::Verifier`] (compact JWS, `alg: EdDSA` only, so
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
//!
//! Not having keys is the gateway's problem, not the client's: a token whose
//! key the gateway cannot check because it holds no keys (auth not reachable
//! yet, or publishing none), or because the fetch that should have found a
//! rotated key failed, is [`Rejection::KeysUnavailable`] (503, retry), never
//! a 401 that would tell the client its token is bad. [`KeyStatus`] is
//! published on a watch channel for the gateway's `auth-keys` readiness
//! check: not ready until the first usable key is loaded. Once keys are
//! held, failed refreshes do not make the gateway unready: the cached keys
//! still verify every token auth signed with them, and pulling every replica
//! out of the Service during an auth outage would also take down the public
//! routes that need no token. Failed refreshes are logged and shown in the
//! status's `last_error`.
//!
//! Time is the shop's clock, not this process's: auth stamps `nbf` and
//! `exp` by its database's clock and says that clock's reading with every
//! key set ([`KeySet::clock`]); the gateway judges tokens by its own clock
//! offset by the difference it saw. A gateway whose host clock runs minutes
//! off (a node without NTP) still accepts a fresh token and refuses an
//! expired one on time.
//!
//! Verifying an Ed25519 signature costs tens of microseconds, the largest
//! single cost of an authenticated read, and a client sends the same token
//! with every request for its whole lifetime. So accepted tokens are
//! remembered (keyed by the token itself, bounded in number) until the
//! instant the same keys would start refusing them: the token's `exp`, or
//! its key's expiry, plus the leeway. A change of the key set forgets them
//! all, so a withdrawn key stops verifying at once. Refusals are never
//! remembered: some depend on time (`nbf`) or on keys still to be fetched,
//! and a bad token costs its sender the verification each time.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use commerce_proto::auth::v1::PublicKey;
pub use commerce_token::{Role, VerifyError as TokenError};
use tokio::sync::watch;
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
/// Accepted tokens remembered at most (about 1 KiB each: the token and its
/// caller). Far more than the clients one replica serves within a token's
/// 15-minute lifetime; past it the least used are forgotten and verified
/// again when they come back.
const TOKEN_CACHE_CAPACITY: usize = 16_384;

/// The verified identity behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `sub`: the user id.
    pub user_id: String,
    /// The token's role (auth issues one per user; a list keeps room for more).
    pub roles: Vec<Role>,
    /// `jti`, for logs.
    pub token_id: String,
    /// `exp` (Unix seconds): a live stream opened with the token ends then.
    pub expires_at: i64,
}

impl Caller {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn is_admin(&self) -> bool {
        self.has(Role::Admin)
    }
}

/// Why the gateway refuses a bearer token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The token itself is not acceptable (401).
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The token may be fine, but the gateway cannot check it: it lacks the
    /// signing key and could not fetch auth's keys (503, retry shortly).
    #[error("cannot verify the token yet: {reason}; retry shortly")]
    KeysUnavailable {
        /// Why the keys are missing, for the problem's `detail`: what a client
        /// may read, never the fetch error (that goes to `/readyz` and logs).
        reason: String,
    },
}

/// What the verifier holds, published for readiness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyStatus {
    /// Usable keys in the current verifier (0 until the first fetch).
    pub keys: usize,
    /// Whether any fetch has completed (successfully or not).
    pub fetched: bool,
    /// Why the last fetch failed; `None` after a successful one.
    pub last_error: Option<String>,
}

impl KeyStatus {
    /// Why a token naming a key the gateway lacks cannot be checked, for
    /// the client (no internal detail); `None` when the lack is the token's
    /// fault (keys are held and the last fetch succeeded).
    pub fn unverifiable(&self) -> Option<&'static str> {
        match (self.keys, self.last_error.is_some(), self.fetched) {
            (0, false, true) => Some("the auth service publishes no usable signing keys"),
            (0, _, _) => Some("the gateway has not loaded the auth service's signing keys yet"),
            (_, true, _) => Some(
                "the token's signing key is not among the gateway's keys, and the auth service's keys cannot be fetched now",
            ),
            (_, false, _) => None,
        }
    }

    /// Why the gateway is not ready, for `/readyz` and logs (with the fetch
    /// error); `None` while it holds a key.
    pub fn not_ready_reason(&self) -> Option<String> {
        if self.keys > 0 {
            return None;
        }
        let summary = self.unverifiable().unwrap_or_default();
        Some(match &self.last_error {
            Some(error) => format!("{summary}: {error}"),
            None => summary.to_owned(),
        })
    }
}

/// One answer of the key source.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub keys: Vec<PublicKey>,
    /// How long the answer may be cached.
    pub max_age: Option<Duration>,
    /// The shop's clock when the answer was made (auth's database's),
    /// `None` from a source that does not say.
    pub clock: Option<DateTime<Utc>>,
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

/// A token accepted by the keys of one key-set epoch.
#[derive(Debug)]
struct Accepted {
    caller: Caller,
    /// From this instant on the token is refused (see
    /// [`commerce_token::Verifier::verify_until`]).
    refused_from: DateTime<Utc>,
    /// The [`Verifier::keys_epoch`] it was verified under; an entry of an
    /// older epoch is never used.
    keys_epoch: u64,
}

/// What identifies a key set: each key's id, bytes and expiry, sorted.
type KeyFingerprint = Vec<(String, Vec<u8>, Option<(i64, i32)>)>;

/// Verifies tokens against a cache of keys.
pub struct Verifier<S> {
    source: S,
    expectations: Expectations,
    current: RwLock<Arc<commerce_token::Verifier>>,
    /// Accepted tokens, by the token string (see the module docs).
    accepted: quick_cache::sync::Cache<String, Arc<Accepted>>,
    /// Bumped (after the swap of `current`) whenever the key set changes,
    /// so that a token accepted by the old keys is verified again, even one
    /// inserted by a verification that raced the swap.
    keys_epoch: AtomicU64,
    /// The key set `current` was built from, to tell a change from a
    /// periodic refresh that found the same keys.
    key_fingerprint: Mutex<Option<KeyFingerprint>>,
    /// Serializes fetches and remembers the last one, for the rate limit on
    /// unknown-kid refreshes.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// How long the last answer may be cached: the periodic refresher's
    /// interval.
    max_age: RwLock<Duration>,
    /// Keys held and the last fetch's error, for readiness and for telling
    /// a bad token from one the gateway cannot check.
    status: watch::Sender<KeyStatus>,
    /// The shop's clock minus this process's, in milliseconds, as of the
    /// last key set that said its clock (0 until then).
    clock_offset_ms: AtomicI64,
}

impl<S> fmt::Debug for Verifier<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier").field("current", &self.verifier()).finish_non_exhaustive()
    }
}

impl<S> Verifier<S> {
    fn verifier(&self) -> Arc<commerce_token::Verifier> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl<S: KeySource> Verifier<S> {
    /// A verifier that knows no key until the first fetch.
    pub fn new(source: S, expectations: Expectations) -> Self {
        let empty = commerce_token::Verifier::empty(&expectations.issuer, &expectations.audience)
            .with_leeway(expectations.leeway);
        Self {
            source,
            expectations,
            current: RwLock::new(Arc::new(empty)),
            accepted: quick_cache::sync::Cache::new(TOKEN_CACHE_CAPACITY),
            keys_epoch: AtomicU64::new(0),
            key_fingerprint: Mutex::new(None),
            last_fetch: tokio::sync::Mutex::new(None),
            max_age: RwLock::new(DEFAULT_MAX_AGE),
            status: watch::Sender::new(KeyStatus::default()),
            clock_offset_ms: AtomicI64::new(0),
        }
    }

    /// Follows what the verifier holds (the readiness check watches this).
    pub fn key_status(&self) -> watch::Receiver<KeyStatus> {
        self.status.subscribe()
    }

    /// Verifies `token` (without the `Bearer ` prefix). A token naming a key
    /// the gateway lacks triggers one (rate-limited) refresh; if the key is
    /// still missing because keys cannot be fetched, the answer is
    /// [`Rejection::KeysUnavailable`], not a bad token.
    pub async fn verify(&self, token: &str) -> Result<Caller, Rejection> {
        self.verify_at(token, self.shop_now()).await
    }

    /// Now by the shop's clock: this process's clock plus the offset the
    /// last key set showed.
    pub fn shop_now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.clock_offset_ms.load(Ordering::Relaxed))
    }

    /// [`verify`](Self::verify) as of `now`.
    async fn verify_at(&self, token: &str, now: DateTime<Utc>) -> Result<Caller, Rejection> {
        // The epoch is read before the verifier: a swap between the two
        // leaves the entry tagged with the old epoch, which is then ignored.
        let mut keys_epoch = self.keys_epoch.load(Ordering::Acquire);
        if let Some(accepted) = self.accepted.get(token)
            && accepted.keys_epoch == keys_epoch
            && now < accepted.refused_from
        {
            return Ok(accepted.caller.clone());
        }
        let verified = match self.verifier().verify_until(token, now) {
            Err(TokenError::UnknownKey { .. }) => {
                self.refresh_for_unknown_key().await;
                keys_epoch = self.keys_epoch.load(Ordering::Acquire);
                self.verifier().verify_until(token, now)
            }
            other => other,
        };
        let (claims, refused_from) = match verified {
            Err(TokenError::UnknownKey { kid }) => {
                return Err(match self.status.borrow().unverifiable() {
                    Some(reason) => Rejection::KeysUnavailable { reason: reason.to_owned() },
                    None => Rejection::Token(TokenError::UnknownKey { kid }),
                });
            }
            other => other?,
        };
        let caller = Caller {
            user_id: claims.sub.to_string(),
            roles: vec![claims.role],
            token_id: claims.jti.to_string(),
            expires_at: claims.exp,
        };
        self.accepted.insert(
            token.to_owned(),
            Arc::new(Accepted { caller: caller.clone(), refused_from, keys_epoch }),
        );
        Ok(caller)
    }

    /// The caller of `token` if it is remembered as accepted and still
    /// valid: no verification, no refresh (the access log's span takes the
    /// user id from here; see `middleware::observe`).
    pub fn remembered(&self, token: &str) -> Option<Caller> {
        let keys_epoch = self.keys_epoch.load(Ordering::Acquire);
        let accepted = self.accepted.get(token)?;
        (accepted.keys_epoch == keys_epoch && self.shop_now() < accepted.refused_from)
            .then(|| accepted.caller.clone())
    }

    /// How many accepted tokens are remembered (for tests and debugging).
    pub fn remembered_tokens(&self) -> usize {
        self.accepted.len()
    }

    /// Fetches keys now, replacing the verifier on success.
    pub async fn refresh(&self) -> Result<usize, String> {
        let mut last = self.last_fetch.lock().await;
        self.fetch_locked(&mut last).await
    }

    async fn fetch_locked(&self, last: &mut Option<Instant>) -> Result<usize, String> {
        *last = Some(Instant::now());
        let fetched = self.fetch_verifier().await;
        self.status.send_modify(|status| {
            status.fetched = true;
            match &fetched {
                Ok(keys) => {
                    status.keys = *keys;
                    status.last_error = None;
                }
                Err(error) => status.last_error = Some(error.clone()),
            }
        });
        fetched
    }

    /// One fetch: replaces the verifier and the max age on success.
    async fn fetch_verifier(&self) -> Result<usize, String> {
        let set = self.source.fetch().await?;
        if let Some(clock) = set.clock {
            let offset = (clock - Utc::now()).num_milliseconds();
            let before = self.clock_offset_ms.swap(offset, Ordering::Relaxed);
            if (offset - before).abs() > 1_000 && offset.abs() > 1_000 {
                tracing::warn!(
                    offset_ms = offset,
                    "this host's clock is off the shop's (auth's database's); tokens are judged by the shop's"
                );
            }
        }
        // One unusable key must not cost the usable ones.
        let usable: Vec<PublicKey> = set
            .keys
            .into_iter()
            .filter(|key| {
                let ok = key.algorithm == commerce_token::ALGORITHM && key.public_key.len() == 32;
                if !ok {
                    tracing::warn!(kid = %key.key_id, algorithm = %key.algorithm, "ignoring an unusable access-token key");
                }
                ok
            })
            .collect();
        let verifier = commerce_token::Verifier::from_public_keys(
            &usable,
            &self.expectations.issuer,
            &self.expectations.audience,
        )
        .map_err(|error| error.to_string())?
        .with_leeway(self.expectations.leeway);
        let mut fingerprint: KeyFingerprint = usable
            .iter()
            .map(|key| {
                let expiry = key.expires_at.as_ref().map(|at| (at.seconds, at.nanos));
                (key.key_id.clone(), key.public_key.clone(), expiry)
            })
            .collect();
        fingerprint.sort();
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(verifier);
        let mut held = self.key_fingerprint.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.as_ref() != Some(&fingerprint) {
            // After the swap: a verification that read the new epoch also
            // reads the new keys.
            self.keys_epoch.fetch_add(1, Ordering::AcqRel);
            self.accepted.clear();
            *held = Some(fingerprint);
        }
        drop(held);
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
    /// while auth is not reachable or publishes no usable key, since the
    /// gateway is not ready until it has one), then again each `max_age`.
    pub async fn run_refresher(self: Arc<Self>, shutdown: CancellationToken) {
        // Jittered, so that replicas that lost auth together do not ask it
        // again together.
        let mut retry = commerce_platform::backoff::Backoff::new(RETRY_BASE, RETRY_CAP);
        loop {
            let fetched = self.refresh().await.and_then(|keys| {
                if keys == 0 { Err("the auth service published no usable key".to_owned()) } else { Ok(keys) }
            });
            let delay = match fetched {
                Ok(_) => {
                    retry.reset();
                    *self.max_age.read().unwrap_or_else(std::sync::PoisonError::into_inner)
                }
                Err(error) => {
                    let delay = retry.next_delay();
                    tracing::warn!(%error, retry_in = ?delay, "cannot fetch access-token keys; retrying");
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

    use commerce_token::{Claims, TokenSigner};
    use ed25519_dalek::SigningKey;
    use uuid::Uuid;

    use super::*;

    #[derive(Default)]
    struct Keys {
        keys: Mutex<Vec<PublicKey>>,
        fetches: AtomicUsize,
        /// When set, fetches fail with this error (auth unreachable).
        unreachable: Mutex<Option<String>>,
        /// The clock the answers say (auth's database's).
        clock: Mutex<Option<DateTime<Utc>>>,
    }

    impl KeySource for Arc<Keys> {
        async fn fetch(&self) -> Result<KeySet, String> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            if let Some(error) = self.unreachable.lock().map_err(|e| e.to_string())?.clone() {
                return Err(error);
            }
            Ok(KeySet {
                keys: self.keys.lock().map_err(|e| e.to_string())?.clone(),
                max_age: None,
                clock: *self.clock.lock().map_err(|e| e.to_string())?,
            })
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
    async fn tokens_are_judged_by_the_clock_auth_states_not_this_hosts() {
        // Auth's clock (its database's) runs twenty minutes behind this
        // host's: a token it just issued for fifteen minutes has expired by
        // this host's clock, and is valid by the shop's.
        let signer = TokenSigner::new("k1", SigningKey::from_bytes(&[9; 32]));
        let keys = Arc::new(Keys::default());
        keys.keys.lock().expect("lock").push(public_key(&signer));
        let shop = Utc::now() - chrono::Duration::minutes(20);
        *keys.clock.lock().expect("lock") = Some(shop);
        let issued =
            |nbf: i64, exp: i64| signer.sign(&Claims { iat: nbf, nbf, exp, ..claims(Role::Customer) });
        let fresh = issued(shop.timestamp(), shop.timestamp() + 900);
        let expired = issued(shop.timestamp() - 960, shop.timestamp() - 60);

        let verifier = verifier(&keys, Duration::from_secs(60));
        assert_eq!(verifier.refresh().await, Ok(1));
        assert!(verifier.verify(&fresh).await.is_ok(), "a fresh token of the shop's clock is accepted");
        assert_eq!(verifier.verify(&expired).await, Err(Rejection::Token(TokenError::Expired)));
        assert!(verifier.remembered(&fresh).is_some());

        // Without auth's clock the host's own is used: the fresh token is
        // expired by it.
        *keys.clock.lock().expect("lock") = None;
        let own_clock = self::verifier(&keys, Duration::from_secs(60));
        assert_eq!(own_clock.refresh().await, Ok(1));
        assert_eq!(own_clock.verify(&fresh).await, Err(Rejection::Token(TokenError::Expired)));
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
    async fn an_accepted_token_is_remembered_until_it_expires_and_refusals_are_not() {
        let signer = TokenSigner::new("k1", SigningKey::from_bytes(&[3; 32]));
        let keys = Arc::new(Keys::default());
        keys.keys.lock().expect("lock").push(public_key(&signer));
        let verifier = verifier(&keys, Duration::from_secs(60));
        let now = chrono::Utc::now();
        let claims = claims(Role::Customer);
        let token = signer.sign(&claims);
        let caller = verifier.verify_at(&token, now).await.expect("valid");
        assert_eq!(verifier.remembered_tokens(), 1);
        assert_eq!(verifier.remembered(&token), Some(caller.clone()), "known without verifying");

        // A remembered token is not verified again: with the keys gone from
        // the verifier (but no change of key set seen), it is still accepted.
        let empty = commerce_token::Verifier::empty("commerce-auth", "commerce");
        *verifier.current.write().expect("lock") = Arc::new(empty);
        assert_eq!(verifier.verify_at(&token, now).await, Ok(caller));
        // ... but not from its expiry on (leeway zero here).
        assert_eq!(verifier.refresh().await, Ok(1), "the keys are back");
        let expiry = chrono::DateTime::from_timestamp(claims.exp, 0).expect("in range");
        assert_eq!(verifier.verify_at(&token, expiry).await, Err(Rejection::Token(TokenError::Expired)));

        // A token refused for being early is accepted once its time comes.
        let fresh = Verifier::new(keys.clone(), verifier.expectations.clone());
        let early = signer.sign(&Claims { nbf: claims.nbf + 30, ..self::claims(Role::Customer) });
        let refused = fresh.verify_at(&early, now).await;
        assert_eq!(refused, Err(Rejection::Token(TokenError::NotYetValid)));
        assert_eq!(fresh.remembered_tokens(), 0, "refusals are not remembered");
        assert_eq!(fresh.remembered(&early), None);
        let later = now + chrono::Duration::seconds(31);
        assert!(fresh.verify_at(&early, later).await.is_ok(), "accepted once valid");
    }

    #[tokio::test]
    async fn a_changed_key_set_forgets_accepted_tokens_and_an_unchanged_one_keeps_them() {
        let old = TokenSigner::new("old", SigningKey::from_bytes(&[11; 32]));
        let new = TokenSigner::new("new", SigningKey::from_bytes(&[12; 32]));
        let keys = Arc::new(Keys::default());
        keys.keys.lock().expect("lock").push(public_key(&old));
        let verifier = verifier(&keys, Duration::from_secs(3600));
        let token = old.sign(&claims(Role::Customer));
        verifier.verify(&token).await.expect("valid");
        assert_eq!(verifier.refresh().await, Ok(1));
        assert_eq!(verifier.remembered_tokens(), 1, "the same keys again keep what was accepted");

        // Auth withdraws the old key: its tokens stop verifying at once.
        *keys.keys.lock().expect("lock") = vec![public_key(&new)];
        assert_eq!(verifier.refresh().await, Ok(1));
        assert_eq!(verifier.remembered_tokens(), 0);
        assert!(matches!(
            verifier.verify(&token).await,
            Err(Rejection::Token(TokenError::UnknownKey { kid })) if kid == "old"
        ));
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
        assert!(matches!(
            verifier.verify(&token).await,
            Err(Rejection::Token(TokenError::UnknownKey { .. }))
        ));
        assert_eq!(keys.fetches.load(Ordering::SeqCst), 1, "a refresh within the interval is skipped");

        let eager = self::verifier(&keys, Duration::ZERO);
        assert!(eager.verify(&token).await.is_ok(), "an allowed refresh finds the rotated key");
    }

    #[tokio::test]
    async fn without_keys_a_token_is_unverifiable_not_bad_until_auth_publishes_its_key() {
        let signer = TokenSigner::new("k1", SigningKey::from_bytes(&[5; 32]));
        let keys = Arc::new(Keys::default());
        *keys.unreachable.lock().expect("lock") = Some("connection refused".to_owned());
        let verifier = verifier(&keys, Duration::ZERO);
        let status = verifier.key_status();
        let token = signer.sign(&claims(Role::Customer));

        let rejection = verifier.verify(&token).await.expect_err("no keys");
        let Rejection::KeysUnavailable { reason } = rejection else { panic!("{rejection:?}") };
        assert!(reason.contains("signing keys") && !reason.contains("refused"), "{reason}");
        let not_ready = status.borrow().not_ready_reason().expect("not ready");
        assert!(not_ready.contains("connection refused"), "readiness shows the fetch error: {not_ready}");

        // Auth answers, but with no key yet: still not the token's fault.
        *keys.unreachable.lock().expect("lock") = None;
        let rejection = verifier.verify(&token).await.expect_err("still no keys");
        assert!(
            matches!(&rejection, Rejection::KeysUnavailable { reason } if reason.contains("no usable signing keys")),
            "{rejection:?}"
        );

        keys.keys.lock().expect("lock").push(public_key(&signer));
        verifier.verify(&token).await.expect("verified once the key is published");
        assert_eq!(*status.borrow(), KeyStatus { keys: 1, fetched: true, last_error: None });
        assert_eq!(status.borrow().not_ready_reason(), None);
    }

    #[tokio::test]
    async fn with_keys_held_an_invented_kid_is_a_bad_token_unless_the_refresh_failed() {
        let signer = TokenSigner::new("k1", SigningKey::from_bytes(&[6; 32]));
        let stranger = TokenSigner::new("k9", SigningKey::from_bytes(&[9; 32]));
        let keys = Arc::new(Keys::default());
        keys.keys.lock().expect("lock").push(public_key(&signer));
        let verifier = verifier(&keys, Duration::ZERO);
        assert_eq!(verifier.refresh().await, Ok(1));
        let foreign = stranger.sign(&claims(Role::Customer));
        assert!(matches!(
            verifier.verify(&foreign).await,
            Err(Rejection::Token(TokenError::UnknownKey { kid })) if kid == "k9"
        ));

        *keys.unreachable.lock().expect("lock") = Some("deadline exceeded".to_owned());
        let rejection = verifier.verify(&foreign).await.expect_err("cannot check k9");
        assert!(
            matches!(&rejection, Rejection::KeysUnavailable { reason } if reason.contains("cannot be fetched now")),
            "{rejection:?}"
        );
        // The held key still verifies its tokens while auth is away.
        verifier.verify(&signer.sign(&claims(Role::Customer))).await.expect("cached key verifies");
        let status = verifier.key_status().borrow().clone();
        assert_eq!((status.keys, status.last_error.as_deref()), (1, Some("deadline exceeded")));
        assert_eq!(status.not_ready_reason(), None, "held keys keep the gateway ready");
    }
}
