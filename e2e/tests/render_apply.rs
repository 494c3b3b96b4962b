//! What `commerce-operator render` prints is what a GitOps user commits and
//! applies with kubectl, Helm or Argo CD, which read YAML 1.1: every example
//! in `manifests/examples/` renders to objects that the local control plane
//! accepts in a server-side dry run (`kubectl apply --server-side
//! --dry-run=server`). A string written plain that YAML 1.1 takes for a bool
//! or a number (`yes` in Redis' args) fails here, as kubectl sends a bool
//! where the API wants a string.
//!
//! Needs the control plane only (`bash e2e/scripts/infra.sh up k8s`) and the
//! built operator (`cargo build -p commerce-operator`); kubectl comes from
//! `e2e/infra.env`. Each example is retargeted to a namespace of the test's
//! own (its documents' `metadata.namespace` replaced), created and deleted
//! here; a dry run persists nothing.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use anyhow::{Context as _, Result, ensure};
use commerce_e2e::{local_kubeconfig_path, unique_name};
use serde::Deserialize as _;

/// The repository root (this crate lives in `e2e/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The built operator binary: `$COMMERCE_OPERATOR_BIN` when set, else next
/// to this test's own target directory or in `$CARGO_TARGET_DIR`.
fn operator_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("COMMERCE_OPERATOR_BIN") {
        let path = PathBuf::from(path);
        ensure!(path.is_file(), "COMMERCE_OPERATOR_BIN={} is not a file", path.display());
        return Ok(path);
    }
    let exe = std::env::current_exe()?;
    // <target>/debug/deps/render_apply-<hash> -> <target>/debug/commerce-operator
    let beside = exe.parent().and_then(Path::parent).map(|dir| dir.join("commerce-operator"));
    let from_env = std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| PathBuf::from(dir).join("debug").join("commerce-operator"));
    beside.into_iter().chain(from_env).find(|path| path.is_file()).context(
        "commerce-operator is not built: run `cargo build -p commerce-operator` \
         (with the same CARGO_TARGET_DIR) before these tests",
    )
}

/// Runs `program args` with `stdin` and the local kubeconfig.
fn run(program: &Path, args: &[&str], stdin: &str) -> Result<Output> {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(repo())
        .env("KUBECONFIG", local_kubeconfig_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("starting {}: is it on PATH? `source e2e/infra.env` puts it there", program.display())
        })?;
    child.stdin.take().context("stdin of the child")?.write_all(stdin.as_bytes())?;
    Ok(child.wait_with_output()?)
}

/// Like [`run`], failing with the output unless the program succeeds.
fn run_ok(program: &Path, args: &[&str], stdin: &str) -> Result<String> {
    let output = run(program, args, stdin)?;
    ensure!(
        output.status.success(),
        "{} {} failed ({}):\n{}{}",
        program.display(),
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

fn kubectl(args: &[&str], stdin: &str) -> Result<String> {
    run_ok(Path::new("kubectl"), args, stdin)
}

/// A namespace of the test's own, deleted when dropped.
struct Namespace(String);

impl Namespace {
    fn create() -> Result<Self> {
        let name = unique_name("e2e-render");
        kubectl(&["create", "namespace", &name], "")?;
        let namespace = Namespace(name);
        kubectl(&["label", "namespace", &namespace.0, "commerce-stack/e2e=true"], "")?;
        Ok(namespace)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(error) = kubectl(&["delete", "namespace", &self.0, "--wait=true", "--timeout=90s"], "") {
            eprintln!("cleanup of namespace {}: {error}", self.0);
        }
    }
}

/// The documents of `yaml` with `metadata.namespace` set to `namespace`, as
/// one YAML stream (JSON documents, which every YAML reader reads alike).
fn retarget(yaml: &str, namespace: &str) -> Result<String> {
    let mut documents = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(yaml) {
        let mut value = serde_json::Value::deserialize(document)?;
        if value.is_null() {
            continue;
        }
        value["metadata"]["namespace"] = serde_json::Value::String(namespace.to_owned());
        documents.push(value.to_string());
    }
    Ok(documents.join("\n---\n"))
}

#[test]
fn every_rendered_example_is_accepted_by_the_apiserver_in_a_server_side_dry_run() -> Result<()> {
    let operator = operator_binary()?;
    let namespace = Namespace::create()?;
    let mut examples: Vec<PathBuf> = std::fs::read_dir(repo().join("manifests/examples"))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    examples.retain(|path| path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"));
    examples.sort();
    ensure!(examples.len() >= 3, "expected the examples full, local and minimal: {examples:?}");
    let mut failures = Vec::new();
    for example in &examples {
        let name = example.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let input = retarget(&std::fs::read_to_string(example)?, &namespace.0)?;
        let rendered = run_ok(&operator, &["render", "-f", "-", "-n", &namespace.0], &input)
            .with_context(|| format!("rendering {name}"))?;
        ensure!(rendered.contains("kind: Deployment\n"), "{name} renders no Deployment:\n{rendered}");
        let dry_run = run(
            Path::new("kubectl"),
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "--field-manager=commerce-e2e",
                "-n",
                &namespace.0,
                "-f",
                "-",
            ],
            &rendered,
        )?;
        let stdout = String::from_utf8_lossy(&dry_run.stdout);
        if dry_run.status.success() {
            ensure!(
                stdout.contains("deployment.apps/"),
                "{name}: the dry run applied no Deployment:\n{stdout}"
            );
            println!("{name}, server-side dry run:\n{stdout}");
        } else {
            failures.push(format!("{name}: {}\n{stdout}", String::from_utf8_lossy(&dry_run.stderr)));
        }
    }
    ensure!(failures.is_empty(), "rendered examples the apiserver refused:\n{}", failures.join("\n"));
    Ok(())
}
