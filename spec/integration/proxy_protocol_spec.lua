-- PROXY protocol on listeners (mg.listen { ..., proxy_protocol = true }): a
-- trusted load balancer in front says who the client is, in a v1 or v2 header
-- before the client's bytes. Everything after sees that address: the hooks'
-- req.client_ip, the upstream's X-Forwarded-For and Forwarded, the access log.
local helpers = require "spec.helpers"

local function config(trusted)
  return [[
local mg = require "moongate"
mg.config { workers = 1, access_log = "access.log", ]] .. (trusted and "trusted_proxies = " .. trusted .. "," or "") .. [[ }
mg.listen { "127.0.0.1:${port}", proxy_protocol = true }
local o = mg.upstream "o" { servers = { "${origin}" } }
mg.route { path = "/who", respond = function(req) return 200, req.client_ip .. "\n" end }
mg.route { upstream = o }
]]
end

local WHO = "GET /who HTTP/1.1\r\nHost: x\r\n\r\n"

-- A v2 header: PROXY command, TCP over IPv4 (0x11) or IPv6 (0x21).
local SIG = "\r\n\r\n\0\r\nQUIT\n"
local function be16(n) return string.char(math.floor(n / 256) % 256, n % 256) end
local function v2_inet(src, dst, sport, dport, tlvs)
  local body = string.char(unpack(src)) .. string.char(unpack(dst)) .. be16(sport) .. be16(dport) .. (tlvs or "")
  return SIG .. "\x21\x11" .. be16(#body) .. body
end
local function v2_inet6(src16, dst16, sport, dport)
  local body = src16 .. dst16 .. be16(sport) .. be16(dport)
  return SIG .. "\x21\x21" .. be16(#body) .. body
end

describe("PROXY protocol listener", function()
  local origin, proxy, untrusted

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    proxy = helpers.proxy(config('{ "127.0.0.0/8" }'), { vars = { origin = origin.addr } })
    untrusted = helpers.proxy(config('{ "10.0.0.0/8" }'), { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy, untrusted)
  end)

  local function who(prefix)
    local c = proxy:connect()
    assert(c:send(prefix .. WHO))
    local res = assert(c:response())
    c:close()
    return res.status, res.body
  end

  it("takes the client address of a v1 TCP4 header", function()
    assert.same({ 200, "203.0.113.7\n" }, { who("PROXY TCP4 203.0.113.7 127.0.0.1 51000 80\r\n") })
  end)

  it("takes the client address of a v1 TCP6 header", function()
    assert.same({ 200, "2001:db8::7\n" }, { who("PROXY TCP6 2001:db8::7 ::1 51000 80\r\n") })
  end)

  it("takes the client address of a v2 header, TLVs and all", function()
    local tlv = "\x04\x00\x03abc" -- a NOOP TLV
    assert.same({ 200, "198.51.100.9\n" },
      { who(v2_inet({ 198, 51, 100, 9 }, { 127, 0, 0, 1 }, 40000, 80, tlv)) })
    local src = "\x20\x01\x0d\xb8" .. string.rep("\0", 11) .. "\x09"
    assert.same({ 200, "2001:db8::9\n" }, { who(v2_inet6(src, string.rep("\0", 15) .. "\1", 40000, 80)) })
  end)

  it("keeps the peer's address for v1 UNKNOWN and v2 LOCAL", function()
    assert.same({ 200, "127.0.0.1\n" }, { who("PROXY UNKNOWN\r\n") })
    assert.same({ 200, "127.0.0.1\n" }, { who(SIG .. "\x20\x00\x00\x00") })
  end)

  it("reads a header that arrives one byte at a time", function()
    local c = proxy:connect()
    local hdr = "PROXY TCP4 192.0.2.55 127.0.0.1 1234 80\r\n"
    for i = 1, #hdr do
      assert(c:send(hdr:sub(i, i)))
      helpers.sleep(0.002)
    end
    assert(c:send(WHO))
    local res = assert(c:response())
    assert.same({ 200, "192.0.2.55\n" }, { res.status, res.body })
    -- the header comes once: the next request on the connection is the same client's
    assert(c:send(WHO))
    res = assert(c:response())
    assert.same({ 200, "192.0.2.55\n" }, { res.status, res.body })
    c:close()
  end)

  it("hands the address upstream and to the access log", function()
    local c = proxy:connect()
    assert(c:send("PROXY TCP4 203.0.113.8 127.0.0.1 51001 80\r\nGET /echo HTTP/1.1\r\nHost: x\r\n\r\n"))
    local doc = helpers.echo(assert(c:response()))
    c:close()
    assert.same({ "203.0.113.8" }, helpers.echo_headers(doc, "x-forwarded-for"))
    assert.same({ "for=203.0.113.8;proto=http" }, helpers.echo_headers(doc, "forwarded"))
    local line = helpers.wait_until(function()
      for l in helpers.lines(proxy:file("access.log")) do
        if l:find('"/echo"', 1, true) and l:find("203.0.113.8", 1, true) then return l end
      end
    end, 3)
    assert(line, "no access log line")
    local e = helpers.decode_json(line)
    assert.equal("203.0.113.8:51001", e.client)
    assert.equal("203.0.113.8", e.client_ip)
  end)

  it("closes a connection without a valid header, saying why", function()
    for _, bad in ipairs({
      "GET / HTTP/1.1\r\nHost: x\r\n\r\n",             -- no header at all
      "PROXY TCP4 1.2.3.256 127.0.0.1 1 2\r\n" .. WHO,  -- a bad address
      "PROXY TCP4 1.2.3.4 127.0.0.1 1 65536\r\n" .. WHO, -- a bad port
      SIG .. "\x31\x11\x00\x0c" .. string.rep("\0", 12) .. WHO, -- v2 with version 3
    }) do
      local c = proxy:connect()
      assert(c:send(bad))
      local closed, data = c:closed(3)
      c:close()
      assert.is_true(closed, "answered " .. #data .. " bytes to " .. ("%q"):format(bad:sub(1, 40)))
    end
    assert.truthy(helpers.wait_until(function()
      local _, n = proxy:stderr():gsub("bad PROXY protocol header", "")
      return n >= 4
    end, 3), proxy:stderr())
    -- and the listener still serves
    assert.same({ 200, "203.0.113.7\n" }, { who("PROXY TCP4 203.0.113.7 127.0.0.1 51000 80\r\n") })
  end)

  it("closes connections from peers that are not trusted proxies", function()
    local c = untrusted:connect()
    c:send("PROXY TCP4 203.0.113.7 127.0.0.1 51000 80\r\n" .. WHO)
    local closed = c:closed(3)
    c:close()
    assert.is_true(closed)
    assert.truthy(helpers.wait_until(function()
      return untrusted:stderr():find("the peer is not in trusted_proxies", 1, true)
    end, 3), untrusted:stderr())
  end)
end)

describe("PROXY protocol config", function()
  it("refuses a proxy_protocol that is not a boolean", function()
    local dir = helpers.tmpdir()
    local conf = helpers.write_config(dir, [[
local mg = require "moongate"
mg.listen { "127.0.0.1:${port}", proxy_protocol = "v1" }
mg.route { respond = { status = 200 } }
]], { port = helpers.free_port() })
    local out, rc = helpers.moongate({ "-t", "-c", conf })
    assert.are_not.equal(0, rc)
    assert.truthy(out:find("proxy_protocol", 1, true), out)
  end)
end)
