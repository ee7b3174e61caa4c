-- Health (core/health.c, core/balance.c): active checks run once for the process
-- with rise/fall and one log line per change, tcp and TLS checks, passive
-- ejection after consecutive 5xx (growing, bounded by max_percent), slow start,
-- all servers down (503 at once, or panic), checks stopped by a reload, and the
-- state seen by the balance hook.
local helpers = require "spec.helpers"

local function conf(body, workers)
  return [[
local mg = require "moongate"
mg.config { workers = ]] .. (workers or 2) .. [[, access_log = false }
mg.listen { "127.0.0.1:${port}" }
]] .. body
end

-- Lines of moongate's log holding `needle` (plain text).
local function log_count(proxy, needle)
  return helpers.count(proxy:stderr(), needle)
end

local function wait_log(proxy, needle, n, timeout)
  return helpers.wait_until(function() return log_count(proxy, needle) >= (n or 1) end, timeout or 5, 0.01)
end

-- Which origin answered `n` GETs of `path` on one connection: { name = count }.
local function spread(proxy, n, path)
  local c = proxy:connect()
  local t = {}
  for i = 1, n do
    local res = assert(c:request({ path = (path or "/echo") .. "?" .. i }))
    local who = res.h["x-origin"] or "?"
    t[who] = (t[who] or 0) + 1
  end
  c:close()
  return t
end

