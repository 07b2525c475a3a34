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

scripts/install-deps.sh

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
