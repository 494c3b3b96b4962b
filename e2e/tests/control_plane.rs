//! The local Kubernetes control plane (`e2e/scripts/k8s.sh`: etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler, kwok) does what
//! the operator's tests rely on: a kube client reaches it, CRDs with a status
//! subresource are established and served, and Deployments become
//! ReplicaSets and Running Pods on the fake node.
//!
//! Every test that needs the control plane fails (never skips) when it is
//! down, with the command that starts it. Each test works in its own
//! namespace (and CRD group) and removes them, waiting until they are gone.

use std::{fmt::Debug, pin::pin, sync::Arc, time::Duration};

use anyhow::{Context as _, Result, bail, ensure};
use commerce_e2e::{E2eError, kube_client_from, local_kube_client, unique_name, within};
use futures::StreamExt as _;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet},
        core::v1::{Namespace, Pod},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams},
    runtime::{
        reflector::{self, Store},
        wait::{await_condition, conditions},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use serde_json::json;

/// Field manager of everything these tests apply.
const MANAGER: &str = "commerce-e2e";
/// The fake node that `e2e/k8s/node.yaml` creates and kwok keeps Ready.
const KWOK_NODE: &str = "kwok-node-0";
/// A CRD is established within a second on an idle control plane.
const CRD_TIMEOUT: Duration = Duration::from_secs(30);
/// Deployment -> ReplicaSet -> scheduled Pod -> Running (kwok) takes a few
/// seconds; the margin covers a loaded 2-core machine.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(90);
/// Namespace deletion waits for the namespace controller and the garbage
/// collector to remove everything inside.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn kube_client_lists_the_namespaces_of_the_local_control_plane() -> Result<()> {
    let client = local_kube_client().await?;
    let namespaces = Api::<Namespace>::all(client).list(&Default::default()).await?;
    let names: Vec<String> = namespaces.iter().map(ResourceExt::name_any).collect();
    for expected in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        ensure!(names.iter().any(|n| n == expected), "namespace {expected} missing from {names:?}");
    }
    Ok(())
}

#[tokio::test]
async fn crd_with_status_subresource_is_established_and_its_status_is_patched_separately() -> Result<()> {
    let client = local_kube_client().await?;
    // A group of its own: concurrent runs never share (or delete) a CRD.
    let group = format!("{}.e2e.commerce-stack.test", unique_name("g"));
    let crd_name = format!("probes.{group}");
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let namespace = create_namespace(&client).await?;

    let outcome = async {
        crds.patch(&crd_name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(probe_crd(&group)))
            .await
            .context("apply the CRD")?;
        within(
            "the CRD to be Established",
            CRD_TIMEOUT,
            await_condition(crds.clone(), &crd_name, conditions::is_crd_established()),
        )
        .await??;

        let resource =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(&group, "v1", "Probe"), "probes");
        let probes = Api::<DynamicObject>::namespaced_with(client.clone(), &namespace, &resource);
        // The status in this body is dropped: with a status subresource the
        // main endpoint ignores status.
        let created = probes
            .patch(
                "probe",
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(json!({
                    "apiVersion": resource.api_version,
                    "kind": "Probe",
                    "metadata": { "name": "probe" },
                    "spec": { "size": 3 },
                    "status": { "phase": "IgnoredOnTheMainEndpoint" },
                })),
            )
            .await
            .context("create the custom object")?;
        ensure!(
            created.data.get("status").is_none(),
            "status was written through the main endpoint: {:?}",
            created.data
        );
        let generation = created.metadata.generation;

        let patched = probes
            .patch_status(
                "probe",
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(json!({
                    "apiVersion": resource.api_version,
                    "kind": "Probe",
                    "status": { "phase": "Ready", "observedSize": 3 },
                })),
            )
            .await
            .context("patch the status subresource")?;
        ensure!(
            patched.data["status"] == json!({ "phase": "Ready", "observedSize": 3 }),
            "status after the patch: {:?}",
            patched.data.get("status")
        );
        ensure!(
            patched.data["spec"] == json!({ "size": 3 }),
            "spec changed by a status patch: {:?}",
            patched.data.get("spec")
        );
        ensure!(
            patched.metadata.generation == generation,
            "a status patch bumped metadata.generation from {generation:?} to {:?}",
            patched.metadata.generation
        );
        let read_back = probes.get("probe").await?;
        ensure!(read_back.data["status"]["phase"] == "Ready", "status not stored: {:?}", read_back.data);
        Ok(())
    }
    .await;

    let cleanup = async {
        delete_namespace(&client, &namespace).await?;
        delete_and_wait(&crds, &crd_name).await
    }
    .await;
    outcome.and(cleanup)
}

