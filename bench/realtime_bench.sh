#!/usr/bin/env bash
# Real-time benchmarks (issue: real-time sync), on a real `tidefs serve`
# over loopback:
# 1. propagation: close() of a changed file on mount A until the new bytes
#    read on mount B (a reader polling with pread, no reopen), N changes;
#    beside it, sshfs measured the same way in the same run (a change made
#    on the remote side, read through the sshfs mount), as the anchor.
# 2. fan-out: SUBS idle WebSocket subscribers (bench/ws_load.cc, several
#    processes on several 127.0.0.x source addresses), the server's RSS
#    per subscriber, and the time from a commit until every subscriber has
#    it (p50/p99/max), over ROUNDS commits.
# Usage: bench/realtime_bench.sh   (N=200 SUBS=19000 ROUNDS=5 SSHFS=1)
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/build/tidefs
N=${N:-200}
SUBS=${SUBS:-19000}
ROUNDS=${ROUNDS:-5}
W=${BENCH_DIR:-/tmp/tidefs-rt-bench}
rm -rf "$W"; mkdir -p "$W"
source bench/common.sh
LOADERS=()
cleanup() {
  for m in "$W/a" "$W/b" "$W/s"; do mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m"; }; done
  for p in "${LOADERS[@]}"; do kill "$p" 2>/dev/null; done
  [ -n "${SSHD:-}" ] && kill "$SSHD" 2>/dev/null
  [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  true
}
trap cleanup EXIT
say() { printf '%-8s %-34s %s\n' "$1" "$2" "$3" | tee -a "$W/results.txt"; }

start_server "$W"
"$BIN" admin --data "$DATA" project create rt >/dev/null
TA=$("$BIN" admin --data "$DATA" token create --project rt --device bench-a | tail -n 1)
TB=$("$BIN" admin --data "$DATA" token create --project rt --device bench-b | tail -n 1)
TOK=$("$BIN" admin --data "$DATA" token create --project rt --device bench-load | tail -n 1)
mkdir -p "$W/a" "$W/b"
"$BIN" mount --server "$URL" --project rt --token "$TA" --cache-dir "$W/ca" "$W/a"
"$BIN" mount --server "$URL" --project rt --token "$TB" --cache-dir "$W/cb" "$W/b"

# The probe: writes on one side, waits on the other; prints p50 p99 max in ms.
# "reopen": the reader opens the file for every look (sshfs never refreshes
# an open file), as anchors.sh does.
probe() {   # $1 writer path, $2 reader path, $3 count, [$4 reopen]
  python3 - "$1" "$2" "$3" "${4:-keep}" <<'PY'
import os, sys, time
wpath, rpath, n, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
with open(wpath, "wb") as f: f.write(b"v-000000\n" + b"x" * 100000)
deadline = time.time() + 30
while time.time() < deadline:
    try:
        if open(rpath, "rb").read(9) == b"v-000000\n": break
    except OSError: pass
    time.sleep(0.01)
fd = os.open(rpath, os.O_RDONLY)
lat = []
for i in range(1, n + 1):
    want = b"v-%06d\n" % i
    w = os.open(wpath, os.O_WRONLY)
    os.pwrite(w, want, 0)
    os.close(w)
    t0 = time.monotonic()
    while True:
        if mode == "reopen":
            r = os.open(rpath, os.O_RDONLY); got = os.pread(r, 9, 0); os.close(r)
        else:
            got = os.pread(fd, 9, 0)
        if got == want or time.monotonic() - t0 > 120: break
        time.sleep(0.0005)
    lat.append((time.monotonic() - t0) * 1000)
lat.sort()
print("%.1f %.1f %.1f" % (lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))], lat[-1]))
PY
}

read -r p50 p99 mx <<<"$(probe "$W/a/probe.txt" "$W/b/probe.txt" "$N")"
say tidefs "propagation p50 / p99 / max (ms)" "$p50 / $p99 / $mx  (N=$N, close on A -> bytes on B)"

