#!/usr/bin/env bash
# Runs Herd's whole test suite on a fresh Debian machine of the project's
# kind: installs what the tests need (idempotently), then checks formatting
# and lints, builds every binary once, and runs all tests in parallel.
#
#   scripts/test.sh            everything
#   scripts/test.sh -E 'test(uplink)'   extra arguments go to cargo nextest
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

# In CI, reuse a build cache outside the clone when none is set; the suite
# also passes without one (it only saves build time).
if [[ ${CI:-} == true && -z ${CARGO_TARGET_DIR:-} ]]; then
  export CARGO_TARGET_DIR="${HOME:-/root}/.cache/herd-target"
fi

# Debian packages the tests run for real (peers to compare against).
packages=(prometheus-node-exporter postgresql redis-server prometheus-postgres-exporter prometheus-redis-exporter prometheus-alertmanager busybox-static prometheus victoria-metrics chromium chromium-driver)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  step "installing ${missing[*]}"
  sudo=""
  [[ $(id -u) == 0 ]] || sudo=sudo
  $sudo apt-get update -qq
  # Packages' own services are not wanted: tests start what they need on loopback.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's packaging may start node_exporter on :9100; the tests use their own ports.

for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    step "installing rust component $component"
    rustup component add "$component"
  fi
done

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build (binaries used by the end-to-end tests)"
cargo build --workspace --bins --locked

step "tests"
# Tests that compare with a real peer fail, rather than pass with a note, when it is missing.
export HERD_REQUIRE_PEERS=1
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  cargo test --workspace --locked --no-fail-fast
fi
