-- mg.timer.at / mg.timer.every (docs/hooks.md "mg.*"): callbacks run in the
-- worker, in a coroutine of their own (they may wait), with the arguments given;
-- an error is logged (an `every` timer goes on, an `at` one ends); a handle
-- cancels; a reload stops the old configuration's timers.
local helpers = require "spec.helpers"
local signal = require "posix.signal"

local CONFIG = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, error_log = "error.log", shared = { d = "64k" } }
mg.listen { "127.0.0.1:${port}" }
local d = function() return mg.shared("d") end
mg.on("init_worker", function()
  mg.timer.every(0.1, function(tag) d():incr(tag, 1, 0) d():set("last_gen", "GEN") end, "ticks_GEN")
  local n = 0
  mg.timer.every(0.1, function()
    n = n + 1
    d():set("failing_runs", n)
    error("boom " .. n)
  end)
end)
mg.route { path = "/at", respond = function(req)
  local h = mg.timer.at(tonumber(req:arg("delay")), function(k, v) d():set(k, v) end, req:arg("k"), req:arg("v"))
  if req:arg("cancel") then h:cancel() end
  return 200, "armed\n"
end }
mg.route { path = "/at-sleeps", respond = function(req)
  mg.timer.at(0, function(k)
    mg.sleep(0.2)
    d():set(k, "after the sleep")
  end, req:arg("k"))
  return 200, "armed\n"
end }
mg.route { path = "/at-fails", respond = function(req)
  mg.timer.at(0, function() error("at failed on purpose") end)
  return 200, "armed\n"
end }
mg.on("connect", function(conn)
  mg.timer.at(0, function() d():incr("from_connect", 1, 0) end)
end)
mg.route { path = "/churn", respond = function(req)
  for _ = 1, tonumber(req:arg("n")) do mg.timer.at(3600, function() end):cancel() end
  return 200, "churned\n"
end }
mg.route { path = "/bad-args", respond = function(req)
  local out = {}
  local cases = {
    function() return mg.timer.at(-1, function() end) end,
    function() return mg.timer.at(0 / 0, function() end) end,
    function() return mg.timer.at("1", function() end) end,
    function() return mg.timer.at(1e12, function() end) end,
    function() return mg.timer.at(1, "not a function") end,
    function() return mg.timer.every(0, function() end) end,
  }
  for i, f in ipairs(cases) do
    local ok, err = pcall(f)
    out[i] = ok and "accepted" or tostring(err):match("mg%.timer%.%a+: [^,]*")
  end
  return 200, table.concat(out, "\n") .. "\n"
end }
mg.route { path = "/get", respond = function(req)
  return 200, tostring(d():get(req:arg("k")))
end }
]]

