#!/usr/bin/env bash
# aiosmtpd (PyPI), the SMTP server the email tests send to: started by each
# test on a loopback port of its own (services/testkit/src/smtp.rs), it
# writes every message it accepts into a Maildir. Installed into a
# virtualenv cached per version under $COMMERCE_CACHE_DIR.
#
#   smtp.sh install    # prints nothing new when already installed
#   smtp.sh path       # the virtualenv's python
COMPONENT=smtp
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VENV="$CACHE/aiosmtpd-$COMMERCE_AIOSMTPD_VERSION"

case "${1:-}" in
  install) with_lock smtp pip_venv_install "$VENV" "aiosmtpd==$COMMERCE_AIOSMTPD_VERSION" python -c "import aiosmtpd.handlers" ;;
  path) echo "$VENV/bin/python" ;;
  *) die "usage: $0 install|path" ;;
esac
