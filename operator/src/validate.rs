//! `validate`: the pure first step of a reconcile. It checks a stack (and the
//! policies that target it) against the rules the CRD's CEL enforces at
//! admission, and the few that admission cannot see, and hands `build` a
//! [`ValidStack`] whose facts no later step has to check again.
//!
//! Admission already rejects what it can; this step exists because `render`
//! reads files no apiserver has seen, because a CRD upgraded after a
//! resource was stored does not re-check the stored resource, and because
//! some rules only hold in the objects built from the stack: a container's
//! requests must not exceed its limits, which the apiserver checks in the
//! Deployment, not in the CommerceStack (whose schema takes any string as a
//! quantity).

use std::collections::{BTreeMap, BTreeSet};

use commerce_api::RateLimitPolicy;
use commerce_api::crd::rate_limit::{MAX_RULES, RateLimitRule};
use commerce_api::crd::stack::{
    CommerceStack, ExternalKafka, ExternalPostgres, ExternalRedis, KafkaSasl, KafkaServiceUser, ManagedInfra,
    PaymentProvider, STRIPE_NEEDS_CREDENTIALS, SaslMechanism, ServiceSettings, is_env_var_name,
};
use commerce_topology::Service;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as QuantityText;

use crate::Error;
use crate::quantity::{self, Quantity};

/// Longest stack name (see the CRD's rule on `metadata.name`).
pub const MAX_STACK_NAME_LEN: usize = commerce_api::crd::stack::MAX_NAME_LEN;

/// A stack that passed [`validate`], with the facts `build` relies on.
#[derive(Debug, Clone)]
pub struct ValidStack<'a> {
    /// The resource itself.
    pub stack: &'a CommerceStack,
    /// `metadata.name`.
    pub name: &'a str,
    /// `metadata.namespace`: where every object of the stack lives.
    pub namespace: &'a str,
    /// Enabled services with their settings, in catalog order.
    pub services: Vec<(Service, ServiceSettings)>,
    /// Where Kafka comes from.
    pub kafka: Infra<'a, ExternalKafka>,
    /// Where Postgres comes from.
    pub postgres: Infra<'a, ExternalPostgres>,
    /// Where Redis comes from.
    pub redis: Infra<'a, ExternalRedis>,
}

/// A piece of infrastructure, external or run by the operator.
#[derive(Debug, Clone, Copy)]
pub enum Infra<'a, E> {
    /// The stack connects to it.
    External(&'a E),
    /// The operator runs it in the namespace.
    Managed(&'a ManagedInfra),
}

impl<E> Infra<'_, E> {
    /// Whether the operator runs it.
    pub fn is_managed(&self) -> bool {
        matches!(self, Infra::Managed(_))
    }
}

impl ValidStack<'_> {
    /// Whether `service` runs.
    pub fn is_enabled(&self, service: Service) -> bool {
        self.services.iter().any(|(s, _)| *s == service)
    }

    /// The settings of an enabled service.
    pub fn settings(&self, service: Service) -> Option<&ServiceSettings> {
        self.services.iter().find(|(s, _)| *s == service).map(|(_, settings)| settings)
    }

    /// The SASL settings of an external Kafka whose services log in as a
    /// user the operator makes for the stack (`serviceUser: PerStack`).
    pub fn kafka_user_sasl(&self) -> Option<&KafkaSasl> {
        match self.kafka {
            Infra::External(external) => {
                external.sasl.as_ref().filter(|sasl| sasl.service_user == KafkaServiceUser::PerStack)
            }
            Infra::Managed(_) => None,
        }
    }

    /// Whether the operator makes a Kafka user for the stack.
    pub fn has_kafka_user(&self) -> bool {
        self.kafka_user_sasl().is_some()
    }
}

