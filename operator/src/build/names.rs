//! Names and labels of everything a stack owns, in one place: the builders,
//! the pruner and the status step must agree on them.
//!
//! Every object is named `<stack>-<part>`, so that two stacks can share a
//! namespace; every object carries the stack label, which is how `prune`
//! finds what a stack owns.

use std::collections::BTreeMap;

use commerce_api::catalog::Service;

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

/// Postgres identifier (database and role) of a service's database: the
/// stack's name is part of it, so that stacks can share a server.
pub fn database_name(stack_name: &str, service: Service) -> String {
    format!("{}_{}", stack_name.replace('-', "_"), service.name())
}

/// Secret with a service's database credentials.
pub fn database_secret_name(stack: &ValidStack<'_>, service: Service) -> String {
    object_name(stack, &format!("db-{}", service.name()))
}
