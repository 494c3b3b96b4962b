//! `commerce local up`: the shop a CommerceStack file describes, run on this
//! machine in one process. It does locally what the operator does in a
//! cluster (databases, topics), starts the enabled services as `serve all`
//! does, waits until each is ready, seeds the demo catalog and stock, and
//! prints the gateway's URL with requests that work against it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use commerce_api::crd::stack::PaymentProvider;
use commerce_api::gateway_rules::RateLimitsFile;
use commerce_api::{CommerceStack, RateLimitPolicy};
use commerce_topology::Service;
use tokio_util::sync::CancellationToken;

use crate::cli::LocalUp;
use crate::infra::LocalWiring;
use crate::ready::{Launched, OnTimeout};
use crate::services::{self, ServiceConfig};
use crate::{demo, ready, supervisor};

/// Accounts the auth service creates on a local shop, so that admin and
/// courier routes can be tried; their password is [`DEMO_PASSWORD`].
pub const DEMO_ADMIN_EMAIL: &str = "admin@shop.local";
pub const DEMO_COURIER_EMAIL: &str = "courier@shop.local";
/// Password of the demo accounts. A local shop listens on 127.0.0.1 only; a
/// known password is what makes the printed examples work.
pub const DEMO_PASSWORD: &str = "commerce-local";

/// Runs `commerce local up` until `shutdown` is cancelled.
pub async fn up(args: LocalUp, shutdown: CancellationToken) -> anyhow::Result<()> {
    let started = Instant::now();
    let yaml = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let stack = parse_stack(&yaml)
        .with_context(|| format!("{} holds no valid CommerceStack", args.file.display()))?;
    let name = stack.metadata.name.clone().unwrap_or_else(|| "shop".to_owned());
    let policies = parse_policies(&yaml, &name)
        .with_context(|| format!("{} holds an invalid RateLimitPolicy", args.file.display()))?;
    let enabled: Vec<Service> = stack.spec.enabled_services().collect();
    let built_in = services::built_in();
    let missing: Vec<Service> = enabled.iter().copied().filter(|s| !built_in.contains(s)).collect();
    anyhow::ensure!(
        missing.is_empty(),
        "{} enables {}, which this binary was built without (built in: {})",
        args.file.display(),
        services::names(&missing),
        services::names(&built_in)
    );
    anyhow::ensure!(
        stack.spec.payment.provider == PaymentProvider::Mock,
        "{} uses payment provider {}; a local shop runs the mock provider only",
        args.file.display(),
        stack.spec.payment.provider.as_str()
    );
    note_ignored_settings(&stack);

    let wiring = LocalWiring::new(&args.infra, &args.log)?;
    wiring.ensure_databases(&enabled).await?;
    wiring.ensure_topics().await?;
    let rules = rate_limits(&stack, &policies);
    let rules_file = match rules.rules.is_empty() {
        true => None,
        false => Some(write_rate_limits(&rules, &rules_path(&name, &wiring))?),
    };
    let configs = enabled
        .iter()
        .map(|service| {
            let mut flags = stack_flags(*service, &stack, !args.no_demo);
            if let (Service::Gateway, Some(path)) = (service, &rules_file) {
                flags.push(format!("--ratelimit-rules-file={}", path.display()));
            }
            ServiceConfig::local(*service, &wiring, &flags)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let (launcher, running) = supervisor::start(shutdown.clone());
    let launched =
        ready::launch_in_waves(&launcher, configs, &wiring, args.ready_timeout, OnTimeout::Fail, &shutdown)
            .await;
    drop(launcher);
    match launched {
        Ok(Launched::All) => {}
        // A signal, or a failed service: the supervisor's result says which.
        Ok(Launched::ShutDown) => return running.await.context("the service supervisor panicked")?,
        Err(error) => {
            // Not ready in time: stop what runs, and report how that went too.
            shutdown.cancel();
            let stopped = running.await.context("the service supervisor panicked")?;
            return Err(match stopped {
                Ok(()) => error,
                Err(stop_error) => error.context(format!("while stopping: {stop_error:#}")),
            });
        }
    }
    let cold_start = started.elapsed();

    let stocked = if args.no_demo {
        None
    } else {
        Some(demo::stock_demo_products(&wiring, &enabled, args.demo_stock).await)
    };
    println!("{}", banner(&name, &wiring, &enabled, cold_start, stocked, args.demo_stock));

    running.await.context("the service supervisor panicked")?
}

/// Parses the first document of kind CommerceStack in `yaml`.
pub fn parse_stack(yaml: &str) -> anyhow::Result<CommerceStack> {
    for document in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(document)?;
        if value.get("kind").and_then(serde_yaml_ng::Value::as_str) == Some("CommerceStack") {
            return Ok(serde_yaml_ng::from_value(value)?);
        }
    }
    anyhow::bail!("no document has kind: CommerceStack")
}

/// The RateLimitPolicies in `yaml` that target stack `stack_name`.
pub fn parse_policies(yaml: &str, stack_name: &str) -> anyhow::Result<Vec<RateLimitPolicy>> {
    let mut policies = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(document)?;
        if value.get("kind").and_then(serde_yaml_ng::Value::as_str) == Some("RateLimitPolicy") {
            let policy: RateLimitPolicy = serde_yaml_ng::from_value(value)?;
            if policy.spec.target_ref.name == stack_name {
                policies.push(policy);
            }
        }
    }
    Ok(policies)
}

