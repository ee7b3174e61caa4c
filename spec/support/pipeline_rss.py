#!/usr/bin/python3
"""Sends N pipelined GETs of PATH in one write on a connection whose receive
buffer is small (so the kernel holds little of the answers), waits, prints the
growth of moongate's RSS in KiB, then reads every answer and prints how many
complete 200 responses of SIZE body bytes came, and whether more bytes followed.

Usage: pipeline_rss.py PORT PID N PATH SIZE [half-close]
With "half-close", the client shuts its sending side down right after the requests.
Output: "grown=<KiB> answers=<count> extra=<bytes>"
"""
import socket
import sys
import time

port, pid, n, path, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])


def rss():
    with open("/proc/%s/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(("127.0.0.1", port))
base = rss()
s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode() * n)
if len(sys.argv) > 6 and sys.argv[6] == "half-close":
    s.shutdown(socket.SHUT_WR)
time.sleep(1.5)
grown = rss() - base
s.settimeout(10)
buf = b""
answers = 0
while answers < n:
    end = buf.find(b"\r\n\r\n")
    if end >= 0:
        head = buf[:end].decode("latin-1").lower()
        length = int(head.split("content-length:")[1].split("\r\n")[0])
        if len(buf) >= end + 4 + length:
            if head.startswith("http/1.1 200") and length == size:
                answers += 1
            buf = buf[end + 4 + length:]
            continue
    data = s.recv(1 << 20)
    if not data:
        break
    buf += data
s.settimeout(0.3)
try:
    extra = len(buf) + len(s.recv(1 << 20))
except socket.timeout:
    extra = len(buf)
print("grown=%d answers=%d extra=%d" % (grown, answers, extra))
