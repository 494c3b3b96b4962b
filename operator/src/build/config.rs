//! The configuration a service's pods read: a ConfigMap of `COMMERCE_*`
//! variables (the flags of the services' clap configuration), environment
//! variables that come from Secrets, the stack's overrides, and the hash of
//! all of it that rolls the pods when it changes.
//!
//! The names here are the contract with the services' clap configuration
//! (their `#[arg(env = ...)]` attributes, in `services/platform` and each
//! service's `config.rs`); `tests/service_contract.rs` holds both sides to
//! it: every name set here is one the service declares, and every value
//! parses.

use std::collections::BTreeMap;

use commerce_api::crd::stack::{PaymentProvider, ServiceSettings};
use commerce_topology::{CLUSTER_ADMIN_PORT, CLUSTER_GRPC_PORT, CLUSTER_HTTP_PORT, Service};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, SecretKeySelector};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::endpoints::Endpoints;
use super::names;
use super::secrets::{self, SecretValues};
use crate::Error;
use crate::validate::ValidStack;

/// Log format of every service: JSON, for the cluster's log pipeline.
pub const LOG_FORMAT: &str = "COMMERCE_LOG_FORMAT";
/// Where spans are exported (`spec.monitoring.otlpEndpoint`).
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
pub const OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
/// gRPC listen address.
pub const GRPC_ADDR: &str = "COMMERCE_GRPC_ADDR";
/// Admin server (`/metrics`, `/healthz`, `/readyz`) listen address.
pub const ADMIN_ADDR: &str = "COMMERCE_ADMIN_ADDR";
/// The gateway's REST listen address.
pub const HTTP_ADDR: &str = "COMMERCE_HTTP_ADDR";
/// Kafka bootstrap brokers, comma-separated.
pub const KAFKA_BROKERS: &str = "COMMERCE_KAFKA_BROKERS";
/// Prefix of every topic, dead-letter topic and consumer group the service
/// uses: the stack's own ([`names::ExternalNames::kafka_name_prefix`]), so
/// that stacks sharing a Kafka cluster never see each other's events.
pub const KAFKA_NAME_PREFIX: &str = "COMMERCE_KAFKA_NAME_PREFIX";
/// librdkafka properties of an external Kafka's TLS and SASL (protocol,
/// CA file, mechanism): nothing secret, so in the ConfigMap.
pub const KAFKA_PROPERTIES: &str = "COMMERCE_KAFKA_PROPERTIES";
/// The SASL user name, from the stack's Secret.
pub const KAFKA_SASL_USERNAME: &str = "COMMERCE_KAFKA_SASL_USERNAME";
/// The SASL password, from the stack's Secret.
pub const KAFKA_SASL_PASSWORD: &str = "COMMERCE_KAFKA_SASL_PASSWORD";
/// Where the Kafka CA bundle (`kafka.external.tls.caSecret`) is mounted.
pub const KAFKA_CA_MOUNT: &str = "/etc/commerce/kafka-ca";
/// Where the Postgres CA bundle (`postgres.external.caSecret`) is mounted;
/// the database URLs name it as `sslrootcert`.
pub const POSTGRES_CA_MOUNT: &str = "/etc/commerce/postgres-ca";
/// File name of a CA bundle inside [`KAFKA_CA_MOUNT`] and [`POSTGRES_CA_MOUNT`].
pub const CA_FILE: &str = "ca.crt";
/// Peers as `service=http://host:port`, comma-separated.
pub const PEERS: &str = "COMMERCE_PEERS";
/// Redis URL (with the password, when there is one, through `$(...)`).
pub const REDIS_URL: &str = "COMMERCE_REDIS_URL";
/// Start of every Redis key the service writes: the stack's own
/// ([`names::ExternalNames::redis_key_prefix`]), so that stacks sharing a
/// Redis never read each other's carts, cached pages or rate limits.
pub const REDIS_KEY_PREFIX: &str = "COMMERCE_REDIS_KEY_PREFIX";
/// Redis password from a Secret; referenced by [`REDIS_URL`] through
/// Kubernetes' `$(...)` expansion. No service reads it itself.
pub const REDIS_PASSWORD: &str = "COMMERCE_REDIS_PASSWORD";
/// The service's database URL, from its database Secret.
pub const DATABASE_URL: &str = "COMMERCE_DATABASE_URL";
/// Access-token lifetime of the auth service (humantime).
pub const AUTH_ACCESS_TOKEN_TTL: &str = "COMMERCE_ACCESS_TOKEN_TTL";
/// Refresh-token lifetime of the auth service (humantime).
pub const AUTH_REFRESH_TOKEN_TTL: &str = "COMMERCE_REFRESH_TOKEN_TTL";
/// The auth service's signing-key file: the generated Secret's PKCS#8 PEM,
/// mounted at [`SIGNING_KEY_MOUNT`]. Set, it also turns the service's own
/// key rotation off: the operator rotates through the next key.
pub const AUTH_SIGNING_KEY_FILE: &str = "COMMERCE_SIGNING_KEY_FILE";
/// The next signing key's file in the same mount; present only while the
/// operator rotates the key.
pub const AUTH_NEXT_SIGNING_KEY_FILE: &str = "COMMERCE_NEXT_SIGNING_KEY_FILE";
/// The file with the next signing key's activation time, next to it.
pub const AUTH_NEXT_SIGNING_KEY_ACTIVATION_FILE: &str = "COMMERCE_NEXT_SIGNING_KEY_ACTIVATION_FILE";
/// The payment provider; the payment service refuses one it has no adapter
/// for.
pub const PAYMENT_PROVIDER: &str = "COMMERCE_PAYMENT_PROVIDER";
/// The notification service's SMTP server (`spec.notification.email`).
pub const EMAIL_SMTP_URL: &str = "COMMERCE_EMAIL_SMTP_URL";
/// The sender of the notification service's email.
pub const EMAIL_FROM: &str = "COMMERCE_EMAIL_FROM";
/// The SMTP login, from `notification.email.credentialsSecret`.
pub const EMAIL_SMTP_USERNAME: &str = "COMMERCE_EMAIL_SMTP_USERNAME";
pub const EMAIL_SMTP_PASSWORD: &str = "COMMERCE_EMAIL_SMTP_PASSWORD";
/// Keys of the SMTP credentials Secret.
pub const EMAIL_CREDENTIALS_USERNAME_KEY: &str = "username";
pub const EMAIL_CREDENTIALS_PASSWORD_KEY: &str = "password";
/// File with the gateway's merged rate-limit rules; the gateway re-reads it.
pub const GATEWAY_RATE_LIMITS_FILE: &str = "COMMERCE_RATELIMIT_RULES_FILE";
/// Allowed CORS origins, comma-separated.
pub const GATEWAY_CORS_ALLOWED_ORIGINS: &str = "COMMERCE_CORS_ORIGINS";
/// How many proxies in front of the gateway append to `X-Forwarded-For`:
/// the Ingress controller, when the stack has an Ingress.
pub const GATEWAY_TRUSTED_PROXY_HOPS: &str = "COMMERCE_TRUSTED_PROXY_HOPS";
/// CORS request headers allowed besides the gateway's own, comma-separated.
pub const GATEWAY_CORS_ALLOWED_HEADERS: &str = "COMMERCE_CORS_ALLOWED_HEADERS";
/// How long a preflight may be cached (humantime).
pub const GATEWAY_CORS_MAX_AGE: &str = "COMMERCE_CORS_MAX_AGE";

