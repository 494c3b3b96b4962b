//! Names and labels of everything a stack owns, in one place: the builders,
//! the pruner and the status step must agree on them.
//!
//! Every object is named `<stack>-<part>`, so that two stacks can share a
//! namespace; every object carries the stack label, which is how `prune`
//! finds what a stack owns.

use std::collections::BTreeMap;

use commerce_platform::events::TopicNames;
use commerce_topology::Service;
use sha2::{Digest, Sha256};

use crate::validate::ValidStack;

/// Field manager of every server-side apply, and the `managed-by` label.
pub const MANAGER: &str = "commerce-operator";
/// Label naming the stack an object belongs to; `prune` selects on it.
pub const STACK_LABEL: &str = "commerce-stack.dev/stack";
/// Standard label: what the object is part of.
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
/// Standard label: who manages the object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Standard label: the application.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// Standard label: the instance (the stack).
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// Standard label: the component (a service or a piece of infrastructure).
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// Standard label: the version that runs.
pub const VERSION_LABEL: &str = "app.kubernetes.io/version";
/// Pod-template annotation whose change rolls the pods: a hash of the
/// configuration the pods read at start (ConfigMap data, env, generated
/// Secrets).
pub const CONFIG_HASH_ANNOTATION: &str = "commerce-stack.dev/config-hash";
/// Annotation with a hash of the object as `build` produced it. The apply
/// step skips an object whose stored hash matches and whose fields still
/// hold their values, so that a reconcile with nothing to do writes nothing.
pub const APPLIED_HASH_ANNOTATION: &str = "commerce-stack.dev/applied-hash";
/// `app.kubernetes.io/name` of the operator's own pods: NetworkPolicies of
/// managed infrastructure let them in, to create topics and databases.
pub const OPERATOR_APP_NAME: &str = "commerce-operator";

/// A component of the stack: a service of the catalog or infrastructure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// A service of the catalog.
    Service(Service),
    /// The managed Kafka broker.
    Kafka,
    /// The managed Postgres server.
    Postgres,
    /// The managed Redis.
    Redis,
}

impl Component {
    /// The component label's value and the suffix of object names.
    pub fn name(self) -> &'static str {
        match self {
            Component::Service(service) => service.name(),
            Component::Kafka => "kafka",
            Component::Postgres => "postgres",
            Component::Redis => "redis",
        }
    }
}

/// `<stack>-<suffix>`.
pub fn object_name(stack: &ValidStack<'_>, suffix: &str) -> String {
    format!("{}-{suffix}", stack.name)
}

/// Name of a component's workload, ConfigMap, ServiceAccount, ClusterIP
/// Service and the rest.
pub fn component_name(stack: &ValidStack<'_>, component: Component) -> String {
    object_name(stack, component.name())
}

/// Name of a service's headless Service: peers resolve it to every ready
/// pod and balance gRPC calls over them.
pub fn headless_name(stack: &ValidStack<'_>, service: Service) -> String {
    object_name(stack, &format!("{}-headless", service.name()))
}

/// Labels that select a component's pods. Stable across versions: a
/// Deployment's selector cannot change.
pub fn selector_labels(stack: &ValidStack<'_>, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), "commerce".to_owned()),
        (INSTANCE_LABEL.to_owned(), stack.name.to_owned()),
        (COMPONENT_LABEL.to_owned(), component.name().to_owned()),
    ])
}

/// Labels of every object of a component.
pub fn labels(stack: &ValidStack<'_>, component: Component) -> BTreeMap<String, String> {
    let mut labels = selector_labels(stack, component);
    labels.extend(stack_labels(stack));
    if let Component::Service(_) = component {
        labels.insert(VERSION_LABEL.to_owned(), stack.stack.spec.version.clone());
    }
    labels
}

