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
//!
//! Policies are judged here ([`judge_policies`]): each may take a bounded
//! part of the file, and the file a bounded size, so that the policies of
//! a namespace cannot make the ConfigMap too large to apply.

use std::collections::BTreeMap;

use commerce_api::RateLimitPolicy;
use commerce_api::crd::policy::{
    REASON_INVALID_RULES, REASON_POLICY_TOO_LARGE, REASON_RULES_BUDGET_EXCEEDED,
};
use commerce_api::gateway_rules::{MAX_POLICY_RULES_BYTES, MAX_RULES_FILE_BYTES};
use commerce_topology::{CLUSTER_HTTP_PORT, Service};
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

/// The first line of the rules file.
const RULES_FILE_HEADER: &str = "Rate-limit rules of the gateway, merged by the commerce-operator.";

/// The file's text: a comment naming where each rule came from, then the
/// rules as YAML.
pub fn rules_file_text(file: &RateLimitsFile) -> Result<String, Error> {
    file.to_text(RULES_FILE_HEADER)
        .map_err(|source| Error::SerializeYaml { what: "rate-limit rules".into(), source })
}

/// Whether a policy's rules join its stack's rules file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyVerdict {
    /// They do, taking `bytes` of the file.
    Accepted {
        /// What the policy's rules add to the file.
        bytes: usize,
    },
    /// They are left out: `reason` (a `REASON_*` of
    /// [`commerce_api::crd::policy`]) and a message that says what to change.
    Refused {
        /// CamelCase, for the `Accepted` condition.
        reason: &'static str,
        /// For a person.
        message: String,
    },
}

/// One policy of a stack and its verdict.
#[derive(Debug, Clone)]
pub struct PolicyDecision<'p> {
    /// The policy.
    pub policy: &'p RateLimitPolicy,
    /// Whether its rules join the stack's.
    pub verdict: PolicyVerdict,
}

/// Judges the policies of `stack`'s namespace that target it, oldest first
/// (by `creationTimestamp`, then name; a policy without one, as `render`
/// reads them, counts as oldest). A policy is refused if its rules are
/// invalid, take more than [`MAX_POLICY_RULES_BYTES`] of the rules file,
/// or no longer fit in the [`MAX_RULES_FILE_BYTES`] that the stack's own
/// rules and the older accepted policies leave: one namespace's policies
/// can neither push the ConfigMap past the apiserver's 1 MiB nor take the
/// stack out of Ready. A refused policy leaves its room to younger ones
/// that fit; an older policy is never refused for a younger one.
pub fn judge_policies<'p>(
    stack: &ValidStack<'_>,
    policies: &'p [RateLimitPolicy],
) -> Result<Vec<PolicyDecision<'p>>, Error> {
    let rules_len = |rules: &[MergedRule]| -> Result<usize, Error> {
        rules.iter().try_fold(0, |sum, rule| {
            let len = rule.text_len().map_err(|source| Error::SerializeYaml {
                what: format!("rate-limit rule {}", rule.id),
                source,
            })?;
            Ok(sum + len)
        })
    };
    let own = RateLimitsFile::merge(stack.name, &stack.stack.spec.gateway.rate_limits, []);
    let mut used = RateLimitsFile::preamble_len(RULES_FILE_HEADER) + rules_len(&own.rules)?;
    let mut targeting: Vec<&RateLimitPolicy> = policies
        .iter()
        .filter(|p| p.spec.target_ref.name == stack.name)
        .filter(|p| p.metadata.namespace.as_deref().is_none_or(|ns| ns == stack.namespace))
        .collect();
    targeting.sort_by(|a, b| {
        let created = |p: &RateLimitPolicy| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        created(a).cmp(&created(b)).then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    let mut decisions = Vec::with_capacity(targeting.len());
    for policy in targeting {
        let name = policy.metadata.name.as_deref().unwrap_or_default();
        let problems = policy_problems(policy);
        let verdict = if !problems.is_empty() {
            PolicyVerdict::Refused { reason: REASON_INVALID_RULES, message: problems.join("; ") }
        } else {
            let bytes = rules_len(&RateLimitsFile::policy_rules(name, &policy.spec.rules))?;
            if bytes > MAX_POLICY_RULES_BYTES {
                PolicyVerdict::Refused {
                    reason: REASON_POLICY_TOO_LARGE,
                    message: format!(
                        "its {} rules take {bytes} bytes of the gateway's rules file, more than the \
                         {MAX_POLICY_RULES_BYTES} one policy may take: split it into smaller policies, \
                         or shorten its rule names and path prefixes",
                        policy.spec.rules.len()
                    ),
                }
            } else if used + bytes > MAX_RULES_FILE_BYTES {
                PolicyVerdict::Refused {
                    reason: REASON_RULES_BUDGET_EXCEEDED,
                    message: format!(
                        "its rules take {bytes} bytes, and the rules file of CommerceStack/{} has {} of its \
                         {MAX_RULES_FILE_BYTES} bytes left after the stack's own rules and the policies \
                         created earlier: remove or shrink a policy of this stack to make room",
                        stack.name,
                        MAX_RULES_FILE_BYTES.saturating_sub(used)
                    ),
                }
            } else {
                used += bytes;
                PolicyVerdict::Accepted { bytes }
            }
        };
        decisions.push(PolicyDecision { policy, verdict });
    }
    Ok(decisions)
}

/// Policies of `stack`'s namespace that target it and join its rules, by
/// name. The others are left out ([`judge_policies`]; their status says why).
pub fn accepted_policies<'p>(
    stack: &ValidStack<'_>,
    policies: &'p [RateLimitPolicy],
) -> Result<Vec<&'p RateLimitPolicy>, Error> {
    let mut accepted: Vec<&RateLimitPolicy> = judge_policies(stack, policies)?
        .into_iter()
        .filter(|d| matches!(d.verdict, PolicyVerdict::Accepted { .. }))
        .map(|d| d.policy)
        .collect();
    accepted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(accepted)
}

