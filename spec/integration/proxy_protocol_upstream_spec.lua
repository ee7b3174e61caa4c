-- PROXY protocol toward upstreams (mg.upstream "x" { ..., proxy_protocol = "v1" |
-- "v2" }): every new upstream connection starts with a header naming the client
-- (as the exchange sees it: the peer, or what a PROXY header on the listener said)
-- and the address it connected to, before the request and before a TLS
-- handshake. Such connections are never pooled, so one client's header never
-- precedes another client's request. The origin (origin.py --proxy-protocol)
-- refuses connections without a header and reports what it got in /echo.
local helpers = require "spec.helpers"

local CONF = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, trusted_proxies = { "127.0.0.0/8" } }
mg.listen { "127.0.0.1:${port}" }
mg.listen { "127.0.0.1:${pp}", proxy_protocol = true }
local v1 = mg.upstream "v1" { servers = { "${origin}" }, proxy_protocol = "v1" }
local v2 = mg.upstream "v2" { servers = { "${origin}" }, proxy_protocol = "v2", keepalive = 8 }
local none = mg.upstream "none" { servers = { "${origin}" }, proxy_protocol = false }
local tls = mg.upstream "tls" { servers = { "${tls_origin}" }, proxy_protocol = "v1",
                                tls = { verify = false } }
mg.route { path = "/v1/", upstream = v1 }
mg.route { path = "/v2/", upstream = v2 }
mg.route { path = "/none/", upstream = none }
mg.route { path = "/tls/", upstream = tls }
]]

-- The client's port, as a number.
local function port_of(c)
  return tonumber(c:local_addr():match(":(%d+)$"))
end

-- One GET on an open client connection: the origin's echo document.
local function echo_on(c, path)
  assert(c:send("GET " .. path .. " HTTP/1.1\r\nHost: x\r\n\r\n"))
  return helpers.echo(assert(c:response()))
end

