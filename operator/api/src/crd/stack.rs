//! `CommerceStack`: one resource that describes a whole shop, from which the
//! operator builds every Deployment, Service, topic and database.
//!
//! Fields with a sensible default have one (applied by the apiserver, so
//! `kubectl get -o yaml` shows what runs); the rules that relate fields to each
//! other are CEL rules with messages that say what to change.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool, ValidationRule,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube_core::{Duration, Message, Reason, Rule};
use kube_derive::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;
use super::rate_limit::{MAX_RULES, RateLimitRule};
use commerce_topology::Service;

/// Condition type: every enabled service has all its replicas available and
/// the stack's topics and databases exist.
pub const CONDITION_READY: &str = "Ready";
/// Condition type: the operator is rolling out a change (a new generation,
/// a Deployment whose replicas are not all updated and available yet).
pub const CONDITION_PROGRESSING: &str = "Progressing";
/// Condition type: something keeps the stack from its desired state (an
/// invalid spec, an unreachable broker or database, an apply error).
pub const CONDITION_DEGRADED: &str = "Degraded";
/// Condition type: `spec.paused` is true, so the operator neither changes
/// nor observes the stack; meanwhile `Ready` is `Unknown` and
/// `observedGeneration` stays at the last generation reconciled.
pub const CONDITION_PAUSED: &str = "Paused";
/// Condition type for kstatus (Flux, kpt, cli-utils), abnormal-true: True
/// while the operator works towards the spec (objects just applied, a
/// rollout, services or managed infrastructure not available yet, a
/// transient Kafka or Postgres error it retries); False once the stack
/// matches its spec, or when it is [`CONDITION_STALLED`]. kstatus reads
/// only `observedGeneration`, `Reconciling` and `Stalled` of a custom
/// resource: True here is `InProgress`.
pub const CONDITION_RECONCILING: &str = "Reconciling";
/// Condition type for kstatus, abnormal-true: True when retrying cannot
/// help and progress needs a change of the spec or outside action (an
/// invalid spec, an object the apiserver refuses or that the stack did not
/// create, a missing StorageClass); False otherwise. True here is kstatus'
/// `Failed`.
pub const CONDITION_STALLED: &str = "Stalled";

/// Condition type, only on a deleted stack under `deletionPolicy: Delete`:
/// its databases and login roles on the external Postgres were dropped
/// (True; reason `NotNeeded` for managed Postgres, whose data goes with its
/// volume), or the last attempt failed (False, with the reason in the
/// message). Cleaned up on its own, whatever becomes of the topics.
pub const CONDITION_DATABASES_CLEANED_UP: &str = "DatabasesCleanedUp";
/// Condition type, only on a deleted stack under `deletionPolicy: Delete`:
/// its topics on the external Kafka were deleted (True; reason `NotNeeded`
/// for managed Kafka), or the last attempt failed (False). Cleaned up on
/// its own, whatever becomes of the databases.
pub const CONDITION_TOPICS_CLEANED_UP: &str = "TopicsCleanedUp";

/// Longest name of a CommerceStack: the longest object name derived from it,
/// `<stack>-notification-headless`, must remain a 63-character DNS label.
pub const MAX_NAME_LEN: usize = 63 - "-notification-headless".len();

/// Image repository of the `commerce` binary when the spec names none.
pub const DEFAULT_IMAGE_REPOSITORY: &str = "ghcr.io/commerce-stack/commerce";