if [ "${SSHFS:-1}" = 1 ] && command -v sshfs >/dev/null && [ -x /usr/sbin/sshd ]; then
  mkdir -p "$W/remote"
  start_sshfs "$W" "$W/remote" "$W/s"
  read -r s50 s99 smx <<<"$(probe "$W/remote/probe.txt" "$W/s/probe.txt" 10 reopen)"
  say sshfs "propagation p50 / p99 / max (ms)" "$s50 / $s99 / $smx  (N=10, remote write -> bytes through sshfs, reopened per look)"
  python3 -c "print('ratio tidefs/sshfs p50: %.3f' % ($p50/$s50))" | tee -a "$W/results.txt"
  fusermount3 -u "$W/s"; kill "$SSHD"; SSHD=
  sed -i "\|$(cat "$W/key.pub")|d" /root/.ssh/authorized_keys
fi
fusermount3 -u "$W/a"; fusermount3 -u "$W/b"

# Fan-out.
rss() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }
PORT=${URL##*:}
rss0=$(rss)
PROCS=4
per=$(( (SUBS + PROCS - 1) / PROCS ))
LOADSECS=$(( 60 + ROUNDS * 3 ))
for i in $(seq 1 $PROCS); do
  "$ROOT/build/tidefs_ws_load" "$PORT" rt "$TOK" "127.0.0.$((i + 1))" "$per" "$W/ready.$i" "$W/arr.$i" "$LOADSECS" &
  LOADERS+=("$!")
done
for _ in $(seq 1200); do
  n=0; for i in $(seq 1 $PROCS); do [ -s "$W/ready.$i" ] && n=$((n + 1)); done
  [ "$n" = "$PROCS" ] && break; sleep 0.1
done
total=0; for i in $(seq 1 $PROCS); do total=$((total + $(cat "$W/ready.$i" 2>/dev/null || echo 0))); done
sleep 2
rss1=$(rss)
say tidefs "idle subscribers held" "$total (server RSS $((rss0 / 1024)) -> $((rss1 / 1024)) MiB)"
python3 -c "print('%-8s %-34s %.1f KiB' % ('tidefs', 'memory per subscriber', ($rss1-$rss0)/max(1,$total)))" | tee -a "$W/results.txt"
# Commits through the API, timed from just before each request.
python3 - "$URL" "$TOK" "$ROUNDS" "$W/sent" <<'PY'
import json, sys, time, urllib.request
url, tok, rounds, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
lines = []
for i in range(rounds):
    body = json.dumps({"ops": [{"op": "mkdir", "id": 900000 + i, "parent": 1, "name": "fanout-%d" % i}]}).encode()
    req = urllib.request.Request(url + "/v1/projects/rt/commit", data=body, method="POST",
                                 headers={"Authorization": "Bearer " + tok, "Content-Type": "application/json"})
    t0 = time.clock_gettime(time.CLOCK_MONOTONIC)
    head = json.load(urllib.request.urlopen(req))["head"]
    lines.append("%d %f\n" % (head, t0))
    time.sleep(2)
open(out, "w").writelines(lines)
PY
for p in "${LOADERS[@]}"; do wait "$p"; done
LOADERS=()
python3 - "$W" "$PROCS" "$total" <<'PY' | tee -a "$W/results.txt"
import sys
w, procs, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sent = {int(a): float(b) for a, b in (l.split() for l in open(w + "/sent"))}
lat = {s: [] for s in sent}
for i in range(1, procs + 1):
    for l in open("%s/arr.%d" % (w, i)):
        s, t = l.split()
        if int(s) in lat: lat[int(s)].append((float(t) - sent[int(s)]) * 1000)
for s in sorted(lat):
    v = sorted(lat[s])
    if not v:
        print("commit %d: delivered to none" % s); continue
    print("tidefs   fan-out of commit %-6d           to %d/%d: p50 %.0f ms, p99 %.0f ms, last %.0f ms, %.0f deliveries/s"
          % (s, len(v), total, v[len(v) // 2], v[min(len(v) - 1, int(len(v) * 0.99))], v[-1], len(v) / (v[-1] / 1000)))
PY
echo "results in $W/results.txt"
