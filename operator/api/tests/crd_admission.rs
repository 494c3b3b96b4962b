//! The generated CRDs reject what cannot work, with messages a person can act
//! on: each CEL rule is evaluated here as the apiserver would (defaults
//! applied first), without a cluster. The real apiserver repeats a few of
//! these in the e2e suite.

use commerce_api::crd::{self, policy::RateLimitPolicy, stack};
use commerce_topology::Service;
use kube_core::CustomResourceExt;
use kube_core::cel::{CompiledSchema, Validator, compile_schema, estimate_rule_cost};
use serde_json::{Value, json};

/// The openAPIV3Schema of a CRD as JSON.
fn schema_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    let schema = crd.spec.versions[0].schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).unwrap();
    serde_json::to_value(schema).unwrap()
}

/// The messages of every rule the object breaks; empty when it is admitted.
fn violations(schema: &Value, object: &Value) -> Vec<String> {
    match Validator::new().validate(schema, object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.message.clone()).collect(),
    }
}

fn stack(spec: Value) -> Value {
    named_stack("shop", spec)
}

fn named_stack(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "commerce-stack.dev/v1alpha1",
        "kind": "CommerceStack",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec,
    })
}

/// A stack with external infrastructure that breaks no rule; tests change
/// one thing in it.
fn valid_spec() -> Value {
    json!({
        "version": "0.1.0",
        "kafka": {"external": {"bootstrapServers": ["kafka-0.kafka:9092"]}},
        "postgres": {"external": {"host": "db.internal", "adminSecret": {"name": "pg-admin"}}},
        "redis": {"external": {"host": "redis.internal"}},
    })
}

fn stack_violations(edit: impl FnOnce(&mut Value)) -> Vec<String> {
    let mut spec = valid_spec();
    edit(&mut spec);
    violations(&schema_of(&stack::crd()), &stack(spec))
}

fn assert_one_violation_mentioning(violations: &[String], words: &[&str]) {
    assert_eq!(violations.len(), 1, "{violations:?}");
    for word in words {
        assert!(violations[0].contains(word), "{:?} does not mention {word:?}", violations[0]);
    }
}

#[test]
fn a_stack_with_external_infrastructure_is_admitted() {
    assert_eq!(stack_violations(|_| {}), Vec::<String>::new());
}

#[test]
fn an_unknown_service_name_is_rejected_with_the_catalog_names() {
    let violations = stack_violations(|spec| spec["services"] = json!({"basket": {"replicas": 2}}));
    let mut words: Vec<&str> = Service::names().collect();
    words.push("services");
    assert_one_violation_mentioning(&violations, &words);
}

#[test]
fn every_catalog_service_name_is_accepted() {
    let services: serde_json::Map<String, Value> =
        Service::names().map(|name| (name.to_owned(), json!({"replicas": 2}))).collect();
    assert_eq!(stack_violations(|spec| spec["services"] = Value::Object(services)), Vec::<String>::new());
}

#[test]
fn min_replicas_above_max_replicas_is_rejected() {
    let violations = stack_violations(|spec| {
        spec["services"] = json!({"order": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}});
    });
    assert_one_violation_mentioning(&violations, &["minReplicas", "maxReplicas"]);
}

#[test]
fn fixed_replicas_and_autoscaling_together_are_rejected() {
    let violations = stack_violations(|spec| {
        spec["services"] = json!({"order": {"replicas": 3, "autoscaling": {"maxReplicas": 6}}});
    });
    assert_one_violation_mentioning(&violations, &["replicas", "autoscaling", "not both"]);
}

#[test]
fn a_rate_of_zero_is_rejected() {
    let violations = stack_violations(|spec| {
        spec["gateway"] = json!({"rateLimits": [
            {"name": "orders", "pathPrefix": "/api/orders", "requests": 0, "per": "second"}
        ]});
    });
    assert_one_violation_mentioning(&violations, &["at least 1"]);
}

#[test]
fn a_path_prefix_without_a_leading_slash_is_rejected() {
    let violations = stack_violations(|spec| {
        spec["gateway"] = json!({"rateLimits": [
            {"name": "orders", "pathPrefix": "api/orders", "requests": 10, "per": "second"}
        ]});
    });
    assert_one_violation_mentioning(&violations, &["pathPrefix", "/api/orders"]);
}

#[test]
fn both_external_and_managed_kafka_are_rejected() {
    let violations = stack_violations(|spec| spec["kafka"]["managed"] = json!({}));
    assert_one_violation_mentioning(&violations, &["exactly one", "kafka.external", "kafka.managed"]);
}

#[test]
fn neither_external_nor_managed_postgres_is_rejected() {
    let violations = stack_violations(|spec| spec["postgres"] = json!({}));
    assert_one_violation_mentioning(&violations, &["exactly one", "postgres.external", "postgres.managed"]);
}

