#!/usr/bin/env bash
# aiosmtpd (PyPI), the SMTP server the email tests send to: started by each
# test on a loopback port of its own, it writes every message it accepts
# into a Maildir. Installed into a virtualenv cached per version under
# $COMMERCE_CACHE_DIR.
#
#   smtp.sh install    # prints nothing new when already installed
#   smtp.sh path       # the virtualenv's python
COMPONENT=smtp
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VENV="$CACHE/aiosmtpd-$COMMERCE_AIOSMTPD_VERSION"
PYTHON="$VENV/bin/python"
# Written last: a venv without it is a broken earlier attempt.
DONE="$VENV/.installed"

do_install() {
  [[ -f "$DONE" && -x "$PYTHON" ]] && return 0
  mkdir -p "$CACHE"
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian ships ensurepip separately.
    apt_install python3-venv
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed"
  fi
  log "installing aiosmtpd $COMMERCE_AIOSMTPD_VERSION into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "aiosmtpd==$COMMERCE_AIOSMTPD_VERSION" \
    || die "pip could not install aiosmtpd $COMMERCE_AIOSMTPD_VERSION"
  "$PYTHON" -c "import aiosmtpd.handlers" || die "$PYTHON cannot import aiosmtpd"
  touch "$DONE"
}

case "${1:-}" in
  install) with_lock smtp do_install ;;
  path) echo "$PYTHON" ;;
  *) die "usage: $0 install|path" ;;
esac
