#!/usr/bin/env bash
# stripe-mock, Stripe's official mock of its API: the payment service's
# Stripe adapter is tested against it (services/payment/tests/stripe.rs and
# the saga test with the Stripe provider). Each test starts the binary
# itself on a loopback port of its own and stops it by its pid; this script
# only builds it.
#
#   stripe-mock.sh install   # builds it unless cached; prints nothing new then
#   stripe-mock.sh path      # the binary (built first when missing)
#
# github.com/stripe/stripe-mock, pinned in e2e/stripe/go.mod, built from
# the Go module proxy in about half a minute; cached under
# $COMMERCE_CACHE_DIR/stripe-<hash of go.mod and go.sum>.
#
# stripe-mock checks every request against Stripe's OpenAPI document (paths,
# parameters, authentication) and answers with fixtures; it keeps no state.

COMPONENT=stripe-mock
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

build() {
  go_tools_build stripe stripe-mock
}

case "${1:-}" in
  install) with_lock stripe-mock build ;;
  path)
    with_lock stripe-mock build
    printf '%s/stripe-mock\n' "$(go_tools_dir stripe)"
    ;;
  *) die "usage: $0 install|path" ;;
esac
