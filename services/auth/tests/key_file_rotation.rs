//! File mode's key rotation against a real Postgres, as the operator drives
//! it through the mounted signing-key Secret: a next key with its
//! activation time appears next to the key file, is published at once,
//! signs from its activation on; then the operator promotes it to the key
//! file and drops the old one, which keeps verifying its tokens until its
//! end and is unpublished after. Refresh tokens live through all of it.
//! Each "reload tick" is one call of [`keys::install_file_keys`] and
//! [`KeyRing::reload`], as the maintenance loop does every 30 s.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use commerce_auth::keys::{self, FileKids};
use commerce_auth::{AuthArgs, AuthGrpc, KeyRing};
use commerce_proto::auth::v1 as pb;
use commerce_proto::auth::v1::auth_service_server::AuthService;
use commerce_token::{self as jwt, Verifier, VerifyError};
use common::TestDatabase;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use tonic::Request;

/// A directory laid out like the mounted Secret.
struct KeyDir {
    dir: PathBuf,
}

impl KeyDir {
    fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("auth-key-rotation-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    fn current(&self) -> PathBuf {
        self.dir.join("signing-key.pem")
    }

    fn next(&self) -> PathBuf {
        self.dir.join("next-signing-key.pem")
    }

    fn activation(&self) -> PathBuf {
        self.dir.join("next-signing-key-activates-at")
    }

    fn write_key(path: &Path, key: &SigningKey) -> anyhow::Result<()> {
        let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|error| anyhow::anyhow!("{error}"))?;
        std::fs::write(path, pem.as_bytes())?;
        Ok(())
    }

    /// The operator starts a rotation: the next key and its activation.
    fn add_next(&self, key: &SigningKey, activates_at: DateTime<Utc>) -> anyhow::Result<()> {
        Self::write_key(&self.next(), key)?;
        std::fs::write(self.activation(), activates_at.to_rfc3339())?;
        Ok(())
    }

    /// The operator finishes it: the next key becomes the key file's.
    fn promote(&self, key: &SigningKey) -> anyhow::Result<()> {
        Self::write_key(&self.current(), key)?;
        std::fs::remove_file(self.next())?;
        std::fs::remove_file(self.activation())?;
        Ok(())
    }

    fn args(&self) -> AuthArgs {
        let mut args = AuthArgs::new();
        args.signing_key_file = Some(self.current());
        args.next_signing_key_file = Some(self.next());
        args.next_signing_key_activation_file = Some(self.activation());
        args
    }
}

impl Drop for KeyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Fixture {
    db: TestDatabase,
    grpc: AuthGrpc,
    keys: KeyRing,
    args: AuthArgs,
}

impl Fixture {
    async fn start(args: AuthArgs) -> anyhow::Result<Self> {
        let db = TestDatabase::create("auth", &commerce_auth::MIGRATOR).await?;
        let keys = KeyRing::new(&args.issuer, &args.audience);
        commerce_auth::prepare_keys(&db.pool, &keys, &args).await?;
        let grpc = AuthGrpc::new(db.pool.clone(), keys.clone(), args.clone());
        Ok(Self { db, grpc, keys, args })
    }

    /// One round of the maintenance loop: re-read the files, reload.
    async fn tick(&self) -> anyhow::Result<FileKids> {
        let paths = self.args.key_file_paths().expect("file mode");
        let kids =
            keys::install_file_keys(&self.db.pool, &self.keys, paths, self.args.access_token_ttl, Utc::now())
                .await?;
        self.keys.reload(&self.db.pool).await?;
        Ok(kids)
    }

    async fn published(&self) -> anyhow::Result<Vec<pb::PublicKey>> {
        Ok(AuthService::get_public_keys(&self.grpc, Request::new(pb::GetPublicKeysRequest {}))
            .await?
            .into_inner()
            .keys)
    }

    async fn register(&self, email: &str) -> anyhow::Result<pb::TokenPair> {
        let request = pb::RegisterRequest {
            email: email.to_owned(),
            password: "rotate me gently".to_owned(),
            display_name: String::new(),
        };
        Ok(AuthService::register(&self.grpc, Request::new(request))
            .await?
            .into_inner()
            .tokens
            .expect("tokens"))
    }

