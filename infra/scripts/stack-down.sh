#!/usr/bin/env bash
# Stops exactly the processes a stack-up (and demo.sh) of this stack started, by the pids recorded
# in .local/stack-NAME/pids: each was started as the leader of its own process group, so the whole
# group (children included) gets SIGTERM, then SIGKILL after STOP_WAIT_SECS (10). Services that
# stack-up found already running on a port and reused are left alone. Safe to run twice.
#
# Usage: infra/scripts/stack-down.sh [--name NAME]     (or STACK_NAME=NAME; default dev)
set -euo pipefail
# shellcheck source=infra/scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STACK_NAME="${STACK_NAME:-dev}"
while (($#)); do
  case "$1" in
    --name) STACK_NAME="${2:?--name needs a value}"; shift 2 ;;
    -h | --help) sed -n '2,7p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (usage: $0 [--name NAME])" ;;
  esac
done

DIR="$(stack_dir "$STACK_NAME")"
PIDS="$DIR/pids"
WAIT="${STOP_WAIT_SECS:-10}"

if [[ ! -s "$PIDS" ]]; then
  log "stack $STACK_NAME: nothing to stop"
  rm -f "$PIDS"
  exit 0
fi

group_alive() { pgrep -g "$1" >/dev/null 2>&1; }

while read -r svc pid marker; do
  [[ -n "${pid:-}" ]] || continue
  # A pid whose command line no longer matches was reused by an unrelated process: never touch it.
  if pid_matches "$pid" "$marker" || group_alive "$pid"; then
    log "stack $STACK_NAME: stopping $svc (process group $pid)"
    stop_group "$pid" "$svc" "$WAIT"
  else
    log "stack $STACK_NAME: $svc (pid $pid) is not running"
  fi
done <"$PIDS"

rm -f "$PIDS"
log "stack $STACK_NAME: stopped"
