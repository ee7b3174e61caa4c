#!/usr/bin/python3
"""WebSocket client for moongate's tunnel specs: runs one scenario against a URL
and prints one JSON line with what it saw. Every wait is bounded.

  ws_client.py URL echo SIZE COUNT    COUNT binary messages of SIZE bytes, each echoed
  ws_client.py URL text               a text message echoed
  ws_client.py URL ping               a ping answered by a pong
  ws_client.py URL close              read until the server closes: code and reason
  ws_client.py URL many N             N tunnels at once, each echoes a message unique to it
  ws_client.py URL headers            the first message (the origin's view of the request head)
  ws_client.py URL hold SECONDS       a tunnel kept open: one echo, then after SECONDS another
"""
import asyncio
import json
import os
import ssl
import sys

import websockets


def ctx_for(url):
    if not url.startswith("wss:"):
        return None
    ctx = ssl.create_default_context(cafile=os.environ.get("WS_CA"))
    return ctx


async def connect(url):
    extra = {}
    if url.startswith("wss:"):
        extra = {"ssl": ctx_for(url), "server_hostname": os.environ.get("WS_SNI")}
    return await asyncio.wait_for(
        websockets.connect(url, max_size=8 * 1024 * 1024, ping_interval=None, compression=None, **extra), 10)


async def run(url, what, args):
    out = {}
    if what == "echo":
        size, count = int(args[0]), int(args[1])
        ws = await connect(url)
        ok = 0
        for i in range(count):
            data = os.urandom(size)
            await ws.send(data)
            back = await asyncio.wait_for(ws.recv(), 20)
            ok += back == data
        await ws.close()
        out = {"echoed": ok, "close_code": ws.close_code}
    elif what == "text":
        ws = await connect(url)
        await ws.send("héllo, tunnel")
        out = {"back": await asyncio.wait_for(ws.recv(), 10)}
        await ws.close()
    elif what == "ping":
        ws = await connect(url)
        waiter = await ws.ping(b"are-you-there")
        latency = await asyncio.wait_for(waiter, 10)
        out = {"pong": True, "latency": latency}
        await ws.close()
    elif what == "close":
        ws = await connect(url)
        try:
            await asyncio.wait_for(ws.recv(), 10)
        except websockets.ConnectionClosed as e:
            out = {"code": e.rcvd.code if e.rcvd else None, "reason": e.rcvd.reason if e.rcvd else None}
    elif what == "many":
        n = int(args[0])

        async def one(i):
            ws = await connect(url)
            msg = "tunnel-%d-%s" % (i, "x" * (i % 50))
            await ws.send(msg)
            back = await asyncio.wait_for(ws.recv(), 20)
            return (ws, back == msg)

        pairs = await asyncio.gather(*(one(i) for i in range(n)))
        # all n are open at once here; then each says its message again
        again = await asyncio.gather(*(ws.send("again-%d" % i) for i, (ws, _) in enumerate(pairs)))
        backs = await asyncio.gather(*(asyncio.wait_for(ws.recv(), 20) for ws, _ in pairs))
        ok2 = sum(1 for i, b in enumerate(backs) if b == "again-%d" % i)
        await asyncio.gather(*(ws.close() for ws, _ in pairs))
        out = {"first": sum(1 for _, ok in pairs if ok), "second": ok2, "opened": len(again)}
    elif what == "headers":
        ws = await connect(url)
        out = {"headers": json.loads(await asyncio.wait_for(ws.recv(), 10))}
        await ws.close()
    elif what == "hold":
        ws = await connect(url)
        await ws.send("before")
        a = await asyncio.wait_for(ws.recv(), 10)
        print(json.dumps({"ready": True}), flush=True)
        await asyncio.sleep(float(args[0]))
        await ws.send("after")
        b = await asyncio.wait_for(ws.recv(), 10)
        await ws.close()
        out = {"before": a, "after": b}
    return out


def main():
    url, what, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    try:
        out = asyncio.run(asyncio.wait_for(run(url, what, args), 60))
    except Exception as e:  # reported, not raised: the spec asserts on it
        out = {"error": "%s: %s" % (type(e).__name__, e)}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
