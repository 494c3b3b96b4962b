//! Rate-limit rules: what they match, what they count by, and how the
//! effective set is assembled from its three sources.
//!
//! A rule (YAML in the rules file, JSON in Redis and the admin API):
//!
//! ```yaml
//! rules:
//!   - name: login
//!     match: { path: /api/auth/login, methods: [POST] }
//!     key: ip               # ip | user | api_key
//!     rate: 5               # requests ...
//!     period: 1m            # ... per period (humantime)
//!     burst: 3              # how many may come at once
//!   - name: partner-api
//!     match: { path: "/api/products/**" }
//!     key: api_key
//!     header: x-api-key     # for api_key; default x-api-key
//!     rate: 100
//!     period: 1s
//!     burst: 200
//! ```
//!
//! Paths: `*` matches one segment, a trailing `/**` any rest (or nothing);
//! otherwise the path must match exactly. No `methods` means every method.
//!
//! Effective rules = built-in defaults (from flags), then the rules file,
//! then rules stored in Redis; a later source replaces an earlier rule of
//! the same name, and `disabled: true` switches a rule off. Every matching
//! rule applies to a request; one that denies refuses it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::RateLimitArgs;

/// What requests a rule counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleMatch {
    /// Path pattern: `*` is one segment, a trailing `/**` any rest.
    pub path: String,
    /// Upper-case HTTP methods; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

/// What a rule counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// The client IP (see `--trusted-proxy-hops`).
    Ip,
    /// The verified user id; the client IP for requests without a valid token.
    User,
    /// The value of the rule's `header`; the client IP when absent.
    ApiKey,
}

/// Where an effective rule came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleSource {
    Default,
    File,
    Redis,
}

/// One rate-limit policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique name; also the policy name in the `RateLimit` headers, and
    /// part of the counter key (renaming a rule starts fresh counters).
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: RuleMatch,
    pub key: KeyKind,
    /// Header carrying the API key, for `key: api_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Requests allowed per `period`, sustained.
    pub rate: u32,
    /// The period of `rate`, e.g. `1s`, `1m`, `1h`.
    #[serde(with = "period")]
    #[schemars(with = "String")]
    pub period: Duration,
    /// Requests that may arrive at once (at least 1).
    pub burst: u32,
    /// Switches off a rule of the same name from an earlier source.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

mod period {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Default header of `api_key` rules.
pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";

impl Rule {
    /// Checks what serde cannot: a usable rate, period, burst and pattern.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || !self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("rule name {:?} must be letters, digits, - and _", self.name));
        }
        if self.rate == 0 || self.burst == 0 {
            return Err(format!("rule {}: rate and burst must be at least 1", self.name));
        }
        if self.period < Duration::from_millis(1) || self.period > Duration::from_secs(7 * 24 * 3600) {
            return Err(format!("rule {}: period must be between 1ms and 7 days", self.name));
        }
        if !self.matcher.path.starts_with('/') {
            return Err(format!("rule {}: path must start with /", self.name));
        }
        Ok(())
    }

    /// Whether the rule counts `method path`.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        if !self.matcher.methods.is_empty()
            && !self.matcher.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
        {
            return false;
        }
        path_matches(&self.matcher.path, path)
    }

    /// GCRA emission interval (time per request) in microseconds.
    pub fn emission_interval_us(&self) -> u64 {
        let period = u64::try_from(self.period.as_micros()).unwrap_or(u64::MAX);
        (period / u64::from(self.rate)).max(1)
    }

    /// Burst tolerance in microseconds: `burst` requests at once.
    pub fn tolerance_us(&self) -> u64 {
        self.emission_interval_us().saturating_mul(u64::from(self.burst))
    }

    pub fn api_key_header(&self) -> &str {
        self.header.as_deref().unwrap_or(DEFAULT_API_KEY_HEADER)
    }
}

fn path_matches(pattern: &str, path: &str) -> bool {
    let mut pattern_segments = pattern.trim_end_matches('/').split('/');
    let mut path_segments = path.trim_end_matches('/').split('/');
    loop {
        match (pattern_segments.next(), path_segments.next()) {
            (Some("**"), _) => return pattern_segments.next().is_none(),
            (None, None) => return true,
            (Some("*"), Some(segment)) if !segment.is_empty() => {}
            (Some(expected), Some(segment)) if expected == segment => {}
            _ => return false,
        }
    }
}

