-- A bad client affects only its own connection: others on the same (single)
-- worker keep being served.
local helpers = require "spec.helpers"

describe("isolation", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, timeouts = { client_header = 5 } }
mg.listen { "127.0.0.1:${port}" }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } } }
]], { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("serves another connection while one client stalls in the middle of a head", function()
    local bad = proxy:connect()
    assert(bad:send("GET /echo HTTP/1.1\r\nHo"))
    local t0 = helpers.now()
    local res = assert(proxy:request({ path = "/echo?other" }))
    assert.equal("/echo?other", helpers.echo(res).path)
    assert.is_true(helpers.now() - t0 < 1)
    bad:close()
  end)

  it("serves another connection while one client sends garbage", function()
    local bad = proxy:connect()
    assert(bad:send("GET /echo HTTP/1.1\r\nHo"))
    local good = proxy:connect()
    assert.equal(200, assert(good:request({ path = "/echo?before" })).status)
    bad:send("\0\1\2\255garbage\r\n\r\n")
    local res = assert(bad:response({ timeout = 3 }))
    assert.equal(400, res.status)
    assert.is_true((bad:closed(2)))
    assert.equal(200, assert(good:request({ path = "/echo?after" })).status)
    assert.equal(200, assert(proxy:request({ path = "/echo?new" })).status)
    good:close()
  end)

  it("keeps serving after a client disconnects in the middle of a body", function()
    local bad = proxy:connect()
    assert(bad:send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" .. ("z"):rep(5000)))
    helpers.sleep(0.1)
    bad:close()
    assert.equal(200, assert(proxy:request({ path = "/echo?after-abort" })).status)
  end)

  it("keeps serving after a client disconnects while waiting for a slow origin", function()
    local bad = proxy:connect()
    assert(bad:send("GET /slow-head/0.5 HTTP/1.1\r\nHost: x\r\n\r\n"))
    helpers.sleep(0.1)
    bad:close()
    helpers.sleep(0.6)
    assert.equal(200, assert(proxy:request({ path = "/echo?after-abort" })).status)
    local how = proxy:wait(0)
    assert.is_nil(how, "moongate exited")
  end)
end)