describe("mg.timer", function()
  local proxy

  lazy_setup(function()
    proxy = helpers.proxy((CONFIG:gsub("GEN", "A")))
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  local function get(k) return assert(proxy:request({ path = "/get?k=" .. k })).body end
  local function errlog() return helpers.read_file(proxy.dir .. "/error.log") or "" end

  it("runs an every timer from init_worker with its argument, again and again", function()
    local first = tonumber(get("ticks_A")) or 0
    helpers.sleep(0.55)
    local later = tonumber(get("ticks_A"))
    assert(later and later - first >= 3, "ticks " .. tostring(first) .. " -> " .. tostring(later))
  end)

  it("runs an at timer once, after its delay, with its arguments", function()
    assert.equal("armed\n", assert(proxy:request({ path = "/at?delay=0.3&k=at1&v=fired" })).body)
    assert.equal("nil", get("at1"))
    assert(helpers.wait_until(function() return get("at1") == "fired" end, 2, 0.05), "never fired")
  end)

  it("does not run a cancelled timer", function()
    assert(proxy:request({ path = "/at?delay=0.2&k=at2&v=fired&cancel=1" }))
    helpers.sleep(0.5)
    assert.equal("nil", get("at2"))
  end)

  it("lets a timer callback wait (mg.sleep) and go on", function()
    assert(proxy:request({ path = "/at-sleeps?k=slept" }))
    assert.equal("nil", get("slept"))
    assert(helpers.wait_until(function() return get("slept") == "after the sleep" end, 2, 0.05))
  end)

  it("refuses bad delays and callbacks with an error naming the call", function()
    local res = assert(proxy:request({ path = "/bad-args" }))
    assert.equal(200, res.status)
    assert.same({
      "mg.timer.at: the delay must be a number of seconds (0 to 1e7)",
      "mg.timer.at: the delay must be a number of seconds (0 to 1e7)",
      "mg.timer.at: the delay must be a number of seconds (0 to 1e7)",
      "mg.timer.at: the delay must be a number of seconds (0 to 1e7)",
      "mg.timer.at: the callback must be a function",
      "mg.timer.every: the interval must be at least 0.001 s",
    }, (function() local t = {} for l in helpers.lines(res.body) do t[#t + 1] = l end return t end)())
    proxy:assert_alive()
  end)

  it("starts a timer from a connect hook", function()
    local before = tonumber(get("from_connect")) or 0
    for _ = 1, 3 do assert(proxy:request({ path = "/get?k=x" })) end
    assert(helpers.wait_until(function() return (tonumber(get("from_connect")) or 0) >= before + 3 end, 2, 0.05))
  end)

  it("frees a cancelled timer at once, not when it would have fired", function()
    assert.equal("churned\n", assert(proxy:request({ path = "/churn?n=1000" })).body) -- warm up
    collectgarbage()
    local rss0 = proxy:rss()
    assert.equal("churned\n", assert(proxy:request({ path = "/churn?n=200000" })).body)
    -- 200,000 timers held for an hour would be over 10 MiB; Lua's own garbage
    -- from the loop is collected as it goes
    proxy:assert_rss_flat(rss0, 6 * 1024)
    proxy:assert_alive()
  end)

  it("logs an error in a callback; an every timer goes on after it, an at one ends", function()
    local runs = tonumber(get("failing_runs"))
    helpers.sleep(0.35)
    assert(tonumber(get("failing_runs")) >= runs + 2, "the failing every timer stopped")
    assert(errlog():find("timer callback failed: [^\n]*boom", 1), "no log line")
    assert(proxy:request({ path = "/at-fails" }))
    assert(helpers.wait_until(function() return errlog():find("at failed on purpose", 1, true) end, 2, 0.05))
    proxy:assert_alive()
  end)
end)

describe("mg.timer across a reload", function()
  local proxy

  lazy_setup(function()
    proxy = helpers.proxy((CONFIG:gsub("GEN", "A")))
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("stops the old configuration's timers; the new one's run", function()
    local function get(k) return assert(proxy:request({ path = "/get?k=" .. k })).body end
    assert(helpers.wait_until(function() return get("last_gen") == "A" end, 2, 0.05))
    helpers.write_file(proxy.conf, (helpers.read_file(proxy.conf):gsub("_A\"", "_B\""):gsub("\"A\"", "\"B\"")))
    proxy:signal(signal.SIGHUP)
    assert(helpers.wait_until(function() return get("last_gen") == "B" end, 3, 0.05), "the new timers never ran")
    local a = tonumber(get("ticks_A"))
    helpers.sleep(0.4)
    assert.equal(a, tonumber(get("ticks_A"))) -- A's timer stopped with its configuration
    assert.equal("B", get("last_gen"))
  end)
end)

describe("mg.timer outside the worker", function()
  it("is refused while proxy.lua is read (a config error)", function()
    local dir = helpers.tmpdir()
    local conf = helpers.write_config(dir, [[
local mg = require "moongate"
mg.listen { "127.0.0.1:1" }
mg.timer.at(1, function() end)
]], {})
    local out, rc = helpers.moongate({ "-t", "-c", conf })
    assert.not_equal(0, rc)
    assert.truthy(out:find("mg.timer.at: only in init_worker, hooks and timer callbacks", 1, true), out)
  end)
end)
