#!/usr/bin/env bash
# schemathesis (PyPI), the OpenAPI fuzzer e2e/tests/contract.rs runs against
# the gateway, in a virtualenv cached per version under $COMMERCE_CACHE_DIR.
#
#   schemathesis.sh install    # prints nothing new when already installed
#   schemathesis.sh path       # the executable's path
COMPONENT=schemathesis
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VENV="$CACHE/schemathesis-$COMMERCE_SCHEMATHESIS_VERSION"

case "${1:-}" in
  install) with_lock schemathesis pip_venv_install "$VENV" "schemathesis==$COMMERCE_SCHEMATHESIS_VERSION" schemathesis --version ;;
  path) echo "$VENV/bin/schemathesis" ;;
  *) die "usage: $0 install|path" ;;
esac
