-- Attacks on hooks that wait (mg.sleep) and mg.timer.*: requests and timer
-- callbacks that end, or whose configuration ends, while they wait.
local helpers = require "spec.helpers"
local signal = require "posix.signal"

local CONFIG = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, error_log = "error.log",
  timeouts = { hook = 2, drain = 3 }, shared = { d = "64k" } }
mg.listen { "127.0.0.1:${port}" }
local d = function() return mg.shared("d") end
mg.on("init_worker", function()
  mg.timer.at(0, function() d():set("long_GEN", "started") mg.sleep(1.5) d():set("long_GEN", "done") end)
end)
mg.route { path = "/get", respond = function(req) return 200, tostring(d():get(req:arg("k"))) end }
mg.route { path = "/nothing", respond = function(req) mg.sleep(0.05) end }
mg.route { path = "/sleep", respond = function(req) mg.sleep(tonumber(req:arg("s"))) return 200, "slept\n" end }
mg.route { path = "/odd", respond = function(req)
  local ok, err = pcall(mg.sleep, ({ neg = -1, nan = 0/0, str = "1", none = nil })[req:arg("a")])
  return 200, tostring(ok) .. " " .. tostring(err) .. "\n"
end }
mg.route { path = "/bal", upstream = mg.upstream "b" { servers = { "127.0.0.1:1" } },
  on = { balance = function(req) mg.sleep(0.01) end } }
mg.route { path = "/upreq", upstream = mg.upstream "u" { servers = { "127.0.0.1:1" } },
  on = { upstream_request = function(req) mg.sleep(0.01) end } }
mg.route { path = "/log", respond = { status = 200, body = "l\n" }, on = { log = function(req) mg.sleep(0.01) end } }
mg.route { path = "/every", respond = function(req)
  local n = 0
  local h
  h = mg.timer.every(0.01, function()
    n = n + 1
    d():set("every", n)
    mg.sleep(0.1)
    if n >= 3 then h:cancel() end
  end)
  return 200, "ok\n"
end }
mg.route { path = "/many", respond = function(req)
  for i = 1, 5000 do mg.timer.at(0.01, function(i) d():incr("many", 1, 0) end, i) end
  return 200, "ok\n"
end }
]]

describe("waits and timers under attack", function()
  local proxy

  lazy_setup(function()
    proxy = helpers.proxy((CONFIG:gsub("GEN", "A")))
  end)
  lazy_teardown(function() helpers.teardown(proxy) end)

  local function get(path) return assert(proxy:request({ path = path })) end
  local function errlog() return helpers.read_file(proxy.dir .. "/error.log") or "" end

  it("a respond function that waits and gives nothing is a 500", function()
    assert.equal(500, get("/nothing").status)
    proxy:assert_alive()
  end)

  it("odd mg.sleep arguments are errors", function()
    for _, a in ipairs({ "neg", "nan", "str", "none" }) do
      local res = get("/odd?a=" .. a)
      assert.equal(200, res.status)
      assert.truthy(res.body:find("^false .*mg.sleep: seconds must be a number >= 0"), res.body)
    end
  end)

  it("balance and upstream_request hooks that wait go on to the (dead) server: 502; a log hook waits", function()
    assert.equal(502, get("/bal").status)
    assert.equal(502, get("/upreq").status)
    assert.equal(200, get("/log").status)
    helpers.sleep(0.1)
    assert.falsy(errlog():find("log hook failed", 1, true))
    proxy:assert_alive()
  end)

  it("every timer whose callback sleeps longer than its interval; cancels itself", function()
    get("/every")
    helpers.sleep(0.8)
    assert.equal("3", get("/get?k=every").body)
  end)

  it("thousands of timers", function()
    get("/many")
    assert(helpers.wait_until(function() return get("/get?k=many").body == "5000" end, 5, 0.05))
    proxy:assert_alive()
  end)

  it("many concurrent waiting requests", function()
    local cs = {}
    for i = 1, 200 do
      cs[i] = proxy:connect()
      cs[i]:send("GET /sleep?s=0.3 HTTP/1.1\r\nHost: x\r\n\r\n")
    end
    for i = 1, 200 do
      local res = assert(cs[i]:response())
      assert.equal(200, res.status)
      cs[i]:close()
    end
  end)
end)

