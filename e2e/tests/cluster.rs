//! Real pods: the operator installed by Helm from the image `make images`
//! built, a `CommerceStack` becoming a shop of real containers on the node
//! of `e2e/scripts/node.sh`, and a client on the host reaching it through
//! the Ingress by host name.
//!
//! The cluster is set up once per test process by whichever test runs first
//! ([`cluster`]): the previous run's stack is deleted, the chart is
//! installed (or upgraded) into `commerce-system`, and a fresh stack is
//! applied in [`STACK_NAMESPACE`] against the machine's Postgres, Redis and
//! Kafka, which pods reach through the `commerce-infra` Services. The tests
//! then take turns ([`TURN`]): they scale, kill and roll pods, which would
//! disturb each other's figures. Both namespaces carry the node selector
//! annotation that sends their pods to the real node (k8s.sh keeps every
//! other namespace on kwok's fake node).

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use commerce_e2e::local_kube_client;
use commerce_operator::build::names::database_name;
use commerce_topology::Service;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api as KubeApi, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::api::{Api, Session};
use support::invariants::{Databases, assert_invariants};
use tokio::sync::{Mutex, OnceCell};

/// Where the chart installs the operator.
const OPERATOR_NAMESPACE: &str = "commerce-system";
const RELEASE: &str = "commerce-operator";
/// The Lease the operator's replicas compete for (its default name).
const LEASE_NAME: &str = "commerce-operator";
/// The stack under test; the operator watches this namespace only, so the
/// host-process operators of tests/operator.rs and this one never meet.
const STACK_NAMESPACE: &str = "cluster-e2e";
const STACK: &str = "shop";
/// The Ingress host; the client resolves it to Traefik's entrypoint on
/// 127.0.0.1, as a DNS record would point it at a load balancer.
const INGRESS_HOST: &str = "shop.commerce.test";
/// The annotation (PodNodeSelector) that puts a namespace's pods on the
/// real node.
const NODE_SELECTOR_ANNOTATION: &str = "scheduler.alpha.kubernetes.io/node-selector";
const REAL_NODE: &str = "commerce-stack.dev/node=real";
/// Images the node must hold (imported by `node.sh import`), never pulled.
const IMAGES: [&str; 2] = ["ghcr.io/commerce-stack/commerce", "ghcr.io/commerce-stack/commerce-operator"];
/// Bootstrap accounts of the stack's auth service (support::shop's names,
/// so support::api's admin() and courier() log in to them).
const BOOTSTRAP_SECRET: &str = "shop-bootstrap";

/// From `helm install` to both operator pods Ready, and from applying the
/// stack to `Ready`: image import and pod start take seconds, but nine
/// services connecting to Kafka on two busy cores take longer.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// A deleted leader's Lease expires after 15 s; the standby takes it soon after.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(250);

/// The tests take turns on the one cluster.
static TURN: Mutex<()> = Mutex::const_new(());
/// The set-up, done once per process; only plain data crosses test runtimes
/// (a kube `Client` belongs to the runtime that made it).
static CLUSTER: OnceCell<std::result::Result<Cluster, String>> = OnceCell::const_new();

/// What the set-up measured.
#[derive(Debug, Clone)]
struct Cluster {
    /// `helm upgrade --install --wait` until both operator pods were Ready.
    operator_install: Duration,
    /// Stack applied until its `Ready` condition was True.
    stack_ready: Duration,
    /// Stack applied until every service Deployment was available.
    pods_ready: Duration,
}

/// A test's turn on the cluster: the lock, what the set-up measured, and
/// clients of the API and of the shop. Destructure it with `_turn` bound
/// (`let Turn { _turn, api, .. }`): fields left to `..` are dropped at once,
/// and with them the lock.
struct Turn {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    cluster: Cluster,
    client: Client,
    api: Api,
}

/// Waits for the turn, sets the cluster up if no test has yet, and makes
/// this test's clients.
async fn take_turn() -> Result<Turn> {
    let turn = TURN.lock().await;
    let cluster = cluster().await?;
    Ok(Turn { _turn: turn, cluster, client: local_kube_client().await?, api: ingress_api()? })
}

/// Selects the pods of one service of the stack under test.
fn component_selector(service: &str) -> String {
    format!("app.kubernetes.io/instance={STACK},app.kubernetes.io/component={service}")
}

async fn cluster() -> Result<Cluster> {
    CLUSTER
        .get_or_init(|| async { set_up().await.map_err(|error| format!("{error:#}")) })
        .await
        .clone()
        .map_err(|error| anyhow::anyhow!("the cluster set-up failed (see the first test's output): {error}"))
}

async fn set_up() -> Result<Cluster> {
    let client = local_kube_client().await?;
    check_node(&client).await?;
    remove_previous_stack(&client).await?;

    ensure_namespace(&client, OPERATOR_NAMESPACE).await?;
    // Before the install: the chart puts the operator's Role there.
    ensure_namespace(&client, STACK_NAMESPACE).await?;
    let started = Instant::now();
    helm_install()?;
    let operator_install = started.elapsed();
    eprintln!("operator installed by helm, both pods Ready, in {operator_install:.1?}");

    create_secrets()?;
    let started = Instant::now();
    kubectl_apply(&stack_manifest())?;
    kubectl(&[
        "wait",
        "--for=condition=Ready",
        &format!("commercestack/{STACK}"),
        "-n",
        STACK_NAMESPACE,
        &format!("--timeout={}s", READY_TIMEOUT.as_secs()),
    ])
    .context("kubectl wait --for=condition=Ready on the stack")?;
    let stack_ready = started.elapsed();
    kubectl(&[
        "wait",
        "--for=condition=Available",
        "deployment",
        "-l",
        &format!("app.kubernetes.io/instance={STACK}"),
        "-n",
        STACK_NAMESPACE,
        "--timeout=120s",
    ])?;
    let pods_ready = started.elapsed();
    // A Service may answer a moment after its pods are Ready, and the
    // gateway's callers find a new peer at their next DNS resolution.
    let api = ingress_api()?;
    wait_until("the catalog to answer through the Ingress", Duration::from_secs(60), || async {
        Ok(api.get("/api/products?page_size=1", None).await.ok().filter(|a| a.status.is_success()))
    })
    .await?;
    let serving = started.elapsed();
    eprintln!(
        "stack applied -> Ready in {stack_ready:.1?}; every Deployment available after {pods_ready:.1?}; \
         the catalog answered through the Ingress after {serving:.1?}"
    );
    Ok(Cluster { operator_install, stack_ready, pods_ready })
}

/// The real node is Ready and holds the project's images.
async fn check_node(client: &Client) -> Result<()> {
    let name = std::env::var("COMMERCE_NODE_NAME").unwrap_or_else(|_| "commerce-node-0".into());
    let node = KubeApi::<Node>::all(client.clone())
        .get_opt(&name)
        .await?
        .with_context(|| format!("no node {name}: start it with `bash e2e/scripts/node.sh up`"))?;
    let status = node.status.unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    let ready = conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
    ensure!(ready, "node {name} is not Ready: see `bash e2e/scripts/node.sh status`");
    // Under disk pressure the kubelet deletes the images no container uses,
    // the imported ones included: name the cause rather than the symptom.
    let pressure: Vec<String> = conditions
        .iter()
        .filter(|c| c.type_.ends_with("Pressure") && c.status == "True")
        .map(|c| format!("{}: {}", c.type_, c.message.as_deref().unwrap_or("no message")))
        .collect();
    ensure!(
        pressure.is_empty(),
        "node {name} is under pressure ({}); free room on this machine (`make prune-cache` removes superseded build \
         artifacts), then run `bash e2e/scripts/node.sh import`",
        pressure.join("; ")
    );
    let version = env!("CARGO_PKG_VERSION");
    let held: Vec<String> = status
        .images
        .unwrap_or_default()
        .into_iter()
        .flat_map(|image| image.names.unwrap_or_default())
        .collect();
    for image in IMAGES {
        let reference = format!("{image}:{version}");
        ensure!(
            held.iter().any(|name| name == &reference),
            "node {name} does not hold {reference}: run `make images` and `bash e2e/scripts/node.sh import`"
        );
    }
    Ok(())
}

