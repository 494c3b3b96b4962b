//! A rehearsal, against the real API server, of the move from `v1alpha1` to
//! `v1beta1` that `commerce_api::crd` plans: a stack stored as `v1alpha1`
//! must survive every step, and read the same through either version.
//!
//! The rehearsal runs on a copy of the CommerceStack CRD in a group of its
//! own (`rehearsal.commerce-stack.dev`), so the operators and tests using the
//! real CRD in parallel never see a version come or go. The steps, each
//! checked on the object created at the start:
//! 1. the CRD as released: `v1alpha1` served and stored;
//! 2. `v1beta1` added (served, stored) with `v1alpha1` still served and
//!    marked deprecated: conversion `None`, as the two schemas are the same;
//! 3. every stored object rewritten (a no-op update re-encodes it at the
//!    storage version), then `status.storedVersions` trimmed to `v1beta1`;
//! 4. `v1alpha1` removed from the CRD: the API server refuses that while a
//!    version is still in `storedVersions`, and accepts it after step 3.
//!
//! Needs the control plane only (`bash e2e/scripts/infra.sh up k8s`).

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use commerce_e2e::{local_kube_client, unique_name};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const GROUP: &str = "rehearsal.commerce-stack.dev";
const CRD_NAME: &str = "commercestacks.rehearsal.commerce-stack.dev";

/// The CommerceStack CRD as this build generates it, moved to [`GROUP`].
fn rehearsal_crd() -> Result<CustomResourceDefinition> {
    let mut crd = commerce_operator::crd::crds()?
        .into_iter()
        .find(|crd| crd.spec.names.kind == "CommerceStack")
        .context("no CommerceStack CRD")?;
    crd.metadata = kube::api::ObjectMeta { name: Some(CRD_NAME.into()), ..Default::default() };
    crd.spec.group = GROUP.into();
    // Short names and categories are cluster-wide: the copy takes none.
    crd.spec.names.short_names = None;
    crd.spec.names.categories = None;
    ensure!(
        crd.spec.versions.len() == 1 && crd.spec.versions[0].name == "v1alpha1",
        "expected v1alpha1 only"
    );
    Ok(crd)
}

fn resource(version: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, version, "CommerceStack"),
        "commercestacks",
    )
}

fn stacks(client: &Client, namespace: &str, version: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &resource(version))
}

/// A stack using a spread of the spec: services, autoscaling, external
/// infrastructure, auth and deletion settings.
fn stack(namespace: &str) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/v1alpha1"),
        "kind": "CommerceStack",
        "metadata": { "name": "shop", "namespace": namespace },
        "spec": {
            "version": "0.1.0",
            "deletionPolicy": "Retain",
            "kafka": { "external": { "bootstrapServers": ["kafka.example.internal:9092"] } },
            "postgres": { "external": {
                "host": "postgres.example.internal", "port": 5432,
                "adminSecret": { "name": "postgres-admin" }
            } },
            "redis": { "external": { "host": "redis.example.internal" } },
            "auth": { "accessTokenTtl": "10m", "refreshTokenTtl": "240h" },
            "services": {
                "gateway": { "replicas": 2 },
                "order": { "autoscaling": {
                    "minReplicas": 2, "maxReplicas": 5, "targetCpuUtilizationPercentage": 70,
                    "scaleDownStabilizationSeconds": 60
                } },
                "notification": { "enabled": false }
            }
        }
    })
}