    async fn login(&self, email: &str) -> anyhow::Result<pb::TokenPair> {
        let request = pb::LoginRequest { email: email.to_owned(), password: "rotate me gently".to_owned() };
        Ok(AuthService::login(&self.grpc, Request::new(request)).await?.into_inner().tokens.expect("tokens"))
    }

    async fn refresh(&self, token: &str) -> Result<pb::TokenPair, tonic::Status> {
        let request = pb::RefreshRequest { refresh_token: token.to_owned() };
        AuthService::refresh(&self.grpc, Request::new(request))
            .await
            .map(|response| response.into_inner().tokens.expect("tokens"))
    }
}

fn kid_of(key: &SigningKey) -> String {
    jwt::key_id_for(&key.verifying_key())
}

/// The kid in a token's header.
fn token_kid(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().expect("a header");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).expect("base64url");
    let header: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    header["kid"].as_str().expect("a kid").to_owned()
}

fn kids(keys: &[pb::PublicKey]) -> Vec<&str> {
    keys.iter().map(|key| key.key_id.as_str()).collect()
}

fn expiry(keys: &[pb::PublicKey], kid: &str) -> Option<DateTime<Utc>> {
    let key = keys.iter().find(|key| key.key_id == kid).expect("the key is published");
    key.expires_at.as_ref().and_then(|at| DateTime::from_timestamp(at.seconds, 0))
}

/// How long after "now" the next key activates in these tests: long enough
/// to sign with the old key first, short enough to wait for.
const ACTIVATION_DELAY: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_next_key_is_published_before_it_signs_and_the_old_key_verifies_until_its_end_then_is_gone()
-> anyhow::Result<()> {
    let dir = KeyDir::new()?;
    let (old, new) = (keys::generate_key(), keys::generate_key());
    KeyDir::write_key(&dir.current(), &old)?;
    let f = Fixture::start(dir.args()).await?;
    let ttl = chrono::Duration::from_std(f.args.access_token_ttl)?;
    let before = f.register("grace@example.com").await?;
    assert_eq!(token_kid(&before.access_token), kid_of(&old));
    assert_eq!(kids(&f.published().await?), [kid_of(&old)], "no next key yet");

    // The operator adds the next key; one reload later it is published.
    let activates_at = Utc::now() + chrono::Duration::from_std(ACTIVATION_DELAY)?;
    dir.add_next(&new, activates_at)?;
    let pinned = f.tick().await?;
    assert_eq!(pinned.next.as_ref().map(|(kid, _)| kid.clone()), Some(kid_of(&new)));
    let published = f.published().await?;
    assert!(kids(&published).contains(&kid_of(&new).as_str()), "{:?}", kids(&published));
    let not_before = published.iter().find(|key| key.key_id == kid_of(&new)).unwrap().not_before.unwrap();
    assert_eq!(not_before.seconds, activates_at.timestamp(), "published with its activation");
    // The old key's end: its last token, signed just before the activation,
    // expires one token lifetime after it (plus the slack).
    let old_end = expiry(&published, &kid_of(&old)).expect("the old key now has an end");
    assert!(old_end >= activates_at + ttl, "{old_end} < {activates_at} + {ttl}");
    assert_eq!(expiry(&published, &kid_of(&new)), None);

    // Published, but not signing yet.
    let still_old = f.login("grace@example.com").await?;
    assert_eq!(token_kid(&still_old.access_token), kid_of(&old));
    // A verifier that fetched the keys now knows both.
    let verifier = Verifier::from_public_keys(&published, &f.args.issuer, &f.args.audience)?;

    tokio::time::sleep(ACTIVATION_DELAY + Duration::from_millis(500)).await;
    let signed_by_new = f.login("grace@example.com").await?;
    assert_eq!(
        token_kid(&signed_by_new.access_token),
        kid_of(&new),
        "the next key signs from its activation"
    );
    verifier.verify(&signed_by_new.access_token)?;
    verifier.verify(&still_old.access_token)?;

    // The operator promotes the next key and drops the old one.
    dir.promote(&new)?;
    let pinned = f.tick().await?;
    assert_eq!(pinned, FileKids { current: kid_of(&new), next: None });
    let published = f.published().await?;
    assert_eq!(expiry(&published, &kid_of(&old)), Some(old_end), "promotion keeps the old key's end");
    assert_eq!(token_kid(&f.login("grace@example.com").await?.access_token), kid_of(&new));

    // Until its end, the old key verifies its tokens: just before the last
    // old token expires, a verifier of the keys published then accepts it.
    let last_old_exp = Verifier::from_public_keys(&published, &f.args.issuer, &f.args.audience)?
        .verify(&still_old.access_token)?
        .expires_at();
    let just_before = last_old_exp - chrono::Duration::seconds(1);
    f.keys.reload_at(&f.db.pool, just_before).await?;
    assert!(f.keys.published().iter().any(|key| key.kid == kid_of(&old)));
    f.keys.verifier().verify_at(&still_old.access_token, just_before)?;
    // After its end it is gone: unpublished, and its tokens name an unknown key.
    let after_end = old_end + chrono::Duration::seconds(1);
    f.keys.reload_at(&f.db.pool, after_end).await?;
    let later: Vec<String> = f.keys.published().into_iter().map(|key| key.kid).collect();
    assert_eq!(later, [kid_of(&new)]);
    assert!(matches!(
        f.keys.verifier().verify_at(&still_old.access_token, after_end),
        Err(VerifyError::UnknownKey { .. })
    ));
    f.db.drop_database().await
}

