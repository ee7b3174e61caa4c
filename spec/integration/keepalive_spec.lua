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

  it("keeps the surplus of a burst pooled for a moment, then closes all but `keepalive` of them", function()
    start({ keepalive = 2 })
    local cs = {}
    for i = 1, 6 do
      cs[i] = proxy:connect()
      assert(cs[i]:send("GET /slow-head/0.3 HTTP/1.1\r\nHost: x\r\n\r\n"))
    end
    for i = 1, 6 do assert.equal(200, assert(cs[i]:response()).status) end
    -- all six are idle in the pool now: a second burst reuses them
    assert.equal(6, origin:stats().open)
    for i = 1, 6 do assert(cs[i]:send("GET /slow-head/0.1 HTTP/1.1\r\nHost: x\r\n\r\n")) end
    for i = 1, 6 do assert.equal(200, assert(cs[i]:response()).status) end
    assert.equal(6, origin:stats().connections)
    -- unused for a second, the surplus goes; `keepalive` connections stay
    assert.is_true(helpers.wait_until(function() return origin:stats().open == 2 end, 4, 0.1))
    helpers.sleep(0.5)
    assert.equal(2, origin:stats().open)
    helpers.echo(assert(cs[1]:request({ path = "/echo" })))
    assert.equal(6, origin:stats().connections)
    for i = 1, 6 do cs[i]:close() end
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

  it("answers requests that arrive while the first one is being answered, in order", function()
    local c = proxy:connect()
    assert(c:send("GET /slow-head/0.5 HTTP/1.1\r\nHost: x\r\n\r\n"))
    helpers.sleep(0.2)
    assert(c:send("GET /echo?second HTTP/1.1\r\nHost: x\r\n\r\n"))
    helpers.sleep(0.1)
    assert(c:send("GET /echo?third HTTP/1.1\r\nHost: x\r\n\r\n"))
    local paths = {}
    for i = 1, 3 do paths[i] = helpers.echo(assert(c:response())).path end
    assert.same({ "/slow-head/0.5", "/echo?second", "/echo?third" }, paths)
    c:close()
  end)

  it("answers 2,000 pipelined requests (over 64 KiB, more than it buffers) sent while the first waits, in order", function()
    local c = proxy:connect()
    local reqs = { "GET /slow-head/0.3 HTTP/1.1\r\nHost: x\r\n\r\n" }
    for i = 1, 2000 do reqs[#reqs + 1] = "GET /echo?" .. i .. " HTTP/1.1\r\nHost: x\r\n\r\n" end
    local all = table.concat(reqs)
    assert.is_true(#all > 65536)
    assert(c:send(all, 10))
    assert.equal("/slow-head/0.3", helpers.echo(assert(c:response())).path)
    local wrong
    for i = 1, 2000 do
      local res = assert(c:response({ timeout = 10 }))
      local path = helpers.echo(res).path
      if path ~= "/echo?" .. i then wrong = wrong or (i .. ": " .. tostring(path)) end
    end
    assert.is_nil(wrong)
    c:close()
  end)

  it("answers a client that half-closes while its request waits for the origin, then closes", function()
    local c = proxy:connect()
    assert(c:send("GET /slow-head/0.4 HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert(c.sock:shutdown("send"))
    local res = assert(c:response())
    assert.equal("/slow-head/0.4", helpers.echo(res).path)
    assert.is_true((c:closed(2)))
    c:close()
  end)

  it("answers every pipelined request of a client that half-closes while the first waits, then closes", function()
    local c = proxy:connect()
    assert(c:send("GET /slow-head/0.4 HTTP/1.1\r\nHost: x\r\n\r\n"
      .. "GET /echo?second HTTP/1.1\r\nHost: x\r\n\r\n"
      .. "GET /echo?third HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert(c.sock:shutdown("send"))
    local paths = {}
    for i = 1, 3 do paths[i] = helpers.echo(assert(c:response())).path end
    assert.same({ "/slow-head/0.4", "/echo?second", "/echo?third" }, paths)
    assert.is_true((c:closed(2)))
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