#[test]
fn both_external_and_managed_redis_are_rejected() {
    let violations = stack_violations(|spec| spec["redis"]["managed"] = json!({}));
    assert_one_violation_mentioning(&violations, &["exactly one", "redis.external"]);
}

#[test]
fn a_bootstrap_server_without_a_port_is_rejected() {
    let violations =
        stack_violations(|spec| spec["kafka"]["external"]["bootstrapServers"] = json!(["kafka-0.kafka"]));
    assert_one_violation_mentioning(&violations, &["host:port"]);
}

#[test]
fn a_bootstrap_server_with_a_port_no_broker_can_listen_on_is_rejected() {
    for server in ["kafka:0", "kafka:65536", "kafka:99999", "kafka:09092"] {
        let violations =
            stack_violations(|spec| spec["kafka"]["external"]["bootstrapServers"] = json!([server]));
        assert_one_violation_mentioning(&violations, &["bootstrapServers", "1 to 65535"]);
    }
    for server in ["kafka:1", "kafka:9092", "kafka:59999", "kafka:65535"] {
        let violations =
            stack_violations(|spec| spec["kafka"]["external"]["bootstrapServers"] = json!([server]));
        assert_eq!(violations, Vec::<String>::new(), "{server}");
    }
}

#[test]
fn an_ingress_for_a_disabled_gateway_is_rejected() {
    let violations = stack_violations(|spec| {
        spec["services"] = json!({"gateway": {"enabled": false}});
        spec["gateway"] = json!({"ingress": {"host": "shop.example.com"}});
    });
    assert_one_violation_mentioning(&violations, &["gateway.ingress", "services.gateway.enabled"]);
}

#[test]
fn a_stack_with_every_service_disabled_is_rejected_naming_the_services() {
    let violations = stack_violations(|spec| {
        spec["services"] = Value::Object(
            Service::names().map(|name| (name.to_owned(), json!({"enabled": false}))).collect(),
        );
    });
    let mut words: Vec<&str> = Service::names().collect();
    words.extend(["every service is disabled", "enable at least one"]);
    assert_one_violation_mentioning(&violations, &words);

    // One enabled service, or one left out of the map (enabled by default), is enough.
    let one_enabled = stack_violations(|spec| {
        spec["services"] = Value::Object(
            Service::names().map(|name| (name.to_owned(), json!({"enabled": name == "catalog"}))).collect(),
        );
    });
    assert_eq!(one_enabled, Vec::<String>::new());
    let one_left_out = stack_violations(|spec| {
        spec["services"] = Value::Object(
            Service::names()
                .filter(|name| *name != "order")
                .map(|name| (name.to_owned(), json!({"enabled": false})))
                .collect(),
        );
    });
    assert_eq!(one_left_out, Vec::<String>::new());
}

/// `EnvVar` is Kubernetes' own type; the CRD adds the pattern to its name
/// (the real apiserver enforces it: the e2e suite checks the refusal).
#[test]
fn an_env_var_name_carries_the_kubernetes_pattern_and_says_so() {
    let schema = schema_of(&stack::crd());
    let name = &schema["properties"]["spec"]["properties"]["services"]["additionalProperties"]["properties"]
        ["env"]["items"]["properties"]["name"];
    assert_eq!(name["pattern"], json!(stack::ENV_VAR_NAME_PATTERN), "{name:#}");
    let description = name["description"].as_str().unwrap_or_default();
    assert!(description.contains("not starting with a digit"), "{description}");
    for good in ["RUST_LOG", "_x", "a.b-c", "-x", ".x"] {
        assert!(stack::is_env_var_name(good), "{good}");
    }
    for bad in ["1BAD NAME", "1BAD", "BAD NAME", "A=B", "", "ÄRGER"] {
        assert!(!stack::is_env_var_name(bad), "{bad}");
    }
}

/// The schema node of `spec.<path>` (dot-separated property names).
fn spec_field(path: &str) -> Value {
    let schema = schema_of(&stack::crd());
    let mut node = &schema["properties"]["spec"];
    for name in path.split('.') {
        node = &node["properties"][name];
    }
    node.clone()
}

