#!/usr/bin/env bash
# libfaketime (Debian's package), which the clock-skew fault test preloads
# into its private Postgres to run the shop's clock minutes apart from every
# service's (e2e/tests/chaos_scale.rs).
#
#   faketime.sh install    # prints nothing new when already installed
#   faketime.sh path       # the preload library's path
COMPONENT=faketime
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

library() {
  compgen -G '/usr/lib/*/faketime/libfaketime.so.1' | head -n 1
}

do_install() {
  [[ -n "$(library)" ]] && return 0
  apt_install libfaketime
  [[ -n "$(library)" ]] || die "libfaketime is installed but libfaketime.so.1 was not found under /usr/lib/*/faketime"
}

case "${1:-}" in
  install) with_lock faketime do_install ;;
  path) library || die "libfaketime is not installed; run: $0 install" ;;
  *) die "usage: $0 install|path" ;;
esac
