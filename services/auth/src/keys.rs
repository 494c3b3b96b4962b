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
//! File mode (`--signing-key-file`, the operator's mounted Secret): the
//! file's key signs in this process whatever the database holds, and other
//! keys are retired (kept published for two access-token lifetimes, which
//! covers a rolling update of the pods). The operator rotates by adding a
//! *next* key with its activation time to the Secret
//! (`--next-signing-key-file`, `--next-signing-key-activation-file`): every
//! replica re-reads the files each [`RELOAD_INTERVAL`], publishes the next
//! key at once, signs with it from its activation on, and sets the current
//! key's expiry to that activation plus one access-token lifetime (+ slack).
//! Later the operator promotes the next key to the key file and drops the
//! old one; the old key's expiry is already set, so it still verifies every
//! token it signed and then disappears.
//!
//! Replicas whose kubelet has not refreshed the mounted files yet may, for
//! a round, write the expiries of the previous view; the replicas that see
//! the new files write them back the next round. Every expiry either view
//! writes lies past the last token it concerns, so nothing valid stops
//! verifying meanwhile.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use sqlx::PgPool;

use crate::Error;
use crate::domain;
use crate::store::{self, SigningKeyRow};
use commerce_token::{self as jwt, PublicJwk, TokenSigner, Verifier};

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

/// Which keys sign in file mode, whatever the database says is newest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileKids {
    /// The key file's key: signs until `next` activates.
    pub current: String,
    /// The next key file's key and when it starts signing.
    pub next: Option<(String, DateTime<Utc>)>,
}

impl FileKids {
    /// The kid that signs at `now`.
    pub fn signing_at(&self, now: DateTime<Utc>) -> &str {
        match &self.next {
            Some((next, activates_at)) if *activates_at <= now => next,
            _ => &self.current,
        }
    }
}

/// The keys of this replica: which key signs now, and a verifier for every
/// published key. Reloaded from the database periodically.
#[derive(Debug, Clone)]
pub struct KeyRing {
    issuer: String,
    audience: String,
    /// The keys that sign regardless of the database's activations (file
    /// mode); replaced each time the key files are read.
    pinned: Arc<RwLock<Option<FileKids>>>,
    set: Arc<RwLock<Arc<KeySet>>>,
}