describe("PROXY protocol to upstreams", function()
  local origin, tls_origin, proxy

  lazy_setup(function()
    local dir = helpers.tmpdir()
    local _, rc = helpers.sh("cd " .. helpers.shell_quote(dir) .. " && openssl req -x509 -newkey ec "
      .. "-pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem -out cert.pem -days 30 "
      .. "-subj /CN=backend.test 2>&1")
    assert.equal(0, rc)
    origin = helpers.origin({ name = "P", proxy_protocol = true })
    tls_origin = helpers.origin({ name = "T", proxy_protocol = true,
                                  tls = { cert = dir .. "/cert.pem", key = dir .. "/key.pem" } })
    proxy = helpers.proxy(CONF, { ports = { "pp" }, wait_ports = { "port", "pp" },
                                  vars = { origin = origin.addr, tls_origin = tls_origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
    if origin then origin:stop() end
    if tls_origin then tls_origin:stop() end
  end)

  it("sends a v1 header naming the client and the address it connected to", function()
    local c = proxy:connect()
    local doc = echo_on(c, "/v1/a")
    local port = port_of(c)
    c:close()
    assert.same({ version = 1, command = "PROXY", family = "TCP4", src = "127.0.0.1", src_port = port,
                  dst = "127.0.0.1", dst_port = proxy.port }, doc.proxy)
    assert.equal(1, doc.proxy_headers)
    assert.equal("/v1/a", doc.path) -- and the request followed it
  end)

  it("sends a v2 header naming the client and the address it connected to", function()
    local c = proxy:connect()
    local doc = echo_on(c, "/v2/a")
    local port = port_of(c)
    c:close()
    assert.same({ version = 2, command = "PROXY", family = "TCP4", src = "127.0.0.1", src_port = port,
                  dst = "127.0.0.1", dst_port = proxy.port }, doc.proxy)
    assert.equal(1, doc.proxy_headers)
  end)

  it("passes on the addresses of the PROXY header the client's connection began with", function()
    local c = proxy:connect(proxy.ports.pp)
    assert(c:send("PROXY TCP4 203.0.113.7 198.51.100.1 51000 443\r\n"))
    local d1 = echo_on(c, "/v1/b")
    local d2 = echo_on(c, "/v2/b") -- the next request on that client connection: the same client
    c:close()
    local want = { command = "PROXY", family = "TCP4", src = "203.0.113.7", src_port = 51000,
                   dst = "198.51.100.1", dst_port = 443 }
    want.version = 1
    assert.same(want, d1.proxy)
    want.version = 2
    assert.same(want, d2.proxy)
    assert.same({ "203.0.113.7" }, helpers.echo_headers(d1, "x-forwarded-for"))

    c = proxy:connect(proxy.ports.pp)
    assert(c:send("PROXY TCP6 2001:db8::7 2001:db8::1 40000 8443\r\n"))
    local d6 = echo_on(c, "/v2/c")
    local d6v1 = echo_on(c, "/v1/c")
    c:close()
    assert.same({ version = 2, command = "PROXY", family = "TCP6", src = "2001:db8::7", src_port = 40000,
                  dst = "2001:db8::1", dst_port = 8443 }, d6.proxy)
    assert.same({ version = 1, command = "PROXY", family = "TCP6", src = "2001:db8::7", src_port = 40000,
                  dst = "2001:db8::1", dst_port = 8443 }, d6v1.proxy)
  end)

  it("sends the header once per upstream connection and pools none of them", function()
    local c = proxy:connect()
    local port = port_of(c)
    local docs = {}
    for i = 1, 3 do docs[i] = echo_on(c, "/v2/ka" .. i) end
    c:close()
    local conns = {}
    for i, doc in ipairs(docs) do
      assert.equal(1, doc.proxy_headers, "request " .. i)
      assert.equal(1, doc.conn_request, "request " .. i .. " came on a used connection")
      assert.equal(port, doc.proxy.src_port)
      assert.is_nil(conns[doc.conn], "two requests on upstream connection " .. doc.conn)
      conns[doc.conn] = true
    end
    -- each closed once its response was in: none waits in a pool
    assert.truthy(helpers.wait_until(function() return origin:stats().open == 0 end, 3),
      "upstream connections left open: " .. origin:stats().open)
  end)

  it("never gives one client's upstream connection to another client", function()
    local a, b = proxy:connect(), proxy:connect()
    local da = echo_on(a, "/v1/who")
    local db = echo_on(b, "/v1/who") -- after a's exchange ended: a pool would hand its connection over
    local da2 = echo_on(a, "/v1/who")
    local pa, pb = port_of(a), port_of(b)
    a:close()
    b:close()
    assert.equal(pa, da.proxy.src_port)
    assert.equal(pb, db.proxy.src_port)
    assert.equal(pa, da2.proxy.src_port)
    assert.are_not.equal(da.conn, db.conn)
    assert.are_not.equal(db.conn, da2.conn)
    assert.equal(1, db.conn_request)
    assert.equal(1, da2.conn_request)
  end)

  it("sends the header before the TLS handshake to a TLS upstream", function()
    local c = proxy:connect()
    local doc = echo_on(c, "/tls/x")
    local port = port_of(c)
    c:close()
    assert.truthy(doc.tls, "the origin saw no TLS")
    assert.truthy(doc.tls.version:match("^TLSv1%.[23]$"), doc.tls.version)
    assert.same({ version = 1, command = "PROXY", family = "TCP4", src = "127.0.0.1", src_port = port,
                  dst = "127.0.0.1", dst_port = proxy.port }, doc.proxy)
    assert.equal(1, doc.proxy_headers)
    -- a second one: a new connection (the pool's TLS session may resume), a header again
    c = proxy:connect()
    doc = echo_on(c, "/tls/y")
    c:close()
    assert.equal(1, doc.proxy_headers)
    assert.equal(1, doc.conn_request)
  end)

  it("sends no header with proxy_protocol = false (which this origin refuses)", function()
    local res = assert(proxy:request({ path = "/none/x" }))
    helpers.assert_error(res, 502)
    assert.truthy(helpers.wait_until(function()
      return (helpers.read_file(origin.stderr_path) or ""):find("without a PROXY header", 1, true)
    end, 3))
  end)
end)

describe("PROXY protocol to upstreams: config", function()
  for _, case in ipairs({ { "true", "true" }, { '"v3"', '"v3"' }, { "2", "2" }, { '"V1"', '"V1"' } }) do
    it("refuses proxy_protocol = " .. case[1], function()
      local dir = helpers.tmpdir()
      local conf = helpers.write_config(dir, [[
local mg = require "moongate"
mg.listen { "127.0.0.1:${port}" }
mg.upstream "o" { servers = { "127.0.0.1:9" }, proxy_protocol = ]] .. case[1] .. [[ }
]], { port = helpers.free_port() })
      local out, rc = helpers.moongate({ "-t", "-c", conf })
      assert.are_not.equal(0, rc)
      assert.truthy(out:find([[mg.upstream 'o': 'proxy_protocol' must be "v1", "v2" or false, got ]] .. case[2], 1, true), out)
      assert.truthy(out:find("proxy.lua:3", 1, true), out)
    end)
  end

  it("takes v1, v2 and false", function()
    for _, v in ipairs({ '"v1"', '"v2"', "false" }) do
      local dir = helpers.tmpdir()
      local conf = helpers.write_config(dir, [[
local mg = require "moongate"
mg.listen { "127.0.0.1:${port}" }
mg.upstream "o" { servers = { "127.0.0.1:9" }, proxy_protocol = ]] .. v .. [[ }
]], { port = helpers.free_port() })
      local out, rc = helpers.moongate({ "-t", "-c", conf })
      assert.equal(0, rc, out)
    end
  end)
end)
