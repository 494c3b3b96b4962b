//! The auth service's gRPC flows against a real Postgres: registration,
//! login, rotating refresh tokens with reuse detection, logout, token
//! validation, key publication and rotation, the key file, and bootstrap
//! accounts. Handlers are called in process through the generated trait.

mod common;

use std::time::Duration;

use commerce_auth::{AuthArgs, AuthGrpc, KeyRing, keys};
use commerce_proto::auth::v1 as pb;
use commerce_proto::auth::v1::auth_service_server::AuthService;
use commerce_token::{self as jwt, Role, Verifier, VerifyError};
use common::TestDatabase;
use tonic::{Code, Request};

struct Fixture {
    db: TestDatabase,
    grpc: AuthGrpc,
    keys: KeyRing,
    args: AuthArgs,
}

async fn fixture_with(args: AuthArgs) -> anyhow::Result<Fixture> {
    let db = TestDatabase::create("auth", &commerce_auth::MIGRATOR).await?;
    let keys = KeyRing::new(&args.issuer, &args.audience);
    commerce_auth::prepare_keys(&db.pool, &keys, &args).await?;
    let grpc = AuthGrpc::new(db.pool.clone(), keys.clone(), args.clone());
    Ok(Fixture { db, grpc, keys, args })
}

async fn fixture() -> anyhow::Result<Fixture> {
    fixture_with(AuthArgs::new()).await
}

async fn register(
    grpc: &AuthGrpc,
    email: &str,
    password: &str,
) -> Result<pb::RegisterResponse, tonic::Status> {
    AuthService::register(
        grpc,
        Request::new(pb::RegisterRequest {
            email: email.to_owned(),
            password: password.to_owned(),
            display_name: String::new(),
        }),
    )
    .await
    .map(tonic::Response::into_inner)
}

async fn login(grpc: &AuthGrpc, email: &str, password: &str) -> Result<pb::LoginResponse, tonic::Status> {
    AuthService::login(
        grpc,
        Request::new(pb::LoginRequest { email: email.to_owned(), password: password.to_owned() }),
    )
    .await
    .map(tonic::Response::into_inner)
}

async fn refresh(grpc: &AuthGrpc, token: &str) -> Result<pb::TokenPair, tonic::Status> {
    AuthService::refresh(grpc, Request::new(pb::RefreshRequest { refresh_token: token.to_owned() }))
        .await
        .map(|response| response.into_inner().tokens.unwrap_or_default())
}

async fn validate(grpc: &AuthGrpc, token: &str) -> Result<pb::ValidateTokenResponse, tonic::Status> {
    AuthService::validate_token(
        grpc,
        Request::new(pb::ValidateTokenRequest { access_token: token.to_owned() }),
    )
    .await
    .map(tonic::Response::into_inner)
}

async fn public_keys(grpc: &AuthGrpc) -> anyhow::Result<pb::GetPublicKeysResponse> {
    Ok(AuthService::get_public_keys(grpc, Request::new(pb::GetPublicKeysRequest {})).await?.into_inner())
}

fn tokens(pair: Option<pb::TokenPair>) -> pb::TokenPair {
    pair.expect("a token pair")
}

#[tokio::test]
async fn a_registered_customer_logs_in_with_any_email_case_and_gets_a_valid_token() -> anyhow::Result<()> {
    let f = fixture().await?;
    let registered = register(&f.grpc, "  Ada@Example.com ", "correct horse").await?;
    let user = registered.user.expect("user");
    assert_eq!(user.email, "ada@example.com");
    assert_eq!(user.display_name, "ada");
    assert_eq!(user.roles, vec![pb::Role::Customer as i32]);

    let logged_in = login(&f.grpc, "ADA@example.COM", "correct horse").await?;
    let pair = tokens(logged_in.tokens);
    assert_eq!(pair.token_type, "Bearer");
    let validated = validate(&f.grpc, &pair.access_token).await?;
    let claims = validated.claims.expect("claims");
    assert_eq!(claims.user_id, user.id);
    assert_eq!(claims.roles, vec![pb::Role::Customer as i32]);
    assert!(!claims.key_id.is_empty());

    // The gateway's way: verify offline from the published keys.
    let verifier =
        Verifier::from_public_keys(&public_keys(&f.grpc).await?.keys, &f.args.issuer, &f.args.audience)?;
    let offline = verifier.verify(&pair.access_token)?;
    assert_eq!(offline.sub.to_string(), user.id);
    assert_eq!(offline.role, Role::Customer);
    assert_eq!(offline.email, "ada@example.com");
    assert!(offline.exp - offline.iat == 15 * 60, "access tokens live 15 minutes by default");
    f.db.drop_database().await
}

