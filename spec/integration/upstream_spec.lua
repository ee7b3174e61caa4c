-- Upstream failures (502), failover to the next server after a failed connect,
-- and smooth weighted round robin over 1000 requests.
local helpers = require "spec.helpers"

local function conf(upstreams)
  return [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false }
mg.listen { "127.0.0.1:${port}" }
]] .. upstreams
end

-- A 502 must follow the error contract and never name the backend.
local function assert_502(res, dead_port)
  helpers.assert_error(res, 502)
  assert.is_nil(res.body:find("127.0.0.1", 1, true), "502 names an address: " .. res.body)
  if dead_port then
    assert.is_nil(res.body:find(":" .. dead_port, 1, true), "502 names the port: " .. res.body)
  end
end

describe("upstream failures", function()
  local origin, proxy, dead

  lazy_setup(function()
    origin = helpers.origin({ name = "live" })
    dead = helpers.free_port()
    proxy = helpers.proxy(conf([[
mg.route { host = "down.test", upstream = mg.upstream "down" { servers = { "127.0.0.1:${dead}" } } }
mg.route { host = "alldown.test", upstream = mg.upstream "alldown" {
  servers = { "127.0.0.1:${dead}", "127.0.0.1:${dead2}" } } }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } } }
]]), { vars = { origin = origin.addr, dead = dead, dead2 = helpers.free_port() } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("answers 502 without naming the backend when nothing listens", function()
    assert_502(assert(proxy:request({ path = "/x", headers = { { "Host", "down.test" } } })), dead)
  end)

  it("answers 502 when every server of the upstream is down", function()
    local t0 = helpers.now()
    assert_502(assert(proxy:request({ path = "/x", headers = { { "Host", "alldown.test" } } })), dead)
    assert.is_true(helpers.now() - t0 < 2)
  end)

  it("answers 502 when the origin closes without answering", function()
    assert_502((assert(proxy:request({ path = "/reset" }))))
  end)

  it("answers 502 when the origin resets the connection without answering", function()
    assert_502((assert(proxy:request({ path = "/reset-rst" }))))
  end)

  it("keeps the client connection usable after a 502", function()
    local c = proxy:connect()
    local res = assert(c:request({ path = "/reset" }))
    assert.equal(502, res.status)
    if not c.eof then
      assert.equal(200, assert(c:request({ path = "/echo" })).status)
    end
    c:close()
  end)
end)

describe("failover", function()
  local origin, proxy, dead

  local function start()
    origin = helpers.origin({ name = "live" })
    dead = helpers.free_port()
    -- The dead server is listed first, so the first pick of the round robin is it.
    proxy = helpers.proxy(conf([[
mg.route { upstream = mg.upstream "pair" { servers = { "127.0.0.1:${dead}", "${origin}" } } }
]]), { vars = { origin = origin.addr, dead = dead } })
  end

  after_each(function()
    local p = proxy
    proxy = nil
    helpers.teardown(p)
  end)

  it("answers every GET with 200 from the live server when the other is down", function()
    start()
    for i = 1, 6 do
      local doc = helpers.echo(assert(proxy:request({ path = "/echo?" .. i })))
      assert.equal("live", doc.name)
    end
  end)

  it("fails over for every idempotent method", function()
    start()
    for _, method in ipairs({ "GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE" }) do
      for _ = 1, 2 do
        local req = { method = method, path = "/echo" }
        local res = assert(proxy:request(req))
        assert.equal(200, res.status, method .. " got " .. res.status)
      end
    end
  end)

  -- a failed connect sent nothing: a POST goes to the next server too (as nginx
  -- and Envoy do); after any of it went out it never goes twice (retry_spec.lua)
  it("fails over a POST whose connect failed: every POST reaches the live server once", function()
    start()
    for i = 1, 10 do
      local res = assert(proxy:request({ method = "POST", path = "/echo?" .. i, body = "x" }))
      assert.equal("live", helpers.echo(res).name)
    end
    assert.equal(10, origin:stats().requests)
  end)
end)

describe("weights", function()
  local a, b, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    b = helpers.origin({ name = "B" })
    proxy = helpers.proxy(conf([[
mg.route { upstream = mg.upstream "w" { servers = { "${a} weight=1", "${b} weight=3" } } }
]]), { vars = { a = a.addr, b = b.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("sends exactly 250 of 1000 GETs to weight 1 and 750 to weight 3", function()
    local counts = { A = 0, B = 0 }
    local c = proxy:connect()
    local deadline = helpers.now() + 60
    for i = 1, 1000 do
      local doc = helpers.echo(assert(c:request({ path = "/echo?" .. i })))
      counts[doc.name] = counts[doc.name] + 1
      assert(helpers.now() < deadline, "1000 requests took over 60 s")
    end
    c:close()
    assert.same({ A = 250, B = 750 }, counts)
    assert.equal(250, a:stats().requests)
    assert.equal(750, b:stats().requests)
  end)

  it("interleaves the servers: no 4 consecutive requests miss the weight-1 server", function()
    local seq = {}
    local c = proxy:connect()
    for i = 1, 40 do seq[i] = helpers.echo(assert(c:request({ path = "/echo" }))).name end
    c:close()
    local s = table.concat(seq)
    assert.is_nil(s:find("BBBB", 1, true), s)
    assert.is_nil(s:find("AA", 1, true), s)
  end)
end)
