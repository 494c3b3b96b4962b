//! The operator's packaging against the real tools and the local control
//! plane: the chart lints and renders objects the apiserver accepts
//! (server-side dry run), the kustomize base is the chart rendered by `make
//! generate`, builds and is accepted the same way, and the chart ships
//! exactly the CRDs that `commerce-operator crd` prints.
//!
//! kubectl and helm come from `e2e/infra.env` (pinned versions on PATH);
//! every kubectl call names the local kubeconfig explicitly. Dry runs that
//! need a namespace get one of their own, deleted at the end.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, Result, bail, ensure};
use commerce_e2e::{local_kubeconfig_path, unique_name};

/// The repository root (this crate lives in `e2e/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Runs `program args` in the repository root with the local kubeconfig and
/// `stdin`; fails with its stderr unless it succeeds.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let output = run_unchecked(program, args, stdin)?;
    ensure!(
        output.status.success(),
        "{program} {} failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

fn run_unchecked(program: &str, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    use std::io::Write as _;
    let mut child = Command::new(program)
        .args(args)
        .current_dir(repo())
        .env("KUBECONFIG", local_kubeconfig_path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("starting {program}: is it on PATH? `source e2e/infra.env` puts it there")
        })?;
    let mut input = child.stdin.take().context("stdin of the child")?;
    input.write_all(stdin.unwrap_or_default().as_bytes())?;
    drop(input);
    Ok(child.wait_with_output()?)
}

/// The built operator binary: `$COMMERCE_OPERATOR_BIN` when set (the target
/// directory is shared, and other checkouts' builds replace the binary in
/// it), else next to this test's own target directory.
fn operator_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("COMMERCE_OPERATOR_BIN") {
        let path = PathBuf::from(path);
        ensure!(path.is_file(), "COMMERCE_OPERATOR_BIN={} is not a file", path.display());
        return Ok(path);
    }
    let exe = std::env::current_exe()?;
    // <target>/debug/deps/packaging-<hash> -> <target>/debug/commerce-operator
    let beside = exe.parent().and_then(Path::parent).map(|dir| dir.join("commerce-operator"));
    let from_env = std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| PathBuf::from(dir).join("debug").join("commerce-operator"));
    beside.into_iter().chain(from_env).find(|path| path.is_file()).context(
        "commerce-operator is not built: run `cargo build -p commerce-operator` \
         (with the same CARGO_TARGET_DIR) before these tests",
    )
}

/// A namespace of its own, deleted when dropped.
struct Namespace(String);

impl Namespace {
    fn create() -> Result<Self> {
        let name = unique_name("e2e-pkg");
        run("kubectl", &["create", "namespace", &name], None)?;
        run("kubectl", &["label", "namespace", &name, "commerce-stack/e2e=true"], None)?;
        Ok(Namespace(name))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(error) =
            run("kubectl", &["delete", "namespace", &self.0, "--wait=true", "--timeout=90s"], None)
        {
            eprintln!("cleanup of namespace {}: {error}", self.0);
        }
    }
}

/// A server-side dry run of the rendered objects. The cluster-scoped ones
/// (ClusterRole, ClusterRoleBinding) may already exist, owned by the Helm
/// release that tests/cluster.rs installs: forcing the conflicts changes
/// nothing in a dry run, and what is checked is that the API server accepts
/// the objects.
const DRY_RUN_APPLY: [&str; 7] = [
    "apply",
    "--dry-run=server",
    "--server-side",
    "--force-conflicts",
    "--field-manager=commerce-e2e",
    "-f",
    "-",
];

#[test]
fn the_chart_passes_helm_lint() -> Result<()> {
    let out = run("helm", &["lint", "--strict", "charts/commerce-operator"], None)?;
    ensure!(out.contains("0 chart(s) failed"), "helm lint said:\n{out}");
    Ok(())
}