/// The payment pods refuse a provider they have no adapter for at start;
/// the schema's enum makes the apiserver refuse it first, as
/// `spec.payment.provider: Unsupported value: "adyen": supported values: "mock", "stripe"`
/// (the e2e suite checks that message on the real apiserver). Stripe
/// without its keys is refused by a rule.
#[test]
fn a_payment_provider_without_an_adapter_is_outside_the_schema_enum_and_stripe_needs_its_keys() {
    let provider = spec_field("payment.provider");
    assert_eq!(provider["enum"], json!(["mock", "stripe"]), "{provider:#}");
    assert_eq!(provider["type"], json!("string"));
    let description = provider["description"].as_str().unwrap_or_default();
    assert!(description.contains("mock") && description.contains("refused"), "{description}");
    assert_eq!(stack_violations(|spec| spec["payment"] = json!({"provider": "mock"})), Vec::<String>::new());
    let with_secret = stack_violations(|spec| {
        spec["payment"] = json!({"provider": "mock", "credentialsSecret": "payment-keys"});
    });
    assert_eq!(with_secret, Vec::<String>::new());
    let keyless = stack_violations(|spec| spec["payment"] = json!({"provider": "stripe"}));
    assert!(
        keyless.len() == 1 && keyless[0].contains("payment.provider stripe needs payment.credentialsSecret"),
        "{keyless:?}"
    );
    let keyed = stack_violations(|spec| {
        spec["payment"] = json!({"provider": "stripe", "credentialsSecret": "stripe-keys"});
    });
    assert_eq!(keyed, Vec::<String>::new());
}

/// `services` has no default: the rule must not read it when it is absent
/// (the apiserver refused such a stack with "no such key: services").
#[test]
fn an_ingress_without_a_services_map_is_admitted() {
    let violations =
        stack_violations(|spec| spec["gateway"] = json!({"ingress": {"host": "shop.example.com"}}));
    assert_eq!(violations, Vec::<String>::new());
}

/// A change to a valid spec.
type Edit = fn(&mut Value);

#[test]
fn a_secret_reference_no_secret_can_have_is_rejected_naming_the_field() {
    let cases: [(&str, Edit); 5] = [
        ("payment.credentialsSecret", |spec| spec["payment"] = json!({"credentialsSecret": "Stripe_Keys"})),
        ("image.pullSecrets", |spec| spec["image"] = json!({"pullSecrets": ["ok", "Not OK"]})),
        ("gateway.ingress.tlsSecretName", |spec| {
            spec["gateway"] = json!({"ingress": {"host": "shop.example.com", "tlsSecretName": "-tls"}});
        }),
        ("postgres.external.adminSecret.name", |spec| {
            spec["postgres"]["external"]["adminSecret"]["name"] = json!("pg_admin");
        }),
        ("name", |spec| {
            spec["redis"]["external"]["passwordSecret"] = json!({"name": "Redis", "key": "password"});
        }),
    ];
    for (field, edit) in cases {
        let violations = stack_violations(edit);
        assert_one_violation_mentioning(&violations, &[field, "must be a Secret name"]);
    }
    let admitted = stack_violations(|spec| {
        spec["payment"] = json!({"credentialsSecret": "payment-keys.v2"});
        spec["image"] = json!({"pullSecrets": ["registry-credentials"]});
        spec["redis"]["external"]["passwordSecret"] = json!({"name": "redis", "key": "password"});
    });
    assert_eq!(admitted, Vec::<String>::new());
}

#[test]
fn an_image_repository_with_a_tag_or_in_upper_case_is_rejected() {
    for repository in
        ["ghcr.io/commerce-stack/commerce:0.1.0", "ghcr.io/Commerce/commerce", "commerce@sha256:abc", "a//b"]
    {
        let violations = stack_violations(|spec| spec["image"] = json!({"repository": repository}));
        assert_one_violation_mentioning(&violations, &["image.repository", "without a tag"]);
    }
    for repository in [
        "commerce",
        "ghcr.io/commerce-stack/commerce",
        "localhost:5000/commerce",
        "registry.example.com/commerce/commerce",
        "Registry.Example.com:443/team_a/commerce__x",
    ] {
        let violations = stack_violations(|spec| spec["image"] = json!({"repository": repository}));
        assert_eq!(violations, Vec::<String>::new(), "{repository}");
    }
}

#[test]
fn an_access_token_must_expire_before_its_refresh_token() {
    let violations =
        stack_violations(|spec| spec["auth"] = json!({"accessTokenTtl": "48h", "refreshTokenTtl": "24h"}));
    assert_one_violation_mentioning(&violations, &["accessTokenTtl", "refreshTokenTtl"]);
}

#[test]
fn a_cors_origin_with_a_path_is_rejected() {
    let violations = stack_violations(|spec| {
        spec["gateway"] = json!({"cors": {"allowedOrigins": ["https://shop.example.com/app"]}});
    });
    assert_one_violation_mentioning(&violations, &["allowedOrigins", "without a path"]);
}

#[test]
fn a_stack_name_too_long_for_its_service_names_is_rejected() {
    let schema = schema_of(&stack::crd());
    let longest = "s".repeat(stack::MAX_NAME_LEN);
    assert_eq!(violations(&schema, &named_stack(&longest, valid_spec())), Vec::<String>::new());
    let violations = violations(&schema, &named_stack(&format!("{longest}s"), valid_spec()));
    assert_one_violation_mentioning(&violations, &["at most", "notification-headless"]);
}

