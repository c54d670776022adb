#!/usr/bin/env bash
# Two builds side by side, in alternated rounds (server and mount from the
# same binary each): a new 1 GiB file copied into a mount until committed,
# and 10,000 files of 5 KiB copied in with cp -r (the copy, then until all
# are committed). For a change's cost: the same machine, the same run.
# State on /dev/shm (no ext4 recently-freed-inode effect between rounds).
#
# Usage: bench/ab_bench.sh OLD_BINARY NEW_BINARY [ROUNDS=4]
# (Keep the old binary first: cp build/tidefs /tmp/tidefs.old, then build.)
# Needs root, /dev/fuse. Data in BENCH_DIR (default /tmp/tidefs-anchors).
set -u
cd "$(dirname "$0")/.."
A=$1
NEW=$2
ROUNDS=${3:-4}
B=${BENCH_DIR:-/tmp/tidefs-anchors}
W=/dev/shm/tidefs-ab
M=$W/mnt
PID=
source bench/common.sh
trap 'mountpoint -q $M && fusermount3 -uz $M; [ -n "$PID" ] && kill $PID 2>/dev/null; rm -rf $W' EXIT
now() { date +%s.%N; }
ms() { python3 -c "print(round(($2-$1)*1000))"; }
mkdir -p "$B/remote"
[ -f "$B/remote/big1g" ] || head -c 1G /dev/urandom >"$B/remote/big1g"
make_small_src "$B/small-src"
cat "$B/remote/big1g" "$B"/small-src/*/* >/dev/null

up() { # binary: a fresh server and mount
  BIN=$1
  rm -rf "$W"
  mkdir -p "$W" "$M"
  start_server "$W"
  "$BIN" mount --server "$URL" --project p --token "$(token p)" --cache-dir "$W/c" "$M"
}
down() {
  "$BIN" unmount "$M"
  kill $PID
  wait $PID 2>/dev/null
  PID=
}
newfile() { # binary -> MB/s
  up "$1"
  local t0 t1
  cat "$B/remote/big1g" >/dev/null  # the source from memory (a round's other runs push it out)
  # Memory for the pack and cache files touched once before (on this VM a
  # page the guest never touched, or gave back, costs far more the first
  # time: the first new-file run of a round was 30-50% slower).
  dd if=/dev/zero of=/dev/shm/tidefs-ab-warm bs=1M count=2560 status=none; rm -f /dev/shm/tidefs-ab-warm
  t0=$(now); cp "$B/remote/big1g" "$M/big1g"; "$BIN" sync "$M"; t1=$(now)
  down
  python3 -c "print(round(1024/($t1-$t0)))"
}
cpr() { # binary -> "COPY_MS+COMMIT_MS"
  up "$1"
  local t0 t1 t2
  t0=$(now); cp -r "$B/small-src" "$M/small"; t1=$(now); "$BIN" sync "$M"; t2=$(now)
  down
  echo "$(ms "$t0" "$t1")+$(ms "$t1" "$t2")"
}
# The order alternates each round (old first, then new first): the first
# new-file run of a round measured 30-50% slower than the second whichever
# build it was (2026-11-29), which an old-first order alone took for the
# new build's gain (see newfile for what is done against it).
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    nf_old=$(newfile "$A"); nf_new=$(newfile "$NEW"); cp_old=$(cpr "$A"); cp_new=$(cpr "$NEW"); first=old
  else
    nf_new=$(newfile "$NEW"); nf_old=$(newfile "$A"); cp_new=$(cpr "$NEW"); cp_old=$(cpr "$A"); first=new
  fi
  echo "round $r ($first first): new 1 GiB file MB/s: old $nf_old new $nf_new;" \
    "cp -r ms (copy+commit): old $cp_old new $cp_new"
done