/// Checks `stack`; `namespace` is used when the resource names none (a file
/// given to `render`).
pub fn validate<'a>(stack: &'a CommerceStack, namespace: &'a str) -> Result<ValidStack<'a>, Error> {
    let mut problems = Vec::new();
    let name = stack.metadata.name.as_deref().unwrap_or_default();
    let namespace = stack.metadata.namespace.as_deref().unwrap_or(namespace);
    check_name(name, &mut problems);
    check_namespace(namespace, &mut problems);
    let spec = &stack.spec;

    for key in spec.services.keys() {
        if Service::from_name(key).is_none() {
            let known: Vec<&str> = Service::names().collect();
            problems.push(format!("services.{key}: not a service of the catalog ({})", known.join(", ")));
        }
    }
    for (key, settings) in &spec.services {
        if settings.replicas.is_some() && settings.autoscaling.is_some() {
            problems.push(format!("services.{key}: set either replicas or autoscaling, not both"));
        }
        if let Some(autoscaling) = &settings.autoscaling
            && autoscaling.min_replicas > autoscaling.max_replicas
        {
            problems.push(format!(
                "services.{key}.autoscaling: minReplicas ({}) exceeds maxReplicas ({})",
                autoscaling.min_replicas, autoscaling.max_replicas
            ));
        }
        if let Some(resources) = &settings.resources {
            check_resources(&format!("services.{key}.resources"), resources, &mut problems);
        }
        for (index, var) in settings.env.iter().enumerate() {
            if !is_env_var_name(&var.name) {
                problems.push(format!(
                    "services.{key}.env[{index}].name {:?}: not an environment variable name \
                     (letters, digits, '-', '.' and '_', not starting with a digit)",
                    var.name
                ));
            }
        }
    }
    if spec.enabled_services().next().is_none() {
        let names: Vec<&str> = Service::names().collect();
        problems.push(format!(
            "services: every service is disabled (services.<name>.enabled is false for {}): \
             enable at least one, or delete the stack",
            names.join(", ")
        ));
    }
    for (what, managed) in
        [("kafka", &spec.kafka.managed), ("postgres", &spec.postgres.managed), ("redis", &spec.redis.managed)]
    {
        if let Some(resources) = managed.as_ref().and_then(|m| m.resources.as_ref()) {
            check_resources(&format!("{what}.managed.resources"), resources, &mut problems);
        }
        if let Some(managed) = managed {
            check_storage_size(
                &format!("{what}.managed.storage.size"),
                &managed.storage.size.0,
                &mut problems,
            );
            if let Some(image) = &managed.image
                && (image.is_empty() || image.contains(char::is_whitespace))
            {
                problems.push(format!("{what}.managed.image {image:?}: an image reference has no spaces"));
            }
        }
    }

    let kafka = pick("kafka", spec.kafka.external.as_ref(), spec.kafka.managed.as_ref(), &mut problems);
    if let Some(external) = &spec.kafka.external
        && external.bootstrap_servers.is_empty()
    {
        problems.push("kafka.external.bootstrapServers: name at least one host:port".into());
    }
    for server in spec.kafka.external.iter().flat_map(|e| &e.bootstrap_servers) {
        if !is_host_port(server) {
            problems.push(format!(
                "kafka.external.bootstrapServers: {server:?} is not host:port with a port from 1 to 65535"
            ));
        }
    }
    if let Some(external) = &spec.kafka.external
        && external.sasl.as_ref().is_some_and(|sasl| sasl.mechanism == SaslMechanism::Plain)
        && external.tls.is_none()
    {
        problems.push(
            "kafka.external.sasl.mechanism PLAIN sends the password itself: set kafka.external.tls too, or use SCRAM-SHA-512"
                .into(),
        );
    }
    if let Some(sasl) = spec.kafka.external.as_ref().and_then(|e| e.sasl.as_ref())
        && sasl.service_user == KafkaServiceUser::PerStack
        && sasl.mechanism == SaslMechanism::Plain
    {
        problems.push(
            "kafka.external.sasl.serviceUser PerStack makes a SCRAM user: set kafka.external.sasl.mechanism to SCRAM-SHA-512 or SCRAM-SHA-256"
                .into(),
        );
    }
    if spec.payment.provider == PaymentProvider::Stripe && spec.payment.credentials_secret.is_none() {
        problems.push(STRIPE_NEEDS_CREDENTIALS.into());
    }
    let postgres =
        pick("postgres", spec.postgres.external.as_ref(), spec.postgres.managed.as_ref(), &mut problems);
    let redis = pick("redis", spec.redis.external.as_ref(), spec.redis.managed.as_ref(), &mut problems);

    check_rules("gateway.rateLimits", &spec.gateway.rate_limits, &mut problems);
    let gateway_enabled = spec.services.get(Service::Gateway.name()).is_none_or(|s| s.enabled);
    if spec.gateway.ingress.is_some() && !gateway_enabled {
        problems.push("gateway.ingress: the gateway is disabled (services.gateway.enabled: false)".into());
    }
    if spec.auth.access_token_ttl >= spec.auth.refresh_token_ttl {
        problems.push("auth: accessTokenTtl must be shorter than refreshTokenTtl".into());
    }

    match (kafka, postgres, redis) {
        (Some(kafka), Some(postgres), Some(redis)) if problems.is_empty() => Ok(ValidStack {
            stack,
            name,
            namespace,
            services: spec.enabled_services().map(|s| (s, spec.service(s))).collect(),
            kafka,
            postgres,
            redis,
        }),
        _ => Err(Error::InvalidStack { name: name.to_owned(), problems }),
    }
}

