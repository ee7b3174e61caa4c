#!/usr/bin/env python3
"""Opens N keep-alive connections to a proxy, sends one GET on each and reads its
answer, then holds them all open and idle until SIGTERM or `--hold` seconds
pass. Prints "ready N" (or "failed: reason") once they are all idle, so that
scripts/bench can read the proxy's memory with N idle keep-alive connections.

Usage: idle_conns.py PORT [N] [--hold SECONDS]
Connections are opened and used 50 at a time, like a client with 50 in flight."""
import select
import signal
import socket
import sys
import time


def read_answer(s):
    """Reads one HTTP/1.1 response with a Content-Length body; returns its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        rest += chunk
    return int(head.split(b" ", 2)[1])


def main():
    args = [a for a in sys.argv[1:]]
    hold = 60.0
    if "--hold" in args:
        i = args.index("--hold")
        hold = float(args[i + 1])
        del args[i:i + 2]
    port = int(args[0])
    n = int(args[1]) if len(args) > 1 else 1000
    conns = []
    try:
        for start in range(0, n, 50):
            batch = []
            for _ in range(min(50, n - start)):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                batch.append(s)
            for s in batch:
                status = read_answer(s)
                if status != 200:
                    raise ConnectionError("status %d" % status)
            conns.extend(batch)
    except (OSError, ValueError) as e:
        print("failed: %s after %d connections" % (e, len(conns)), flush=True)
        sys.exit(1)
    print("ready %d" % len(conns), flush=True)
    # idle until the bench stops us (SIGTERM) or the hold time passes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    time.sleep(hold)
    # any connection the proxy closed meanwhile would be readable at EOF
    poller = select.poll()
    for s in conns:
        poller.register(s, select.POLLIN)
    print("closed by proxy while idle: %d" % len(poller.poll(0)), flush=True)
    for s in conns:
        s.close()


if __name__ == "__main__":
    main()
