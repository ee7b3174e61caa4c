-- Hostile or odd traffic around the transport (core/transport.c) and splicing:
-- each case is a defect found by attacking the binary over loopback, or a path
-- no other spec drives, and checks the exact bytes and log lines that follow.
local helpers = require "spec.helpers"

-- A TLS client (the Lua helpers have none) whose request and close_notify go in
-- one write, so that moongate reads them together: argv port, request as hex.
-- Prints the plaintext response (up to moongate's close or 5 s).
local TLS_THEN_CLOSE_NOTIFY = [[
import socket, ssl, sys
port, request = int(sys.argv[1]), bytes.fromhex(sys.argv[2])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = socket.create_connection(("127.0.0.1", port), timeout=5)
inb, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
t = ctx.wrap_bio(inb, outb, server_hostname="localhost")
while True:
    try:
        t.do_handshake()
        break
    except ssl.SSLWantReadError:
        s.sendall(outb.read())
        d = s.recv(65536)
        if not d:
            sys.exit("closed in the handshake")
        inb.write(d)
s.sendall(outb.read())
t.write(request)
try:
    t.unwrap()
except ssl.SSLWantReadError:
    pass
s.sendall(outb.read())
try:
    while True:
        d = s.recv(65536)
        if not d:
            break
        inb.write(d)
except OSError:
    pass
out = b""
while True:
    try:
        d = t.read(65536)
    except ssl.SSLError:
        break
    if not d:
        break
    out += d
sys.stdout.write(out.decode("latin-1"))
]]

local function hex(s)
  return (s:gsub(".", function(ch) return ("%02x"):format(ch:byte()) end))
end

describe("transport under attack", function()
  local origin, proxy

  lazy_setup(function()
    local certs = helpers.tmpdir()
    helpers.self_signed(certs)
    origin = helpers.origin({ name = "O" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, error_log = "error.log", log_level = "debug",
            timeouts = { upstream_write = 8, upstream_read = 8 } }
mg.listen { "127.0.0.1:${port}" }
mg.listen { "127.0.0.1:${tls}", tls = { cert = "${certs}/cert.pem", key = "${certs}/key.pem" } }
local sp = mg.upstream "sp" { servers = { "${origin}" }, splice = true, keepalive = 4 }
local pooled = mg.upstream "pooled" { servers = { "${origin}" }, keepalive = 4 }
mg.route { path = "/pooled/", upstream = pooled, on = { request = function(req) req:set_path(req.path:sub(8)) end } }
mg.route { upstream = sp }
]], { vars = { origin = origin.addr, certs = certs }, ports = { "tls" } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy, origin)
  end)

  local function errlog() return helpers.read_file(proxy.dir .. "/error.log") or "" end

  -- Waits for `needle` (plain text) in the error log written since `before`.
  local function logged_since(before, needle)
    return helpers.wait_until(function()
      return errlog():sub(before + 1):find(needle, 1, true) ~= nil
    end, 3, 0.05)
  end

  it("does not reuse an upstream connection whose server sent bytes after a spliced body", function()
    -- The splice takes exactly the Content-Length: bytes the server sent after
    -- the body stay in the socket. The connection must not go back to the pool,
    -- where the next request (here pipelined behind, so it is sent at once)
    -- would read them as the start of its response and get a 502.
    local before = #errlog()
    local n = 300000
    local c = proxy:connect()
    assert(c:send("GET /extra/" .. n .. " HTTP/1.1\r\nHost: x\r\n\r\nGET /echo HTTP/1.1\r\nHost: x\r\n\r\n"))
    local first = assert(c:response())
    assert.equal(200, first.status)
    assert.equal(n, #first.body)
    assert.equal(helpers.sha256(helpers.pattern(n)), helpers.sha256(first.body))
    local second = assert(c:response())
    c:close()
    local doc = helpers.echo(second)
    assert.equal(1, doc.conn_request) -- a new upstream connection answered it
    assert(logged_since(before, "body bytes spliced"), "the body was not spliced")
    assert(logged_since(before, "bytes after the end of the response: connection not reused"),
      errlog():sub(before + 1))
  end)

  it("sends on a request body that came in the same read as the client's close_notify", function()
    -- TLS: the close_notify ends the read that brought the body. The body must
    -- still go out to the (pooled, so already connected) upstream, as it does
    -- when the FIN of a plain connection follows its bytes.
    local first = helpers.echo(assert(proxy:request({ path = "/pooled/echo" }))) -- pools a connection
    local req = "POST /pooled/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    local t0 = helpers.now()
    local out, rc = helpers.run({ "timeout", "10", helpers.python, "-c", TLS_THEN_CLOSE_NOTIFY,
                                  tostring(proxy.ports.tls), hex(req) })
    assert.equal(0, rc, out)
    assert.truthy(out:find("^HTTP/1.1 200 "), out)
    local doc = helpers.decode_json(out:match("\r\n\r\n(.*)$"))
    assert.equal(5, doc.body_len)
    assert.equal(helpers.sha256("hello"), doc.body_sha256)
    assert.same({ first.conn, first.conn_request + 1 }, { doc.conn, doc.conn_request }) -- the pooled one
    assert(helpers.now() - t0 < 4, "the answer took " .. (helpers.now() - t0) .. " s")
  end)
end)