/// The shop: image and version, per-service settings, the infrastructure it
/// uses (Kafka, Postgres, Redis, each external or managed), the gateway's
/// Ingress and rate limits, and what happens to data when the stack goes.
// kube's `printcolumn(...)` repeats keys by design; clippy takes them for
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "commerce-stack.dev",
    version = "v1alpha1",
    kind = "CommerceStack",
    namespaced,
    status = "CommerceStackStatus",
    derive = "PartialEq",
    shortname = "cstack",
    category = "commerce",
    doc = "A complete commerce backend: the operator turns it into a Deployment per service, Kafka topics, a database per service, autoscalers and an Ingress with rate limits.",
    crates(kube_core = "::kube_core", kube = "::kube_derive"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether every enabled service is available"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".spec.version",
        description = "The shop's version: the image tag of every service"
    ),
    printcolumn(
        name = "Services",
        type_ = "string",
        json_path = ".status.readyServices",
        description = "Available services out of enabled services"
    ),
    printcolumn(
        name = "Gateway",
        type_ = "string",
        json_path = ".status.gatewayUrl",
        description = "Where clients reach the REST gateway",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(
    crates(kube_core = "::kube_core"),
    validation = Rule::new("!has(self.gateway.ingress) || !has(self.services) || !('gateway' in self.services) || self.services['gateway'].enabled")
        .message("gateway.ingress routes to the gateway, but services.gateway.enabled is false: enable the gateway or remove gateway.ingress")
        .reason(Reason::FieldValueForbidden),
)]
#[serde(rename_all = "camelCase")]
pub struct CommerceStackSpec {
    /// The shop's version: the image tag every service runs, e.g. `0.1.0`.
    /// Changing it rolls every Deployment to the new image.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"))]
    pub version: String,
    /// Where the `commerce` image comes from.
    #[serde(default)]
    #[schemars(extend("default" = {}))]
    pub image: ImageSpec,
    /// Per-service settings, keyed by the service's name in the catalog
    /// (auth, catalog, inventory, cart, order, payment, notification,
    /// shipping, gateway, audit, profile, reviews, search, recommendation,
    /// analytics). A service that is not listed runs with the defaults:
    /// enabled, one replica, default resources.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = Service::ALL.len()))]
    #[x_kube(validation = known_service_names_rule())]
    #[x_kube(validation = some_service_enabled_rule())]
    pub services: BTreeMap<String, ServiceSettings>,
    /// The Kafka cluster that carries the domain events: `external` (your
    /// brokers) or `managed` (the operator runs one in the namespace).
    pub kafka: KafkaSpec,
    /// The Postgres server that holds one database per service: `external`
    /// (the operator logs in with an admin Secret) or `managed`.
    pub postgres: PostgresSpec,
    /// The Redis that holds carts, the catalog cache and rate-limit counters:
    /// `external` or `managed`.
    pub redis: RedisSpec,
    /// The REST gateway: its Ingress, CORS and rate limits.
    #[serde(default)]
    pub gateway: GatewaySpec,
    /// Settings of the auth service's tokens and signing key.
    #[serde(default)]
    #[schemars(extend("default" = {"accessTokenTtl": "15m", "refreshTokenTtl": "720h", "signingKeyPrepublish": "5m"}))]
    pub auth: AuthSpec,
    /// Settings of the payment service's provider.
    #[serde(default)]
    #[schemars(extend("default" = {"provider": "mock"}))]
    pub payment: PaymentSpec,
    /// Settings of the notification service: the email channel.
    #[serde(default, skip_serializing_if = "NotificationSpec::is_default")]
    pub notification: NotificationSpec,
    /// What happens to the stack's Kafka topics and databases when the stack
    /// is deleted. `Retain` (the default) keeps them, so that re-creating the
    /// stack finds its data; `Delete` drops them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// How Prometheus finds the services' metrics (`/metrics` on each
    /// service pod's `admin` port).
    #[serde(default, skip_serializing_if = "MonitoringSpec::is_default")]
    pub monitoring: MonitoringSpec,
    /// Stops every write of the operator to this stack's objects, topics and
    /// databases (for maintenance or a manual fix). The status says so: a
    /// `Paused` condition is True, `Ready` is Unknown and `observedGeneration`
    /// stays at the last generation reconciled, since nothing is observed.
    /// Setting it back to false resumes reconciliation and corrects drift.
    #[serde(default)]
    pub paused: bool,
}

/// The CEL rule that keeps `spec.services` to the catalog's names. Generated
/// from the catalog, so a new service is accepted once it is in the catalog.
fn known_service_names_rule() -> Rule {
    let names: Vec<&str> = Service::names().collect();
    let list = names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ");
    Rule::new(format!("self.all(name, name in [{list}])"))
        .message(Message::Message(format!("services only takes names of the catalog: {}", names.join(", "))))
        .reason(Reason::FieldValueInvalid)
}

/// The CEL rule that refuses a stack whose every service is disabled: it
/// would consist of nothing but its topics and databases. A service missing
/// from `services` runs (with the defaults), and `enabled` defaults to true.
fn some_service_enabled_rule() -> Rule {
    let names: Vec<&str> = Service::names().collect();
    let list = names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ");
    Rule::new(format!("[{list}].exists(name, !(name in self) || self[name].enabled)"))
        .message(Message::Message(format!(
            "every service is disabled (services.<name>.enabled is false for {}): enable at least one, or delete the stack",
            names.join(", ")
        )))
        .reason(Reason::FieldValueInvalid)
}

/// What Kubernetes has long required of an environment variable's name
/// (`IsEnvVarName`): letters, digits, `-`, `.` and `_`, not starting with a
/// digit. Since Kubernetes 1.34 a Pod may carry any printable ASCII name
/// without `=`, but shells and most programs cannot read such a variable,
/// and older apiservers refuse the Deployment after the rest of the stack
/// was applied; the schema refuses it at admission instead.
pub const ENV_VAR_NAME_PATTERN: &str = "^[-._a-zA-Z][-._a-zA-Z0-9]*$";

/// Whether `name` matches [`ENV_VAR_NAME_PATTERN`] (for the operator's own
/// check, which has no regex engine).
pub fn is_env_var_name(name: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    name.chars().next().is_some_and(|first| allowed(first) && !first.is_ascii_digit())
        && name.chars().all(allowed)
}

/// A DNS-1123 subdomain: what Kubernetes requires of a Secret's name. `[.]`
/// rather than an escaped dot, which CEL string literals would need twice.
const DNS_SUBDOMAIN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// The message of a Secret reference that no Secret can have: the pods
/// (or the operator) would wait for it forever.
fn secret_name_message(field: &str) -> Message {
    Message::Message(format!(
        "{field} must be a Secret name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
    ))
}

/// The CEL rule on a field holding one Secret name (`field` is its path in
/// the message).
pub(crate) fn secret_name_rule(field: &str) -> Rule {
    Rule::new(format!("self.matches('{DNS_SUBDOMAIN}')"))
        .message(secret_name_message(field))
        .reason(Reason::FieldValueInvalid)
}

/// The CEL rule on a list of Secret names.
fn secret_names_rule(field: &str) -> Rule {
    Rule::new(format!("self.all(name, name.matches('{DNS_SUBDOMAIN}'))"))
        .message(secret_name_message(field))
        .reason(Reason::FieldValueInvalid)
}