/// What keeps a policy's rules out of the gateway; empty when none.
pub fn policy_problems(policy: &RateLimitPolicy) -> Vec<String> {
    let mut problems = Vec::new();
    if policy.spec.rules.is_empty() {
        problems.push("rules: name at least one rule".into());
    }
    if policy.spec.rules.len() > MAX_RULES as usize {
        problems.push(format!("rules: at most {MAX_RULES} rules, not {}", policy.spec.rules.len()));
    }
    check_rules("rules", &policy.spec.rules, &mut problems);
    problems
}

/// Every request and limit must be a non-negative quantity, and no request
/// may exceed the limit of the same resource: the apiserver would refuse the
/// workload built from it, after the rest of the stack was applied.
fn check_resources(field: &str, resources: &ResourceRequirements, problems: &mut Vec<String>) {
    let requests = valid_quantities(field, "requests", resources.requests.as_ref(), problems);
    let limits = valid_quantities(field, "limits", resources.limits.as_ref(), problems);
    for (name, (request, request_value)) in &requests {
        if let Some((limit, limit_value)) = limits.get(name)
            && request_value > limit_value
        {
            problems.push(format!("{field}: requests.{name} {request} exceeds limits.{name} {limit}"));
        }
    }
}

/// The well-formed, non-negative quantities of `requests` or `limits` (the
/// `kind`), by resource name, with their text; the others are reported.
fn valid_quantities<'a>(
    field: &str,
    kind: &str,
    quantities: Option<&'a BTreeMap<String, QuantityText>>,
    problems: &mut Vec<String>,
) -> BTreeMap<&'a str, (&'a str, Quantity)> {
    let mut valid = BTreeMap::new();
    for (name, text) in quantities.into_iter().flatten() {
        let text = text.0.as_str();
        match quantity::parse(text) {
            None => problems.push(format!(
                "{field}: {kind}.{name} {text:?} is not a quantity \
                 (a number with an optional suffix, e.g. 500m, 0.5, 256Mi, 1G or 2e3)"
            )),
            Some(value) if value.is_negative() => {
                problems.push(format!("{field}: {kind}.{name} {text} must not be negative"));
            }
            Some(value) => {
                valid.insert(name.as_str(), (text, value));
            }
        }
    }
    valid
}

/// A volume's size must be a quantity above zero: the schema takes any
/// string (Kubernetes' quantity type), and the apiserver would refuse the
/// StatefulSet built from it, naming the StatefulSet rather than the
/// stack's field.
fn check_storage_size(field: &str, text: &str, problems: &mut Vec<String>) {
    match quantity::parse(text) {
        None => problems.push(format!(
            "{field} {text:?} is not a quantity (a number with an optional suffix, e.g. 10Gi or 500M)"
        )),
        Some(size) if size <= quantity::parse("0").unwrap_or(size) => {
            problems.push(format!("{field} {text} must be greater than zero"));
        }
        Some(_) => {}
    }
}

