#!/usr/bin/env bash
# Mount benchmarks (issue: mount, read path), run side by side with what
# users would pick instead: ../shared/bench/anchors.sh measures rclone mount,
# sshfs and the plain local folder on the same data in the same run; this
# script then imports that data into a real `tidefs serve` on loopback,
# mounts it, runs the same workloads, and prints each tidefs figure beside
# the anchors' with the ratio to the local folder.
#
# Usage: bench/mount_bench.sh
#   ANCHORS="native sshfs rclone" (default) which anchors to run; "none" for
#   tidefs alone (then the data must exist from an earlier run).
#   MILLION=0 skips the 1,000,000-node mount figures.
# Each run also measures "floor": build/tidefs_fuse_floor, a FUSE file system
# that keeps everything in memory and does nothing else, with the mount's
# session settings: what any FUSE design pays on this machine.
# Needs root, /dev/fuse and a built tree (build/). Data in BENCH_DIR
# (default /tmp/tidefs-anchors, shared with anchors.sh).
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
B=${BENCH_DIR:-/tmp/tidefs-anchors}
R=$B/remote
T=$B/tidefs
M=$T/mnt
C=$T/cache
BIN=$ROOT/build/tidefs
BENCH=$ROOT/build/tidefs_bench
FLOOR=$ROOT/build/tidefs_fuse_floor
FM=$T/floor-mnt
FPID=
ANCHORS=${ANCHORS:-native sshfs rclone}
PID=
mkdir -p "$T"
cleanup() {
  mountpoint -q "$M" 2>/dev/null && { fusermount3 -u "$M" 2>/dev/null || fusermount3 -uz "$M"; }
  mountpoint -q "$FM" 2>/dev/null && { fusermount3 -u "$FM" 2>/dev/null || fusermount3 -uz "$FM"; }
  [ -n "$FPID" ] && wait "$FPID" 2>/dev/null
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  true
}
trap cleanup EXIT