#[tokio::test]
async fn registration_rejects_taken_emails_in_any_case_and_weak_passwords_with_clear_messages()
-> anyhow::Result<()> {
    let f = fixture().await?;
    register(&f.grpc, "grace@example.com", "long enough").await?;
    let taken = register(&f.grpc, "GRACE@example.com", "long enough").await.expect_err("taken");
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");

    let weak = register(&f.grpc, "new@example.com", "short").await.expect_err("weak");
    assert_eq!(weak.code(), Code::InvalidArgument);
    assert!(weak.message().contains("at least 8 characters"), "{}", weak.message());

    let bad_email = register(&f.grpc, "not-an-email", "long enough").await.expect_err("bad email");
    assert_eq!(bad_email.code(), Code::InvalidArgument);
    assert!(bad_email.message().contains("email"), "{}", bad_email.message());
    f.db.drop_database().await
}

#[tokio::test]
async fn wrong_passwords_and_unknown_emails_are_indistinguishable() -> anyhow::Result<()> {
    let f = fixture().await?;
    register(&f.grpc, "alan@example.com", "turing machine").await?;
    let wrong = login(&f.grpc, "alan@example.com", "enigma machine").await.expect_err("wrong password");
    let unknown = login(&f.grpc, "nobody@example.com", "turing machine").await.expect_err("unknown email");
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert_eq!(wrong.message(), unknown.message());
    f.db.drop_database().await
}

#[tokio::test]
async fn refresh_rotates_and_replaying_a_used_token_revokes_the_whole_family() -> anyhow::Result<()> {
    let f = fixture().await?;
    let first = tokens(register(&f.grpc, "linus@example.com", "penguins rule").await?.tokens);
    // A second, independent login: another family, untouched by the theft.
    let other_login = tokens(login(&f.grpc, "linus@example.com", "penguins rule").await?.tokens);

    let second = refresh(&f.grpc, &first.refresh_token).await?;
    assert_ne!(second.refresh_token, first.refresh_token);
    validate(&f.grpc, &second.access_token).await?;

    // The old token again: reuse. Refused, and its successor dies with it.
    let reused = refresh(&f.grpc, &first.refresh_token).await.expect_err("reuse");
    assert_eq!(reused.code(), Code::Unauthenticated);
    let successor = refresh(&f.grpc, &second.refresh_token).await.expect_err("family revoked");
    assert_eq!(successor.code(), Code::Unauthenticated);

    // The other login's family still works.
    refresh(&f.grpc, &other_login.refresh_token).await?;
    let unknown = refresh(&f.grpc, "made-up").await.expect_err("unknown");
    assert_eq!(unknown.code(), Code::Unauthenticated);
    f.db.drop_database().await
}

#[tokio::test]
async fn logout_revokes_the_refresh_token_and_is_idempotent() -> anyhow::Result<()> {
    let f = fixture().await?;
    let pair = tokens(register(&f.grpc, "barbara@example.com", "liskov substitution").await?.tokens);
    for _ in 0..2 {
        AuthService::logout(
            &f.grpc,
            Request::new(pb::LogoutRequest { refresh_token: pair.refresh_token.clone() }),
        )
        .await?;
    }
    let after = refresh(&f.grpc, &pair.refresh_token).await.expect_err("logged out");
    assert_eq!(after.code(), Code::Unauthenticated);
    f.db.drop_database().await
}

#[tokio::test]
async fn expired_refresh_tokens_are_refused() -> anyhow::Result<()> {
    let mut args = AuthArgs::new();
    args.refresh_token_ttl = Duration::ZERO;
    let f = fixture_with(args).await?;
    let pair = tokens(register(&f.grpc, "edsger@example.com", "goto considered").await?.tokens);
    let expired = refresh(&f.grpc, &pair.refresh_token).await.expect_err("expired");
    assert_eq!(expired.code(), Code::Unauthenticated);
    assert!(expired.message().contains("expired"), "{}", expired.message());
    f.db.drop_database().await
}