/// An image repository as the container runtimes parse it (an optional
/// registry host with port, then lowercase path components), without a tag
/// or digest: the operator appends `:<spec.version>`, so `repo:tag` would
/// make every pod fail with InvalidImageName.
const IMAGE_REPOSITORY: &str = "^(([a-zA-Z0-9]|[a-zA-Z0-9][-a-zA-Z0-9]*[a-zA-Z0-9])([.]([a-zA-Z0-9]|[a-zA-Z0-9][-a-zA-Z0-9]*[a-zA-Z0-9]))*(:[0-9]+)?/)?[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*$";

fn image_repository_rule() -> Rule {
    Rule::new(format!("self.matches('{IMAGE_REPOSITORY}')"))
        .message("image.repository is a repository without a tag or digest (spec.version is the tag), its path in lowercase, e.g. ghcr.io/commerce-stack/commerce")
        .reason(Reason::FieldValueInvalid)
}

/// A whole image reference: [`IMAGE_REPOSITORY`], then an optional tag and
/// an optional sha256 digest. The apiserver checks only that a container's
/// image has no leading or trailing space, so `redis 7` would be admitted
/// and every pod of the managed server would fail with InvalidImageName.
fn image_reference_rule() -> Rule {
    let repository = IMAGE_REPOSITORY.trim_end_matches('$');
    Rule::new(format!("self.matches('{repository}(:[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(@sha256:[a-f0-9]{{64}})?$')"))
        .message("a managed server's image is an image reference (repository, optional :tag and @sha256:digest, no spaces), e.g. apache/kafka:4.1.0")
        .reason(Reason::FieldValueInvalid)
}

/// A host name (DNS labels, `_` allowed as some resolvers do), an IPv4
/// address, or an IPv6 address (it holds a `:`), without a port or a
/// scheme: the operator connects to it, and the services get it in a URL.
const HOST: &str = "^(([A-Za-z0-9]([-A-Za-z0-9_]*[A-Za-z0-9])?)([.][A-Za-z0-9]([-A-Za-z0-9_]*[A-Za-z0-9])?)*[.]?|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*)$";

/// The CEL rule on a host field (`field` is its path in the message).
fn host_rule(field: &str) -> Rule {
    Rule::new(format!("self.matches('{HOST}')"))
        .message(Message::Message(format!(
            "{field} is a host name or an IP address without a port or scheme, e.g. postgres.db.svc or 10.0.0.7"
        )))
        .reason(Reason::FieldValueInvalid)
}

/// What Kubernetes requires of a key of a Secret's data.
const SECRET_KEY: &str = "^[-._a-zA-Z0-9]+$";

/// The CEL rule on a field naming a key of a Secret: no Secret can have a
/// key outside [`SECRET_KEY`], so the operator (or the pods) would wait for
/// it forever.
pub(crate) fn secret_key_rule(field: &str) -> Rule {
    Rule::new(format!("self.matches('{SECRET_KEY}')"))
        .message(Message::Message(format!(
            "{field} must be a key a Secret can have: letters, digits, '-', '_' and '.'"
        )))
        .reason(Reason::FieldValueInvalid)
}

/// The `commerce` image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Image repository without a tag; the tag is `spec.version`.
    #[serde(default = "default_image_repository")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = image_repository_rule())]
    pub repository: String,
    /// When the kubelet pulls the image: `Always`, `IfNotPresent` or `Never`.
    /// Unset, Kubernetes decides (`IfNotPresent` for a version tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<PullPolicy>,
    /// Names of Secrets in the namespace that hold registry credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    #[x_kube(validation = secret_names_rule("image.pullSecrets"))]
    pub pull_secrets: Vec<String>,
}

impl Default for ImageSpec {
    fn default() -> Self {
        ImageSpec { repository: default_image_repository(), pull_policy: None, pull_secrets: Vec::new() }
    }
}

fn default_image_repository() -> String {
    DEFAULT_IMAGE_REPOSITORY.to_owned()
}

/// When the kubelet pulls an image (the Kubernetes values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum PullPolicy {
    // Pull on every container start.
    Always,
    // Pull only if the node lacks the image.
    IfNotPresent,
    // Never pull; the node must have the image.
    Never,
}

impl PullPolicy {
    /// The value Kubernetes expects in `imagePullPolicy`.
    pub const fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Settings of one service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(
    crates(kube_core = "::kube_core"),
    validation = Rule::new("!(has(self.replicas) && has(self.autoscaling))")
        .message("set either replicas (a fixed count) or autoscaling (the HorizontalPodAutoscaler picks the count), not both")
        .reason(Reason::FieldValueForbidden),
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSettings {
    /// Whether the service runs. Disabling it removes its Deployment,
    /// Services and the rest; its database and topics stay.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// A fixed number of pods. Unset and without autoscaling, one pod runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// CPU and memory requests and limits of the service's container. Unset,
    /// the operator requests 50m CPU and 64Mi memory and limits memory to
    /// 256Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Scale the service with a HorizontalPodAutoscaler on CPU utilisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// Extra environment variables, applied after the operator's own so that
    /// they override them (for example `RUST_LOG`). `valueFrom` may read a
    /// Secret or ConfigMap. Names hold letters, digits, `-`, `.` and `_`
    /// and do not start with a digit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub env: Vec<EnvVar>,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings { enabled: true, replicas: None, resources: None, autoscaling: None, env: Vec::new() }
    }
}

fn enabled_by_default() -> bool {
    true
}

/// Autoscaling of one service on CPU utilisation (autoscaling/v2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(
    crates(kube_core = "::kube_core"),
    validation = Rule::new("self.minReplicas <= self.maxReplicas")
        .message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas")
        .reason(Reason::FieldValueInvalid),
)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Fewest pods, also while idle.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most pods. Topics the service consumes get at least this many
    /// partitions, so that no consumer sits idle.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Average CPU utilisation, in percent of the CPU request, that the
    /// autoscaler aims for.
    #[serde(default = "default_cpu_target")]
    #[schemars(range(min = 1, max = 1000))]
    pub target_cpu_utilization_percentage: i32,
    /// Seconds the autoscaler looks back before removing pods: it scales in
    /// only to the highest count it recommended over that window, so a
    /// short lull does not shed pods that the next burst needs. Unset keeps
    /// Kubernetes' default of 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: Option<i32>,
}

