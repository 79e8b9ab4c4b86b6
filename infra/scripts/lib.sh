# shellcheck shell=bash
# Helpers shared by the adsync scripts in infra/scripts. Sourced, never run.
#
# Everything the scripts install or start lives under the repo's .local/ (gitignored), so a
# clone is self-contained and removing .local/ resets the machine to a fresh state.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LOCAL_DIR="$REPO_ROOT/.local"
VENV="$LOCAL_DIR/venv"
NODE_DIR="$LOCAL_DIR/node"
export REPO_ROOT LOCAL_DIR VENV NODE_DIR

# Colours only on a terminal (CI logs stay plain).
if [[ -t 2 ]]; then C_LOG=$'\033[1;34m' C_WARN=$'\033[1;33m' C_ERR=$'\033[1;31m' C_OFF=$'\033[0m'; else C_LOG="" C_WARN="" C_ERR="" C_OFF=""; fi
log() { printf '%s[adsync]%s %s\n' "$C_LOG" "$C_OFF" "$*" >&2; }
warn() { printf '%s[adsync] warning:%s %s\n' "$C_WARN" "$C_OFF" "$*" >&2; }
die() {
  printf '%s[adsync] error:%s %s\n' "$C_ERR" "$C_OFF" "$*" >&2
  exit 1
}

# Seconds since the epoch with a fraction, for timings.
now() { date +%s.%N; }
elapsed() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.1fs", e - s }'; }

# The stack name → its directory and env file. The default stack `dev` writes .local/stack.env,
# which other tools and engineers rely on; any other stack keeps its env file in its directory.
stack_dir() { printf '%s/stack-%s' "$LOCAL_DIR" "$1"; }
stack_env_file() {
  if [[ "$1" == "dev" ]]; then
    printf '%s/stack.env' "$LOCAL_DIR"
  else
    printf '%s/stack.env' "$(stack_dir "$1")"
  fi
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# True when the pid is alive and its command line contains the marker (guards against a pid
# that was reused by an unrelated process after a crash or reboot).
pid_matches() {
  local pid="$1" marker="$2"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$marker"
}

# Prepends the venv (cargo-lambda, sam, cfn-lint, moto) to PATH. One venv, so `python3 -m ziglang`
# (how cargo-lambda finds zig) resolves to the venv's python.
use_venv() {
  [[ -x "$VENV/bin/python" ]] || die "the tool venv is missing: run infra/scripts/install.sh first"
  export PATH="$VENV/bin:$PATH"
  export SAM_CLI_TELEMETRY=0
}

# Every descendant of a pid (children may have left its process group: cargo-lambda starts each
# `cargo run` in a group of its own).
descendants() {
  local child
  for child in $(pgrep -P "$1" 2>/dev/null || true); do
    echo "$child"
    descendants "$child"
  done
}

# stop_group PGID NAME [WAIT_SECS]: SIGTERM to the process group and to every descendant, wait
# until all are gone, SIGKILL what is left after WAIT_SECS (default 10).
stop_group() {
  local pgid="$1" name="$2" wait="${3:-10}" p alive
  local -a tree
  mapfile -t tree < <(descendants "$pgid")
  kill -TERM -- "-$pgid" 2>/dev/null || kill -TERM "$pgid" 2>/dev/null || true
  for p in "${tree[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  local deadline=$((SECONDS + wait))
  while :; do
    alive=0
    pgrep -g "$pgid" >/dev/null 2>&1 && alive=1
    for p in "${tree[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || return 0
    if ((SECONDS >= deadline)); then
      warn "$name did not stop within ${wait}s: sending SIGKILL"
      kill -KILL -- "-$pgid" 2>/dev/null || true
      for p in "${tree[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
      return 0
    fi
    sleep 0.1
  done
}