#[test]
fn a_stack_name_that_cannot_prefix_a_service_name_is_rejected() {
    let violations = violations(&schema_of(&stack::crd()), &named_stack("9shop", valid_spec()));
    assert_one_violation_mentioning(&violations, &["starts with a letter"]);
}

#[test]
fn a_policy_with_a_rate_of_zero_is_rejected() {
    let policy = json!({
        "apiVersion": "commerce-stack.dev/v1alpha1",
        "kind": "RateLimitPolicy",
        "metadata": {"name": "checkout", "namespace": "shop"},
        "spec": {
            "targetRef": {"name": "shop"},
            "rules": [{"name": "checkout", "pathPrefix": "/api/orders", "requests": 0, "per": "minute"}],
        },
    });
    let violations = violations(&schema_of(&RateLimitPolicy::crd()), &policy);
    assert_one_violation_mentioning(&violations, &["at least 1"]);
}

/// Walks a schema and calls `visit` with every node's JSON path.
fn walk<'a>(path: &str, schema: &'a Value, visit: &mut impl FnMut(&str, &'a Value)) {
    visit(path, schema);
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            walk(&format!("{path}.{name}"), child, visit);
        }
    }
    if let Some(items) = schema.get("items") {
        walk(&format!("{path}[]"), items, visit);
    }
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        walk(&format!("{path}{{}}"), values, visit);
    }
}

#[test]
fn every_field_has_a_description_for_kubectl_explain() {
    for crd in crd::all() {
        let schema = schema_of(&crd);
        let mut missing = Vec::new();
        walk(&crd.spec.names.kind, &schema, &mut |path, node| {
            let described =
                node.get("description").and_then(Value::as_str).is_some_and(|d| !d.trim().is_empty());
            // Items and map values are described by the field that holds them.
            let is_element = path.ends_with("[]") || path.ends_with("{}");
            if !described && !is_element {
                missing.push(path.to_owned());
            }
        });
        assert!(missing.is_empty(), "fields without a description: {missing:#?}");
    }
}

/// Checks every rule at `node` and below against the apiserver's cost budget.
fn check_costs(path: &str, node: &CompiledSchema, problems: &mut Vec<String>) {
    for rule in node.validations.iter() {
        match rule {
            Ok(compiled) => {
                for warning in estimate_rule_cost(&compiled.rule.rule, node) {
                    problems.push(format!("{path}: {}: {}", warning.rule, warning.message));
                }
            }
            Err(error) => problems.push(format!("{path}: does not compile: {error}")),
        }
    }
    for (name, child) in &node.properties {
        check_costs(&format!("{path}.{name}"), child, problems);
    }
    if let Some(items) = &node.items {
        check_costs(&format!("{path}[]"), items, problems);
    }
    if let Some(values) = &node.additional_properties {
        check_costs(&format!("{path}{{}}"), values, problems);
    }
}

#[test]
fn every_cel_rule_compiles_has_a_message_and_fits_the_cost_budget() {
    for crd in crd::all() {
        let schema = schema_of(&crd);
        let mut problems = Vec::new();
        check_costs(&crd.spec.names.kind, &compile_schema(&schema), &mut problems);
        walk(&crd.spec.names.kind, &schema, &mut |path, node| {
            for rule in node.get("x-kubernetes-validations").and_then(Value::as_array).into_iter().flatten() {
                if rule.get("message").is_none() {
                    problems.push(format!("{path}: rule {} has no message", rule["rule"]));
                }
            }
        });
        assert!(problems.is_empty(), "{problems:#?}");
    }
}

#[test]
fn both_kinds_share_the_group_version_and_category() {
    for crd in crd::all() {
        assert_eq!(crd.spec.group, crd::GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.categories.as_deref(), Some(&[crd::CATEGORY.to_owned()][..]));
        let version = &crd.spec.versions[0];
        assert_eq!((version.name.as_str(), version.served, version.storage), (crd::VERSION, true, true));
        assert!(
            version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
            "status subresource"
        );
    }
}

#[test]
fn a_signing_key_rotation_interval_under_an_hour_is_rejected_and_an_hour_is_admitted() {
    let violations = stack_violations(|spec| spec["auth"] = json!({"signingKeyRotationInterval": "30m"}));
    assert_one_violation_mentioning(&violations, &["signingKeyRotationInterval", "at least 1h"]);
    for admitted in ["1h", "720h", "1.5h"] {
        let violations =
            stack_violations(|spec| spec["auth"] = json!({"signingKeyRotationInterval": admitted}));
        assert_eq!(violations, Vec::<String>::new(), "{admitted}");
    }
}
