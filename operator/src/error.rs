//! The one error type of the operator library. Variants are named after the
//! action that failed; causes are kept as `#[source]` so that logs and Events
//! show the whole chain.

use crate::reconcile::apply::{Failure, ObjectProblem};
use crate::reconcile::observe::SecretProblem;

/// Everything that can go wrong in the operator library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Turning objects into YAML failed (a bug: every type here serializes).
    #[error("serializing {what} to YAML")]
    SerializeYaml {
        /// What was being written.
        what: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// Turning objects into JSON failed (a bug: every type here serializes).
    #[error("serializing {what} to JSON")]
    SerializeJson {
        /// What was being written.
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// Reading a resource from YAML failed.
    #[error("reading {what}")]
    ParseYaml {
        /// What was being read.
        what: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// `render` was given a resource that is not a CommerceStack or a
    /// RateLimitPolicy.
    #[error("render takes CommerceStack and RateLimitPolicy resources, not {kind}")]
    UnexpectedKind {
        /// The kind found.
        kind: String,
    },
    /// The stack breaks rules that admission should have enforced; the
    /// problems say what to change.
    #[error("CommerceStack {name:?} is invalid: {}", problems.join("; "))]
    InvalidStack {
        /// The stack's name.
        name: String,
        /// One line per broken rule.
        problems: Vec<String>,
    },
    /// A generated Secret value was neither read from the cluster nor
    /// generated before `build` (a bug in the reconciler).
    #[error("no value for key {key:?} of generated Secret {secret:?}")]
    MissingGeneratedValue {
        /// The Secret.
        secret: String,
        /// The key.
        key: String,
    },
    /// Listing objects from the apiserver failed.
    #[error("listing {kind} in namespace {namespace}")]
    ListObjects {
        /// The kind listed.
        kind: String,
        /// Where.
        namespace: String,
        #[source]
        source: kube::Error,
    },
    /// Some of the stack's objects were not applied (refused by the
    /// apiserver, or not the stack's own to write) or, no longer desired,
    /// not deleted; every other object was reconciled.
    #[error("{} of the stack's objects were not reconciled: {}", problems.len(), join(problems))]
    ReconcileObjects {
        /// One per object, in apply order, then prune order.
        problems: Vec<ObjectProblem>,
    },
    /// Writing a resource's status failed.
    #[error("writing the status of {object}")]
    PatchStatus {
        /// `Kind/name`.
        object: String,
        #[source]
        source: kube::Error,
    },
    /// Reading or writing the leader-election Lease failed.
    #[error("electing a leader through Lease {lease}")]
    ElectLeader {
        /// The Lease's name.
        lease: String,
        #[source]
        source: kube::Error,
    },
    /// Creating or replacing one of the operator's own CRDs failed.
    #[error("writing CustomResourceDefinition/{name}")]
    WriteCrd {
        /// The CRD's name.
        name: String,
        #[source]
        source: kube::Error,
    },
    /// A CRD the operator wrote was not served in time.
    #[error("CustomResourceDefinition/{name} was not Established within {waited:?}")]
    CrdNotEstablished {
        /// The CRD's name.
        name: String,
        /// How long the operator waited.
        waited: std::time::Duration,
    },
    /// Bringing the Kafka topics in line failed.
    #[error("ensuring the topics on kafka {brokers}")]
    EnsureTopics {
        /// The bootstrap servers tried, so that a message names the
        /// address that refused or did not answer.
        brokers: String,
        /// Boxed: with the address beside it, the platform's error would make
        /// every `Result<_, Error>` of the crate large.
        #[source]
        source: Box<commerce_platform::events::TopicAdminError>,
    },
    /// Deleting the stack's topics failed.
    #[error("deleting the topics on kafka {brokers}")]
    DeleteTopics {
        /// The bootstrap servers tried.
        brokers: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Making the stack's own Kafka user (its SCRAM credential or its
    /// ACLs) failed.
    #[error("ensuring the Kafka user {user} and its ACLs on kafka {brokers}")]
    EnsureKafkaUser {
        /// The bootstrap servers tried.
        brokers: String,
        /// The user.
        user: String,
        #[source]
        source: Box<commerce_kafka_access::AccessError>,
    },
    /// Deleting the stack's own Kafka user failed.
    #[error("deleting the Kafka user {user} and its ACLs on kafka {brokers}")]
    DeleteKafkaUser {
        /// The bootstrap servers tried.
        brokers: String,
        /// The user.
        user: String,
        #[source]
        source: Box<commerce_kafka_access::AccessError>,
    },
    /// Connecting to Postgres as its admin failed.
    #[error("connecting to Postgres at {server} as its admin")]
    ConnectPostgres {
        /// `host:port`.
        server: String,
        #[source]
        source: sqlx::Error,
    },
    /// Creating, altering or dropping a database or role failed.
    #[error("managing database and role {database}")]
    ManageDatabase {
        /// The database (and role) name.
        database: String,
        #[source]
        source: sqlx::Error,
    },
    /// The Secret with the Postgres admin's credentials (or its CA) is
    /// missing or lacks a key.
    #[error("reading the Postgres admin credentials")]
    ReadAdminSecret {
        /// What is missing, and where.
        #[source]
        source: SecretProblem,
    },
    /// A Secret the stack's cleanup would log in with is being deleted, so
    /// nothing is created with it.
    #[error(
        "Secret {name} is being deleted: the stack could not clean up with it once it is gone (name another Secret in {field})"
    )]
    SecretBeingDeleted {
        /// The Secret.
        name: String,
        /// Where the spec names it.
        field: String,
    },
    /// A Secret the stack names for its Kafka (CA, SASL credentials) is
    /// missing or lacks a key.
    #[error("reading the Kafka TLS/SASL settings")]
    ReadKafkaSecret {
        /// What is missing, and where.
        #[source]
        source: SecretProblem,
    },
    /// Reading a Secret from the apiserver failed.
    #[error("reading Secret {name}")]
    GetSecret {
        /// The Secret.
        name: String,
        #[source]
        source: kube::Error,
    },
    /// Reading an object from the apiserver failed (a RateLimitPolicy's
    /// target stack).
    #[error("reading {object}")]
    GetObject {
        /// `Kind/name`.
        object: String,
        #[source]
        source: kube::Error,
    },
    /// Adding or removing a finalizer of the operator failed: the stack's
    /// own, or its hold on the Postgres admin Secret.
    #[error("updating the finalizers of {object}")]
    PatchFinalizers {
        /// `Kind/name`.
        object: String,
        #[source]
        source: kube::Error,
    },
    /// Dropping a deleted stack's databases or deleting its topics failed;
    /// retried until the cleanup grace period ends. When both failed, this
    /// is the databases' failure (the status and the Warning Event name
    /// both).
    #[error("cleaning up the external state of a deleted stack: {left}")]
    CleanUp {
        /// What is left, and where.
        left: String,
        /// Why (shared with the status, which says it too).
        #[source]
        source: std::sync::Arc<Error>,
    },
}

impl Error {
    /// A short, stable label for metrics (`errors by kind`).
    pub fn metric_kind(&self) -> &'static str {
        match self {
            Error::SerializeYaml { .. } | Error::SerializeJson { .. } => "serialize",
            Error::ParseYaml { .. } | Error::UnexpectedKind { .. } => "parse",
            Error::InvalidStack { .. } => "invalid_stack",
            Error::MissingGeneratedValue { .. } => "missing_generated_value",
            Error::ListObjects { .. } => "list",
            Error::GetObject { .. } => "get",
            Error::ReconcileObjects { problems } => {
                let any = |wanted: fn(&Failure) -> bool| problems.iter().any(|p| wanted(&p.failure));
                if any(|f| matches!(f, Failure::Apply(_))) {
                    "apply"
                } else if any(|f| matches!(f, Failure::NotOurs)) {
                    "not_ours"
                } else {
                    "delete"
                }
            }
            Error::PatchStatus { .. } => "status",
            Error::ElectLeader { .. } => "leader_election",
            Error::WriteCrd { .. } | Error::CrdNotEstablished { .. } => "crd",
            Error::EnsureTopics { .. }
            | Error::DeleteTopics { .. }
            | Error::EnsureKafkaUser { .. }
            | Error::DeleteKafkaUser { .. }
            | Error::ReadKafkaSecret { .. } => "kafka",
            Error::ConnectPostgres { .. } | Error::ManageDatabase { .. } => "postgres",
            Error::ReadAdminSecret { .. } | Error::GetSecret { .. } | Error::SecretBeingDeleted { .. } => {
                "admin_secret"
            }
            Error::PatchFinalizers { .. } => "finalizer",
            // What kept the cleanup from finishing: "postgres", "kafka", ...
            Error::CleanUp { source, .. } => source.metric_kind(),
        }
    }
}

/// The problems, one after the other, for a log line.
fn join(problems: &[ObjectProblem]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}
