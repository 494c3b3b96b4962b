//! What external state a stack should have: pure functions of the stack and
//! its generated values, tested without a broker or a database.

use commerce_api::crd::stack::SaslMechanism;
use commerce_kafka_access::{AclBinding, Operation, ResourceType, ScramMechanism};
use commerce_topology::{self as catalog, Service};

use crate::Error;
use crate::build::endpoints::Endpoints;
use crate::build::names;
use crate::build::secrets::{self, SecretValues};
use crate::validate::ValidStack;

/// A topic as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPlan {
    /// Full name.
    pub name: String,
    /// At least this many partitions.
    pub partitions: i32,
    /// `retention.ms`.
    pub retention_ms: i64,
}

/// A service's database and login role (same name).
#[derive(Clone, PartialEq, Eq)]
pub struct DatabasePlan {
    /// The service.
    pub service: Service,
    /// Database and role name.
    pub name: String,
    /// The role's password, as in the service's database Secret.
    pub password: String,
}

impl std::fmt::Debug for DatabasePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabasePlan")
            .field("service", &self.service)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// How the operator reaches a stack's Kafka: the bootstrap servers and the
/// librdkafka settings that TLS and SASL add, credentials included (read
/// from the stack's Secrets).
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaCluster {
    /// Bootstrap servers, comma-separated.
    pub brokers: String,
    /// librdkafka properties (`security.protocol`, `ssl.ca.pem`, `sasl.*`);
    /// may hold a password.
    pub settings: Vec<(String, String)>,
}

impl KafkaCluster {
    /// Plaintext brokers without SASL.
    pub fn plaintext(brokers: impl Into<String>) -> Self {
        KafkaCluster { brokers: brokers.into(), settings: Vec::new() }
    }

    /// What admin clients are cached and topic checks grouped by: the
    /// brokers, followed by a digest of the settings when there are any, so
    /// that stacks with other credentials on the same brokers get clients
    /// of their own (and no password shows in a key that is logged).
    pub fn key(&self) -> String {
        if self.settings.is_empty() {
            return self.brokers.clone();
        }
        use sha2::{Digest, Sha256};
        let mut digest = Sha256::new();
        for (key, value) in &self.settings {
            digest.update(key.as_bytes());
            digest.update([0]);
            digest.update(value.as_bytes());
            digest.update([0]);
        }
        let digest = digest.finalize();
        let short = hex::encode(&digest[..6]);
        format!("{} ({short})", self.brokers)
    }

    /// A librdkafka configuration with the brokers and the settings.
    pub fn client_config(&self) -> rdkafka::config::ClientConfig {
        let mut config = rdkafka::config::ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.settings {
            config.set(key, value);
        }
        config
    }
}

/// The settings' keys only: values may be passwords.
impl std::fmt::Debug for KafkaCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.settings.iter().map(|(key, _)| key.as_str()).collect();
        f.debug_struct("KafkaCluster").field("brokers", &self.brokers).field("settings", &keys).finish()
    }
}

/// The stack's own Kafka user (`kafka.external.sasl.serviceUser:
/// PerStack`) and the ACLs it needs.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaUserPlan {
    /// SCRAM user name: [`names::ExternalNames::kafka_user`].
    pub user: String,
    /// The mechanism the services log in with.
    pub mechanism: ScramMechanism,
    /// The password, as in the user's Secret.
    pub password: String,
    /// Every ACL it needs; all on the stack's prefix.
    pub acls: Vec<AclBinding>,
}

impl KafkaUserPlan {
    /// `User:<user>`.
    pub fn principal(&self) -> String {
        principal(&self.user)
    }
}

impl std::fmt::Debug for KafkaUserPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaUserPlan")
            .field("user", &self.user)
            .field("mechanism", &self.mechanism)
            .field("acls", &self.acls.len())
            .finish_non_exhaustive()
    }
}

/// The principal Kafka's authorizer knows a SCRAM user by.
pub fn principal(user: &str) -> String {
    format!("User:{user}")
}