fn default_min_replicas() -> i32 {
    1
}

/// 70 %: leaves headroom for a burst while the autoscaler adds pods.
fn default_cpu_target() -> i32 {
    70
}

/// The Kafka cluster: exactly one of `external` and `managed`. Topics get
/// the brokers' `default.replication.factor`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(
    crates(kube_core = "::kube_core"),
    validation = Rule::new("has(self.external) != has(self.managed)")
        .message("set exactly one of kafka.external (bootstrap servers of your brokers) and kafka.managed (the operator runs Kafka in the namespace)")
        .reason(Reason::FieldValueInvalid),
)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// Brokers the stack connects to; the operator creates the topics there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalKafka>,
    /// A single-node Kafka (KRaft) that the operator runs as a StatefulSet
    /// with a PersistentVolumeClaim: for development and small shops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedInfra>,
}

/// Brokers of a Kafka cluster the stack does not own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(
    crates(kube_core = "::kube_core"),
    validation = Rule::new("!has(self.sasl) || !has(self.sasl.mechanism) || self.sasl.mechanism != 'PLAIN' || has(self.tls)")
        .message("kafka.external.sasl.mechanism PLAIN sends the password itself: set kafka.external.tls too, or use SCRAM-SHA-512")
        .reason(Reason::FieldValueInvalid),
)]
#[serde(rename_all = "camelCase")]
pub struct ExternalKafka {
    /// Bootstrap servers as `host:port`, e.g. `kafka-0.kafka:9092`.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 253)))]
    // Ports from 1 to 65535 only: a port no broker can listen on would be
    // admitted and then fail every reconcile and every service.
    #[x_kube(validation = Rule::new("self.all(s, s.matches('^[^:/ ]+:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$'))")
        .message("every kafka.external.bootstrapServers entry is host:port with a port from 1 to 65535, e.g. kafka-0.kafka:9092"))]
    pub bootstrap_servers: Vec<String>,
    /// TLS towards the brokers, whose certificates and host names are
    /// verified. Unset: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<KafkaTls>,
    /// SASL authentication of the services and the operator. Unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSasl>,
}

/// TLS towards a Kafka cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct KafkaTls {
    /// The Secret key holding the PEM bundle of the CAs that signed the
    /// brokers' certificates. Unset: the system's CAs (the images carry
    /// Debian's bundle), as for a managed Kafka with a public certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,
}

/// SASL towards a Kafka cluster: a mechanism and a user's credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(
    crates(kube_core = "::kube_core"),
    validation = Rule::new("!has(self.serviceUser) || self.serviceUser != 'PerStack' || !has(self.mechanism) || self.mechanism != 'PLAIN'")
        .message("kafka.external.sasl.serviceUser PerStack makes a SCRAM user: set kafka.external.sasl.mechanism to SCRAM-SHA-512 or SCRAM-SHA-256")
        .reason(Reason::FieldValueInvalid),
)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSasl {
    /// The SASL mechanism.
    #[serde(default)]
    pub mechanism: SaslMechanism,
    /// Name of the Secret, in the stack's namespace, with the user's name
    /// and password.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = secret_name_rule("kafka.external.sasl.secretName"))]
    pub secret_name: String,
    /// Key of the user name.
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = secret_key_rule("kafka.external.sasl.usernameKey"))]
    pub username_key: String,
    /// Key of the password.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = secret_key_rule("kafka.external.sasl.passwordKey"))]
    pub password_key: String,
    /// Whom the services log in as. `Shared` (the default): the Secret's
    /// user, as the operator does. `PerStack`: a SCRAM user of the stack's
    /// own, `<namespace>.<stack>`, that the operator makes as the Secret's
    /// user (which must be allowed to alter SCRAM credentials and ACLs, as a
    /// cluster admin is), with a generated password in the Secret
    /// `<stack>-kafka-user` and ACLs that allow the stack's topics and
    /// consumer groups (`<namespace>.<stack>.*`) and nothing else.
    #[serde(default)]
    pub service_user: KafkaServiceUser,
}

/// Whom a stack's services log in to Kafka as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum KafkaServiceUser {
    /// The Secret's user, as the operator does.
    #[default]
    Shared,
    /// A SCRAM user of the stack's own, `<namespace>.<stack>`, that the
    /// operator makes as the Secret's user (which must be allowed to alter
    /// SCRAM credentials and ACLs: ALTER on the cluster, as an admin has).
    /// Its generated password is kept in the Secret `<stack>-kafka-user`;
    /// its ACLs let it read and write the stack's topics and use the stack's
    /// consumer groups (all named `<namespace>.<stack>.*`) and nothing else,
    /// so stacks sharing a cluster cannot read each other's events.
    PerStack,
}

