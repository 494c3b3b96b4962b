//! Rate-limit rules: the shape shared by a `CommerceStack`'s own
//! `spec.gateway.rateLimits` and by every `RateLimitPolicy`'s `spec.rules`.
//!
//! The gateway counts each rule in Redis (one atomic script per check) so
//! that a limit holds across all its replicas; the operator only merges the
//! rules and hands them to the gateway as a file it reloads.

use kube_derive::KubeSchema;
use serde::{Deserialize, Serialize};

/// The most rules one stack or one policy may declare. Bounded so that the
/// apiserver can price the CEL rules below, and because a gateway checks every
/// matching rule per request.
pub const MAX_RULES: u32 = 64;

/// One rate limit: which requests it counts, what it keys a counter by, and
/// how many requests a key may make.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct RateLimitRule {
    /// Name of the rule, unique within the stack or policy that declares it.
    /// The gateway names it in the `RateLimit-Policy` and `RateLimit` headers
    /// of the responses it counts, as `<policy>_<rule>` for rules from a
    /// RateLimitPolicy.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Requests whose path starts with this prefix count against the rule,
    /// e.g. `/api/orders`; `/` counts every request.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.startsWith('/')")
        .message("pathPrefix must start with '/', e.g. /api/orders ('/' counts every request)"))]
    pub path_prefix: String,
    /// HTTP methods the rule counts; empty (the default) counts every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub methods: Vec<HttpMethod>,
    /// What one counter is kept for: `clientIp` (the address the Ingress
    /// reports), `user` (the JWT subject; anonymous requests fall back to the
    /// client IP) or `apiKey` (the `X-Api-Key` header).
    #[serde(default)]
    pub key: RateLimitKey,
    /// Requests one key may make per `per`, sustained.
    #[x_kube(validation = Rule::new("self >= 1").message(
        "requests must be at least 1: a rate of 0 would reject every request; \
         remove the rule to lift the limit, or disable the route elsewhere"
    ))]
    pub requests: i32,
    /// The period `requests` is counted over: `second`, `minute` or `hour`.
    pub per: RateLimitPeriod,
    /// Requests a key may make at once above the sustained rate, after a
    /// quiet spell (the token bucket's extra depth). 0, the default, allows
    /// no burst.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub burst: i32,
}

/// HTTP methods a rule can match.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
#[allow(missing_docs)]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

/// What a rate-limit counter is kept for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RateLimitKey {
    // One counter per client address, as the Ingress reports it.
    #[default]
    ClientIp,
    // One counter per authenticated user (JWT subject).
    User,
    // One counter per `X-Api-Key` header value.
    ApiKey,
}

/// The period a rule's `requests` are counted over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RateLimitPeriod {
    // Requests per second.
    Second,
    // Requests per minute.
    Minute,
    // Requests per hour.
    Hour,
}

impl RateLimitPeriod {
    /// The period's length in seconds.
    pub const fn seconds(self) -> u32 {
        match self {
            RateLimitPeriod::Second => 1,
            RateLimitPeriod::Minute => 60,
            RateLimitPeriod::Hour => 3600,
        }
    }
}