/// The gateway's rules: the stack's own, then its policies' by name, merged
/// as the operator merges them into the gateway's ConfigMap.
fn rate_limits(stack: &CommerceStack, policies: &[RateLimitPolicy]) -> RateLimitsFile {
    let name = stack.metadata.name.as_deref().unwrap_or("shop");
    let policies = policies
        .iter()
        .map(|policy| (policy.metadata.name.as_deref().unwrap_or_default(), policy.spec.rules.as_slice()));
    RateLimitsFile::merge(name, &stack.spec.gateway.rate_limits, policies)
}

/// Where a local shop's gateway reads its rules: one file per shop (stack
/// name, database prefix and port offset), rewritten at every start.
fn rules_path(stack_name: &str, wiring: &LocalWiring) -> PathBuf {
    std::env::temp_dir()
        .join("commerce-local")
        .join(format!("{}{stack_name}-{}-rate-limits.yaml", wiring.database_prefix, wiring.port_offset))
}

/// Writes `rules` to `path` for the gateway; returns the path.
fn write_rate_limits(rules: &RateLimitsFile, path: &Path) -> anyhow::Result<PathBuf> {
    let text = rules
        .to_text("Rate-limit rules of the gateway, merged by commerce local up.")
        .context("cannot write the rate-limit rules as YAML")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(path = %path.display(), rules = rules.rules.len(), "gateway rate-limit rules written");
    Ok(path.to_owned())
}

/// Flags a service gets from the stack on this machine.
fn stack_flags(service: Service, stack: &CommerceStack, demo: bool) -> Vec<String> {
    let spec = &stack.spec;
    let duration = |d: &_| humantime::format_duration(Duration::from(*d)).to_string();
    match service {
        Service::Auth => {
            let mut flags = vec![
                format!("--access-token-ttl={}", duration(&spec.auth.access_token_ttl)),
                format!("--refresh-token-ttl={}", duration(&spec.auth.refresh_token_ttl)),
            ];
            if demo {
                flags.extend([
                    format!("--bootstrap-admin-email={DEMO_ADMIN_EMAIL}"),
                    format!("--bootstrap-admin-password={DEMO_PASSWORD}"),
                    format!("--bootstrap-courier-email={DEMO_COURIER_EMAIL}"),
                    format!("--bootstrap-courier-password={DEMO_PASSWORD}"),
                ]);
            }
            flags
        }
        // The catalog seeds itself before it serves, and clears its cache.
        Service::Catalog if demo => vec!["--seed-demo-catalog".to_owned()],
        Service::Gateway => spec
            .gateway
            .cors
            .iter()
            .flat_map(|cors| cors.allowed_origins.iter())
            .map(|origin| format!("--cors-origin={origin}"))
            .collect(),
        _ => Vec::new(),
    }
}

/// Says which parts of the stack a one-process shop cannot honour.
fn note_ignored_settings(stack: &CommerceStack) {
    let spec = &stack.spec;
    if spec
        .services
        .values()
        .any(|s| s.replicas.is_some() || s.autoscaling.is_some() || s.resources.is_some())
    {
        tracing::info!(
            "replicas, autoscaling and resources apply in a cluster only; locally each service runs once"
        );
    }
    if spec.services.values().any(|s| !s.env.is_empty()) {
        tracing::warn!("services.*.env is not applied locally: the services share one process environment");
    }
    tracing::info!(
        "infrastructure comes from --postgres-admin-url/--kafka-brokers/--redis-url, not from the stack file"
    );
}

