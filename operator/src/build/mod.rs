//! `build`: the pure heart of the operator. A valid stack, the policies that
//! target it and the values of its generated Secrets go in; the complete,
//! ordered list of objects the stack should consist of comes out. The same
//! function feeds `apply` in the cluster and `render` on a laptop, so a
//! GitOps review sees exactly what will be applied.
//!
//! Order is apply order: identities and configuration before the workloads
//! that read them, autoscalers and the Ingress after what they point at.

pub mod config;
pub mod endpoints;
pub mod gateway;
pub mod infra;
pub mod monitoring;
pub mod names;
pub mod secrets;
pub mod workload;

use commerce_api::{CommerceStack, RateLimitPolicy};
use commerce_topology::Service;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service as KubeService, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Resource;
use kube::core::{ApiResource, DynamicObject};
use serde::Serialize;

use crate::Error;
use crate::validate::ValidStack;
use commerce_api::crd::stack::ScrapeMode;
use monitoring::PodMonitorApi;
use secrets::SecretValues;

/// One object the stack should have, as the apply step sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredObject {
    /// Its kind, for the dynamic API.
    pub resource: ApiResource,
    /// The object: apiVersion, kind, metadata and the rest.
    pub object: DynamicObject,
}

impl DesiredObject {
    /// `metadata.name`.
    pub fn name(&self) -> &str {
        self.object.metadata.name.as_deref().unwrap_or_default()
    }

    /// `Kind/name`, for logs and Events.
    pub fn display(&self) -> String {
        format!("{}/{}", self.resource.kind, self.name())
    }
}

/// Every kind a stack may own, in apply order. `prune` lists these, and
/// the PodMonitors ([`monitoring::pod_monitor_resource`], applied last)
/// where the cluster serves them.
pub fn owned_kinds() -> Vec<ApiResource> {
    vec![
        ApiResource::erase::<ServiceAccount>(&()),
        ApiResource::erase::<Secret>(&()),
        ApiResource::erase::<ConfigMap>(&()),
        ApiResource::erase::<KubeService>(&()),
        ApiResource::erase::<NetworkPolicy>(&()),
        ApiResource::erase::<StatefulSet>(&()),
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<HorizontalPodAutoscaler>(&()),
        ApiResource::erase::<PodDisruptionBudget>(&()),
        ApiResource::erase::<Ingress>(&()),
    ]
}

/// Everything the stack should consist of, in apply order.
pub fn build(
    stack: &ValidStack<'_>,
    policies: &[RateLimitPolicy],
    values: &SecretValues,
    pod_monitors: PodMonitorApi,
) -> Result<Vec<DesiredObject>, Error> {
    let mut objects = Objects::default();
    let scrape = monitoring::scrape(stack, pod_monitors);
    let endpoints = endpoints::endpoints(stack);

    for secret in secrets::build_secrets(stack, values)? {
        objects.push(&secret)?;
    }
    for secret in infra::database_secrets(stack, &endpoints, values)? {
        objects.push(&secret)?;
    }
    let managed = infra::managed(stack);
    for service in &managed.services {
        objects.push(service)?;
    }
    for stateful_set in &managed.stateful_sets {
        objects.push(stateful_set)?;
    }
    for policy in &managed.network_policies {
        objects.push(policy)?;
    }
    for (service, settings) in &stack.services {
        let config = config::service_config(stack, *service, settings, &endpoints, values)?;
        let parts = workload::service_objects(stack, *service, settings, &config, scrape);
        objects.push(&parts.service_account)?;
        objects.push(&parts.config_map)?;
        objects.push(&parts.cluster_ip)?;
        objects.push(&parts.headless)?;
        objects.push(&parts.network_policy)?;
        objects.push(&parts.deployment)?;
        if let Some(autoscaler) = &parts.autoscaler {
            objects.push(autoscaler)?;
        }
        objects.push(&parts.disruption_budget)?;
    }
    if stack.is_enabled(Service::Gateway) {
        objects.push(&gateway::rate_limits_config_map(stack, policies)?)?;
        if let Some(ingress) = gateway::ingress(stack) {
            objects.push(&ingress)?;
        }
    }

    let mut objects = objects.0;
    if scrape == ScrapeMode::PodMonitor {
        objects.push(DesiredObject {
            resource: monitoring::pod_monitor_resource(),
            object: monitoring::pod_monitor(stack),
        });
    }
    let kinds = owned_kinds();
    // Stable: within a kind, catalog order stays.
    objects.sort_by_key(|o| kinds.iter().position(|k| k.kind == o.resource.kind).unwrap_or(usize::MAX));
    let owner = stack.stack.controller_owner_ref(&());
    for desired in &mut objects {
        if let Some(owner) = &owner {
            desired.object.metadata.owner_references = Some(vec![owner.clone()]);
        }
        let hash = hash_object(&desired.object)?;
        desired
            .object
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(names::APPLIED_HASH_ANNOTATION.to_owned(), hash);
    }
    Ok(objects)
}

