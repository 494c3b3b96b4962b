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

/// The most bytes one RateLimitPolicy's rules may take in a stack's rules
/// file (their comment lines and YAML). 64 rules of typical names and
/// paths take about 13 KiB; the bound keeps one policy from taking more
/// than a sixteenth of [`MAX_RULES_FILE_BYTES`].
pub const MAX_POLICY_RULES_BYTES: usize = 16 * 1024;
/// The most bytes a stack's rules file may have. The operator keeps it in a
/// ConfigMap, which the apiserver refuses beyond 1 MiB; a quarter of that
/// leaves room for the object's metadata and keeps the gateway's reload
/// cheap. A stack's own rules (at most 64, under 90 KiB whatever their
/// names) always fit; policies fill the rest, oldest first.
pub const MAX_RULES_FILE_BYTES: usize = 256 * 1024;
/// The key every rules file starts its rules with (after the comments).
const RULES_KEY: &str = "rules:\n";

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

    /// The rule's comment line in [`RateLimitsFile::to_text`].
    fn comment_line(&self) -> String {
        format!("# {}: {}\n", self.gateway_name(), self.source)
    }

    /// The bytes this rule adds to [`RateLimitsFile::to_text`]: its comment
    /// line and its YAML item. A file's text is
    /// [`RateLimitsFile::preamble_len`] plus the sum of its rules' lengths
    /// (block-style YAML items do not depend on each other), so a budget
    /// can be checked rule by rule without rendering the file again.
    pub fn text_len(&self) -> Result<usize, serde_yaml_ng::Error> {
        let item = serde_yaml_ng::to_string(&GatewayRulesFile { rules: vec![gateway_rule(self)] })?;
        Ok(self.comment_line().len() + item.len() - RULES_KEY.len())
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
            rules.extend(Self::policy_rules(policy_name, policy_rules));
        }
        Self { rules }
    }

    /// The rules of policy `policy_name` as they appear in a merged file.
    pub fn policy_rules(policy_name: &str, rules: &[RateLimitRule]) -> Vec<MergedRule> {
        rules
            .iter()
            .map(|rule| MergedRule {
                id: format!("{policy_name}/{}", rule.name),
                source: format!("RateLimitPolicy/{policy_name}"),
                rule: rule.clone(),
            })
            .collect()
    }

    /// The bytes [`to_text`](Self::to_text) writes with `header` before the
    /// first rule: the header line and the `rules:` key.
    pub fn preamble_len(header: &str) -> usize {
        "# ".len() + header.len() + "\n".len() + RULES_KEY.len()
    }

    /// The file's text: `header` and a comment naming where each rule came
    /// from, then the rules in the gateway's format as YAML.
    pub fn to_text(&self, header: &str) -> Result<String, serde_yaml_ng::Error> {
        let gateway = GatewayRulesFile { rules: self.rules.iter().map(gateway_rule).collect() };
        let yaml = serde_yaml_ng::to_string(&gateway)?;
        let mut text = format!("# {header}\n");
        for rule in &self.rules {
            text.push_str(&rule.comment_line());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::rate_limit::{HttpMethod, RateLimitKey, RateLimitPeriod};

    fn rule(name: &str, path: &str, methods: Vec<HttpMethod>) -> RateLimitRule {
        RateLimitRule {
            name: name.into(),
            path_prefix: path.into(),
            methods,
            key: RateLimitKey::User,
            requests: 30,
            per: RateLimitPeriod::Minute,
            burst: 5,
        }
    }

    #[test]
    fn a_files_length_is_its_preamble_and_the_sum_of_its_rules_lengths() {
        let own = [rule("api", "/", vec![]), rule("login", "/api/auth/login", vec![HttpMethod::Post])];
        let checkout = [
            rule("place-order", "/api/orders", vec![HttpMethod::Post, HttpMethod::Put]),
            // A path YAML has to quote.
            rule("odd", "/api/: #x", vec![]),
        ];
        let search = [rule("search", "/api/products/**", vec![HttpMethod::Get])];
        let file =
            RateLimitsFile::merge("shop", &own, [("team.checkout", &checkout[..]), ("search", &search[..])]);
        let header = "Rate-limit rules of the gateway.";
        let text = file.to_text(header).unwrap();
        let sum: usize = file.rules.iter().map(|r| r.text_len().unwrap()).sum();
        assert_eq!(text.len(), RateLimitsFile::preamble_len(header) + sum, "{text}");
        assert_eq!(RateLimitsFile::policy_rules("search", &search), file.rules[2..3]);
    }
}
