//! The custom resources of commerce-stack, as Rust types from which the CRDs
//! in `crds/` are generated (`commerce-operator crd`); the YAML is never
//! edited by hand.
//!
//! Admission rules live next to the fields they guard: OpenAPI bounds for
//! single values, CEL rules (`x-kubernetes-validations`) for relations between
//! fields, each with a message that says what to change. The operator checks
//! the same rules again in its pure `validate` step, because `render` runs
//! without an apiserver.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube_core::CustomResourceExt;

pub mod policy;
pub mod rate_limit;
pub mod stack;

/// API group of every commerce-stack resource.
pub const GROUP: &str = "commerce-stack.dev";
/// The one served and stored version. Alpha: fields may still change.
///
/// The move to `v1beta1`, planned so that no stored stack is lost and no
/// client breaks (rehearsed step by step against the real API server by
/// `e2e/tests/crd_versions.rs`):
/// 1. One release serves both: `v1beta1` becomes the storage version and
///    `v1alpha1` stays served, marked `deprecated` with a warning that names
///    `v1beta1`. While the two schemas hold the same fields (v1beta1 may add
///    optional ones, never rename or remove), conversion is `None`: the API
///    server only rewrites `apiVersion`. A rename would need a conversion
///    webhook served by the operator, which this plan avoids. The operator
///    switches its watches to `v1beta1` in the same release.
/// 2. The same operator, once leading, migrates storage: it rewrites every
///    stack and policy with a no-op update (which re-encodes the object at
///    the storage version), then trims the CRDs' `status.storedVersions` to
///    `v1beta1`. The API server refuses to drop a version from a CRD while
///    `storedVersions` still lists it, so step 3 cannot come too early.
/// 3. The next release stops serving `v1alpha1`, then removes it. Clients
///    (GitOps repositories, scripts) have had a release of warnings.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every commerce-stack resource.
pub const API_VERSION: &str = "commerce-stack.dev/v1alpha1";
/// The kubectl category of both kinds: `kubectl get commerce` lists them.
pub const CATEGORY: &str = "commerce";

/// Every CRD of the project, in the order `commerce-operator crd` prints them.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![stack::crd(), policy::RateLimitPolicy::crd()]
}

/// Keys a Secret's value by name: the shape every Secret reference in the
/// specs shares.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, kube_derive::KubeSchema)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of a Secret in the stack's namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = stack::secret_name_rule("name"))]
    pub name: String,
    /// Key inside the Secret whose value is used.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = stack::secret_key_rule("key"))]
    pub key: String,
}
