#!/usr/bin/python3
"""A line-command TCP peer for the mg.tcp specs (spec/integration/tcp_spec.lua).

Usage: tcp_peer.py --port N [--tls-port M --tls-cert PEM --tls-key PEM]

Each connection (one thread each) reads command lines and answers:
  LINE <text>        -> <text>\\r\\n
  LF <text>          -> <text>\\n
  BYTES <n>          -> n bytes: "0123456789" repeated
  SPLIT <a> <b>      -> <a>, 0.2 s later <b>\\n  (one line in two writes)
  SLOW <secs> <text> -> sleeps secs, then <text>\\n
  CLOSE <text>       -> <text>, then closes (FIN)
  RESET              -> closes with a reset (RST)
  BIG <n>            -> n bytes of "x" without a newline (the connection stays)
  CONN               -> <this connection's number>\\n (1 for the first accepted)
  SILENT             -> nothing
Every accepted connection counts; --tls-port speaks TLS (same commands) with
the given certificate.
"""
import argparse
import socket
import socketserver
import ssl
import struct
import threading
import time

count_lock = threading.Lock()
accepted = 0


def serve(conn):
    global accepted
    with count_lock:
        accepted += 1
        me = accepted
    f = conn.makefile("rb")
    try:
        while True:
            line = f.readline()
            if not line:
                return
            parts = line.decode().rstrip("\r\n").split(" ", 2)
            cmd, args = parts[0], parts[1:]
            if cmd == "LINE":
                conn.sendall((" ".join(args) + "\r\n").encode())
            elif cmd == "LF":
                conn.sendall((" ".join(args) + "\n").encode())
            elif cmd == "BYTES":
                n = int(args[0])
                conn.sendall((b"0123456789" * (n // 10 + 1))[:n])
            elif cmd == "SPLIT":
                conn.sendall(args[0].encode())
                time.sleep(0.2)
                conn.sendall((args[1] + "\n").encode())
            elif cmd == "SLOW":
                time.sleep(float(args[0]))
                conn.sendall(((args[1] if len(args) > 1 else "") + "\n").encode())
            elif cmd == "CLOSE":
                conn.sendall(" ".join(args).encode())
                return
            elif cmd == "RESET":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            elif cmd == "BIG":
                conn.sendall(b"x" * int(args[0]))
            elif cmd == "CONN":
                conn.sendall(("%d\n" % me).encode())
            elif cmd == "SILENT":
                pass
    except (OSError, ssl.SSLError):
        return
    finally:
        try:
            conn.close()
        except OSError:
            pass


class Plain(socketserver.BaseRequestHandler):
    def handle(self):
        serve(self.request)


class Tls(socketserver.BaseRequestHandler):
    ctx = None

    def handle(self):
        try:
            conn = Tls.ctx.wrap_socket(self.request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        serve(conn)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tls-port", type=int)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    a = ap.parse_args()
    servers = [Server(("127.0.0.1", a.port), Plain)]
    if a.tls_port:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        Tls.ctx = ctx
        servers.append(Server(("127.0.0.1", a.tls_port), Tls))
    for s in servers[1:]:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
