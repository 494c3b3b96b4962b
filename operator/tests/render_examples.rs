//! Snapshots of what the example stacks in `manifests/examples` become:
//! `render` runs the same `validate` and `build` as the reconciler, so a
//! change to any builder shows up here as a reviewable diff. One snapshot
//! per rendered object (`snapshots/<example>/<Kind>_<name>.snap`), so that
//! a change shows as a diff of exactly the objects it touched; a snapshot
//! whose object is no longer rendered fails the test until it is deleted.
//!
//! After an intended change: `INSTA_UPDATE=always cargo test -p
//! commerce-operator --test render_examples`, then review the diff.

use std::collections::BTreeSet;
use std::path::PathBuf;

use commerce_operator::render::render;

fn rendered(file: &str) -> String {
    let path = format!("{}/../manifests/examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    render(&yaml, "default").unwrap()
}

/// The rendered objects of an example as (`<Kind>_<name>`, YAML document).
fn objects(file: &str) -> Vec<(String, String)> {
    let text = rendered(file);
    let mut objects = Vec::new();
    for document in text.split("\n---\n").map(|d| d.trim_start_matches("---\n").trim()) {
        if document.is_empty() {
            continue;
        }
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(document).expect("a YAML document");
        let kind = value["kind"].as_str().expect("a kind");
        let name = value["metadata"]["name"].as_str().expect("a name");
        objects.push((format!("{kind}_{name}"), format!("{document}\n")));
    }
    objects
}

/// Asserts every object of `example` against its snapshot, then that no
/// snapshot is left of an object the example no longer renders.
fn assert_snapshotted(example: &str) {
    let objects = objects(&format!("{example}.yaml"));
    let names: BTreeSet<String> = objects.iter().map(|(name, _)| format!("{name}.snap")).collect();
    assert_eq!(names.len(), objects.len(), "two rendered objects share a kind and a name");
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(format!("snapshots/{example}"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.bind(|| {
        for (name, document) in &objects {
            insta::assert_snapshot!(name.as_str(), document);
        }
    });
    let directory = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(example);
    let stale: Vec<String> = std::fs::read_dir(&directory)
        .unwrap_or_else(|e| panic!("reading {}: {e}", directory.display()))
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|file| file.ends_with(".snap") && !names.contains(file))
        .collect();
    assert!(stale.is_empty(), "snapshots of objects {example} no longer renders (delete them): {stale:?}");
}

#[test]
fn the_minimal_example_with_external_infrastructure_renders_as_snapshotted() {
    assert_snapshotted("minimal");
}

#[test]
fn the_full_example_with_managed_infrastructure_renders_as_snapshotted() {
    assert_snapshotted("full");
}

#[test]
fn rendering_is_deterministic() {
    assert_eq!(rendered("full.yaml"), rendered("full.yaml"));
}
