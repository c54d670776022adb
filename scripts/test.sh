#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (ctest), including
# a few seconds of each libFuzzer target. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

jobs=$(nproc)
# The fuzz targets build with clang in their own tree; ctest runs them.
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DTIDEFS_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j "$jobs"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTIDEFS_FUZZ_DIR="$PWD/build-fuzz" >/dev/null
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j 2 "$@"