/// Deletes the stack of an earlier run and waits until it is gone (the
/// operator drops its databases and topics: `deletionPolicy: Delete`), then
/// its namespace.
async fn remove_previous_stack(client: &Client) -> Result<()> {
    let namespaces = KubeApi::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
    if namespaces.get_opt(STACK_NAMESPACE).await?.is_none() {
        return Ok(());
    }
    eprintln!("removing the previous run's namespace {STACK_NAMESPACE}");
    let _ = kubectl(&[
        "delete",
        "commercestack",
        STACK,
        "-n",
        STACK_NAMESPACE,
        "--ignore-not-found",
        "--timeout=120s",
    ]);
    if kubectl(&["get", "commercestack", STACK, "-n", STACK_NAMESPACE, "--ignore-not-found", "-o", "name"])?
        .contains(STACK)
    {
        // No operator ran to finish it (the release was uninstalled).
        patch_stack(&json!({ "metadata": { "finalizers": null } }))?;
    }
    namespaces.delete(STACK_NAMESPACE, &DeleteParams::default()).await.ok();
    wait_until("the previous namespace to be gone", Duration::from_secs(180), || async {
        Ok(namespaces.get_opt(STACK_NAMESPACE).await?.is_none().then_some(()))
    })
    .await
}

/// Creates `name` with the real-node selector, or adds it to an existing one.
async fn ensure_namespace(client: &Client, name: &str) -> Result<()> {
    let manifest = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "annotations": { NODE_SELECTOR_ANNOTATION: REAL_NODE },
            "labels": { "app.kubernetes.io/part-of": "commerce-stack-e2e" },
        },
    });
    kubectl_apply(&manifest)?;
    let namespaces = KubeApi::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
    let namespace = namespaces.get(name).await?;
    ensure!(
        namespace.annotations().get(NODE_SELECTOR_ANNOTATION).map(String::as_str) == Some(REAL_NODE),
        "namespace {name} does not select the real node"
    );
    Ok(())
}

fn helm_install() -> Result<()> {
    // No `kubectl apply` of the chart's crds/ first: Helm installs them on
    // the first install only, and the operator (crds.manage, on by default)
    // brings them to its version when it starts leading.
    helm_upgrade(
        &repo().join("charts/commerce-operator"),
        &[&format!("watchNamespaces={{{STACK_NAMESPACE}}}")],
    )
}

/// `helm upgrade --install` of `chart` (a directory or a packaged .tgz)
/// with the local image, waiting for the operator's pods; `values` are
/// `--set` pairs of the chart's version.
fn helm_upgrade(chart: &std::path::Path, values: &[&str]) -> Result<()> {
    let mut command = Command::new("helm");
    command
        .args(["upgrade", "--install", RELEASE])
        .arg(chart)
        .args(["--namespace", OPERATOR_NAMESPACE, "--wait", "--timeout"])
        .arg(format!("{}s", INSTALL_TIMEOUT.as_secs()))
        // The image is imported into the node, never pulled.
        .args(["--set", "image.pullPolicy=Never"])
        // Its tag stays the version while its content changes from build to
        // build: an annotation with the archive's digest rolls the pods
        // onto a rebuilt image.
        .args([
            "--set-string",
            &format!(
                "podAnnotations.commerce-stack\\.dev/image-archive={}",
                image_digest("commerce-operator")?
            ),
        ]);
    for value in values {
        command.args(["--set", value]);
    }
    let output = command
        .env("KUBECONFIG", commerce_e2e::local_kubeconfig_path())
        .output()
        .context("running helm (built by e2e/scripts/k8s.sh; source e2e/infra.env to put it on PATH)")?;
    ensure!(
        output.status.success(),
        "helm upgrade --install {} failed: {}{}",
        chart.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// The sha256 of the archive `make images` wrote for `name`.
fn image_digest(name: &str) -> Result<String> {
    let cache =
        std::env::var("COMMERCE_CACHE_DIR").context("COMMERCE_CACHE_DIR is unset: source e2e/infra.env")?;
    let archive = format!("{cache}/images/{name}-{}.tar", env!("CARGO_PKG_VERSION"));
    let output = Command::new("sha256sum").arg(&archive).output().context("running sha256sum")?;
    ensure!(output.status.success(), "cannot read {archive}: run `make images`");
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text.split_whitespace().next().unwrap_or_default().to_owned())
}

fn create_secrets() -> Result<()> {
    let password = std::env::var("COMMERCE_POSTGRES_PASSWORD").unwrap_or_else(|_| "commerce-dev".into());
    kubectl_apply(&json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": "postgres-admin", "namespace": STACK_NAMESPACE },
        "stringData": { "username": "postgres", "password": password },
    }))?;
    kubectl_apply(&json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": BOOTSTRAP_SECRET, "namespace": STACK_NAMESPACE },
        "stringData": {
            "admin-password": support::shop::ADMIN_PASSWORD,
            "courier-password": support::shop::COURIER_PASSWORD,
        },
    }))?;
    Ok(())
}

/// The stack under test: every service, the machine's infrastructure through
/// the `commerce-infra` Services, the Ingress on Traefik, data dropped with
/// the stack.
fn stack_manifest() -> Value {
    let port =
        |name: &str, default: u16| std::env::var(name).ok().and_then(|p| p.parse().ok()).unwrap_or(default);
    json!({
        "apiVersion": "commerce-stack.dev/v1alpha1",
        "kind": "CommerceStack",
        "metadata": { "name": STACK, "namespace": STACK_NAMESPACE },
        "spec": {
            "version": env!("CARGO_PKG_VERSION"),
            "image": { "pullPolicy": "Never" },
            "deletionPolicy": "Delete",
            "kafka": { "external": { "bootstrapServers": [
                format!("kafka.commerce-infra.svc.cluster.local:{}", port("COMMERCE_KAFKA_POD_PORT", 29094)),
            ] } },
            "postgres": { "external": {
                "host": "postgres.commerce-infra.svc.cluster.local",
                "port": port("COMMERCE_POSTGRES_PORT", 55432),
                "adminSecret": { "name": "postgres-admin" },
            } },
            "redis": { "external": {
                "host": "redis.commerce-infra.svc.cluster.local",
                "port": port("COMMERCE_REDIS_PORT", 56379),
            } },
            "gateway": { "ingress": { "host": INGRESS_HOST, "className": "traefik" } },
            "services": {
                "auth": { "env": service_env("auth") },
                "gateway": { "env": service_env("gateway") },
            },
        },
    })
}

/// The `env` the stack gives `service` (rollouts add to it).
fn service_env(service: &str) -> Vec<Value> {
    let secret_env = |name: &str, key: &str| json!({ "name": name, "valueFrom": { "secretKeyRef": { "name": BOOTSTRAP_SECRET, "key": key } } });
    match service {
        "auth" => vec![
            json!({ "name": "COMMERCE_BOOTSTRAP_ADMIN_EMAIL", "value": support::shop::ADMIN_EMAIL }),
            secret_env("COMMERCE_BOOTSTRAP_ADMIN_PASSWORD", "admin-password"),
            json!({ "name": "COMMERCE_BOOTSTRAP_COURIER_EMAIL", "value": support::shop::COURIER_EMAIL }),
            secret_env("COMMERCE_BOOTSTRAP_COURIER_PASSWORD", "courier-password"),
        ],
        // Every client of these tests is this one machine, one address
        // behind the Ingress: the built-in per-address limits would throttle
        // the load itself, not a client. (Per-user limits stay.)
        "gateway" => vec![
            json!({ "name": "COMMERCE_RATELIMIT_DEFAULT_PER_MINUTE", "value": "0" }),
            json!({ "name": "COMMERCE_RATELIMIT_AUTH_PER_MINUTE", "value": "0" }),
        ],
        _ => Vec::new(),
    }
}

