//! The contract between the operator and the services it deploys: every
//! `COMMERCE_*` variable a rendered Deployment sets (ConfigMap keys through
//! `envFrom`, container `env`) is one the service's clap `Config` declares,
//! and the values, given as the flags those variables stand for, parse. The
//! files the operator hands over (the gateway's rate-limit rules, the auth
//! service's signing key) load with the services' own loaders.
//!
//! The operator and the services are written apart; without this test a
//! renamed flag or a new operator key would only show in a crash-looping
//! pod, or worse, in a setting silently ignored.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use clap::{Args, Command, FromArgMatches};
use commerce_api::{CommerceStack, RateLimitPolicy};
use commerce_operator::build::monitoring::PodMonitorApi;
use commerce_operator::build::{self, DesiredObject, secrets};
use commerce_operator::validate::validate;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Deserialize;
use serde_json::Value;

/// Variables a Deployment may set that no service declares, because
/// Kubernetes itself consumes them. Each must be referenced as `$(NAME)` by
/// another variable of the same container (checked below), so an entry
/// cannot outlive its reason.
const KUBERNETES_ONLY: &[(&str, &str)] = &[
    // The managed (or an external) Redis' password, from its Secret: only
    // expanded by the kubelet into COMMERCE_REDIS_URL, which the services read.
    ("COMMERCE_REDIS_PASSWORD", "expanded into COMMERCE_REDIS_URL"),
];

/// The example stacks of `manifests/examples` with their policies.
fn example(file: &str) -> (CommerceStack, Vec<RateLimitPolicy>) {
    let path = format!("{}/../manifests/examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let mut stack = None;
    let mut policies = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(&yaml) {
        let value = serde_yaml_ng::Value::deserialize(document).expect("a YAML document");
        match value.get("kind").and_then(|kind| kind.as_str()) {
            Some("CommerceStack") => stack = Some(serde_yaml_ng::from_value(value).expect("a CommerceStack")),
            Some("RateLimitPolicy") => policies.push(serde_yaml_ng::from_value(value).expect("a policy")),
            _ => {}
        }
    }
    (stack.unwrap_or_else(|| panic!("{file} has no CommerceStack")), policies)
}

/// What the reconciler applies for `file`: the pure `build`, with Secret
/// values generated as on a first reconcile (seeded, so the test is stable),
/// which are real values where `render`'s placeholders are not.
fn built(file: &str) -> Vec<DesiredObject> {
    let (stack, policies) = example(file);
    let valid = validate(&stack, "default").expect("the example is valid");
    let wanted = secrets::generated_values(&valid);
    let values = secrets::SecretValues::keep_or_generate(&wanted, &[], &mut StdRng::seed_from_u64(42));
    build::build(&valid, &policies, &values, PodMonitorApi::Served).expect("the example builds")
}

const EXAMPLES: [&str; 3] = ["full.yaml", "minimal.yaml", "secure-kafka.yaml"];

fn objects_of<'a>(objects: &'a [DesiredObject], kind: &'a str) -> impl Iterator<Item = &'a DesiredObject> {
    objects.iter().filter(move |o| o.resource.kind == kind)
}

fn find<'a>(objects: &'a [DesiredObject], kind: &str, name: &str) -> &'a DesiredObject {
    objects
        .iter()
        .find(|o| o.resource.kind == kind && o.name() == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

/// The text of `key` in the Secret named `name`, if the build has it.
fn secret_value(objects: &[DesiredObject], name: &str, key: &str) -> Option<String> {
    let secret = objects_of(objects, "Secret").find(|o| o.name() == name)?;
    let encoded = secret.object.data["data"][key].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).expect("base64 Secret data");
    Some(String::from_utf8(bytes).expect("UTF-8 Secret data"))
}

/// A realistic stand-in for a Secret the stack does not build (one the
/// user provides): a URL-safe password, as the operator would generate.
fn stand_in(secret: &str, key: &str) -> String {
    match key {
        "url" => format!("postgres://user:Pa55word@postgres.infra.svc:5432/{secret}?sslmode=require"),
        _ => "Pa55wordFromAUserSecret".to_owned(),
    }
}

