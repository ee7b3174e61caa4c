-- Hooks that wait (docs/hooks.md "Hooks that wait"): mg.sleep in a request hook
-- or a route's respond function suspends that request only; the worker serves
-- the others meanwhile and the hook goes on where it left off. timeouts.hook
-- bounds a wait (504), a client that leaves cancels it.
local helpers = require "spec.helpers"

describe("hooks that wait", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, error_log = "error.log",
  timeouts = { hook = 1 }, shared = { d = "64k" } }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
mg.route { path = "/sleep/", upstream = o, on = { request = function(req)
  local t0 = mg.now()
  assert(mg.sleep(tonumber(req:header("x-sleep") or "0.3")) == true)
  req:set_header("x-slept", string.format("%.2f", mg.now() - t0))
  req:set_path(req.path:sub(7))
end } }
mg.route { path = "/respond-sleep", respond = function(req)
  mg.sleep(0.3)
  mg.sleep(0.1) -- and again
  return 200, "woke " .. req.path .. "\n"
end }
mg.route { path = "/answer-after", on = { request = function(req)
  mg.sleep(0.2)
  return req:respond(401, "not you\n")
end }, upstream = o }
mg.route { path = "/too-long", on = { request = function(req) mg.sleep(10) end }, upstream = o }
mg.route { path = "/cancel", on = { request = function(req)
  mg.sleep(0.3)
  mg.shared("d"):incr("after_wait", 1, 0)
end }, upstream = o }
mg.route { path = "/count", respond = function(req)
  return 200, tostring(mg.shared("d"):get("after_wait") or 0)
end }
mg.route { path = "/response-sleep", upstream = o, on = { response = function(req, res) mg.sleep(0.1) end } }
mg.route { path = "/direct", respond = { status = 200, body = "direct\n" } }
]], { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy, origin)
  end)

  local function errlog() return helpers.read_file(proxy.dir .. "/error.log") or "" end

  -- n clients each send a request whose hook waits, and close `linger` s later.
  local function leave_mid_wait(n, linger)
    proxy:leave_mid_request(n, "GET /cancel HTTP/1.1\r\nHost: x\r\n\r\n", linger)
  end

  it("goes on where it left off: a request hook that sleeps 0.3 s, then changes the request", function()
    local t0 = helpers.now()
    local res = assert(proxy:request({ path = "/sleep/echo", headers = { ["x-sleep"] = "0.3" } }))
    local took = helpers.now() - t0
    assert.equal(200, res.status)
    local doc = helpers.echo(res)
    assert.equal("/echo", doc.path)
    local slept = tonumber(helpers.echo_headers(doc, "x-slept")[1])
    assert(slept >= 0.29 and slept < 1, "slept " .. tostring(slept))
    assert(took >= 0.29, "answered after " .. took .. " s")
  end)

  it("serves other requests on the same worker while one hook sleeps 1 s... within timeouts.hook", function()
    local a = proxy:connect()
    local t0 = helpers.now()
    assert(a:send("GET /sleep/echo HTTP/1.1\r\nHost: x\r\nX-Sleep: 0.8\r\n\r\n"))
    helpers.sleep(0.05)
    for i = 1, 5 do
      local t = helpers.now()
      local res = assert(proxy:request({ path = "/direct" }))
      assert.equal("direct\n", res.body)
      assert(helpers.now() - t < 0.4, "request " .. i .. " waited behind the sleeping hook")
    end
    assert(helpers.now() - t0 < 0.7, "the others were not served while the hook slept")
    local res = assert(a:response({ timeout = 5 }))
    a:close()
    assert.equal(200, res.status)
    assert(helpers.now() - t0 >= 0.79)
  end)

  it("lets a route's respond function sleep twice, then answer", function()
    local res = assert(proxy:request({ path = "/respond-sleep" }))
    assert.equal(200, res.status)
    assert.equal("woke /respond-sleep\n", res.body)
  end)

  it("sends the answer a hook gives after waiting, and nothing goes upstream", function()
    local seen = #origin:requests()
    local res = assert(proxy:request({ path = "/answer-after" }))
    assert.equal(401, res.status)
    assert.equal("not you\n", res.body)
    assert.equal(seen, #origin:requests())
  end)

  it("answers 504 when a hook still waits after timeouts.hook (1 s), and logs the hook", function()
    local t0 = helpers.now()
    local res = assert(proxy:request({ path = "/too-long" }))
    local took = helpers.now() - t0
    helpers.assert_error(res, 504)
    assert(took >= 0.9 and took < 3, "504 after " .. took .. " s")
    assert(helpers.wait_until(function()
      return errlog():find("request hook still waiting after timeouts.hook", 1, true)
    end, 2, 0.05), "no log line")
  end)

  it("keeps pipelined requests in order across a wait, and reads a body that came with the head", function()
    local body = ("b"):rep(100000)
    local c = proxy:connect()
    assert(c:send("POST /sleep/echo HTTP/1.1\r\nHost: x\r\nX-Sleep: 0.2\r\nContent-Length: " .. #body
      .. "\r\n\r\n" .. body .. "GET /direct HTTP/1.1\r\nHost: x\r\n\r\n"))
    local first = assert(c:response({ timeout = 5 }))
    local second = assert(c:response({ timeout = 5 }))
    c:close()
    local doc = helpers.echo(first)
    assert.equal(#body, doc.body_len)
    assert.equal(helpers.sha256(body), doc.body_sha256)
    assert.equal("direct\n", second.body)
  end)

  it("drops the hook of a client that leaves while it waits: nothing after the wait runs", function()
    local before = tonumber(assert(proxy:request({ path = "/count" })).body)
    leave_mid_wait(20, 0.02)
    helpers.sleep(0.6) -- past every hook's wait
    assert.equal(before, tonumber(assert(proxy:request({ path = "/count" })).body))
    proxy:assert_alive()
  end)

  it("does not grow while 1,000 clients leave in the middle of a wait", function()
    -- warm up the pools the loop below uses and let the Lua heap reach its
    -- steady size (cancelled coroutines are garbage until a cycle ends), then
    -- measure: a leak grows with every batch, the heap's cycle does not
    leave_mid_wait(1000)
    helpers.sleep(0.5)
    local rss0 = proxy:rss()
    leave_mid_wait(1000)
    helpers.sleep(0.6)
    proxy:assert_rss_flat(rss0, 4096)
    assert.equal(200, assert(proxy:request({ path = "/direct" })).status)
  end)

  it("lets a response hook wait too (every hook may: hooks_wait_all_spec.lua)", function()
    local res = assert(proxy:request({ path = "/response-sleep/echo" }))
    assert.equal(200, res.status)
  end)
end)

describe("hooks that wait, across a reload", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false }
mg.listen { "127.0.0.1:${port}" }
mg.route { path = "/", upstream = mg.upstream "o" { servers = { "${origin}" } }, on = {
  request = function(req) mg.sleep(0.8) req:set_header("x-gen", "old") end } }
]], { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy, origin)
  end)

  it("finishes a hook in flight on the old generation while new requests get the new one", function()
    local c = proxy:connect()
    assert(c:send("GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"))
    helpers.sleep(0.2)
    local fresh = proxy:reload(function(old) return (old:gsub("mg.sleep%(0.8%) req:set_header%(\"x%-gen\", \"old\"%)",
      'req:set_header("x-gen", "new")')) end, function()
      local res = proxy:request({ path = "/echo" })
      local doc = res and res.status == 200 and helpers.echo(res)
      return doc and helpers.echo_headers(doc, "x-gen")[1] == "new" and doc or nil
    end)
    assert(fresh)
    local res = assert(c:response({ timeout = 5 }))
    c:close()
    assert.equal(200, res.status)
    assert.same({ "old" }, helpers.echo_headers(helpers.echo(res), "x-gen"))
  end)
end)