fn check_name(name: &str, problems: &mut Vec<String>) {
    let is_label = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !is_label {
        problems.push(format!(
            "metadata.name {name:?}: must start with a letter and hold only lowercase letters, digits and '-' \
             (it prefixes Service names)"
        ));
    }
    if name.len() > MAX_STACK_NAME_LEN {
        problems.push(format!(
            "metadata.name {name:?}: at most {MAX_STACK_NAME_LEN} characters, so that \
             <name>-notification-headless is a valid Service name"
        ));
    }
}

/// Kubernetes namespaces are DNS labels; `render` takes one from the command
/// line, so check it too: it is part of the stack's Kafka and Postgres names
/// (`names::external_names`).
fn check_namespace(namespace: &str, problems: &mut Vec<String>) {
    let is_label = namespace.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && namespace.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !namespace.ends_with('-')
        && namespace.len() <= 63;
    if !is_label {
        problems.push(format!(
            "namespace {namespace:?}: must be a DNS label (at most 63 lowercase letters, digits and '-')"
        ));
    }
}

/// `host:port` with a port a broker can listen on (the CRD's CEL rule on
/// `kafka.external.bootstrapServers`).
fn is_host_port(server: &str) -> bool {
    server.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && !host.contains([':', '/', ' '])
            && port.len() <= 5
            && !port.starts_with('0')
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p > 0)
    })
}

fn pick<'a, E>(
    what: &str,
    external: Option<&'a E>,
    managed: Option<&'a ManagedInfra>,
    problems: &mut Vec<String>,
) -> Option<Infra<'a, E>> {
    match (external, managed) {
        (Some(external), None) => Some(Infra::External(external)),
        (None, Some(managed)) => Some(Infra::Managed(managed)),
        _ => {
            problems.push(format!("{what}: set exactly one of {what}.external and {what}.managed"));
            None
        }
    }
}

