-- Keep-alive on both sides and pipelining. `workers = 1` makes upstream
-- connection counts exact: one worker has one pool.
local helpers = require "spec.helpers"

local CONF = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" }, keepalive = ${keepalive},
                            keepalive_timeout = ${keepalive_timeout} }
mg.route { upstream = o }
]]

describe("keep-alive", function()
  local origin, proxy

  -- A fresh origin and proxy per test, so connection counts start at zero.
  local function start(vars)
    origin = helpers.origin({ name = "O" })
    local v = { origin = origin.addr, keepalive = 32, keepalive_timeout = 60 }
    for k, x in pairs(vars or {}) do v[k] = x end
    proxy = helpers.proxy(CONF, { vars = v })
  end

  after_each(function()
    local p = proxy
    proxy = nil
    helpers.teardown(p)
  end)

  it("answers 5 requests on one client connection over one upstream connection", function()
    start()
    local c = proxy:connect()
    for i = 1, 5 do
      local doc = helpers.echo(assert(c:request({ path = "/echo?i=" .. i })))
      assert.equal("/echo?i=" .. i, doc.path)
      assert.equal(1, doc.conn)
      assert.equal(i, doc.conn_request)
    end
    assert.is_false(c.eof)
    c:close()
    local st = origin:stats()
    assert.equal(1, st.connections)
    assert.equal(5, st.requests)
  end)

  it("reuses the pooled upstream connection for later client connections", function()
    start()
    for i = 1, 3 do
      local c = proxy:connect()
      for _ = 1, 2 do
        assert.equal(1, helpers.echo(assert(c:request({ path = "/echo" }))).conn)
      end
      c:close()
    end
    assert.equal(1, origin:stats().connections)
  end)

  it("opens one upstream connection per request with keepalive = 0", function()
    start({ keepalive = 0 })
    local c = proxy:connect()
    for i = 1, 3 do
      assert.equal(i, helpers.echo(assert(c:request({ path = "/echo" }))).conn)
    end
    c:close()
    assert.equal(3, origin:stats().connections)
  end)

  it("does not reuse an upstream connection the origin answered with Connection: close", function()
    start()
    local c = proxy:connect()
    assert.equal(200, assert(c:request({ path = "/hop" })).status)
    local doc = helpers.echo(assert(c:request({ path = "/echo" })))
    assert.equal(2, doc.conn)
    assert.equal(2, origin:stats().connections)
  end)

  it("does not reuse an upstream connection after an until-close body", function()
    start()
    local c = proxy:connect()
    local res = assert(c:request({ path = "/close/1000" }))
    assert.equal(helpers.pattern(1000), res.body)
    local doc = helpers.echo(assert(c:request({ path = "/echo" })))
    assert.equal(2, doc.conn)
  end)

  it("closes an idle pooled upstream connection after keepalive_timeout", function()
    start({ keepalive_timeout = 0.5 })
    helpers.echo(assert(proxy:request({ path = "/echo" })))
    assert.equal(1, origin:stats().open)
    local closed = helpers.wait_until(function() return origin:stats().open == 0 end, 3, 0.1)
    assert.is_true(closed)
    assert.equal(2, helpers.echo(assert(proxy:request({ path = "/echo" }))).conn)
  end)

  it("closes the client connection after answering Connection: close", function()
    start()
    local c = proxy:connect()
    local res = assert(c:request({ path = "/echo", headers = { { "Connection", "close" } } }))
    assert.equal(200, res.status)
    assert.is_true((c:closed(2)))
  end)

  it("closes the client connection after answering an HTTP/1.0 request without keep-alive", function()
    start()
    local c = proxy:connect()
    local res = assert(c:request("GET /echo HTTP/1.0\r\nHost: x\r\n\r\n"))
    assert.equal(200, res.status)
    assert.equal(true, res.close_delimited or (c:closed(2)))
  end)
end)

describe("pipelining", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    proxy = helpers.proxy(CONF, { vars = { origin = origin.addr, keepalive = 32,
                                           keepalive_timeout = 60 } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("answers 3 requests sent in one write in order, the slow first one first", function()
    local c = proxy:connect()
    assert(c:send("GET /slow-head/0.5 HTTP/1.1\r\nHost: x\r\n\r\n"
      .. "GET /echo?second HTTP/1.1\r\nHost: x\r\n\r\n"
      .. "GET /bytes/100 HTTP/1.1\r\nHost: x\r\n\r\n"))
    local r1 = assert(c:response())
    local r2 = assert(c:response())
    local r3 = assert(c:response())
    assert.equal("/slow-head/0.5", helpers.echo(r1).path)
    assert.equal("/echo?second", helpers.echo(r2).path)
    assert.equal(200, r3.status)
    assert.equal(helpers.pattern(100), r3.body)
    c:close()
  end)

  it("answers pipelined requests with bodies in order", function()
    local c = proxy:connect()
    assert(c:send("POST /echo?1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\none"
      .. "POST /echo?2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n"
      .. "GET /echo?3 HTTP/1.1\r\nHost: x\r\n\r\n"))
    local d1 = helpers.echo(assert(c:response()))
    local d2 = helpers.echo(assert(c:response()))
    local d3 = helpers.echo(assert(c:response()))
    assert.same({ "/echo?1", 3, helpers.sha256("one") }, { d1.path, d1.body_len, d1.body_sha256 })
    assert.same({ "/echo?2", 3, helpers.sha256("two") }, { d2.path, d2.body_len, d2.body_sha256 })
    assert.same({ "/echo?3", 0 }, { d3.path, d3.body_len })
    c:close()
  end)
end)
