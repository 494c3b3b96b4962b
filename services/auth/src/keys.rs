//! Signing keys: creation, rotation with pre-publication, retirement, and
//! the in-memory [`KeyRing`] each replica signs and verifies with.
//!
//! Lifecycle of a database-generated key: created with `activates_at` a few
//! minutes ahead ([`PREPUBLISH`]) so that verifiers see it in GetPublicKeys
//! before the first token signed by it; signs from then on (the newest
//! activated key signs); when a successor is created it gets `expires_at` =
//! the successor's activation + one access-token lifetime (+ slack), so every
//! token it signed still verifies; after that it is no longer published.
//!
//! With `--signing-key-file` the file's key signs in this process whatever
//! the database holds, and other keys are retired (kept published for two
//! access-token lifetimes, which covers a rolling update of the pods).

use std::path::Path;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use sqlx::PgPool;

use crate::Error;
use crate::domain;
use crate::jwt::{self, PublicJwk, TokenSigner, Verifier};
use crate::store::{self, SigningKeyRow};

/// How far ahead of its first signature a rotated key is published:
/// several GetPublicKeys cache periods ([`PUBLIC_KEYS_MAX_AGE`]) plus a
/// reload period of every replica.
pub const PREPUBLISH: Duration = Duration::from_secs(5 * 60);
/// How long a verifier may cache GetPublicKeys.
pub const PUBLIC_KEYS_MAX_AGE: Duration = Duration::from_secs(60);
/// How often each replica reloads keys (and, in database mode, rotates them
/// when due).
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(30);

/// One published key.
#[derive(Debug, Clone)]
pub struct PublishedKey {
    pub kid: String,
    pub public_key: [u8; 32],
    pub public_key_pem: String,
    pub activates_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug)]
struct KeySet {
    /// Signers of every published key with their activation, newest
    /// activation first.
    signers: Vec<(TokenSigner, DateTime<Utc>)>,
    published: Vec<PublishedKey>,
    verifier: Verifier,
}

/// The keys of this replica: which key signs now, and a verifier for every
/// published key. Reloaded from the database periodically.
#[derive(Debug, Clone)]
pub struct KeyRing {
    issuer: String,
    audience: String,
    /// The kid that signs regardless of activation (file mode).
    pinned: Arc<OnceLock<String>>,
    set: Arc<RwLock<Arc<KeySet>>>,
}

impl KeyRing {
    /// An empty ring (signs nothing until [`reload`](Self::reload)).
    pub fn new(issuer: &str, audience: &str) -> Self {
        let verifier = Verifier::empty(issuer, audience);
        Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            pinned: Arc::new(OnceLock::new()),
            set: Arc::new(RwLock::new(Arc::new(KeySet {
                signers: Vec::new(),
                published: Vec::new(),
                verifier,
            }))),
        }
    }

    fn current(&self) -> Arc<KeySet> {
        self.set.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The key that signs at `now`: the pinned one, else the newest key
    /// whose activation has passed.
    pub fn signer(&self, now: DateTime<Utc>) -> Result<TokenSigner, Error> {
        let set = self.current();
        if let Some(pinned) = self.pinned.get()
            && let Some((signer, _)) = set.signers.iter().find(|(signer, _)| signer.kid() == pinned)
        {
            return Ok(signer.clone());
        }
        set.signers
            .iter()
            .find(|(_, activates_at)| *activates_at <= now)
            .map(|(signer, _)| signer.clone())
            .ok_or(Error::NoSigningKey)
    }

    /// A verifier for every published key.
    pub fn verifier(&self) -> Verifier {
        self.current().verifier.clone()
    }

    /// Every published key.
    pub fn published(&self) -> Vec<PublishedKey> {
        self.current().published.clone()
    }

    /// Makes `kid` the key this process signs with, whatever the database
    /// says is newest (file mode). Takes effect at the next reload.
    pub fn pin(&self, kid: String) {
        let _ = self.pinned.set(kid);
    }

    /// Reloads the keys from the database.
    pub async fn reload(&self, pool: &PgPool) -> Result<(), Error> {
        let rows = store::published_keys(pool).await?;
        let mut signers = Vec::new();
        let mut published = Vec::new();
        for row in &rows {
            let key = decode_row(row)?;
            let public = key.verifying_key();
            // A retired key still signs until its successor activates
            // (the newest activated key wins): its expiry is the
            // successor's activation plus one token lifetime, so that is
            // safe, and it covers the pre-publication window.
            signers.push((TokenSigner::new(row.kid.clone(), key), row.activates_at));
            published.push(PublishedKey {
                kid: row.kid.clone(),
                public_key: public.to_bytes(),
                public_key_pem: public.to_public_key_pem(LineEnding::LF).unwrap_or_default(),
                activates_at: row.activates_at,
                expires_at: row.expires_at,
            });
        }
        let verifier = Verifier::new(
            published.iter().map(|key| PublicJwk {
                key_id: key.kid.clone(),
                algorithm: jwt::ALGORITHM.to_owned(),
                public_key: key.public_key.to_vec(),
                expires_at: key.expires_at,
            }),
            self.issuer.clone(),
            self.audience.clone(),
        )
        .map_err(|_| Error::DecodeStoredKey { kid: "published set".to_owned() })?;
        let set = Arc::new(KeySet { signers, published, verifier });
        *self.set.write().unwrap_or_else(std::sync::PoisonError::into_inner) = set;
        Ok(())
    }
}

