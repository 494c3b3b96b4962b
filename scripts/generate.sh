#!/usr/bin/env bash
# Regenerates every generated file from its source of truth. CI runs this and
# fails on any diff, so generated files never drift from the Rust types.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:=$HOME/.cache/commerce-stack/target}"
export CARGO_TARGET_DIR

if [ -d operator/src ] && grep -q '^name = "commerce-operator"' operator/Cargo.toml 2>/dev/null; then
  cargo run --locked --quiet -p commerce-operator -- crd > crds/commerce-stack.yaml
  if [ -d charts/commerce-operator ]; then
    mkdir -p charts/commerce-operator/crds
    cp crds/commerce-stack.yaml charts/commerce-operator/crds/commerce-stack.yaml
  fi
fi
