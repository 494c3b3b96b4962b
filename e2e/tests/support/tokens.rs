//! Access tokens forged for the authentication tests: validly signed with
//! the shop's own active key (read from the auth database) but expired, and
//! tokens that a verifier must refuse before it looks at a key (tampered
//! claims, `alg: none`, HMAC).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use commerce_token::{Claims, Role, TokenSigner};
use commerce_topology::Service;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use serde_json::Value;

use super::invariants::Databases;

/// The auth service's active signing key.
pub async fn active_signer(databases: &Databases) -> anyhow::Result<TokenSigner> {
    let pool = databases.pool(Service::Auth).await?;
    let (kid, pem): (String, String) = sqlx::query_as(
        "SELECT kid, private_key_pem FROM signing_keys WHERE activates_at <= now() AND expires_at IS NULL \
         ORDER BY activates_at DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    let key = SigningKey::from_pkcs8_pem(&pem).map_err(|error| anyhow::anyhow!("bad key {kid}: {error}"))?;
    Ok(TokenSigner::new(kid, key))
}

/// A customer token signed with the shop's key that expired an hour ago
/// (far beyond the gateway's clock leeway).
pub async fn expired_token(databases: &Databases, user_id: &str, email: &str) -> anyhow::Result<String> {
    let signer = active_signer(databases).await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let now = i64::try_from(now)?;
    let claims = Claims {
        iss: "commerce-auth".to_owned(),
        aud: "commerce".to_owned(),
        sub: user_id.parse()?,
        email: email.to_owned(),
        role: Role::Customer,
        iat: now - 7200,
        nbf: now - 7200,
        exp: now - 3600,
        jti: uuid::Uuid::new_v4(),
    };
    Ok(signer.sign(&claims))
}

/// `token` with its claims changed to the admin role, signature kept.
pub fn tampered_token(token: &str) -> anyhow::Result<String> {
    let [header, payload, signature]: [&str; 3] =
        token.split('.').collect::<Vec<_>>().try_into().map_err(|_| anyhow::anyhow!("not a JWS"))?;
    let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload)?)?;
    claims["role"] = Value::from("admin");
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?);
    Ok(format!("{header}.{payload}.{signature}"))
}

/// `token`'s claims under another algorithm: `none` (no signature) or
/// `HS256` "signed" with the public key id as secret, the classic
/// algorithm-confusion attacks.
pub fn wrong_algorithm_token(token: &str, alg: &str) -> anyhow::Result<String> {
    let mut parts = token.split('.');
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap_or_default())?)?;
    let payload = parts.next().unwrap_or_default();
    let forged = serde_json::json!({"alg": alg, "typ": "JWT", "kid": header["kid"]});
    let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged)?);
    let signature = if alg == "none" { String::new() } else { URL_SAFE_NO_PAD.encode([7u8; 32]) };
    Ok(format!("{header}.{payload}.{signature}"))
}