/// A SASL mechanism librdkafka speaks with the brokers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum SaslMechanism {
    /// SCRAM with SHA-512 (RFC 7677's scheme with SHA-512).
    #[default]
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// SCRAM with SHA-256 (RFC 7677).
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// The password itself, sent to the broker: only over TLS.
    #[serde(rename = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    /// The name librdkafka's `sasl.mechanism` takes.
    pub const fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::Plain => "PLAIN",
        }
    }
}

/// The Postgres server: exactly one of `external` and `managed`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(
    crates(kube_core = "::kube_core"),
    validation = Rule::new("has(self.external) != has(self.managed)")
        .message("set exactly one of postgres.external (your server and an admin Secret) and postgres.managed (the operator runs Postgres in the namespace)")
        .reason(Reason::FieldValueInvalid),
)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSpec {
    /// A server the stack does not own. The operator logs in as the admin
    /// to create one database and one login role per service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalPostgres>,
    /// A single Postgres that the operator runs as a StatefulSet with a
    /// PersistentVolumeClaim; its admin password is generated into a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedInfra>,
}

/// A Postgres server the stack does not own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct ExternalPostgres {
    /// Host name or address of the server.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = host_rule("postgres.external.host"))]
    pub host: String,
    /// Port of the server.
    #[serde(default = "default_postgres_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// A Secret with the admin's credentials (a role with CREATEDB and
    /// CREATEROLE); the operator uses it only to create databases and roles.
    pub admin_secret: AdminSecret,
    /// TLS towards the server, as libpq's `sslmode`.
    #[serde(default)]
    pub ssl_mode: SslMode,
    /// The Secret key holding the PEM bundle of the CAs that signed the
    /// server's certificate, which `verify-ca` and `verify-full` check
    /// (libpq's `sslrootcert`). Unset: the public web CAs built into the
    /// services and the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,
    /// The database the admin connects to.
    #[serde(default = "default_admin_database")]
    #[schemars(length(min = 1, max = 63))]
    pub admin_database: String,
}

fn default_postgres_port() -> i32 {
    5432
}

fn default_admin_database() -> String {
    "postgres".to_owned()
}

/// A Secret holding a user name and a password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct AdminSecret {
    /// Name of the Secret in the stack's namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = secret_name_rule("postgres.external.adminSecret.name"))]
    pub name: String,
    /// Key of the user name.
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = secret_key_rule("postgres.external.adminSecret.usernameKey"))]
    pub username_key: String,
    /// Key of the password.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = secret_key_rule("postgres.external.adminSecret.passwordKey"))]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".to_owned()
}

fn default_password_key() -> String {
    "password".to_owned()
}

/// libpq's `sslmode`, as far as it applies to a client that never reads a
/// client certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    // No TLS.
    Disable,
    // TLS if the server offers it.
    #[default]
    Prefer,
    // TLS, without checking the certificate.
    Require,
    // TLS with a certificate signed by a trusted CA.
    VerifyCa,
    // As verify-ca, and the host name must match.
    VerifyFull,
}

impl SslMode {
    /// The value in a Postgres connection URL.
    pub const fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Redis: exactly one of `external` and `managed`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(
    crates(kube_core = "::kube_core"),
    validation = Rule::new("has(self.external) != has(self.managed)")
        .message("set exactly one of redis.external (your server) and redis.managed (the operator runs Redis in the namespace)")
        .reason(Reason::FieldValueInvalid),
)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// A Redis the stack does not own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRedis>,
    /// A single Redis (append-only file on a PersistentVolumeClaim) that the
    /// operator runs as a StatefulSet; its password is generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedInfra>,
}

/// A Redis the stack does not own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct ExternalRedis {
    /// Host name or address.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = host_rule("redis.external.host"))]
    pub host: String,
    /// Port.
    #[serde(default = "default_redis_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// The Secret key holding Redis' password (`AUTH`); unset, none is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<SecretKeyRef>,
}

fn default_redis_port() -> i32 {
    6379
}

/// A piece of infrastructure the operator runs for the stack.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct ManagedInfra {
    /// The volume that keeps the data across restarts.
    #[serde(default)]
    pub storage: Storage,
    /// Requests and limits of the container. Unset, the operator's defaults
    /// for this kind of server apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Image (repository and tag) to run instead of the operator's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = image_reference_rule())]
    pub image: Option<String>,
}

/// A PersistentVolumeClaim's size and class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Requested size, e.g. `10Gi`. A StatefulSet's claims cannot be
    /// resized through it later; size them with room to grow.
    #[serde(default = "default_storage_size")]
    pub size: Quantity,
    /// StorageClass of the claim; unset, the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

impl Default for Storage {
    fn default() -> Self {
        Storage { size: default_storage_size(), storage_class_name: None }
    }
}

fn default_storage_size() -> Quantity {
    Quantity("10Gi".to_owned())
}

/// The REST gateway's edge settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// An Ingress for the gateway; unset, the gateway is reachable inside
    /// the cluster only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// The stack's own rate limits. RateLimitPolicies that target the stack
    /// add theirs; every matching rule applies. A change reaches the gateway
    /// without restarting it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_RULES))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub rate_limits: Vec<RateLimitRule>,
    /// Cross-origin requests from browsers; unset, none are allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsSpec>,
}

