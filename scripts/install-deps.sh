#!/usr/bin/env bash
# Installs what Herd's tests and benchmarks run, idempotently: the Debian
# packages of the real peers (exporters, PostgreSQL, Redis, Prometheus,
# Alertmanager, VictoriaMetrics, Chromium) and the rustfmt and clippy
# components. Used by scripts/test.sh and scripts/bench.sh.
set -euo pipefail

step() { printf '\n==> %s\n' "$*" >&2; }

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
