#!/usr/bin/env python3
"""An HTTP/1.1 proxy that injects faults between a tidefs mount and a real
server, for the end-to-end tests: the faults a real server cannot be made
to show (a connection cut mid-body, bytes changed on the way, 500s).

Usage: fault_proxy.py TARGET_PORT PORT_FILE CONTROL_FILE STATS_FILE

Listens on 127.0.0.1 (an ephemeral port, written to PORT_FILE once ready)
and forwards to 127.0.0.1:TARGET_PORT (WebSocket upgrades too: after a 101
both directions are copied as they come). Before each response it reads
CONTROL_FILE, one rule per line "ACTION PATH_PART ARG TIMES [SKIP]" (the
first that matches applies):
  pass                      forward as is (also when the file is missing)
  cut PATH N TIMES          forward N body bytes, then close the connection
  corrupt PATH N TIMES      flip the body byte at offset N
  status500 PATH 0 TIMES    answer 500 instead of the server's answer
  refuse PATH 0 TIMES       answer 503 without passing the request on
                            (the server never sees it)
  reject400 PATH 0 TIMES    the same with a 400, as a server that cannot
                            read the body answers
  old PATH 0 TIMES          drop the X-Tidefs-Protocol header and the
                            level in a /devices body: an answer as a
                            server from before protocol levels gives
                            (and X-Tidefs-Manifest, which came at level 3)
  badmanifest PATH N TIMES  change the X-Tidefs-Manifest header: N=0 the
                            last digit of its last hash, N=1 all of it
                            into text that does not decode
  hold PATH 0 TIMES         pass the request on, then keep the server's
                            answer back for as long as the rule's line
                            stays in CONTROL_FILE as it was (counted in
                            "held"; "hold /commit 0 1 0", another line,
                            holds the next commit's answer while the
                            first one's goes on)
  holdcut PATH N TIMES      the same, then cut it as `cut` does (an
                            answer lost at a moment the test chooses)
A rule applies to requests whose path contains PATH, at most TIMES times
(-1: always), after letting the first SKIP of them pass (default 0).
STATS_FILE gets JSON counters after each response.
"""
import asyncio
import json
import re
import os
import sys

TARGET, PORT_FILE, CONTROL, STATS = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
uses = {}
stats = {"requests": 0, "faults": 0, "held": 0, "body_bytes": {}}


EARLY = ("refuse", "reject400")  # actions taken before the request is passed on


def rule_for(path, only=None):
    """The rule for a request: with only="early" the actions taken before
    forwarding (EARLY), else every other action (after the answer)."""
    try:
        with open(CONTROL) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        words = line.split()
        if len(words) not in (4, 5) or words[0] == "pass" or words[1] not in path:
            continue
        if (words[0] in EARLY) != (only == "early"):
            continue
        key = " ".join(words)
        times = int(words[3])
        skip = int(words[4]) if len(words) == 5 else 0
        seen = uses.get(key, 0)
        uses[key] = seen + 1
        if seen < skip:
            return None  # let this one pass
        if times >= 0 and seen - skip >= times:
            continue
        return words[0], int(words[2]), key
    return None


def holding(key):
    """Whether CONTROL_FILE still has the rule line `key` (not counted)."""
    try:
        with open(CONTROL) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return False
    return any(" ".join(line.split()) == key for line in lines)


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def save_stats():
    tmp = STATS + ".tmp"
    with open(tmp, "w") as f:
        json.dump(stats, f)
    os.replace(tmp, STATS)


def content_length(head):
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


async def copy_body(reader, writer, n, flip_at=-1, stop_after=-1):
    """Copies n bytes; flips one byte or stops early. Returns bytes written."""
    done = 0
    while done < n:
        piece = bytearray(await reader.readexactly(min(n - done, 1 << 18)))
        if 0 <= flip_at - done < len(piece):
            piece[flip_at - done] ^= 0xFF
        if stop_after >= 0 and done + len(piece) > stop_after:
            piece = piece[: stop_after - done]
        if writer is not None:  # None: read and dropped
            writer.write(piece)
            await writer.drain()
        done += len(piece)
        if stop_after >= 0 and done >= stop_after:
            break
    return done