/// The gateway's Ingress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Host name clients use, e.g. `shop.example.com`.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub host: String,
    /// IngressClass that serves the Ingress; unset, the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(format!("self.matches('{DNS_SUBDOMAIN}')"))
        .message("gateway.ingress.className must be an IngressClass name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit")
        .reason(Reason::FieldValueInvalid))]
    pub class_name: Option<String>,
    /// A Secret of type kubernetes.io/tls with the host's certificate; set,
    /// the Ingress terminates TLS and the gateway URL is https.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = secret_name_rule("gateway.ingress.tlsSecretName"))]
    pub tls_secret_name: Option<String>,
    /// Annotations for the Ingress controller (timeouts, body size, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Which browser origins may call the REST API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct CorsSpec {
    /// Origins allowed to call, e.g. `https://shop.example.com`; `*` allows
    /// any origin (then credentials are never allowed).
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 253)))]
    #[x_kube(validation = Rule::new("self.all(o, o == '*' || o.matches('^https?://[^/ ]+$'))")
        .message("every gateway.cors.allowedOrigins entry is '*' or scheme://host[:port] without a path, e.g. https://shop.example.com"))]
    pub allowed_origins: Vec<String>,
    /// Request headers a browser may send besides the safelisted ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 128)))]
    // HTTP's token characters but ' and `, which no header name uses: a
    // name with a space would make the gateway's CORS layer refuse to start.
    #[x_kube(validation = Rule::new("self.all(h, h.matches('^[-!#$%&*+.^_|~0-9A-Za-z]+$'))")
        .message("every gateway.cors.allowedHeaders entry is a header name (letters, digits and !#$%&*+-.^_|~, no spaces), e.g. X-Request-Id")
        .reason(Reason::FieldValueInvalid))]
    pub allowed_headers: Vec<String>,
    /// How long a browser may cache a preflight answer, in seconds.
    #[serde(default = "default_cors_max_age")]
    #[schemars(range(min = 0, max = 86400))]
    pub max_age_seconds: i32,
}

/// Ten minutes: Chromium's own cap on a cached preflight.
fn default_cors_max_age() -> i32 {
    600
}

/// Annotation on a CommerceStack that requests one rotation of the auth
/// service's signing key: any new value (say, the current time) starts a
/// rotation, as `kubectl rollout restart` does with `restartedAt`. Setting
/// the same value again does nothing; a request made during a rotation
/// starts another once that one has finished.
pub const ROTATE_SIGNING_KEY_ANNOTATION: &str = "commerce-stack.dev/rotate-signing-key";

/// Shortest `auth.signingKeyRotationInterval`: a rotation takes the
/// pre-publication plus one access-token lifetime, and rotating more often
/// than hourly buys no security for the churn.
pub const MIN_SIGNING_KEY_ROTATION_INTERVAL: &str = "1h";

/// Token lifetimes and signing-key rotation of the auth service.
///
/// The operator rotates the signing key without invalidating any token: the
/// new key is published `signingKeyPrepublish` before it signs, and the old
/// one keeps verifying until the last token it signed has expired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(
    crates(kube_core = "::kube_core"),
    validation = Rule::new("duration(self.accessTokenTtl) < duration(self.refreshTokenTtl)")
        .message("auth.accessTokenTtl must be shorter than auth.refreshTokenTtl, or a refresh would outlive nothing")
        .reason(Reason::FieldValueInvalid),
)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Lifetime of an access token (a JWT the gateway verifies locally), as a
    /// Go duration such as `15m`. Short: a revoked user keeps access this long.
    #[serde(default = "default_access_token_ttl")]
    #[schemars(extend("default" = "15m"), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"), length(max = 32))]
    pub access_token_ttl: Duration,
    /// Lifetime of a refresh token, e.g. `720h` (30 days).
    #[serde(default = "default_refresh_token_ttl")]
    #[schemars(extend("default" = "720h"), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"), length(max = 32))]
    pub refresh_token_ttl: Duration,
    /// Rotate the signing key this often, e.g. `720h`; at least `1h`. Unset:
    /// only when requested with the `commerce-stack.dev/rotate-signing-key`
    /// annotation (which works either way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"), length(max = 32))]
    #[x_kube(
        validation = Rule::new(format!("duration(self) >= duration('{MIN_SIGNING_KEY_ROTATION_INTERVAL}')"))
            .message(Message::Message(format!(
                "auth.signingKeyRotationInterval must be at least {MIN_SIGNING_KEY_ROTATION_INTERVAL}"
            )))
            .reason(Reason::FieldValueInvalid)
    )]
    pub signing_key_rotation_interval: Option<Duration>,
    /// How long a new signing key is published before it signs. The
    /// default, `5m`, covers the kubelet refreshing the mounted Secret
    /// (about 1.5 min), the auth service re-reading it (30 s) and verifiers
    /// caching the published keys (60 s), with margin; shorter risks tokens
    /// that a gateway cannot verify for a moment.
    #[serde(default = "default_signing_key_prepublish")]
    #[schemars(extend("default" = "5m"), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"), length(max = 32))]
    pub signing_key_prepublish: Duration,
}

impl Default for AuthSpec {
    fn default() -> Self {
        AuthSpec {
            access_token_ttl: default_access_token_ttl(),
            refresh_token_ttl: default_refresh_token_ttl(),
            signing_key_rotation_interval: None,
            signing_key_prepublish: default_signing_key_prepublish(),
        }
    }
}

fn default_signing_key_prepublish() -> Duration {
    std::time::Duration::from_secs(5 * 60).into()
}

fn default_access_token_ttl() -> Duration {
    std::time::Duration::from_secs(15 * 60).into()
}

fn default_refresh_token_ttl() -> Duration {
    std::time::Duration::from_secs(30 * 24 * 60 * 60).into()
}