#[tokio::test]
async fn deployment_gets_a_replica_set_and_running_pods_on_the_kwok_node() -> Result<()> {
    let client = local_kube_client().await?;
    let namespace = create_namespace(&client).await?;
    let replicas = 2;

    let outcome = async {
        let deployments = Api::<Deployment>::namespaced(client.clone(), &namespace);
        let deployment = deployments
            .patch(
                "web",
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(json!({
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": { "name": "web" },
                    "spec": {
                        "replicas": replicas,
                        "selector": { "matchLabels": { "app": "web" } },
                        "template": {
                            "metadata": { "labels": { "app": "web" } },
                            "spec": {
                                "containers": [{
                                    "name": "web",
                                    // Never pulled: kwok only pretends to run it.
                                    "image": "commerce.invalid/e2e/web:1",
                                }],
                            },
                        },
                    },
                })),
            )
            .await
            .context("apply the Deployment")?;
        let deployment_uid = deployment.uid().context("Deployment has no uid")?;

        let replica_sets = Api::<ReplicaSet>::namespaced(client.clone(), &namespace);
        let owned = wait_for_list(
            "a ReplicaSet owned by the Deployment",
            replica_sets,
            "app=web",
            |sets: &[Arc<ReplicaSet>]| sets.iter().any(|rs| owned_by(rs.as_ref(), &deployment_uid)),
        )
        .await?;
        let replica_set = owned
            .iter()
            .find(|rs| owned_by(rs.as_ref(), &deployment_uid))
            .context("owned ReplicaSet vanished")?;
        let replica_set_uid = replica_set.uid().context("ReplicaSet has no uid")?;
        ensure!(
            replica_set.spec.as_ref().and_then(|s| s.replicas) == Some(replicas),
            "ReplicaSet spec: {:?}",
            replica_set.spec
        );

        let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
        let running = wait_for_list(
            "the Deployment's Pods to be Running on the kwok node",
            pods,
            "app=web",
            |pods: &[Arc<Pod>]| {
                pods.iter()
                    .filter(|pod| owned_by(pod.as_ref(), &replica_set_uid) && is_running_on_kwok(pod))
                    .count()
                    == usize::try_from(replicas).unwrap_or(usize::MAX)
            },
        )
        .await?;
        ensure!(
            running.iter().all(|pod| is_running_on_kwok(pod)),
            "Pods not all Running on {KWOK_NODE}: {:?}",
            running.iter().map(|p| (p.name_any(), p.status.clone())).collect::<Vec<_>>()
        );

        within(
            "the Deployment to complete its rollout",
            ROLLOUT_TIMEOUT,
            await_condition(deployments, "web", conditions::is_deployment_completed()),
        )
        .await??;
        Ok(())
    }
    .await;

    let cleanup = delete_namespace(&client, &namespace).await;
    outcome.and(cleanup)
}

#[tokio::test]
async fn client_for_a_stopped_control_plane_fails_with_the_start_command() -> Result<()> {
    // Port 1 on loopback: nothing listens there, the connection is refused.
    let kubeconfig = write_kubeconfig("https://127.0.0.1:1")?;
    let result = kube_client_from(&kubeconfig).await;
    std::fs::remove_file(&kubeconfig)?;
    match result {
        Err(error @ E2eError::Unreachable { .. }) => {
            let message = error.to_string();
            ensure!(
                message.contains("e2e/scripts/infra.sh up k8s"),
                "message does not say how to start the control plane: {message}"
            );
            Ok(())
        }
        Err(other) => bail!("expected Unreachable, got {other:?}"),
        Ok(_) => bail!("a client for a closed port was accepted"),
    }
}