impl KeyRing {
    /// An empty ring (signs nothing until [`reload`](Self::reload)).
    pub fn new(issuer: &str, audience: &str) -> Self {
        let verifier = Verifier::empty(issuer, audience);
        Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            pinned: Arc::new(RwLock::new(None)),
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

    /// The key that signs at `now`: the pinned one (file mode: the next
    /// key once it has activated, else the current one), else the newest
    /// key whose activation has passed.
    pub fn signer(&self, now: DateTime<Utc>) -> Result<TokenSigner, Error> {
        let set = self.current();
        let pinned = self.pinned.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Some(pinned) = pinned
            && let Some((signer, _)) =
                set.signers.iter().find(|(signer, _)| signer.kid() == pinned.signing_at(now))
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

    /// Makes `kids` the keys this process signs with, whatever the
    /// database says is newest (file mode). Signs with them once they are
    /// loaded (at the next reload).
    pub fn pin(&self, kids: FileKids) {
        *self.pinned.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(kids);
    }

    /// Reloads the keys published now (by the database's clock) from the
    /// database.
    pub async fn reload(&self, pool: &PgPool) -> Result<(), Error> {
        self.reload_at(pool, store::now(pool).await?).await
    }

    /// Reloads the keys published at `now` from the database (tests look
    /// ahead in time with it).
    pub async fn reload_at(&self, pool: &PgPool, now: DateTime<Utc>) -> Result<(), Error> {
        let rows = store::published_keys(pool, now).await?;
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
    let now = store::now(&mut *tx).await?;
    let kid = insert_successor(&mut tx, now + chrono_duration(prepublish), access_token_ttl).await?;
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
    store::expire_keys_except(conn, &[&kid], domain::key_expiry(activates_at, access_token_ttl)).await?;
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

/// The next key of file mode: the key the operator pre-publishes, and when
/// it starts signing.
#[derive(Debug, Clone)]
pub struct NextKey {
    pub key: SigningKey,
    pub activates_at: DateTime<Utc>,
}

/// The key files of file mode as read at one moment.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    /// The key that signs now.
    pub current: SigningKey,
    /// The key that signs from its activation on, while a rotation is under
    /// way.
    pub next: Option<NextKey>,
}

/// Reads the key file and, when both paths are given and the next key file
/// exists, the next key with its activation (an RFC 3339 time). A missing
/// next key file means no rotation is under way; a next key without a
/// readable activation is an error rather than a key that never signs.
pub fn read_key_files(
    current: &Path,
    next: Option<&Path>,
    next_activation: Option<&Path>,
) -> Result<KeyFiles, Error> {
    let current = read_key_file(current)?;
    let (Some(next), Some(activation)) = (next, next_activation) else {
        return Ok(KeyFiles { current, next: None });
    };
    if !next.exists() {
        return Ok(KeyFiles { current, next: None });
    }
    let key = read_key_file(next)?;
    let text = std::fs::read_to_string(activation)
        .map_err(|source| Error::ReadSigningKey { path: activation.to_path_buf(), source })?;
    let activates_at = DateTime::parse_from_rfc3339(text.trim())
        .map_err(|error| Error::ParseSigningKey {
            path: activation.to_path_buf(),
            reason: format!("the activation time is not RFC 3339: {error}"),
        })?
        .with_timezone(&Utc);
    Ok(KeyFiles { current, next: Some(NextKey { key, activates_at }) })
}

/// File mode: stores the key files' keys and the expiries they imply, and
/// returns the kids to pin. The current key is stored (activating `now`
/// when first seen); a next key is stored with its activation, so it is
/// published at once, and the current key then expires one access-token
/// lifetime (+ slack) after that activation. Any other key still without
/// an expiry is retired, kept published for two token lifetimes.
pub async fn sync_file_keys(
    pool: &PgPool,
    files: &KeyFiles,
    access_token_ttl: Duration,
    now: DateTime<Utc>,
) -> Result<FileKids, Error> {
    let (kid, pem, public) = encode(&files.current)?;
    let next = match &files.next {
        Some(next) => {
            let (next_kid, next_pem, next_public) = encode(&next.key)?;
            // The same key twice is no rotation.
            (next_kid != kid).then_some((next_kid, next_pem, next_public, next.activates_at))
        }
        None => None,
    };
    let mut tx =
        pool.begin().await.map_err(|source| Error::Database { action: "begin key install", source })?;
    store::lock_keys(&mut tx).await?;
    store::upsert_key(&mut tx, &kid, &pem, &public, now).await?;
    let retire_others = domain::key_expiry(now, access_token_ttl * 2);
    match &next {
        Some((next_kid, next_pem, next_public, activates_at)) => {
            store::upsert_key_activating(&mut tx, next_kid, next_pem, next_public, *activates_at).await?;
            store::expire_keys_except(&mut tx, &[&kid, next_kid], retire_others).await?;
            store::set_key_expiry(&mut tx, &kid, domain::key_expiry(*activates_at, access_token_ttl)).await?;
        }
        None => store::expire_keys_except(&mut tx, &[&kid], retire_others).await?,
    }
    tx.commit().await.map_err(|source| Error::Database { action: "commit key install", source })?;
    Ok(FileKids { current: kid, next: next.map(|(next_kid, _, _, activates_at)| (next_kid, activates_at)) })
}

/// File mode: reads the key files, stores their keys ([`sync_file_keys`])
/// and pins them in `ring`; logs when the pinned keys change. The caller
/// reloads the ring.
pub async fn install_file_keys(
    pool: &PgPool,
    ring: &KeyRing,
    paths: FilePaths<'_>,
    access_token_ttl: Duration,
    now: DateTime<Utc>,
) -> Result<FileKids, Error> {
    let files = read_key_files(paths.current, paths.next, paths.next_activation)?;
    let kids = sync_file_keys(pool, &files, access_token_ttl, now).await?;
    let before = ring.pinned.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    if before.as_ref() != Some(&kids) {
        match &kids.next {
            Some((next, activates_at)) => tracing::info!(
                kid = %kids.current,
                %next,
                %activates_at,
                "signing with the key file's key; the next key is published"
            ),
            None => tracing::info!(
                kid = %kids.current,
                path = %paths.current.display(),
                "signing with the key from the key file"
            ),
        }
    }
    ring.pin(kids.clone());
    Ok(kids)
}

/// Where file mode's keys are read from.
#[derive(Debug, Clone, Copy)]
pub struct FilePaths<'a> {
    pub current: &'a Path,
    pub next: Option<&'a Path>,
    pub next_activation: Option<&'a Path>,
}

fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or_default()
}