/// What `local up` prints once the shop is ready.
fn banner(
    name: &str,
    wiring: &LocalWiring,
    enabled: &[Service],
    cold_start: Duration,
    stocked: Option<anyhow::Result<usize>>,
    demo_stock: i64,
) -> String {
    let gateway = wiring.gateway_url();
    let mut out = format!(
        "\nShop {name:?} is ready: {} services in {:.1} s.\n\n  gateway    {gateway}  (OpenAPI: {gateway}/api/openapi.json)\n",
        enabled.len(),
        cold_start.as_secs_f64()
    );
    for service in enabled {
        let ports = wiring.ports(*service);
        let grpc = ports.grpc.map(|port| format!("grpc 127.0.0.1:{port}  ")).unwrap_or_default();
        out.push_str(&format!(
            "  {:<12} {grpc}admin http://127.0.0.1:{}/readyz\n",
            service.name(),
            ports.admin
        ));
    }
    match stocked {
        Some(Ok(count)) => out.push_str(&format!(
            "\nDemo data: {} products ({count} never stocked before got {} units); accounts {DEMO_ADMIN_EMAIL} and {DEMO_COURIER_EMAIL}, password {DEMO_PASSWORD}.\n",
            demo::demo_product_count(),
            demo_stock
        )),
        Some(Err(error)) => out.push_str(&format!("\nDemo stock could not be set: {error:#}\n")),
        None => {}
    }
    if enabled.contains(&Service::Gateway) {
        out.push_str(&demo::example_requests(&gateway, DEMO_ADMIN_EMAIL, DEMO_COURIER_EMAIL, DEMO_PASSWORD));
    }
    out.push_str("\nCtrl-C stops the shop.\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(file: &str) -> String {
        let path = format!("{}/../../manifests/examples/{file}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
    }

    #[test]
    fn every_example_stack_parses_and_the_local_one_enables_every_service() {
        for file in ["minimal.yaml", "full.yaml", "local.yaml"] {
            parse_stack(&example(file)).unwrap_or_else(|error| panic!("{file}: {error:#}"));
        }
        let local = parse_stack(&example("local.yaml")).expect("local.yaml");
        assert_eq!(local.spec.enabled_services().collect::<Vec<_>>(), Service::ALL);
    }

    #[test]
    fn a_disabled_service_is_not_enabled_and_stack_settings_become_flags() {
        let stack = parse_stack(&example("full.yaml")).expect("full.yaml");
        assert!(!stack.spec.enabled_services().any(|s| s == Service::Notification));
        let gateway = stack_flags(Service::Gateway, &stack, true);
        assert_eq!(gateway, ["--cors-origin=https://shop.example.com"]);
        let auth = stack_flags(Service::Auth, &stack, false);
        // full.yaml sets 10m and 168h.
        assert_eq!(auth, ["--access-token-ttl=10m", "--refresh-token-ttl=7days"]);
    }

    #[test]
    fn the_full_examples_rules_and_policy_reach_the_gateway_in_its_own_format() {
        let yaml = example("full.yaml");
        let stack = parse_stack(&yaml).expect("full.yaml");
        let name = stack.metadata.name.clone().expect("a name");
        let policies = parse_policies(&yaml, &name).expect("policies");
        assert_eq!(policies.len(), 1, "full.yaml has one RateLimitPolicy for its stack");
        assert!(parse_policies(&yaml, "another-stack").expect("policies").is_empty());

        let rules = rate_limits(&stack, &policies);
        let own = stack.spec.gateway.rate_limits.len();
        assert!(own > 0, "full.yaml has rules of its own");
        assert_eq!(rules.rules.len(), own + policies[0].spec.rules.len());
        let dir = std::env::temp_dir().join(format!("commerce-local-test-{}", uuid::Uuid::new_v4()));
        let path = write_rate_limits(&rules, &dir.join("rules.yaml")).expect("written");
        let text = std::fs::read_to_string(&path).expect("readable");
        std::fs::remove_dir_all(&dir).expect("cleaned up");
        // The gateway's own parser accepts the file, with every rule in it.
        #[cfg(feature = "gateway")]
        {
            let parsed =
                commerce_gateway::ratelimit::rules::parse_rules_file(&text).expect("the gateway parses it");
            assert_eq!(parsed.len(), rules.rules.len(), "{text}");
        }
        for rule in &rules.rules {
            assert!(text.contains(&format!("name: {}", rule.gateway_name())), "{} missing:\n{text}", rule.id);
        }
    }

    #[test]
    fn a_file_without_a_commerce_stack_is_rejected() {
        let error = parse_stack("kind: ConfigMap\n").expect_err("no stack").to_string();
        assert!(error.contains("CommerceStack"), "{error}");
    }
}