/// How Prometheus finds the services' metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// `Annotations` (the default): `prometheus.io/scrape` and `port`
    /// annotations on the service pods, for a Prometheus whose pod
    /// discovery follows them (the path is the default, `/metrics`). `PodMonitor`: one prometheus-operator
    /// PodMonitor for the stack's services instead, made while the cluster
    /// serves the kind (`monitoring.coreos.com/v1`); until it does, the pods
    /// keep their annotations and the stack's Degraded condition says why.
    #[serde(default)]
    pub scrape: ScrapeMode,
    /// Labels of the PodMonitor, so that a Prometheus' `podMonitorSelector`
    /// picks it (e.g. `release: kube-prometheus-stack`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub labels: BTreeMap<String, String>,
    /// How often each pod is scraped, in whole seconds (e.g. `30s`);
    /// Prometheus' own default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('1h')")
            .message("monitoring.interval must be between 1s and 1h")
            .reason(Reason::FieldValueInvalid)
    )]
    pub interval: Option<Duration>,
    /// An OpenTelemetry collector (or Jaeger, Tempo...) receiving OTLP over
    /// gRPC without TLS, e.g. `http://otel-collector.observability:4317`:
    /// every service exports its spans there, as `service.name` its own
    /// name. Unset, no span is exported (trace ids still travel between the
    /// services and name every log line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    #[x_kube(
        validation = Rule::new("self.startsWith('http://') && size(self) > 7")
            .message("monitoring.otlpEndpoint must be an http:// URL (OTLP over gRPC without TLS)")
            .reason(Reason::FieldValueInvalid)
    )]
    pub otlp_endpoint: Option<String>,
}

impl MonitoringSpec {
    /// Whether nothing is set (then the field is left out of a rendered
    /// stack).
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// How Prometheus finds the metrics ([`MonitoringSpec::scrape`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum ScrapeMode {
    /// `prometheus.io/*` annotations on the pods.
    #[default]
    Annotations,
    /// A prometheus-operator PodMonitor.
    PodMonitor,
}

/// The payment service's provider.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(
    crates(kube_core = "::kube_core"),
    validation = Rule::new("!has(self.provider) || self.provider != 'stripe' || has(self.credentialsSecret)")
        .message(STRIPE_NEEDS_CREDENTIALS)
        .reason(Reason::FieldValueRequired),
)]
#[serde(rename_all = "camelCase")]
pub struct PaymentSpec {
    /// `mock` (the default): deterministic and in process, no money moves;
    /// for development and tests. `stripe`: Stripe's PaymentIntents, with
    /// the keys in `credentialsSecret`. Any other value is refused at
    /// admission, because the payment pods would refuse it at start and
    /// never become ready.
    #[serde(default)]
    pub provider: PaymentProvider,
    /// Name of a Secret with the provider's credentials, mounted read-only
    /// into the payment service as files. For `stripe` (required): key
    /// `secretKey`, the secret API key, and optionally `webhookSecret`, the
    /// signing secret of the webhook endpoint
    /// (`/api/payments/webhooks/stripe` on the gateway). `mock` reads none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = secret_name_rule("payment.credentialsSecret"))]
    pub credentials_secret: Option<String>,
}

/// Why a `stripe` provider without credentials is refused.
pub const STRIPE_NEEDS_CREDENTIALS: &str = "payment.provider stripe needs payment.credentialsSecret: a Secret with the key secretKey (the secret API key) and optionally webhookSecret";

/// Payment providers the payment service has adapters for. The schema's
/// `enum` lists exactly these, so the apiserver refuses any other name with
/// `spec.payment.provider: Unsupported value`; add a variant only together
/// with the adapter in `services/payment`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PaymentProvider {
    // Deterministic, in-process; for development and tests.
    #[default]
    Mock,
    // Stripe's PaymentIntents.
    Stripe,
}

impl PaymentProvider {
    /// The provider's name in configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            PaymentProvider::Mock => "mock",
            PaymentProvider::Stripe => "stripe",
        }
    }
}

/// Settings of the notification service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct NotificationSpec {
    /// Email each notification (and a welcome) to the user, through this
    /// SMTP server. Unset: notifications stay in the in-app inbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailSpec>,
}

impl NotificationSpec {
    /// Whether nothing is set (then the field is left out of a rendered
    /// stack).
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// The SMTP server the notification service sends email through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct EmailSpec {
    /// The server's host name or IP address, e.g. `smtp.example.com`.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = host_rule("notification.email.host"))]
    pub host: String,
    /// The server's port; by default 587 for `StartTls`, 465 for `Tls` and 25
    /// for `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// `StartTls` (the default: plain connection upgraded, required),
    /// `Tls` (TLS from the first byte) or `None` (a relay in the cluster or
    /// on the node, without encryption).
    #[serde(default)]
    pub tls: SmtpTls,
    /// The sender of every email, e.g. `Shop <no-reply@shop.example.com>`.
    #[schemars(length(min = 3, max = 320))]
    #[x_kube(
        validation = Rule::new("self.contains('@')")
            .message("notification.email.from is an email address, optionally with a name: Shop <no-reply@shop.example.com>")
            .reason(Reason::FieldValueInvalid)
    )]
    pub from: String,
    /// A Secret with the SMTP login (keys `username` and `password`), when
    /// the server wants one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = secret_name_rule("notification.email.credentialsSecret"))]
    pub credentials_secret: Option<String>,
}