/// Where the auth signing-key Secret is mounted: a directory mount (not
/// `subPath`), so that the kubelet swaps in a rotation's next key and the
/// promotion in place, all files at once, and the auth service, which
/// re-reads them every 30 s, follows without a restart.
pub const SIGNING_KEY_MOUNT: &str = "/etc/commerce/auth-signing-key";
/// Where the payment credentials Secret is mounted, for a provider adapter
/// that reads them (the built-in mock needs none).
pub const PAYMENT_CREDENTIALS_MOUNT: &str = "/etc/commerce/payment";
/// The Stripe adapter's secret API key file.
pub const STRIPE_SECRET_KEY_FILE: &str = "COMMERCE_STRIPE_SECRET_KEY_FILE";
/// The Stripe adapter's webhook signing secret file (a missing file turns
/// webhooks off).
pub const STRIPE_WEBHOOK_SECRET_FILE: &str = "COMMERCE_STRIPE_WEBHOOK_SECRET_FILE";
/// Key of the Stripe secret API key in `payment.credentialsSecret`.
pub const STRIPE_SECRET_KEY_KEY: &str = "secretKey";
/// Key of the Stripe webhook signing secret in `payment.credentialsSecret`.
pub const STRIPE_WEBHOOK_SECRET_KEY: &str = "webhookSecret";
/// Where the gateway's rate-limit ConfigMap is mounted. A directory mount
/// (not `subPath`), so that the kubelet swaps in new contents and the
/// gateway picks them up without a restart.
pub const RATE_LIMITS_MOUNT: &str = "/etc/commerce/rate-limits";
/// File name of the rate-limit rules inside [`RATE_LIMITS_MOUNT`].
pub const RATE_LIMITS_FILE: &str = "rules.yaml";

