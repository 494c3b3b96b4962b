//! Secrets whose values the operator generates: the JWT signing key, each
//! service's database password, the stack's own Kafka user's password, the
//! managed Postgres' admin password and the managed Redis' password.
//!
//! `build` is pure, so it cannot roll dice. The values come in as
//! [`SecretValues`]: the reconciler reads them back from the Secrets that
//! already exist and generates only the ones that are missing (a first
//! reconcile, or a Secret someone deleted). A value is therefore generated
//! once and then kept; every later build produces the same Secret, which the
//! apply step recognises as unchanged. `render` and the snapshot tests pass
//! [`SecretValues::placeholders`] instead, so that their output is stable and
//! never carries a real secret.
//!
//! The signing-key Secret also carries the state of a key rotation (a next
//! key, its activation, annotations saying when things happen): the
//! reconciler decides it ([`crate::reconcile::signing_key`]) and hands it
//! over as a [`SigningKeySecret`]; this module only renders it.

use std::collections::BTreeMap;

use base64::Engine as _;
use commerce_topology::Service;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rand::Rng;
use rand::distr::Alphanumeric;

use super::names::{self, Component};
use crate::Error;
use crate::validate::{Infra, ValidStack};

/// Key of the Ed25519 private key in the auth service's signing-key Secret,
/// as PKCS#8 PEM (RFC 8410): the file `--signing-key-file` reads. Also the
/// file's name where the Secret is mounted.
pub const SIGNING_KEY_PEM_KEY: &str = "signing-key.pem";
/// Key of the next signing key during a rotation, PKCS#8 PEM: the file
/// `--next-signing-key-file` reads. The auth service publishes it at once
/// and signs with it from [`NEXT_SIGNING_KEY_ACTIVATION_KEY`] on.
pub const NEXT_SIGNING_KEY_PEM_KEY: &str = "next-signing-key.pem";
/// Key of the RFC 3339 time from which the next signing key signs: the file
/// `--next-signing-key-activation-file` reads.
pub const NEXT_SIGNING_KEY_ACTIVATION_KEY: &str = "next-signing-key-activates-at";
/// Key of a generated password.
pub const PASSWORD_KEY: &str = "password";
/// Key of a user name next to a generated password.
pub const USERNAME_KEY: &str = "username";
/// Key of a database Secret's full connection URL, password included.
pub const URL_KEY: &str = "url";
/// Key of a database Secret's database name.
pub const DATABASE_KEY: &str = "database";
/// The managed Postgres' superuser.
pub const POSTGRES_ADMIN_USER: &str = "postgres";
/// What `render` shows instead of a generated value.
pub const PLACEHOLDER: &str = "generated-in-cluster";

/// 32 alphanumeric characters: about 190 bits, and safe in a URL without
/// escaping (the services receive their database URL with the password in it).
const PASSWORD_LEN: usize = 32;

/// How a generated value is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// A random alphanumeric password.
    Password,
    /// A random Ed25519 private key, PKCS#8 PEM.
    Ed25519Pkcs8Pem,
}

/// One value the operator generates: which Secret, which key, what kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedValue {
    /// Name of the Secret.
    pub secret: String,
    /// Key inside it.
    pub key: &'static str,
    /// How to make it.
    pub kind: ValueKind,
}

/// Every value the stack needs generated.
pub fn generated_values(stack: &ValidStack<'_>) -> Vec<GeneratedValue> {
    let mut values = Vec::new();
    if stack.is_enabled(Service::Auth) {
        values.push(GeneratedValue {
            secret: signing_key_secret_name(stack),
            key: SIGNING_KEY_PEM_KEY,
            kind: ValueKind::Ed25519Pkcs8Pem,
        });
    }
    for (service, _) in &stack.services {
        if service.spec().database {
            values.push(GeneratedValue {
                secret: names::database_secret_name(stack, *service),
                key: PASSWORD_KEY,
                kind: ValueKind::Password,
            });
        }
    }
    if stack.postgres.is_managed() {
        values.push(GeneratedValue {
            secret: postgres_admin_secret_name(stack),
            key: PASSWORD_KEY,
            kind: ValueKind::Password,
        });
    }
    if stack.has_kafka_user() {
        values.push(GeneratedValue {
            secret: names::kafka_user_secret_name(stack),
            key: PASSWORD_KEY,
            kind: ValueKind::Password,
        });
    }
    if stack.redis.is_managed() {
        values.push(GeneratedValue {
            secret: names::component_name(stack, Component::Redis),
            key: PASSWORD_KEY,
            kind: ValueKind::Password,
        });
    }
    values
}