impl EmailSpec {
    /// The port connected to: the given one, or the encryption's usual one.
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::StartTls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        })
    }

    /// The server as the notification service's `--email-smtp-url` takes it
    /// (no credentials: they come from their Secret on their own).
    pub fn smtp_url(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let port = self.port_or_default();
        match self.tls {
            SmtpTls::StartTls => format!("smtp://{host}:{port}?tls=required"),
            SmtpTls::Tls => format!("smtps://{host}:{port}"),
            SmtpTls::None => format!("smtp://{host}:{port}"),
        }
    }
}

/// How the connection to the SMTP server is encrypted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum SmtpTls {
    // STARTTLS, required.
    #[default]
    StartTls,
    // Implicit TLS.
    Tls,
    // No encryption.
    None,
}

/// What happens to external state (topics, databases) when a stack is
/// deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum DeletionPolicy {
    // Keep topics and databases; re-creating the stack finds them.
    #[default]
    Retain,
    // Drop the stack's topics, databases and roles (best effort, bounded).
    Delete,
}

/// What the operator observed the last time it reconciled the stack.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct CommerceStackStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, each with a reason and a
    /// message; `Reconciling` and `Stalled` for kstatus (Flux), True only
    /// while the operator works towards the spec, or cannot get there
    /// without a change of the spec or outside action; `Paused` while `spec.paused` is true; once the stack is
    /// deleted under `deletionPolicy: Delete`, `DatabasesCleanedUp` and
    /// `TopicsCleanedUp` say how its cleanup goes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Available services out of enabled ones, e.g. `8/9`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_services: Option<String>,
    /// Replicas of every enabled service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub services: Vec<ServiceStatus>,
    /// The Kafka topics of the stack and their partitions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub topics: Vec<TopicStatus>,
    /// The databases of the stack and the Secrets with their credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub databases: Vec<DatabaseStatus>,
    /// Where clients reach the REST gateway: the Ingress' URL, or the
    /// in-cluster URL without an Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_url: Option<String>,
}

/// Replicas of one service's Deployment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// The service's catalog name.
    pub name: String,
    /// Pods the Deployment wants.
    pub replicas: i32,
    /// Pods that pass their readiness probe.
    pub ready_replicas: i32,
    /// Pods that run the current pod template.
    pub updated_replicas: i32,
}

/// One Kafka topic of the stack.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatus {
    /// Topic name.
    pub name: String,
    /// Partitions the topic has.
    pub partitions: i32,
}

/// One database of the stack.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStatus {
    /// Database name.
    pub name: String,
    /// The service that owns it.
    pub service: String,
    /// The Secret with the service's credentials (`url`, `username`,
    /// `password`).
    pub secret_name: String,
}

/// The CommerceStack CRD: the derived one, plus the rules on
/// `metadata.name` that a derive cannot attach to the root, and the pattern
/// of `services.<name>.env[].name`, a field of Kubernetes' own `EnvVar`
/// type that the derive takes as it is.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = <CommerceStack as kube_core::CustomResourceExt>::crd();
    let rules = [
        (
            "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')".to_owned(),
            "the name of a CommerceStack starts with a letter and holds only lowercase letters, digits and '-': it prefixes the names of Services".to_owned(),
        ),
        (
            format!("self.metadata.name.size() <= {MAX_NAME_LEN}"),
            format!("the name of a CommerceStack has at most {MAX_NAME_LEN} characters, so that <name>-notification-headless is a valid Service name"),
        ),
    ];
    for version in &mut crd.spec.versions {
        if let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
            let validations = schema.x_kubernetes_validations.get_or_insert_with(Vec::new);
            for (rule, message) in &rules {
                validations.push(ValidationRule {
                    rule: rule.clone(),
                    message: Some(message.clone()),
                    reason: Some("FieldValueInvalid".to_owned()),
                    ..ValidationRule::default()
                });
            }
            if let Some(name) = env_var_name_schema(schema) {
                name.pattern = Some(ENV_VAR_NAME_PATTERN.to_owned());
                name.description = Some(
                    "Name of the environment variable: letters, digits, '-', '.' and '_', not starting with a digit."
                        .to_owned(),
                );
            }
        }
    }
    crd
}

/// The schema of `spec.services.<name>.env[].name` in the CRD's schema.
fn env_var_name_schema(root: &mut JSONSchemaProps) -> Option<&mut JSONSchemaProps> {
    fn property<'a>(schema: &'a mut JSONSchemaProps, name: &str) -> Option<&'a mut JSONSchemaProps> {
        schema.properties.as_mut()?.get_mut(name)
    }
    let spec = property(root, "spec")?;
    let services = property(spec, "services")?;
    let Some(JSONSchemaPropsOrBool::Schema(settings)) = services.additional_properties.as_mut() else {
        return None;
    };
    let env = property(settings, "env")?;
    let Some(JSONSchemaPropsOrArray::Schema(item)) = env.items.as_mut() else {
        return None;
    };
    property(item, "name")
}

impl CommerceStackSpec {
    /// The settings of `service`: its entry in `services`, or the defaults.
    pub fn service(&self, service: Service) -> ServiceSettings {
        self.services.get(service.name()).cloned().unwrap_or_default()
    }

    /// Services that run, in catalog order.
    pub fn enabled_services(&self) -> impl Iterator<Item = Service> + '_ {
        Service::ALL
            .into_iter()
            .filter(|s| self.services.get(s.name()).is_none_or(|settings| settings.enabled))
    }
}
