//! The gateway's edge: its Ingress, and the ConfigMap with the rate-limit
//! rules of the stack merged with those of every RateLimitPolicy that
//! targets it.
//!
//! The rules reach the gateway as a mounted file, not as environment: the
//! kubelet replaces the file's contents when the ConfigMap changes and the
//! gateway reloads it, so a policy change applies without a restart. For the
//! same reason the rules are left out of the config hash.
//!
//! The file is in the gateway's own rules format (`rules:` of `name`,
//! `match: {path, methods}`, `key`, `rate`, `period`, `burst`; see
//! `services/gateway/src/ratelimit/rules.rs`), translated from the CRD's
//! shape by [`gateway_rule`]. Its rules replace the gateway's built-in ones
//! of the same name.

use std::collections::BTreeMap;

use commerce_api::RateLimitPolicy;
use commerce_api::catalog::{CLUSTER_HTTP_PORT, Service};
use commerce_api::crd::rate_limit::{HttpMethod, RateLimitKey, RateLimitPeriod, RateLimitRule};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend,
    IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use super::config::RATE_LIMITS_FILE;
use super::names::{self, Component};
use crate::Error;
use crate::validate::{ValidStack, policy_problems};

/// The file the gateway reads: every rule that applies, in a fixed order
/// (the stack's own, then policies by name).
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

/// The file's text: a comment naming where each rule came from, then the
/// rules as YAML.
pub fn rules_file_text(file: &RateLimitsFile) -> Result<String, Error> {
    let gateway = GatewayRulesFile { rules: file.rules.iter().map(gateway_rule).collect() };
    let yaml = serde_yaml_ng::to_string(&gateway)
        .map_err(|source| Error::SerializeYaml { what: "rate-limit rules".into(), source })?;
    let mut text = String::from("# Rate-limit rules of the gateway, merged by the commerce-operator.\n");
    for rule in &file.rules {
        text.push_str(&format!("# {}: {}\n", rule.gateway_name(), rule.source));
    }
    text.push_str(&yaml);
    Ok(text)
}

/// Policies of `stack`'s namespace that target it and can be applied, by
/// name. Policies with problems are left out (their status says why).
pub fn accepted_policies<'p>(
    stack: &ValidStack<'_>,
    policies: &'p [RateLimitPolicy],
) -> Vec<&'p RateLimitPolicy> {
    let mut accepted: Vec<&RateLimitPolicy> = policies
        .iter()
        .filter(|p| p.spec.target_ref.name == stack.name)
        .filter(|p| p.metadata.namespace.as_deref().is_none_or(|ns| ns == stack.namespace))
        .filter(|p| policy_problems(p).is_empty())
        .collect();
    accepted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    accepted
}

/// The merged rules of the stack and its accepted policies.
pub fn merged_rules(stack: &ValidStack<'_>, policies: &[RateLimitPolicy]) -> RateLimitsFile {
    let mut rules: Vec<MergedRule> = stack
        .stack
        .spec
        .gateway
        .rate_limits
        .iter()
        .map(|rule| MergedRule {
            id: rule.name.clone(),
            source: format!("CommerceStack/{}", stack.name),
            rule: rule.clone(),
        })
        .collect();
    for policy in accepted_policies(stack, policies) {
        let policy_name = policy.metadata.name.as_deref().unwrap_or_default();
        rules.extend(policy.spec.rules.iter().map(|rule| MergedRule {
            id: format!("{policy_name}/{}", rule.name),
            source: format!("RateLimitPolicy/{policy_name}"),
            rule: rule.clone(),
        }));
    }
    RateLimitsFile { rules }
}

/// Name of the rate-limit ConfigMap.
pub fn rate_limits_config_map_name(stack: &ValidStack<'_>) -> String {
    names::object_name(stack, "gateway-rate-limits")
}

/// The rate-limit ConfigMap the gateway mounts.
pub fn rate_limits_config_map(
    stack: &ValidStack<'_>,
    policies: &[RateLimitPolicy],
) -> Result<ConfigMap, Error> {
    let text = rules_file_text(&merged_rules(stack, policies))?;
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(rate_limits_config_map_name(stack)),
            namespace: Some(stack.namespace.to_owned()),
            labels: Some(names::labels(stack, Component::Service(Service::Gateway))),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(RATE_LIMITS_FILE.to_owned(), text)])),
        ..ConfigMap::default()
    })
}

/// The gateway's Ingress, if the stack asks for one.
pub fn ingress(stack: &ValidStack<'_>) -> Option<Ingress> {
    let spec = stack.stack.spec.gateway.ingress.as_ref()?;
    let component = Component::Service(Service::Gateway);
    let name = names::component_name(stack, component);
    Some(Ingress {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(stack.namespace.to_owned()),
            labels: Some(names::labels(stack, component)),
            annotations: (!spec.annotations.is_empty()).then(|| spec.annotations.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            tls: spec.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS { hosts: Some(vec![spec.host.clone()]), secret_name: Some(secret.clone()) }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name,
                                port: Some(ServiceBackendPort { name: Some("http".into()), number: None }),
                            }),
                            ..IngressBackend::default()
                        },
                    }],
                }),
            }]),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    })
}

/// Where clients reach the gateway: the Ingress' URL, or its in-cluster
/// Service without an Ingress.
pub fn gateway_url(stack: &ValidStack<'_>) -> Option<String> {
    if !stack.is_enabled(Service::Gateway) {
        return None;
    }
    Some(match &stack.stack.spec.gateway.ingress {
        Some(ingress) => {
            let scheme = if ingress.tls_secret_name.is_some() { "https" } else { "http" };
            format!("{scheme}://{}", ingress.host)
        }
        None => {
            let name = names::component_name(stack, Component::Service(Service::Gateway));
            format!("http://{}:{CLUSTER_HTTP_PORT}", names::service_host(stack, &name))
        }
    })
}