/// The stack's own Kafka user, when it has one: a SCRAM user that may read
/// and write the topics of the stack's prefix and use its consumer groups
/// (reading implies describing), and nothing else. The services create no
/// topics (the operator does), so the user needs no CREATE; a producer's
/// idempotence needs WRITE on a topic, which it has (KIP-679).
pub fn kafka_user(stack: &ValidStack<'_>, values: &SecretValues) -> Result<Option<KafkaUserPlan>, Error> {
    let Some(sasl) = stack.kafka_user_sasl() else { return Ok(None) };
    let mechanism = match sasl.mechanism {
        SaslMechanism::ScramSha512 => ScramMechanism::Sha512,
        SaslMechanism::ScramSha256 => ScramMechanism::Sha256,
        // Refused by validation (and at admission): PLAIN users are the
        // brokers' configuration, not Kafka's API.
        SaslMechanism::Plain => return Ok(None),
    };
    let names = names::ExternalNames::of(stack);
    let user = names.kafka_user().to_owned();
    let principal = principal(&user);
    let prefix = names.kafka_name_prefix();
    let acls = vec![
        AclBinding::allow_prefixed(ResourceType::Topic, prefix, &principal, Operation::Read),
        AclBinding::allow_prefixed(ResourceType::Topic, prefix, &principal, Operation::Write),
        AclBinding::allow_prefixed(ResourceType::Group, prefix, &principal, Operation::Read),
    ];
    let password = values.get(&names::kafka_user_secret_name(stack), secrets::PASSWORD_KEY)?;
    Ok(Some(KafkaUserPlan { user, mechanism, password, acls }))
}

/// How the operator reaches a Postgres server as its admin.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresServer {
    /// Host name.
    pub host: String,
    /// Port.
    pub port: u16,
    /// libpq `sslmode`.
    pub ssl_mode: String,
    /// Admin role.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Database the admin connects to.
    pub database: String,
    /// PEM bundle of the CAs the server's certificate is checked against
    /// (`verify-*`); `None`: the system's.
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for PostgresServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresServer")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Every topic of the catalog (domain and dead-letter), under the stack's
/// prefix ([`names::external_names`]). A topic has at least as many
/// partitions as the most replicas any enabled consumer may run: consumers
/// beyond the partition count would sit idle.
pub fn topics(stack: &ValidStack<'_>) -> Vec<TopicPlan> {
    let names = names::ExternalNames::of(stack);
    catalog::all_topics()
        .into_iter()
        .map(|spec| {
            let widest_consumer = catalog::Topic::ALL
                .into_iter()
                .find(|topic| topic.name() == spec.name)
                .into_iter()
                .flat_map(|topic| topic.consumers())
                .filter_map(|consumer| stack.settings(consumer))
                .map(|settings| match settings.autoscaling {
                    Some(autoscaling) => autoscaling.max_replicas,
                    None => settings.replicas.unwrap_or(1),
                })
                .max()
                .unwrap_or(0);
            TopicPlan {
                name: names.topic(spec.name),
                partitions: spec.partitions.max(widest_consumer),
                retention_ms: spec.retention_ms,
            }
        })
        .collect()
}

/// The database of every enabled service that owns one.
pub fn databases(stack: &ValidStack<'_>, values: &SecretValues) -> Result<Vec<DatabasePlan>, Error> {
    let names = names::ExternalNames::of(stack);
    stack
        .services
        .iter()
        .filter(|(service, _)| service.spec().database)
        .map(|(service, _)| {
            let secret = names::database_secret_name(stack, *service);
            Ok(DatabasePlan {
                service: *service,
                name: names.database(*service),
                password: values.get(&secret, secrets::PASSWORD_KEY)?,
            })
        })
        .collect()
}

/// The database and role names the cleanup of a deleted stack drops: those
/// of every service of the catalog that owns a database, enabled now or not.
///
/// Why this set, and not the enabled services ([`databases`]) or a search of
/// the server:
/// - It cannot miss one. The operator names a database and its role only
///   through [`names::ExternalNames::database`], a pure function of the
///   namespace, the stack's name (both immutable) and the service; so every
///   database the stack ever created is the name of some service of the
///   catalog, whether that service is enabled now, was enabled once, or was
///   disabled before the stack was deleted (the spec's history is kept
///   nowhere, and need not be).
/// - It cannot drop what is not the stack's. Each name is exactly one that
///   this stack would create, and no other stack's (the naming keeps stacks
///   of every namespace apart, see the tests of [`names`]). A search by the
///   prefix `<namespace>_<stack>_` instead would also match a database a
///   person made by hand (`shop_shop_reports`), and names recorded in the
///   status cannot be trusted with a DROP: whoever may write the status
///   subresource could name any database on the server.
/// - A name that was never created costs nothing: the drops are
///   `IF EXISTS`.
///
/// What it relies on: a service stays in the catalog once it had a database.
pub fn databases_to_drop(stack: &ValidStack<'_>) -> Vec<String> {
    let names = names::ExternalNames::of(stack);
    Service::ALL
        .into_iter()
        .filter(|service| service.spec().database)
        .map(|service| names.database(service))
        .collect()
}

