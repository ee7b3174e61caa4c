-- The command line (-v, -t, -s stop, -c) and signals: graceful drain on
-- SIGTERM/SIGQUIT, bounded by timeouts.drain; SIGINT exits at once.
local helpers = require "spec.helpers"
local signal = require "posix.signal"

local CONF = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, pid = "moongate.pid",
            timeouts = { drain = ${drain} } }
mg.listen { "127.0.0.1:${port}" }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } } }
]]

describe("command line", function()
  after_each(function() helpers.cleanup() end)

  it("-v prints moongate and a version and exits 0", function()
    local out, rc = helpers.moongate({ "-v" })
    assert.equal(0, rc)
    assert.matches("^moongate %d+%.%d+%.%d+\n?$", out)
  end)

  it("-t prints config ok and exits 0 for a valid config", function()
    local dir = helpers.tmpdir()
    local conf = helpers.write_config(dir, CONF, { port = helpers.free_port(), origin = "127.0.0.1:1",
                                                   drain = 1 })
    local out, rc = helpers.moongate({ "-t", "-c", conf })
    assert.equal(0, rc, out)
    assert.matches("config ok", out)
  end)

  it("-t without -c reads ./proxy.lua", function()
    local dir = helpers.tmpdir()
    helpers.write_config(dir, CONF, { port = helpers.free_port(), origin = "127.0.0.1:1", drain = 1 })
    local out, rc = helpers.moongate({ "-t" }, { cwd = dir })
    assert.equal(0, rc, out)
    assert.matches("config ok", out)
  end)

  it("-t accepts workers = \"auto\" and every documented key", function()
    local dir = helpers.tmpdir()
    local conf = helpers.write_config(dir, [[
local mg = require "moongate"
mg.config { workers = "auto", access_log = "logs/a.log", error_log = "-", log_level = "warn",
  pid = "logs/m.pid",
  timeouts = { client_header = 1, client_body = 1, keepalive = 1, send = 1, upstream_connect = 1,
               upstream_read = 1, upstream_write = 1, drain = 1.5 },
  limits = { head_size = 4096, headers = 10, uri_size = 100, body_size = 0 } }
mg.listen { "127.0.0.1:${port}", name = "main" }
local u = mg.upstream "u" { servers = { "127.0.0.1:1 weight=1000", "127.0.0.1:2" },
                            keepalive = 0, keepalive_timeout = 0.5 }
mg.route { host = "*.example.com", path = "/a/", methods = { "GET", "HEAD" }, listener = "main",
           upstream = u }
mg.route { host = "x.test", upstream = "u" }
mg.route { respond = { status = 204, body = "", headers = { ["x-a"] = "1" } } }
]], { port = helpers.free_port() })
    local out, rc = helpers.moongate({ "-t", "-c", conf })
    assert.equal(0, rc, out)
    assert.matches("config ok", out)
  end)

  it("-t exits 1 for a missing config file", function()
    local _, rc = helpers.moongate({ "-t", "-c", helpers.tmpdir() .. "/nope.lua" })
    assert.equal(1, rc)
  end)

  -- Each bad config puts the offending call on line 5 (after the header).
  local BAD = {
    { "an unknown key", "wrokers", [[mg.config { wrokers = 1 }]] },
    { "a wrong type", "workers", [[mg.config { workers = "many" }]] },
    { "an unknown timeouts key", "client_heder", [[mg.config { timeouts = { client_heder = 1 } }]] },
    { "an unknown route key", "pathh", [[mg.route { pathh = "/", respond = { status = 200 } }]] },
    { "an unknown upstream key", "keepalive_timout",
      [[mg.upstream "u" { servers = { "127.0.0.1:1" }, keepalive_timout = 1 }]] },
    { "a weight out of range", "weight", [[mg.upstream "u" { servers = { "127.0.0.1:1 weight=0" } }]] },
  }
  -- Mistakes with no single key to name: file and line are enough.
  local BAD_LINE = {
    { "a Lua syntax error", [[mg.route { path = "/" respond = {} }]] },
    { "a route with both upstream and respond",
      [[mg.route { path = "/x/", upstream = "u", respond = { status = 200 } }]] },
    { "a route with neither upstream nor respond", [[mg.route { path = "/x/" }]] },
    { "a route naming an unknown upstream", [[mg.route { path = "/x/", upstream = "nope" }]] },
    { "a server that is not host:port", [[mg.upstream "v" { servers = { "localhost" } }]] },
  }
  for _, case in ipairs(BAD_LINE) do
    local what, line = case[1], case[2]
    it("-t exits 1 naming the file and line for " .. what, function()
      local dir = helpers.tmpdir()
      local conf = helpers.write_config(dir, table.concat({
        'local mg = require "moongate"',
        'mg.listen { "127.0.0.1:' .. helpers.free_port() .. '" }',
        'mg.upstream "u" { servers = { "127.0.0.1:1" } }',
        "",
        line,
      }, "\n") .. "\n")
      local out, rc = helpers.moongate({ "-t", "-c", conf })
      assert.equal(1, rc, out)
      assert.is_truthy(out:find("proxy%.lua[^\n%d]*5%f[%D]"), "no proxy.lua and line 5 in: " .. out)
    end)
  end

  for _, case in ipairs(BAD) do
    local what, key, line = case[1], case[2], case[3]
    it("-t exits 1 naming the file, line and key for " .. what, function()
      local dir = helpers.tmpdir()
      local conf = helpers.write_config(dir, table.concat({
        'local mg = require "moongate"',
        'mg.listen { "127.0.0.1:' .. helpers.free_port() .. '" }',
        'mg.route { path = "/ok/", respond = { status = 200, body = "ok" } }',
        "",
        line,
      }, "\n") .. "\n")
      local out, rc = helpers.moongate({ "-t", "-c", conf })
      assert.equal(1, rc, out)
      assert.is_truthy(out:find("proxy%.lua[^\n%d]*5%f[%D]"), "no proxy.lua and line 5 in: " .. out)
      assert.is_truthy(out:find(key, 1, true), "no key " .. key .. " in: " .. out)
      assert.is_nil(out:find("config ok", 1, true))
    end)
  end

  it("-s stop stops the instance named in the pid file, which exits 0", function()
    local origin = helpers.origin()
    local proxy = helpers.proxy(CONF, { vars = { origin = origin.addr, drain = 5 } })
    local pid = helpers.wait_until(function() return proxy:file("moongate.pid") end, 3)
    assert.equal(tostring(proxy.pid), (pid or ""):match("^%s*(%d+)"))
    local out, rc = helpers.moongate({ "-s", "stop", "-c", proxy.conf })
    assert.equal(0, rc, out)
    assert.same({ "exited", 0 }, { proxy:wait(5) })
    assert.is_false(helpers.port_open(proxy.port))
    proxy:stop() -- already exited: checks for sanitizer reports
  end)
end)

