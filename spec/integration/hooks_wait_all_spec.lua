-- Every hook may wait (docs/hooks.md "Hooks that wait"): connect, request,
-- respond, balance, upstream_request, response, body, log, init_worker and timer
-- callbacks each mg.sleep(0.2) here, and what they do after the sleep is seen in
-- the outcome. While one waits the worker serves others; a route's
-- timeouts.hook gives a 504 naming the hook and the route; a client that leaves
-- mid-wait cancels it; a reload lets waiting hooks finish on the old generation.
-- (tls_hello waits too: tls_hello_wait_spec. request_body cannot wait yet:
-- docs/hooks.md says so; the request_body case below shows the refusal.)
local helpers = require "spec.helpers"

local CONF = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, error_log = "error.log", shared = { d = "64k" } }
mg.listen { "127.0.0.1:${port}" }
mg.listen { "127.0.0.1:${slow}", name = "slow" }
local d = function() return mg.shared("d") end
mg.on("init_worker", function()
  d():set("init_before", "yes")
  mg.sleep(0.2)
  d():set("init_after", "worker " .. mg.worker_id())
end)
mg.on("connect", function(conn)
  if conn.listener == "slow" then
    mg.sleep(0.2)
    d():incr("connected_after_sleep", 1, 0)
  end
end)
local o = mg.upstream "o" { servers = { "${a}" } }
local ab = mg.upstream "ab" { servers = { "${a}", "${b}" } }
mg.route { path = "/respond", respond = function(req)
  mg.sleep(0.2)
  return 200, "responded after the sleep\n"
end }
mg.route { path = "/balance/", upstream = ab, on = {
  request = function(req) req:set_path(req.path:sub(9)) end,
  balance = function(req)
    mg.sleep(0.2)
    req:set_server(2)
  end } }
mg.route { path = "/filter-waits/", upstream = o, on = {
  request_body = function(req, chunk, eof)
    mg.sleep(0.05) -- the request_body filter cannot wait: the request fails
    d():set("filter_after_sleep", "ran")
  end } }
mg.route { path = "/upreq/", upstream = o, on = {
  request = function(req) req:set_path(req.path:sub(7)) end,
  upstream_request = function(req)
    mg.sleep(0.2)
    req:set_header("x-after-sleep", "upstream_request")
  end } }
mg.route { path = "/response/", upstream = o, on = {
  request = function(req) req:set_path(req.path:sub(10)) end,
  response = function(req, res)
    mg.sleep(tonumber(req:header("x-sleep") or "0.2"))
    res:set_header("x-after-sleep", "response")
    d():incr("response_done", 1, 0)
  end } }
mg.route { path = "/body/", upstream = o, on = {
  request = function(req) req:set_path(req.path:sub(6)) end,
  body = function(req, res, chunk)
    if not req.ctx.slept then
      req.ctx.slept = true
      mg.sleep(0.2)
      return "<" .. chunk
    end
    mg.sleep(0)
    return chunk
  end } }
mg.route { path = "/log/", upstream = o, on = {
  request = function(req) req:set_path(req.path:sub(5)) end,
  log = function(req)
    mg.sleep(0.2)
    d():incr("logged_after_sleep", 1, 0)
  end } }
mg.route { path = "/budget/", upstream = o, timeouts = { hook = 0.3 }, on = {
  request = function(req) req:set_path(req.path:sub(8)) end,
  response = function(req, res) mg.sleep(5) end } }
mg.route { path = "/timer", respond = function(req)
  mg.timer.at(0, function()
    mg.sleep(0.2)
    d():set("timer_after", "yes")
  end)
  return 200, "armed\n"
end }
mg.route { path = "/get", respond = function(req) return 200, tostring(d():get(req:arg("k"))) end }
mg.route { path = "/direct", respond = { status = 200, body = "direct\n" } }
]]