/// The merged rules of the stack and its accepted policies.
pub fn merged_rules(stack: &ValidStack<'_>, policies: &[RateLimitPolicy]) -> Result<RateLimitsFile, Error> {
    let accepted = accepted_policies(stack, policies)?
        .into_iter()
        .map(|policy| (policy.metadata.name.as_deref().unwrap_or_default(), policy.spec.rules.as_slice()));
    Ok(RateLimitsFile::merge(stack.name, &stack.stack.spec.gateway.rate_limits, accepted))
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
    let text = rules_file_text(&merged_rules(stack, policies)?)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::validate;
    use commerce_api::crd::policy::{RateLimitPolicySpec, StackRef};
    use commerce_api::crd::rate_limit::{HttpMethod, RateLimitKey, RateLimitPeriod, RateLimitRule};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn stack() -> commerce_api::CommerceStack {
        crate::build::parse_stack(include_str!("../../../manifests/examples/minimal.yaml")).unwrap()
    }

    /// A policy of `rules` rules of usual size (about 200 bytes each in
    /// the file), created `created` seconds after the epoch.
    fn policy(name: &str, rules: usize, created: i64) -> RateLimitPolicy {
        let rules = (0..rules)
            .map(|i| RateLimitRule {
                name: format!("orders-create-{i}"),
                path_prefix: format!("/api/orders/{i}/items"),
                methods: vec![HttpMethod::Post, HttpMethod::Put],
                key: RateLimitKey::User,
                requests: 100,
                per: RateLimitPeriod::Minute,
                burst: 10,
            })
            .collect();
        let mut policy = RateLimitPolicy::new(
            name,
            RateLimitPolicySpec { target_ref: StackRef { name: "shop".into() }, rules },
        );
        policy.metadata.namespace = Some("shop".into());
        policy.metadata.creation_timestamp =
            Some(Time(k8s_openapi::jiff::Timestamp::from_second(created).unwrap()));
        policy
    }

    fn verdicts(decisions: &[PolicyDecision<'_>]) -> Vec<(String, &'static str)> {
        decisions
            .iter()
            .map(|d| {
                let reason = match &d.verdict {
                    PolicyVerdict::Accepted { .. } => "Accepted",
                    PolicyVerdict::Refused { reason, .. } => reason,
                };
                (d.policy.metadata.name.clone().unwrap(), reason)
            })
            .collect()
    }

    #[test]
    fn policies_beyond_the_rules_budget_are_refused_oldest_first_and_the_file_stays_within_it() {
        let stack = stack();
        let valid = validate(&stack, "default").unwrap();
        // 80 policies of 64 rules: about 1 MiB together. The youngest are
        // named first, so that name order and age order disagree.
        let policies: Vec<RateLimitPolicy> =
            (0..80).map(|i| policy(&format!("team-{:02}", 79 - i), 64, 1_000 + i)).collect();
        let decisions = judge_policies(&valid, &policies).unwrap();
        assert_eq!(decisions.len(), 80);
        let accepted =
            decisions.iter().filter(|d| matches!(d.verdict, PolicyVerdict::Accepted { .. })).count();
        assert!((10..80).contains(&accepted), "{accepted} accepted");
        // Oldest first: the accepted ones are exactly the oldest.
        let reasons = verdicts(&decisions);
        assert!(reasons[..accepted].iter().all(|(_, r)| *r == "Accepted"), "{reasons:?}");
        assert!(reasons[accepted..].iter().all(|(_, r)| *r == REASON_RULES_BUDGET_EXCEEDED), "{reasons:?}");
        assert_eq!(reasons[0].0, "team-79", "the oldest comes first whatever its name");
        let PolicyVerdict::Refused { message, .. } = &decisions[accepted].verdict else { unreachable!() };
        assert!(message.contains("CommerceStack/shop") && message.contains("created earlier"), "{message}");

        let config_map = rate_limits_config_map(&valid, &policies).unwrap();
        let text = &config_map.data.unwrap()[RATE_LIMITS_FILE];
        assert!(text.len() <= MAX_RULES_FILE_BYTES, "{} bytes", text.len());
        assert!(
            text.len() > MAX_RULES_FILE_BYTES - MAX_POLICY_RULES_BYTES,
            "the budget is used: {}",
            text.len()
        );
        let used: usize = decisions
            .iter()
            .filter_map(|d| match d.verdict {
                PolicyVerdict::Accepted { bytes } => Some(bytes),
                PolicyVerdict::Refused { .. } => None,
            })
            .sum();
        assert_eq!(text.len(), RateLimitsFile::preamble_len(RULES_FILE_HEADER) + used, "bytes add up");
        assert!(text.contains("team-79_orders-create-0") && !text.contains("team-00_"));

        // The same policies in another order: the same verdicts.
        let mut shuffled = policies.clone();
        shuffled.reverse();
        assert_eq!(verdicts(&judge_policies(&valid, &shuffled).unwrap()), reasons);
    }

    #[test]
    fn a_policy_too_large_for_its_share_is_refused_and_leaves_its_room_to_others() {
        let stack = stack();
        let valid = validate(&stack, "default").unwrap();
        let mut huge = policy("huge", 64, 1);
        for rule in &mut huge.spec.rules {
            rule.path_prefix = format!("/{}", "a".repeat(200));
        }
        let policies = [huge, policy("small", 2, 2)];
        let decisions = judge_policies(&valid, &policies).unwrap();
        assert_eq!(
            verdicts(&decisions),
            [("huge".to_owned(), REASON_POLICY_TOO_LARGE), ("small".to_owned(), "Accepted")]
        );
        let PolicyVerdict::Refused { message, .. } = &decisions[0].verdict else { unreachable!() };
        assert!(message.contains(&MAX_POLICY_RULES_BYTES.to_string()), "{message}");
    }

    #[test]
    fn a_policy_with_more_rules_than_the_schema_allows_is_refused_as_invalid() {
        let stack = stack();
        let valid = validate(&stack, "default").unwrap();
        let policies = [policy("many", 65, 1)];
        let decisions = judge_policies(&valid, &policies).unwrap();
        assert_eq!(verdicts(&decisions), [("many".to_owned(), REASON_INVALID_RULES)]);
    }
}
