#!/usr/bin/env bash
# Soak of the local serving path: builds the functions and the soak driver, serves the functions
# with `cargo lambda watch` on 127.0.0.1:$INVOKE_PORT, waits until they answer, then runs
# `cargo run -p adsync-tests --bin soak -- [ARGS…]`, which sends conversion and qualification
# requests of mixed sizes (up to 10 000 items) through the emulator and checks every answer
# (see tests/src/bin/soak.rs). Stops the emulator it started, also on failure or Ctrl-C.
#
# Needs a running local stack (stack-up.sh) and its env file:
#   infra/scripts/soak.sh --requests 200                         # the full soak, dev stack
#   ENV_FILE=.local/stack-test/stack.env infra/scripts/soak.sh --requests 20 --max-items 4500
# Settings: ENV_FILE (default: the STACK_NAME stack's, `dev`), INVOKE_PORT (default: the env
#   file's FUNCTIONS_URL port), FUNCTIONS_WAIT_SECS (300), SOAK_PROFILE (dev; `release` builds
#   the functions and the driver with --release).
set -euo pipefail
# shellcheck source=infra/scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cd "$REPO_ROOT"
use_venv
ENV_FILE="${ENV_FILE:-$(stack_env_file "${STACK_NAME:-dev}")}"
[[ -f "$ENV_FILE" ]] || die "no stack env file $ENV_FILE: start the stack first (infra/scripts/stack-up.sh)"
set -a
# shellcheck disable=SC1090
source "$ENV_FILE"
set +a
INVOKE_PORT="${INVOKE_PORT:-$(sed -E 's#.*:([0-9]+)/.*#\1#' <<<"$FUNCTIONS_URL")}"
export FUNCTIONS_URL="http://127.0.0.1:$INVOKE_PORT/lambda-url"
WAIT_SECS="${FUNCTIONS_WAIT_SECS:-300}"
PROFILE_FLAG=()
[[ "${SOAK_PROFILE:-dev}" == "release" ]] && PROFILE_FLAG=(--release)
LOG="$(dirname "$ENV_FILE")/soak-watch-$INVOKE_PORT.log"
started="$(now)"

port_open "$INVOKE_PORT" && die "port $INVOKE_PORT is already in use (another cargo lambda watch?); set INVOKE_PORT"

watch_pid=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$watch_pid" ]]; then
    stop_group "$watch_pid" "cargo lambda watch"
  fi
  log "soak.sh finished in $(elapsed "$started") (exit $rc; emulator log $LOG)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "building the soak driver and the functions"
cargo build "${PROFILE_FLAG[@]}" -p adsync-tests --bin soak || die "building the soak driver failed"
# One build per binary, as `cargo run --bin <fn>` (what the emulator runs) resolves features, so
# the emulator does not rebuild anything (see demo.sh).
for fn in conversion-ingest segment-export; do
  cargo build "${PROFILE_FLAG[@]}" --bin "$fn" || die "building $fn failed"
done

log "starting cargo lambda watch on 127.0.0.1:$INVOKE_PORT (log $LOG)"
# -v: the emulator's debug log, which names every runtime connection it registers (see below).
WATCH_ARGS=(lambda -v watch --invoke-address 127.0.0.1 --invoke-port "$INVOKE_PORT" --ignore-changes --env-file "$ENV_FILE")
[[ "${SOAK_PROFILE:-dev}" == "release" ]] && WATCH_ARGS+=(--release)
(exec setsid "$VENV/bin/cargo-lambda" "${WATCH_ARGS[@]}" >"$LOG" 2>&1 </dev/null) &
watch_pid=$!

deadline=$((SECONDS + WAIT_SECS))
for fn in conversion-ingest segment-export; do
  while :; do
    code="$(curl -s -o /dev/null -w '%{http_code}' -m 15 "$FUNCTIONS_URL/$fn/soak-ready" || true)"
    [[ "$code" =~ ^[234][0-9][0-9]$ ]] && break
    kill -0 "$watch_pid" 2>/dev/null || { tail -n 30 "$LOG" >&2; die "cargo lambda watch exited; see $LOG"; }
    ((SECONDS > deadline)) && { tail -n 30 "$LOG" >&2; die "$fn did not answer within ${WAIT_SECS}s"; }
    sleep 1
  done
  log "$fn answers"
done

rc=0
"$REPO_ROOT/target/$([[ "${SOAK_PROFILE:-dev}" == "release" ]] && echo release || echo debug)/soak" "$@" || rc=$?
# Each function should have kept one runtime connection. A second one means the runtime polled
# again while an answer was still being written: the emulator race shared/src/local_serving.rs
# works around (where answers got lost).
for fn in conversion-ingest segment-export; do
  n="$(grep -c "registered connection.*function_name=\"$fn\"" "$LOG" || true)"
  log "$fn: $n runtime connection(s) registered by the emulator"
done
exit "$rc"