#[tokio::test]
async fn client_refuses_a_kubeconfig_that_points_off_loopback() -> Result<()> {
    // Never contacted: the address is rejected before any connection.
    let kubeconfig = write_kubeconfig("https://10.0.0.1:6443")?;
    let result = kube_client_from(&kubeconfig).await;
    std::fs::remove_file(&kubeconfig)?;
    match result {
        Err(E2eError::NotLoopback { url, .. }) => {
            ensure!(url.contains("10.0.0.1"), "unexpected url {url}");
            Ok(())
        }
        Err(other) => bail!("expected NotLoopback, got {other:?}"),
        Ok(_) => bail!("a non-loopback kubeconfig was accepted"),
    }
}

/// A namespaced CRD `Probe` in `group` with a status subresource.
fn probe_crd(group: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": format!("probes.{group}") },
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": { "plural": "probes", "singular": "probe", "kind": "Probe", "listKind": "ProbeList" },
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "subresources": { "status": {} },
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": { "type": "object", "properties": { "size": { "type": "integer" } } },
                        "status": { "type": "object", "properties": {
                            "phase": { "type": "string" },
                            "observedSize": { "type": "integer" },
                        } },
                    },
                } },
            }],
        },
    })
}

/// Creates a namespace of its own for one test.
async fn create_namespace(client: &Client) -> Result<String> {
    let name = unique_name("e2e");
    Api::<Namespace>::all(client.clone())
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": { "name": name, "labels": { "commerce-stack/e2e": "true" } },
            })),
        )
        .await
        .with_context(|| format!("create namespace {name}"))?;
    Ok(name)
}

async fn delete_namespace(client: &Client, name: &str) -> Result<()> {
    delete_and_wait(&Api::<Namespace>::all(client.clone()), name).await
}

/// Deletes `name` and waits until it is really gone (finalizers done).
async fn delete_and_wait<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + 'static,
{
    let Some(uid) = api.get_opt(name).await?.and_then(|o| o.uid()) else {
        return Ok(());
    };
    api.delete(name, &DeleteParams::foreground()).await.with_context(|| format!("delete {name}"))?;
    within(
        &format!("{name} to be deleted"),
        CLEANUP_TIMEOUT,
        await_condition(api.clone(), name, conditions::is_deleted(&uid)),
    )
    .await??;
    Ok(())
}

/// Watches the objects matching `labels` and returns them once `done` holds
/// for the whole set (re-checked on every change, no polling).
async fn wait_for_list<K>(
    what: &str,
    api: Api<K>,
    labels: &str,
    done: impl Fn(&[Arc<K>]) -> bool,
) -> Result<Vec<Arc<K>>>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let events = reflector::reflector(writer, watcher(api, watcher::Config::default().labels(labels)));
    let watch = async {
        let mut events = pin!(events);
        let mut listed = false;
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::InitDone) => listed = true,
                Ok(_) => {}
                // The watcher re-lists on its own after errors.
                Err(error) => eprintln!("watch of {what}: {error}"),
            }
            if listed && done(&current(&store)) {
                return Ok(current(&store));
            }
        }
        bail!("the watch for {what} ended")
    };
    within(what, ROLLOUT_TIMEOUT, watch).await?
}

fn current<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>) -> Vec<Arc<K>> {
    store.state()
}

fn owned_by<K: Resource>(object: &K, owner_uid: &str) -> bool {
    object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|owner| owner.uid == owner_uid && owner.controller == Some(true))
}

fn is_running_on_kwok(pod: &Pod) -> bool {
    let on_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(KWOK_NODE);
    let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    on_node && running
}

/// A minimal kubeconfig naming `server`, in a file of its own.
fn write_kubeconfig(server: &str) -> Result<std::path::PathBuf> {
    let path = std::env::temp_dir().join(format!("{}.kubeconfig", unique_name("commerce-e2e")));
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n\
         users:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n\
         current-context: c\n"
    );
    std::fs::write(&path, kubeconfig)?;
    Ok(path)
}