fn decode_row(row: &SigningKeyRow) -> Result<SigningKey, Error> {
    SigningKey::from_pkcs8_pem(&row.private_key_pem)
        .map_err(|_| Error::DecodeStoredKey { kid: row.kid.clone() })
}

/// A fresh random Ed25519 key.
pub fn generate_key() -> SigningKey {
    let secret: [u8; 32] = rand::random();
    SigningKey::from_bytes(&secret)
}

fn encode(key: &SigningKey) -> Result<(String, String, [u8; 32]), Error> {
    let public = key.verifying_key();
    let kid = jwt::key_id_for(&public);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| Error::DecodeStoredKey { kid: kid.clone() })?
        .to_string();
    Ok((kid, pem, public.to_bytes()))
}

/// Database mode: makes sure a key exists and rotates it when
/// `rotation` has passed since the newest key activated. Safe on every
/// replica at once (advisory lock). Returns true when it created a key.
pub async fn maintain(
    pool: &PgPool,
    rotation: Duration,
    access_token_ttl: Duration,
    now: DateTime<Utc>,
) -> Result<bool, Error> {
    let mut tx =
        pool.begin().await.map_err(|source| Error::Database { action: "begin key maintenance", source })?;
    store::lock_keys(&mut tx).await?;
    let keys = store::unexpired_signing_keys(&mut tx).await?;
    let created = match keys.first() {
        None => {
            // First start: nobody can have cached anything, sign at once.
            let (kid, pem, public) = encode(&generate_key())?;
            store::upsert_key(&mut tx, &kid, &pem, &public, now).await?;
            tracing::info!(%kid, "created the first signing key");
            true
        }
        Some(newest)
            if newest.activates_at <= now && domain::key_rotation_due(newest.activates_at, now, rotation) =>
        {
            insert_successor(&mut tx, now + chrono_duration(PREPUBLISH), access_token_ttl).await?;
            true
        }
        Some(_) => false,
    };
    tx.commit().await.map_err(|source| Error::Database { action: "commit key maintenance", source })?;
    Ok(created)
}

/// Creates a successor key now (the "rotate" operation), activating after
/// `prepublish`; older keys expire one token lifetime after that. Returns
/// the new kid.
pub async fn rotate_now(
    pool: &PgPool,
    prepublish: Duration,
    access_token_ttl: Duration,
) -> Result<String, Error> {
    let mut tx =
        pool.begin().await.map_err(|source| Error::Database { action: "begin key rotation", source })?;
    store::lock_keys(&mut tx).await?;
    let kid = insert_successor(&mut tx, Utc::now() + chrono_duration(prepublish), access_token_ttl).await?;
    tx.commit().await.map_err(|source| Error::Database { action: "commit key rotation", source })?;
    Ok(kid)
}

async fn insert_successor(
    conn: &mut sqlx::PgConnection,
    activates_at: DateTime<Utc>,
    access_token_ttl: Duration,
) -> Result<String, Error> {
    let (kid, pem, public) = encode(&generate_key())?;
    store::upsert_key(conn, &kid, &pem, &public, activates_at).await?;
    store::expire_keys_except(conn, &kid, domain::key_expiry(activates_at, access_token_ttl)).await?;
    tracing::info!(%kid, %activates_at, "rotated the signing key");
    Ok(kid)
}

/// Reads the key file of file mode: a PKCS#8 PEM Ed25519 private key (what
/// the operator's signing-key Secret holds). Touches no database.
pub fn read_key_file(path: &Path) -> Result<SigningKey, Error> {
    let pem = std::fs::read_to_string(path)
        .map_err(|source| Error::ReadSigningKey { path: path.to_path_buf(), source })?;
    SigningKey::from_pkcs8_pem(pem.trim())
        .map_err(|error| Error::ParseSigningKey { path: path.to_path_buf(), reason: error.to_string() })
}

/// File mode: installs the key from `path` as the signing key of this
/// process and returns its kid.
pub async fn install_file_key(
    pool: &PgPool,
    path: &Path,
    access_token_ttl: Duration,
) -> Result<String, Error> {
    let key = read_key_file(path)?;
    let (kid, pem, public) = encode(&key)?;
    let now = Utc::now();
    let mut tx =
        pool.begin().await.map_err(|source| Error::Database { action: "begin key install", source })?;
    store::lock_keys(&mut tx).await?;
    store::upsert_key(&mut tx, &kid, &pem, &public, now).await?;
    store::expire_keys_except(&mut tx, &kid, domain::key_expiry(now, access_token_ttl * 2)).await?;
    tx.commit().await.map_err(|source| Error::Database { action: "commit key install", source })?;
    tracing::info!(%kid, path = %path.display(), "signing with the key from the key file");
    Ok(kid)
}

fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or_default()
}
