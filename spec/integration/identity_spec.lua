-- Client-supplied identity (hardening item 10): Forwarded, X-Forwarded-*,
-- X-Real-IP and X-Request-Id are believed only from trusted_proxies; from anyone
-- else moongate's own values replace them. A client's Connection list never
-- strips a header a hook set.
local helpers = require "spec.helpers"

local function values(doc, name) return helpers.echo_headers(doc, name) end

local SPOOF = {
  { "Host", "x" },
  { "X-Forwarded-For", "203.0.113.7, 10.0.0.2" },
  { "Forwarded", "for=198.51.100.1;proto=https" },
  { "X-Real-IP", "6.6.6.6" },
  { "X-Request-Id", "abc-123" },
  { "X-Forwarded-Proto", "https" },
  { "X-Forwarded-Host", "front.example" },
}

local function config(trusted)
  return [[
local mg = require "moongate"
mg.config { workers = 1, access_log = "access.log", ]] .. (trusted and "trusted_proxies = " .. trusted .. "," or "") .. [[ }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
mg.route { path = "/who", respond = function(req) return 200, req.client_ip .. "\n" end }
mg.route { path = "/hooked", upstream = o, on = { request = function(req)
  assert(req:header("x-user") == nil, "a header the client listed in Connection reached the hook")
  req:set_header("X-User", "from-hook")
  req:set_header("X-Request-Id", "hook-id")
end } }
mg.route { upstream = o }
]]
end

describe("client identity", function()
  local origin, untrusted, trusted

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    untrusted = helpers.proxy(config(nil), { vars = { origin = origin.addr } })
    trusted = helpers.proxy(config('{ "127.0.0.0/8", "10.0.0.0/8" }'), { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(untrusted, trusted)
  end)

  local function echo(p, headers, path)
    return helpers.echo(assert(p:request({ path = path or "/echo", headers = headers })))
  end

  it("replaces every identity header of a client that is not a trusted proxy", function()
    local doc = echo(untrusted, SPOOF)
    assert.same({ "127.0.0.1" }, values(doc, "x-forwarded-for"))
    assert.same({ "for=127.0.0.1;proto=http" }, values(doc, "forwarded"))
    assert.same({ "127.0.0.1" }, values(doc, "x-real-ip"))
    assert.same({ "http" }, values(doc, "x-forwarded-proto"))
    assert.same({ "x" }, values(doc, "x-forwarded-host"))
    local ids = values(doc, "x-request-id")
    assert.equal(1, #ids)
    assert.matches("^%x+$", ids[1])
  end)

  it("takes no client address from an untrusted X-Forwarded-For", function()
    local res = assert(untrusted:request({ path = "/who", headers = SPOOF }))
    assert.equal("127.0.0.1\n", res.body)
  end)

  it("appends to the lists of a trusted proxy and keeps its request id, proto and host", function()
    local doc = echo(trusted, SPOOF)
    assert.equal("203.0.113.7, 10.0.0.2, 127.0.0.1", table.concat(values(doc, "x-forwarded-for"), ", "))
    assert.same({ "for=198.51.100.1;proto=https, for=127.0.0.1;proto=http" }, values(doc, "forwarded"))
    assert.same({ "203.0.113.7" }, values(doc, "x-real-ip"))
    assert.same({ "abc-123" }, values(doc, "x-request-id"))
    assert.same({ "https" }, values(doc, "x-forwarded-proto"))
    assert.same({ "front.example" }, values(doc, "x-forwarded-host"))
  end)

  it("joins several Forwarded headers of a trusted proxy, and drops them all from an untrusted one", function()
    local hs = { { "Host", "x" }, { "Forwarded", "for=192.0.2.1" }, { "Forwarded", "for=10.0.0.9;proto=https" } }
    assert.same({ "for=192.0.2.1, for=10.0.0.9;proto=https, for=127.0.0.1;proto=http" },
      values(echo(trusted, hs), "forwarded"))
    assert.same({ "for=127.0.0.1;proto=http" }, values(echo(untrusted, hs), "forwarded"))
  end)

  it("takes the client address from a trusted proxy's X-Forwarded-For, past every trusted hop", function()
    local res = assert(trusted:request({ path = "/who", headers = SPOOF }))
    assert.equal("203.0.113.7\n", res.body)
    -- several headers are one list, read from the right
    res = assert(trusted:request({ path = "/who", headers = {
      { "Host", "x" }, { "X-Forwarded-For", "192.0.2.1" }, { "X-Forwarded-For", "10.9.9.9" } } }))
    assert.equal("192.0.2.1\n", res.body)
    -- an entry that is not an address stops the walk at the hop after it
    res = assert(trusted:request({ path = "/who", headers = {
      { "Host", "x" }, { "X-Forwarded-For", "192.0.2.1, not-an-ip, 10.1.1.1" } } }))
    assert.equal("10.1.1.1\n", res.body)
    -- every hop trusted: the leftmost
    res = assert(trusted:request({ path = "/who", headers = { { "Host", "x" }, { "X-Forwarded-For", "10.1.1.1, 10.2.2.2" } } }))
    assert.equal("10.1.1.1\n", res.body)
  end)

  it("logs the client address it found beside the peer", function()
    local res = assert(trusted:request({ path = "/who", headers = SPOOF }))
    assert.equal(200, res.status)
    local line = helpers.wait_until(function()
      local text = trusted:file("access.log") or ""
      for l in helpers.lines(text) do
        if l:find('"/who"', 1, true) then return l end
      end
    end, 3)
    assert(line, "no access log line")
    local doc = helpers.decode_json(line)
    assert.equal("203.0.113.7", doc.client_ip)
    assert.matches("^127%.0%.0%.1:%d+$", doc.client)
  end)

  it("never lets a client's Connection list strip a header a hook set", function()
    for _, p in ipairs { untrusted, trusted } do
      local doc = echo(p, { { "Host", "x" }, { "Connection", "keep-alive, X-User, X-Request-Id" },
                            { "X-User", "from-client" } }, "/hooked")
      assert.same({ "from-hook" }, values(doc, "x-user"))
      assert.same({ "hook-id" }, values(doc, "x-request-id"))
    end
  end)

  it("refuses a trusted_proxies entry that is not an address or prefix, naming the line", function()
    for _, bad in ipairs { '"10.0.0.0/33"', '"300.1.1.1"', '"example.com"', '"fd00::/129"', "42" } do
      local dir = helpers.tmpdir()
      helpers.write_file(dir .. "/proxy.lua", 'local mg = require "moongate"\nmg.listen { "127.0.0.1:1" }\n'
        .. "mg.config { trusted_proxies = { " .. bad .. " } }\n")
      local out, rc = helpers.moongate({ "-t", "-c", dir .. "/proxy.lua" })
      assert.equal(1, rc, bad)
      assert.truthy(out:find("proxy.lua:3:", 1, true), out)
      assert.truthy(out:find("trusted_proxies", 1, true), out)
    end
  end)
end)