#[tokio::test]
async fn a_refresh_token_issued_before_the_rotation_still_refreshes_after_it() -> anyhow::Result<()> {
    let dir = KeyDir::new()?;
    let (old, new) = (keys::generate_key(), keys::generate_key());
    KeyDir::write_key(&dir.current(), &old)?;
    let f = Fixture::start(dir.args()).await?;
    let first = f.register("hopper@example.com").await?;
    let second = f.login("hopper@example.com").await?;
    assert_eq!(token_kid(&first.access_token), kid_of(&old));

    dir.add_next(&new, Utc::now() + chrono::Duration::from_std(ACTIVATION_DELAY)?)?;
    f.tick().await?;
    // During pre-publication a refresh still gets an old-key token.
    let during = f.refresh(&first.refresh_token).await?;
    assert_eq!(token_kid(&during.access_token), kid_of(&old));

    tokio::time::sleep(ACTIVATION_DELAY + Duration::from_millis(500)).await;
    dir.promote(&new)?;
    f.tick().await?;
    // After the rotation: both sessions go on, with new-key tokens.
    let after = f.refresh(&during.refresh_token).await?;
    assert_eq!(token_kid(&after.access_token), kid_of(&new));
    let other = f.refresh(&second.refresh_token).await?;
    assert_eq!(token_kid(&other.access_token), kid_of(&new));
    let verifier = Verifier::from_public_keys(&f.published().await?, &f.args.issuer, &f.args.audience)?;
    verifier.verify(&after.access_token)?;
    verifier.verify(&other.access_token)?;
    f.db.drop_database().await
}

#[tokio::test]
async fn a_next_key_without_its_activation_time_is_refused_not_signed_with() -> anyhow::Result<()> {
    let dir = KeyDir::new()?;
    let (old, new) = (keys::generate_key(), keys::generate_key());
    KeyDir::write_key(&dir.current(), &old)?;
    let f = Fixture::start(dir.args()).await?;
    KeyDir::write_key(&dir.next(), &new)?;
    let error = f.tick().await.expect_err("no activation time");
    assert!(error.to_string().contains("next-signing-key-activates-at"), "{error}");
    std::fs::write(dir.activation(), "tomorrow morning")?;
    let error = f.tick().await.expect_err("a malformed activation time");
    assert!(format!("{error:#}").contains("RFC 3339"), "{error:#}");
    // The keys of the last good read still sign.
    assert_eq!(token_kid(&f.register("lovelace@example.com").await?.access_token), kid_of(&old));
    assert_eq!(kids(&f.published().await?), [kid_of(&old)]);
    f.db.drop_database().await
}