command -v fio >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null
now() { date +%s.%N; }
ms() { python3 -c "print(round(($2-$1)*1000))"; }
mbs() { python3 -c "print(round(1024/($2-$1)))"; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
say() { printf '%-7s %-28s %10s %s\n' "$1" "$2" "$3" "$4" | tee -a "$T/results.txt"; }

: >"$T/results.txt"
if [ "$ANCHORS" != none ]; then
  # shellcheck disable=SC2086
  BENCH_DIR=$B bash "$ROOT/../shared/bench/anchors.sh" $ANCHORS | tee -a "$T/results.txt"
fi
[ -d "$R/flat10k" ] && [ -d "$R/tree100k" ] && [ -f "$R/big1g" ] || {
  echo "no data in $R: run once with the anchors (ANCHORS=native at least)" >&2; exit 1; }

# A fresh server; the anchors' data imported as project "anchors".
rm -rf "$T/data" "$T/ready" "$C" "$T/cache-million"
mkdir -p "$M"
. "$ROOT/bench/common.sh"
start_server "$T"
TOK=$(token anchors)
for d in flat10k tree100k; do "$BIN" import --server "$URL" --project anchors --token "$TOK" "$R/$d" "$d" >/dev/null; done
mkdir -p "$T/bigsrc" && ln -f "$R/big1g" "$T/bigsrc/big1g"
"$BIN" import --server "$URL" --project anchors --token "$TOK" "$T/bigsrc" >/dev/null

mnt() {  # project token cache-dir
  "$BIN" mount --server "$URL" --project "$1" --token "$2" --cache-dir "$3" "$M"
}
umnt() { "$BIN" unmount "$M"; for _ in $(seq 100); do mountpoint -q "$M" || return; sleep 0.05; done; }
floor_up() {  # a fresh floor file system at $FM (its "big" is 1 GiB)
  mkdir -p "$FM"; "$FLOOR" "$FM" & FPID=$!
  for _ in $(seq 100); do mountpoint -q "$FM" && break; sleep 0.05; done
  mountpoint -q "$FM" || { echo "tidefs_fuse_floor did not mount at $FM" >&2; exit 1; }
  # The read-ahead tidefs sets for itself (1 MiB instead of the kernel's 128 KiB).
  echo 1024 >"/sys/class/bdi/$(awk -v m="$FM" '$5 == m {print $3}' /proc/self/mountinfo | tail -1)/read_ahead_kb"
}
floor_down() { fusermount3 -u "$FM"; wait "$FPID"; FPID=; }

s=tidefs
# The server prebuilds a project's snapshot a second after commits pause;
# ask for it once, as a running server would have it, so the cold mount
# measures the mount (the 1M figure below keeps the build, as noted there).
curl -sf -H "Authorization: Bearer $TOK" "$URL/v1/projects/anchors/snapshot" >/dev/null
drop; t0=$(now); mnt anchors "$TOK" "$C"; ls "$M/tree100k" >/dev/null; t1=$(now)
say $s mount_to_first_listing "$(ms "$t0" "$t1")" ms
t0=$(now); ls -l "$M/flat10k" >/dev/null; t1=$(now); say $s ls_l_10k_cold "$(ms "$t0" "$t1")" ms
t0=$(now); ls -l "$M/flat10k" >/dev/null; t1=$(now); say $s ls_l_10k_warm "$(ms "$t0" "$t1")" ms
t0=$(now); find "$M/tree100k" -ls >/dev/null; t1=$(now); say $s find_ls_100k "$(ms "$t0" "$t1")" ms
# The listings again, five rounds alternating the local folder and a
# fresh mount (warm local state), page caches dropped before each: the
# single figures above swing by a third between runs on this machine.
med() { python3 -c 'import sys, statistics; print(round(statistics.median(map(float, sys.argv[1:]))))' "$@"; }
listings() {  # dir: prints "ls_cold ls_again find" in ms
  local a b c d
  a=$(now); ls -l "$1/flat10k" >/dev/null; b=$(now); ls -l "$1/flat10k" >/dev/null; c=$(now)
  find "$1/tree100k" -ls >/dev/null; d=$(now)
  echo "$(ms "$a" "$b") $(ms "$b" "$c") $(ms "$c" "$d")"
}
declare -a NL NA NF TL TA TF
for _ in 1 2 3 4 5; do
  drop; ls "$R/tree100k" >/dev/null; read -r l a f < <(listings "$R"); NL+=("$l"); NA+=("$a"); NF+=("$f")
  umnt; drop; mnt anchors "$TOK" "$C"; ls "$M/tree100k" >/dev/null
  read -r l a f < <(listings "$M"); TL+=("$l"); TA+=("$a"); TF+=("$f")
done
for w in "ls_l_10k_cold NL TL" "ls_l_10k_warm NA TA" "find_ls_100k NF TF"; do
  read -r name n t <<<"$w"; declare -n nr=$n tr=$t
  say native "${name}_median5" "$(med "${nr[@]}")" "ms (${nr[*]})"
  say $s "${name}_median5" "$(med "${tr[@]}")" "ms (${tr[*]})"
done
# Every file of a 10,000-file folder read once by one cat (grep -r, tar
# and builds read this way): the local folder after a drop, then the
# mount, whose listing is warm and whose files were never read.
drop; ls "$R/flat10k" >/dev/null
t0=$(now); cat "$R"/flat10k/* >/dev/null; t1=$(now); say native cat_10k_small_cold "$(ms "$t0" "$t1")" ms
drop
t0=$(now); cat "$M"/flat10k/* >/dev/null; t1=$(now); say $s cat_10k_small_cold "$(ms "$t0" "$t1")" ms
drop
t0=$(now); dd if="$M/big1g" of=/dev/null bs=1M 2>/dev/null; t1=$(now); say $s seq_read_1g_cold "$(mbs "$t0" "$t1")" MB/s
t0=$(now); dd if="$M/big1g" of=/dev/null bs=1M 2>/dev/null; t1=$(now); say $s seq_read_1g_warm "$(mbs "$t0" "$t1")" MB/s

# Random 4 KiB reads of cached data (fio, 2 jobs), the local folder in the same run.
fio_iops() {  # file
  fio --name=r --filename="$1" --rw=randread --bs=4k --size=1g --runtime=8 --time_based --numjobs=2 \
    --ioengine=psync --invalidate=0 --group_reporting --output-format=terse --terse-version=3 --readonly 2>/dev/null |
    awk -F';' '{print $8}'
}
cat "$R/big1g" >/dev/null
say native fio_randread_4k_cached "$(fio_iops "$R/big1g")" IOPS
say $s fio_randread_4k_cached "$(fio_iops "$M/big1g")" IOPS
umnt
floor_up; drop
t0=$(now); dd if="$FM/big" of=/dev/null bs=1M 2>/dev/null; t1=$(now); say floor seq_read_1g_cold "$(mbs "$t0" "$t1")" MB/s
floor_down

# cp of 1 GiB out of a cold mount (read-ahead at work), the local disk in the same run.
rm -f "$T/copy"; drop
t0=$(now); cp "$R/big1g" "$T/copy"; sync "$T/copy"; t1=$(now); say native cp_1g_cold "$(mbs "$t0" "$t1")" MB/s
rm -rf "$T/copy" "$C"; drop; mnt anchors "$TOK" "$C"
t0=$(now); cp "$M/big1g" "$T/copy"; sync "$T/copy"; t1=$(now); say $s cp_1g_cold "$(mbs "$t0" "$t1")" MB/s
rm -f "$T/copy"; umnt
# The same into tmpfs: the read path alone (on one disk, the copy's own
# write competes with the server's read and the mount's cache write).
SHM=$(mktemp -d /dev/shm/tidefs-bench-XXXXXX); drop
t0=$(now); cp "$R/big1g" "$SHM/copy"; t1=$(now); say native cp_1g_cold_to_tmpfs "$(mbs "$t0" "$t1")" MB/s
rm -f "$SHM/copy"; rm -rf "$C"; drop; mnt anchors "$TOK" "$C"
t0=$(now); cp "$M/big1g" "$SHM/copy"; t1=$(now); say $s cp_1g_cold_to_tmpfs "$(mbs "$t0" "$t1")" MB/s
rm -rf "$SHM"; umnt

# Writes (issue: writes), into a fresh project each.
# Waits until the mount has sent everything: `tidefs sync` asks the mount
# every 5 ms from one process (a shell loop of `tidefs status | python3`
# took more CPU than the upload it timed, on 2 cores).
committed() { "$BIN" sync "$M"; }
received() { curl -s "$URL/metrics" | awk '/^tidefs_http_bytes_received_total/ {print $2}'; }

# 10,000 files of 5 KiB with cp -r (anchors.sh's data): the local folder in
# the same run, then the mount; and until every file is committed.
# (anchors.sh makes it only for sshfs or rclone; the same data made here
# when only the local folder was measured: 100 dirs of 100 random files.)
make_small_src "$B/small-src"
# (ext4 without a journal skips inodes freed in the last minute when it
# allocates new ones, slowly: nothing is deleted just before either copy.)
if [ -e "$T/small-local" ] || [ -e "$T/cache-small" ]; then rm -rf "$T/small-local" "$T/cache-small"; sync; sleep 61; fi
# (The source read once before each copy: every one copies from the page
# cache; the first copy alone read the disk before, 0.3 against 1.2 s.)
cat "$B"/small-src/*/* >/dev/null
t0=$(now); cp -r "$B/small-src" "$T/small-local"; t1=$(now); say native small_10k_cp "$(ms "$t0" "$t1")" ms
WT=$(token small); mnt small "$WT" "$T/cache-small"
cat "$B"/small-src/*/* >/dev/null
t0=$(now); cp -r "$B/small-src" "$M/small"; t1=$(now); committed; t2=$(now)
say $s small_10k_cp "$(ms "$t0" "$t1")" ms
say $s small_10k_on_remote_after_cp "$(ms "$t1" "$t2")" ms
floor_up
cat "$B"/small-src/*/* >/dev/null
t0=$(now); cp -r "$B/small-src" "$FM/small"; t1=$(now); say floor small_10k_cp "$(ms "$t0" "$t1")" ms
floor_down
umnt; rm -rf "$T/cache-small" "$T/small-local"

# A new 1 GiB file: cp into the mount until it is committed (the local
# disk: cp and sync, same run).
cat "$R/big1g" >/dev/null
t0=$(now); cp "$R/big1g" "$T/copy"; sync "$T/copy"; t1=$(now); say native new_file_1g_committed "$(mbs "$t0" "$t1")" MB/s
rm -f "$T/copy"
WT=$(token newfile); rm -rf "$T/cache-new"; mnt newfile "$WT" "$T/cache-new"
t0=$(now); cp "$R/big1g" "$M/big1g"; committed; t1=$(now)
say $s new_file_1g_committed "$(mbs "$t0" "$t1")" MB/s
umnt; rm -rf "$T/cache-new"

# 5% of the 1 GiB file changed as 820 scattered 64 KiB writes (anchors.sh's
# workload) on a mount that never read it; request bytes the server
# received until unmount returned, and from the first write to then.
rm -rf "$C"; mnt anchors "$TOK" "$C"; up0=$(received)
t0=$(now)
python3 - "$M/big1g" <<'PY'
import os, random, sys
fd = os.open(sys.argv[1], os.O_WRONLY); random.seed(5)
for b in random.sample(range(16384), 820): os.pwrite(fd, os.urandom(65536), b * 65536)
os.close(fd)
PY
umnt; t1=$(now); up1=$(received)
say $s change_5pct_1g_bytes_up "$((up1-up0))" "bytes (changed: $((820*65536)); request bodies, headers not counted)"
say $s change_5pct_1g_until_flushed "$(ms "$t0" "$t1")" ms
rm -rf "$C"

if [ "${MILLION:-1}" != 0 ]; then
  # 1,000,000 files in 1,000 directories: cold mount (snapshot), then warm (local state).
  MT=$(token million)
  "$BENCH" "$URL" million "$MT" populate 1000 1000 >/dev/null
  drop; t0=$(now); mnt million "$MT" "$T/cache-million"; ls "$M/d999" >/dev/null; t1=$(now)
  say $s mount_1m_cold_to_listing "$(ms "$t0" "$t1")" ms
  umnt
  drop; t0=$(now); mnt million "$MT" "$T/cache-million"; ls "$M/d999" >/dev/null; t1=$(now)
  say $s mount_1m_warm_to_listing "$(ms "$t0" "$t1")" ms
  umnt
fi

# Each tidefs figure beside the anchors', as a ratio to the local folder.
python3 - "$T/results.txt" <<'PY'
import sys
v = {}
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) >= 4:
        try: v[(p[0], p[1])] = float(p[2])
        except ValueError: pass
work = sorted({w for (_, w) in v})
print(f"\n{'workload':28} {'native':>9} {'sshfs':>9} {'rclone':>9} {'tidefs':>9} {'tidefs/native':>14}")
for w in work:
    row = [v.get((s, w)) for s in ("native", "sshfs", "rclone", "tidefs")]
    if row[3] is None: continue
    ratio = f"{row[3]/row[0]:.2f}x" if row[0] else ""
    print(f"{w:28} " + " ".join(f"{x:9.0f}" if x is not None else f"{'-':>9}" for x in row) + f" {ratio:>14}")
PY