#[tokio::test]
async fn a_rotated_key_signs_new_tokens_while_the_old_key_stays_published_for_old_tokens()
-> anyhow::Result<()> {
    let f = fixture().await?;
    let before = tokens(register(&f.grpc, "margaret@example.com", "apollo guidance").await?.tokens);
    let initial = public_keys(&f.grpc).await?;
    assert_eq!(initial.keys.len(), 1);
    let old_kid = initial.keys[0].key_id.clone();
    assert_eq!(initial.keys[0].algorithm, "EdDSA");
    assert_eq!(initial.keys[0].public_key.len(), 32);
    assert!(initial.keys[0].public_key_pem.starts_with("-----BEGIN PUBLIC KEY-----"));

    let new_kid = keys::rotate_now(&f.db.pool, Duration::ZERO, f.args.access_token_ttl).await?;
    f.keys.reload(&f.db.pool).await?;
    let published = public_keys(&f.grpc).await?;
    let kids: Vec<&str> = published.keys.iter().map(|key| key.key_id.as_str()).collect();
    assert!(kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()), "{kids:?}");
    let old = published.keys.iter().find(|key| key.key_id == old_kid).expect("old key");
    assert!(old.expires_at.is_some(), "the retired key carries its expiry");

    let after = tokens(login(&f.grpc, "margaret@example.com", "apollo guidance").await?.tokens);
    let verifier = Verifier::from_public_keys(&published.keys, &f.args.issuer, &f.args.audience)?;
    verifier.verify(&before.access_token)?;
    verifier.verify(&after.access_token)?;
    let after_kid = validate(&f.grpc, &after.access_token).await?.claims.expect("claims").key_id;
    assert_eq!(after_kid, new_kid);
    // A verifier that only knows the old key is told to refresh.
    let stale = Verifier::from_public_keys(&initial.keys, &f.args.issuer, &f.args.audience)?;
    assert!(matches!(stale.verify(&after.access_token), Err(VerifyError::UnknownKey { .. })));
    f.db.drop_database().await
}

#[tokio::test]
async fn a_prepublished_key_is_published_before_it_signs() -> anyhow::Result<()> {
    let f = fixture().await?;
    let old_kid = public_keys(&f.grpc).await?.keys[0].key_id.clone();
    let next_kid = keys::rotate_now(&f.db.pool, keys::PREPUBLISH, f.args.access_token_ttl).await?;
    f.keys.reload(&f.db.pool).await?;
    let kids: Vec<String> = public_keys(&f.grpc).await?.keys.into_iter().map(|key| key.key_id).collect();
    assert!(kids.contains(&next_kid), "{kids:?}");
    let pair = tokens(register(&f.grpc, "katherine@example.com", "orbital mechanics").await?.tokens);
    let kid = validate(&f.grpc, &pair.access_token).await?.claims.expect("claims").key_id;
    assert_eq!(kid, old_kid, "the old key signs until the new one activates");
    f.db.drop_database().await
}

#[tokio::test]
async fn the_signing_key_file_is_used_when_configured() -> anyhow::Result<()> {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
    let key = keys::generate_key();
    let path = std::env::temp_dir().join(format!("auth-test-key-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(
        &path,
        key.to_pkcs8_pem(LineEnding::LF).map_err(|error| anyhow::anyhow!("{error}"))?.as_bytes(),
    )?;
    let mut args = AuthArgs::new();
    args.signing_key_file = Some(path.clone());
    let f = fixture_with(args).await?;
    let pair = tokens(register(&f.grpc, "whitfield@example.com", "diffie hellman").await?.tokens);
    let kid = validate(&f.grpc, &pair.access_token).await?.claims.expect("claims").key_id;
    assert_eq!(kid, jwt::key_id_for(&key.verifying_key()));
    std::fs::remove_file(&path)?;
    f.db.drop_database().await
}

#[tokio::test]
async fn bootstrap_accounts_are_created_once_with_their_role() -> anyhow::Result<()> {
    let f = fixture().await?;
    for _ in 0..2 {
        commerce_auth::bootstrap_account(&f.db.pool, "admin@shop.local", "admin-password", Role::Admin)
            .await?;
        commerce_auth::bootstrap_account(&f.db.pool, "courier@shop.local", "courier-password", Role::Courier)
            .await?;
    }
    let admin = tokens(login(&f.grpc, "admin@shop.local", "admin-password").await?.tokens);
    let verifier =
        Verifier::from_public_keys(&public_keys(&f.grpc).await?.keys, &f.args.issuer, &f.args.audience)?;
    assert_eq!(verifier.verify(&admin.access_token)?.role, Role::Admin);
    let courier = tokens(login(&f.grpc, "courier@shop.local", "courier-password").await?.tokens);
    assert_eq!(verifier.verify(&courier.access_token)?.role, Role::Courier);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&f.db.pool).await?;
    assert_eq!(count, 2);
    f.db.drop_database().await
}

