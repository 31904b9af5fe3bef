#!/usr/bin/env bash
# Installs the Debian packages Conveyor and its tests need. Idempotent: installs
# only what is missing. Run as root (CI and these machines are); otherwise uses sudo.
set -euo pipefail

# nginx and haproxy: the load balancers the HA tests and `conveyor cluster up` run.
# systemd: systemd-analyze checks the shipped units (tests/deploy).
# chromium: the browser the web UI tests drive through Playwright (tests/ui).
packages=(python3-venv python3-dev git procps nginx haproxy prometheus swift-proxy swift-object swift-container swift-account memcached systemd chromium)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# python3 -m venv may work from a non-Debian Python (pyenv) without python3-venv.
if python3 -c 'import venv, ensurepip' 2>/dev/null; then
  missing=("${missing[@]/python3-venv}")
  missing=("${missing[@]/python3-dev}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing system packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
