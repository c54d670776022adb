#!/usr/bin/env bash
# Server API benchmarks (issue: server and v1 API), each beside a baseline
# measured in the same run. Usage: bench/server_bench.sh [nodes snapshot transfer commit import]
# Needs a built tree (build/). BENCH_DIR (default /tmp/tidefs-bench) holds data.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BENCH_DIR:-/tmp/tidefs-bench}
BIN=$PWD/build/tidefs
BENCH=$PWD/build/tidefs_bench
rm -rf "$B/data" "$B/ready" && mkdir -p "$B"
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; true; }
trap cleanup EXIT

. bench/common.sh
start_server "$B"

echo "# machine: $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB; $(date -u +%F)"
for w in "${@:-nodes snapshot transfer commit import}"; do
  case $w in
    nodes) "$BENCH" "$URL" nodes "$(token nodes)" nodes 100000 2000 10 ;;
    snapshot) "$BENCH" "$URL" snap "$(token snap)" snapshot 1000 1000 ;;
transfer)
      # What this disk takes: 1 GiB written (buffered, 4 streams, like the
      # server's pack lanes) and synced, into the data dir's file system.
      t0=$(date +%s.%N)
      dds=()
      for i in 1 2 3 4; do dd if=/dev/zero of="$B/data/dd$i" bs=4M count=64 conv=fdatasync 2>/dev/null & dds+=($!); done
      wait "${dds[@]}"
      t1=$(date +%s.%N); rm -f "$B"/data/dd?
      printf '%-40s %12.3f %s\n' baseline_disk_write_4streams "$(python3 -c "print(1073.741824/($t1-$t0))")" MB/s
      "$BENCH" "$URL" xfer "$(token xfer)" transfer 1024 "${PARALLEL:-8}" ;;
    commit) "$BENCH" "$URL" commit "$(token commit)" commit 10000 ;;
    import)
      T=$(token imp)
      SRC=$B/import-src
      if [ ! -f "$SRC/.complete" ]; then
        rm -rf "$SRC"
        python3 - "$SRC" <<'PY'
import os, sys
r = sys.argv[1]
for d in range(1000):
    os.makedirs(f"{r}/d{d:04d}")
    for i in range(100):
        with open(f"{r}/d{d:04d}/f{i:03d}", "wb") as f: f.write(os.urandom(512))
PY
        touch "$SRC/.complete"
      fi
      sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
      rm -rf "$B/copy"; t0=$(date +%s.%N); cp -r "$SRC" "$B/copy"; t1=$(date +%s.%N)
      base=$(python3 -c "print($t1-$t0)")
      printf '%-40s %12.3f %s\n' baseline_cp_r_100k_local "$base" s
      sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
      t0=$(date +%s.%N); "$BIN" import --server "$URL" --project imp --token "$T" "$SRC" >/dev/null; t1=$(date +%s.%N)
      imp=$(python3 -c "print($t1-$t0)")
      printf '%-40s %12.3f %s\n' import_100k_small_files "$imp" s
      printf '%-40s %12.3f %s\n' import_over_cp_r "$(python3 -c "print($imp/$base)")" x
      rm -rf "$B/copy" ;;
  esac
done