/// First 16 bytes of the SHA-256 of the object's JSON, in hex.
fn hash_object(object: &DynamicObject) -> Result<String, Error> {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(object)
        .map_err(|source| Error::SerializeJson { what: "an object to hash".into(), source })?;
    Ok(hex::encode(&Sha256::digest(&json)[..16]))
}

/// Collects typed objects as dynamic ones.
#[derive(Default)]
struct Objects(Vec<DesiredObject>);

impl Objects {
    fn push<K>(&mut self, object: &K) -> Result<(), Error>
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let resource = ApiResource::erase::<K>(&());
        let what = || format!("{} {}", resource.kind, object.meta().name.as_deref().unwrap_or_default());
        let value =
            serde_json::to_value(object).map_err(|source| Error::SerializeJson { what: what(), source })?;
        let object: DynamicObject =
            serde_json::from_value(value).map_err(|source| Error::SerializeJson { what: what(), source })?;
        self.0.push(DesiredObject { resource, object });
        Ok(())
    }
}

/// Reads a CommerceStack from YAML (a file given to `render`, a test
/// fixture).
pub fn parse_stack(yaml: &str) -> Result<CommerceStack, Error> {
    serde_yaml_ng::from_str(yaml).map_err(|source| Error::ParseYaml { what: "CommerceStack".into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::validate;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const EXAMPLE: &str = include_str!("../../../manifests/examples/full.yaml");

    fn example() -> (CommerceStack, Vec<RateLimitPolicy>) {
        let mut documents = EXAMPLE.split("\n---\n");
        let stack = parse_stack(documents.next().unwrap()).unwrap();
        let policy: RateLimitPolicy = serde_yaml_ng::from_str(documents.next().unwrap()).unwrap();
        (stack, vec![policy])
    }

    fn built(stack: &CommerceStack, policies: &[RateLimitPolicy]) -> Vec<DesiredObject> {
        build(
            &validate(stack, "default").unwrap(),
            policies,
            &SecretValues::placeholders(),
            PodMonitorApi::Served,
        )
        .unwrap()
    }

    fn find<'a>(objects: &'a [DesiredObject], kind: &str, name: &str) -> Option<&'a DesiredObject> {
        objects.iter().find(|o| o.resource.kind == kind && o.name() == name)
    }

    fn config_hash(objects: &[DesiredObject], deployment: &str) -> String {
        let object = find(objects, "Deployment", deployment).unwrap();
        object.object.data["spec"]["template"]["metadata"]["annotations"][names::CONFIG_HASH_ANNOTATION]
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn autoscaled_deployments_leave_the_replica_count_to_the_autoscaler() {
        let (stack, policies) = example();
        let objects = built(&stack, &policies);
        let order = find(&objects, "Deployment", "shop-order").unwrap();
        assert!(order.object.data["spec"].get("replicas").is_none());
        let order_hpa = find(&objects, "HorizontalPodAutoscaler", "shop-order").unwrap();
        // Without a stabilisation window of its own, Kubernetes' default applies.
        assert!(order_hpa.object.data["spec"].get("behavior").is_none());
        let gateway_hpa = find(&objects, "HorizontalPodAutoscaler", "shop-gateway").unwrap();
        assert_eq!(
            gateway_hpa.object.data["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
            120
        );
        assert!(gateway_hpa.object.data["spec"]["behavior"].get("scaleUp").is_none());
        assert_eq!(gateway_hpa.object.data["spec"]["maxReplicas"], 6);
        let payment = find(&objects, "Deployment", "shop-payment").unwrap();
        assert_eq!(payment.object.data["spec"]["replicas"], 2);
        assert!(find(&objects, "HorizontalPodAutoscaler", "shop-payment").is_none());
    }

    #[test]
    fn a_rate_limit_change_reaches_the_gateway_without_rolling_its_pods() {
        let (stack, mut policies) = example();
        let before = built(&stack, &policies);
        policies[0].spec.rules[0].requests += 1;
        let after = built(&stack, &policies);
        assert_eq!(config_hash(&before, "shop-gateway"), config_hash(&after, "shop-gateway"));
        assert_ne!(
            find(&before, "ConfigMap", "shop-gateway-rate-limits"),
            find(&after, "ConfigMap", "shop-gateway-rate-limits")
        );
    }

    #[test]
    fn a_config_change_rolls_only_the_pods_that_read_it() {
        let (mut stack, policies) = example();
        let before = built(&stack, &policies);
        stack.spec.auth.access_token_ttl = std::time::Duration::from_secs(300).into();
        let after = built(&stack, &policies);
        assert_ne!(config_hash(&before, "shop-auth"), config_hash(&after, "shop-auth"));
        assert_eq!(config_hash(&before, "shop-order"), config_hash(&after, "shop-order"));
    }

    #[test]
    fn a_disabled_service_has_no_objects() {
        let (stack, policies) = example();
        let objects = built(&stack, &policies);
        assert!(objects.iter().all(|o| !o.name().contains("notification")));
        assert!(find(&objects, "Deployment", "shop-shipping").is_some());
    }

    #[test]
    fn every_object_is_owned_by_the_stack_once_it_has_a_uid() {
        let (mut stack, policies) = example();
        assert!(built(&stack, &policies).iter().all(|o| o.object.metadata.owner_references.is_none()));
        stack.metadata.uid = Some("6b3c1a2e-0000-4000-8000-000000000001".into());
        for object in built(&stack, &policies) {
            let owners = object.object.metadata.owner_references.as_ref().unwrap();
            assert_eq!(owners.len(), 1, "{}", object.display());
            assert_eq!((owners[0].kind.as_str(), owners[0].controller), ("CommerceStack", Some(true)));
        }
    }

    #[test]
    fn every_object_carries_the_label_prune_selects_on() {
        let (stack, policies) = example();
        for object in built(&stack, &policies) {
            let labels = object.object.metadata.labels.as_ref().unwrap();
            assert_eq!(
                labels.get(names::STACK_LABEL).map(String::as_str),
                Some("shop"),
                "{}",
                object.display()
            );
            assert_eq!(labels.get(names::MANAGED_BY_LABEL).map(String::as_str), Some(names::MANAGER));
            assert!(owned_kinds().contains(&object.resource), "{} is not a pruned kind", object.display());
        }
    }

    #[test]
    fn network_policies_admit_only_the_callers_of_the_catalog_on_grpc() {
        let (stack, policies) = example();
        let objects = built(&stack, &policies);
        for service in
            Service::ALL.into_iter().filter(|s| *s != Service::Gateway && *s != Service::Notification)
        {
            let policy = find(&objects, "NetworkPolicy", &format!("shop-{service}")).unwrap();
            let grpc_rule = policy.object.data["spec"]["ingress"]
                .as_array()
                .unwrap()
                .iter()
                .find(|rule| rule["ports"][0]["port"] == 50051)
                .unwrap();
            let admitted: Vec<&str> = grpc_rule["from"]
                .as_array()
                .unwrap()
                .iter()
                .map(|peer| peer["podSelector"]["matchLabels"][names::COMPONENT_LABEL].as_str().unwrap())
                .collect();
            let callers: Vec<&str> = service.callers().map(Service::name).collect();
            assert_eq!(admitted, callers, "{service}");
        }
    }

    #[test]
    fn only_valid_policies_that_target_the_stack_join_its_rules() {
        let (stack, mut policies) = example();
        let mut elsewhere = policies[0].clone();
        elsewhere.metadata = ObjectMeta {
            name: Some("other".into()),
            namespace: Some("shop".into()),
            ..ObjectMeta::default()
        };
        elsewhere.spec.target_ref.name = "another-shop".into();
        let mut broken = policies[0].clone();
        broken.metadata.name = Some("broken".into());
        broken.spec.rules[0].requests = 0;
        policies.extend([elsewhere, broken]);
        let valid = validate(&stack, "default").unwrap();
        let ids: Vec<String> =
            gateway::merged_rules(&valid, &policies).unwrap().rules.into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["api", "login", "checkout/place-order"]);
    }

    #[test]
    fn the_values_the_reconciler_generates_are_all_the_build_needs() {
        let (stack, policies) = example();
        let valid = validate(&stack, "default").unwrap();
        let wanted = secrets::generated_values(&valid);
        let values = SecretValues::keep_or_generate(&wanted, &[], &mut StdRng::seed_from_u64(3));
        let objects = build(&valid, &policies, &values, PodMonitorApi::Served).unwrap();
        assert!(find(&objects, "Secret", "shop-postgres-admin").is_some());
        assert!(find(&objects, "Secret", "shop-redis").is_some());
    }
}