async def handle(client_r, client_w):
    try:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", TARGET)
    except OSError:
        # The server is down (a test restarting it): the client sees its
        # connection closed, as if refused.
        client_w.close()
        return
    try:
        while True:
            try:
                head = await client_r.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            path = head.split(b" ", 2)[1].decode("latin-1")
            early = rule_for(path, only="early")
            if early:
                await copy_body(client_r, None, content_length(head))
                if early[0] == "refuse":
                    status = b"503 Service Unavailable"
                    body = b'{"error":"unavailable","message":"refused by the test proxy"}'
                else:
                    status = b"400 Bad Request"
                    body = b'{"error":"invalid_argument","message":"unknown field \\"exchange\\" (the test proxy)"}'
                client_w.write(b"HTTP/1.1 %s\r\nContent-Type: application/json\r\n"
                               b"Content-Length: %d\r\n\r\n%s" % (status, len(body), body))
                await client_w.drain()
                stats["requests"] += 1
                stats["faults"] += 1
                save_stats()
                continue
            server_w.write(head)
            await copy_body(client_r, server_w, content_length(head))
            resp = await server_r.readuntil(b"\r\n\r\n")
            n = content_length(resp)
            rule = rule_for(path)
            stats["requests"] += 1
            route = path.split("?")[0].rsplit("/", 1)[-1]
            if rule and rule[0] == "old" and resp.startswith(b"HTTP/1.1 101"):
                rule = None  # (a WebSocket: no header to drop)
            if rule and rule[0] == "old":
                # The header goes, and the level in a /devices body.
                body = await server_r.readexactly(n)
                if route == "devices":
                    body = re.sub(rb',"protocol":\d+', b"", body)
                stats["body_bytes"][route] = stats["body_bytes"].get(route, 0) + len(body)
                lines = [line for line in resp.split(b"\r\n")
                         if not line.lower().startswith((b"x-tidefs-protocol:", b"x-tidefs-manifest:",
                                                         b"content-length:"))]
                resp = b"\r\n".join(lines[:1] + [b"Content-Length: %d" % len(body)] + lines[1:])
                client_w.write(resp + body)
                await client_w.drain()
                stats["faults"] += 1
                save_stats()
                continue
            if resp.startswith(b"HTTP/1.1 101") and not rule:
                client_w.write(resp)  # a WebSocket from here on
                await asyncio.gather(pipe(server_r, client_w), pipe(client_r, server_w))
                return
            if rule and rule[0] == "status500":
                await server_r.readexactly(n)
                body = b'{"error":"internal","message":"injected by the test proxy"}'
                client_w.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await client_w.drain()
                stats["faults"] += 1
                save_stats()
                continue
            if rule and rule[0] == "badmanifest":
                lines = resp.split(b"\r\n")
                for i, line in enumerate(lines):
                    if line.lower().startswith(b"x-tidefs-manifest:"):
                        if rule[1] == 0:
                            last = line[-1:]
                            lines[i] = line[:-1] + (b"0" if last != b"0" else b"1")
                        else:
                            lines[i] = b"X-Tidefs-Manifest: not a manifest"
                resp = b"\r\n".join(lines)
            if rule and rule[0] in ("hold", "holdcut"):
                stats["held"] += 1
                save_stats()
                while holding(rule[2]):
                    await asyncio.sleep(0.01)
                rule = ("cut", rule[1]) if rule[0] == "holdcut" else None
            client_w.write(resp)
            flip = rule[1] if rule and rule[0] == "corrupt" else -1
            stop = rule[1] if rule and rule[0] == "cut" else -1
            sent = await copy_body(server_r, client_w, n, flip, stop)
            stats["body_bytes"][route] = stats["body_bytes"].get(route, 0) + sent
            if rule:
                stats["faults"] += 1
            save_stats()
            if stop >= 0 and sent < n:
                return  # cut: both connections close mid-body
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        client_w.close()
        server_w.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    save_stats()
    port = server.sockets[0].getsockname()[1]
    with open(PORT_FILE + ".tmp", "w") as f:
        f.write(str(port))
    os.replace(PORT_FILE + ".tmp", PORT_FILE)
    async with server:
        await server.serve_forever()


asyncio.run(main())
