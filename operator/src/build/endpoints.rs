//! Where the services and the operator reach Kafka, Postgres and Redis
//! ([`Endpoints`]): the stack's external servers, or the Services of the
//! managed ones. Read by the services' configuration and by the managed
//! servers' StatefulSets (`infra`); depends on neither.

use commerce_api::crd::SecretKeyRef;
use commerce_api::crd::stack::{KafkaSasl, KafkaTls, SslMode};

use super::names::{self, Component};
use super::secrets;
use crate::validate::{Infra, ValidStack};

/// Kafka's client port.
pub const KAFKA_PORT: i32 = 9092;
/// Postgres' port.
pub const POSTGRES_PORT: i32 = 5432;
/// Redis' port.
pub const REDIS_PORT: i32 = 6379;

/// Where the services and the operator reach the infrastructure.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoints {
    /// Kafka bootstrap servers, comma-separated.
    pub kafka_brokers: String,
    /// TLS towards an external Kafka; `None`: plaintext (always for managed).
    pub kafka_tls: Option<KafkaTls>,
    /// SASL towards an external Kafka; `None`: none.
    pub kafka_sasl: Option<KafkaSasl>,
    /// The Postgres server.
    pub postgres: PostgresEndpoint,
    /// Redis.
    pub redis: RedisEndpoint,
}

/// A Postgres server and how to reach its admin.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresEndpoint {
    /// Host name.
    pub host: String,
    /// Port.
    pub port: i32,
    /// libpq `sslmode` of every connection.
    pub ssl_mode: SslMode,
    /// The Secret key with the CA bundle for `verify-*` (`sslrootcert`).
    pub ca: Option<SecretKeyRef>,
    /// The Secret key with the admin's user name.
    pub admin_username: SecretKeyRef,
    /// The Secret key with the admin's password.
    pub admin_password: SecretKeyRef,
    /// Database the admin connects to.
    pub admin_database: String,
}

/// A Redis and its password.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisEndpoint {
    /// Host name.
    pub host: String,
    /// Port.
    pub port: i32,
    /// The Secret key holding the password, if Redis wants one.
    pub password: Option<SecretKeyRef>,
    /// Name of the generated Secret holding the password (managed Redis).
    pub generated: Option<String>,
}

/// Where everything is, for this stack.
pub fn endpoints(stack: &ValidStack<'_>) -> Endpoints {
    let (kafka_tls, kafka_sasl) = match stack.kafka {
        Infra::External(external) => (external.tls.clone(), external.sasl.clone()),
        Infra::Managed(_) => (None, None),
    };
    let kafka_brokers = match stack.kafka {
        Infra::External(external) => external.bootstrap_servers.join(","),
        Infra::Managed(_) => {
            let name = names::component_name(stack, Component::Kafka);
            format!("{}:{KAFKA_PORT}", names::service_host(stack, &name))
        }
    };
    let postgres = match stack.postgres {
        Infra::External(external) => PostgresEndpoint {
            host: external.host.clone(),
            port: external.port,
            ssl_mode: external.ssl_mode,
            ca: external.ca_secret.clone(),
            admin_username: SecretKeyRef {
                name: external.admin_secret.name.clone(),
                key: external.admin_secret.username_key.clone(),
            },
            admin_password: SecretKeyRef {
                name: external.admin_secret.name.clone(),
                key: external.admin_secret.password_key.clone(),
            },
            admin_database: external.admin_database.clone(),
        },
        Infra::Managed(_) => {
            let admin = secrets::postgres_admin_secret_name(stack);
            PostgresEndpoint {
                host: names::service_host(stack, &names::component_name(stack, Component::Postgres)),
                port: POSTGRES_PORT,
                // Inside the namespace, behind a NetworkPolicy, without a
                // certificate to check.
                ssl_mode: SslMode::Disable,
                ca: None,
                admin_username: SecretKeyRef { name: admin.clone(), key: secrets::USERNAME_KEY.into() },
                admin_password: SecretKeyRef { name: admin, key: secrets::PASSWORD_KEY.into() },
                admin_database: "postgres".into(),
            }
        }
    };
    let redis = match stack.redis {
        Infra::External(external) => RedisEndpoint {
            host: external.host.clone(),
            port: external.port,
            password: external.password_secret.clone(),
            generated: None,
        },
        Infra::Managed(_) => {
            let name = names::component_name(stack, Component::Redis);
            RedisEndpoint {
                host: names::service_host(stack, &name),
                port: REDIS_PORT,
                password: Some(SecretKeyRef { name: name.clone(), key: secrets::PASSWORD_KEY.into() }),
                generated: Some(name),
            }
        }
    };
    Endpoints { kafka_brokers, kafka_tls, kafka_sasl, postgres, redis }
}
