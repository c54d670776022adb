#!/usr/bin/env bash
# Reading many small files for the first time (what grep -r, tar, a build
# or an editor's project search do on a freshly mounted project): every
# file of a 10,000-file folder (anchors.sh's flat10k, 1 KiB each) read
# once by one `cat`, then again. Side by side in each round, alternated:
# the plain local folder, sshfs over sshd on loopback (anchors.sh's
# options), and a real `tidefs serve` with a fresh mount and cache. Page
# caches are dropped before each first read. Prints each round, then the
# medians with tidefs' ratio to the local folder and to sshfs.
#
# Usage: bench/small_read_bench.sh   (ROUNDS=3)
# Needs root, /dev/fuse, sshfs and openssh-server, and a built tree (build/).
# Data in BENCH_DIR (default /tmp/tidefs-anchors, shared with anchors.sh;
# made here when missing).
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/build/tidefs
B=${BENCH_DIR:-/tmp/tidefs-anchors}
R=$B/remote
W=$B/small-read
ROUNDS=${ROUNDS:-3}
PID= SSHD=
mkdir -p "$W"
cleanup() {
  for m in "$W/mnt" "$W/sshfs"; do mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m"; }; done
  [ -n "$SSHD" ] && kill "$SSHD" 2>/dev/null
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  true
}
trap cleanup EXIT
for t in sshfs:sshfs sshd:openssh-server; do
  command -v "${t%%:*}" >/dev/null || [ -x "/usr/sbin/${t%%:*}" ] ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${t#*:}" >/dev/null
done
source bench/common.sh
now() { date +%s.%N; }
ms() { python3 -c "print(round(($2-$1)*1000))"; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
unmount_wait() { fusermount3 -u "$1"; for _ in $(seq 100); do mountpoint -q "$1" || return; sleep 0.05; done; }

# anchors.sh's flat10k: 10,000 files of 1 KiB.
[ -d "$R/flat10k" ] || python3 -c '
import os, sys
os.makedirs(sys.argv[1])
for i in range(10000):
    with open(f"{sys.argv[1]}/f{i:05d}.txt", "wb") as out: out.write(os.urandom(1024))
' "$R/flat10k"

rm -rf "$W/data" "$W/cache"
start_server "$W"
TOK=$(token small)
"$BIN" import --server "$URL" --project small --token "$TOK" "$R/flat10k" flat10k >/dev/null
mkdir -p "$W/mnt"

# read DIR: a first read after a drop, then again; prints "first again" in ms.
read_twice() {
  local a b c
  ls "$1" >/dev/null; drop
  a=$(now); cat "$1"/* >/dev/null; b=$(now); cat "$1"/* >/dev/null; c=$(now)
  echo "$(ms "$a" "$b") $(ms "$b" "$c")"
}
declare -a LF LA SF SA TF TA
for round in $(seq "$ROUNDS"); do
  read -r f a < <(read_twice "$R/flat10k"); LF+=("$f"); LA+=("$a")
  start_sshfs "$W" "$R" "$W/sshfs" -o Ciphers=aes128-gcm@openssh.com -o max_conns=4
  read -r f a < <(read_twice "$W/sshfs/flat10k"); SF+=("$f"); SA+=("$a")
  unmount_wait "$W/sshfs"; kill "$SSHD"; wait "$SSHD" 2>/dev/null; SSHD=
  rm -rf "$W/cache"
  "$BIN" mount --server "$URL" --project small --token "$TOK" --cache-dir "$W/cache" "$W/mnt"
  read -r f a < <(read_twice "$W/mnt/flat10k"); TF+=("$f"); TA+=("$a")
  unmount_wait "$W/mnt"
  echo "round $round: local ${LF[-1]} / ${LA[-1]} ms, sshfs ${SF[-1]} / ${SA[-1]} ms, tidefs ${TF[-1]} / ${TA[-1]} ms (first / again)"
done
python3 - "${LF[*]}" "${LA[*]}" "${SF[*]}" "${SA[*]}" "${TF[*]}" "${TA[*]}" <<'PY'
import statistics, sys
lf, la, sf, sa, tf, ta = (statistics.median(map(float, a.split())) for a in sys.argv[1:])
print(f"\n{'cat of 10,000 × 1 KiB':24} {'local':>8} {'sshfs':>8} {'tidefs':>8} {'/local':>8} {'/sshfs':>8}")
print(f"{'first read (median)':24} {lf:8.0f} {sf:8.0f} {tf:8.0f} {tf/lf:7.2f}x {tf/sf:7.2f}x")
print(f"{'again (median)':24} {la:8.0f} {sa:8.0f} {ta:8.0f} {ta/la:7.2f}x {ta/sa:7.2f}x")
PY