#[test]
fn the_rendered_chart_is_accepted_by_the_apiserver_in_a_server_side_dry_run() -> Result<()> {
    let namespace = Namespace::create()?;
    let rendered = run(
        "helm",
        &["template", "commerce-operator", "charts/commerce-operator", "--namespace", &namespace.0],
        None,
    )?;
    for kind in ["Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"] {
        ensure!(rendered.contains(&format!("kind: {kind}\n")), "the chart renders no {kind}:\n{rendered}");
    }
    let out = run("kubectl", &DRY_RUN_APPLY, Some(&rendered))?;
    ensure!(out.contains("deployment.apps/commerce-operator"), "dry run output:\n{out}");
    println!("helm template, server-side dry run:\n{out}");
    Ok(())
}

/// Installed for a list of namespaces, the chart grants the namespaced
/// rules as a Role in each listed namespace only, and cluster-wide nothing
/// but reading StorageClasses and (crds.manage) its own two CRDs by name;
/// the operator is told the list. The API server accepts every object.
#[test]
fn a_namespace_scoped_install_grants_roles_in_the_listed_namespaces_only() -> Result<()> {
    let (first, second) = (Namespace::create()?, Namespace::create()?);
    let release = Namespace::create()?;
    let list = format!("watchNamespaces={{{},{}}}", first.0, second.0);
    for manage in [true, false] {
        let rendered = run(
            "helm",
            &[
                "template",
                "commerce-operator",
                "charts/commerce-operator",
                "--namespace",
                &release.0,
                "--set",
                &list,
                "--set",
                &format!("crds.manage={manage}"),
            ],
            None,
        )?;
        let documents: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&rendered)
            .map(|document| serde::Deserialize::deserialize(document).map_err(anyhow::Error::from))
            .collect::<Result<Vec<serde_json::Value>>>()?
            .into_iter()
            .filter(|document| !document.is_null())
            .collect();
        let of_kind = |kind: &str| -> Vec<&serde_json::Value> {
            documents.iter().filter(|d| d["kind"] == kind).collect()
        };
        let namespaces_of = |kind: &str| -> Vec<String> {
            let mut found: Vec<String> = of_kind(kind)
                .iter()
                .filter(|d| d["metadata"]["name"] == "commerce-operator")
                .map(|d| d["metadata"]["namespace"].as_str().unwrap_or_default().to_owned())
                .collect();
            found.sort();
            found
        };
        let mut expected = vec![first.0.clone(), second.0.clone()];
        expected.sort();
        ensure!(namespaces_of("Role") == expected, "Roles in {:?}", namespaces_of("Role"));
        ensure!(
            namespaces_of("RoleBinding") == expected,
            "RoleBindings in {:?}",
            namespaces_of("RoleBinding")
        );
        let cluster_roles = of_kind("ClusterRole");
        ensure!(cluster_roles.len() == 1, "expected one ClusterRole, got {}", cluster_roles.len());
        let mut granted: Vec<String> = cluster_roles[0]["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|rule| {
                let names = rule["resourceNames"].as_array().map_or(0, Vec::len);
                let resources: Vec<String> = rule["resources"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| format!("{}:{}:{names}", r.as_str().unwrap_or_default(), rule["verbs"]))
                    .collect();
                resources
            })
            .collect();
        granted.sort();
        let mut wanted = vec![r#"storageclasses:["get"]:0"#.to_owned()];
        if manage {
            wanted.push(r#"customresourcedefinitions:["create"]:0"#.into());
            wanted.push(r#"customresourcedefinitions:["get","update"]:2"#.into());
        }
        wanted.sort();
        ensure!(granted == wanted, "cluster-wide grants {granted:?}, expected {wanted:?}");
        let env = &of_kind("Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"];
        let value = |name: &str| {
            env.as_array().into_iter().flatten().find(|e| e["name"] == name).map(|e| e["value"].clone())
        };
        ensure!(
            value("COMMERCE_WATCH_NAMESPACE") == Some(serde_json::json!(format!("{},{}", first.0, second.0)))
        );
        ensure!(value("COMMERCE_MANAGE_CRDS") == Some(serde_json::json!(manage.to_string())));
        let out = run("kubectl", &DRY_RUN_APPLY, Some(&rendered))?;
        ensure!(out.contains("role.rbac.authorization.k8s.io/commerce-operator"), "dry run output:\n{out}");
    }
    Ok(())
}

/// `--set image.tag=1` hands the chart a number: the values schema takes it
/// and the image carries it as written.
#[test]
fn a_number_as_image_tag_passes_the_values_schema_and_is_rendered_as_written() -> Result<()> {
    for tag in ["1", "20240101"] {
        let rendered = run(
            "helm",
            &[
                "template",
                "commerce-operator",
                "charts/commerce-operator",
                "--set",
                &format!("image.tag={tag}"),
            ],
            None,
        )?;
        let image = format!("image: \"ghcr.io/commerce-stack/commerce-operator:{tag}\"\n");
        ensure!(rendered.contains(&image), "no {image:?} in:\n{rendered}");
    }
    Ok(())
}

#[test]
fn the_kustomize_base_builds_and_is_accepted_by_the_apiserver_in_a_server_side_dry_run() -> Result<()> {
    let built = run("kubectl", &["kustomize", "manifests/base"], None)?;
    ensure!(built.contains("kind: CustomResourceDefinition"), "the base ships no CRDs:\n{built}");
    ensure!(built.contains("namespace: commerce-system"), "the base names no namespace:\n{built}");
    // The base's own namespace is shared by everyone; the dry run goes to a
    // namespace of this test's, as an overlay setting `namespace:` would.
    let namespace = Namespace::create()?;
    let retargeted: String = built
        .split("\n---\n")
        .filter(|doc| !doc.contains("kind: Namespace\n"))
        .map(|doc| doc.replace("commerce-system", &namespace.0))
        .collect::<Vec<_>>()
        .join("\n---\n");
    let out = run("kubectl", &DRY_RUN_APPLY, Some(&retargeted))?;
    for expected in ["customresourcedefinition", "deployment.apps/", "clusterrole.rbac.authorization.k8s.io/"]
    {
        ensure!(out.contains(expected), "dry run applied no {expected}:\n{out}");
    }
    println!("kustomize base, server-side dry run:\n{out}");
    Ok(())
}

/// `make generate` renders the chart into the kustomize base; a chart change
/// without a regeneration (or a hand edit of the base) fails here, before
/// `make check-generated` in CI.
#[test]
fn the_kustomize_base_is_the_chart_rendered_with_its_default_values() -> Result<()> {
    let rendered = run(
        "helm",
        &[
            "template",
            "commerce-operator",
            "charts/commerce-operator",
            "--namespace",
            "commerce-system",
            "--skip-crds",
        ],
        None,
    )?;
    let path = "manifests/base/commerce-operator.yaml";
    let stored = std::fs::read_to_string(repo().join(path)).with_context(|| format!("reading {path}"))?;
    let (header, body) = stored.split_once('\n').context("an empty file")?;
    ensure!(header.starts_with("# Generated by `make generate`"), "{path} has no generated header: {header}");
    ensure!(body == rendered, "{path} differs from `helm template` of the chart: run `make generate`");
    let kustomization = std::fs::read_to_string(repo().join("manifests/base/kustomization.yaml"))?;
    ensure!(kustomization.contains("- commerce-operator.yaml"), "the base does not use the rendered chart");
    Ok(())
}

#[test]
fn the_chart_and_crds_directory_hold_exactly_what_commerce_operator_crd_prints() -> Result<()> {
    let binary = operator_binary()?;
    let output = Command::new(&binary).arg("crd").output()?;
    if !output.status.success() {
        bail!("{} crd failed: {}", binary.display(), String::from_utf8_lossy(&output.stderr));
    }
    let printed = String::from_utf8(output.stdout)?;
    for copy in ["crds/commerce-stack.yaml", "charts/commerce-operator/crds/commerce-stack.yaml"] {
        let stored = std::fs::read_to_string(repo().join(copy)).with_context(|| format!("reading {copy}"))?;
        ensure!(stored == printed, "{copy} differs from `commerce-operator crd`: run `make generate`");
    }
    Ok(())
}
