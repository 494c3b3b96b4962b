#!/usr/bin/env bash
# All local infrastructure at once: Postgres, Redis, Kafka, the Kubernetes
# control plane and the real node, each through its own script in this
# directory.
#
#   infra.sh install|up|down|status [postgres redis kafka k8s node ...]
#
# With no components, acts on all five (down in reverse order). `up` starts
# only what is not already answering; `status` prints one line per component.
set -euo pipefail

SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ALL=(postgres redis kafka k8s node)

usage() {
  printf 'usage: %s install|up|down|status [%s ...]\n' "$(basename "$0")" "${ALL[*]}" >&2
  exit 2
}

verb="${1:-}"
[[ -n "$verb" ]] || usage
shift
case "$verb" in
  install | up | down | status) ;;
  *) usage ;;
esac

components=("$@")
((${#components[@]})) || components=("${ALL[@]}")
for c in "${components[@]}"; do
  [[ -f "$SCRIPTS/$c.sh" && " ${ALL[*]} " == *" $c "* ]] || {
    printf 'infra.sh: unknown component %q (known: %s)\n' "$c" "${ALL[*]}" >&2
    exit 2
  }
done

if [[ "$verb" == down ]]; then
  # Stop in reverse order of start.
  for ((i = ${#components[@]} - 1; i >= 0; i--)); do
    bash "$SCRIPTS/${components[$i]}.sh" down
  done
elif [[ "$verb" == status ]]; then
  printf '%-24s %-10s %-24s %s\n' COMPONENT VERSION ADDRESS STATE
  for c in "${components[@]}"; do
    bash "$SCRIPTS/$c.sh" status
  done
else
  for c in "${components[@]}"; do
    bash "$SCRIPTS/$c.sh" "$verb"
  done
fi