/// Polls until the CRD is Established, for up to 30 s.
async fn established(crds: &Api<CustomResourceDefinition>) -> Result<CustomResourceDefinition> {
    for _ in 0..120 {
        let crd = crds.get(CRD_NAME).await?;
        let ok = crd
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Established" && c.status == "True"));
        if ok {
            return Ok(crd);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    anyhow::bail!("{CRD_NAME} was not Established within 30 s")
}

/// Reads the stack through `version` until that version is served (a CRD
/// change reaches the handlers a moment after it is stored).
async fn read(client: &Client, namespace: &str, version: &str) -> Result<DynamicObject> {
    let api = stacks(client, namespace, version);
    let mut last = None;
    for _ in 0..120 {
        match api.get("shop").await {
            Ok(object) => return Ok(object),
            Err(error) => last = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(last.map(anyhow::Error::from).unwrap_or_else(|| anyhow::anyhow!("no read")))
        .with_context(|| format!("reading the stack as {version}"))
}

fn stored_versions(crd: &CustomResourceDefinition) -> Vec<String> {
    crd.status.as_ref().and_then(|s| s.stored_versions.clone()).unwrap_or_default()
}

#[tokio::test]
async fn a_v1alpha1_stack_survives_the_planned_move_to_v1beta1() -> Result<()> {
    let client = local_kube_client().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = unique_name("crd-versions");
    // A previous run that failed midway may have left its copy.
    if crds.get_opt(CRD_NAME).await?.is_some() {
        crds.delete(CRD_NAME, &DeleteParams::default()).await?;
        for _ in 0..120 {
            if crds.get_opt(CRD_NAME).await?.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": namespace}}))?)
        .await?;
    let outcome = rehearse(&client, &crds, &namespace).await;
    let crd_gone = crds.delete(CRD_NAME, &DeleteParams::default()).await.map(drop);
    let namespace_gone = namespaces.delete(&namespace, &DeleteParams::default()).await.map(drop);
    outcome?;
    crd_gone?;
    namespace_gone?;
    Ok(())
}

async fn rehearse(client: &Client, crds: &Api<CustomResourceDefinition>, namespace: &str) -> Result<()> {
    // 1. As released.
    let released = rehearsal_crd()?;
    crds.create(&PostParams::default(), &released).await?;
    established(crds).await?;
    let object: DynamicObject = serde_json::from_value(stack(namespace))?;
    let created = {
        let api = stacks(client, namespace, "v1alpha1");
        let mut last = None;
        let mut created = None;
        for _ in 0..120 {
            match api.create(&PostParams::default(), &object).await {
                Ok(object) => {
                    created = Some(object);
                    break;
                }
                // Not served yet: a new CRD reaches the handlers a moment
                // after it is Established.
                Err(kube::Error::Api(status)) if status.code == 404 => last = Some(status),
                Err(error) => return Err(error).context("creating the v1alpha1 stack"),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        created.with_context(|| format!("creating the v1alpha1 stack: {last:?}"))?
    };
    let spec = created.data["spec"].clone();
    ensure!(spec["services"]["gateway"]["replicas"] == json!(2), "defaults and fields as sent: {spec}");

    // 2. v1beta1 served and stored, v1alpha1 served and deprecated.
    let mut crd = crds.get(CRD_NAME).await?;
    let alpha = crd.spec.versions[0].clone();
    let beta = CustomResourceDefinitionVersion { name: "v1beta1".into(), storage: true, ..alpha.clone() };
    let deprecated = CustomResourceDefinitionVersion {
        storage: false,
        deprecated: Some(true),
        deprecation_warning: Some(format!("{GROUP}/v1alpha1 CommerceStack is deprecated; use v1beta1")),
        ..alpha
    };
    crd.spec.versions = vec![deprecated, beta];
    crd.metadata.managed_fields = None;
    crds.replace(CRD_NAME, &PostParams::default(), &crd).await?;
    let crd = established(crds).await?;
    ensure!(stored_versions(&crd) == ["v1alpha1", "v1beta1"], "storedVersions {:?}", stored_versions(&crd));
    let as_beta = read(client, namespace, "v1beta1").await?;
    ensure!(
        as_beta.data["spec"] == spec,
        "read as v1beta1, the spec differs:\n{}\n{spec}",
        as_beta.data["spec"]
    );
    let as_alpha = read(client, namespace, "v1alpha1").await?;
    ensure!(as_alpha.data["spec"] == spec, "read as v1alpha1, the spec differs");

    // Removing v1alpha1 now must be refused: objects may still be stored in it.
    let mut premature = crds.get(CRD_NAME).await?;
    premature.spec.versions.retain(|v| v.name == "v1beta1");
    premature.metadata.managed_fields = None;
    let refused = crds.replace(CRD_NAME, &PostParams::default(), &premature).await;
    ensure!(refused.is_err(), "the API server let v1alpha1 go while it is in storedVersions");

    // 3. Migrate: a no-op update through the storage version re-encodes the
    // object, then storedVersions forgets v1alpha1.
    let api = stacks(client, namespace, "v1beta1");
    let mut current = api.get("shop").await?;
    current.metadata.managed_fields = None;
    api.replace("shop", &PostParams::default(), &current).await?;
    let status = json!({"status": {"storedVersions": ["v1beta1"]}});
    crds.patch_status(CRD_NAME, &PatchParams::default(), &Patch::Merge(&status)).await?;

    // 4. v1alpha1 removed; the stack reads the same.
    let mut crd = crds.get(CRD_NAME).await?;
    crd.spec.versions.retain(|v| v.name == "v1beta1");
    crd.metadata.managed_fields = None;
    crds.replace(CRD_NAME, &PostParams::default(), &crd).await?;
    let crd = established(crds).await?;
    ensure!(crd.spec.versions.len() == 1 && crd.spec.versions[0].name == "v1beta1");
    ensure!(stored_versions(&crd) == ["v1beta1"], "storedVersions {:?}", stored_versions(&crd));
    let migrated = read(client, namespace, "v1beta1").await?;
    ensure!(
        migrated.data["spec"] == spec,
        "after the move the spec differs:\n{}\n{spec}",
        migrated.data["spec"]
    );
    ensure!(migrated.uid() == created.uid(), "the same object, not a new one");
    eprintln!("v1alpha1 stack {} read the same through every step of the move", created.name_any());
    Ok(())
}