fn check_rules(field: &str, rules: &[RateLimitRule], problems: &mut Vec<String>) {
    let mut names = BTreeSet::new();
    for rule in rules {
        if !names.insert(rule.name.as_str()) {
            problems.push(format!("{field}: rule name {:?} appears twice", rule.name));
        }
        if rule.requests < 1 {
            problems.push(format!("{field}[{}]: requests must be at least 1", rule.name));
        }
        if rule.burst < 0 {
            problems.push(format!("{field}[{}]: burst must not be negative", rule.name));
        }
        if !rule.path_prefix.starts_with('/') {
            problems.push(format!("{field}[{}]: pathPrefix must start with '/'", rule.name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(yaml: &str) -> CommerceStack {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    const MINIMAL: &str = r#"
apiVersion: commerce-stack.dev/v1alpha1
kind: CommerceStack
metadata: {name: shop, namespace: shop}
spec:
  version: 0.1.0
  kafka: {external: {bootstrapServers: ["kafka:9092"]}}
  postgres: {external: {host: db, adminSecret: {name: pg-admin}}}
  redis: {external: {host: redis}}
"#;

    #[test]
    fn a_minimal_stack_runs_every_service_of_the_catalog() {
        let stack = stack(MINIMAL);
        let valid = validate(&stack, "default").unwrap();
        let services: Vec<Service> = valid.services.iter().map(|(s, _)| *s).collect();
        assert_eq!(services, Service::ALL);
        assert_eq!(valid.namespace, "shop");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut stack = stack(MINIMAL);
        stack.metadata.name = Some("Shop".into());
        stack.spec.kafka.managed = Some(ManagedInfra::default());
        stack.spec.services.insert("basket".into(), ServiceSettings::default());
        let Err(Error::InvalidStack { problems, .. }) = validate(&stack, "default") else {
            panic!("the stack is invalid")
        };
        assert_eq!(problems.len(), 3, "{problems:#?}");
    }

    #[test]
    fn a_bootstrap_server_with_a_port_no_broker_can_listen_on_is_rejected() {
        for server in
            ["kafka:0", "kafka:09092", "kafka:65536", "kafka:99999", "kafka", "kafka:", ":9092", "a/b:9092"]
        {
            let mut stack = stack(MINIMAL);
            stack.spec.kafka.external.as_mut().unwrap().bootstrap_servers = vec![server.into()];
            let Err(Error::InvalidStack { problems, .. }) = validate(&stack, "default") else {
                panic!("{server} was accepted")
            };
            assert!(problems[0].contains("bootstrapServers") && problems[0].contains(server), "{problems:?}");
        }
        for server in ["kafka:1", "kafka-0.kafka:9092", "127.0.0.1:65535"] {
            let mut stack = stack(MINIMAL);
            stack.spec.kafka.external.as_mut().unwrap().bootstrap_servers = vec![server.into()];
            assert!(validate(&stack, "default").is_ok(), "{server} was refused");
        }
    }

    /// `render` reads files no apiserver has seen: a provider without an
    /// adapter must fail there too, naming the field.
    #[test]
    fn a_payment_provider_without_an_adapter_does_not_parse_and_the_error_names_the_field() {
        let yaml = format!("{MINIMAL}  payment: {{provider: adyen}}\n");
        let error = serde_yaml_ng::from_str::<CommerceStack>(&yaml).unwrap_err().to_string();
        assert!(error.contains("spec.payment.provider") && error.contains("adyen"), "{error}");
        assert!(error.contains("mock") && error.contains("stripe"), "{error}");
    }

    #[test]
    fn stripe_without_a_credentials_secret_is_refused_naming_both_fields() {
        let yaml = format!("{MINIMAL}  payment: {{provider: stripe}}\n");
        let stack: CommerceStack = serde_yaml_ng::from_str(&yaml).unwrap();
        let Err(Error::InvalidStack { problems, .. }) = validate(&stack, "default") else {
            panic!("stripe without keys was accepted")
        };
        assert!(
            problems.iter().any(|p| p.contains("payment.credentialsSecret") && p.contains("secretKey")),
            "{problems:?}"
        );
        let yaml = format!("{MINIMAL}  payment: {{provider: stripe, credentialsSecret: stripe-keys}}\n");
        let stack: CommerceStack = serde_yaml_ng::from_str(&yaml).unwrap();
        assert!(validate(&stack, "default").is_ok());
    }

    fn problems_with_resources(service: &str, resources: serde_json::Value) -> Vec<String> {
        let mut stack = stack(MINIMAL);
        let settings = serde_json::json!({ "resources": resources });
        stack.spec.services.insert(service.into(), serde_json::from_value(settings).unwrap());
        match validate(&stack, "default") {
            Ok(_) => Vec::new(),
            Err(Error::InvalidStack { problems, .. }) => problems,
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn a_request_above_its_limit_is_reported_naming_the_field_and_both_values() {
        let problems = problems_with_resources(
            "order",
            serde_json::json!({"requests": {"cpu": "2", "memory": "1.1G"}, "limits": {"cpu": "500m", "memory": "1Gi"}}),
        );
        assert_eq!(
            problems,
            [
                "services.order.resources: requests.cpu 2 exceeds limits.cpu 500m",
                "services.order.resources: requests.memory 1.1G exceeds limits.memory 1Gi",
            ]
        );
    }

    #[test]
    fn requests_equal_to_their_limits_in_another_notation_are_accepted() {
        for (request, limit) in [
            ("500m", "0.5"),
            ("1Gi", "1024Mi"),
            ("2e-1", "200m"),
            ("2k", "2000"),
            ("1G", "1000Mi"),
            ("0", "0"),
        ] {
            let resources = serde_json::json!({"requests": {"cpu": request}, "limits": {"cpu": limit}});
            assert_eq!(
                problems_with_resources("cart", resources),
                Vec::<String>::new(),
                "{request} <= {limit}"
            );
        }
        let resources = serde_json::json!({"requests": {"cpu": "2e-3"}, "limits": {"cpu": "1m"}});
        assert_eq!(
            problems_with_resources("cart", resources),
            ["services.cart.resources: requests.cpu 2e-3 exceeds limits.cpu 1m"]
        );
    }

    #[test]
    fn a_malformed_or_negative_quantity_is_reported_naming_the_field() {
        let problems = problems_with_resources(
            "gateway",
            serde_json::json!({"requests": {"cpu": "2 cores", "memory": "-1Mi"}, "limits": {"memory": "1.5e3Mi"}}),
        );
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(
            problems[0]
                .starts_with(r#"services.gateway.resources: requests.cpu "2 cores" is not a quantity"#)
        );
        assert_eq!(problems[1], "services.gateway.resources: requests.memory -1Mi must not be negative");
        assert!(
            problems[2]
                .starts_with(r#"services.gateway.resources: limits.memory "1.5e3Mi" is not a quantity"#)
        );
    }

    #[test]
    fn managed_infrastructure_resources_are_checked_too() {
        let mut stack = stack(MINIMAL);
        stack.spec.redis.external = None;
        stack.spec.redis.managed = Some(
            serde_json::from_value(serde_json::json!({"resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}}))
                .unwrap(),
        );
        let Err(Error::InvalidStack { problems, .. }) = validate(&stack, "default") else {
            panic!("the stack is invalid")
        };
        assert_eq!(problems, ["redis.managed.resources: requests.memory 2Gi exceeds limits.memory 1Gi"]);
    }

    #[test]
    fn an_env_var_name_no_container_accepts_is_reported_naming_the_field() {
        let mut stack = stack(MINIMAL);
        let settings = serde_json::json!({"env": [
            {"name": "RUST_LOG", "value": "debug"},
            {"name": "1BAD NAME", "value": "x"},
        ]});
        stack.spec.services.insert("order".into(), serde_json::from_value(settings).unwrap());
        let Err(Error::InvalidStack { problems, .. }) = validate(&stack, "default") else {
            panic!("the stack is invalid")
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .starts_with(r#"services.order.env[1].name "1BAD NAME": not an environment variable name"#)
        );
    }

    #[test]
    fn a_stack_with_every_service_disabled_is_refused_naming_them() {
        let mut stack = stack(MINIMAL);
        for service in Service::ALL {
            let settings = ServiceSettings { enabled: false, ..ServiceSettings::default() };
            stack.spec.services.insert(service.name().into(), settings);
        }
        let Err(Error::InvalidStack { problems, .. }) = validate(&stack, "default") else {
            panic!("a stack without services was accepted")
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("services: every service is disabled"), "{}", problems[0]);
        assert!(Service::ALL.iter().all(|s| problems[0].contains(s.name())), "{}", problems[0]);

        stack.spec.services.remove("cart");
        assert!(validate(&stack, "default").is_ok(), "a service left out runs");
    }

    #[test]
    fn a_managed_storage_size_that_is_no_quantity_or_not_above_zero_is_reported_naming_the_field() {
        for (size, expected) in [
            ("ten gigs", r#"kafka.managed.storage.size "ten gigs" is not a quantity"#),
            ("0", "kafka.managed.storage.size 0 must be greater than zero"),
            ("-1Gi", "kafka.managed.storage.size -1Gi must be greater than zero"),
        ] {
            let mut stack = stack(MINIMAL);
            stack.spec.kafka.external = None;
            stack.spec.kafka.managed =
                Some(serde_json::from_value(serde_json::json!({"storage": {"size": size}})).unwrap());
            let Err(Error::InvalidStack { problems, .. }) = validate(&stack, "default") else {
                panic!("{size} was accepted")
            };
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].starts_with(expected), "{problems:?}");
        }
        let mut stack = stack(MINIMAL);
        stack.spec.kafka.external = None;
        stack.spec.kafka.managed = Some(
            serde_json::from_value(
                serde_json::json!({"storage": {"size": "1Gi"}, "image": "apache/kafka:4.1.0"}),
            )
            .unwrap(),
        );
        assert!(validate(&stack, "default").is_ok());
        stack.spec.kafka.managed.as_mut().unwrap().image = Some("apache/kafka 4".into());
        assert!(validate(&stack, "default").is_err(), "an image with a space");
    }

    #[test]
    fn a_stack_name_too_long_for_its_service_names_is_rejected() {
        let mut stack = stack(MINIMAL);
        stack.metadata.name = Some("a".repeat(MAX_STACK_NAME_LEN + 1));
        assert!(validate(&stack, "default").is_err());
        stack.metadata.name = Some("a".repeat(MAX_STACK_NAME_LEN));
        assert!(validate(&stack, "default").is_ok());
    }
}