/// A client of the shop through the Ingress: `http://<INGRESS_HOST>:<port>`,
/// the name resolved to Traefik's entrypoint on loopback.
fn ingress_api() -> Result<Api> {
    let port: u16 = std::env::var("COMMERCE_INGRESS_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(28080);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .resolve(INGRESS_HOST, SocketAddr::from(([127, 0, 0, 1], port)))
        .build()?;
    // One stack behind the Ingress for the whole run.
    Ok(Api { base: format!("http://{INGRESS_HOST}:{port}"), http, shop: STACK.to_owned() })
}

/// A new category with one product of `stock` units priced `price_minor`
/// cents, created by the bootstrap admin, and a new customer: what most
/// tests start from.
async fn product_and_customer(
    api: &Api,
    category: &str,
    product: &str,
    price_minor: i64,
    stock: i64,
) -> Result<(String, Session)> {
    let admin = api.admin().await?;
    warm_inventory(api, &admin).await?;
    let category_id = api.create_category(&admin, category).await?;
    let product = api.create_product(&admin, &category_id, product, price_minor, stock).await?;
    let customer = api.register_customer(&format!("cluster-{}", category.to_lowercase())).await?;
    Ok((product, customer))
}

/// Waits until the inventory service answers a restock within the gateway's
/// deadline. A freshly rolled-out inventory pod's first answer (its first
/// connections, under the whole node's start-up load) once took longer and
/// came back 504; restock adds stock, so neither the gateway nor
/// `create_product` may retry it. The probe restocks a throwaway product id
/// that nothing else uses (its one unit keeps the stock invariant).
async fn warm_inventory(api: &Api, admin: &Session) -> Result<()> {
    let probe = format!("/api/admin/inventory/{}/restock", uuid::Uuid::new_v4());
    support::wait_for("the inventory service to answer a restock", support::api::ORDER_TIMEOUT, || async {
        let answer = api.post(&probe, Some(&admin.access_token), &json!({"quantity": 1})).await?;
        ensure!(!answer.status.is_client_error(), "restock refused: {} {}", answer.status, answer.body);
        Ok(answer.status.is_success().then_some(()))
    })
    .await?;
    Ok(())
}

/// The stack's databases, as the operator names them.
fn stack_databases() -> Result<Databases> {
    let admin_url = std::env::var("COMMERCE_POSTGRES_ADMIN_URL")
        .context("COMMERCE_POSTGRES_ADMIN_URL is unset: source e2e/infra.env")?;
    let services: Vec<Service> = Service::ALL.iter().copied().filter(|s| s.spec().database).collect();
    Ok(Databases::named(&admin_url, &services, |service| database_name(STACK_NAMESPACE, STACK, service)))
}

#[tokio::test]
async fn the_operator_runs_as_two_ready_pods_and_the_lease_moves_when_the_leader_pod_is_deleted() -> Result<()>
{
    let Turn { _turn, cluster, client, .. } = take_turn().await?;
    eprintln!("operator install took {:.1?}", cluster.operator_install);
    let pods = KubeApi::<Pod>::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let selector = ListParams::default().labels(&format!("app.kubernetes.io/name={RELEASE}"));
    let running = pods.list(&selector).await?;
    let ready: Vec<String> =
        running.items.iter().filter(|pod| pod_ready(pod)).map(ResourceExt::name_any).collect();
    ensure!(ready.len() == 2, "expected 2 Ready operator pods, got {ready:?}");
    for pod in &running.items {
        let node = pod.spec.as_ref().and_then(|spec| spec.node_name.clone()).unwrap_or_default();
        ensure!(
            node.starts_with("commerce-node"),
            "operator pod {} runs on {node}, not the real node",
            pod.name_any()
        );
    }

    let leases = KubeApi::<Lease>::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let leader = wait_until("a Lease holder among the operator pods", HANDOVER_TIMEOUT, || async {
        Ok(lease_holder(&leases).await?.filter(|holder| ready.contains(holder)))
    })
    .await?;
    eprintln!("leader: {leader}; deleting its pod");
    let deleted = Instant::now();
    pods.delete(&leader, &DeleteParams::default()).await?;
    let successor = wait_until("another pod to hold the Lease", HANDOVER_TIMEOUT, || async {
        Ok(lease_holder(&leases).await?.filter(|holder| holder != &leader))
    })
    .await?;
    let handover = deleted.elapsed();
    // The leader stops on SIGTERM and releases the Lease; the standby takes
    // it at its next attempt (every 5 s), not after the 15 s expiry.
    wait_until("the old leader's pod to be gone", HANDOVER_TIMEOUT, || async {
        Ok(pods.get_opt(&leader).await?.is_none().then_some(()))
    })
    .await?;
    let gone = deleted.elapsed();
    eprintln!(
        "the Lease moved to {successor} {handover:.1?} after the leader pod was deleted; the pod was gone after {gone:.1?}"
    );
    ensure!(handover < Duration::from_secs(12), "the Lease took {handover:?} to move: was it released?");
    ensure!(gone < Duration::from_secs(20), "the leader pod took {gone:?} to stop: SIGTERM ignored?");

    // A change made now is applied by the new leader.
    set_replicas("notification", Some(2))?;
    let deployments =
        KubeApi::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), STACK_NAMESPACE);
    let name = format!("{STACK}-notification");
    wait_until("the new leader to scale notification to 2", HANDOVER_TIMEOUT, || async {
        let deployment = deployments.get(&name).await?;
        let available = deployment.status.and_then(|status| status.available_replicas).unwrap_or_default();
        Ok((deployment.spec.and_then(|spec| spec.replicas) == Some(2) && available == 2).then_some(()))
    })
    .await?;
    set_replicas("notification", None)?;
    Ok(())
}

/// The chart as first released (version 0.1.0: `helm package` of the chart
/// at commit 0a66009): CRDs without the version annotations, a ClusterRole,
/// one `watchNamespace`, and an operator that never writes CRDs.
const PREVIOUS_CHART: &str = "e2e/fixtures/commerce-operator-0.1.0.tgz";

/// The project's CRDs by name.
const CRD_NAMES: [&str; 2] = ["commercestacks.commerce-stack.dev", "ratelimitpolicies.commerce-stack.dev"];