describe("signals", function()
  local origin, proxy

  local function start(drain)
    origin = helpers.origin()
    proxy = helpers.proxy(CONF, { vars = { origin = origin.addr, drain = drain } })
  end

  -- Start /slow-head/S and wait until the origin has it, so it is in flight.
  local function in_flight(seconds)
    local c = proxy:connect()
    assert(c:send("GET /slow-head/" .. seconds .. " HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert(helpers.wait_until(function() return origin:stats().requests == 1 end, 3),
      "the request never reached the origin")
    return c
  end

  after_each(function()
    local p = proxy
    proxy = nil
    helpers.teardown(p)
  end)

  it("SIGTERM finishes the in-flight request, refuses new connections and exits 0", function()
    start(10)
    local c = in_flight(2)
    local t0 = helpers.now()
    proxy:signal(helpers.SIGTERM)
    local refused = helpers.wait_until(function() return not helpers.port_open(proxy.port) end, 1, 0.05)
    assert.is_true(refused, "still accepting 1 s after SIGTERM")
    assert.is_true(helpers.now() - t0 < 1.5, "refusal came after the in-flight request should end")
    local res = assert(c:response({ timeout = 5 }))
    assert.equal("/slow-head/2", helpers.echo(res).path)
    assert.same({ "exited", 0 }, { proxy:wait(5) })
  end)

  it("SIGQUIT drains like SIGTERM", function()
    start(10)
    local c = in_flight(1)
    proxy:signal(helpers.SIGQUIT)
    assert.equal(200, assert(c:response({ timeout = 5 })).status)
    assert.same({ "exited", 0 }, { proxy:wait(5) })
  end)

  it("SIGTERM exits 0 within timeouts.drain when a request outlasts it", function()
    start(1)
    local c = in_flight(6)
    local t0 = helpers.now()
    proxy:signal(helpers.SIGTERM)
    assert.same({ "exited", 0 }, { proxy:wait(4) })
    local dt = helpers.now() - t0
    assert(dt >= 0.8 and dt <= 3, string.format("exited after %.2f s, drain is 1 s", dt))
    c:close()
  end)

  it("SIGTERM does not wait for idle keep-alive connections", function()
    start(10)
    local c = proxy:connect()
    assert.equal(200, assert(c:request({ path = "/echo" })).status)
    local t0 = helpers.now()
    proxy:signal(helpers.SIGTERM)
    assert.same({ "exited", 0 }, { proxy:wait(5) })
    assert.is_true(helpers.now() - t0 < 2, "waited for an idle connection")
    c:close()
  end)

  it("SIGINT exits at once without finishing the in-flight request", function()
    start(10)
    local c = in_flight(3)
    local t0 = helpers.now()
    proxy:signal(helpers.SIGINT)
    local how = proxy:wait(1.5)
    assert.is_truthy(how, "still running 1.5 s after SIGINT")
    assert.is_true(helpers.now() - t0 < 1.5)
    local data, why = c:read_until_close(2)
    assert.equal("closed", why)
    assert.equal("", data)
  end)
end)

describe("start", function()
  after_each(function() helpers.cleanup() end)

  -- worker 1's init_worker takes half a second; requests sent as soon as the
  -- port accepts must still find both workers' init_worker done, on whichever
  -- worker the kernel hands the connection to
  it("serves nothing until every worker has run init_worker; the pid file comes after", function()
    local proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 2, access_log = false, pid = "moongate.pid", shared = { s = "64k" } }
mg.listen { "127.0.0.1:${port}" }
mg.on("init_worker", function()
  if mg.worker_id() == 1 then
    local t = os.clock() + 0.5
    while os.clock() < t do end
  end
  mg.shared("s"):incr("ready", 1, 0)
  mg.shared("s"):set("clock" .. mg.worker_id(), mg.now())
end)
mg.route { path = "/clock", respond = function(req)
  local s = mg.shared("s")
  return 200, string.format("%.3f %.3f %.3f", s:get("clock0"), s:get("clock1"), mg.now()),
    { ["content-type"] = "text/plain" }
end }
mg.route { respond = function(req)
  return 200, tostring(mg.shared("s"):get("ready")), { ["content-type"] = "text/plain" }
end }
]], { wait = false })
    assert(proxy:wait_ready())
    -- the sockets listen from the start, but worker 1 is still in init_worker
    assert.is_nil(proxy:file("moongate.pid"), "pid file written before every worker was ready")
    local conns = {}
    -- every request is sent before any answer is read: a connection on worker 0
    -- must not be answered while worker 1 is still in init_worker
    for i = 1, 8 do
      conns[i] = assert(proxy:connect())
      assert(conns[i]:send(helpers.request_bytes({ path = "/" .. i })))
    end
    for i = 1, 8 do
      local res = assert(conns[i]:final_response())
      assert.equal(200, res.status)
      assert.equal("2", res.body)
      conns[i]:close()
    end
    local pid = helpers.wait_until(function() return proxy:file("moongate.pid") end, 3)
    assert.equal(tostring(proxy.pid), (pid or ""):match("^(%d+)"))
    -- mg.now() already runs in init_worker: the worker loop's clock, a little
    -- before the request's
    local c0, c1, now = assert(proxy:request({ path = "/clock" })).body:match("^(%S+) (%S+) (%S+)$")
    c0, c1, now = tonumber(c0), tonumber(c1), tonumber(now)
    assert.is_true(c0 > 0 and c1 > 0, "mg.now() in init_worker: " .. c0 .. " " .. c1)
    assert.is_true(c0 <= now and c1 <= now and now - c0 < 60, c0 .. " " .. c1 .. " " .. now)
    helpers.teardown(proxy)
  end)

  -- the config rewrites its own file while the main thread loads it: the
  -- workers run the text that was checked, and a reload reads the file again
  it("every worker runs the config text the main thread read, not the file as it is later", function()
    local proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 2, access_log = false }
mg.listen { "127.0.0.1:${port}" }
local here = debug.getinfo(1, "S").source:sub(2)
local rewrite = "yes"
if mg.worker_id() < 0 and rewrite == "yes" then
  local f = assert(io.open(here, "rb"))
  local text = f:read("*a")
  f:close()
  text = text:gsub('"as read"', '"as changed"'):gsub('"yes"', '"no"', 1)
  f = assert(io.open(here .. ".new", "wb"))
  f:write(text)
  f:close()
  assert(os.rename(here .. ".new", here))
end
mg.route { respond = function() return 200, "as read", { ["content-type"] = "text/plain" } end }
]])
    for _ = 1, 10 do
      local res = assert(proxy:request({ path = "/" }))
      assert.equal("as read", res.body)
    end
    assert(helpers.read_file(proxy.conf):find('"as changed"', 1, true))
    proxy:signal(signal.SIGHUP)
    assert(helpers.wait_until(function()
      local res = proxy:request({ path = "/" })
      return res and res.body == "as changed"
    end, 5), "a reload did not read the changed file:\n" .. proxy:stderr())
    helpers.teardown(proxy)
  end)
end)