describe("active http checks", function()
  local a, b, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A", status_file = true })
    b = helpers.origin({ name = "B" })
    proxy = helpers.proxy(conf([[
mg.route { upstream = mg.upstream "web" { servers = { "${a}", "${b}" },
  health = { path = "/health", interval = 0.2, timeout = 0.5, rise = 2, fall = 2 } } }
]]), { vars = { a = a.addr, b = b.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("runs once for the process, not once per worker (2 workers)", function()
    helpers.wait_until(function() return a:count_path("/health") > 0 end, 2, 0.02)
    local n0 = a:count_path("/health")
    local t0 = os.time()
    helpers.sleep(2)
    local n = a:count_path("/health") - n0
    -- every 0.2 s (±15 %): about 10 in 2 s; per worker it would be about 20
    assert.is_true(n >= 6 and n <= 14, "health checks at A in 2 s: " .. n .. " (" .. t0 .. ")")
    assert.equal(0, log_count(proxy, "up -> down"))
  end)

  it("takes a server out after `fall` failed checks, with one log line, and back after `rise`", function()
    local n0 = a:count_path("/health")
    a:force_status(500)
    assert.truthy(wait_log(proxy, "upstream web: server " .. a.addr .. " up -> down (status 500)"),
                  proxy:stderr())
    local checks = a:count_path("/health") - n0
    -- fall = 2: two failed checks (a third may have been on the way when the 500 began)
    assert.is_true(checks >= 2 and checks <= 3, "checks until down: " .. checks)
    local t = spread(proxy, 10)
    assert.same({ B = 10 }, t)
    helpers.sleep(0.5)
    assert.equal(1, log_count(proxy, "up -> down"))
    n0 = a:count_path("/health")
    a:force_status(nil)
    assert.truthy(wait_log(proxy, "upstream web: server " .. a.addr .. " down -> up (status 200)"),
                  proxy:stderr())
    checks = a:count_path("/health") - n0
    assert.is_true(checks >= 2 and checks <= 3, "checks until up: " .. checks)
    t = spread(proxy, 10)
    assert.same({ A = 5, B = 5 }, t)
    assert.equal(1, log_count(proxy, "down -> up"))
  end)
end)

describe("active tcp checks", function()
  local a, b, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    b = helpers.origin({ name = "B" })
    proxy = helpers.proxy(conf([[
mg.route { upstream = mg.upstream "web" { servers = { "${a}", "${b}" },
  health = { type = "tcp", interval = 0.1, timeout = 0.5, rise = 1, fall = 1 } } }
]], 1), { vars = { a = a.addr, b = b.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("marks a stopped server down by its refused connect; no request goes there", function()
    helpers.sleep(0.3)
    assert.equal(0, a:count_path("/"))
    b:stop()
    assert.truthy(wait_log(proxy, "server " .. b.addr .. " up -> down (connect"), proxy:stderr())
    assert.truthy(proxy:stderr():find("up -> down (connect connection refused)", 1, true), proxy:stderr())
    local before = log_count(proxy, "upstream " .. b.addr)
    assert.same({ A = 20 }, spread(proxy, 20))
    -- no attempt on B: no connect failure logged for it
    assert.equal(before, log_count(proxy, "upstream " .. b.addr))
  end)
end)

describe("active checks over TLS", function()
  local a, proxy

  lazy_setup(function()
    local dir = helpers.tmpdir()
    local cert, key = helpers.self_signed(dir, "backend.test")
    a = helpers.origin({ name = "A", status_file = true, tls = { cert = cert, key = key } })
    proxy = helpers.proxy(conf([[
mg.route { upstream = mg.upstream "sec" { servers = { "${a}" },
  tls = { ca = "${ca}", sni = "backend.test" },
  health = { path = "/hz", interval = 0.1, timeout = 0.5, rise = 1, fall = 1 } } }
]], 1), { vars = { a = a.addr, ca = cert } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("checks through the upstream's TLS settings (verified, SNI) and sees the status", function()
    assert.truthy(helpers.wait_until(function() return a:count_path("/hz") >= 3 end, 3, 0.02))
    assert.equal(0, log_count(proxy, "up -> down"))
    a:force_status(503)
    assert.truthy(wait_log(proxy, "upstream sec: server " .. a.addr .. " up -> down (status 503)"), proxy:stderr())
    a:force_status(nil)
    assert.truthy(wait_log(proxy, "upstream sec: server " .. a.addr .. " down -> up (status 200)"), proxy:stderr())
  end)
end)

describe("all servers down", function()
  local a, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    -- the origin answers 200 to the check, which expects 204: down after one
    proxy = helpers.proxy(conf([[
local h = { path = "/health", expect = { 204 }, interval = 0.1, timeout = 0.5, rise = 1, fall = 1 }
mg.route { host = "plain.test", upstream = mg.upstream "plain" { servers = { "${a}" }, health = h } }
mg.route { host = "panic.test", upstream = mg.upstream "pan" { servers = { "${a}" }, health = h, panic = true } }
]]), { vars = { a = a.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("answers 503 at once with a log line", function()
    assert.truthy(wait_log(proxy, "upstream plain: server " .. a.addr .. " up -> down (status 200)"), proxy:stderr())
    local n0 = a:count_path("/echo?x")
    local t0 = helpers.now()
    local res = assert(proxy:request({ path = "/echo?x", headers = { { "Host", "plain.test" } } }))
    assert.equal(503, res.status)
    assert.is_true(helpers.now() - t0 < 0.5)
    assert.equal(n0, a:count_path("/echo?x"))
    assert.truthy(wait_log(proxy, "upstream plain: no server available: 503"), proxy:stderr())
  end)

  it("with panic = true still forwards, with a log line", function()
    assert.truthy(wait_log(proxy, "upstream pan: server " .. a.addr .. " up -> down (status 200)"), proxy:stderr())
    for _ = 1, 5 do
      local res = assert(proxy:request({ path = "/echo?p", headers = { { "Host", "panic.test" } } }))
      assert.equal(200, res.status)
    end
    assert.truthy(wait_log(proxy, "upstream pan: no server available, panic: trying " .. a.addr .. " anyway"))
    -- rate-limited: one line a second at most
    assert.is_true(log_count(proxy, "upstream pan: no server available, panic") <= 2)
  end)
end)

describe("passive ejection", function()
  local a, b, c, d, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A", status_file = true })
    b = helpers.origin({ name = "B", status_file = true })
    c = helpers.origin({ name = "C", status_file = true })
    d = helpers.origin({ name = "D", status_file = true })
    proxy = helpers.proxy(conf([[
mg.route { host = "two.test", upstream = mg.upstream "two" { servers = { "${a}", "${b}" },
  eject = { consecutive = 5, base = 1 } } }
mg.route { host = "four.test", upstream = mg.upstream "four" { servers = { "${a}", "${b}", "${c}", "${d}" },
  eject = { consecutive = 5, base = 1, max_percent = 50 } } }
]]), { vars = { a = a.addr, b = b.addr, c = c.addr, d = d.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  local function get(host, n)
    local cl = proxy:connect()
    local t = {}
    for i = 1, n do
      local res = assert(cl:request({ path = "/echo?" .. i, headers = { { "Host", host } } }))
      local who = res.h["x-origin"] or "?"
      t[who] = (t[who] or 0) + 1
    end
    cl:close()
    return t
  end

  it("ejects after 5 consecutive 503, for base seconds, then longer the second time", function()
    a:force_status(503)
    -- round robin: A gets every other request; its 5th 503 ejects it
    local t = get("two.test", 10)
    assert.same({ A = 5, B = 5 }, t)
    assert.equal(1, log_count(proxy, "upstream two: server " .. a.addr .. " ejected for 1s (5 errors in a row, ejection 1)"))
    local t0 = helpers.now()
    assert.same({ B = 20 }, get("two.test", 20))
    helpers.sleep(math.max(0, 1.1 - (helpers.now() - t0)))
    -- back after base seconds: it gets its turns again (and its 503s eject it anew)
    t = get("two.test", 10)
    assert.same({ A = 5, B = 5 }, t)
    assert.equal(1, log_count(proxy, "upstream two: server " .. a.addr .. " back from ejection"))
    assert.equal(1, log_count(proxy, "upstream two: server " .. a.addr .. " ejected for 2s (5 errors in a row, ejection 2)"))
    helpers.sleep(1.2)
    assert.same({ B = 10 }, get("two.test", 10)) -- still out: 2 s this time
    helpers.sleep(1)
    t = get("two.test", 2)
    assert.equal(1, t.A)
    a:force_status(nil)
  end)

  it("a non-5xx answer ends the streak", function()
    b:force_status(nil)
    local before = log_count(proxy, "server " .. b.addr .. " ejected")
    for _ = 1, 3 do
      b:force_status(500)
      get("two.test", 8) -- 4 errors in a row at B
      b:force_status(nil)
      get("two.test", 2) -- one 200 from B
    end
    assert.equal(before, log_count(proxy, "server " .. b.addr .. " ejected"))
  end)

  it("never ejects more than max_percent of the servers", function()
    for _, o in ipairs({ a, b, c, d }) do o:force_status(502) end
    local t = get("four.test", 40)
    local ejected = 0
    for _, o in ipairs({ a, b, c, d }) do
      ejected = ejected + log_count(proxy, "upstream four: server " .. o.addr .. " ejected for")
    end
    assert.equal(2, ejected)
    -- two left in rotation keep getting requests
    local served = 0
    for _, v in pairs(t) do served = served + v end
    assert.equal(40, served)
    local after = get("four.test", 20)
    local names = 0
    for _ in pairs(after) do names = names + 1 end
    assert.equal(2, names)
    for _, o in ipairs({ a, b, c, d }) do o:force_status(nil) end
  end)
end)

describe("slow start", function()
  local a, b, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A", status_file = true })
    b = helpers.origin({ name = "B" })
    proxy = helpers.proxy(conf([[
mg.route { upstream = mg.upstream "web" { servers = { "${a}", "${b}" }, slow_start = 5,
  health = { path = "/health", interval = 0.1, timeout = 0.5, rise = 1, fall = 1 } } }
]]), { vars = { a = a.addr, b = b.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("gives a server that came back a small share first, its full share after slow_start", function()
    helpers.sleep(0.3)
    assert.same({ A = 50, B = 50 }, spread(proxy, 100)) -- at start: no ramp
    a:force_status(500)
    assert.truthy(wait_log(proxy, "server " .. a.addr .. " up -> down"), proxy:stderr())
    a:force_status(nil)
    assert.truthy(wait_log(proxy, "server " .. a.addr .. " down -> up"), proxy:stderr())
    -- within the first second it takes 10 % to 28 % of its turns: about 10 of
    -- 100 requests (50 at full weight)
    local t = spread(proxy, 100)
    assert.is_true((t.A or 0) < 30 and (t.A or 0) > 0, "A's share right after coming back: " .. tostring(t.A))
    helpers.sleep(5.2)
    assert.same({ A = 50, B = 50 }, spread(proxy, 100))
  end)
end)

describe("reload", function()
  local a, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    proxy = helpers.proxy(conf([[
mg.route { upstream = mg.upstream "web" { servers = { "${a}" },
  health = { path = "/old", interval = 0.1, timeout = 0.5 } } }
]], 1), { vars = { a = a.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("stops the old generation's checks and starts the new one's", function()
    assert.truthy(helpers.wait_until(function() return a:count_path("/old") >= 5 end, 3, 0.02))
    proxy:reload(function(text) return (text:gsub('"/old"', '"/new"')) end,
                 function() return a:count_path("/new") > 0 end)
    helpers.sleep(0.3)
    local n = a:count_path("/old")
    helpers.sleep(1)
    assert.equal(n, a:count_path("/old"))
    local m = a:count_path("/new")
    assert.is_true(m >= 8, "new checks in ~1.3 s: " .. m)
    -- a reload to a config without checks leaves none running
    proxy:reload(proxy:new_config(), function() return proxy:says_new() end)
    helpers.sleep(0.3)
    m = a:count_path("/new")
    helpers.sleep(0.7)
    assert.equal(m, a:count_path("/new"))
  end)
end)

describe("the balance hook", function()
  local a, b, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A", status_file = true })
    b = helpers.origin({ name = "B" })
    proxy = helpers.proxy(conf([[
local function peek(req)
  local parts = {}
  for i, s in ipairs(req:servers()) do parts[i] = tostring(s.healthy) .. "/" .. tostring(s.ejected) end
  req.ctx.state = table.concat(parts, ",")
  if req:header("x-pick") then req:set_server(tonumber(req:header("x-pick"))) end
end
local function show(req, res) res:set_header("X-State", req.ctx.state) end
mg.route { upstream = mg.upstream "web" { servers = { "${a}", "${b}" }, eject = { consecutive = 1, base = 30 },
  health = { path = "/health", interval = 0.1, timeout = 0.5, rise = 1, fall = 1 } },
  on = { balance = peek, response = show } }
]], 1), { vars = { a = a.addr, b = b.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("sees healthy and ejected, and may still pick an unusable server", function()
    helpers.sleep(0.3)
    local res = assert(proxy:request({ path = "/echo" }))
    assert.equal("true/false,true/false", res.h["x-state"])
    a:force_status(500)
    assert.truthy(wait_log(proxy, "server " .. a.addr .. " up -> down"), proxy:stderr())
    res = assert(proxy:request({ path = "/echo" }))
    assert.equal("false/false,true/false", res.h["x-state"])
    assert.equal("B", res.h["x-origin"])
    -- the hook has the last word: it picks the down server, which answers 500
    -- (one 5xx ejects it: consecutive = 1)
    res = assert(proxy:request({ path = "/echo", headers = { { "X-Pick", "1" } } }))
    assert.equal(500, res.status)
    assert.equal("A", res.h["x-origin"])
    res = assert(proxy:request({ path = "/echo" }))
    assert.equal("false/true,true/false", res.h["x-state"])
    a:force_status(nil)
  end)
end)

describe("active checks with proxy_protocol", function()
  local a, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A", proxy_protocol = true })
    proxy = helpers.proxy(conf([[
mg.route { upstream = mg.upstream "pp" { servers = { "${a}" }, proxy_protocol = "v2",
  health = { path = "/pp", interval = 0.1, timeout = 0.5, rise = 1, fall = 1 } } }
]], 1), { vars = { a = a.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("starts each check's connection with a header naming no client (v2 LOCAL)", function()
    assert.truthy(helpers.wait_until(function() return a:count_path("/pp") >= 3 end, 3, 0.02))
    assert.equal(0, log_count(proxy, "up -> down"))
  end)
end)

describe("health config", function()
  local function check(upstream)
    local dir = helpers.tmpdir()
    local path = helpers.write_config(dir, [[
local mg = require "moongate"
mg.listen { "127.0.0.1:1" }
mg.route { upstream = mg.upstream "u" { servers = { "127.0.0.1:2" }, ]] .. upstream .. [[ } }
]])
    return helpers.moongate({ "-t", "-c", path })
  end

  local cases = {
    { 'health = { type = "udp" }', [[health: 'type' must be "http" or "tcp", got udp]] },
    { 'health = { path = "health" }', [[health: 'path' must start with '/']] },
    { 'health = { path = "/a b" }', [[health: 'path' must start with '/']] },
    { 'health = { expect = { 200, 700 } }', "health: expect[2] must be a status code (100..599), got 700" },
    { 'health = { expect = {} }', "health: 'expect' must list 1 to 16 status codes" },
    { 'health = { interval = 0 }', "health: 'interval' out of range (0)" },
    { 'health = { rise = 1.5 }', "health: 'rise' and 'fall' must be whole numbers" },
    { 'health = { fail = 3 }', "health: unknown key 'fail'" },
    { 'eject = { consecutive = 0 }', "eject: 'consecutive' out of range (0)" },
    { 'eject = { max_percent = 101 }', "eject: 'max_percent' out of range (101)" },
    { 'eject = { after = 5 }', "eject: unknown key 'after'" },
    { 'slow_start = -1', "'slow_start' out of range (-1)" },
    { 'panic = "yes"', "'panic' must be a boolean, got string" },
  }
  for _, c in ipairs(cases) do
    it("refuses " .. c[1], function()
      local out, rc = check(c[1])
      assert.not_equal(0, rc)
      assert.truthy(out:find(c[2], 1, true), out)
    end)
  end

  it("takes every key", function()
    local out, rc = check([[health = { type = "http", path = "/h?x=1", host = "h.test", expect = { 200, 204 },
      interval = 1, timeout = 0.5, rise = 1, fall = 2 }, eject = true, slow_start = 10, panic = true]])
    assert.equal(0, rc, out)
  end)
end)