/// Labels every object of the stack carries, whatever its component.
pub fn stack_labels(stack: &ValidStack<'_>) -> BTreeMap<String, String> {
    BTreeMap::from([
        (PART_OF_LABEL.to_owned(), "commerce-stack".to_owned()),
        (MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned()),
        (STACK_LABEL.to_owned(), stack.name.to_owned()),
    ])
}

/// The label selector that finds every object a stack owns (for `prune`).
pub fn owned_selector(stack_name: &str) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGER},{STACK_LABEL}={stack_name}")
}

/// In-cluster DNS name of a Service of the stack.
pub fn service_host(stack: &ValidStack<'_>, service_name: &str) -> String {
    format!("{service_name}.{}.svc", stack.namespace)
}

/// Longest Postgres identifier in bytes (`NAMEDATALEN - 1`); the server
/// silently truncates longer ones, which would make two names collide.
pub const MAX_POSTGRES_IDENTIFIER_LEN: usize = 63;
/// Hex digits of the stack hash in a shortened database name (40 bits).
const DATABASE_HASH_LEN: usize = 10;

/// The names a stack's data has on servers that other stacks may share: its
/// Kafka topics and consumer groups, and its Postgres databases and roles.
/// Derived from the namespace and the stack's name by [`external_names`]
/// alone, which build (ConfigMaps, Secrets), the external-state step
/// (create, grow, drop) and the status all use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalNames {
    namespace: String,
    stack: String,
    topics: TopicNames,
}

/// The names of the stack `stack` in `namespace`; see [`ExternalNames`].
///
/// Kafka: every topic, dead-letter topic and consumer group of the stack is
/// the catalog's name behind the prefix `<namespace>.<stack>.` (given to the
/// services as `COMMERCE_KAFKA_NAME_PREFIX`; the platform's [`TopicNames`]
/// applies it on both sides). Namespace and stack names are DNS labels
/// (`[a-z0-9-]`, at most 63 and [`MAX_STACK_NAME_LEN`] characters), so the
/// prefix only holds characters Kafka allows, it never contains `_` (Kafka
/// warns about topics that differ only in `.` and `_`), the two parts
/// cannot run into each other (neither holds a `.`), and the longest topic
/// name stays far below Kafka's 249.
///
/// Postgres: see [`ExternalNames::database`].
///
/// [`MAX_STACK_NAME_LEN`]: crate::validate::MAX_STACK_NAME_LEN
pub fn external_names(namespace: &str, stack: &str) -> ExternalNames {
    ExternalNames {
        namespace: namespace.to_owned(),
        stack: stack.to_owned(),
        topics: TopicNames::new(format!("{namespace}.{stack}.")),
    }
}

impl ExternalNames {
    /// The names of a validated stack.
    pub fn of(stack: &ValidStack<'_>) -> Self {
        external_names(stack.namespace, stack.name)
    }

    /// `COMMERCE_KAFKA_NAME_PREFIX` of the stack's services.
    pub fn kafka_name_prefix(&self) -> &str {
        self.topics.prefix()
    }

    /// `COMMERCE_REDIS_KEY_PREFIX` of the stack's services:
    /// `<namespace>.<stack>`, the Kafka prefix without its trailing dot, so
    /// that stacks sharing one Redis share no key (carts, catalog cache,
    /// rate-limit counters and rules). Unambiguous for the same reason.
    pub fn redis_key_prefix(&self) -> &str {
        self.topics.prefix().trim_end_matches('.')
    }

    /// The stack's own Kafka user (`kafka.external.sasl.serviceUser:
    /// PerStack`): `<namespace>.<stack>`, its topics' prefix without the
    /// trailing dot. Its ACLs are on that prefix with the dot, so it never
    /// reaches a stack whose name merely starts with this one's.
    pub fn kafka_user(&self) -> &str {
        self.redis_key_prefix()
    }

    /// The platform's naming of topics and consumer groups under the
    /// stack's prefix: what the services compute from the same prefix.
    pub fn topics(&self) -> &TopicNames {
        &self.topics
    }

