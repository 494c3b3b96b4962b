//! Access tokens: compact JWS (JWT) signed with Ed25519 (`alg: EdDSA`), and
//! the [`Verifier`] that checks them from the auth service's public keys.
//!
//! Pure code: no database, no network, no clock of its own except
//! [`Verifier::verify`] reading the system time (use
//! [`Verifier::verify_at`] in tests). The gateway depends on this module to
//! verify tokens locally:
//!
//! ```ignore
//! use commerce_auth::jwt::{Verifier, VerifyError};
//! // Once, and again when `verify` says `UnknownKey` (a rotated key):
//! let keys = auth_client.get_public_keys(GetPublicKeysRequest {}).await?.into_inner();
//! let verifier = Verifier::from_public_keys(&keys.keys, "commerce-auth", "commerce")?;
//! // Per request:
//! let claims = verifier.verify(bearer_token)?; // claims.sub, claims.role, ...
//! ```
//!
//! Why our own JWS instead of a JWT library: the format is three base64url
//! parts and one signature, and owning it keeps the accepted algorithms to
//! exactly one (`EdDSA`), so `alg: none` or an HMAC-with-the-public-key
//! confusion cannot exist here by construction.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The one JOSE algorithm tokens are signed with and verified for.
pub const ALGORITHM: &str = "EdDSA";
/// The JOSE curve of the keys (`crv`).
pub const CURVE: &str = "Ed25519";
/// Clock skew tolerated on `exp` and `nbf` between the auth service and a
/// verifier: pods' clocks are NTP-synced to well under a second, 30 s
/// covers a slow virtual machine without extending a token meaningfully.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// What a user may do; one per user. Serialized lower case in tokens
/// (`"role": "admin"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A shopper: their own cart, orders and notifications.
    Customer,
    /// A shop operator: catalog, stock, every order.
    Admin,
    /// A courier: the shipments assigned to them.
    Courier,
}

impl Role {
    /// The name used in tokens and in the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Admin => "admin",
            Role::Courier => "courier",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s output.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "customer" => Some(Role::Customer),
            "admin" => Some(Role::Admin),
            "courier" => Some(Role::Courier),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: the auth service's configured name.
    pub iss: String,
    /// Audience: who the token is for (the shop's services).
    pub aud: String,
    /// The user id.
    pub sub: Uuid,
    /// The user's login email (lower case), so the edge can log and show it
    /// without a lookup.
    pub email: String,
    /// The user's role when the token was issued.
    pub role: Role,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Not valid before, seconds since the epoch.
    pub nbf: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
    /// Unique token id, for audit logs.
    pub jti: Uuid,
}

impl Claims {
    /// When the token expires.
    pub fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.exp, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// When the token was issued.
    pub fn issued_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.iat, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

/// The media type tokens carry in `typ` (RFC 7519 section 5.1), and the one
/// accepted: a JWS of another type signed with the same keys is not an
/// access token (RFC 8725 section 3.11).
pub const TOKEN_TYPE: &str = "JWT";

/// The JOSE header we write and accept.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    kid: String,
    /// Extensions the recipient must understand (RFC 7515 section 4.1.11);
    /// this verifier understands none, so a token naming any is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crit: Option<serde_json::Value>,
}

/// Why a token was not accepted. [`UnknownKey`](Self::UnknownKey) tells a
/// caller to refresh its keys and try once more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the token is not a well-formed JWS: {0}")]
    Malformed(&'static str),
    #[error("the token's algorithm {0:?} is not accepted (only EdDSA)")]
    UnsupportedAlgorithm(String),
    #[error("the token's type {0:?} is not JWT")]
    WrongType(Option<String>),
    #[error("the token's header names critical extensions, which are not understood")]
    CriticalExtensions,
    #[error("the token was signed by unknown key {kid:?}")]
    UnknownKey { kid: String },
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued by {0:?}, not by the expected issuer")]
    WrongIssuer(String),
    #[error("the token is for audience {0:?}, not for the expected one")]
    WrongAudience(String),
}

/// A public key could not be used for verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key {kid:?} uses algorithm {algorithm:?}; only EdDSA is supported")]
    UnsupportedAlgorithm { kid: String, algorithm: String },
    #[error("key {kid:?} is not a valid Ed25519 public key")]
    InvalidKey { kid: String },
}

