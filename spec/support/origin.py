#!/usr/bin/python3
"""Test origin for moongate's integration specs.

A deliberately small HTTP/1.1 server on asyncio streams: every byte it sends is
written here by hand, so specs can make an upstream misbehave in exact ways
(until-close bodies, 1xx, resets, hop-by-hop headers, slow heads and bodies).
It parses leniently on purpose: it must show what the proxy sent, not judge it.

Usage:
  origin.py --name A --port-file F [--log FILE] [--port N]
            [--tls-cert PEM --tls-key PEM [--tls-max 1.2]
             [--tls-client-ca PEM [--tls-client required|optional]]]
            [--proxy-protocol] [--status-file F] [--as-path PATH]
  origin.py --blackhole --port-file F

With --tls-cert and --tls-key the main port speaks TLS (1.2 or 1.3, ALPN
"http/1.1", the same certificate whatever the client's SNI; --tls-max 1.2 stops
at 1.2; --tls-client-ca asks clients for a certificate signed by that CA, which
--tls-client required makes mandatory) and every connection is counted once its
handshake is done; the control port stays plain.

With --proxy-protocol every connection must begin with a PROXY protocol header,
version 1 or 2 (before the TLS handshake when the port speaks TLS); one without
is closed unanswered (logged to stderr, not counted). A header found again before a later
request on the same connection is taken and counted too (a proxy must send one
per connection: the count shows it). /echo then also has "proxy": the first
header as parsed, {"version": 1|2, "command": "PROXY"|"LOCAL", "family":
"TCP4"|"TCP6"|"UNKNOWN", "src", "src_port", "dst", "dst_port"} (addresses null
without one), and "proxy_headers": how many headers the connection has carried.

With --status-file F, while F holds a status code (a number) every request on
the main port is answered with it (body "status N\n", Content-Length), whatever
its path: specs make a server fail its health checks, or answer 5xx, by writing
F (and heal it by emptying or removing F).

The port file receives "MAIN CONTROL\n" once both sockets listen (written to a
temporary name and renamed, so a reader never sees half of it). The control
port answers every request with the counters as JSON and is not counted, so
specs can read them without disturbing what they measure.

With --as-path PATH every request on the main port is answered as a request for
PATH would be (after its body is read), whatever it asked for: a fault a spec
injects into one origin of several ("/status/503", "/reset-rst", "/slow-head/2").

Behaviour by path on the main port (the query string is ignored for routing):
  /bytes/N        N bytes of the pattern, Content-Length
  /chunked/N      the same bytes, chunked in pieces of varying size
  /close/N        the same bytes, no framing: body then close
  /slow-head/S    wait S seconds, then answer like /echo
  /slow-body/S    send a head with Content-Length: 10, wait S seconds, send body
  /slow-read/S    wait S seconds before reading the request body, then /echo
  /fill/N         N bytes of "x" with Content-Length, as fast as possible
  /extra/N        /bytes/N followed, in the same write, by 16 bytes that belong
                  to no response (a broken server); the connection stays open
  /status/N       status N; 204/304 without body (304 carries Content-Length);
                  1xx (not 101): the interim response, then 200 "final after N\n"
  /reset          close without answering; /reset-rst: the same with an RST
  /hop            200 with hop-by-hop, Server and X-Powered-By headers, then close
  /hop-ka         the same with Connection: keep-alive, X-Foo (stays open)
  /hdrs/TAG?h=Name:Value&h=...&n=N&chunked=1
                  200 with each h (URL-decoded, split at the first ":") as a
                  response header; a "status:N" h sets the status. The body is
                  N bytes of the pattern when n is given, else
                  "TAG count=C al=A\n": C counts the requests for this exact
                  target (so a spec sees whether the origin was asked), A is
                  the request's Accept-Language ("-" without). chunked=1 sends
                  the body chunked instead of with Content-Length. Every
                  answer has X-Count: C. cond=1: a request whose If-None-Match
                  equals the ETag h gets a 304 with the same headers. For the
                  cache's specs.
  /slow-hdrs/S/TAG?...  waits S seconds, then answers as /hdrs/TAG?... (i13-collapse)
  /stats          the counters (this request is counted)
  /who/TAG        200, Cache-Control: max-age=60, X-Origin: NAME, body
                  "NAME TAG count=C\n" (C: requests for this exact target)
  /te-gzip        200 with Transfer-Encoding: gzip, chunked and a chunked body
  /stream-echo    200 chunked, Connection: close: each piece of the request body
                  is sent back as soon as it is read (full duplex), then close
  anything else   /echo: JSON of what was received (see echo()); over TLS it
                  also has "tls": {"version", "sni", "alpn", "reused", "client"}
                  as the origin saw them (sni and alpn null when the client sent
                  none; reused: the client resumed a session; client: the CN of
                  the client's verified certificate, or null)

The pattern is the lines "%015d\\n" % i for i = 0, 1, 2, ... cut to N bytes;
spec/helpers.lua builds the same bytes to compare.

Counters (control port, /stats): connections accepted, requests seen, open
connections, body bytes sent and request body bytes read.
"""

