//! The one error type of the operator library. Variants are named after the
//! action that failed; causes are kept as `#[source]` so that logs and Events
//! show the whole chain.

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
    /// A server-side apply was refused or failed.
    #[error("applying {object}")]
    ApplyObject {
        /// `Kind/name`.
        object: String,
        #[source]
        source: kube::Error,
    },
    /// Deleting an object no longer desired failed.
    #[error("deleting {object}")]
    DeleteObject {
        /// `Kind/name`.
        object: String,
        #[source]
        source: kube::Error,
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
            Error::ApplyObject { .. } => "apply",
            Error::DeleteObject { .. } => "delete",
            Error::PatchStatus { .. } => "status",
            Error::ElectLeader { .. } => "leader_election",
        }
    }
}