/// What one service's pods are configured with.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// The ConfigMap's data, read through `envFrom`.
    pub config_map: BTreeMap<String, String>,
    /// Container `env`: Secret references first, then the stack's overrides.
    pub env: Vec<EnvVar>,
    /// Hash of the above and of the generated Secret values the pods read:
    /// the pod template's config-hash annotation.
    pub hash: String,
}

/// The librdkafka properties the services get for TLS and SASL towards
/// the stack's Kafka (`None` for plaintext without SASL): the protocol, the
/// CA file mounted at [`KAFKA_CA_MOUNT`] when the stack names one (else the
/// system's CAs), the mechanism. The credentials go separately, from their
/// Secret ([`KAFKA_SASL_USERNAME`], [`KAFKA_SASL_PASSWORD`]).
pub fn kafka_properties(endpoints: &Endpoints) -> Option<String> {
    let settings = kafka_settings(endpoints);
    let properties: Vec<String> = settings.iter().map(|(key, value)| format!("{key}={value}")).collect();
    (!properties.is_empty()).then(|| properties.join(","))
}

/// [`kafka_properties`] as key-value pairs (empty for plaintext without
/// SASL); the operator's own client starts from them too.
pub fn kafka_settings(endpoints: &Endpoints) -> Vec<(&'static str, String)> {
    let tls = endpoints.kafka_tls.as_ref();
    let sasl = endpoints.kafka_sasl.as_ref();
    let protocol = match (tls.is_some(), sasl.is_some()) {
        (false, false) => return Vec::new(),
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    let mut settings = vec![("security.protocol", protocol.to_owned())];
    if tls.is_some_and(|tls| tls.ca_secret.is_some()) {
        settings.push(("ssl.ca.location", format!("{KAFKA_CA_MOUNT}/{CA_FILE}")));
    }
    if let Some(sasl) = sasl {
        settings.push(("sasl.mechanism", sasl.mechanism.as_str().to_owned()));
    }
    settings
}

/// The configuration of `service`.
pub fn service_config(
    stack: &ValidStack<'_>,
    service: Service,
    settings: &ServiceSettings,
    endpoints: &Endpoints,
    values: &SecretValues,
) -> Result<ServiceConfig, Error> {
    let spec = service.spec();
    let stack_spec = &stack.stack.spec;
    let mut data = BTreeMap::new();
    let mut env = Vec::new();
    // Generated values the pods read; part of the hash so that a rotated
    // password (a deleted Secret, regenerated) rolls the pods.
    let mut secret_inputs: BTreeMap<String, String> = BTreeMap::new();
    let mut put = |key: &str, value: String| {
        data.insert(key.to_owned(), value);
    };

    put(LOG_FORMAT, "json".into());
    put(ADMIN_ADDR, format!("0.0.0.0:{CLUSTER_ADMIN_PORT}"));
    if let Some(endpoint) = &stack_spec.monitoring.otlp_endpoint {
        // The standard OpenTelemetry variables, read by the services'
        // exporter: each service's spans under its own name, tagged with
        // where it runs.
        put(OTEL_EXPORTER_OTLP_ENDPOINT, endpoint.clone());
        put(OTEL_SERVICE_NAME, service.name().to_owned());
        put(
            OTEL_RESOURCE_ATTRIBUTES,
            format!("k8s.namespace.name={},commerce.stack={}", stack.namespace, stack.name),
        );
    }
    if service == Service::Gateway {
        put(HTTP_ADDR, format!("0.0.0.0:{CLUSTER_HTTP_PORT}"));
    } else {
        put(GRPC_ADDR, format!("0.0.0.0:{CLUSTER_GRPC_PORT}"));
    }
    if spec.uses_kafka() {
        put(KAFKA_BROKERS, endpoints.kafka_brokers.clone());
        put(KAFKA_NAME_PREFIX, names::ExternalNames::of(stack).kafka_name_prefix().to_owned());
        if let Some(properties) = kafka_properties(endpoints) {
            put(KAFKA_PROPERTIES, properties);
        }
        if stack.has_kafka_user() {
            // The stack's own user: its generated Secret, whose password is
            // part of the hash (a regenerated one rolls the pods).
            let secret = names::kafka_user_secret_name(stack);
            env.push(secret_env(KAFKA_SASL_USERNAME, &secret, secrets::USERNAME_KEY));
            env.push(secret_env(KAFKA_SASL_PASSWORD, &secret, secrets::PASSWORD_KEY));
            secret_inputs.insert(KAFKA_SASL_PASSWORD.to_owned(), values.get(&secret, secrets::PASSWORD_KEY)?);
        } else if let Some(sasl) = &endpoints.kafka_sasl {
            env.push(secret_env(KAFKA_SASL_USERNAME, &sasl.secret_name, &sasl.username_key));
            env.push(secret_env(KAFKA_SASL_PASSWORD, &sasl.secret_name, &sasl.password_key));
        }
    }
    let peers: Vec<String> = spec
        .calls
        .iter()
        .filter(|peer| stack.is_enabled(**peer))
        .map(|peer| {
            let host = names::service_host(stack, &names::headless_name(stack, *peer));
            format!("{peer}=http://{host}:{CLUSTER_GRPC_PORT}")
        })
        .collect();
    if !peers.is_empty() {
        put(PEERS, peers.join(","));
    }
    if spec.redis {
        let redis = &endpoints.redis;
        put(REDIS_KEY_PREFIX, names::ExternalNames::of(stack).redis_key_prefix().to_owned());
        match &redis.password {
            None => put(REDIS_URL, format!("redis://{}:{}", redis.host, redis.port)),
            Some(password) => {
                env.push(secret_env(REDIS_PASSWORD, &password.name, &password.key));
                // Kubernetes expands $(VAR) from variables defined before it.
                env.push(EnvVar {
                    name: REDIS_URL.to_owned(),
                    value: Some(format!("redis://:$({REDIS_PASSWORD})@{}:{}", redis.host, redis.port)),
                    ..EnvVar::default()
                });
                if let Some(generated) = &redis.generated {
                    secret_inputs
                        .insert(REDIS_PASSWORD.to_owned(), values.get(generated, secrets::PASSWORD_KEY)?);
                }
            }
        }
    }
    if spec.database {
        let secret = names::database_secret_name(stack, service);
        env.push(secret_env(DATABASE_URL, &secret, secrets::URL_KEY));
        secret_inputs.insert(DATABASE_URL.to_owned(), values.get(&secret, secrets::PASSWORD_KEY)?);
    }
    match service {
        Service::Auth => {
            put(AUTH_ACCESS_TOKEN_TTL, seconds(stack_spec.auth.access_token_ttl));
            put(AUTH_REFRESH_TOKEN_TTL, seconds(stack_spec.auth.refresh_token_ttl));
            put(AUTH_SIGNING_KEY_FILE, format!("{SIGNING_KEY_MOUNT}/{}", secrets::SIGNING_KEY_PEM_KEY));
            put(
                AUTH_NEXT_SIGNING_KEY_FILE,
                format!("{SIGNING_KEY_MOUNT}/{}", secrets::NEXT_SIGNING_KEY_PEM_KEY),
            );
            put(
                AUTH_NEXT_SIGNING_KEY_ACTIVATION_FILE,
                format!("{SIGNING_KEY_MOUNT}/{}", secrets::NEXT_SIGNING_KEY_ACTIVATION_KEY),
            );
            // Not a config-hash input: the service re-reads the key files,
            // and a rotation must not roll the pods (twice) to take effect.
        }
        Service::Payment => {
            put(PAYMENT_PROVIDER, stack_spec.payment.provider.as_str().to_owned());
            if stack_spec.payment.provider == PaymentProvider::Stripe {
                put(STRIPE_SECRET_KEY_FILE, format!("{PAYMENT_CREDENTIALS_MOUNT}/{STRIPE_SECRET_KEY_KEY}"));
                put(
                    STRIPE_WEBHOOK_SECRET_FILE,
                    format!("{PAYMENT_CREDENTIALS_MOUNT}/{STRIPE_WEBHOOK_SECRET_KEY}"),
                );
            }
        }
        Service::Notification => {
            if let Some(email) = &stack_spec.notification.email {
                put(EMAIL_SMTP_URL, email.smtp_url());
                put(EMAIL_FROM, email.from.clone());
                if let Some(secret) = &email.credentials_secret {
                    env.push(secret_env(EMAIL_SMTP_USERNAME, secret, EMAIL_CREDENTIALS_USERNAME_KEY));
                    env.push(secret_env(EMAIL_SMTP_PASSWORD, secret, EMAIL_CREDENTIALS_PASSWORD_KEY));
                }
            }
        }
        Service::Gateway => {
            put(GATEWAY_RATE_LIMITS_FILE, format!("{RATE_LIMITS_MOUNT}/{RATE_LIMITS_FILE}"));
            // Behind the Ingress every request comes from the Ingress
            // controller: without trusting its X-Forwarded-For entry, all
            // clients would share one per-IP rate-limit bucket.
            if stack_spec.gateway.ingress.is_some() {
                put(GATEWAY_TRUSTED_PROXY_HOPS, "1".to_owned());
            }
            if let Some(cors) = &stack_spec.gateway.cors {
                put(GATEWAY_CORS_ALLOWED_ORIGINS, cors.allowed_origins.join(","));
                if !cors.allowed_headers.is_empty() {
                    put(GATEWAY_CORS_ALLOWED_HEADERS, cors.allowed_headers.join(","));
                }
                put(GATEWAY_CORS_MAX_AGE, format!("{}s", cors.max_age_seconds));
            }
        }
        _ => {}
    }

    // The stack's overrides come last and win: a name already in `env`
    // is replaced in place (server-side apply rejects duplicate names), a
    // name from the ConfigMap is shadowed, as `env` beats `envFrom`.
    for over in &settings.env {
        match env.iter_mut().find(|e| e.name == over.name) {
            Some(existing) => *existing = over.clone(),
            None => env.push(over.clone()),
        }
    }

    let hash = config_hash(&HashInput { config_map: &data, env: &env, secrets: &secret_inputs })?;
    Ok(ServiceConfig { config_map: data, env, hash })
}

/// What the config hash covers.
#[derive(Serialize)]
struct HashInput<'a> {
    config_map: &'a BTreeMap<String, String>,
    env: &'a [EnvVar],
    secrets: &'a BTreeMap<String, String>,
}