import argparse
import asyncio
import hashlib
import json
import os
import socket
import ssl
import struct
import sys

STATE = {"connections": 0, "requests": 0, "open": 0, "body_bytes_sent": 0,
         "body_bytes_read": 0}
NAME = "origin"
LOG = None
PROXY_PROTOCOL = False  # --proxy-protocol
DELAY = 0.0  # --delay: seconds every request on the main port waits before its answer
AS_PATH = None  # --as-path: every request is answered as one for this path
TLS = None  # with --proxy-protocol: the SSLContext that takes over after the header
_PATTERN = bytearray()


HDRS_COUNT = {}  # /hdrs: requests per exact target


def pattern(n):
    """First n bytes of the shared deterministic body pattern."""
    global _PATTERN
    if len(_PATTERN) < n:
        lines = (n + 15) // 16
        _PATTERN = bytearray(b"".join(b"%015d\n" % i for i in range(lines)))
    return bytes(_PATTERN[:n])


def log_line(line):
    if LOG is not None:
        LOG.write(line + "\n")
        LOG.flush()


def parse_head(head):
    """Split a raw head into (method, target, version, [[name, value], ...])."""
    text = head.decode("latin-1")
    lines = text[:-4].split("\r\n")
    parts = lines[0].split(" ")
    method = parts[0] if parts else ""
    target = parts[1] if len(parts) > 1 else ""
    version = parts[2] if len(parts) > 2 else ""
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append([name, value.strip(" \t")])
    return lines[0], method, target, version, headers


def header(headers, name):
    """All values of a header (case-insensitive), joined by ", ", or None."""
    vals = [v for n, v in headers if n.lower() == name]
    return ", ".join(vals) if vals else None


def tokens(value):
    return [t.strip().lower() for t in (value or "").split(",") if t.strip()]


async def read_body(reader, headers):
    """Read and hash the request body; returns (length, sha256 hex, chunked)."""
    h = hashlib.sha256()
    n = 0
    te = tokens(header(headers, "transfer-encoding"))
    if te and te[-1] == "chunked":
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                break
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            h.update(data)
            n += size
            STATE["body_bytes_read"] += size
        return n, h.hexdigest(), True
    cl = header(headers, "content-length")
    if cl:
        left = int(cl.split(",")[0])
        while left > 0:
            data = await reader.read(min(left, 1 << 16))
            if not data:
                raise asyncio.IncompleteReadError(b"", left)
            h.update(data)
            n += len(data)
            left -= len(data)
            STATE["body_bytes_read"] += len(data)
    return n, h.hexdigest(), False


async def send(writer, data):
    writer.write(data)
    await writer.drain()


def head_bytes(status, reason, headers):
    out = ["HTTP/1.1 %d %s\r\n" % (status, reason)]
    for n, v in headers:
        out.append("%s: %s\r\n" % (n, v))
    out.append("\r\n")
    return "".join(out).encode("latin-1")


async def send_body_plain(writer, body):
    for i in range(0, len(body), 1 << 16):
        piece = body[i:i + (1 << 16)]
        await send(writer, piece)
        STATE["body_bytes_sent"] += len(piece)


