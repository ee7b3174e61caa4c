#!/usr/bin/python3
"""WebSocket origin for moongate's tunnel specs (Debian python3-websockets).

Echoes every message back as it came (text or binary). The path chooses more:
  /close/CODE   closes at once with that close code and reason "bye"
  /count        answers each message with how many messages it has had
  /headers      sends the request's headers as one JSON text message, then echoes
Writes its port to --port-file once it listens. TLS with --tls-cert/--tls-key.
"""
import argparse
import asyncio
import json
import ssl

import websockets


async def handler(ws, path):
    if path.startswith("/close/"):
        await ws.close(code=int(path.split("/")[2]), reason="bye")
        return
    if path == "/headers":
        await ws.send(json.dumps({k.lower(): v for k, v in ws.request_headers.raw_items()}))
    n = 0
    try:
        async for msg in ws:
            n += 1
            await ws.send(str(n) if path == "/count" else msg)
    except websockets.ConnectionClosed:
        pass


async def main(args):
    ctx = None
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
    async with websockets.serve(handler, "127.0.0.1", args.port, ssl=ctx, max_size=8 * 1024 * 1024,
                                ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        with open(args.port_file + ".tmp", "w") as f:
            f.write(str(port))
        import os
        os.rename(args.port_file + ".tmp", args.port_file)
        await asyncio.Future()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    asyncio.run(main(ap.parse_args()))