/// The signing-key Secret's content as the reconciler decided it: the
/// current key, during a rotation the next key and its activation, and the
/// annotations that keep the rotation's state across operator restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SigningKeySecret {
    /// Data keys ([`SIGNING_KEY_PEM_KEY`], ...) and their values.
    pub data: BTreeMap<String, String>,
    /// Annotations of the Secret.
    pub annotations: BTreeMap<String, String>,
}

/// The generated values a build may use, by Secret name and key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretValues {
    values: BTreeMap<(String, String), String>,
    /// Stand in [`PLACEHOLDER`] for any value not known (render, tests).
    placeholders: bool,
    /// The signing-key Secret, when the reconciler decided it; otherwise
    /// the Secret holds only the generated [`SIGNING_KEY_PEM_KEY`].
    signing_key: Option<SigningKeySecret>,
}

impl SecretValues {
    /// Every value is [`PLACEHOLDER`]: for `render` and snapshot tests.
    pub fn placeholders() -> Self {
        SecretValues { values: BTreeMap::new(), placeholders: true, signing_key: None }
    }

    /// The values of `wanted` that the existing Secrets hold, and fresh ones
    /// for the rest. `existing` are the stack's Secrets as read from the
    /// cluster.
    pub fn keep_or_generate(wanted: &[GeneratedValue], existing: &[Secret], rng: &mut impl Rng) -> Self {
        let mut values = BTreeMap::new();
        for value in wanted {
            let current = existing
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(value.secret.as_str()))
                .and_then(|s| s.data.as_ref()?.get(value.key))
                .and_then(|bytes| String::from_utf8(bytes.0.clone()).ok())
                .filter(|v| !v.is_empty());
            let value_text = current.unwrap_or_else(|| generate(value.kind, rng));
            values.insert((value.secret.clone(), value.key.to_owned()), value_text);
        }
        SecretValues { values, placeholders: false, signing_key: None }
    }

    /// Renders the signing-key Secret as `secret` says (rotation state
    /// included) instead of with the generated key alone.
    pub fn set_signing_key(&mut self, secret: SigningKeySecret) {
        self.signing_key = Some(secret);
    }

    /// The value of `key` in the Secret named `secret`.
    pub fn get(&self, secret: &str, key: &str) -> Result<String, Error> {
        match self.values.get(&(secret.to_owned(), key.to_owned())) {
            Some(value) => Ok(value.clone()),
            None if self.placeholders => Ok(PLACEHOLDER.to_owned()),
            None => Err(Error::MissingGeneratedValue { secret: secret.to_owned(), key: key.to_owned() }),
        }
    }
}

/// A fresh value of `kind`.
pub fn generate(kind: ValueKind, rng: &mut impl Rng) -> String {
    match kind {
        ValueKind::Password => rng.sample_iter(&Alphanumeric).take(PASSWORD_LEN).map(char::from).collect(),
        ValueKind::Ed25519Pkcs8Pem => ed25519_pkcs8_pem(&rng.random()),
    }
}

/// DER of an Ed25519 `OneAsymmetricKey` (RFC 8410, version 0, no public
/// key) up to the 32 seed bytes that follow.
const ED25519_PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// The Ed25519 private key of `seed` as PKCS#8 PEM.
fn ed25519_pkcs8_pem(seed: &[u8; 32]) -> String {
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(seed);
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n")
}

/// The auth service's signing-key Secret.
pub fn signing_key_secret_name(stack: &ValidStack<'_>) -> String {
    names::object_name(stack, "auth-signing-key")
}

/// The managed Postgres' admin Secret.
pub fn postgres_admin_secret_name(stack: &ValidStack<'_>) -> String {
    names::object_name(stack, "postgres-admin")
}

/// An Opaque Secret of the stack. Values go into `data` (not `stringData`,
/// which the apiserver folds into `data`): the apply step compares what it
/// wants with what is stored, and only `data` is stored.
pub fn secret(
    stack: &ValidStack<'_>,
    name: String,
    component: Component,
    data: BTreeMap<String, String>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(stack.namespace.to_owned()),
            labels: Some(names::labels(stack, component)),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect()),
        ..Secret::default()
    }
}

