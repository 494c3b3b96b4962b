//! Snapshots of what the example stacks in `manifests/examples` become:
//! `render` runs the same `validate` and `build` as the reconciler, so a
//! change to any builder shows up here as a reviewable diff.

use commerce_operator::render::render;

fn rendered(file: &str) -> String {
    let path = format!("{}/../manifests/examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    render(&yaml, "default").unwrap()
}

#[test]
fn the_minimal_example_with_external_infrastructure_renders_as_snapshotted() {
    insta::assert_snapshot!("minimal", rendered("minimal.yaml"));
}

#[test]
fn the_full_example_with_managed_infrastructure_renders_as_snapshotted() {
    insta::assert_snapshot!("full", rendered("full.yaml"));
}

#[test]
fn rendering_is_deterministic() {
    assert_eq!(rendered("full.yaml"), rendered("full.yaml"));
}
