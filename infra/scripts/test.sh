#!/usr/bin/env bash
# Runs every check adsync has, the way CI does (.ci/run calls exactly this):
#   install.sh → its own local stack `test` on ports that do not collide with a dev stack
#   (DynamoDB Local 18000, moto 15000, sandbox 19400) → cargo fmt --check, clippy -D warnings,
#   the structure check (infra/scripts/structure.py: file and function sizes, layers),
#   cargo test --workspace with the stack's environment (unit, DynamoDB Local / moto / sandbox
#   integration and browser tests), a short soak of the functions served by `cargo lambda watch`
#   (infra/scripts/soak.sh), cfn-lint, the IAM wildcard check (infra/scripts/check_iam.py),
#   cargo deny check bans licenses sources (deny.toml), sam validate --lint → stops the stack, also on failure
#   or Ctrl-C. Every check runs even when an earlier one fails; the exit code is 0 only if all pass.
#
# Usage: infra/scripts/test.sh      (TEST_DDB_PORT / TEST_MOTO_PORT / TEST_SANDBOX_PORT override ports)
set -euo pipefail
# shellcheck source=infra/scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STACK="test"
export STACK_NAME="$STACK"
export DDB_PORT="${TEST_DDB_PORT:-18000}"
export MOTO_PORT="${TEST_MOTO_PORT:-15000}"
export SANDBOX_PORT="${TEST_SANDBOX_PORT:-19400}"
export INVOKE_PORT="${TEST_INVOKE_PORT:-19000}"
# A run from scratch gains nothing from incremental compilation, and its caches would add ~2.2 GB to
# target/ (measured on a fresh clone; CI's disk is small).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Below this much free space (MB) on target/'s disk, the test step's executables (~2.4 GB) are
# deleted once it has run, before the soak builds its own (see free_test_executables).
LOW_DISK_MB="${TEST_LOW_DISK_MB:-12000}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
# Tests always run against our own sandbox, never a real Amazon set in the caller's shell.
unset AMAZON_ADS_API_URL AMAZON_LWA_AUTH_URL AMAZON_LWA_TOKEN_URL

started="$(now)"
cd "$REPO_ROOT"

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  bash "$REPO_ROOT/infra/scripts/stack-down.sh" --name "$STACK" || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bash "$REPO_ROOT/infra/scripts/install.sh"
use_venv
# A run that was killed hard may have left its stack behind: stop it first (by its pid file).
bash "$REPO_ROOT/infra/scripts/stack-down.sh" --name "$STACK"
bash "$REPO_ROOT/infra/scripts/stack-up.sh" --name "$STACK"
set -a
# shellcheck disable=SC1090
source "$(stack_env_file "$STACK")"
set +a

passed=()
failed=()
check() {
  local name="$1"
  shift
  local t
  t="$(now)"
  log "── $name: $*"
  if "$@"; then
    passed+=("$name")
    log "── $name: passed ($(elapsed "$t"))"
  else
    failed+=("$name")
    printf '%s[adsync] ── %s: FAILED (%s)%s\n' "$C_ERR" "$name" "$(elapsed "$t")" "$C_OFF" >&2
  fi
}

free_mb() { df -Pm "$TARGET_DIR" 2>/dev/null | awk 'NR == 2 { print $4 }'; }

# The test harnesses `cargo test` built (what `--no-run` lists as test artifacts): a later
# `cargo test` builds those test crates again (not their dependencies).
free_test_executables() {
  local free
  free="$(free_mb)" || free=""
  [[ -n "$free" ]] && ((free < LOW_DISK_MB)) || return 0
  if cargo test --workspace --no-run --message-format=json 2>/dev/null |
    "$VENV/bin/python" -c '
import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["profile"]["test"] and m.get("executable"):
        try:
            os.remove(m["executable"])
        except FileNotFoundError:
            pass
'; then
    log "only ${free} MB free on target's disk: deleted the test executables ($(free_mb || true) MB free now)"
  else
    log "could not list or delete the test executables (the soak may run short of disk)"
  fi
}

check fmt cargo fmt --all -- --check
check clippy cargo clippy --workspace --all-targets -- -D warnings
# Files ≤ 600 lines, non-test functions ≤ 80, imports one way down the layers (docs/design.md).
check structure "$VENV/bin/python" infra/scripts/structure.py
check test cargo test --workspace --no-fail-fast
free_test_executables
# The local serving path: ~20 requests of mixed sizes through `cargo lambda watch` (the full 200
# is a documented command: infra/scripts/soak.sh --requests 200).
check soak env ENV_FILE="$(stack_env_file "$STACK")" bash infra/scripts/soak.sh --requests 20 --max-items 2000
check cfn-lint cfn-lint template.yaml
check iam-scope "$VENV/bin/python" infra/scripts/check_iam.py template.yaml
check cargo-deny "$LOCAL_DIR/tools/bin/cargo-deny" check bans licenses sources
check sam-validate sam validate --lint --template template.yaml

log "disk: target/ $(du -sh "$TARGET_DIR" 2>/dev/null | cut -f1), .local/ $(du -sh "$LOCAL_DIR" 2>/dev/null | cut -f1)"
total=$((${#passed[@]} + ${#failed[@]}))
if ((${#failed[@]})); then
  echo "test.sh: FAILED ${failed[*]} (${#failed[@]} of $total checks failed; passed: ${passed[*]:-none}) in $(elapsed "$started")"
  exit 1
fi
echo "test.sh: all $total checks passed (${passed[*]}) in $(elapsed "$started")"