/// One verification key, as GetPublicKeys publishes it (JWK-like).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicJwk {
    /// Matches the `kid` header of the tokens it verifies.
    pub key_id: String,
    /// JOSE algorithm; must be `EdDSA`.
    pub algorithm: String,
    /// The raw 32-byte Ed25519 public key.
    pub public_key: Vec<u8>,
    /// After this instant the key verifies nothing.
    pub expires_at: Option<DateTime<Utc>>,
}

impl From<&commerce_proto::auth::v1::PublicKey> for PublicJwk {
    fn from(key: &commerce_proto::auth::v1::PublicKey) -> Self {
        Self {
            key_id: key.key_id.clone(),
            algorithm: key.algorithm.clone(),
            public_key: key.public_key.clone(),
            expires_at: key.expires_at.as_ref().and_then(commerce_proto::time::from_timestamp),
        }
    }
}

/// Verifies access tokens against a set of public keys, offline.
///
/// Checks, in order: the JWS shape, `alg == EdDSA` (nothing else is ever
/// accepted), a known `kid`, the Ed25519 signature (strict verification),
/// then `iss`, `aud`, `nbf` and `exp` with [`DEFAULT_LEEWAY`]. Cheap to
/// clone behind an `Arc`; build a new one when the keys change.
#[derive(Clone)]
pub struct Verifier {
    keys: HashMap<String, (VerifyingKey, Option<DateTime<Utc>>)>,
    issuer: String,
    audience: String,
    leeway: chrono::Duration,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("Verifier")
            .field("kids", &kids)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl Verifier {
    /// A verifier that trusts no key yet (every token is `UnknownKey`).
    pub fn empty(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            keys: HashMap::new(),
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: chrono::Duration::from_std(DEFAULT_LEEWAY).unwrap_or_default(),
        }
    }

    /// A verifier for tokens from `issuer` to `audience`, trusting `keys`.
    pub fn new(
        keys: impl IntoIterator<Item = PublicJwk>,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<Self, KeyError> {
        let mut map = HashMap::new();
        for key in keys {
            if key.algorithm != ALGORITHM {
                return Err(KeyError::UnsupportedAlgorithm { kid: key.key_id, algorithm: key.algorithm });
            }
            let bytes: [u8; 32] = key
                .public_key
                .as_slice()
                .try_into()
                .map_err(|_| KeyError::InvalidKey { kid: key.key_id.clone() })?;
            let verifying = VerifyingKey::from_bytes(&bytes)
                .map_err(|_| KeyError::InvalidKey { kid: key.key_id.clone() })?;
            map.insert(key.key_id, (verifying, key.expires_at));
        }
        Ok(Self { keys: map, ..Self::empty(issuer, audience) })
    }

    /// A verifier from a GetPublicKeys answer's keys.
    pub fn from_public_keys(
        keys: &[commerce_proto::auth::v1::PublicKey],
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<Self, KeyError> {
        Self::new(keys.iter().map(PublicJwk::from), issuer, audience)
    }

    /// Replaces the clock-skew tolerance.
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = chrono::Duration::from_std(leeway).unwrap_or_default();
        self
    }

    /// Verifies `token` now.
    pub fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
        self.verify_at(token, Utc::now())
    }