describe("a timer callback of an old configuration waits through a reload and the exit", function()
  it("exits 0 without a leak (the old configuration is freed)", function()
    local proxy = helpers.proxy((CONFIG:gsub("GEN", "A")))
    local function get(k) return assert(proxy:request({ path = "/get?k=" .. k })).body end
    assert(helpers.wait_until(function() return get("long_A") == "started" end, 2, 0.05))
    helpers.write_file(proxy.conf, (helpers.read_file(proxy.conf):gsub("long_A", "long_B")))
    proxy:signal(signal.SIGHUP)
    assert(helpers.wait_until(function() return get("long_B") == "started" end, 2, 0.05))
    helpers.teardown(proxy)
  end)
end)

describe("SIGTERM while hooks wait", function()
  it("answers the waiting request, then exits 0", function()
    local proxy = helpers.proxy((CONFIG:gsub("GEN", "A")))
    local c = proxy:connect()
    c:send("GET /sleep?s=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    helpers.sleep(0.1)
    proxy:signal(signal.SIGTERM)
    local res = c:response()
    assert(res and res.status == 200, "no answer")
    helpers.teardown(proxy)
  end)
end)

describe("a request hook that waits, with bodies, pipelining, HTTP/1.0, reloads", function()
  local origin, proxy
  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, error_log = "error.log", timeouts = { hook = 1 }, shared = { d = "64k" } }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
mg.route { path = "/w/", upstream = o, on = { request = function(req)
  mg.sleep(tonumber(req:header("x-s") or "0.1"))
  if req:header("x-respond") then return req:respond(201, "early\n") end
  if req:header("x-err") then error("after wait") end
  if req:header("x-timer") then local h, e = mg.timer.at(0, function() mg.shared("d"):set("t", "ran") end) mg.shared("d"):set("th", tostring(h) .. tostring(e)) end
  req:set_upstream(o)
end } }
mg.route { path = "/get", respond = function(req) return 200, tostring(mg.shared("d"):get(req:arg("k"))) end }
mg.route { path = "/r", respond = function(req) mg.sleep(0.1) return 200, "r" .. req.path end }
mg.route { path = "/slowr", respond = function(req) mg.sleep(5) return 200, "r" end }
]], { vars = { origin = origin.addr } })
  end)
  lazy_teardown(function() helpers.teardown(proxy, origin) end)

  it("serves pipelined requests with bodies behind hooks that wait and answer", function()
    local c = proxy:connect()
    c:send("POST /w/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /r HTTP/1.1\r\nHost: x\r\n\r\nPOST /w/echo HTTP/1.1\r\nHost: x\r\nx-respond: 1\r\nContent-Length: 3\r\n\r\nabcGET /r2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    local r1 = assert(c:response()); assert.equal(200, r1.status); assert.truthy(r1.body:find("\"body_len\": 5"), r1.body)
    local r2 = assert(c:response()); assert.equal("r/r", r2.body)
    local r3 = assert(c:response()); assert.equal(201, r3.status)
    local r4 = assert(c:response()); assert.equal("r/r2", r4.body)
    assert(c:closed(2))
    proxy:assert_alive()
  end)
  it("sends 100 Continue once the waiting hook is done", function()
    local c = proxy:connect()
    c:send("POST /w/echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    local line = c:take_until("\r\n\r\n", require("socket").gettime() + 3)
    assert.truthy(tostring(line):find("100"), tostring(line))
    c:send("hello")
    local r = assert(c:response()); assert.equal(200, r.status); assert.truthy(r.body:find("\"body_len\": 5"), r.body)
    proxy:assert_alive()
  end)
  it("HTTP/1.0, an error after the wait (500), timeouts.hook (504)", function()
    local c = proxy:connect()
    c:send("GET /r HTTP/1.0\r\n\r\n")
    local r = assert(c:response()); assert.equal("r/r", r.body)
    assert(c:closed(2))
    assert.equal(500, assert(proxy:request({ path = "/w/x", headers = { ["x-err"] = "1" } })).status)
    assert.equal(504, assert(proxy:request({ path = "/w/x", headers = { ["x-s"] = "3" } })).status)
    assert.equal(504, assert(proxy:request({ path = "/slowr" })).status)
    proxy:assert_alive()
  end)
  it("survives clients that leave with half a body while the hook waits", function()
    for i = 1, 20 do
      local c = proxy:connect()
      c:send("POST /w/echo HTTP/1.1\r\nHost: x\r\nx-s: 0.05\r\nContent-Length: 100000\r\n\r\n" .. string.rep("a", 70000))
      if i % 2 == 0 then helpers.sleep(0.06) end
      c:close()
    end
    helpers.sleep(0.3)
    proxy:assert_alive()
  end)
  it("takes a body larger than the 64 KiB kept during the wait", function()
    local c = proxy:connect()
    local body = string.rep("b", 200000)
    c:send("POST /w/echo HTTP/1.1\r\nHost: x\r\nx-s: 0.2\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body, 5)
    local r = assert(c:response()); assert.equal(200, r.status)
    proxy:assert_alive()
  end)
  it("a hook waiting through a reload finishes on its configuration, which starts no timer", function()
    local c = proxy:connect()
    c:send("GET /w/echo HTTP/1.1\r\nHost: x\r\nx-s: 0.4\r\nx-timer: 1\r\n\r\n")
    helpers.sleep(0.1)
    helpers.write_file(proxy.conf, helpers.read_file(proxy.conf) .. "\n-- v2\n")
    proxy:signal(signal.SIGHUP)
    local r = assert(c:response()); assert.equal(200, r.status)
    -- the old configuration is retired: its hook may not start a timer any more
    assert.truthy(proxy:request({ path = "/get?k=th" }).body:find("^niltimer not started"))
    proxy:assert_alive()
  end)
end)

local CONF = [[
local mg = require "moongate"
mg.config { workers = 2, access_log = false, error_log = "error.log", timeouts = { hook = 3, drain = 1 }, shared = { d = "64k" } }
mg.listen { "127.0.0.1:${port}" }
mg.on("init_worker", function()
  for i = 1, 50 do mg.timer.every(0.001, function() mg.sleep(0.002) mg.timer.at(0, function() mg.sleep(0.5) end) end) end
  mg.timer.at(0, function() mg.sleep(100) end)
end)
mg.route { path = "/s", respond = function(req) mg.sleep(tonumber(req:arg("s"))) mg.timer.at(0.001, function() mg.sleep(10) end) return 200, "ok" end }
]]
describe("reloads and SIGTERM with timers and waiting hooks", function()
  it("answers every waiting request through a reload storm, exits without a leak", function()
    local proxy = helpers.proxy(CONF)
    local cs = {}
    for i = 1, 40 do
      cs[i] = proxy:connect()
      cs[i]:send("GET /s?s=0." .. (i % 9 + 1) .. " HTTP/1.1\r\nHost: x\r\n\r\n")
      if i % 4 == 0 then proxy:signal(signal.SIGHUP) helpers.sleep(0.02) end
    end
    for i = 1, 40 do local r = cs[i]:response() assert(r and r.status == 200, "req " .. i) cs[i]:close() end
    proxy:assert_alive()
    helpers.teardown(proxy)
  end)
  it("exits 0 on SIGTERM when hooks wait longer than timeouts.drain", function()
    local proxy = helpers.proxy(CONF)
    local cs = {}
    for i = 1, 10 do
      cs[i] = proxy:connect()
      cs[i]:send("GET /s?s=" .. (i % 2 == 0 and "5" or "0.2") .. " HTTP/1.1\r\nHost: x\r\n\r\n")
    end
    helpers.sleep(0.05)
    proxy:signal(signal.SIGTERM)
    local t0 = require("socket").gettime()
    local how, code = proxy:wait(8)
    assert.equal("exited", how); assert.equal(0, code)
    assert(require("socket").gettime() - t0 < 4)
    local report = helpers.sanitizer_report(proxy:stderr())
    assert(not report, report)
    helpers.cleanup()
  end)
end)

describe("an every timer whose run timeouts.hook drops", function()
  it("goes on (as after an error)", function()
    local proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, error_log = "error.log", timeouts = { hook = 0.2 }, shared = { d = "64k" } }
mg.listen { "127.0.0.1:${port}" }
mg.on("init_worker", function()
  mg.timer.every(0.05, function()
    local n = mg.shared("d"):incr("runs", 1, 0)
    if n == 1 then mg.sleep(1) end -- dropped after 0.2 s
  end)
end)
mg.route { path = "/get", respond = function(req) return 200, tostring(mg.shared("d"):get("runs")) end }
]])
    assert(helpers.wait_until(function()
      return (helpers.read_file(proxy.dir .. "/error.log") or ""):find("timer hook still waiting after timeouts.hook", 1, true)
    end, 2, 0.05))
    helpers.sleep(0.4)
    local runs = tonumber(proxy:request({ path = "/get" }).body)
    assert(runs and runs >= 3, "runs after the drop: " .. tostring(runs))
    helpers.teardown(proxy)
  end)
end)
