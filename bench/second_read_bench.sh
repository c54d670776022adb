#!/usr/bin/env bash
# The second read of 1 GiB (issue: mount, read path): in alternated rounds,
# with page caches dropped before each, the local folder, the do-nothing
# FUSE floor (build/tidefs_fuse_floor) and a fresh tidefs mount each read
# 1 GiB cold and then again with dd bs=1M. The "again" figure is the
# kernel's page cache of each: prints GB/s (or MB/s) as dd reports them.
#
# Usage: bench/second_read_bench.sh [ROUNDS=5]
# Needs root, /dev/fuse and a built tree. Data in BENCH_DIR (default
# /tmp/tidefs-anchors; its remote/big1g is made if missing).
set -u
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
B=${BENCH_DIR:-/tmp/tidefs-anchors}
T=$(mktemp -d /tmp/tidefs-second-read-XXXXXX)
BIN=$PWD/build/tidefs
FLOOR=$PWD/build/tidefs_fuse_floor
PID=
FP=
cleanup() {
  mountpoint -q "$T/mnt" && fusermount3 -uz "$T/mnt"
  mountpoint -q "$T/fm" && fusermount3 -uz "$T/fm"
  [ -n "$FP" ] && wait "$FP" 2>/dev/null
  [ -n "$PID" ] && kill "$PID" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT
mkdir -p "$B/remote" "$T/src" "$T/mnt" "$T/fm"
[ -f "$B/remote/big1g" ] || head -c 1G /dev/urandom >"$B/remote/big1g"
. bench/common.sh
start_server "$T"
TOK=$(token p)
ln "$B/remote/big1g" "$T/src/big" 2>/dev/null || cp "$B/remote/big1g" "$T/src/big"
"$BIN" import --server "$URL" --project p --token "$TOK" "$T/src" >/dev/null
rd() { dd if="$1" of=/dev/null bs=1M 2>&1 | tail -1 | awk '{print $(NF-1), $NF}'; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
for r in $(seq "$ROUNDS"); do
  drop; l="$(rd "$B/remote/big1g") / $(rd "$B/remote/big1g")"
  drop; "$FLOOR" "$T/fm" & FP=$!
  for _ in $(seq 100); do mountpoint -q "$T/fm" && break; sleep 0.05; done
  # (The read-ahead tidefs sets for itself.)
  echo 1024 >"/sys/class/bdi/$(awk -v m="$T/fm" '$5 == m {print $3}' /proc/self/mountinfo | tail -1)/read_ahead_kb"
  f="$(rd "$T/fm/big") / $(rd "$T/fm/big")"
  fusermount3 -u "$T/fm"; wait "$FP"; FP=
  rm -rf "$T/c"; drop
  "$BIN" mount --server "$URL" --project p --token "$TOK" --cache-dir "$T/c" "$T/mnt"
  t="$(rd "$T/mnt/big") / $(rd "$T/mnt/big")"
  "$BIN" unmount "$T/mnt"
  echo "round $r, cold / again: local $l | floor $f | tidefs $t"
done