    /// Verifies `token` as of `now`.
    pub fn verify_at(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, VerifyError> {
        self.check(token, now).map(|(claims, _)| claims)
    }

    /// [`verify_at`](Self::verify_at), and the first instant from which
    /// these keys refuse the token however often it is presented: its `exp`
    /// or its key's expiry, each plus the leeway, whichever comes first.
    /// Until then the answer cannot change except by a change of keys, so a
    /// caller may remember it (the gateway's token cache does).
    pub fn verify_until(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<(Claims, DateTime<Utc>), VerifyError> {
        let (claims, key_expires_at) = self.check(token, now)?;
        // Refused once `now - leeway >= exp` in whole seconds, i.e. from the
        // instant `exp + leeway` on.
        let expired_from = DateTime::from_timestamp(claims.exp, 0).map_or(DateTime::<Utc>::MIN_UTC, |exp| {
            exp + chrono::Duration::seconds(self.leeway.num_seconds())
        });
        // Refused once `now > key expiry + leeway`: from the next instant on.
        let key_refused_from = key_expires_at.map(|at| at + self.leeway + chrono::Duration::nanoseconds(1));
        let until = key_refused_from.map_or(expired_from, |key| key.min(expired_from));
        Ok((claims, until))
    }

    /// The checks of [`verify_at`](Self::verify_at); also returns the
    /// signing key's expiry.
    fn check(&self, token: &str, now: DateTime<Utc>) -> Result<(Claims, Option<DateTime<Utc>>), VerifyError> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VerifyError::Malformed("expected three dot-separated parts"));
        };
        let header: Header = decode_json(header_b64, "header")?;
        if header.alg != ALGORITHM {
            return Err(VerifyError::UnsupportedAlgorithm(header.alg));
        }
        if header.crit.is_some() {
            return Err(VerifyError::CriticalExtensions);
        }
        // Media types compare case-insensitively (RFC 7515 section 4.1.9).
        if !header.typ.as_deref().is_some_and(|typ| typ.eq_ignore_ascii_case(TOKEN_TYPE)) {
            return Err(VerifyError::WrongType(header.typ));
        }
        let Some((key, key_expires_at)) = self.keys.get(&header.kid) else {
            return Err(VerifyError::UnknownKey { kid: header.kid });
        };
        let signature_bytes = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| VerifyError::Malformed("signature is not base64url"))?;
        let signature_bytes: [u8; 64] = signature_bytes
            .as_slice()
            .try_into()
            .map_err(|_| VerifyError::Malformed("signature is not 64 bytes"))?;
        let signature = Signature::from_bytes(&signature_bytes);
        let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
        key.verify_strict(signing_input.as_bytes(), &signature).map_err(|_| VerifyError::BadSignature)?;
        if key_expires_at.is_some_and(|expires_at| now > expires_at + self.leeway) {
            // A retired key that has run out signs nothing valid any more.
            return Err(VerifyError::UnknownKey { kid: header.kid });
        }
        let claims: Claims = decode_json(payload_b64, "payload")?;
        if claims.iss != self.issuer {
            return Err(VerifyError::WrongIssuer(claims.iss));
        }
        if claims.aud != self.audience {
            return Err(VerifyError::WrongAudience(claims.aud));
        }
        let leeway = self.leeway.num_seconds();
        let now = now.timestamp();
        if now + leeway < claims.nbf {
            return Err(VerifyError::NotYetValid);
        }
        if now - leeway >= claims.exp {
            return Err(VerifyError::Expired);
        }
        Ok((claims, *key_expires_at))
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str, what: &'static str) -> Result<T, VerifyError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| {
        VerifyError::Malformed(if what == "header" {
            "header is not base64url"
        } else {
            "payload is not base64url"
        })
    })?;
    serde_json::from_slice(&bytes).map_err(|_| {
        VerifyError::Malformed(if what == "header" {
            "header is not the expected JSON"
        } else {
            "claims are not the expected JSON"
        })
    })
}

/// Signs access tokens with one Ed25519 key. Only the auth service holds one.
#[derive(Clone)]
pub struct TokenSigner {
    kid: String,
    key: SigningKey,
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigner").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A signer for `key`, writing `kid` in every token's header.
    pub fn new(kid: impl Into<String>, key: SigningKey) -> Self {
        Self { kid: kid.into(), key }
    }

    /// The key id written into tokens.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half, for publication.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Encodes and signs `claims` as a compact JWS.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = Header {
            alg: ALGORITHM.to_owned(),
            typ: Some(TOKEN_TYPE.to_owned()),
            kid: self.kid.clone(),
            crit: None,
        };
        // Serializing these plain structs cannot fail.
        let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap_or_default());
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signing_input = format!("{header}.{payload}");
        let signature = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }
}