#[tokio::test]
async fn a_forged_or_garbage_token_does_not_validate() -> anyhow::Result<()> {
    let f = fixture().await?;
    let pair = tokens(register(&f.grpc, "ken@example.com", "unix philosophy").await?.tokens);
    // Flip one character in the middle of the signature.
    let mut forged: Vec<char> = pair.access_token.chars().collect();
    let at = forged.len() - 20;
    forged[at] = if forged[at] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    for token in [forged.as_str(), "garbage", ""] {
        let error = validate(&f.grpc, token).await.expect_err("invalid");
        assert_eq!(error.code(), Code::Unauthenticated);
    }
    f.db.drop_database().await
}

#[tokio::test]
async fn two_concurrent_refreshes_of_one_token_leave_at_most_one_winner() -> anyhow::Result<()> {
    let f = fixture().await?;
    let pair = tokens(register(&f.grpc, "tony@example.com", "communicating processes").await?.tokens);
    let (a, b) = tokio::join!(refresh(&f.grpc, &pair.refresh_token), refresh(&f.grpc, &pair.refresh_token));
    let winners: Vec<pb::TokenPair> = [a, b].into_iter().filter_map(Result::ok).collect();
    assert_eq!(winners.len(), 1, "the row lock serializes the two; the second is a reuse");
    // The reuse revoked the family, the winner's successor included.
    let after = refresh(&f.grpc, &winners[0].refresh_token).await.expect_err("family revoked");
    assert_eq!(after.code(), Code::Unauthenticated);
    f.db.drop_database().await
}

#[tokio::test]
async fn maintenance_rotates_a_key_once_it_is_due_and_not_before() -> anyhow::Result<()> {
    let f = fixture().await?;
    let ttl = f.args.access_token_ttl;
    let day = Duration::from_secs(86_400);
    let now = chrono::Utc::now();
    assert!(!keys::maintain(&f.db.pool, day, ttl, now).await?, "a fresh key is not due");
    assert!(
        !keys::maintain(&f.db.pool, Duration::ZERO, ttl, now + chrono::Duration::days(400)).await?,
        "0 disables"
    );
    assert!(keys::maintain(&f.db.pool, day, ttl, now + chrono::Duration::days(2)).await?, "due after a day");
    assert_eq!(public_keys(&f.grpc).await?.keys.len(), 2);
    f.db.drop_database().await
}

