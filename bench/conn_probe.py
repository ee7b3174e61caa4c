#!/usr/bin/env python3
"""A light client beside wrk for the connection-per-request scenarios (close,
tls-handshake): one new connection at a time, `--rate` per second, for
`--duration` seconds, each timed from connect() to the end of the response
(connect, TLS handshake with --tls, request, response, close).

wrk's latency starts when it writes the request, after its connect and
handshake, so a proxy that makes new connections wait in its accept queue or
handshake backlog looks fast to wrk; this probe counts that wait.

Prints one line: "p50_ms p99_ms count errors" (nan nan 0 N with no success).
"""
import argparse
import socket
import ssl
import time


def one(port, ctx, timeout):
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        s = ctx.wrap_socket(raw, server_hostname="bench.test") if ctx else raw
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n")
            got = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        finally:
            if ctx:
                s.close()
    if not got.startswith(b"HTTP/1.1 200"):
        raise ValueError("unexpected answer: %r" % got[:40])
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--rate", type=float, default=25.0)
    args = ap.parse_args()
    ctx = None
    if args.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    times, errors = [], 0
    gap = 1.0 / args.rate
    end = time.monotonic() + args.duration
    while time.monotonic() < end:
        start = time.monotonic()
        try:
            times.append(one(args.port, ctx, 5.0))
        except (OSError, ValueError):
            errors += 1
        left = gap - (time.monotonic() - start)
        if left > 0:
            time.sleep(left)
    if not times:
        print("nan nan 0 %d" % errors)
        return
    times.sort()

    def pct(p):
        return times[min(len(times) - 1, int(len(times) * p))] * 1000

    print("%.3f %.3f %d %d" % (pct(0.50), pct(0.99), len(times), errors))


if __name__ == "__main__":
    main()