/// A stable key id for a public key: base64url of the first 12 bytes of its
/// SHA-256, so the same key (for example from a mounted Secret) always gets
/// the same id on every replica.
pub fn key_id_for(public_key: &VerifyingKey) -> String {
    let digest = Sha256::digest(public_key.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(seed: u8) -> TokenSigner {
        let key = SigningKey::from_bytes(&[seed; 32]);
        TokenSigner::new(key_id_for(&key.verifying_key()), key)
    }

    fn jwk(signer: &TokenSigner) -> PublicJwk {
        PublicJwk {
            key_id: signer.kid().to_owned(),
            algorithm: ALGORITHM.to_owned(),
            public_key: signer.verifying_key().to_bytes().to_vec(),
            expires_at: None,
        }
    }

    fn claims(now: DateTime<Utc>) -> Claims {
        Claims {
            iss: "commerce-auth".to_owned(),
            aud: "commerce".to_owned(),
            sub: Uuid::from_u128(7),
            email: "ada@example.com".to_owned(),
            role: Role::Admin,
            iat: now.timestamp(),
            nbf: now.timestamp(),
            exp: now.timestamp() + 900,
            jti: Uuid::from_u128(9),
        }
    }

    fn verifier(keys: &[&TokenSigner]) -> Verifier {
        Verifier::new(keys.iter().map(|signer| jwk(signer)), "commerce-auth", "commerce").expect("valid keys")
    }

    #[test]
    fn a_signed_token_verifies_and_yields_its_claims() {
        let now = Utc::now();
        let signer = signer(1);
        let token = signer.sign(&claims(now));
        assert_eq!(verifier(&[&signer]).verify_at(&token, now), Ok(claims(now)));
    }

    #[test]
    fn a_token_from_an_unknown_key_asks_for_a_key_refresh() {
        let now = Utc::now();
        let token = signer(1).sign(&claims(now));
        let other = signer(2);
        assert!(matches!(verifier(&[&other]).verify_at(&token, now), Err(VerifyError::UnknownKey { .. })));
    }

    #[test]
    fn a_token_signed_by_another_key_under_a_known_kid_is_rejected() {
        let now = Utc::now();
        let real = signer(1);
        let forger = TokenSigner::new(real.kid(), SigningKey::from_bytes(&[3; 32]));
        let token = forger.sign(&claims(now));
        assert_eq!(verifier(&[&real]).verify_at(&token, now), Err(VerifyError::BadSignature));
    }

    #[test]
    fn a_tampered_payload_is_rejected() {
        let now = Utc::now();
        let signer = signer(1);
        let token = signer.sign(&claims(now));
        let mut forged = claims(now);
        forged.role = Role::Admin;
        forged.sub = Uuid::from_u128(8);
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).expect("json"));
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(verifier(&[&signer]).verify_at(&tampered, now), Err(VerifyError::BadSignature));
    }

    /// A token with `header` (JSON), validly signed by `signer`.
    fn signed_with_header(signer: &TokenSigner, header: &str, claims: &Claims) -> String {
        let header = URL_SAFE_NO_PAD.encode(header.as_bytes());
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("json"));
        let signing_input = format!("{header}.{payload}");
        let signature = signer.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    #[test]
    fn a_token_naming_critical_extensions_is_refused_however_well_signed() {
        let now = Utc::now();
        let signer = signer(1);
        let kid = signer.kid().to_owned();
        let header = format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{kid}","crit":["exp"]}}"#);
        let token = signed_with_header(&signer, &header, &claims(now));
        assert_eq!(verifier(&[&signer]).verify_at(&token, now), Err(VerifyError::CriticalExtensions));
    }

    #[test]
    fn only_a_token_typed_jwt_is_accepted() {
        let now = Utc::now();
        let signer = signer(1);
        let kid = signer.kid().to_owned();
        let verifier = verifier(&[&signer]);
        for (typ, accepted) in
            [(Some("JWT"), true), (Some("jwt"), true), (Some("JOSE"), false), (None, false)]
        {
            let header = match typ {
                Some(typ) => format!(r#"{{"alg":"EdDSA","typ":"{typ}","kid":"{kid}"}}"#),
                None => format!(r#"{{"alg":"EdDSA","kid":"{kid}"}}"#),
            };
            let verdict = verifier.verify_at(&signed_with_header(&signer, &header, &claims(now)), now);
            if accepted {
                assert_eq!(verdict, Ok(claims(now)), "typ {typ:?}");
            } else {
                assert_eq!(verdict, Err(VerifyError::WrongType(typ.map(str::to_owned))), "typ {typ:?}");
            }
        }
    }

    #[test]
    fn other_algorithms_are_never_accepted() {
        let now = Utc::now();
        let signer = signer(1);
        let token = signer.sign(&claims(now));
        let parts: Vec<&str> = token.split('.').collect();
        for alg in ["none", "HS256", "RS256", "ES256"] {
            let header =
                URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","kid":"{}"}}"#, signer.kid()).as_bytes());
            let token = format!("{header}.{}.{}", parts[1], parts[2]);
            assert_eq!(
                verifier(&[&signer]).verify_at(&token, now),
                Err(VerifyError::UnsupportedAlgorithm(alg.to_owned()))
            );
        }
        let unsigned = format!("{}.{}.", parts[0], parts[1]);
        assert!(verifier(&[&signer]).verify_at(&unsigned, now).is_err());
    }

    #[test]
    fn expiry_and_not_before_are_enforced_with_leeway() {
        let now = Utc::now();
        let signer = signer(1);
        let token = signer.sign(&claims(now));
        let verifier = verifier(&[&signer]);
        let just_after_expiry = now + chrono::Duration::seconds(900 + 10);
        assert!(verifier.verify_at(&token, just_after_expiry).is_ok(), "within leeway");
        let long_after = now + chrono::Duration::seconds(900 + 31);
        assert_eq!(verifier.verify_at(&token, long_after), Err(VerifyError::Expired));
        let long_before = now - chrono::Duration::seconds(31);
        assert_eq!(verifier.verify_at(&token, long_before), Err(VerifyError::NotYetValid));
    }

    #[test]
    fn verify_until_names_the_first_instant_the_token_is_refused() {
        let now = Utc::now();
        let signer = signer(1);
        let token = signer.sign(&claims(now));
        let verifier = verifier(&[&signer]);
        let (_, until) = verifier.verify_until(&token, now).expect("valid");
        let exp = DateTime::from_timestamp(now.timestamp() + 900, 0).expect("in range");
        assert_eq!(until, exp + chrono::Duration::seconds(30), "exp plus the leeway");
        let just_before = until - chrono::Duration::nanoseconds(1);
        assert!(verifier.verify_at(&token, just_before).is_ok());
        assert_eq!(verifier.verify_at(&token, until), Err(VerifyError::Expired));

        // A retiring key that runs out before the token does ends it earlier.
        let key_expires_at = now + chrono::Duration::seconds(100);
        let retiring = Verifier::new(
            [PublicJwk { expires_at: Some(key_expires_at), ..jwk(&signer) }],
            "commerce-auth",
            "commerce",
        )
        .expect("keys");
        let (_, until) = retiring.verify_until(&token, now).expect("valid");
        assert!(retiring.verify_at(&token, until - chrono::Duration::nanoseconds(1)).is_ok());
        assert!(matches!(retiring.verify_at(&token, until), Err(VerifyError::UnknownKey { .. })));
    }

    #[test]
    fn issuer_and_audience_must_match() {
        let now = Utc::now();
        let signer = signer(1);
        let token = signer.sign(&claims(now));
        let wrong_issuer = Verifier::new([jwk(&signer)], "someone-else", "commerce").expect("keys");
        assert_eq!(
            wrong_issuer.verify_at(&token, now),
            Err(VerifyError::WrongIssuer("commerce-auth".to_owned()))
        );
        let wrong_audience = Verifier::new([jwk(&signer)], "commerce-auth", "billing").expect("keys");
        assert_eq!(
            wrong_audience.verify_at(&token, now),
            Err(VerifyError::WrongAudience("commerce".to_owned()))
        );
    }

    #[test]
    fn an_expired_key_verifies_nothing() {
        let now = Utc::now();
        let signer = signer(1);
        let token = signer.sign(&claims(now));
        let mut key = jwk(&signer);
        key.expires_at = Some(now - chrono::Duration::minutes(5));
        let verifier = Verifier::new([key], "commerce-auth", "commerce").expect("keys");
        assert!(matches!(verifier.verify_at(&token, now), Err(VerifyError::UnknownKey { .. })));
    }

    #[test]
    fn keys_of_other_algorithms_or_sizes_are_refused() {
        let mut key = jwk(&signer(1));
        key.algorithm = "RS256".to_owned();
        assert!(matches!(Verifier::new([key], "i", "a"), Err(KeyError::UnsupportedAlgorithm { .. })));
        let mut key = jwk(&signer(1));
        key.public_key.pop();
        assert!(matches!(Verifier::new([key], "i", "a"), Err(KeyError::InvalidKey { .. })));
    }

    #[test]
    fn garbage_is_malformed() {
        let verifier = verifier(&[&signer(1)]);
        for token in ["", "a", "a.b", "a.b.c.d", "!!.??.**"] {
            assert!(
                matches!(verifier.verify_at(token, Utc::now()), Err(VerifyError::Malformed(_))),
                "{token}"
            );
        }
    }

    #[test]
    fn key_ids_are_stable_per_key() {
        let key = SigningKey::from_bytes(&[5; 32]).verifying_key();
        assert_eq!(key_id_for(&key), key_id_for(&key));
        assert_ne!(key_id_for(&key), key_id_for(&SigningKey::from_bytes(&[6; 32]).verifying_key()));
        assert_eq!(key_id_for(&key).len(), 16);
    }
}
