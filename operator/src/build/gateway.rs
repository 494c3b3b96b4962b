//! The gateway's edge: its Ingress, and the ConfigMap with the rate-limit
//! rules of the stack merged with those of every RateLimitPolicy that
//! targets it.
//!
//! The rules reach the gateway as a mounted file, not as environment: the
//! kubelet replaces the file's contents when the ConfigMap changes and the
//! gateway reloads it, so a policy change applies without a restart. For the
//! same reason the rules are left out of the config hash.
//!
//! The file is in the gateway's own rules format, written by
//! [`commerce_api::gateway_rules`], which `commerce local up` uses too.

use std::collections::BTreeMap;

use commerce_api::RateLimitPolicy;
use commerce_api::catalog::{CLUSTER_HTTP_PORT, Service};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend,
    IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::config::RATE_LIMITS_FILE;
use super::names::{self, Component};
use crate::Error;
use crate::validate::{ValidStack, policy_problems};

pub use commerce_api::gateway_rules::{
    GatewayMatch, GatewayRule, GatewayRulesFile, MergedRule, RateLimitsFile, gateway_rule,
};

/// The file's text: a comment naming where each rule came from, then the
/// rules as YAML.
pub fn rules_file_text(file: &RateLimitsFile) -> Result<String, Error> {
    file.to_text("Rate-limit rules of the gateway, merged by the commerce-operator.")
        .map_err(|source| Error::SerializeYaml { what: "rate-limit rules".into(), source })
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
    let accepted = accepted_policies(stack, policies)
        .into_iter()
        .map(|policy| (policy.metadata.name.as_deref().unwrap_or_default(), policy.spec.rules.as_slice()));
    RateLimitsFile::merge(stack.name, &stack.stack.spec.gateway.rate_limits, accepted)
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
