-- Retries (retry = { tries, on, per_try_timeout, backoff, budget, buffer }), the
-- route's idempotent = true, the circuit breakers (max_connections, max_pending,
-- max_requests), timeouts per upstream and per route, and mg.upstream_stats:
-- several local origins, faults injected by the spec (one answering 503, one
-- resetting, one slow, one stopped, one whose connects hang), and origins that
-- count what reaches them.
local helpers = require "spec.helpers"

local PRELUDE = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false }
mg.listen { "127.0.0.1:${port}" }

]] .. helpers.STATS_ROUTE .. [[
]]

local function get(proxy, host, path, extra)
  local req = { path = path or "/echo", headers = { { "Host", host } } }
  for k, v in pairs(extra or {}) do req[k] = v end
  return assert(proxy:request(req))
end

local function stats(proxy, name)
  local res = get(proxy, "stats.test", "/?u=" .. name)
  assert.equal(200, res.status, res.body)
  local t = {}
  for k, v in res.body:gmatch("(%S+)=(%S+)") do t[k] = tonumber(v) end
  return t
end

local function reqs(o) return o:stats().requests end

local function reset(...)
  for _, o in ipairs({ ... }) do o:reset_stats() end
end

describe("retry", function()
  local a, f503, rst, slow, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    f503 = helpers.origin({ name = "F503", as_path = "/status/503" })
    rst = helpers.origin({ name = "RST", as_path = "/reset-rst" })
    slow = helpers.origin({ name = "SLOW", as_path = "/slow-head/1" })
    proxy = helpers.proxy(PRELUDE .. [[
local reset_get = mg.upstream "reset_get" { servers = { "${rst}", "${a}" }, retry = { on = { "reset" } } }
mg.route { host = "reset.test", upstream = reset_get }
local plain = mg.upstream "plain" { servers = { "${f503}", "${a}" } }
mg.route { host = "plain.test", upstream = plain }
local on503 = mg.upstream "on503" { servers = { "${f503}", "${a}" },
  retry = { on = { "503", "reset" }, buffer = "1k" } }
mg.route { host = "on503.test", upstream = on503 }
mg.route { host = "idem.test", upstream = on503, idempotent = true }
local pertry = mg.upstream "pertry" { servers = { "${slow}", "${a}" },
  retry = { on = { "timeout" }, per_try_timeout = 0.3 } }
mg.route { host = "pertry.test", upstream = pertry }
local readto = mg.upstream "readto" { servers = { "${slow}", "${a}" }, timeouts = { read = 0.3 },
  retry = { on = { "timeout" } } }
mg.route { host = "readto.test", upstream = readto }
local three = mg.upstream "three" { servers = { "${f503}" },
  retry = { tries = 3, on = { "503" }, backoff = { base = 0.01, max = 0.02 } } }
mg.route { host = "three.test", upstream = three }
local two = mg.upstream "two" { servers = { "${f503}" },
  retry = { tries = 2, on = { "503" }, backoff = { base = 0.01 } } }
mg.route { host = "two.test", upstream = two }
local waits = mg.upstream "waits" { servers = { "${f503}" },
  retry = { tries = 3, on = { "503" }, backoff = { base = 2, max = 2 } } }
mg.route { host = "waits.test", upstream = waits }
]], { vars = { a = a.addr, f503 = f503.addr, rst = rst.addr, slow = slow.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  before_each(function()
    reset(a, f503, rst, slow)
  end)

  it("sends a GET again to the next server when the first resets before a head", function()
    for i = 1, 6 do
      assert.equal("A", helpers.echo(get(proxy, "reset.test", "/echo?" .. i)).name)
    end
    assert.equal(6, reqs(a))
    local r = reqs(rst)
    assert.is_true(r >= 3, "the resetting server was tried " .. r .. " times in 6 requests")
    assert.equal(r, stats(proxy, "reset_get").retries)
  end)

  it("sends a chunked PUT again after a reset with its body intact (within retry.buffer)", function()
    local pieces = { "first piece ", ("middle "):rep(100), "last" }
    local body = table.concat(pieces)
    for i = 1, 4 do
      local raw = { "PUT /echo?" .. i .. " HTTP/1.1\r\nHost: reset.test\r\nTransfer-Encoding: chunked\r\n\r\n" }
      for _, p in ipairs(pieces) do raw[#raw + 1] = ("%x\r\n%s\r\n"):format(#p, p) end
      raw[#raw + 1] = "0\r\n\r\n"
      local doc = helpers.echo(assert(proxy:request(table.concat(raw))))
      assert.equal("A", doc.name)
      assert.equal(#body, doc.body_len)
      assert.equal(helpers.sha256(body), doc.body_sha256)
    end
    assert.equal(4, reqs(a))
    assert.is_true(reqs(rst) >= 2)
  end)

  it("passes a 503 on when \"503\" is not in retry.on (the default: connect only)", function()
    local n503 = 0
    for i = 1, 6 do
      local res = get(proxy, "plain.test", "/echo?" .. i)
      assert.is_true(res.status == 200 or res.status == 503, "status " .. res.status)
      if res.status == 503 then
        n503 = n503 + 1
        assert.equal("status 503\n", res.body) -- the origin's own answer
      end
    end
    assert.equal(3, n503)
    assert.equal(3, reqs(f503))
    assert.equal(3, reqs(a))
  end)

  it("discards a 503 head and sends the GET again when \"503\" is in retry.on", function()
    for i = 1, 6 do
      assert.equal("A", helpers.echo(get(proxy, "on503.test", "/echo?" .. i)).name)
    end
    assert.equal(6, reqs(a))
    assert.is_true(reqs(f503) >= 3)
  end)

  it("never sends a POST twice, though 503 and reset are in retry.on", function()
    local counts = { [200] = 0, [503] = 0 }
    for i = 1, 8 do
      local res = get(proxy, "on503.test", "/echo?" .. i, { method = "POST", body = "once " .. i })
      assert(counts[res.status], "status " .. res.status)
      counts[res.status] = counts[res.status] + 1
    end
    -- every POST reached exactly one server: its answer is the one the client got
    assert.equal(8, reqs(a) + reqs(f503))
    assert.same({ [200] = reqs(a), [503] = reqs(f503) }, counts)
    assert.equal(4, counts[503])
  end)

  it("sends a POST again with its body intact on an idempotent = true route", function()
    for i = 1, 6 do
      local body = ("body of post %d "):format(i):rep(20) -- 360 bytes: within retry.buffer
      local doc = helpers.echo(get(proxy, "idem.test", "/echo?" .. i, { method = "POST", body = body }))
      assert.equal("A", doc.name)
      assert.equal(#body, doc.body_len)
      assert.equal(helpers.sha256(body), doc.body_sha256)
    end
    assert.equal(6, reqs(a))
    assert.is_true(reqs(f503) >= 3)
  end)

  it("does not send a POST again when its body outgrew retry.buffer", function()
    local counts = { [200] = 0, [503] = 0 }
    local body = ("x"):rep(4096) -- retry.buffer is 1k
    for i = 1, 6 do
      local res = get(proxy, "idem.test", "/echo?" .. i, { method = "POST", body = body })
      counts[res.status] = counts[res.status] + 1
    end
    assert.equal(6, reqs(a) + reqs(f503))
    assert.same({ [200] = reqs(a), [503] = reqs(f503) }, counts)
    assert.equal(3, counts[503])
  end)

  it("moves on after per_try_timeout when a server is slow to answer", function()
    for i = 1, 4 do
      local t0 = helpers.now()
      assert.equal("A", helpers.echo(get(proxy, "pertry.test", "/echo?" .. i)).name)
      assert.is_true(helpers.now() - t0 < 0.8, "took " .. (helpers.now() - t0) .. " s")
    end
    assert.equal(4, reqs(a))
    assert.is_true(reqs(slow) >= 2)
    assert.matches("no response head within retry.per_try_timeout", proxy:stderr(), 1, true)
  end)

  it("moves on when the upstream's read timeout runs out before a head (\"timeout\")", function()
    for i = 1, 4 do
      local t0 = helpers.now()
      assert.equal("A", helpers.echo(get(proxy, "readto.test", "/echo?" .. i)).name)
      assert.is_true(helpers.now() - t0 < 0.8, "took " .. (helpers.now() - t0) .. " s")
    end
    assert.equal(4, reqs(a))
    assert.is_true(reqs(slow) >= 2)
  end)

  it("mg.upstream_stats answers nil, err for an unknown upstream", function()
    local res = get(proxy, "stats.test", "/?u=nope")
    assert.equal(404, res.status)
    assert.equal("no upstream 'nope'", res.body)
  end)

  it("makes at most `tries` attempts, then passes the last answer on", function()
    local res = get(proxy, "three.test")
    assert.equal(503, res.status)
    assert.equal("status 503\n", res.body)
    assert.equal(3, reqs(f503))
    reset(f503)
    assert.equal(503, get(proxy, "two.test").status)
    assert.equal(2, reqs(f503))
  end)

  it("waits a backoff before trying the only server again, and a client leaving ends it", function()
    local t0 = helpers.now()
    local c = proxy:connect()
    assert(c:send("GET /echo HTTP/1.1\r\nHost: waits.test\r\n\r\n"))
    assert(helpers.wait_until(function() return reqs(f503) == 1 end, 5, 0.01))
    assert.is_true(helpers.now() - t0 < 0.9)
    -- the backoff is 1 to 2 s (base 2, jittered down to half at most): the client
    -- leaves in it, with a reset (a FIN alone is a half-close: the answer is still due)
    c.sock:setoption("linger", { on = true, timeout = 0 })
    c:close()
    helpers.sleep(2.5)
    assert.equal(1, reqs(f503), "the retry went after the client left")
    local s = stats(proxy, "waits")
    assert.equal(0, s.active_requests)
    assert.equal(0, s.active_retries)
    proxy:assert_alive()
  end)
end)

-- A flood against one origin that answers 503 after 0.3 s: n requests sent at
-- once on their own connections, all answered 503 in the end; the number of
-- attempts the origin saw.
local function flood(budget)
  local f = helpers.origin({ name = "F", as_path = "/status/503", delay = 0.3 })
  local proxy = helpers.proxy(PRELUDE .. [[
mg.route { host = "flood.test", upstream = mg.upstream "flood" { servers = { "${f}" },
  retry = { tries = 3, on = { "503" }, budget = ]] .. budget .. [[, backoff = { base = 0.001, max = 0.001 } } } }
]], { vars = { f = f.addr } })
  local n = 30
  local cs = {}
  for i = 1, n do
    cs[i] = proxy:connect()
    assert(cs[i]:send("GET /echo?" .. i .. " HTTP/1.1\r\nHost: flood.test\r\n\r\n"))
  end
  for i = 1, n do
    assert.equal(503, assert(cs[i]:response()).status)
    cs[i]:close()
  end
  return n, reqs(f), stats(proxy, "flood"), proxy
end

describe("retry.budget", function()
  after_each(function()
    helpers.cleanup()
  end)

  it("holds retries in flight to 20 % of the requests under a flood of failures", function()
    local n, attempts, s, proxy = flood(0.2)
    -- without a budget: 3 attempts each (90); with it, ~6 retries (20 % of 30)
    -- while all are in flight, ~3 (the floor) for the third tries
    assert.is_true(attempts <= n + 12, attempts .. " attempts for " .. n .. " requests")
    assert.is_true(attempts > n, "no retry at all")
    assert.equal(n, s.requests)
    assert.equal(attempts - n, s.retries)
    assert.is_true(s.retries_budget_exceeded >= n - 12, "budget refusals: " .. s.retries_budget_exceeded)
    assert.equal(0, s.active_requests)
    assert.equal(0, s.active_retries)
    assert.matches("retry budget exhausted", proxy:stderr(), 1, true)
    proxy:stop()
  end)

  it("lets every request make its 3 tries under the same flood with budget = 1 (the control)", function()
    local n, attempts, s, proxy = flood(1)
    assert.equal(3 * n, attempts)
    assert.equal(0, s.retries_budget_exceeded)
    proxy:stop()
  end)
end)

describe("one server down under a flood", function()
  local a, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A", delay = 0.3 })
    proxy = helpers.proxy(PRELUDE .. [[
mg.route { host = "half.test", upstream = mg.upstream "half" { servers = { "127.0.0.1:${dead}", "${a}" } } }
]], { vars = { a = a.addr, dead = helpers.free_port() } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("fails every request over: retries after a failed connect are not held to the budget", function()
    local n = 30
    local cs = {}
    for i = 1, n do
      cs[i] = proxy:connect()
      assert(cs[i]:send("GET /echo?" .. i .. " HTTP/1.1\r\nHost: half.test\r\n\r\n"))
    end
    for i = 1, n do
      assert.equal("A", helpers.echo(assert(cs[i]:response())).name)
      cs[i]:close()
    end
    local s = stats(proxy, "half")
    assert.is_true(s.retries >= 5, "retries: " .. s.retries)
    assert.equal(0, s.retries_budget_exceeded)
  end)
end)

describe("circuit breakers", function()
  local slow, dead, black, proxy

  lazy_setup(function()
    slow = helpers.origin({ name = "SLOWA", delay = 0.8 })
    black = helpers.origin({ name = "BH", blackhole = true })
    dead = helpers.free_port()
    proxy = helpers.proxy(PRELUDE .. [[
mg.route { host = "req.test", upstream = mg.upstream "req" { servers = { "${slow}" }, max_requests = 2 } }
mg.route { host = "conn.test", upstream = mg.upstream "conn" { servers = { "${slow}" }, max_connections = 2 } }
mg.route { host = "pend.test", upstream = mg.upstream "pend" { servers = { "${black}" }, max_pending = 1,
  timeouts = { connect = 0.6 } } }
mg.route { host = "dead.test", upstream = mg.upstream "dead" { servers = { "127.0.0.1:${dead}" } } }
]], { vars = { slow = slow.addr, black = black.addr, dead = dead } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  -- two requests held by the slow origin, then a third: 503 at once; then recovery
  local function trip(host, breaker, counter)
    slow:reset_stats()
    local c1, c2 = proxy:connect(), proxy:connect()
    assert(c1:send("GET /echo?1 HTTP/1.1\r\nHost: " .. host .. "\r\n\r\n"))
    assert(c2:send("GET /echo?2 HTTP/1.1\r\nHost: " .. host .. "\r\n\r\n"))
    assert(helpers.wait_until(function() return reqs(slow) == 2 end, 5, 0.01))
    local t0 = helpers.now()
    local res = get(proxy, host, "/echo?3")
    helpers.assert_error(res, 503)
    assert.is_true(helpers.now() - t0 < 0.5, "the 503 took " .. (helpers.now() - t0) .. " s")
    assert.equal(200, assert(c1:response()).status)
    assert.equal(200, assert(c2:response()).status)
    c1:close()
    c2:close()
    assert.equal(2, reqs(slow))
    local s = stats(proxy, breaker)
    assert.equal(1, s[counter])
    assert.equal(0, s.active_requests)
    assert.equal(0, s.active_connections)
    -- closed again once the requests ended
    assert.equal(200, get(proxy, host, "/echo?4").status)
  end

  it("max_requests: 503 at once past it, a log line, a counter, and recovery", function()
    trip("req.test", "req", "overflow_requests")
    assert.matches("circuit breaker max_requests (2) open", proxy:stderr(), 1, true)
  end)

  it("max_connections: 503 at once past it, a log line, a counter, and recovery", function()
    trip("conn.test", "conn", "overflow_connections")
    assert.matches("circuit breaker max_connections (2) open", proxy:stderr(), 1, true)
  end)

  it("max_pending: a second request while one connect hangs gets 503 at once", function()
    local c1 = proxy:connect()
    local t0 = helpers.now()
    assert(c1:send("GET /echo HTTP/1.1\r\nHost: pend.test\r\n\r\n"))
    helpers.sleep(0.1)
    assert.equal(1, stats(proxy, "pend").pending)
    local res = get(proxy, "pend.test")
    helpers.assert_error(res, 503)
    assert.matches("circuit breaker max_pending (1) open", proxy:stderr(), 1, true)
    -- the upstream's timeouts.connect (0.6 s), not the global 5 s
    helpers.assert_error(assert(c1:response()), 504)
    assert.is_true(helpers.now() - t0 < 2, "the connect timed out after " .. (helpers.now() - t0) .. " s")
    c1:close()
    local s = stats(proxy, "pend")
    assert.equal(1, s.overflow_pending)
    assert.equal(0, s.pending)
  end)

  it("retries a POST whose connect failed: nothing went out", function()
    local res = get(proxy, "dead.test", "/echo", { method = "POST", body = "x" })
    helpers.assert_error(res, 502) -- one server: nowhere else to go
    assert.equal(0, stats(proxy, "dead").retries)
  end)
end)

describe("timeouts per upstream and per route", function()
  local slow, proxy

  lazy_setup(function()
    slow = helpers.origin({ name = "S", as_path = "/slow-head/1" })
    proxy = helpers.proxy(PRELUDE .. [[
local quick = mg.upstream "quick" { servers = { "${slow}" }, timeouts = { read = 0.3 } }
mg.route { host = "quick.test", upstream = quick }
local patient = mg.upstream "patient" { servers = { "${slow}" }, timeouts = { read = 10 } }
mg.route { host = "patient.test", upstream = patient }
mg.route { host = "hasty.test", upstream = patient, timeouts = { read = 0.3 } }
]], { vars = { slow = slow.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("the upstream's read timeout overrides the global one", function()
    local t0 = helpers.now()
    helpers.assert_error(get(proxy, "quick.test"), 504)
    assert.is_true(helpers.now() - t0 < 0.9)
  end)

  it("the route's read timeout overrides the upstream's", function()
    local t0 = helpers.now()
    helpers.assert_error(get(proxy, "hasty.test"), 504)
    assert.is_true(helpers.now() - t0 < 0.9)
    assert.equal(200, get(proxy, "patient.test").status) -- 1 s is within the upstream's 10
  end)
end)

describe("retry config", function()
  local refused = helpers.check_config

  it("refuses unknown conditions, keys and bad values with the key named", function()
    local cases = {
      { [[mg.upstream "u" { servers = { "127.0.0.1:9" }, retry = { on = { "gateway" } } }]], "on%[1%]" },
      { [[mg.upstream "u" { servers = { "127.0.0.1:9" }, retry = { tries = 0 } }]], "tries" },
      { [[mg.upstream "u" { servers = { "127.0.0.1:9" }, retry = { budget = 2 } }]], "budget" },
      { [[mg.upstream "u" { servers = { "127.0.0.1:9" }, retry = { wait = 1 } }]], "wait" },
      { [[mg.upstream "u" { servers = { "127.0.0.1:9" }, max_pending = 0 }]], "max_pending" },
      { [[mg.upstream "u" { servers = { "127.0.0.1:9" }, timeouts = { idle = 1 } }]], "idle" },
      { [[mg.upstream "u" { servers = { "127.0.0.1:9" }, retry = { backoff = { base = 1, max = 0.5 } } }]], "max" },
      { [[mg.route { upstream = mg.upstream "u" { servers = { "127.0.0.1:9" } }, idempotent = "yes" }]], "idempotent" },
    }
    for _, c in ipairs(cases) do
      local out, rc = refused(c[1])
      assert.is_true(rc ~= 0, "accepted: " .. c[1])
      assert.matches(c[2], out)
    end
  end)
end)
