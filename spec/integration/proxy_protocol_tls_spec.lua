-- PROXY protocol on a TLS listener (mg.listen { ..., tls = {...}, proxy_protocol =
-- true }): the balancer's header comes first, in the clear, and the TLS handshake
-- follows it. The Lua helpers have no TLS client, so a short python3 script (ssl
-- module) sends the header on a plain socket, wraps the socket in TLS, sends one
-- request and prints the response.
local helpers = require "spec.helpers"

-- argv: port, the header as hex ("" for none), the request path.
local CLIENT = [[
import socket, ssl, sys
port, header, path = int(sys.argv[1]), bytes.fromhex(sys.argv[2]), sys.argv[3]
s = socket.create_connection(("127.0.0.1", port), timeout=5)
s.sendall(header)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
try:
    t = ctx.wrap_socket(s, server_hostname="localhost")
except (ssl.SSLError, OSError) as e:
    print("HANDSHAKE FAILED", type(e).__name__)
    sys.exit(0)
t.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode())
out = b""
while True:
    try:
        d = t.recv(65536)
    except (ssl.SSLError, OSError):
        break
    if not d:
        break
    out += d
sys.stdout.write(out.decode("latin-1"))
]]

local function hex(s)
  return (s:gsub(".", function(ch) return ("%02x"):format(ch:byte()) end))
end

local SIG = "\r\n\r\n\0\r\nQUIT\n"
local function v2_inet(src, dst, sport, dport)
  local function be16(n) return string.char(math.floor(n / 256) % 256, n % 256) end
  local body = string.char(unpack(src)) .. string.char(unpack(dst)) .. be16(sport) .. be16(dport)
  return SIG .. "\x21\x11" .. be16(#body) .. body
end

describe("PROXY protocol on a TLS listener", function()
  local origin, proxy

  lazy_setup(function()
    local dir = helpers.tmpdir()
    helpers.self_signed(dir)
    origin = helpers.origin({ name = "O" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, trusted_proxies = { "127.0.0.0/8" } }
mg.listen { "127.0.0.1:${port}", proxy_protocol = true,
            tls = { cert = "${certs}/cert.pem", key = "${certs}/key.pem" } }
mg.route { path = "/who", respond = function(req)
  return 200, req.client_ip .. " " .. (req.tls and req.tls.version or "plain") .. "\n"
end }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } } }
]], { vars = { certs = dir, origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
    if origin then origin:stop() end
  end)

  -- The python client's output: the raw response, or "HANDSHAKE FAILED ...".
  local function tls_request(header, path)
    local out, rc = helpers.run({ "timeout", "10", helpers.python, "-c", CLIENT, tostring(proxy.port),
                                  hex(header), path })
    assert.equal(0, rc, out)
    return out
  end

  it("reads a v1 header, then the TLS handshake, and takes the header's client", function()
    local out = tls_request("PROXY TCP4 203.0.113.7 127.0.0.1 51000 443\r\n", "/who")
    assert.truthy(out:find("^HTTP/1.1 200 "), out)
    assert.truthy(out:find("\r\n\r\n203.0.113.7 TLSv1.[23]\n$"), out)
  end)

  it("reads a v2 header before the handshake too", function()
    local out = tls_request(v2_inet({ 198, 51, 100, 9 }, { 127, 0, 0, 1 }, 40000, 443), "/who")
    assert.truthy(out:find("\r\n\r\n198.51.100.9 TLSv1.[23]\n$"), out)
  end)

  it("sends the header's client upstream as an https request", function()
    local out = tls_request("PROXY TCP4 203.0.113.7 127.0.0.1 51000 443\r\n", "/echo")
    local doc = helpers.decode_json(out:match("\r\n\r\n(.*)$"))
    assert.same({ "203.0.113.7" }, helpers.echo_headers(doc, "x-forwarded-for"))
    assert.same({ "https" }, helpers.echo_headers(doc, "x-forwarded-proto"))
  end)

  it("closes a TLS client that sends no header first, saying why", function()
    local out = tls_request("", "/who")
    assert.truthy(out:find("HANDSHAKE FAILED", 1, true), out)
    assert.truthy(helpers.wait_until(function()
      return proxy:stderr():find("bad PROXY protocol header", 1, true)
    end, 3), proxy:stderr())
  end)
end)
