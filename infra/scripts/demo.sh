#!/usr/bin/env bash
# The adsync demo, end to end on this machine (no AWS account, no Amazon account, no Docker):
#   install.sh → stack-up.sh (dev ports: DynamoDB Local 8000, moto 5000, sandbox 9400) → builds the
#   functions and the demo driver → `cargo lambda watch` serving the three functions at
#   http://127.0.0.1:$INVOKE_PORT/lambda-url/<fn>/… (port 9000) → waits until each answers →
#   `cargo run -p adsync-tests --bin demo` → stops everything it started (also on failure/Ctrl-C).
# A stack that was already up before demo.sh (from stack-up.sh) is left running.
#
# Usage: infra/scripts/demo.sh [--serve] [STEP…]     (steps: foundation, then one per feature)
#   Prints the console's URL and the API key to sign in with at the end; with --serve, keeps the
#   stack and the functions serving (the console included) until Ctrl-C.
# Settings: STACK_NAME (dev), DDB_PORT, MOTO_PORT, SANDBOX_PORT, INVOKE_PORT (9000),
#   FUNCTIONS_WAIT_SECS (300).
set -euo pipefail
# shellcheck source=infra/scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

export STACK_NAME="${STACK_NAME:-dev}"
export INVOKE_PORT="${INVOKE_PORT:-9000}"
WAIT_SECS="${FUNCTIONS_WAIT_SECS:-300}"
FUNCTIONS=(oauth-callback segment-export conversion-ingest console)
SERVE=0
ARGS=()
for a in "$@"; do
  if [[ "$a" == "--serve" ]]; then SERVE=1; else ARGS+=("$a"); fi
done
started="$(now)"
cd "$REPO_ROOT"

DIR="$(stack_dir "$STACK_NAME")"
PIDS="$DIR/pids"
# Keyed by port, so demos of one stack on different INVOKE_PORTs never touch each other.
WATCH_KEY="functions-$INVOKE_PORT"
WATCH_LOG="$DIR/$WATCH_KEY.log"

bash "$REPO_ROOT/infra/scripts/install.sh"
use_venv

# Was the stack already up (started by stack-up.sh before us)? Then we leave it running.
stack_was_up=0
if [[ -s "$PIDS" ]]; then
  while read -r _svc pid marker; do
    if pid_matches "$pid" "$marker"; then stack_was_up=1; fi
  done <"$PIDS"
fi

watch_pid=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$watch_pid" ]]; then
    log "stopping cargo lambda watch (process group $watch_pid)"
    stop_group "$watch_pid" "cargo lambda watch"
    if [[ -f "$PIDS" ]]; then
      grep -v "^$WATCH_KEY " "$PIDS" >"$PIDS.tmp" || true
      mv "$PIDS.tmp" "$PIDS"
    fi
  fi
  if [[ "$stack_was_up" == "0" ]]; then
    bash "$REPO_ROOT/infra/scripts/stack-down.sh" --name "$STACK_NAME" || true
  else
    log "stack $STACK_NAME was already running before the demo: left running"
  fi
  log "demo.sh finished in $(elapsed "$started") (exit $rc)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bash "$REPO_ROOT/infra/scripts/stack-up.sh" --name "$STACK_NAME"
ENV_FILE="$(stack_env_file "$STACK_NAME")"
set -a
# shellcheck disable=SC1090
source "$ENV_FILE"
set +a

# A cargo lambda watch left behind by a demo that was killed hard: stop it (by its recorded pid).
if [[ -f "$PIDS" ]]; then
  old="$(awk -v k="$WATCH_KEY" '$1 == k { print $2 }' "$PIDS" | tail -n1)"
  if [[ -n "$old" ]] && pid_matches "$old" "cargo-lambda"; then
    log "stopping a cargo lambda watch left over from an earlier demo (pid $old)"
    stop_group "$old" "cargo lambda watch"
  fi
  grep -v "^$WATCH_KEY " "$PIDS" >"$PIDS.tmp" || true
  mv "$PIDS.tmp" "$PIDS"
fi
if port_open "$INVOKE_PORT"; then
  die "port $INVOKE_PORT is already in use (another cargo lambda watch?). Stop it, or run with INVOKE_PORT=<free port>."
fi

# Build first, in the open: the first build of a fresh clone takes minutes, and under
# `cargo lambda watch` it would happen silently inside the first request. One build per binary,
# as `cargo run --bin <fn>` (what the emulator runs) resolves features, so nothing is rebuilt.
t="$(now)"
log "building the functions and the demo driver (a few minutes the first time)"
for fn in "${FUNCTIONS[@]}"; do
  cargo build --bin "$fn" || die "building $fn failed"
done
cargo build -p adsync-tests --bin demo || die "building the demo driver failed"
log "built in $(elapsed "$t")"

log "starting cargo lambda watch on 127.0.0.1:$INVOKE_PORT (log $WATCH_LOG)"
mkdir -p "$DIR"
(exec setsid "$VENV/bin/cargo-lambda" lambda watch --invoke-address 127.0.0.1 --invoke-port "$INVOKE_PORT" \
  --ignore-changes --env-file "$ENV_FILE" >"$WATCH_LOG" 2>&1 </dev/null) &
watch_pid=$!
echo "$WATCH_KEY $watch_pid cargo-lambda" >>"$PIDS"

# Any HTTP answer from the function itself counts. The emulator answers 5xx while a function
# cannot start (or cannot be understood), so keep waiting (up to WAIT_SECS) on those.
deadline=$((SECONDS + WAIT_SECS))
for fn in "${FUNCTIONS[@]}"; do
  t="$(now)"
  log "waiting for $fn to answer"
  while :; do
    code="$(curl -s -o /dev/null -w '%{http_code}' -m 15 "$FUNCTIONS_URL/$fn/accounts" || true)"
    if [[ "$code" =~ ^[234][0-9][0-9]$ ]]; then
      log "$fn answers (HTTP $code, $(elapsed "$t"))"
      break
    fi
    if ! kill -0 "$watch_pid" 2>/dev/null; then
      tail -n 30 "$WATCH_LOG" >&2 || true
      die "cargo lambda watch exited; see $WATCH_LOG"
    fi
    if ((SECONDS > deadline)); then
      tail -n 30 "$WATCH_LOG" >&2 || true
      die "$fn did not answer within ${WAIT_SECS}s (last HTTP status $code); see $WATCH_LOG"
    fi
    sleep 2
  done
done

log "running the demo driver: cargo run -p adsync-tests --bin demo ${ARGS[*]}"
rc=0
cargo run -q -p adsync-tests --bin demo -- "${ARGS[@]}" || rc=$?

cat <<EOF

  Console   $FUNCTIONS_URL/console/console/sign-in
  API key   $ADSYNC_API_KEY   (sign in with it; the same key as the API)
EOF
if ((SERVE)); then
  log "serving the stack and the functions until Ctrl-C (log $WATCH_LOG)"
  while kill -0 "$watch_pid" 2>/dev/null; do sleep 1; done
  die "cargo lambda watch exited; see $WATCH_LOG"
fi
exit "$rc"