describe("every hook may wait", function()
  local A, B, proxy

  lazy_setup(function()
    A = helpers.origin({ name = "A" })
    B = helpers.origin({ name = "B" })
    proxy = helpers.proxy(CONF, { ports = { "slow" }, wait_ports = { "port", "slow" },
      vars = { a = A.addr, b = B.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy, A, B)
  end)

  local function get(k) return assert(proxy:request({ path = "/get?k=" .. k })).body end
  local function errlog() return helpers.read_file(proxy.dir .. "/error.log") or "" end
  local function timed(req, port)
    local t0 = helpers.now()
    local res = assert(proxy:request(req, port))
    return res, helpers.now() - t0
  end

  it("init_worker: runs on after its sleep, on the worker", function()
    assert.equal("yes", get("init_before"))
    assert(helpers.wait_until(function() return get("init_after") == "worker 0" end, 3, 0.05),
      "init_worker did not go on after mg.sleep: " .. get("init_after"))
  end)

  it("connect: the connection is served after the hook's sleep", function()
    local before = tonumber(get("connected_after_sleep")) or 0
    local res, took = timed({ path = "/direct" }, proxy.ports.slow)
    assert.equal("direct\n", res.body)
    assert(took >= 0.19, "answered after " .. took .. " s")
    assert.equal(before + 1, tonumber(get("connected_after_sleep")))
  end)

  it("respond: answers what the function returns after its sleep", function()
    local res, took = timed({ path = "/respond" })
    assert.equal(200, res.status)
    assert.equal("responded after the sleep\n", res.body)
    assert(took >= 0.19)
  end)

  it("balance: the server picked after the sleep gets the request", function()
    local res, took = timed({ path = "/balance/echo" })
    assert.equal(200, res.status)
    assert.equal("B", helpers.echo(res).name)
    assert(took >= 0.19)
  end)

  it("upstream_request: a header set after the sleep goes upstream", function()
    local res, took = timed({ path = "/upreq/echo" })
    assert.equal(200, res.status)
    assert.same({ "upstream_request" }, helpers.echo_headers(helpers.echo(res), "x-after-sleep"))
    assert(took >= 0.19)
  end)

  it("response: a header set after the sleep is in the response", function()
    local res, took = timed({ path = "/response/echo" })
    assert.equal(200, res.status)
    assert.equal("response", res.h["x-after-sleep"])
    assert.equal("A", helpers.echo(res).name)
    assert(took >= 0.19)
  end)

  it("response: a large body after the head that waited arrives whole", function()
    local res = assert(proxy:request({ path = "/response/bytes/300000" }))
    assert.equal(200, res.status)
    assert.equal(300000, #res.body)
    assert.equal(helpers.sha256(helpers.pattern(300000)), helpers.sha256(res.body))
  end)

  it("body: the piece changed after the sleep comes first, the rest in order", function()
    local res, took = timed({ path = "/body/bytes/200000" })
    assert.equal(200, res.status)
    assert.equal("<", res.body:sub(1, 1))
    assert.equal(200001, #res.body)
    assert.equal(helpers.sha256(helpers.pattern(200000)), helpers.sha256(res.body:sub(2)))
    assert(took >= 0.19)
  end)

  it("log: the response is not held by the log hook, which runs on after it", function()
    local before = tonumber(get("logged_after_sleep")) or 0
    local c = proxy:connect()
    local t0 = helpers.now()
    assert(c:send("GET /log/echo HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert.equal(200, assert(c:response({ timeout = 5 })).status)
    -- the same connection goes on with the next request while the log hook sleeps
    assert(c:send("GET /direct HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert.equal("direct\n", assert(c:response({ timeout = 5 })).body)
    c:close()
    assert(helpers.now() - t0 < 0.18, "the client waited for the log hook")
    assert(helpers.wait_until(function() return tonumber(get("logged_after_sleep")) == before + 1 end, 2, 0.05),
      "the log hook did not go on after its sleep")
  end)

  it("timer: a callback goes on after its sleep", function()
    assert.equal("armed\n", assert(proxy:request({ path = "/timer" })).body)
    assert(helpers.wait_until(function() return get("timer_after") == "yes" end, 2, 0.05))
  end)

  it("serves other requests on the same worker while a response hook sleeps 1 s", function()
    local a = proxy:connect()
    local t0 = helpers.now()
    assert(a:send("GET /response/echo HTTP/1.1\r\nHost: x\r\nX-Sleep: 1\r\n\r\n"))
    helpers.sleep(0.05)
    for i = 1, 5 do
      local t = helpers.now()
      assert.equal("direct\n", assert(proxy:request({ path = "/direct" })).body)
      assert(helpers.now() - t < 0.4, "request " .. i .. " waited behind the sleeping hook")
    end
    assert(helpers.now() - t0 < 0.9)
    local res = assert(a:response({ timeout = 5 }))
    a:close()
    assert.equal("response", res.h["x-after-sleep"])
    assert(helpers.now() - t0 >= 0.99)
  end)

  it("request_body cannot wait: a filter that tries fails its request (500), logged", function()
    local res = assert(proxy:request({ method = "POST", path = "/filter-waits/echo", body = "abc" }))
    assert.equal(500, res.status)
    assert(helpers.wait_until(function()
      return errlog():find("request_body hook failed: this hook cannot wait", 1, true)
    end, 2, 0.05), errlog())
    helpers.sleep(0.1)
    assert.equal("nil", get("filter_after_sleep"))
  end)

  it("a route's timeouts.hook (0.3 s) gives a 504 and a log line naming the hook and the route", function()
    local res, took = timed({ path = "/budget/echo" })
    helpers.assert_error(res, 504)
    assert(took >= 0.28 and took < 2, "504 after " .. took .. " s")
    assert(helpers.wait_until(function()
      return errlog():find("response hook still waiting after timeouts.hook (0.3 s, route ", 1, true)
        and errlog():find("response hook of route %d+ took longer than timeouts.hook: 504")
    end, 2, 0.05), "no log line")
  end)

  it("cancels each kind of wait when the client leaves; nothing after the wait runs; the next request works", function()
    local before = tonumber(get("response_done")) or 0
    for _, req in ipairs({ "/respond", "/balance/echo", "/upreq/echo", "/response/echo", "/body/bytes/1000" }) do
      for _ = 1, 5 do
        local c = proxy:connect()
        assert(c:send("GET " .. req .. " HTTP/1.1\r\nHost: x\r\n\r\n"))
        helpers.sleep(0.05)
        c:close()
      end
    end
    for _ = 1, 5 do -- connect: the client leaves while the hook waits
      local c = proxy:connect(proxy.ports.slow)
      c:close()
    end
    helpers.sleep(0.4)
    assert.equal(before, tonumber(get("response_done")) or 0)
    assert.equal("direct\n", assert(proxy:request({ path = "/direct" })).body)
    assert.equal("direct\n", assert(proxy:request({ path = "/direct" }, proxy.ports.slow)).body)
    proxy:assert_alive()
  end)
end)

describe("hooks that wait across a reload", function()
  local A, proxy

  lazy_setup(function()
    A = helpers.origin({ name = "A" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false }
mg.listen { "127.0.0.1:${port}" }
mg.route { path = "/", upstream = mg.upstream "o" { servers = { "${a}" } }, on = {
  response = function(req, res) mg.sleep(0.8) res:set_header("x-gen", "old") end,
  body = function(req, res, chunk) return chunk end } }
]], { vars = { a = A.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy, A)
  end)

  it("finishes a waiting response hook on the old generation", function()
    local c = proxy:connect()
    assert(c:send("GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"))
    helpers.sleep(0.2)
    proxy:reload(function(old) return (old:gsub('mg.sleep%(0.8%) res:set_header%("x%-gen", "old"%)',
      'res:set_header("x-gen", "new")')) end, function()
      local res = proxy:request({ path = "/echo" })
      return res and res.h["x-gen"] == "new"
    end)
    local res = assert(c:response({ timeout = 5 }))
    c:close()
    assert.equal(200, res.status)
    assert.equal("old", res.h["x-gen"])
  end)
end)
