//! The gateway's rate-limit rules file, built from a CommerceStack's own
//! rules and those of the RateLimitPolicies that target it.
//!
//! Both sides that run a shop write it: the operator into the ConfigMap the
//! gateway mounts, and `commerce local up` into a file next to the local
//! shop. The file is in the gateway's own rules format (`rules:` of `name`,
//! `match: {path, methods}`, `key`, `rate`, `period`, `burst`; see
//! `services/gateway/src/ratelimit/rules.rs`), translated from the CRD's
//! shape by [`gateway_rule`]. Its rules replace the gateway's built-in ones
//! of the same name.

use serde::Serialize;

use crate::crd::rate_limit::{HttpMethod, RateLimitKey, RateLimitPeriod, RateLimitRule};

/// Every rule that applies to one stack, in a fixed order (the stack's own,
/// then policies by name).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitsFile {
    /// The merged rules.
    pub rules: Vec<MergedRule>,
}

/// One rule with where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MergedRule {
    /// Unique in the file: the rule's name, prefixed with `<policy>/` for a
    /// policy's rules.
    pub id: String,
    /// `CommerceStack/<name>` or `RateLimitPolicy/<name>`.
    pub source: String,
    /// The rule.
    #[serde(flatten)]
    pub rule: RateLimitRule,
}

impl MergedRule {
    /// The rule's name in the gateway: [`id`](Self::id) with `/` and `.`
    /// as `_`, the gateway allowing letters, digits, `-` and `_` only. Still
    /// unique: rule names have neither `_` nor `.`, policy names no `_`.
    pub fn gateway_name(&self) -> String {
        self.id.replace(['/', '.'], "_")
    }
}

impl RateLimitsFile {
    /// The rules of stack `stack_name`, then those of each policy, ordered
    /// by policy name whatever order `policies` (name, rules) come in.
    pub fn merge<'a>(
        stack_name: &str,
        own: &[RateLimitRule],
        policies: impl IntoIterator<Item = (&'a str, &'a [RateLimitRule])>,
    ) -> Self {
        let mut rules: Vec<MergedRule> = own
            .iter()
            .map(|rule| MergedRule {
                id: rule.name.clone(),
                source: format!("CommerceStack/{stack_name}"),
                rule: rule.clone(),
            })
            .collect();
        let mut policies: Vec<(&str, &[RateLimitRule])> = policies.into_iter().collect();
        policies.sort_by_key(|(name, _)| *name);
        for (policy_name, policy_rules) in policies {
            rules.extend(policy_rules.iter().map(|rule| MergedRule {
                id: format!("{policy_name}/{}", rule.name),
                source: format!("RateLimitPolicy/{policy_name}"),
                rule: rule.clone(),
            }));
        }
        Self { rules }
    }

    /// The file's text: `header` and a comment naming where each rule came
    /// from, then the rules in the gateway's format as YAML.
    pub fn to_text(&self, header: &str) -> Result<String, serde_yaml_ng::Error> {
        let gateway = GatewayRulesFile { rules: self.rules.iter().map(gateway_rule).collect() };
        let yaml = serde_yaml_ng::to_string(&gateway)?;
        let mut text = format!("# {header}\n");
        for rule in &self.rules {
            text.push_str(&format!("# {}: {}\n", rule.gateway_name(), rule.source));
        }
        text.push_str(&yaml);
        Ok(text)
    }
}

/// The rules file as the gateway reads it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GatewayRulesFile {
    /// The rules, in merge order.
    pub rules: Vec<GatewayRule>,
}

/// One rule in the gateway's format.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GatewayRule {
    /// [`MergedRule::gateway_name`].
    pub name: String,
    /// What the rule counts.
    #[serde(rename = "match")]
    pub matcher: GatewayMatch,
    /// `ip`, `user` or `api_key` (whose header defaults to `x-api-key`).
    pub key: &'static str,
    /// Requests per `period`, sustained.
    pub rate: u32,
    /// `1s`, `1m` or `1h` (humantime).
    pub period: &'static str,
    /// Requests that may arrive at once: the CRD's `burst` (extra above the
    /// sustained rate) plus the one the rate itself allows.
    pub burst: u32,
}

/// The requests a gateway rule counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GatewayMatch {
    /// A segment pattern: the CRD's `pathPrefix` followed by `/**`.
    pub path: String,
    /// Empty counts every method.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<HttpMethod>,
}

/// `rule` in the gateway's format. The CRD's `pathPrefix` becomes a
/// segment prefix (`/api/orders` counts `/api/orders` and `/api/orders/...`
/// but not `/api/orders-export`), the gateway matching whole segments.
pub fn gateway_rule(rule: &MergedRule) -> GatewayRule {
    let spec = &rule.rule;
    let prefix = spec.path_prefix.trim_end_matches('/');
    let path = if prefix.ends_with("/**") { prefix.to_owned() } else { format!("{prefix}/**") };
    GatewayRule {
        name: rule.gateway_name(),
        matcher: GatewayMatch { path, methods: spec.methods.clone() },
        key: match spec.key {
            RateLimitKey::ClientIp => "ip",
            RateLimitKey::User => "user",
            RateLimitKey::ApiKey => "api_key",
        },
        // Validation refuses a rate below 1; the gateway would refuse the file.
        rate: u32::try_from(spec.requests).unwrap_or(0).max(1),
        period: match spec.per {
            RateLimitPeriod::Second => "1s",
            RateLimitPeriod::Minute => "1m",
            RateLimitPeriod::Hour => "1h",
        },
        burst: u32::try_from(spec.burst).unwrap_or(0).saturating_add(1),
    }
}