/// One service's container as the pods see it.
struct Container {
    /// `serve <service>`'s service.
    service: String,
    /// The Deployment's name, for messages.
    deployment: String,
    /// Names and values in the order the kubelet defines them (ConfigMap
    /// first, `env` after, a later entry replacing an earlier one), Secret
    /// references resolved and `$(VAR)` references expanded.
    env: Vec<(String, String)>,
    /// Names referenced as `$(NAME)` by some value.
    referenced: Vec<String>,
    /// The pod spec, for volumes and mounts.
    pod: Value,
}

impl Container {
    fn get(&self, name: &str) -> Option<&str> {
        self.env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Where the volume built from `source` (`configMap`/`secret`, and the
    /// object's name) is mounted.
    fn mount_of(&self, source: &str, name_field: &str, name: &str) -> Option<String> {
        let volume = self.pod["volumes"]
            .as_array()?
            .iter()
            .find(|v| v[source][name_field].as_str() == Some(name))?["name"]
            .as_str()?
            .to_owned();
        self.pod["containers"][0]["volumeMounts"]
            .as_array()?
            .iter()
            .find(|m| m["name"].as_str() == Some(volume.as_str()))?["mountPath"]
            .as_str()
            .map(str::to_owned)
    }
}

fn containers(objects: &[DesiredObject]) -> Vec<Container> {
    objects_of(objects, "Deployment")
        .map(|deployment| {
            let pod = deployment.object.data["spec"]["template"]["spec"].clone();
            let container = &pod["containers"][0];
            let args: Vec<&str> =
                container["args"].as_array().expect("args").iter().filter_map(Value::as_str).collect();
            assert_eq!(args.first(), Some(&"serve"), "{}: {args:?}", deployment.name());
            let mut env: Vec<(String, String)> = Vec::new();
            for source in container["envFrom"].as_array().into_iter().flatten() {
                let name = source["configMapRef"]["name"].as_str().expect("only ConfigMaps in envFrom");
                let config_map = find(objects, "ConfigMap", name);
                for (key, value) in config_map.object.data["data"].as_object().into_iter().flatten() {
                    define(&mut env, key.clone(), value.as_str().expect("string data").to_owned());
                }
            }
            let mut referenced = Vec::new();
            for var in container["env"].as_array().into_iter().flatten() {
                let name = var["name"].as_str().expect("env name").to_owned();
                let value = if let Some(value) = var["value"].as_str() {
                    expand(value, &env, &mut referenced)
                } else {
                    let reference = &var["valueFrom"]["secretKeyRef"];
                    let (secret, key) =
                        (reference["name"].as_str().unwrap(), reference["key"].as_str().unwrap());
                    secret_value(objects, secret, key).unwrap_or_else(|| stand_in(secret, key))
                };
                define(&mut env, name, value);
            }
            Container {
                service: args.get(1).expect("serve <service>").to_string(),
                deployment: deployment.name().to_owned(),
                env,
                referenced,
                pod,
            }
        })
        .collect()
}

/// Defines `name`, replacing an earlier definition (`env` beats `envFrom`).
fn define(env: &mut Vec<(String, String)>, name: String, value: String) {
    env.retain(|(n, _)| *n != name);
    env.push((name, value));
}

/// Kubernetes' `$(VAR)` expansion against the variables defined so far.
fn expand(value: &str, env: &[(String, String)], referenced: &mut Vec<String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find(')').expect("a closed $(...)");
        let name = &after[..end];
        let resolved = env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        out.push_str(&resolved.unwrap_or_else(|| panic!("$({name}) refers to nothing defined before it")));
        referenced.push(name.to_owned());
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The service's clap arguments, as `commerce serve <service>` has them.
fn command(service: &str) -> Command {
    let command = Command::new("commerce-serve").no_binary_name(true);
    match service {
        "auth" => commerce_auth::Config::augment_args(command),
        "catalog" => commerce_catalog::Config::augment_args(command),
        "inventory" => commerce_inventory::Config::augment_args(command),
        "cart" => commerce_cart::Config::augment_args(command),
        "order" => commerce_order::Config::augment_args(command),
        "payment" => commerce_payment::Config::augment_args(command),
        "notification" => commerce_notification::Config::augment_args(command),
        "shipping" => commerce_shipping::Config::augment_args(command),
        "gateway" => commerce_gateway::Config::augment_args(command),
        "audit" => commerce_audit::Config::augment_args(command),
        "profile" => commerce_profile::Config::augment_args(command),
        "reviews" => commerce_reviews::Config::augment_args(command),
        "search" => commerce_search::Config::augment_args(command),
        "recommendation" => commerce_recommendation::Config::augment_args(command),
        "analytics" => commerce_analytics::Config::augment_args(command),
        other => panic!("a Deployment serves {other:?}, which has no Config here"),
    }
}

/// Every variable name the service declares, with the long flag it stands for.
fn declared(service: &str) -> BTreeMap<String, String> {
    command(service)
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_str()?.to_owned();
            let long = arg.get_long().unwrap_or_else(|| panic!("{service}: {env} has no long flag"));
            Some((env, long.to_owned()))
        })
        .collect()
}

/// The container's variables as flags: what the service would have read
/// from its environment, minus the Kubernetes-only ones.
fn argv(container: &Container) -> Vec<String> {
    let flags = declared(&container.service);
    let command = command(&container.service);
    let mut argv = Vec::new();
    for (name, value) in &container.env {
        if KUBERNETES_ONLY.iter().any(|(n, _)| n == name) {
            continue;
        }
        let Some(long) = flags.get(name) else { continue };
        let arg = command.get_arguments().find(|a| a.get_long() == Some(long.as_str())).unwrap();
        if arg.get_action().takes_values() {
            argv.push(format!("--{long}={value}"));
        } else if matches!(value.as_str(), "true" | "1" | "yes" | "on") {
            argv.push(format!("--{long}"));
        }
    }
    argv
}

/// Parses `argv` as `service`'s `Config`, reading no environment variable
/// of the test process.
fn parse<C: Args + FromArgMatches>(argv: &[String]) -> Result<C, String> {
    let mut command = C::augment_args(Command::new("commerce-serve").no_binary_name(true));
    for id in command.get_arguments().map(|arg| arg.get_id().clone()).collect::<Vec<_>>() {
        command = command.mut_arg(id, |arg| arg.env(None::<&str>));
    }
    let matches = command.try_get_matches_from(argv).map_err(|e| e.to_string())?;
    C::from_arg_matches(&matches).map_err(|e| e.to_string())
}

fn parses(service: &str, argv: &[String]) -> Result<(), String> {
    match service {
        "auth" => parse::<commerce_auth::Config>(argv).map(drop),
        "catalog" => parse::<commerce_catalog::Config>(argv).map(drop),
        "inventory" => parse::<commerce_inventory::Config>(argv).map(drop),
        "cart" => parse::<commerce_cart::Config>(argv).map(drop),
        "order" => parse::<commerce_order::Config>(argv).map(drop),
        "payment" => parse::<commerce_payment::Config>(argv).map(drop),
        "notification" => parse::<commerce_notification::Config>(argv).map(drop),
        "shipping" => parse::<commerce_shipping::Config>(argv).map(drop),
        "gateway" => parse::<commerce_gateway::Config>(argv).map(drop),
        "audit" => parse::<commerce_audit::Config>(argv).map(drop),
        "profile" => parse::<commerce_profile::Config>(argv).map(drop),
        "reviews" => parse::<commerce_reviews::Config>(argv).map(drop),
        "search" => parse::<commerce_search::Config>(argv).map(drop),
        "recommendation" => parse::<commerce_recommendation::Config>(argv).map(drop),
        "analytics" => parse::<commerce_analytics::Config>(argv).map(drop),
        other => panic!("no Config for {other:?}"),
    }
}

/// With `spec.monitoring.otlpEndpoint`, every service gets the standard
/// OpenTelemetry variables (read by the OpenTelemetry SDK, not by clap, so
/// the examples leave them out of the check above): the endpoint, its own
/// name and where it runs; and the platform reads them as an OTLP export.
#[test]
fn an_otlp_endpoint_gives_every_service_the_opentelemetry_variables_under_its_own_name() {
    use commerce_platform::telemetry::TraceExport;
    let (mut stack, policies) = example("full.yaml");
    let endpoint = "http://otel-collector.observability:4317";
    stack.spec.monitoring.otlp_endpoint = Some(endpoint.to_owned());
    let valid = validate(&stack, "default").expect("the stack is valid");
    let wanted = secrets::generated_values(&valid);
    let values = secrets::SecretValues::keep_or_generate(&wanted, &[], &mut StdRng::seed_from_u64(42));
    let objects = build::build(&valid, &policies, &values, PodMonitorApi::Served).expect("the stack builds");
    let traced = containers(&objects);
    assert!(traced.len() >= 8, "only {} Deployments", traced.len());
    for container in &traced {
        assert_eq!(container.get("OTEL_EXPORTER_OTLP_ENDPOINT"), Some(endpoint), "{}", container.deployment);
        assert_eq!(
            container.get("OTEL_SERVICE_NAME"),
            Some(container.service.as_str()),
            "{}",
            container.deployment
        );
        let attributes = container.get("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
        let expected = format!("k8s.namespace.name={},commerce.stack={}", valid.namespace, valid.name);
        assert_eq!(attributes, expected, "{}", container.deployment);
        let export = TraceExport::from_vars(|name| container.get(name).map(str::to_owned))
            .expect("a supported export");
        assert_eq!(export, TraceExport::Otlp { endpoint: endpoint.to_owned() }, "{}", container.deployment);
    }
    for container in containers(&built("full.yaml")) {
        assert_eq!(
            container.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
            None,
            "{}: exported unasked",
            container.deployment
        );
    }
}

#[test]
fn every_variable_a_deployment_sets_is_declared_by_its_service() {
    for file in EXAMPLES {
        let objects = built(file);
        let containers = containers(&objects);
        assert!(containers.len() >= 8, "{file}: only {} Deployments", containers.len());
        for container in &containers {
            let declared = declared(&container.service);
            for (name, _) in &container.env {
                if let Some((_, why)) = KUBERNETES_ONLY.iter().find(|(n, _)| n == name) {
                    assert!(
                        container.referenced.contains(name),
                        "{file} {}: {name} is allowed as Kubernetes-only ({why}) but nothing references $({name})",
                        container.deployment
                    );
                    continue;
                }
                assert!(
                    declared.contains_key(name),
                    "{file} {}: sets {name}, which `{}`'s Config does not declare",
                    container.deployment,
                    container.service
                );
            }
        }
    }
}

#[test]
fn every_deployments_variables_parse_as_its_services_flags() {
    for file in EXAMPLES {
        let objects = built(file);
        for container in containers(&objects) {
            let argv = argv(&container);
            if let Err(error) = parses(&container.service, &argv) {
                panic!("{file} {}: {argv:?} does not parse:\n{error}", container.deployment);
            }
        }
    }
}

#[test]
fn the_database_and_redis_urls_the_services_receive_are_well_formed() {
    for file in EXAMPLES {
        let objects = built(file);
        let (stack, _) = example(file);
        // `<namespace>.<stack>`, as validate() resolves the namespace.
        let namespace = stack.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned());
        let expected_prefix = format!("{namespace}.{}", stack.metadata.name.clone().unwrap_or_default());
        for container in containers(&objects) {
            if let Some(url) = container.get("COMMERCE_DATABASE_URL") {
                sqlx::postgres::PgConnectOptions::from_str(url)
                    .unwrap_or_else(|e| panic!("{file} {}: database URL {url:?}: {e}", container.deployment));
            }
            if let Some(url) = container.get("COMMERCE_REDIS_URL") {
                assert!(url.starts_with("redis://") && !url.contains("$("), "{file}: {url}");
                // Stacks sharing one Redis keep apart by the key prefix.
                let prefix = container.get("COMMERCE_REDIS_KEY_PREFIX");
                assert_eq!(
                    prefix,
                    Some(expected_prefix.as_str()),
                    "{file} {}: a Redis user without the stack's key prefix",
                    container.deployment
                );
            }
        }
    }
}

#[test]
fn the_auth_service_gets_the_stacks_token_lifetimes_and_a_key_file_it_can_load() {
    let objects = built("full.yaml");
    let auth = containers(&objects).into_iter().find(|c| c.service == "auth").expect("auth");
    let config: commerce_auth::Config = parse(&argv(&auth)).unwrap();
    assert_eq!(config.auth.access_token_ttl, Duration::from_secs(600));
    assert_eq!(config.auth.refresh_token_ttl, Duration::from_secs(168 * 3600));

    let path = config.auth.signing_key_file.expect("a key file is configured");
    let secret = "shop-auth-signing-key";
    let mount = auth.mount_of("secret", "secretName", secret).expect("the signing-key Secret is mounted");
    let key = path.strip_prefix(&mount).expect("the key file lies in the mount").to_str().unwrap().to_owned();
    let pem = secret_value(&objects, secret, &key).expect("the Secret holds the key file");

    let file: PathBuf =
        std::env::temp_dir().join(format!("commerce-contract-{}-signing-key.pem", std::process::id()));
    std::fs::write(&file, &pem).unwrap();
    let loaded = commerce_auth::keys::read_key_file(&file);
    std::fs::remove_file(&file).ok();
    let key = loaded.unwrap_or_else(|e| panic!("auth cannot load the operator's key: {e}"));
    assert_ne!(key.verifying_key().to_bytes(), [0; 32]);
}

#[test]
fn the_gateway_rules_file_parses_with_the_gateways_own_parser() {
    for (file, expected) in
        [("full.yaml", &["api", "login", "checkout_place-order"][..]), ("minimal.yaml", &[])]
    {
        let objects = built(file);
        let gateway = containers(&objects).into_iter().find(|c| c.service == "gateway").expect("gateway");
        let config: commerce_gateway::Config = parse(&argv(&gateway)).unwrap();
        let path = config.rate_limit.rules_file.expect("a rules file is configured");
        let config_map = "shop-gateway-rate-limits";
        let mount =
            gateway.mount_of("configMap", "name", config_map).expect("the rules ConfigMap is mounted");
        let key =
            path.strip_prefix(&mount).expect("the rules file lies in the mount").to_str().unwrap().to_owned();
        let text = find(&objects, "ConfigMap", config_map).object.data["data"][&key]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: the ConfigMap has no {key}"))
            .to_owned();

        let rules = commerce_gateway::ratelimit::rules::parse_rules_file(&text)
            .unwrap_or_else(|e| panic!("{file}: the gateway refuses the rules: {e}\n{text}"));
        let names: Vec<&str> = rules.iter().map(|rule| rule.name.as_str()).collect();
        assert_eq!(names, expected, "{file}");

        if file == "full.yaml" {
            let place_order = &rules[2];
            assert!(place_order.matches("POST", "/api/orders"));
            assert!(place_order.matches("POST", "/api/orders/42/cancel"));
            assert!(!place_order.matches("GET", "/api/orders"));
            assert_eq!(place_order.key, commerce_gateway::ratelimit::rules::KeyKind::User);
            assert_eq!(
                (place_order.rate, place_order.period, place_order.burst),
                (30, Duration::from_secs(60), 6)
            );
            let api = &rules[0];
            assert!(api.matches("GET", "/api/products") && !api.matches("GET", "/healthz"));
            assert_eq!((api.rate, api.period, api.burst), (50, Duration::from_secs(1), 101));
        }
    }
}

#[test]
fn the_gateway_gets_the_stacks_cors_settings() {
    let objects = built("full.yaml");
    let gateway = containers(&objects).into_iter().find(|c| c.service == "gateway").expect("gateway");
    let config: commerce_gateway::Config = parse(&argv(&gateway)).unwrap();
    assert_eq!(config.http.cors_origins, ["https://shop.example.com"]);
    assert_eq!(config.http.cors_allowed_headers, ["authorization", "content-type", "idempotency-key"]);
    assert_eq!(config.http.cors_max_age, Duration::from_secs(600));
}

#[test]
fn a_dotted_policy_name_and_a_root_prefix_still_make_rules_the_gateway_accepts() {
    let (stack, mut policies) = example("full.yaml");
    let mut policy = policies[0].clone();
    policy.metadata.name = Some("team.checkout".into());
    let rule = &mut policy.spec.rules[0];
    rule.path_prefix = "/".into();
    rule.key = commerce_api::crd::rate_limit::RateLimitKey::ApiKey;
    rule.per = commerce_api::crd::rate_limit::RateLimitPeriod::Hour;
    rule.burst = 0;
    policies.push(policy);
    let valid = validate(&stack, "default").unwrap();
    let merged = build::gateway::merged_rules(&valid, &policies).unwrap();
    let text = build::gateway::rules_file_text(&merged).unwrap();
    let rules = commerce_gateway::ratelimit::rules::parse_rules_file(&text)
        .unwrap_or_else(|e| panic!("the gateway refuses the rules: {e}\n{text}"));
    let added =
        rules.iter().find(|r| r.name == "team_checkout_place-order").expect("the dotted policy's rule");
    assert!(added.matches("POST", "/anything/at/all"));
    assert_eq!(added.key, commerce_gateway::ratelimit::rules::KeyKind::ApiKey);
    assert_eq!((added.period, added.burst), (Duration::from_secs(3600), 1));
}

#[test]
fn a_stack_on_kafka_with_tls_and_scram_gives_its_services_the_protocol_the_mounted_ca_and_the_users_secret() {
    let objects = built("secure-kafka.yaml");
    let mut kafka_users = 0;
    for container in containers(&objects) {
        let Some(properties) = container.get("COMMERCE_KAFKA_PROPERTIES") else {
            assert!(container.get("COMMERCE_KAFKA_BROKERS").is_none(), "{}", container.deployment);
            continue;
        };
        kafka_users += 1;
        let ca_mount =
            container.mount_of("secret", "secretName", "kafka-ca").expect("the CA Secret is mounted");
        assert_eq!(
            properties,
            format!(
                "security.protocol=sasl_ssl,ssl.ca.location={ca_mount}/ca.crt,sasl.mechanism=SCRAM-SHA-512"
            ),
            "{}",
            container.deployment
        );
        // The user's credentials come from its Secret, through flags of their own.
        let env = &container.pod["containers"][0]["env"];
        for (name, key) in
            [("COMMERCE_KAFKA_SASL_USERNAME", "username"), ("COMMERCE_KAFKA_SASL_PASSWORD", "password")]
        {
            let var = env.as_array().unwrap().iter().find(|v| v["name"] == name).expect(name);
            assert_eq!(var["valueFrom"]["secretKeyRef"]["name"], "kafka-user", "{name}");
            assert_eq!(var["valueFrom"]["secretKeyRef"]["key"], key, "{name}");
        }
        let kafka_flags: Vec<String> =
            argv(&container).into_iter().filter(|flag| flag.starts_with("--kafka-")).collect();
        let kafka: commerce_platform::events::KafkaArgs =
            parse(&kafka_flags).unwrap_or_else(|e| panic!("{}: {e}", container.deployment));
        let config = kafka.client_config();
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.username"), Some("Pa55wordFromAUserSecret"));
        assert_eq!(config.get("ssl.ca.location"), Some(format!("{ca_mount}/ca.crt").as_str()));
    }
    assert!(kafka_users >= 6, "only {kafka_users} services use Kafka");
}

#[test]
fn a_stack_with_a_postgres_ca_gives_its_services_a_verifying_url_naming_the_mounted_bundle() {
    let objects = built("secure-kafka.yaml");
    let mut with_database = 0;
    for container in containers(&objects) {
        let Some(url) = container.get("COMMERCE_DATABASE_URL") else { continue };
        with_database += 1;
        let ca_mount = container
            .mount_of("secret", "secretName", "postgres-ca")
            .expect("the Postgres CA Secret is mounted");
        assert!(
            url.ends_with(&format!("?sslmode=verify-full&sslrootcert={ca_mount}/ca.crt")),
            "{}: {url}",
            container.deployment
        );
    }
    assert!(with_database >= 6, "only {with_database} services have a database");
}

#[test]
fn the_notification_service_gets_the_stacks_smtp_server_and_login_and_they_make_a_mailer() {
    let notification = |file: &str| {
        containers(&built(file))
            .into_iter()
            .find(|c| c.service == "notification")
            .expect("a notification Deployment")
    };
    let emailing = notification("secure-kafka.yaml");
    assert_eq!(emailing.get("COMMERCE_EMAIL_SMTP_URL"), Some("smtp://smtp.example.com:587?tls=required"));
    assert_eq!(emailing.get("COMMERCE_EMAIL_FROM"), Some("Shop <no-reply@shop.example.com>"));
    assert_eq!(
        emailing.get("COMMERCE_EMAIL_SMTP_USERNAME"),
        Some(stand_in("smtp-login", "username").as_str())
    );
    assert_eq!(
        emailing.get("COMMERCE_EMAIL_SMTP_PASSWORD"),
        Some(stand_in("smtp-login", "password").as_str())
    );
    let config: commerce_notification::Config = parse(&argv(&emailing)).expect("the flags parse");
    let smtp =
        commerce_notification::mailer::SmtpSettings::from_args(&config.email).expect("lettre takes them");
    assert!(smtp.is_some(), "the email channel is on");

    let inbox_only = notification("minimal.yaml");
    assert_eq!(inbox_only.get("COMMERCE_EMAIL_SMTP_URL"), None);
    let config: commerce_notification::Config = parse(&argv(&inbox_only)).expect("the flags parse");
    assert!(commerce_notification::mailer::SmtpSettings::from_args(&config.email).expect("valid").is_none());
}

#[test]
fn a_stack_paying_through_stripe_gives_the_payment_service_key_files_inside_the_mounted_secret() {
    let payment = |file: &str| {
        containers(&built(file)).into_iter().find(|c| c.service == "payment").expect("a payment Deployment")
    };
    let stripe = payment("secure-kafka.yaml");
    assert_eq!(stripe.get("COMMERCE_PAYMENT_PROVIDER"), Some("stripe"));
    let mount =
        stripe.mount_of("secret", "secretName", "stripe-keys").expect("the credentials Secret is mounted");
    assert_eq!(stripe.get("COMMERCE_STRIPE_SECRET_KEY_FILE"), Some(format!("{mount}/secretKey").as_str()));
    assert_eq!(
        stripe.get("COMMERCE_STRIPE_WEBHOOK_SECRET_FILE"),
        Some(format!("{mount}/webhookSecret").as_str())
    );
    let config: commerce_payment::Config = parse(&argv(&stripe)).expect("the flags parse");
    assert_eq!(config.provider, commerce_payment::config::ProviderKind::Stripe);

    let mock = payment("minimal.yaml");
    assert_eq!(mock.get("COMMERCE_PAYMENT_PROVIDER"), Some("mock"));
    assert_eq!(mock.get("COMMERCE_STRIPE_SECRET_KEY_FILE"), None);
}