async def echo(writer, req, keep):
    doc = {
        "name": NAME,
        "method": req["method"],
        "path": req["target"],
        "version": req["version"],
        "headers": req["headers"],
        "body_len": req["body_len"],
        "body_sha256": req["body_sha256"],
        "chunked": req["chunked"],
        "conn": req["conn"],
        "conn_request": req["conn_request"],
    }
    if req.get("tls") is not None:
        doc["tls"] = req["tls"]
    if PROXY_PROTOCOL:
        doc["proxy"] = req["proxy"]
        doc["proxy_headers"] = req["proxy_headers"]
    body = json.dumps(doc).encode()
    hdrs = [("Content-Type", "application/json"), ("Content-Length", len(body)),
            ("X-Origin", NAME)]
    if not keep:
        hdrs.append(("Connection", "close"))
    await send(writer, head_bytes(200, "OK", hdrs) + (b"" if req["method"] == "HEAD" else body))
    return keep


async def respond(writer, req, keep):
    """Answer one request; returns whether the connection stays open."""
    path = req["target"].split("?")[0]
    parts = path.split("/")
    arg = parts[2] if len(parts) > 2 else ""
    kind = "/" + parts[1] if len(parts) > 1 else "/"
    head_only = req["method"] == "HEAD"
    conn_hdr = [] if keep else [("Connection", "close")]

    # i13-collapse: /slow-hdrs/S/TAG?...: waits S seconds, then answers as
    # /hdrs/TAG?... does (counted under that target: the X-Count and the body's
    # count say how often the origin was asked, whichever way)
    if kind == "/slow-hdrs":
        await asyncio.sleep(float(arg))
        rest = req["target"].split("/", 3)[3]
        req = dict(req, target="/hdrs/" + rest)
        path = req["target"].split("?")[0]
        parts = path.split("/")
        arg = parts[2] if len(parts) > 2 else ""
        kind = "/hdrs"

    if kind == "/hdrs":
        from urllib.parse import parse_qsl
        query = req["target"].split("?", 1)[1] if "?" in req["target"] else ""
        HDRS_COUNT[req["target"]] = HDRS_COUNT.get(req["target"], 0) + 1
        status, hdrs, n, chunked, cond = 200, [], None, False, False
        for k, v in parse_qsl(query, keep_blank_values=True):
            if k == "h" and ":" in v:
                name, value = v.split(":", 1)
                if name.lower() == "status":
                    status = int(value)
                else:
                    hdrs.append((name, value))
            elif k == "n":
                n = int(v)
            elif k == "chunked":
                chunked = v == "1"
            elif k == "cond":
                cond = v == "1"
        if n is not None:
            body = pattern(n)
        else:
            al = header(req["headers"], "accept-language") or "-"
            body = ("%s count=%d al=%s\n" % (arg, HDRS_COUNT[req["target"]], al)).encode()
        hdrs.append(("X-Count", str(HDRS_COUNT[req["target"]])))
        if cond:
            etag = next((v for n_, v in hdrs if n_.lower() == "etag"), None)
            inm = header(req["headers"], "if-none-match")
            if etag is not None and inm == etag:
                status = 304
        if status in (204, 304):
            body = b""
        reason = {200: "OK", 203: "Non-Authoritative Information", 204: "No Content",
                  304: "Not Modified", 404: "Not Found"}.get(status, "Status")
        if chunked and status not in (204, 304):
            await send(writer, head_bytes(status, reason, hdrs + [("Transfer-Encoding", "chunked")] + conn_hdr))
            if not head_only:
                for i in range(0, len(body), 10000):
                    piece = body[i:i + 10000]
                    await send(writer, b"%x\r\n" % len(piece) + piece + b"\r\n")
                await send(writer, b"0\r\n\r\n")
            return keep
        length = [] if status == 304 else [("Content-Length", len(body))]
        await send(writer, head_bytes(status, reason, hdrs + length + conn_hdr))
        if not head_only and body:
            await send_body_plain(writer, body)
        return keep

    # i13-range: /rng/TAG?n=N&h=Name:Value...: N bytes of the pattern with those
    # headers; the Range and If-Range it got in X-Got-Range / X-Got-If-Range ("-":
    # none), the requests of this exact target in X-Count. A single "bytes=a-b" /
    # "a-" / "-n" Range gets a 206 of that part (the origin's own), unless ?full=1.
    if kind == "/rng":
        import re
        from urllib.parse import parse_qsl
        query = req["target"].split("?", 1)[1] if "?" in req["target"] else ""
        HDRS_COUNT[req["target"]] = HDRS_COUNT.get(req["target"], 0) + 1
        hdrs, n, full = [], 0, False
        for k, v in parse_qsl(query, keep_blank_values=True):
            if k == "h" and ":" in v:
                hdrs.append(tuple(v.split(":", 1)))
            elif k == "n":
                n = int(v)
            elif k == "full":
                full = v == "1"
        body = pattern(n)
        rng = header(req["headers"], "range")
        hdrs += [("X-Got-Range", rng or "-"), ("X-Got-If-Range", header(req["headers"], "if-range") or "-"),
                 ("X-Count", str(HDRS_COUNT[req["target"]]))]
        status, reason = 200, "OK"
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng or "")
        if m and not full and (m.group(1) or m.group(2)):
            if m.group(1):
                a = int(m.group(1))
                b = min(int(m.group(2)), n - 1) if m.group(2) else n - 1
            else:
                a, b = max(n - int(m.group(2)), 0), n - 1
            hdrs.append(("Content-Range", "bytes %d-%d/%d" % (a, b, n)))
            body = body[a:b + 1]
            status, reason = 206, "Partial Content"
        await send(writer, head_bytes(status, reason, hdrs + [("Content-Length", len(body))] + conn_hdr))
        if not head_only:
            await send_body_plain(writer, body)
        return keep

    if kind == "/bytes":
        body = pattern(int(arg))
        await send(writer, head_bytes(200, "OK", [("Content-Type", "application/octet-stream"),
                                                  ("Content-Length", len(body))] + conn_hdr))
        if not head_only:
            await send_body_plain(writer, body)
        return keep

    if kind == "/extra":
        body = pattern(int(arg))
        await send(writer, head_bytes(200, "OK", [("Content-Type", "application/octet-stream"),
                                                  ("Content-Length", len(body))] + conn_hdr)
                   + (b"" if head_only else body + b"EXTRA-BYTES-0123"))
        return keep

    if kind == "/short":
        # Content-Length N, then half of it, then the connection closes: a body
        # cut short by the upstream.
        n = int(arg)
        await send(writer, head_bytes(200, "OK", [("Content-Type", "application/octet-stream"),
                                                  ("Content-Length", n)]))
        if not head_only:
            await send_body_plain(writer, pattern(n // 2))
            await asyncio.sleep(0.2)
        return False

    if kind == "/fill":
        # N bytes of "x", fast: for backpressure checks, not for content.
        n = int(arg)
        await send(writer, head_bytes(200, "OK", [("Content-Type", "application/octet-stream"),
                                                  ("Content-Length", n)] + conn_hdr))
        if not head_only:
            block = b"x" * (1 << 18)
            while n > 0:
                piece = block[:min(n, len(block))]
                await send(writer, piece)
                STATE["body_bytes_sent"] += len(piece)
                n -= len(piece)
        return keep

    if kind == "/chunked":
        body = pattern(int(arg))
        await send(writer, head_bytes(200, "OK", [("Content-Type", "application/octet-stream"),
                                                  ("Transfer-Encoding", "chunked")] + conn_hdr))
        if head_only:
            return keep
        sizes = (1, 7, 100, 4096, 65536, 3)
        pos, i = 0, 0
        while pos < len(body):
            piece = body[pos:pos + sizes[i % len(sizes)]]
            ext = b";ext=1" if i == 0 else b""
            await send(writer, b"%x%s\r\n%s\r\n" % (len(piece), ext, piece))
            STATE["body_bytes_sent"] += len(piece)
            pos += len(piece)
            i += 1
        await send(writer, b"0\r\n\r\n")
        return keep

    # --- compress flush: /drip/N/S: N JSON lines, chunked, S seconds apart ---
    if kind == "/drip":
        count, gap = int(parts[2]), float(parts[3])
        await send(writer, head_bytes(200, "OK", [("Content-Type", "application/json"),
                                                  ("Transfer-Encoding", "chunked")] + conn_hdr))
        if head_only:
            return keep
        for i in range(count):
            if i:
                await asyncio.sleep(gap)
            line = b'{"event": %d, "text": "the same words again and again and again"}\n' % i
            await send(writer, b"%x\r\n%s\r\n" % (len(line), line))
        await send(writer, b"0\r\n\r\n")
        return keep

    if kind == "/close":
        body = pattern(int(arg))
        await send(writer, head_bytes(200, "OK", [("Content-Type", "application/octet-stream"),
                                                  ("Connection", "close")]))
        if not head_only:
            await send_body_plain(writer, body)
        return False

    if kind == "/slow-head":
        await asyncio.sleep(float(arg))
        return await echo(writer, req, keep)

    if kind == "/slow-body":
        await send(writer, head_bytes(200, "OK", [("Content-Type", "text/plain"),
                                                  ("Content-Length", 10)] + conn_hdr))
        await asyncio.sleep(float(arg))
        await send(writer, b"0123456789")
        return keep

    if kind == "/status":
        code = int(arg)
        if code in (204, 304):
            hdrs = [("ETag", '"v1"')]
            if code == 304:
                hdrs.append(("Content-Length", 1000))
            await send(writer, head_bytes(code, "No Content" if code == 204 else "Not Modified",
                                          hdrs + conn_hdr))
            return keep
        if 100 <= code < 200 and code != 101:
            await send(writer, head_bytes(code, "Early Hints" if code == 103 else "Interim",
                                          [("Link", "</style.css>; rel=preload")]))
            body = b"final after %d\n" % code
            code, reason = 200, "OK"
        else:
            body = b"status %d\n" % code
            reason = "Whatever"
        await send(writer, head_bytes(code, reason, [("Content-Type", "text/plain"),
                                                     ("Content-Length", len(body))] + conn_hdr)
                   + (b"" if head_only else body))
        return keep

    if kind == "/reset":
        return False

    if kind == "/reset-rst":
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        return False

    if kind in ("/hop", "/hop-ka"):
        body = b"hop"
        close = kind == "/hop" or not keep
        await send(writer, head_bytes(200, "OK", [
            ("Connection", "close, X-Foo" if close else "keep-alive, X-Foo"),
            ("X-Foo", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("Proxy-Authenticate", "Basic realm=x"),
            ("Server", "secret-backend/1.0"),
            ("X-Powered-By", "PHP"),
            ("X-Normal", "yes"),
            ("Content-Type", "text/plain"),
            ("Content-Length", len(body)),
        ]) + (b"" if head_only else body))
        return not close

    # ---- attack (spec/integration/cache_attack_spec.lua) ----
    if kind == "/who":
        # cacheable for a minute; the body names this origin and counts the
        # requests for the exact target, so a spec sees which origin answered
        HDRS_COUNT[req["target"]] = HDRS_COUNT.get(req["target"], 0) + 1
        body = ("%s %s count=%d\n" % (NAME, arg, HDRS_COUNT[req["target"]])).encode()
        await send(writer, head_bytes(200, "OK", [("Content-Type", "text/plain"),
                                                  ("Cache-Control", "max-age=60"),
                                                  ("X-Origin", NAME),
                                                  ("Content-Length", len(body))] + conn_hdr)
                   + (b"" if head_only else body))
        return keep
    # ---- end attack ----

    if kind == "/te-gzip":
        # a coding a proxy cannot re-frame: the body is not really gzip
        await send(writer, head_bytes(200, "OK", [("Content-Type", "text/plain"),
                                                  ("Transfer-Encoding", "gzip, chunked")]
                                      + conn_hdr))
        if not head_only:
            await send(writer, b"5\r\nhello\r\n0\r\n\r\n")
            STATE["body_bytes_sent"] += 5
        return keep

    if kind == "/stats":
        body = json.dumps(dict(STATE, name=NAME)).encode()
        await send(writer, head_bytes(200, "OK", [("Content-Type", "application/json"),
                                                  ("Content-Length", len(body))] + conn_hdr)
                   + (b"" if head_only else body))
        return keep

    return await echo(writer, req, keep)


async def stream_echo(reader, writer, headers):
    """Send each piece of the request body back as a chunk as soon as it is
    read; the response head goes out before any of the body is read."""
    await send(writer, head_bytes(200, "OK", [("Content-Type", "application/octet-stream"),
                                              ("Transfer-Encoding", "chunked"),
                                              ("Connection", "close")]))

    async def piece(data):
        STATE["body_bytes_read"] += len(data)
        await send(writer, b"%x\r\n%s\r\n" % (len(data), data))
        STATE["body_bytes_sent"] += len(data)

    te = tokens(header(headers, "transfer-encoding"))
    if te and te[-1] == "chunked":
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                break
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            await piece(data)
    else:
        left = int((header(headers, "content-length") or "0").split(",")[0])
        while left > 0:
            data = await reader.read(min(left, 1 << 16))
            if not data:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(data)
            await piece(data)
    await send(writer, b"0\r\n\r\n")


V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def parse_v1(line):
    """A v1 header line (CRLF included) as the dict /echo reports."""
    words = line[:-2].decode("latin-1").split(" ")
    if len(words) < 2 or words[0] != "PROXY" or len(line) > 107:
        raise ValueError("bad v1 header %r" % line)
    doc = {"version": 1, "command": "PROXY", "family": words[1], "src": None,
           "src_port": None, "dst": None, "dst_port": None}
    if words[1] == "UNKNOWN":
        return doc
    if words[1] not in ("TCP4", "TCP6") or len(words) != 6:
        raise ValueError("bad v1 header %r" % line)
    fam = socket.AF_INET if words[1] == "TCP4" else socket.AF_INET6
    for w in words[2:4]:
        socket.inet_pton(fam, w)  # raises on a bad address
    doc.update(src=words[2], dst=words[3], src_port=int(words[4]), dst_port=int(words[5]))
    return doc


def parse_v2(fixed, body):
    """A v2 header (16 fixed bytes and the rest) as the dict /echo reports."""
    ver_cmd, fam = fixed[12], fixed[13]
    if ver_cmd >> 4 != 2 or ver_cmd & 15 > 1:
        raise ValueError("bad v2 version/command 0x%02x" % ver_cmd)
    doc = {"version": 2, "command": "PROXY" if ver_cmd & 15 else "LOCAL", "family": "UNKNOWN",
           "src": None, "src_port": None, "dst": None, "dst_port": None}
    if ver_cmd & 15 == 0:
        return doc
    if fam == 0x11 and len(body) >= 12:
        doc.update(family="TCP4", src=socket.inet_ntop(socket.AF_INET, body[0:4]),
                   dst=socket.inet_ntop(socket.AF_INET, body[4:8]),
                   src_port=struct.unpack("!H", body[8:10])[0],
                   dst_port=struct.unpack("!H", body[10:12])[0])
    elif fam == 0x21 and len(body) >= 36:
        doc.update(family="TCP6", src=socket.inet_ntop(socket.AF_INET6, body[0:16]),
                   dst=socket.inet_ntop(socket.AF_INET6, body[16:32]),
                   src_port=struct.unpack("!H", body[32:34])[0],
                   dst_port=struct.unpack("!H", body[34:36])[0])
    elif fam != 0:
        raise ValueError("v2 family 0x%02x with %d address bytes" % (fam, len(body)))
    return doc


async def read_proxy_header(reader):
    """Reads a PROXY header if one starts here (a later request on a connection:
    a proxy must not send one again). Returns (header dict or None, the bytes
    read that were not one: the start of a request head). Six bytes decide:
    every request line and every header is longer."""
    start = await reader.readexactly(6)
    if start == b"PROXY ":
        return parse_v1(start + await reader.readuntil(b"\r\n")), b""
    if start == V2_SIG[:6]:
        fixed = start + await reader.readexactly(10)
        if fixed[:12] != V2_SIG:
            raise ValueError("bad v2 signature")
        body = await reader.readexactly(struct.unpack("!H", fixed[14:16])[0])
        return parse_v2(fixed, body), b""
    return None, start


async def recv_exactly(sock, n):
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < n:
        piece = await loop.sock_recv(sock, n - len(data))
        if not piece:
            raise asyncio.IncompleteReadError(data, n)
        data += piece
    return data


async def recv_proxy_header(sock):
    """The header that must begin a connection, read from the socket itself and
    never a byte past it (what follows may be a TLS ClientHello, which the TLS
    layer must see whole). Raises ValueError when there is none."""
    start = await recv_exactly(sock, 6)
    if start == b"PROXY ":
        line = start
        while not line.endswith(b"\r\n"):
            if len(line) >= 107:
                raise ValueError("v1 header longer than 107 bytes: %r" % line)
            line += await recv_exactly(sock, 1)
        return parse_v1(line)
    if start != V2_SIG[:6]:
        raise ValueError("no PROXY header: %r" % start)
    fixed = start + await recv_exactly(sock, 10)
    if fixed[:12] != V2_SIG:
        raise ValueError("bad v2 signature: %r" % fixed)
    return parse_v2(fixed, await recv_exactly(sock, struct.unpack("!H", fixed[14:16])[0]))


async def serve_proxied(sock):
    """--proxy-protocol: one accepted connection. The header first, then the
    stream (TLS when the port speaks it) is handed to handle()."""
    try:
        proxy = await recv_proxy_header(sock)
    except (asyncio.IncompleteReadError, ValueError, OSError) as e:
        print("origin %s: a connection without a PROXY header: %r" % (NAME, e),
              file=sys.stderr, flush=True)
        sock.close()
        return
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    proto = asyncio.StreamReaderProtocol(reader)
    try:
        transport, _ = await loop.connect_accepted_socket(lambda: proto, sock, ssl=TLS)
    except (ssl.SSLError, OSError) as e:
        print("origin %s: TLS after the PROXY header: %r" % (NAME, e), file=sys.stderr, flush=True)
        sock.close()
        return
    await handle(reader, asyncio.StreamWriter(transport, proto, reader, loop), proxy)


async def accept_proxied(lsock):
    loop = asyncio.get_running_loop()
    tasks = set()
    while True:
        sock, _ = await loop.sock_accept(lsock)
        sock.setblocking(False)
        t = asyncio.ensure_future(serve_proxied(sock))
        tasks.add(t)
        t.add_done_callback(tasks.discard)


def tls_info(writer):
    """{"version", "sni", "alpn", "reused", "client"} of a TLS connection, or None
    over plain TCP. client is the CN of the verified client certificate (None
    without one, or without --tls-client-ca)."""
    obj = writer.get_extra_info("ssl_object")
    if obj is None:
        return None
    client = None
    peer = obj.getpeercert()
    if peer:
        for rdn in peer.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    client = value
    return {"version": obj.version(), "sni": getattr(obj, "mg_sni", None),
            "alpn": obj.selected_alpn_protocol(), "reused": obj.session_reused,
            "client": client}


async def handle(reader, writer, proxy=None):
    STATE["connections"] += 1
    STATE["open"] += 1
    serial = STATE["connections"]
    nreq = 0
    nproxy = 1 if proxy else 0
    tls = tls_info(writer)
    try:
        while True:
            try:
                prefix = b""
                if PROXY_PROTOCOL:
                    again, prefix = await read_proxy_header(reader)
                    nproxy += again is not None
                head = prefix + await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                    ConnectionError):
                break
            line, method, target, version, headers = parse_head(head)
            STATE["requests"] += 1
            nreq += 1
            log_line(line)
            if "100-continue" in tokens(header(headers, "expect")):
                await send(writer, b"HTTP/1.1 100 Continue\r\n\r\n")
            if target.split("?")[0] == "/stream-echo":
                try:
                    await stream_echo(reader, writer, headers)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                        ConnectionError):
                    pass
                break
            if target.startswith("/slow-read/"):
                await asyncio.sleep(float(target.split("/")[2].split("?")[0]))
            try:
                body_len, body_sha, chunked = await read_body(reader, headers)
            except (asyncio.IncompleteReadError, ValueError, ConnectionError):
                break
            ctoks = tokens(header(headers, "connection"))
            if version == "HTTP/1.1":
                keep = "close" not in ctoks
            else:
                keep = "keep-alive" in ctoks
            req = {"method": method, "target": target, "version": version,
                   "headers": headers, "body_len": body_len, "body_sha256": body_sha,
                   "chunked": chunked, "conn": serial, "conn_request": nreq, "tls": tls,
                   "proxy": proxy, "proxy_headers": nproxy}
            if DELAY:
                await asyncio.sleep(DELAY)
            forced = forced_status()
            if forced:
                await send(writer, head_bytes(forced, "Forced", [("Content-Length", len(b"status %d\n" % forced)),
                                                                  ("X-Origin", NAME)] + ([] if keep else [("Connection", "close")]))
                           + (b"" if method == "HEAD" else b"status %d\n" % forced))
                if not keep:
                    break
                continue
            if AS_PATH:
                req["target"] = AS_PATH
            if not await respond(writer, req, keep):
                break
    except ConnectionError:
        pass
    finally:
        STATE["open"] -= 1
        if not writer.transport.is_closing():
            writer.close()


STATUS_FILE = None  # --status-file


def forced_status():
    """The status --status-file forces now, or None."""
    if not STATUS_FILE:
        return None
    try:
        with open(STATUS_FILE) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


async def control(reader, writer):
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            _, _, target, _, _ = parse_head(head)
            if target.startswith("/reset"):
                for k in ("connections", "requests", "body_bytes_sent", "body_bytes_read"):
                    STATE[k] = 0
            body = json.dumps(dict(STATE, name=NAME)).encode()
            await send(writer, head_bytes(200, "OK", [("Content-Type", "application/json"),
                                                      ("Content-Length", len(body))]) + body)
    finally:
        writer.close()


def write_port_file(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


async def main(args):
    global NAME, LOG, PROXY_PROTOCOL, TLS, DELAY, STATUS_FILE, AS_PATH
    NAME = args.name
    DELAY = args.delay
    STATUS_FILE = args.status_file
    AS_PATH = args.as_path
    if args.log:
        LOG = open(args.log, "a")
    if args.blackhole:
        # A listener whose accept queue is full: Linux then drops further SYNs,
        # so connects to it hang until the client gives up. It is the only
        # reliable loopback stand-in for an unreachable host.
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", args.port))
        lsock.listen(0)
        port = lsock.getsockname()[1]
        fillers = []
        for _ in range(4):
            c = socket.socket()
            c.settimeout(0.3)
            try:
                c.connect(("127.0.0.1", port))
            except OSError:
                c.close()
                break
            fillers.append(c)
        write_port_file(args.port_file, "%d 0\n" % port)
        await asyncio.Event().wait()
    tls = None
    if args.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        if args.tls_max == "1.2":
            tls.maximum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(args.tls_cert, args.tls_key)
        tls.set_alpn_protocols(["http/1.1"])
        if args.tls_client_ca:
            tls.load_verify_locations(args.tls_client_ca)
            tls.verify_mode = (ssl.CERT_REQUIRED if args.tls_client == "required"
                               else ssl.CERT_OPTIONAL)

        def remember_sni(obj, name, ctx):
            obj.mg_sni = name  # read back by tls_info()
            return None

        tls.sni_callback = remember_sni
    ctrl = await asyncio.start_server(control, "127.0.0.1", 0)
    cport = ctrl.sockets[0].getsockname()[1]
    if args.proxy_protocol:
        # accepted by hand: the header is read off the socket before any stream
        # (and TLS) reads from it
        PROXY_PROTOCOL, TLS = True, tls
        lsock = socket.socket()
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", args.port))
        lsock.listen(128)
        lsock.setblocking(False)
        write_port_file(args.port_file, "%d %d\n" % (lsock.getsockname()[1], cport))
        async with ctrl:
            await asyncio.gather(accept_proxied(lsock), ctrl.serve_forever())
    server = await asyncio.start_server(handle, args.host, args.port, limit=1 << 20,
                                        reuse_address=True, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    write_port_file(args.port_file, "%d %d\n" % (port, cport))
    async with server, ctrl:
        await asyncio.gather(server.serve_forever(), ctrl.serve_forever())


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="origin")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1",
                    help="the main port's loopback address (e.g. 127.0.0.2: several origins on one port)")
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log")
    ap.add_argument("--blackhole", action="store_true")
    ap.add_argument("--delay", type=float, default=0.0,
                    help="seconds every request waits before its answer (a slow server)")
    ap.add_argument("--tls-cert", help="serve TLS on the main port with this certificate (PEM)")
    ap.add_argument("--tls-key", help="the private key of --tls-cert (PEM)")
    ap.add_argument("--tls-max", choices=["1.2", "1.3"], default="1.3",
                    help="the highest TLS version served")
    ap.add_argument("--tls-client-ca", help="verify client certificates against this CA (PEM)")
    ap.add_argument("--tls-client", choices=["required", "optional"], default="optional",
                    help="with --tls-client-ca: whether a client certificate is required")
    ap.add_argument("--proxy-protocol", action="store_true",
                    help="every connection begins with a PROXY protocol v1/v2 header")
    ap.add_argument("--status-file",
                    help="while this file holds a status code, every request gets it")
    ap.add_argument("--as-path", help="answer every request as one for this path (a fault)")
    parsed = ap.parse_args()
    if bool(parsed.tls_cert) != bool(parsed.tls_key):
        ap.error("--tls-cert and --tls-key go together")
    try:
        asyncio.run(main(parsed))
    except KeyboardInterrupt:
        sys.exit(0)
