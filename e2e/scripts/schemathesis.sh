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
EXE="$VENV/bin/schemathesis"
# Written last: a venv without it is a broken earlier attempt.
DONE="$VENV/.installed"

do_install() {
  [[ -f "$DONE" && -x "$EXE" ]] && return 0
  mkdir -p "$CACHE"
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian ships ensurepip separately.
    apt_install python3-venv
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed"
  fi
  log "installing schemathesis $COMMERCE_SCHEMATHESIS_VERSION into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$COMMERCE_SCHEMATHESIS_VERSION" \
    || die "pip could not install schemathesis $COMMERCE_SCHEMATHESIS_VERSION"
  "$EXE" --version >/dev/null || die "$EXE does not run"
  touch "$DONE"
}

case "${1:-}" in
  install) with_lock schemathesis do_install ;;
  path) echo "$EXE" ;;
  *) die "usage: $0 install|path" ;;
esac
