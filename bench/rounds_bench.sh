#!/usr/bin/env bash
# The figures that swing most from one run to the next on this machine,
# measured in alternated rounds beside the local folder, with medians:
# a 1 GiB file read once cold (dd), copied out of a cold mount onto the
# disk (cp, then sync) and into tmpfs, and 10,000 files of 5 KiB copied
# in with cp -r (until all are committed, too). A fresh mount and cache
# for each tidefs figure; page caches dropped before each cold one (the
# server's too: its packs come from the disk, as the local file does).
# Prints each round, then the medians and tidefs' ratios: to the local
# folder, and for the copies out to tidefs' own cold read. The cp -r also
# goes into build/tidefs_fuse_floor (a FUSE file system that keeps files
# in memory and does nothing else): what any FUSE design pays here.
#
# Usage: bench/rounds_bench.sh   (ROUNDS=3)
# Needs root, /dev/fuse and a built tree (build/). Data in BENCH_DIR
# (default /tmp/tidefs-anchors, shared with anchors.sh; made when missing).
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/build/tidefs
FLOOR=$ROOT/build/tidefs_fuse_floor
FPID=
B=${BENCH_DIR:-/tmp/tidefs-anchors}
R=$B/remote
W=$B/rounds
M=$W/mnt
ROUNDS=${ROUNDS:-3}
PID=
SHM=
cleanup() {
  mountpoint -q "$M" 2>/dev/null && { fusermount3 -u "$M" 2>/dev/null || fusermount3 -uz "$M"; }
  mountpoint -q "$W/floor" 2>/dev/null && fusermount3 -uz "$W/floor"
  [ -n "$FPID" ] && wait "$FPID" 2>/dev/null
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  [ -n "$SHM" ] && rm -rf "$SHM"
  true
}
trap cleanup EXIT
source bench/common.sh
now() { date +%s.%N; }
ms() { python3 -c "print(round(($2-$1)*1000))"; }
mbs() { python3 -c "print(round(1024/($2-$1)))"; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
mnt() { "$BIN" mount --server "$URL" --project "$1" --token "$2" --cache-dir "$3" "$M"; }
umnt() { "$BIN" unmount "$M"; for _ in $(seq 100); do mountpoint -q "$M" || return; sleep 0.05; done; }

# The data: anchors.sh's 1 GiB file and cp -r source (made the same way here).
mkdir -p "$R" "$W"
[ -f "$R/big1g" ] || head -c 1073741824 /dev/urandom >"$R/big1g"
make_small_src "$B/small-src"

rm -rf "$W/data" "$W/cache" "$W/copy" "$W/small-local" "$W/cache-small"
start_server "$W"
TOK=$(token big)
mkdir -p "$W/bigsrc" "$M" && ln -f "$R/big1g" "$W/bigsrc/big1g"
"$BIN" import --server "$URL" --project big --token "$TOK" "$W/bigsrc" >/dev/null
SHM=$(mktemp -d /dev/shm/tidefs-rounds-XXXXXX)

declare -a LD TD LC TC LS TS LR TR TK FR
for round in $(seq "$ROUNDS"); do
  # Cold read.
  drop; t0=$(now); dd if="$R/big1g" of=/dev/null bs=1M 2>/dev/null; t1=$(now); LD+=("$(mbs "$t0" "$t1")")
  rm -rf "$W/cache"; mnt big "$TOK" "$W/cache"; ls -l "$M" >/dev/null; drop
  t0=$(now); dd if="$M/big1g" of=/dev/null bs=1M 2>/dev/null; t1=$(now); TD+=("$(mbs "$t0" "$t1")"); umnt
  # cp out onto the disk, synced.
  rm -f "$W/copy"; drop
  t0=$(now); cp "$R/big1g" "$W/copy"; sync "$W/copy"; t1=$(now); LC+=("$(mbs "$t0" "$t1")")
  rm -f "$W/copy"; rm -rf "$W/cache"; mnt big "$TOK" "$W/cache"; ls -l "$M" >/dev/null; drop
  t0=$(now); cp "$M/big1g" "$W/copy"; sync "$W/copy"; t1=$(now); TC+=("$(mbs "$t0" "$t1")"); umnt
  # cp out into tmpfs: the read path alone.
  rm -f "$W/copy" "$SHM/copy"; drop
  t0=$(now); cp "$R/big1g" "$SHM/copy"; t1=$(now); LS+=("$(mbs "$t0" "$t1")")
  rm -f "$SHM/copy"; rm -rf "$W/cache"; mnt big "$TOK" "$W/cache"; ls -l "$M" >/dev/null; drop
  t0=$(now); cp "$M/big1g" "$SHM/copy"; t1=$(now); TS+=("$(mbs "$t0" "$t1")"); umnt
  rm -f "$SHM/copy"; rm -rf "$W/cache"
  # cp -r in (ext4 without a journal skips inodes freed in the last minute
  # when it allocates, slowly: nothing is deleted in the minute before).
  sync; sleep 61
  # (The source read once before each copy: both copy from the page cache.)
  cat "$B"/small-src/*/* >/dev/null
  t0=$(now); cp -r "$B/small-src" "$W/small-local"; t1=$(now); LR+=("$(ms "$t0" "$t1")")
  ST=$(token "small$round"); mnt "small$round" "$ST" "$W/cache-small"
  cat "$B"/small-src/*/* >/dev/null
  t0=$(now); cp -r "$B/small-src" "$M/small"; t1=$(now); "$BIN" sync "$M"; t2=$(now)
  TR+=("$(ms "$t0" "$t1")"); TK+=("$(ms "$t1" "$t2")"); umnt
  # The floor: a FUSE file system in memory that does nothing else.
  mkdir -p "$W/floor"; "$FLOOR" "$W/floor" & FPID=$!
  for _ in $(seq 100); do mountpoint -q "$W/floor" && break; sleep 0.05; done
  cat "$B"/small-src/*/* >/dev/null
  t0=$(now); cp -r "$B/small-src" "$W/floor/small"; t1=$(now); FR+=("$(ms "$t0" "$t1")")
  fusermount3 -u "$W/floor"; wait "$FPID"; FPID=
  rm -rf "$W/small-local" "$W/cache-small"
  echo "round $round: cold read local ${LD[-1]} / tidefs ${TD[-1]} MB/s; cp out to disk ${LC[-1]} / ${TC[-1]} MB/s;" \
    "to tmpfs ${LS[-1]} / ${TS[-1]} MB/s; cp -r in ${LR[-1]} / ${TR[-1]} ms (floor ${FR[-1]}), all committed ${TK[-1]} ms after"
done
python3 - "${LD[*]}" "${TD[*]}" "${LC[*]}" "${TC[*]}" "${LS[*]}" "${TS[*]}" "${LR[*]}" "${TR[*]}" "${TK[*]}" "${FR[*]}" <<'PY'
import statistics, sys
ld, td, lc, tc, ls, ts, lr, tr, tk, fr = (statistics.median(map(float, a.split())) for a in sys.argv[1:])
print(f"median of {len(sys.argv[1].split())} rounds (local / tidefs, tidefs / local):")
print(f"  1 GiB cold read        {ld:7.0f} / {td:7.0f} MB/s  {td / ld:.2f}x   (target: >= 800 MB/s)")
print(f"  cp out onto the disk   {lc:7.0f} / {tc:7.0f} MB/s  {tc / lc:.2f}x   ({tc / td:.2f}x tidefs' cold read)")
print(f"  cp out into tmpfs      {ls:7.0f} / {ts:7.0f} MB/s  {ts / ls:.2f}x   ({ts / td:.2f}x tidefs' cold read)")
print(f"  cp -r 10,000 x 5 KiB   {lr:7.0f} / {tr:7.0f} ms    {tr / lr:.2f}x   (target: <= 2x), all committed {tk:.0f} ms after")
print(f"  the same into the FUSE floor: {fr:.0f} ms, {fr / lr:.2f}x the local folder; tidefs {tr / fr:.2f}x the floor")
PY
