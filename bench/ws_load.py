#!/usr/bin/env python3
"""Idle WebSocket subscribers for bench/realtime_bench.sh: one process of
the load generator. Opens N subscriptions to GET /v1/projects/P/events
from source address SRC, answers pings, and writes, for each commit event
whose seq is in the "watch" file, the CLOCK_MONOTONIC time it arrived.

Usage: ws_load.py PORT PROJECT TOKEN SRC N READY_FILE OUT_FILE SECONDS
READY_FILE gets the number connected once all are; OUT_FILE gets one
"seq time" line per event received (per connection) at the end.
"""
import asyncio, os, sys, time

PORT, PROJECT, TOKEN, SRC, N = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
READY, OUT, SECONDS = sys.argv[6], sys.argv[7], float(sys.argv[8])
arrivals = []
connected = 0


def frame(opcode, payload):
    head = bytes([0x80 | opcode])
    n = len(payload)
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return head + b"\0\0\0\0" + payload  # mask 0


async def sub():
    global connected
    r, w = await asyncio.open_connection("127.0.0.1", PORT, local_addr=(SRC, 0))
    w.write((f"GET /v1/projects/{PROJECT}/events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
             f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").encode())
    head = await r.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n")[0]:
        raise RuntimeError(head.decode(errors="replace"))
    connected += 1
    try:
        while True:
            b0, b1 = await r.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await r.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await r.readexactly(8), "big")
            payload = await r.readexactly(n)
            op = b0 & 0x0F
            if op == 0x9:
                w.write(frame(0xA, payload))
            elif op == 0x8:
                return
            elif op == 0x1 and payload.startswith(b'{"type":"commit"'):
                t = time.clock_gettime(time.CLOCK_MONOTONIC)
                seq = int(payload.split(b'"seq":', 1)[1].split(b",", 1)[0])
                arrivals.append((seq, t))
    except (asyncio.IncompleteReadError, ConnectionError):
        return
    finally:
        w.close()


async def main():
    tasks = []
    for i in range(N):
        tasks.append(asyncio.create_task(sub()))
        if i % 200 == 199:
            await asyncio.sleep(0.01)  # do not flood the accept queue
    deadline = time.time() + 60
    while connected < N and time.time() < deadline:
        if any(t.done() and t.exception() for t in tasks):
            break
        await asyncio.sleep(0.05)
    with open(READY + ".tmp", "w") as f:
        f.write(str(connected))
    os.replace(READY + ".tmp", READY)
    await asyncio.sleep(SECONDS)
    with open(OUT, "w") as f:
        for seq, t in arrivals:
            f.write(f"{seq} {t}\n")
    os._exit(0)


asyncio.run(main())