    /// The physical name of a catalog topic (domain or dead-letter).
    pub fn topic(&self, catalog_name: &str) -> String {
        self.topics.name(catalog_name)
    }

    /// Postgres identifier (database and login role, the same) of a
    /// service's database: `<namespace>_<stack>_<service>` with `-` written
    /// `_`, so that stacks of any namespace can share a server.
    ///
    /// Writing `-` as `_` loses information (namespace `team-a` with stack
    /// `shop` and namespace `team` with stack `a-shop` would both give
    /// `team_a_shop_...`), and Postgres truncates identifiers beyond 63
    /// bytes. So when the namespace or the stack holds a `-`, or the name
    /// would be longer than 63 bytes, the `<namespace>_<stack>` part is cut
    /// to fit and the name ends in `_<hash>`, the first 10 hex digits of
    /// SHA-256(`<namespace>/<stack>`) (both DNS labels, so the input is
    /// unambiguous): `<namespace>_<stack>` (cut)`_<service>_<hash>`. A name
    /// without a hash ends in a service name, which is never 10 hex digits,
    /// so the two kinds never meet; the service is never cut away.
    pub fn database(&self, service: Service) -> String {
        let service = service.name();
        let readable = format!("{}_{}", self.namespace, self.stack).replace('-', "_");
        let plain_len = readable.len() + 1 + service.len();
        if !self.namespace.contains('-')
            && !self.stack.contains('-')
            && plain_len <= MAX_POSTGRES_IDENTIFIER_LEN
        {
            return format!("{readable}_{service}");
        }
        let digest = Sha256::digest(format!("{}/{}", self.namespace, self.stack));
        let hash = hex::encode(&digest[..DATABASE_HASH_LEN / 2]);
        let room = MAX_POSTGRES_IDENTIFIER_LEN - (1 + DATABASE_HASH_LEN + 1 + service.len());
        // Cut at a char boundary (DNS labels are ASCII; be safe anyway).
        let mut end = 0;
        for (index, c) in readable.char_indices() {
            if index + c.len_utf8() > room {
                break;
            }
            end = index + c.len_utf8();
        }
        let cut = readable[..end].trim_end_matches('_');
        format!("{cut}_{service}_{hash}")
    }
}

/// The Secret holding the stack's own Kafka user and its generated password
/// (`kafka.external.sasl.serviceUser: PerStack`).
pub fn kafka_user_secret_name(stack: &ValidStack<'_>) -> String {
    object_name(stack, "kafka-user")
}

/// The database and role name of `service` in the stack `stack_name` of
/// `namespace` (see [`ExternalNames::database`]).
pub fn database_name(namespace: &str, stack_name: &str, service: Service) -> String {
    external_names(namespace, stack_name).database(service)
}

