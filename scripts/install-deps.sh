#!/usr/bin/env bash
# Installs every build, test and benchmark dependency from Debian packages.
# Idempotent; returns at once when everything is present.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config ccache git
  clang libclang-rt-14-dev          # libFuzzer targets
  libfuse3-dev fuse3
  libcurl4-openssl-dev libssl-dev
  libsqlite3-dev sqlite3
  libzstd-dev libxxhash-dev
  libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev
  libboost-dev nlohmann-json3-dev libcli11-dev
  python3 curl wrk rsync tar
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "install-deps: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
