#!/usr/bin/python3
"""Pipelines N requests (GET /r/NNNNN, each exactly 64 bytes) over TLS in one
write while moongate is stopped (SIGSTOP), so that a single socket read hands it
several TLS records, then lets it go (SIGCONT) and reads every answer with a small
receive buffer (the output queue fills and moongate holds requests back). Each
answer's body starts with the path it answers.

Usage: pipeline_order.py PORT PID N
Output: "answers=<count> in_order=<count> first_wrong=<index or -1>"
"""
import os
import signal
import socket
import ssl
import sys
import time

port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
raw = socket.socket()
raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
raw.connect(("127.0.0.1", port))
s = ctx.wrap_socket(raw, server_hostname="localhost")
reqs = []
for i in range(n):
    head = "GET /r/%05d HTTP/1.1\r\nHost: x\r\nX-Pad: " % i
    reqs.append((head + "p" * (64 - len(head) - 4) + "\r\n\r\n").encode())
assert all(len(r) == 64 for r in reqs)
os.kill(pid, signal.SIGSTOP)
try:
    s.settimeout(5)
    s.sendall(b"".join(reqs))
    time.sleep(0.2)
finally:
    os.kill(pid, signal.SIGCONT)
buf = b""
answers = in_order = 0
first_wrong = -1
s.settimeout(10)
while answers < n:
    end = buf.find(b"\r\n\r\n")
    if end >= 0:
        head = buf[:end].decode("latin-1").lower()
        if "content-length:" not in head:
            break
        length = int(head.split("content-length:")[1].split("\r\n")[0])
        if len(buf) >= end + 4 + length:
            body = buf[end + 4:end + 4 + length]
            if head.startswith("http/1.1 200") and body.startswith(b"/r/%05d\n" % answers):
                in_order += 1
            elif first_wrong < 0:
                first_wrong = answers
            answers += 1
            buf = buf[end + 4 + length:]
            continue
    try:
        data = s.recv(1 << 20)
    except (socket.timeout, ssl.SSLError, OSError):
        break
    if not data:
        break
    buf += data
print("answers=%d in_order=%d first_wrong=%d" % (answers, in_order, first_wrong))