/// Secret with a service's database credentials.
pub fn database_secret_name(stack: &ValidStack<'_>, service: Service) -> String {
    object_name(stack, &format!("db-{}", service.name()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use commerce_topology as catalog;

    use super::*;

    /// Every topic (domain and dead-letter), consumer group and database
    /// name of a stack.
    fn all_names(namespace: &str, stack: &str) -> (BTreeSet<String>, BTreeSet<String>) {
        let names = external_names(namespace, stack);
        let mut kafka: BTreeSet<String> =
            catalog::all_topics().iter().map(|spec| names.topic(spec.name)).collect();
        kafka.extend(Service::ALL.iter().map(|s| names.topics().consumer_group(*s)));
        let databases: BTreeSet<String> = Service::ALL.iter().map(|s| names.database(*s)).collect();
        assert_eq!(
            databases.len(),
            Service::ALL.len(),
            "two services of {namespace}/{stack} share a database"
        );
        (kafka, databases)
    }

    fn assert_disjoint(a: (&str, &str), b: (&str, &str)) {
        let (kafka_a, databases_a) = all_names(a.0, a.1);
        let (kafka_b, databases_b) = all_names(b.0, b.1);
        assert!(kafka_a.is_disjoint(&kafka_b), "{a:?} and {b:?} share Kafka names");
        assert!(databases_a.is_disjoint(&databases_b), "{a:?} and {b:?} share databases: {databases_a:?}");
    }

    #[test]
    fn stacks_of_the_same_name_in_different_namespaces_get_disjoint_topics_and_databases() {
        assert_disjoint(("team-a", "shop"), ("team-b", "shop"));
        assert_disjoint(("prod", "shop"), ("staging", "shop"));
    }

    #[test]
    fn stacks_of_different_names_in_one_namespace_get_disjoint_topics_and_databases() {
        assert_disjoint(("default", "shop"), ("default", "shop2"));
        assert_disjoint(("default", "shop"), ("default", "shop-eu"));
    }

    #[test]
    fn hyphens_that_become_underscores_do_not_make_two_stacks_meet() {
        // Both would read team_a_shop_<service> with `-` written `_`.
        assert_disjoint(("team-a", "shop"), ("team", "a-shop"));
    }

    #[test]
    fn names_are_the_prefixed_catalog_names_and_namespace_stack_service() {
        let names = external_names("default", "shop");
        assert_eq!(names.kafka_name_prefix(), "default.shop.");
        assert_eq!(names.redis_key_prefix(), "default.shop");
        assert_ne!(
            external_names("team-a", "shop").redis_key_prefix(),
            external_names("team-b", "shop").redis_key_prefix()
        );
        assert_eq!(names.topic("commerce.orders.v1"), "default.shop.commerce.orders.v1");
        assert_eq!(names.topics().topic(catalog::Topic::ALL[0]), names.topic(catalog::Topic::ALL[0].name()));
        assert_eq!(names.database(Service::Order), "default_shop_order");
        assert_eq!(database_name("default", "shop", Service::Order), "default_shop_order");
    }

    #[test]
    fn a_long_database_name_is_cut_to_63_bytes_with_a_hash_deterministically() {
        let namespace = "n".repeat(63);
        let stack = format!("s{}", "-x".repeat(20));
        let name = database_name(&namespace, &stack, Service::Notification);
        assert_eq!(name.len(), MAX_POSTGRES_IDENTIFIER_LEN, "{name}");
        assert_eq!(name, database_name(&namespace, &stack, Service::Notification), "not deterministic");
        let (head, hash) = name.rsplit_once('_').unwrap();
        assert_eq!(hash.len(), 10);
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()), "{name}");
        assert!(head.ends_with("_notification"), "the service was cut away: {name}");
        assert!(name.starts_with("nnnnnnnn"), "{name}");
        // Another stack that differs only beyond the cut still differs.
        let other = database_name(&namespace, &format!("{stack}-y"), Service::Notification);
        assert_ne!(name, other);
        assert_eq!(name.len(), other.len());
        // Every service of the longest stack fits and is distinct.
        let (_, databases) = all_names(&namespace, &stack);
        assert!(databases.iter().all(|d| d.len() <= MAX_POSTGRES_IDENTIFIER_LEN), "{databases:?}");
    }

    #[test]
    fn a_hyphenated_name_keeps_its_readable_part_and_gets_a_hash() {
        let name = database_name("team-a", "shop", Service::Order);
        assert!(name.starts_with("team_a_shop_order_"), "{name}");
        assert_eq!(name.len(), "team_a_shop_order_".len() + 10);
    }

    #[test]
    fn the_longest_topic_name_fits_kafka() {
        let names = external_names(&"n".repeat(63), &"s".repeat(crate::validate::MAX_STACK_NAME_LEN));
        for spec in catalog::all_topics() {
            assert!(names.topic(spec.name).len() <= 249, "{}", names.topic(spec.name));
        }
    }
}