/// The admin connection, given the admin's credentials (read from the
/// admin Secret the endpoints name).
pub fn postgres_server(endpoints: &Endpoints, user: String, password: String) -> PostgresServer {
    let pg = &endpoints.postgres;
    PostgresServer {
        host: pg.host.clone(),
        port: u16::try_from(pg.port).unwrap_or(5432),
        ssl_mode: pg.ssl_mode.as_str().to_owned(),
        user,
        password,
        database: pg.admin_database.clone(),
        ca_pem: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::validate;

    #[test]
    fn a_topic_has_at_least_as_many_partitions_as_its_widest_consumer_may_run() {
        let mut stack = crate::build::parse_stack(
            include_str!("../../../manifests/examples/full.yaml").split("\n---\n").next().unwrap(),
        )
        .unwrap();
        // Inventory (autoscaled to 8) consumes orders, which the catalog gives 6.
        stack.spec.services.get_mut("inventory").unwrap().autoscaling.as_mut().unwrap().max_replicas = 12;
        let valid = validate(&stack, "default").unwrap();
        let plans = topics(&valid);
        let partitions = |name: &str| plans.iter().find(|t| t.name == name).unwrap().partitions;
        assert_eq!(partitions("shop.shop.commerce.orders.v1"), 12);
        assert_eq!(
            partitions("shop.shop.commerce.users.v1"),
            8,
            "order (autoscaled to 8) consumes users too"
        );
        assert!(plans.iter().all(|t| t.name.starts_with("shop.shop.")), "{plans:?}");
        assert_eq!(plans.len(), catalog::all_topics().len());
    }

    #[test]
    fn a_deleted_stack_drops_the_database_of_every_catalog_service_enabled_or_not() {
        let mut stack =
            crate::build::parse_stack(include_str!("../../../manifests/examples/minimal.yaml")).unwrap();
        stack.spec.services = serde_json::from_value(serde_json::json!({
            "notification": {"enabled": false},
            "order": {"enabled": false},
        }))
        .unwrap();
        let valid = validate(&stack, "default").unwrap();
        let enabled: Vec<String> =
            databases(&valid, &SecretValues::placeholders()).unwrap().into_iter().map(|d| d.name).collect();
        assert!(!enabled.contains(&"shop_shop_notification".to_owned()), "{enabled:?}");
        let dropped = databases_to_drop(&valid);
        let owning_one: Vec<Service> = Service::ALL.into_iter().filter(|s| s.spec().database).collect();
        assert_eq!(dropped.len(), owning_one.len());
        for service in owning_one {
            assert!(
                dropped.contains(&names::database_name("shop", "shop", service)),
                "{service:?}: {dropped:?}"
            );
        }
        assert!(enabled.iter().all(|name| dropped.contains(name)), "{enabled:?} not all in {dropped:?}");
        // Only this stack's names: another stack in the namespace is untouched.
        let other: Vec<String> =
            Service::ALL.iter().map(|s| names::database_name("shop", "shop2", *s)).collect();
        assert!(dropped.iter().all(|name| !other.contains(name)), "{dropped:?}");
    }

    #[test]
    fn every_enabled_service_with_a_database_gets_one_named_after_the_namespace_and_stack() {
        let stack =
            crate::build::parse_stack(include_str!("../../../manifests/examples/minimal.yaml")).unwrap();
        let valid = validate(&stack, "default").unwrap();
        let plans = databases(&valid, &SecretValues::placeholders()).unwrap();
        let names: Vec<&str> = plans.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "shop_shop_auth",
                "shop_shop_catalog",
                "shop_shop_inventory",
                "shop_shop_order",
                "shop_shop_payment",
                "shop_shop_notification",
                "shop_shop_shipping",
                "shop_shop_audit",
                "shop_shop_profile",
                "shop_shop_reviews",
                "shop_shop_search",
                "shop_shop_recommendation",
                "shop_shop_analytics"
            ]
        );
    }
}