/// The rules file: `rules: [...]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// Parses a rules file (YAML, or JSON, which is YAML), validating every rule.
pub fn parse_rules_file(text: &str) -> Result<Vec<Rule>, String> {
    let file: RulesFile = serde_yaml_ng::from_str(text).map_err(|error| error.to_string())?;
    for rule in &file.rules {
        rule.validate()?;
    }
    Ok(file.rules)
}

/// Built-in rules from the flags.
pub fn default_rules(args: &RateLimitArgs) -> Vec<Rule> {
    let per_minute = |name: &str, path: &str, methods: &[&str], rate: u32, burst: u32| Rule {
        name: name.to_owned(),
        matcher: RuleMatch {
            path: path.to_owned(),
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
        },
        key: KeyKind::Ip,
        header: None,
        rate,
        period: Duration::from_secs(60),
        burst: burst.max(1),
        disabled: rate == 0,
    };
    vec![
        per_minute("default-ip", "/api/**", &[], args.default_per_minute, args.default_burst),
        per_minute("auth-login-ip", "/api/auth/login", &["POST"], args.auth_per_minute, args.auth_burst),
        per_minute(
            "auth-register-ip",
            "/api/auth/register",
            &["POST"],
            args.auth_per_minute,
            args.auth_burst,
        ),
        per_minute("auth-refresh-ip", "/api/auth/refresh", &["POST"], args.auth_per_minute, args.auth_burst),
    ]
}

/// An effective rule with its origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct EffectiveRule {
    #[serde(flatten)]
    pub rule: Rule,
    pub source: RuleSource,
}

/// Merges the sources by name: later sources replace earlier ones.
pub fn merge(defaults: &[Rule], file: &[Rule], redis: &[Rule]) -> Vec<EffectiveRule> {
    let mut merged: BTreeMap<String, EffectiveRule> = BTreeMap::new();
    for (source, rules) in
        [(RuleSource::Default, defaults), (RuleSource::File, file), (RuleSource::Redis, redis)]
    {
        for rule in rules {
            merged.insert(rule.name.clone(), EffectiveRule { rule: rule.clone(), source });
        }
    }
    merged.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_patterns_match_segments_and_trailing_rest() {
        assert!(path_matches("/api/**", "/api/products"));
        assert!(path_matches("/api/**", "/api"));
        assert!(path_matches("/api/orders/*/cancel", "/api/orders/42/cancel"));
        assert!(!path_matches("/api/orders/*/cancel", "/api/orders/cancel"));
        assert!(path_matches("/api/auth/login", "/api/auth/login/"));
        assert!(!path_matches("/api/auth/login", "/api/auth/login/x"));
        assert!(!path_matches("/api/**", "/healthz"));
    }

    #[test]
    fn a_rules_file_parses_and_later_sources_win_by_name() {
        let file = parse_rules_file(
            "rules:\n  - name: default-ip\n    match: {path: /api/**}\n    key: ip\n    rate: 1\n    period: 1s\n    burst: 2\n",
        )
        .expect("valid file");
        assert_eq!(file[0].period, Duration::from_secs(1));
        let args = RateLimitArgs {
            default_per_minute: 600,
            default_burst: 100,
            auth_per_minute: 20,
            auth_burst: 10,
            rules_file: None,
            reload_interval: Duration::from_secs(5),
        };
        let merged = merge(&default_rules(&args), &file, &[]);
        let default_ip = merged.iter().find(|rule| rule.rule.name == "default-ip").expect("present");
        assert_eq!((default_ip.rule.burst, default_ip.source), (2, RuleSource::File));
    }

    #[test]
    fn invalid_rules_are_refused_with_the_reason() {
        assert!(parse_rules_file("rules:\n  - name: x\n    match: {path: /a}\n    key: ip\n    rate: 0\n    period: 1s\n    burst: 1\n").is_err());
        assert!(parse_rules_file("rules:\n  - name: x\n    match: {path: /a}\n    key: ip\n    rate: 1\n    period: soon\n    burst: 1\n").is_err());
        assert!(parse_rules_file("rules:\n  - name: x\n    match: {path: /a}\n    key: ip\n    rate: 1\n    period: 1s\n    burst: 1\n    extra: 1\n").is_err());
    }

    #[test]
    fn gcra_parameters_follow_rate_period_and_burst() {
        let rule = Rule {
            name: "r".into(),
            matcher: RuleMatch { path: "/".into(), methods: vec![] },
            key: KeyKind::Ip,
            header: None,
            rate: 10,
            period: Duration::from_secs(1),
            burst: 5,
            disabled: false,
        };
        assert_eq!(rule.emission_interval_us(), 100_000);
        assert_eq!(rule.tolerance_us(), 500_000);
    }
}