#[tokio::test]
async fn upgrading_from_the_previous_chart_brings_the_crds_to_the_new_version_and_restarts_no_stack_pod()
-> Result<()> {
    let Turn { _turn, client, .. } = take_turn().await?;
    let crds = KubeApi::<CustomResourceDefinition>::all(client.clone());

    // The cluster as the previous chart left it: its CRDs (replaced whole,
    // as a fresh install of it would have made them) and its operator.
    let previous = repo().join(PREVIOUS_CHART);
    let output = Command::new("tar")
        .arg("-xzOf")
        .arg(&previous)
        .arg("commerce-operator/crds/commerce-stack.yaml")
        .output()?;
    ensure!(
        output.status.success(),
        "reading the CRDs of {PREVIOUS_CHART}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout)?;
    for document in serde_yaml_ng::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(document)?;
        if value.is_null() {
            continue;
        }
        let mut old: CustomResourceDefinition = serde_json::from_value(value)?;
        let name = old.name_any();
        old.metadata.resource_version = crds.get(&name).await?.metadata.resource_version;
        crds.replace(&name, &kube::api::PostParams::default(), &old).await?;
    }
    helm_upgrade(&previous, &[&format!("watchNamespace={STACK_NAMESPACE}")])?;
    for name in CRD_NAMES {
        let crd = crds.get(name).await?;
        ensure!(
            !crd.annotations().contains_key(commerce_operator::crd::VERSION_ANNOTATION),
            "{name} already carries a version annotation under the previous chart"
        );
    }
    wait_stack_ready(&client).await?;
    let pods_before = stack_pods(&client).await?;
    let rows_before = row_counts().await?;
    ensure!(rows_before.iter().all(|(_, rows)| *rows > 0), "no data to keep: {rows_before:?}");

    // The upgrade, as a user runs it: no CRD step of their own.
    let started = Instant::now();
    helm_install()?;
    let upgraded = started.elapsed();
    let expected = commerce_operator::crd::crds()?;
    let annotations = |crd: &CustomResourceDefinition| {
        [commerce_operator::crd::VERSION_ANNOTATION, commerce_operator::crd::DIGEST_ANNOTATION]
            .map(|key| crd.annotations().get(key).cloned())
    };
    wait_until("the operator to bring both CRDs to its version", Duration::from_secs(60), || async {
        for want in &expected {
            let have = crds.get(&want.name_any()).await?;
            if annotations(&have) != annotations(want) {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;
    let crds_current = started.elapsed();
    for want in &expected {
        let have = crds.get(&want.name_any()).await?;
        ensure!(
            serde_json::to_value(&have.spec.versions)? == serde_json::to_value(&want.spec.versions)?,
            "{}: the served versions and schemas differ from this operator's",
            want.name_any()
        );
    }
    // Namespace-scoped now: a Role in the stack's namespace, no ClusterRole
    // with the namespaced rules.
    let roles = KubeApi::<k8s_openapi::api::rbac::v1::Role>::namespaced(client.clone(), STACK_NAMESPACE);
    ensure!(roles.get_opt(RELEASE).await?.is_some(), "no Role {RELEASE} in {STACK_NAMESPACE}");
    let cluster_roles = KubeApi::<k8s_openapi::api::rbac::v1::ClusterRole>::all(client.clone());
    ensure!(cluster_roles.get_opt(RELEASE).await?.is_none(), "ClusterRole {RELEASE} is still there");

    wait_stack_ready(&client).await?;
    let pods_after = stack_pods(&client).await?;
    let rows_after = row_counts().await?;
    eprintln!(
        "FIGURE upgrade 0.1.0 -> {}: operator pods Ready after {upgraded:.1?}, CRDs current after \
         {crds_current:.1?}; {} stack pods kept, rows {rows_after:?}",
        env!("CARGO_PKG_VERSION"),
        pods_after.len()
    );
    // No pod replaced or restarted: every pod now was there before, with
    // the same uid and restarts. One may be gone without a restart: the
    // stack's autoscalers scale on CPU, and on this busy machine one had
    // added a notification pod just before and removed it meanwhile.
    let replaced: Vec<_> = pods_after.iter().filter(|pod| !pods_before.contains(pod)).collect();
    ensure!(
        replaced.is_empty() && pods_after.len() >= Service::ALL.len(),
        "stack pods changed:\nbefore {pods_before:?}\nafter  {pods_after:?}"
    );
    ensure!(rows_after == rows_before, "data changed: before {rows_before:?}, after {rows_after:?}");
    Ok(())
}

/// Waits until the stack says Ready for its current generation.
async fn wait_stack_ready(client: &Client) -> Result<()> {
    let stacks = KubeApi::<commerce_api::CommerceStack>::namespaced(client.clone(), STACK_NAMESPACE);
    wait_until("the stack to be Ready for its generation", READY_TIMEOUT, || async {
        let stack = stacks.get(STACK).await?;
        let status = stack.status.as_ref();
        let observed = status.and_then(|s| s.observed_generation) == stack.metadata.generation;
        let ready = status
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        Ok((observed && ready).then_some(()))
    })
    .await
}

/// The stack's pods: name, uid and restarts, sorted.
async fn stack_pods(client: &Client) -> Result<Vec<(String, String, i32)>> {
    pods_and_restarts(client, &format!("app.kubernetes.io/instance={STACK}")).await
}

/// The pods of the stack's namespace that `selector` selects: name, uid and
/// restarts (of all containers), sorted.
async fn pods_and_restarts(client: &Client, selector: &str) -> Result<Vec<(String, String, i32)>> {
    let pods = KubeApi::<Pod>::namespaced(client.clone(), STACK_NAMESPACE);
    let mut found: Vec<(String, String, i32)> = pods
        .list(&ListParams::default().labels(selector))
        .await?
        .items
        .iter()
        .map(|pod| {
            let restarts = pod
                .status
                .as_ref()
                .and_then(|status| status.container_statuses.as_ref())
                .map_or(0, |statuses| statuses.iter().map(|s| s.restart_count).sum());
            (pod.name_any(), pod.uid().unwrap_or_default(), restarts)
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Rows of the tables a customer's data lives in.
async fn row_counts() -> Result<Vec<(&'static str, i64)>> {
    let databases = stack_databases()?;
    let mut counts = Vec::new();
    for (service, table) in
        [(Service::Auth, "users"), (Service::Order, "orders"), (Service::Catalog, "products")]
    {
        let pool = databases.pool(service).await?;
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(&pool).await?;
        pool.close().await;
        counts.push((table, rows));
    }
    Ok(counts)
}

#[tokio::test]
async fn a_commerce_stack_of_real_pods_becomes_ready_through_native_grpc_probes() -> Result<()> {
    let Turn { _turn, cluster, client, .. } = take_turn().await?;
    eprintln!(
        "stack Ready {:.1?} after apply, all Deployments available after {:.1?}",
        cluster.stack_ready, cluster.pods_ready
    );
    let pods = KubeApi::<Pod>::namespaced(client.clone(), STACK_NAMESPACE);
    let list =
        pods.list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={STACK}"))).await?;
    let mut seen = std::collections::BTreeSet::new();
    for pod in &list.items {
        let Some(component) = pod.labels().get("app.kubernetes.io/component").cloned() else { continue };
        if !pod_ready(pod) {
            continue;
        }
        let spec = pod.spec.as_ref().context("pod without spec")?;
        ensure!(
            spec.node_name.as_deref().is_some_and(|node| node.starts_with("commerce-node")),
            "{} is not on the real node",
            pod.name_any()
        );
        let container = &spec.containers[0];
        let status = pod.status.as_ref().and_then(|s| s.container_statuses.clone()).unwrap_or_default();
        ensure!(
            status
                .iter()
                .all(|s| s.ready && s.image_id.starts_with("sha256:") || s.image_id.contains("@sha256:")),
            "{}: a container is not ready or has no image id: {status:?}",
            pod.name_any()
        );
        if component != "gateway" {
            let readiness = container.readiness_probe.as_ref().context("no readiness probe")?;
            ensure!(readiness.grpc.is_some(), "{component} is not probed over gRPC: {readiness:?}");
        }
        seen.insert(component);
    }
    let expected: std::collections::BTreeSet<String> =
        Service::ALL.iter().map(|service| service.name().to_owned()).collect();
    ensure!(seen == expected, "Ready pods per service: {seen:?}, expected {expected:?}");
    Ok(())
}

#[tokio::test]
async fn a_customer_orders_through_the_ingress_by_host_name_and_the_saga_invariants_hold() -> Result<()> {
    let Turn { _turn, api, .. } = take_turn().await?;
    let (product, customer) = product_and_customer(&api, "Cluster", "Real pod lamp", 2_500, 20).await?;
    let listed = api.get(&format!("/api/products/{product}"), Some(&customer.access_token)).await?;
    ensure!(
        listed.status.is_success(),
        "product read through the Ingress: {} {}",
        listed.status,
        listed.body
    );
    let cart = api
        .post("/api/cart/items", Some(&customer.access_token), &json!({"product_id": product, "quantity": 2}))
        .await?;
    ensure!(cart.status.is_success(), "add to cart: {} {}", cart.status, cart.body);

    // The first order is each service's first request of its kind (pools,
    // prepared statements, the producer): on this busy 2-core machine it once
    // outran the gateway's deadline (504). A client retries with the same
    // Idempotency-Key, which can never create a second order; the timed
    // orders come after it.
    let first = place_order_retrying(&api, &customer, &product).await?;
    api.wait_order(&customer, &first, "confirmed").await?;
    let mut latencies = Vec::new();
    for _ in 0..5 {
        let placed = Instant::now();
        let order = api.order(&customer, &[(product.as_str(), 1)], "tok_visa").await?;
        let confirmed = api.wait_order(&customer, &order, "confirmed").await?;
        latencies.push(placed.elapsed());
        ensure!(confirmed["total"]["amount_minor"] == json!(2_500), "priced by the catalog: {confirmed}");
    }
    latencies.sort();
    eprintln!(
        "order placed -> CONFIRMED through the Ingress: min {:.0?}, median {:.0?}, max {:.0?}",
        latencies[0],
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    assert_invariants(&stack_databases()?).await;
    Ok(())
}

// --- helpers ------------------------------------------------------------------

fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|status| status.conditions.as_ref())
            .is_some_and(|conditions| conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn lease_holder(leases: &KubeApi<Lease>) -> Result<Option<String>> {
    Ok(leases.get_opt(LEASE_NAME).await?.and_then(|lease| lease.spec).and_then(|spec| spec.holder_identity))
}

async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if Instant::now() > deadline {
            match last_error {
                Some(error) => bail!("timed out after {timeout:?} waiting for {what}; last error: {error:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs the pinned kubectl against the local control plane.
fn kubectl(args: &[&str]) -> Result<String> {
    let output = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", commerce_e2e::local_kubeconfig_path())
        .output()
        .context("running kubectl (source e2e/infra.env to put the pinned one on PATH)")?;
    ensure!(
        output.status.success(),
        "kubectl {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn kubectl_apply(object: &Value) -> Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("kubectl")
        .args(["apply", "--server-side", "--field-manager=commerce-e2e", "--force-conflicts", "-f", "-"])
        .env("KUBECONFIG", commerce_e2e::local_kubeconfig_path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running kubectl")?;
    child.stdin.take().context("kubectl stdin")?.write_all(object.to_string().as_bytes())?;
    let output = child.wait_with_output()?;
    ensure!(output.status.success(), "kubectl apply failed: {}", String::from_utf8_lossy(&output.stderr));
    Ok(())
}

/// Places an order through the Ingress, retrying with the same
/// Idempotency-Key while the gateway or the order service is unavailable
/// (5xx or no answer), as a client must: the key makes the retry safe.
async fn place_order_retrying(api: &Api, customer: &Session, product: &str) -> Result<String> {
    let key = uuid::Uuid::new_v4().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match api.place_order(customer, &key, &[(product, 1)], "tok_visa").await {
            Ok(answer) if answer.status.as_u16() == 201 || answer.status.as_u16() == 200 => {
                return support::api::string(&answer.body, "id");
            }
            Ok(answer) if !answer.status.is_server_error() => {
                bail!("order refused: {} {}", answer.status, answer.body)
            }
            Ok(_) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            Ok(answer) => bail!("order still failing after 120 s: {} {}", answer.status, answer.body),
            Err(error) => return Err(error.context("order still failing after 120 s")),
        }
    }
}

/// Polls an order until it is `status`, treating a 5xx or no answer as
/// "not yet": a killed pod makes reads fail until its callers drop it.
async fn wait_status_retrying(api: &Api, customer: &Session, order: &str, status: &str) -> Result<()> {
    wait_until(&format!("order {order} to be {status}"), Duration::from_secs(120), || async {
        let answer = match api.get(&format!("/api/orders/{order}"), Some(&customer.access_token)).await {
            Ok(answer) if answer.status.is_server_error() => return Ok(None),
            Err(_) => return Ok(None),
            Ok(answer) => answer,
        };
        ensure!(answer.status.is_success(), "reading order {order}: {} {}", answer.status, answer.body);
        let current = answer.body["status"].as_str().unwrap_or_default().to_owned();
        if current == status {
            return Ok(Some(()));
        }
        ensure!(
            !["rejected", "failed", "cancelled", "delivered"].contains(&current.as_str()),
            "order {order} ended {current}, not {status}"
        );
        Ok(None)
    })
    .await
}

#[tokio::test]
async fn force_deleted_order_and_payment_pods_mid_run_lose_no_order_and_charge_none_twice() -> Result<()> {
    let Turn { _turn, client, api, .. } = take_turn().await?;
    let (product, customer) = product_and_customer(&api, "Chaos", "Sturdy mug", 900, 1_000).await?;

    let pods = KubeApi::<Pod>::namespaced(client.clone(), STACK_NAMESPACE);
    let mut orders = Vec::new();
    let started = Instant::now();
    for (round, victim) in ["order", "payment"].into_iter().enumerate() {
        let placing = {
            let api = api.clone();
            let customer = customer.clone();
            let product = product.clone();
            tokio::spawn(async move {
                let mut placed = Vec::new();
                for _ in 0..15 {
                    placed.push(place_order_retrying(&api, &customer, &product).await?);
                }
                anyhow::Ok(placed)
            })
        };
        // Mid-run: once a few orders are in, the victim's pod is killed
        // without grace (SIGKILL, no drain).
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let selector = component_selector(victim);
        for pod in pods.list(&ListParams::default().labels(&selector)).await?.items {
            eprintln!("round {round}: force-deleting {}", pod.name_any());
            pods.delete(&pod.name_any(), &DeleteParams::default().grace_period(0)).await?;
        }
        orders.extend(placing.await??);
    }
    for order in &orders {
        wait_status_retrying(&api, &customer, order, "confirmed").await?;
    }
    eprintln!("{} orders through two pod kills, all CONFIRMED after {:.1?}", orders.len(), started.elapsed());
    assert_invariants(&stack_databases()?).await;
    Ok(())
}

/// Applies a JSON merge patch to the stack under test.
fn patch_stack(patch: &Value) -> Result<()> {
    let patch = patch.to_string();
    kubectl(&["patch", "commercestack", STACK, "-n", STACK_NAMESPACE, "--type=merge", "-p", &patch])?;
    Ok(())
}

/// Sets (or, with `None`, removes) `replicas` of one service in the stack.
fn set_replicas(service: &str, replicas: Option<i32>) -> Result<()> {
    patch_stack(&json!({ "spec": { "services": { service: { "replicas": replicas } } } }))
}

/// The Ready pods of one service, by name, with their addresses.
async fn ready_pods(client: &Client, service: &str) -> Result<Vec<(String, String)>> {
    let pods = KubeApi::<Pod>::namespaced(client.clone(), STACK_NAMESPACE);
    let selector = component_selector(service);
    Ok(pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .filter(|pod| pod_ready(pod))
        .filter_map(|pod| Some((pod.name_any(), pod.status.as_ref()?.pod_ip.clone()?)))
        .collect())
}

/// Waits until `service` has exactly `count` pods, all Ready, and no other
/// (terminating ones included).
async fn wait_pods(client: &Client, service: &str, count: usize) -> Result<Vec<(String, String)>> {
    let pods = KubeApi::<Pod>::namespaced(client.clone(), STACK_NAMESPACE);
    let selector = component_selector(service);
    wait_until(&format!("{count} Ready {service} pods and no other"), READY_TIMEOUT, || async {
        let all = pods.list(&ListParams::default().labels(&selector)).await?.items;
        let ready = ready_pods(client, service).await?;
        Ok((all.len() == count && ready.len() == count).then_some(ready))
    })
    .await
}

/// `commerce_grpc_server_handled_total` of one pod for one gRPC service,
/// summed over methods and codes, read from the pod's admin port.
async fn handled_calls(http: &reqwest::Client, pod_ip: &str, grpc_service: &str) -> Result<f64> {
    let url = format!("http://{pod_ip}:{}/metrics", commerce_topology::CLUSTER_ADMIN_PORT);
    let text = http.get(&url).send().await?.error_for_status()?.text().await?;
    let needle = format!("grpc_service=\"{grpc_service}\"");
    Ok(text
        .lines()
        .filter(|line| line.starts_with("commerce_grpc_server_handled_total{") && line.contains(&needle))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

#[tokio::test]
async fn calls_to_a_scaled_out_service_spread_over_every_pod_and_scaling_back_loses_none() -> Result<()> {
    const INVENTORY: &str = "commerce.inventory.v1.InventoryService";
    let Turn { _turn, client, api, .. } = take_turn().await?;
    let (product, customer) = product_and_customer(&api, "Discovery", "Spread lamp", 1_900, 100).await?;
    let added = api
        .post("/api/cart/items", Some(&customer.access_token), &json!({"product_id": product, "quantity": 1}))
        .await?;
    ensure!(added.status.is_success(), "add to cart: {} {}", added.status, added.body);
    // Every cart read asks inventory for the availability of its lines.
    let read_cart = || async {
        let answer = api.get("/api/cart", Some(&customer.access_token)).await?;
        anyhow::Ok(answer.status.is_success())
    };
    ensure!(read_cart().await?, "the cart cannot be read");

    set_replicas("inventory", Some(3))?;
    let pods = wait_pods(&client, "inventory", 3).await?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).no_proxy().build()?;
    // Callers re-resolve the headless Service every 5 s (CoreDNS' TTL is
    // 5 s too): read the cart until every new pod has served a call.
    wait_until("every inventory pod to serve calls", Duration::from_secs(60), || async {
        for _ in 0..10 {
            read_cart().await?;
        }
        let mut served = Vec::new();
        for (_, ip) in &pods {
            served.push(handled_calls(&http, ip, INVENTORY).await?);
        }
        Ok(served.iter().all(|count| *count > 0.0).then_some(()))
    })
    .await?;

    let mut before = Vec::new();
    for (_, ip) in &pods {
        before.push(handled_calls(&http, ip, INVENTORY).await?);
    }
    const BURST: usize = 150;
    let mut failed = 0;
    for _ in 0..BURST {
        if !read_cart().await.unwrap_or(false) {
            failed += 1;
        }
    }
    ensure!(failed == 0, "{failed} of {BURST} cart reads failed");
    let mut spread = Vec::new();
    for ((name, ip), before) in pods.iter().zip(&before) {
        spread.push((name.clone(), handled_calls(&http, ip, INVENTORY).await? - before));
    }
    eprintln!("{BURST} cart reads -> inventory calls per pod: {spread:?}");
    let total: f64 = spread.iter().map(|(_, calls)| calls).sum();
    ensure!(total >= BURST as f64, "only {total} inventory calls for {BURST} cart reads");
    for (name, calls) in &spread {
        ensure!(
            *calls >= total * 0.1,
            "pod {name} served {calls} of {total} calls: the load does not spread"
        );
    }

    // Back to one replica while the reads go on: none may fail.
    let reading = {
        let api = api.clone();
        let token = customer.access_token.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (mut done, mut failures) = (0_u32, Vec::new());
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match api.get("/api/cart", Some(&token)).await {
                    Ok(answer) if answer.status.is_success() => {}
                    Ok(answer) => failures.push(format!("{} {}", answer.status, answer.body)),
                    Err(error) => failures.push(format!("{error:#}")),
                }
                done += 1;
            }
            (done, failures)
        });
        (stop, task)
    };
    set_replicas("inventory", None)?;
    wait_pods(&client, "inventory", 1).await?;
    // The callers' next re-resolution drops the removed pods.
    tokio::time::sleep(Duration::from_secs(6)).await;
    reading.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let (done, failures) = reading.1.await?;
    eprintln!("scaling inventory 3 -> 1 under {done} cart reads: {} failed", failures.len());
    ensure!(
        failures.is_empty(),
        "{} of {done} cart reads failed while scaling in: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    Ok(())
}

/// What a stream of requests saw.
#[derive(Debug, Default)]
struct Traffic {
    reads: u32,
    orders: Vec<String>,
    failures: Vec<String>,
}

/// Reads a product and, every `order_every`-th request (never with 0),
/// places an order, one request at a time per worker, until `stop`; each
/// request is tried once.
fn steady_traffic(
    api: &Api,
    customer: &Session,
    product: &str,
    workers: usize,
    order_every: u32,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Traffic>> {
    (0..workers)
        .map(|_| {
            let (api, customer, product, stop) =
                (api.clone(), customer.clone(), product.to_owned(), stop.clone());
            tokio::spawn(async move {
                let mut traffic = Traffic::default();
                let mut n = 0_u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    if order_every > 0 && n.is_multiple_of(order_every) {
                        let key = uuid::Uuid::new_v4().to_string();
                        match api.place_order(&customer, &key, &[(product.as_str(), 1)], "tok_visa").await {
                            Ok(answer) if answer.status.as_u16() == 201 => {
                                traffic
                                    .orders
                                    .push(answer.body["id"].as_str().unwrap_or_default().to_owned());
                            }
                            Ok(answer) => {
                                traffic.failures.push(format!("order: {} {}", answer.status, answer.body))
                            }
                            Err(error) => traffic.failures.push(format!("order: {error:#}")),
                        }
                    } else {
                        match api.get(&format!("/api/products/{product}"), Some(&customer.access_token)).await
                        {
                            Ok(answer) if answer.status.is_success() => traffic.reads += 1,
                            Ok(answer) => {
                                traffic.failures.push(format!("read: {} {}", answer.status, answer.body))
                            }
                            Err(error) => traffic.failures.push(format!("read: {error:#}")),
                        }
                    }
                }
                traffic
            })
        })
        .collect()
}

async fn collect(workers: Vec<tokio::task::JoinHandle<Traffic>>) -> Result<Traffic> {
    let mut all = Traffic::default();
    for worker in workers {
        let traffic = worker.await?;
        all.reads += traffic.reads;
        all.orders.extend(traffic.orders);
        all.failures.extend(traffic.failures);
    }
    Ok(all)
}

/// Services on the request path of reads and orders; a rolling update of
/// each must go unnoticed.
const ROLLED: [&str; 5] = ["gateway", "catalog", "order", "inventory", "payment"];

#[tokio::test]
async fn a_rolling_update_under_steady_reads_and_orders_fails_no_request_and_loses_no_order() -> Result<()> {
    let Turn { _turn, client, api, .. } = take_turn().await?;
    let (product, customer) = product_and_customer(&api, "Rollout", "Rolling pin", 1_200, 10_000).await?;
    let before: Vec<Vec<(String, String)>> = {
        let mut all = Vec::new();
        for service in ROLLED {
            all.push(ready_pods(&client, service).await?);
        }
        all
    };

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers = steady_traffic(&api, &customer, &product, 4, 10, &stop);
    // Some traffic before the change, so the figures include steady state.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let services: serde_json::Map<String, Value> = ROLLED
        .iter()
        .map(|service| {
            let mut env = service_env(service);
            env.push(json!({ "name": "COMMERCE_ROLLOUT_MARKER", "value": marker }));
            ((*service).to_owned(), json!({ "env": env }))
        })
        .collect();
    let started = Instant::now();
    let patch = json!({ "spec": { "services": services } });
    patch_stack(&patch)?;
    // Rolled: every service runs one new pod and no old one remains.
    for (service, old) in ROLLED.iter().zip(&before) {
        let old_names: Vec<&String> = old.iter().map(|(name, _)| name).collect();
        wait_until(&format!("{service} to run only new pods"), READY_TIMEOUT, || async {
            let now = wait_pods(&client, service, old.len()).await?;
            Ok(now.iter().all(|(name, _)| !old_names.contains(&name)).then_some(()))
        })
        .await?;
    }
    let rolled = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let traffic = collect(workers).await?;
    eprintln!(
        "rolling update of {} services in {rolled:.1?} under {} reads and {} orders through the Ingress: {} failed",
        ROLLED.len(),
        traffic.reads,
        traffic.orders.len(),
        traffic.failures.len()
    );
    ensure!(
        traffic.failures.is_empty(),
        "{} requests failed during the rollout, e.g. {:?}",
        traffic.failures.len(),
        &traffic.failures[..traffic.failures.len().min(5)]
    );
    for order in &traffic.orders {
        api.wait_order(&customer, order, "confirmed").await?;
    }
    assert_invariants(&stack_databases()?).await;
    Ok(())
}

#[tokio::test]
async fn a_rate_limit_policy_applied_under_traffic_answers_429_through_the_ingress_without_a_restart()
-> Result<()> {
    let Turn { _turn, client, api, .. } = take_turn().await?;
    let gateway_pods: Vec<(String, i32)> = restarts(&client, "gateway").await?;
    // Limited per user, so that no other test's requests meet the limit
    // (the gateway drops the rule a while after the policy is deleted).
    let customer = api.register_customer("cluster-limited").await?;
    let path = "/api/products?page_size=1";
    let answer = api.get(path, Some(&customer.access_token)).await?;
    ensure!(answer.status.is_success(), "before the policy: {} {}", answer.status, answer.body);

    let policy = format!("cluster-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let limited = limit_and_lift(&client, &api, &customer, path, &policy, &gateway_pods).await;
    // A policy left behind would throttle every later test's user: it goes
    // even when a check above failed.
    if limited.is_err() {
        let _ = kubectl(&["delete", "ratelimitpolicy", &policy, "-n", STACK_NAMESPACE, "--ignore-not-found"]);
    }
    limited
}

/// Applies a RateLimitPolicy of 2 reads a minute per user, waits for the
/// 429 through the Ingress, deletes the policy and waits for the limit to
/// be lifted.
async fn limit_and_lift(
    client: &Client,
    api: &Api,
    customer: &Session,
    path: &str,
    policy: &str,
    gateway_pods: &[(String, i32)],
) -> Result<()> {
    kubectl_apply(&json!({
        "apiVersion": "commerce-stack.dev/v1alpha1",
        "kind": "RateLimitPolicy",
        "metadata": { "name": policy, "namespace": STACK_NAMESPACE },
        "spec": {
            "targetRef": { "name": STACK },
            "rules": [{
                "name": "products-per-client",
                "pathPrefix": "/api/products",
                "methods": ["GET"],
                "key": "user",
                "requests": 2,
                "per": "minute",
            }],
        },
    }))?;
    let applied = Instant::now();
    // Requests go on; the gateway picks the rules up from its mounted file.
    let limited = wait_until("a 429 through the Ingress", Duration::from_secs(120), || async {
        let response =
            api.http.get(format!("{}{path}", api.base)).bearer_auth(&customer.access_token).send().await?;
        if response.status().as_u16() != 429 {
            return Ok(None);
        }
        let headers = response.headers().clone();
        Ok(Some(headers))
    })
    .await?;
    let took = applied.elapsed();
    eprintln!("RateLimitPolicy applied -> first 429 through the Ingress after {took:.1?}");
    ensure!(limited.contains_key("retry-after"), "429 without Retry-After: {limited:?}");
    ensure!(
        limited.keys().any(|name| name.as_str().starts_with("ratelimit")),
        "429 without RateLimit headers: {limited:?}"
    );
    ensure!(
        restarts(client, "gateway").await? == gateway_pods,
        "the gateway pods were restarted or replaced"
    );

    // Deleting the policy lifts the limit the same way (the rule applies to
    // every user: the other tests must not meet it).
    kubectl(&["delete", "ratelimitpolicy", policy, "-n", STACK_NAMESPACE])?;
    let deleted = Instant::now();
    let other = api.register_customer("cluster-unlimited").await?;
    wait_until("the limit to be lifted", Duration::from_secs(120), || async {
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(api.get(path, Some(&other.access_token)).await?.status);
        }
        Ok(statuses.iter().all(|status| status.is_success()).then_some(()))
    })
    .await?;
    eprintln!("RateLimitPolicy deleted -> limit lifted after {:.1?}", deleted.elapsed());
    Ok(())
}

/// The pods of one service with their containers' restart counts.
async fn restarts(client: &Client, service: &str) -> Result<Vec<(String, i32)>> {
    let pods = pods_and_restarts(client, &component_selector(service)).await?;
    Ok(pods.into_iter().map(|(name, _, restarts)| (name, restarts)).collect())
}

/// A namespace outside the stack whose pods run on the real node.
const OUTSIDER_NAMESPACE: &str = "cluster-e2e-outsider";

/// Runs `commerce check grpc ADDRESS` in a one-off pod of `namespace` with
/// `labels` and returns whether it succeeded, with its output. The pod
/// never turns Ready (its readiness probe asks a closed port), so no
/// Service whose selector its labels match ever sends it traffic.
async fn probe_from(
    client: &Client,
    namespace: &str,
    labels: Value,
    address: &str,
) -> Result<(bool, String)> {
    let name = format!("grpc-probe-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    kubectl_apply(&json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace, "labels": labels },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "securityContext": { "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532 },
            "containers": [{
                "name": "probe",
                "image": format!("{}:{}", IMAGES[0], env!("CARGO_PKG_VERSION")),
                "imagePullPolicy": "Never",
                "args": ["check", "grpc", address, "--timeout", "10s"],
                "readinessProbe": { "tcpSocket": { "port": 1 }, "periodSeconds": 60 },
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": { "drop": ["ALL"] },
                },
            }],
        },
    }))?;
    let pods = KubeApi::<Pod>::namespaced(client.clone(), namespace);
    let phase = wait_until(&format!("probe pod {name} to finish"), Duration::from_secs(60), || async {
        let pod = pods.get(&name).await?;
        let phase = pod.status.and_then(|status| status.phase).unwrap_or_default();
        Ok(["Succeeded", "Failed"].contains(&phase.as_str()).then_some(phase))
    })
    .await?;
    let output = kubectl(&["logs", &name, "-n", namespace]).unwrap_or_default();
    pods.delete(&name, &DeleteParams::default().grace_period(0)).await?;
    Ok((phase == "Succeeded", output.trim().to_owned()))
}

#[tokio::test]
async fn network_policies_keep_an_outside_pod_off_a_grpc_port_that_the_catalog_flows_still_reach()
-> Result<()> {
    let Turn { _turn, client, .. } = take_turn().await?;
    ensure_namespace(&client, OUTSIDER_NAMESPACE).await?;
    let inventory = format!("{STACK}-inventory.{STACK_NAMESPACE}.svc.cluster.local:50051");

    // The catalog lets cart call inventory: a pod labelled as the stack's
    // cart gets through.
    let cart = json!({
        "app.kubernetes.io/name": "commerce",
        "app.kubernetes.io/instance": STACK,
        "app.kubernetes.io/component": "cart",
    });
    let (allowed, output) = probe_from(&client, STACK_NAMESPACE, cart, &inventory).await?;
    ensure!(allowed, "the stack's cart could not reach inventory: {output}");

    // The same image and command from another namespace is dropped.
    let (reached, output) =
        probe_from(&client, OUTSIDER_NAMESPACE, json!({ "app": "outsider" }), &inventory).await?;
    ensure!(!reached, "a pod outside the stack reached inventory's gRPC port: {output}");
    ensure!(output.contains("was not SERVING"), "unexpected failure: {output}");
    eprintln!("outside pod -> inventory: {output}");

    // The stack's own flows are unharmed: it stays Ready and takes an order.
    kubectl(&[
        "wait",
        "--for=condition=Ready",
        &format!("commercestack/{STACK}"),
        "-n",
        STACK_NAMESPACE,
        "--timeout=30s",
    ])?;
    let api = ingress_api()?;
    let (product, customer) = product_and_customer(&api, "Fenced", "Fence post", 700, 5).await?;
    let order = api.order(&customer, &[(product.as_str(), 1)], "tok_visa").await?;
    api.wait_order(&customer, &order, "confirmed").await?;
    Ok(())
}

// --- autoscaling ----------------------------------------------------------------

/// The autoscaler the operator renders for the gateway (`<stack>-<service>`).
const GATEWAY_AUTOSCALER: &str = "shop-gateway";

#[tokio::test]
async fn the_gateway_autoscaler_adds_pods_under_load_and_removes_them_after_it() -> Result<()> {
    let Turn { _turn, client, api, .. } = take_turn().await?;
    let outcome = autoscale_gateway(&client, &api).await;
    // Whatever happened, the later tests get the gateway back at one fixed
    // replica, and the operator deletes the autoscaler it no longer renders.
    let restored = async {
        patch_stack(
            &json!({ "spec": { "services": { "gateway": { "autoscaling": null, "replicas": null } } } }),
        )?;
        let autoscalers = KubeApi::<HorizontalPodAutoscaler>::namespaced(client.clone(), STACK_NAMESPACE);
        wait_until("the operator to delete the gateway's autoscaler", READY_TIMEOUT, || async {
            Ok(autoscalers.get_opt(GATEWAY_AUTOSCALER).await?.is_none().then_some(()))
        })
        .await?;
        wait_pods(&client, "gateway", 1).await.map(drop)
    }
    .await;
    outcome.and(restored)
}

/// Puts the gateway under an autoscaler (1 to 3 pods, 50 % of its CPU
/// request, 15 s scale-down window), drives reads through the Ingress until
/// the autoscaler, fed by metrics-server, runs at least two Ready gateway
/// pods, stops, and waits until it is back at one. No read may fail.
async fn autoscale_gateway(client: &Client, api: &Api) -> Result<()> {
    let (product, customer) = product_and_customer(api, "Autoscale", "Scaling ladder", 2_500, 10).await?;
    let metrics_listed = Instant::now();
    // The metrics pipeline first: metrics.k8s.io (the API server's
    // aggregator -> metrics-server -> the kubelet) reports the gateway's pod.
    wait_until("metrics.k8s.io to report the gateway's CPU", Duration::from_secs(120), || async {
        let raw = kubectl(&[
            "get",
            "--raw",
            &format!(
                "/apis/metrics.k8s.io/v1beta1/namespaces/{STACK_NAMESPACE}/pods?labelSelector={}",
                component_selector("gateway").replace('=', "%3D").replace(',', "%2C")
            ),
        ])?;
        let list: Value = serde_json::from_str(&raw)?;
        let reported = list["items"].as_array().is_some_and(|pods| {
            !pods.is_empty() && pods.iter().all(|pod| pod["containers"][0]["usage"]["cpu"].is_string())
        });
        Ok(reported.then_some(()))
    })
    .await?;
    eprintln!("metrics.k8s.io reported the gateway's pods after {:.1?}", metrics_listed.elapsed());

    patch_stack(&json!({ "spec": { "services": { "gateway": {
        "replicas": null,
        "autoscaling": {
            "minReplicas": 1,
            "maxReplicas": 3,
            "targetCpuUtilizationPercentage": 50,
            "scaleDownStabilizationSeconds": 15,
        },
    } } } }))?;
    let autoscalers = KubeApi::<HorizontalPodAutoscaler>::namespaced(client.clone(), STACK_NAMESPACE);
    // The autoscaler exists and has read the gateway's utilisation at rest.
    let (idle, window) =
        wait_until("the gateway's autoscaler to read its CPU", Duration::from_secs(120), || async {
            let Some(autoscaler) = autoscalers.get_opt(GATEWAY_AUTOSCALER).await? else { return Ok(None) };
            let window = autoscaler
                .spec
                .behavior
                .as_ref()
                .and_then(|behavior| behavior.scale_down.as_ref()?.stabilization_window_seconds);
            Ok(cpu_utilisation(&autoscaler).map(|idle| (idle, window)))
        })
        .await?;
    ensure!(window == Some(15), "the autoscaler's scale-down window is {window:?}, not the stack's 15 s");
    ensure!(wait_pods(client, "gateway", 1).await?.len() == 1, "the gateway left one pod before the load");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load_started = Instant::now();
    let workers = steady_traffic(api, &customer, &product, 8, 0, &stop);
    let scaled_out =
        wait_until("a second Ready gateway pod under load", Duration::from_secs(240), || async {
            let ready = ready_pods(client, "gateway").await?;
            Ok((ready.len() >= 2).then_some(ready.len()))
        })
        .await;
    let out_after = load_started.elapsed();
    let peak = autoscalers.get(GATEWAY_AUTOSCALER).await.ok().as_ref().and_then(cpu_utilisation);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let traffic = collect(workers).await?;
    let scaled_out = scaled_out?;
    eprintln!(
        "autoscaler: gateway at {idle}% of its CPU request at rest; under {} reads through the Ingress it \
         reached {peak:?}% and {scaled_out} Ready pods after {out_after:.1?}; {} reads failed",
        traffic.reads,
        traffic.failures.len()
    );
    ensure!(
        traffic.failures.is_empty(),
        "{} reads failed while the gateway scaled out, e.g. {:?}",
        traffic.failures.len(),
        &traffic.failures[..traffic.failures.len().min(5)]
    );

    let load_stopped = Instant::now();
    wait_pods(client, "gateway", 1).await?;
    eprintln!("autoscaler: back to 1 gateway pod {:.1?} after the load stopped", load_stopped.elapsed());
    let answer = api.get(&format!("/api/products/{product}"), Some(&customer.access_token)).await?;
    ensure!(answer.status.is_success(), "a read after the scale-in: {} {}", answer.status, answer.body);
    Ok(())
}

/// The average CPU utilisation the autoscaler last read, in percent of the
/// pods' request.
fn cpu_utilisation(autoscaler: &HorizontalPodAutoscaler) -> Option<i32> {
    autoscaler
        .status
        .as_ref()?
        .current_metrics
        .as_ref()?
        .iter()
        .find_map(|metric| metric.resource.as_ref()?.current.average_utilization)
}