#[tokio::test]
async fn a_password_hashed_with_older_parameters_signs_in_and_is_stored_again_with_todays()
-> anyhow::Result<()> {
    use argon2::PasswordHasher as _;
    let f = fixture().await?;
    register(&f.grpc, "hedy@example.com", "frequency hopping").await?;
    // As registered before the parameters changed: the crate's defaults.
    let salt = argon2::password_hash::phc::Salt::new(b"sixteen byte slt").expect("salt");
    let older =
        argon2::Argon2::default().hash_password_with_salt(b"frequency hopping", salt.as_ref())?.to_string();
    assert!(older.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{older}");
    sqlx::query("UPDATE users SET password_hash = $1 WHERE email = 'hedy@example.com'")
        .bind(&older)
        .execute(&f.db.pool)
        .await?;
    let stored = || async {
        sqlx::query_scalar::<_, String>("SELECT password_hash FROM users WHERE email = 'hedy@example.com'")
            .fetch_one(&f.db.pool)
            .await
    };
    assert_eq!(
        login(&f.grpc, "hedy@example.com", "wrong password").await.expect_err("wrong").code(),
        Code::Unauthenticated
    );
    assert_eq!(stored().await?, older, "a wrong password changes nothing");
    login(&f.grpc, "hedy@example.com", "frequency hopping").await?;
    let today = stored().await?;
    assert!(today.starts_with("$argon2id$v=19$m=9216,t=4,p=1$"), "{today}");
    assert!(!commerce_auth::password::needs_rehash(&today));
    login(&f.grpc, "hedy@example.com", "frequency hopping").await?;
    assert_eq!(stored().await?, today, "a current hash is left as it is");
    f.db.drop_database().await
}

#[tokio::test]
async fn long_expired_refresh_tokens_are_purged_and_live_ones_kept() -> anyhow::Result<()> {
    let f = fixture().await?;
    let live = tokens(register(&f.grpc, "grace@example.com", "cobol compiler").await?.tokens);
    sqlx::query("UPDATE refresh_tokens SET expires_at = now() - interval '2 days'")
        .execute(&f.db.pool)
        .await?;
    let fresh = tokens(login(&f.grpc, "grace@example.com", "cobol compiler").await?.tokens);
    let purged =
        commerce_auth::store::purge_expired_refresh_tokens(&f.db.pool, Duration::from_secs(86_400)).await?;
    assert_eq!(purged, 1);
    assert_eq!(
        refresh(&f.grpc, &live.refresh_token).await.expect_err("purged").code(),
        Code::Unauthenticated
    );
    refresh(&f.grpc, &fresh.refresh_token).await?;
    f.db.drop_database().await
}

#[tokio::test]
async fn five_wrong_passwords_pause_the_account_even_for_the_right_one_and_a_success_resets()
-> anyhow::Result<()> {
    let f = fixture().await?;
    register(&f.grpc, "paused@example.com", "right password").await?;
    // Four failures, then the owner signs in: the count starts again.
    for _ in 0..4 {
        assert_eq!(
            login(&f.grpc, "paused@example.com", "wrong guess").await.unwrap_err().code(),
            Code::Unauthenticated
        );
    }
    login(&f.grpc, "paused@example.com", "right password").await?;
    for attempt in 1..=5 {
        let refused = login(&f.grpc, "paused@example.com", "wrong guess").await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "attempt {attempt} is still heard");
    }
    // Paused: even the right password is refused unheard, saying when to retry.
    let paused = login(&f.grpc, "PAUSED@example.com", "right password").await.unwrap_err();
    assert_eq!(paused.code(), Code::ResourceExhausted, "{paused:?}");
    assert!(paused.message().contains("too many failed sign-ins"), "{}", paused.message());
    assert!(commerce_platform::quota::is_subject_quota(&paused));
    let retry = commerce_platform::quota::retry_after(&paused).expect("retry info");
    assert!((Duration::from_secs(25)..=Duration::from_secs(30)).contains(&retry), "{retry:?}");

    // Once the pause is over the owner gets in, and that resets the count.
    sqlx::query("UPDATE users SET login_paused_until = now() - interval '1 second'")
        .execute(&f.db.pool)
        .await?;
    login(&f.grpc, "paused@example.com", "right password").await?;
    let (failures, paused_until): (i32, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT login_failures, login_paused_until FROM users").fetch_one(&f.db.pool).await?;
    assert_eq!((failures, paused_until), (0, None));
    f.db.drop_database().await
}

#[tokio::test]
async fn parallel_guesses_get_no_more_than_five_password_checks_and_unknown_emails_are_never_paused()
-> anyhow::Result<()> {
    let f = fixture().await?;
    register(&f.grpc, "target@example.com", "right password").await?;
    let guesses = (0..20).map(|n| {
        let grpc = f.grpc.clone();
        async move { login(&grpc, "target@example.com", &format!("guess {n}")).await.unwrap_err().code() }
    });
    let codes = futures::future::join_all(guesses).await;
    let heard = codes.iter().filter(|code| **code == Code::Unauthenticated).count();
    let paused = codes.iter().filter(|code| **code == Code::ResourceExhausted).count();
    assert_eq!((heard, paused), (5, 15), "{codes:?}");

    // No account, no pause (and no hint that there is none).
    for _ in 0..8 {
        let refused = login(&f.grpc, "nobody@example.com", "guess").await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
    }
    f.db.drop_database().await
}