/// The generated Secrets of the stack (database Secrets are built with
/// their connection details in `infra`).
pub fn build_secrets(stack: &ValidStack<'_>, values: &SecretValues) -> Result<Vec<Secret>, Error> {
    let mut secrets = Vec::new();
    if stack.is_enabled(Service::Auth) {
        let name = signing_key_secret_name(stack);
        match &values.signing_key {
            Some(decided) => {
                let mut built = secret(stack, name, Component::Service(Service::Auth), decided.data.clone());
                if !decided.annotations.is_empty() {
                    built.metadata.annotations = Some(decided.annotations.clone());
                }
                secrets.push(built);
            }
            None => {
                let pem = values.get(&name, SIGNING_KEY_PEM_KEY)?;
                secrets.push(secret(
                    stack,
                    name,
                    Component::Service(Service::Auth),
                    BTreeMap::from([(SIGNING_KEY_PEM_KEY.to_owned(), pem)]),
                ));
            }
        }
    }
    if let Infra::Managed(_) = stack.postgres {
        let name = postgres_admin_secret_name(stack);
        let password = values.get(&name, PASSWORD_KEY)?;
        secrets.push(secret(
            stack,
            name,
            Component::Postgres,
            BTreeMap::from([
                (USERNAME_KEY.to_owned(), POSTGRES_ADMIN_USER.to_owned()),
                (PASSWORD_KEY.to_owned(), password),
            ]),
        ));
    }
    if stack.has_kafka_user() {
        let name = names::kafka_user_secret_name(stack);
        let password = values.get(&name, PASSWORD_KEY)?;
        let user = names::ExternalNames::of(stack).kafka_user().to_owned();
        secrets.push(secret(
            stack,
            name,
            Component::Kafka,
            BTreeMap::from([(USERNAME_KEY.to_owned(), user), (PASSWORD_KEY.to_owned(), password)]),
        ));
    }
    if let Infra::Managed(_) = stack.redis {
        let name = names::component_name(stack, Component::Redis);
        let password = values.get(&name, PASSWORD_KEY)?;
        secrets.push(secret(
            stack,
            name,
            Component::Redis,
            BTreeMap::from([(PASSWORD_KEY.to_owned(), password)]),
        ));
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn wanted() -> Vec<GeneratedValue> {
        vec![
            GeneratedValue { secret: "shop-db-order".into(), key: PASSWORD_KEY, kind: ValueKind::Password },
            GeneratedValue {
                secret: "shop-auth-signing-key".into(),
                key: SIGNING_KEY_PEM_KEY,
                kind: ValueKind::Ed25519Pkcs8Pem,
            },
        ]
    }

    #[test]
    fn existing_values_are_kept_and_only_missing_ones_generated() {
        let existing = Secret {
            metadata: ObjectMeta { name: Some("shop-db-order".into()), ..ObjectMeta::default() },
            data: Some(BTreeMap::from([(PASSWORD_KEY.to_owned(), ByteString(b"kept".to_vec()))])),
            ..Secret::default()
        };
        let values = SecretValues::keep_or_generate(&wanted(), &[existing], &mut StdRng::seed_from_u64(7));
        assert_eq!(values.get("shop-db-order", PASSWORD_KEY).unwrap(), "kept");
        let pem = values.get("shop-auth-signing-key", SIGNING_KEY_PEM_KEY).unwrap();
        let body = pem
            .strip_prefix("-----BEGIN PRIVATE KEY-----\n")
            .and_then(|rest| rest.strip_suffix("\n-----END PRIVATE KEY-----\n"))
            .unwrap();
        let der = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
        assert_eq!((der.len(), &der[..16]), (48, &ED25519_PKCS8_PREFIX[..]));
    }

    #[test]
    fn generated_passwords_are_long_and_url_safe() {
        let password = generate(ValueKind::Password, &mut StdRng::seed_from_u64(1));
        assert_eq!(password.len(), PASSWORD_LEN);
        assert!(password.chars().all(|c| c.is_ascii_alphanumeric()), "{password}");
    }

    #[test]
    fn a_value_nobody_provided_is_an_error_outside_render() {
        let values = SecretValues::keep_or_generate(&[], &[], &mut StdRng::seed_from_u64(1));
        assert!(matches!(
            values.get("shop-db-order", PASSWORD_KEY),
            Err(Error::MissingGeneratedValue { .. })
        ));
        assert_eq!(SecretValues::placeholders().get("shop-db-order", PASSWORD_KEY).unwrap(), PLACEHOLDER);
    }
}