/// First 16 bytes of the SHA-256 of the canonical JSON of `input`, in hex.
/// JSON of `BTreeMap`s and `Vec`s is canonical: same input, same bytes.
fn config_hash(input: &impl Serialize) -> Result<String, Error> {
    let json = serde_json::to_vec(input)
        .map_err(|source| Error::SerializeJson { what: "config hash input".into(), source })?;
    let digest = Sha256::digest(&json);
    Ok(hex::encode(&digest[..16]))
}

/// An env var read from a Secret's key.
pub fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: None,
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// A duration as whole seconds, e.g. `900s` (humantime reads it).
fn seconds(duration: kube::core::Duration) -> String {
    format!("{}s", std::time::Duration::from(duration).as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_hash_is_stable_and_follows_every_input() {
        let data = BTreeMap::from([("A".to_owned(), "1".to_owned())]);
        let env = vec![secret_env(DATABASE_URL, "shop-db-order", "url")];
        let secrets = BTreeMap::new();
        let base = config_hash(&HashInput { config_map: &data, env: &env, secrets: &secrets }).unwrap();
        assert_eq!(
            base,
            config_hash(&HashInput { config_map: &data, env: &env, secrets: &secrets }).unwrap()
        );
        assert_eq!(base.len(), 32);

        let changed_data = BTreeMap::from([("A".to_owned(), "2".to_owned())]);
        assert_ne!(
            base,
            config_hash(&HashInput { config_map: &changed_data, env: &env, secrets: &secrets }).unwrap()
        );
        let rotated = BTreeMap::from([(DATABASE_URL.to_owned(), "new password".to_owned())]);
        assert_ne!(
            base,
            config_hash(&HashInput { config_map: &data, env: &env, secrets: &rotated }).unwrap()
        );
    }

    #[test]
    fn kafka_properties_follow_tls_and_sasl_and_name_the_mounted_ca_only_when_there_is_one() {
        use commerce_api::crd::SecretKeyRef;
        use commerce_api::crd::stack::{KafkaSasl, KafkaServiceUser, KafkaTls, SaslMechanism};
        let stack =
            crate::build::parse_stack(include_str!("../../../manifests/examples/minimal.yaml")).unwrap();
        let valid = crate::validate::validate(&stack, "shop").unwrap();
        let mut endpoints = super::super::endpoints::endpoints(&valid);
        assert_eq!(kafka_properties(&endpoints), None, "plaintext without SASL needs no property");
        endpoints.kafka_tls = Some(KafkaTls::default());
        assert_eq!(kafka_properties(&endpoints).as_deref(), Some("security.protocol=ssl"));
        endpoints.kafka_tls = Some(KafkaTls {
            ca_secret: Some(SecretKeyRef { name: "kafka-ca".into(), key: "ca.pem".into() }),
        });
        assert_eq!(
            kafka_properties(&endpoints).as_deref(),
            Some("security.protocol=ssl,ssl.ca.location=/etc/commerce/kafka-ca/ca.crt")
        );
        let sasl = KafkaSasl {
            mechanism: SaslMechanism::ScramSha256,
            secret_name: "kafka-user".into(),
            username_key: "username".into(),
            password_key: "password".into(),
            service_user: KafkaServiceUser::Shared,
        };
        endpoints.kafka_sasl = Some(sasl);
        assert_eq!(
            kafka_properties(&endpoints).as_deref(),
            Some(
                "security.protocol=sasl_ssl,ssl.ca.location=/etc/commerce/kafka-ca/ca.crt,sasl.mechanism=SCRAM-SHA-256"
            )
        );
        endpoints.kafka_tls = None;
        assert_eq!(
            kafka_properties(&endpoints).as_deref(),
            Some("security.protocol=sasl_plaintext,sasl.mechanism=SCRAM-SHA-256")
        );
    }
}
