-- mg.policy.rate_limit { redis = { ... } } (issue 14, docs/policies.md "rate_limit"):
-- cluster-wide limits. TWO moongate instances (2 workers each) share one real
-- redis-server on a free loopback port (with a password; the counters in db 3),
-- started here and stopped by PID. Under concurrent load from wrk against both
-- instances, the requests let through in a window are counted at the origin.
-- Then the failure modes: redis stopped, redis silent (accepts, never answers),
-- scripts flushed; and the config errors.
local helpers = require "spec.helpers"
local t = require "moongate.testing"
local socket = require "socket"

local PASSWORD = "s3cret-rl"

local CONF = [[
local mg = require "moongate"
mg.config { workers = 2, access_log = "access.log" }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
local R = { port = ${redis}, password = "${password}", db = 3, timeout = 0.5 }
local function path_key(req) return req.path end
mg.route { path = "/worker", respond = function() return 200, tostring(mg.worker_id()) end }
-- the load: a counter per path (one per run); 200 per 2 s window
mg.route { path = "/load/fixed/", upstream = o, use = { mg.policy.rate_limit {
  limit = 200, window = 2, algorithm = "fixed", key = path_key, name = "lf", redis = R } } }
mg.route { path = "/load/sliding/", upstream = o, use = { mg.policy.rate_limit {
  limit = 200, window = 2, algorithm = "sliding", key = path_key, name = "ls", redis = R } } }
mg.route { path = "/load/bucket/", upstream = o, use = { mg.policy.rate_limit {
  limit = 1, window = 3600, burst = 200, algorithm = "token_bucket", key = path_key, name = "lb", redis = R } } }
-- answers and headers, per user
mg.route { path = "/fixed", upstream = o, use = { mg.policy.rate_limit {
  limit = 3, window = 60, algorithm = "fixed", key = "header:X-User", name = "hf", redis = R } } }
mg.route { path = "/sliding", upstream = o, use = { mg.policy.rate_limit {
  limit = 5, window = 60, key = "header:X-User", name = "hs", redis = R } } }
mg.route { path = "/bucket", upstream = o, use = { mg.policy.rate_limit {
  limit = 2, window = 1, burst = 3, algorithm = "token_bucket", key = "header:X-User", name = "hb", redis = R } } }
]]

-- a wrk script: each thread stops after `n` answers (with -d, bounded in count and time)
local function stop_after(n)
  local path = helpers.scratch() .. "/stop" .. n .. ".lua"
  helpers.write_file(path, "local n = 0\nfunction response()\n  n = n + 1\n"
    .. "  if n >= " .. n .. " then wrk.thread:stop() end\nend\n")
  return path
end

describe("rate_limit through redis, two instances", function()
  local origin, a, b, srv, srv_err

  lazy_setup(function()
    srv, srv_err = t.redis { password = PASSWORD }
    if not srv then return end
    origin = helpers.origin()
    local vars = { origin = origin.addr, redis = srv.port, password = PASSWORD }
    a = helpers.proxy(CONF, { vars = vars })
    b = helpers.proxy(CONF, { vars = vars })
  end)

  lazy_teardown(function()
    helpers.teardown(a, b)
    if origin then origin:stop() end
    if srv then srv:stop() end
  end)

  before_each(function()
    if not srv then pending(srv_err) end
  end)

  local function get(p, path, user)
    return assert(p:request({ path = path, headers = user and { ["X-User"] = user } }))
  end

  local function redis_keys(pattern)
    local v = assert(srv:command("EVAL", "redis.call('SELECT', 3) return redis.call('KEYS', ARGV[1])", 0, pattern))
    table.sort(v)
    return v
  end

  -- redis's clock, in seconds
  local function redis_now()
    local tm = assert(srv:command("TIME"))
    return tonumber(tm[1]) + tonumber(tm[2]) / 1e6
  end

  it("one counter for both instances: fixed, 3 per minute per user, alternating A and B", function()
    local user = "u" .. math.random(1e9)
    local codes, left = {}, {}
    for i = 1, 5 do
      local res = get(i % 2 == 1 and a or b, "/fixed", user)
      codes[i] = res.status
      left[i] = res.h["ratelimit"]
      if i <= 3 then
        assert.equal('"hf";q=3;w=60', res.h["ratelimit-policy"])
      end
    end
    if codes[4] == 200 then -- a minute boundary of redis's clock fell between: once more
      return pending("a window boundary fell inside the test")
    end
    assert.same({ 200, 200, 200, 429, 429 }, codes)
    for i = 1, 3 do assert.matches('^"hf";r=' .. (3 - i) .. ';t=%d+$', left[i]) end
    local res = get(a, "/fixed", user)
    assert.equal(429, res.status)
    assert.equal("Too Many Requests\n", res.body)
    local t_left = tonumber(res.h["ratelimit"]:match('^"hf";r=0;t=(%d+)$'))
    assert.is_true(t_left >= 1 and t_left <= 60)
    assert.equal(t_left, tonumber(res.h["retry-after"]))
    -- the counter lives in redis, db 3, under the prefix, the name and the key
    local keys = redis_keys("mg:rl:{hf:h:" .. user .. "}:f:*")
    assert.equal(1, #keys)
    local idx = tonumber(keys[1]:match(":f:(%d+)$"))
    assert.truthy(idx)
    local now_idx = math.floor(redis_now() / 60) -- the window of redis's clock
    assert.is_true(idx == now_idx or idx == now_idx - 1, idx .. " " .. now_idx)
  end)

  it("sliding: the 6th request of a user over A and B gets 429 with Retry-After", function()
    local user = "s" .. math.random(1e9)
    for i = 1, 5 do
      local res = get(i % 2 == 1 and a or b, "/sliding", user)
      assert.equal(200, res.status, "request " .. i)
      assert.equal('"hs";q=5;w=60', res.h["ratelimit-policy"])
      local r, tt = res.h["ratelimit"]:match('^"hs";r=(%d+);t=(%d+)$')
      assert.equal(5 - i, tonumber(r), res.h["ratelimit"])
      assert.is_true(tonumber(tt) >= 1 and tonumber(tt) <= 60)
    end
    local res = get(b, "/sliding", user)
    assert.equal(429, res.status)
    local retry = tonumber(res.h["retry-after"])
    assert.is_true(retry >= 1 and retry <= 120, tostring(res.h["retry-after"]))
    assert.matches('^"hs";r=0;t=%d+$', res.h["ratelimit"])
    -- a refused request is not counted: the counter holds 5
    local keys = redis_keys("mg:rl:{hs:h:" .. user .. "}:s:*")
    local total = 0
    for _, k in ipairs(keys) do
      total = total + tonumber(srv:command("EVAL", "redis.call('SELECT', 3) return redis.call('GET', KEYS[1])", 1, k))
    end
    assert.equal(5, total)
    assert.equal(200, get(a, "/sliding", user .. "x").status)
  end)

  it("token bucket: burst 3 over A and B, then one token per half second (redis's clock)", function()
    local user = "b" .. math.random(1e9)
    for i = 1, 3 do
      local res = get(i == 2 and b or a, "/bucket", user)
      assert.equal(200, res.status, "request " .. i)
      assert.equal('"hb";q=3;w=1', res.h["ratelimit-policy"])
      assert.matches('^"hb";r=' .. (3 - i) .. ';t=%d+$', res.h["ratelimit"])
    end
    local res = get(b, "/bucket", user)
    assert.equal(429, res.status)
    assert.equal("1", res.h["retry-after"]) -- under 0.5 s to the next token, rounded up
    assert.equal('"hb";r=0;t=1', res.h["ratelimit"])
    socket.sleep(0.6)
    assert.equal(200, get(a, "/bucket", user).status)
    assert.equal(429, get(b, "/bucket", user).status)
    local ttl = srv:command("EVAL", "redis.call('SELECT', 3) return redis.call('PTTL', KEYS[1])", 1,
      "mg:rl:{hb:h:" .. user .. "}:b")
    assert.is_true(ttl > 1000 and ttl <= 3000, tostring(ttl))
  end)

  -- wrk against both instances at once (8 connections each, each thread stops
  -- after 250 answers: 1000 requests at most, within 1 s), starting early in a
  -- 2 s window of redis's clock when `align`; returns what the origin saw
  local function load(prefix, align)
    local path = prefix .. math.random(1e9)
    local before
    if align then
      local into = redis_now() % 2
      if into > 0.3 then socket.sleep(2 - into + 0.05) end
      before = math.floor(redis_now() / 2)
    end
    local script = stop_after(250)
    -- (with the busted process's descriptors closed: helpers.sh_fds)
    local out = helpers.sh_fds("wrk -t2 -c8 -d1s -s " .. script .. " " .. a:url(path) .. " > " .. helpers.scratch() .. "/wa.out 2>&1 &"
      .. " wrk -t2 -c8 -d1s -s " .. script .. " " .. b:url(path) .. " > " .. helpers.scratch() .. "/wb.out 2>&1; wait")
    -- the load stayed in one window of redis's clock?
    local one_window = not align or math.floor(redis_now() / 2) == before
    local total, refused = 0, 0
    for _, f in ipairs({ "wa", "wb" }) do
      local o = helpers.read_file(helpers.scratch() .. "/" .. f .. ".out") or ""
      local n = tonumber(o:match("(%d+) requests in"))
      assert.truthy(n, out .. o)
      assert.is_true(n > 0, "no requests through instance " .. f .. ": " .. o)
      total = total + n
      refused = refused + (tonumber(o:match("Non%-2xx or 3xx responses: (%d+)")) or 0)
    end
    local allowed = origin:count_path(path)
    return allowed, total, refused, one_window
  end

  local function check_window(name, allowed, total, refused, one_window)
    print(("\n[redis rate_limit] %s: %d allowed of %d requests over 2 instances x 2 workers (%d refused)")
      :format(name, allowed, total, refused))
    assert.is_true(total > 300, "too few requests to test: " .. total)
    if not one_window then
      return pending("the load ran past the end of the window (slow machine): " .. allowed .. " allowed")
    end
    assert.equal(total - allowed, refused)
  end

  it("fixed window: exactly 200 in a window under concurrent load on both instances", function()
    local allowed, total, refused, one_window = load("/load/fixed/", true)
    check_window("fixed", allowed, total, refused, one_window)
    assert.equal(200, allowed)
  end)

  it("sliding window: exactly 200 on a fresh key in a window under concurrent load", function()
    local allowed, total, refused, one_window = load("/load/sliding/", true)
    check_window("sliding", allowed, total, refused, one_window)
    assert.equal(200, allowed)
  end)

  it("token bucket: exactly the burst (200) under concurrent load on both instances", function()
    local allowed, total, refused = load("/load/bucket/", false)
    check_window("token_bucket", allowed, total, refused, true)
    assert.equal(200, allowed)
  end)

  it("one round trip per request on a pooled connection: EVALSHA only, no new connections", function()
    -- warm every worker of both instances (each loads the scripts once: EVAL + SCRIPT LOAD)
    local conns = {}
    for _, p in ipairs({ a, b }) do
      for _, c in ipairs(helpers.spread_clients(p.port, 2, "/worker")) do
        for _, path in ipairs({ "/fixed", "/sliding", "/bucket" }) do
          assert(c:request({ path = path, headers = { ["X-User"] = "warm" .. math.random(1e9) } }))
        end
        conns[#conns + 1] = c
      end
    end
    local function stat(section, pattern)
      return tonumber((assert(srv:command("INFO", section)):match(pattern))) or 0
    end
    local sha0 = stat("commandstats", "cmdstat_evalsha:calls=(%d+)")
    local eval0 = stat("commandstats", "cmdstat_eval:calls=(%d+)")
    local conn0 = stat("stats", "total_connections_received:(%d+)")
    local n = 0
    for round = 1, 5 do
      for _, c in ipairs(conns) do
        for _, path in ipairs({ "/fixed", "/sliding", "/bucket" }) do
          local res = assert(c:request({ path = path, headers = { ["X-User"] = "rt" .. round .. path } }))
          assert.is_true(res.status == 200 or res.status == 429)
          n = n + 1
        end
      end
    end
    helpers.close_all(conns)
    -- no connection opened by moongate: the one more is this INFO's own
    assert.equal(conn0 + 1, stat("stats", "total_connections_received:(%d+)"))
    assert.equal(sha0 + n, stat("commandstats", "cmdstat_evalsha:calls=(%d+)"))
    assert.equal(eval0, stat("commandstats", "cmdstat_eval:calls=(%d+)"))
  end)

  it("the scripts flushed on the server (SCRIPT FLUSH): NOSCRIPT falls back to EVAL", function()
    local user = "n" .. math.random(1e9)
    assert.equal(200, get(a, "/fixed", user).status)
    assert.equal("OK", srv:command("SCRIPT", "FLUSH"))
    local res = get(a, "/fixed", user)
    assert.equal(200, res.status)
    assert.matches('^"hf";r=1;t=%d+$', res.h["ratelimit"])
    assert.equal(200, get(b, "/fixed", user).status)
    assert.equal(429, get(a, "/fixed", user).status)
  end)

  it("moongate -T shows the redis server and the failure mode", function()
    local out, rc = helpers.moongate({ "-T", "-c", a.conf })
    assert.equal(0, rc, out)
    assert.matches("limit=3 window=60s key=header:X-User algorithm=fixed redis=127.0.0.1:"
      .. srv.port .. " fail=open", out, 1, true)
  end)
end)

local FAIL_CONF = [[
local mg = require "moongate"
mg.config { workers = 2, access_log = "access.log" }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
local function rl(name, port, mode, timeout)
  return mg.policy.rate_limit { limit = 1, window = 60, algorithm = "fixed", key = "header:X-User",
    name = name, redis = { port = port, fail = mode, timeout = timeout } }
end
mg.route { path = "/worker", respond = function() return 200, tostring(mg.worker_id()) end }
mg.route { path = "/open", upstream = o, use = { rl("down-open", ${redis}, "open") } }
mg.route { path = "/closed", upstream = o, use = { rl("down-closed", ${redis}, "closed") } }
mg.route { path = "/slow-open", upstream = o, use = { rl("slow-open", ${silent}, "open", 0.05) } }
mg.route { path = "/slow-closed", upstream = o, use = { rl("slow-closed", ${silent}, "closed", 0.05) } }
-- the hook budget is shorter than the redis timeout: it wins (504), whatever the mode
mg.route { path = "/slow-budget", upstream = o, timeouts = { hook = 0.2 },
  use = { rl("slow-budget", ${silent}, "open", 5) } }
mg.route { path = "/slow-503", upstream = o, use = { mg.policy.rate_limit { limit = 1, window = 60,
  name = "slow-503", redis = { port = ${silent}, fail = "closed", fail_status = 503, timeout = 0.05 } } } }
]]

describe("rate_limit through redis, failures", function()
  local origin, proxy, srv, srv_err, silent, silent_port

  lazy_setup(function()
    srv, srv_err = t.redis()
    if not srv then return end
    origin = helpers.origin()
    -- a server that accepts (the kernel completes the handshake into the backlog)
    -- and never answers
    silent = assert(socket.bind("127.0.0.1", 0))
    silent_port = select(2, silent:getsockname())
    proxy = helpers.proxy(FAIL_CONF, { vars = { origin = origin.addr, redis = srv.port, silent = silent_port } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
    if origin then origin:stop() end
    if srv then srv:stop() end
    if silent then silent:close() end
  end)

  before_each(function()
    if not srv then pending(srv_err) end
  end)

  local function lines_with(s)
    return helpers.count(proxy:stderr(), s)
  end

  local function log_line(path)
    local found
    helpers.wait_until(function()
      for l in helpers.lines(helpers.read_file(proxy.dir .. "/access.log") or "") do
        if l:find('"' .. path, 1, true) then found = l end
      end
      return found
    end, 3)
    return found
  end

  it("redis stopped: fail open lets requests through, fail closed answers 500; one log line a second", function()
    -- while redis runs, both limit
    for _, path in ipairs({ "/open", "/closed" }) do
      assert.equal(200, assert(proxy:request({ path = path, headers = { ["X-User"] = "x" } })).status)
      assert.equal(429, assert(proxy:request({ path = path, headers = { ["X-User"] = "x" } })).status)
    end
    srv:stop()
    local c = proxy:connect() -- one connection: one worker
    local t0 = helpers.now()
    for _ = 1, 20 do
      local res = assert(c:request({ path = "/open", headers = { ["X-User"] = "x" } }))
      assert.equal(200, res.status)
      assert.is_nil(res.h["ratelimit"])
    end
    for _ = 1, 20 do
      local res = assert(c:request({ path = "/closed", headers = { ["X-User"] = "x" } }))
      assert.equal(500, res.status)
      assert.equal("Rate limit unavailable\n", res.body)
      assert.is_nil(res.h["retry-after"])
    end
    local elapsed = helpers.now() - t0
    local open_line = 'rate_limit "down-open": redis 127.0.0.1:' .. srv.port
      .. ': connection refused (request let through)'
    local closed_line = 'rate_limit "down-closed": redis 127.0.0.1:' .. srv.port
      .. ': connection refused (request refused with 500)'
    assert.truthy(helpers.wait_until(function()
      return lines_with(open_line) >= 1 and lines_with(closed_line) >= 1
    end, 3), proxy:stderr():sub(-2000))
    -- 20 failures each, on one worker: at most one line a second of each
    assert.is_true(lines_with(open_line) <= math.ceil(elapsed) + 1, proxy:stderr():sub(-2000))
    assert.is_true(lines_with(closed_line) <= math.ceil(elapsed) + 1, proxy:stderr():sub(-2000))
    -- a second later, the next line counts the ones skipped
    socket.sleep(1.05)
    assert.equal(200, assert(c:request({ path = "/open", headers = { ["X-User"] = "x" } })).status)
    c:close()
    assert.truthy(helpers.wait_until(function()
      -- 20 requests of /open within the first second: the first logged, 19 counted
      local skipped = elapsed < 1 and " (19 more since the last line)" or " more since the last line)"
      return proxy:stderr():find(elapsed < 1 and open_line .. skipped or skipped, 1, true)
    end, 3), proxy:stderr():sub(-2000))
    local line = log_line("/closed")
    assert.truthy(line and line:find('"policy":"rate_limit"', 1, true), line)
    assert.truthy(line:find('"status":500', 1, true), line)
  end)

  it("redis back on the same port (restarted, empty, no scripts): limits again at once", function()
    assert.equal(200, assert(proxy:request({ path = "/open", headers = { ["X-User"] = "w" } })).status)
    -- after the previous case redis is down: start one by hand on its port, stop it by PID
    local pid = helpers.spawn({ "redis-server", "--port", tostring(srv.port), "--bind", "127.0.0.1",
      "--save", "", "--appendonly", "no", "--dir", helpers.scratch() }, { label = "redis-again" })
    local ok, err = pcall(function()
      assert.truthy(helpers.wait_until(function() return helpers.port_open(srv.port) end, 5))
      local c = proxy:connect()
      local res = assert(c:request({ path = "/open", headers = { ["X-User"] = "w" } }))
      assert.equal(200, res.status)
      assert.matches('^"down%-open";r=0;t=%d+$', res.h["ratelimit"])
      assert.equal(429, assert(c:request({ path = "/open", headers = { ["X-User"] = "w" } })).status)
      c:close()
    end)
    helpers.terminate(pid, 5)
    assert(ok, err)
  end)

  it("redis silent (accepts, never answers): the 50 ms timeout applies, then the failure mode", function()
    local c = proxy:connect()
    local t0 = helpers.now()
    local res = assert(c:request({ path = "/slow-open", headers = { ["X-User"] = "y" } }))
    local took = helpers.now() - t0
    assert.equal(200, res.status)
    assert.is_true(took >= 0.04 and took < 0.5, "took " .. took)
    t0 = helpers.now()
    res = assert(c:request({ path = "/slow-closed", headers = { ["X-User"] = "y" } }))
    took = helpers.now() - t0
    assert.equal(500, res.status)
    assert.is_true(took >= 0.04 and took < 0.5, "took " .. took)
    res = assert(c:request({ path = "/slow-503" }))
    assert.equal(503, res.status)
    c:close()
    assert.truthy(helpers.wait_until(function()
      return lines_with('rate_limit "slow-open": redis 127.0.0.1:' .. silent_port .. ': timeout (request let through)') >= 1
        and lines_with('rate_limit "slow-closed": redis 127.0.0.1:' .. silent_port .. ': timeout (request refused with 500)') >= 1
    end, 3), proxy:stderr():sub(-2000))
  end)

  it("redis silent with a 5 s timeout on a route whose hook budget is 0.2 s: 504 at 0.2 s", function()
    local c = proxy:connect()
    local t0 = helpers.now()
    local res = assert(c:request({ path = "/slow-budget", headers = { ["X-User"] = "z" } }))
    local took = helpers.now() - t0
    c:close()
    assert.equal(504, res.status)
    assert.is_true(took >= 0.15 and took < 2, "took " .. took)
    assert.truthy(helpers.wait_until(function()
      return lines_with("request hook still waiting after timeouts.hook") >= 1
    end, 3), proxy:stderr():sub(-2000))
  end)
end)

describe("rate_limit redis config errors", function()
  local function load_error(cfg)
    local dir = helpers.scratch()
    local path = dir .. "/bad.lua"
    helpers.write_file(path, 'local mg = require "moongate"\nmg.listen { "127.0.0.1:1" }\n' .. cfg .. "\n")
    local out, rc = helpers.moongate({ "-t", "-c", path })
    assert.is_not.equal(0, rc)
    return out
  end
  local RL = "mg.policy.rate_limit { limit = 1, "

  it("names the user's file and line", function()
    local cases = {
      { 'redis = { hots = "x" } }', "bad.lua:3: mg.policy.rate_limit: redis: unknown key 'hots'" },
      { 'redis = "redis://127.0.0.1" }', "bad.lua:3: mg.policy.rate_limit: 'redis' must be a table" },
      { 'redis = { fail = "maybe" } }', "bad.lua:3: mg.policy.rate_limit: redis: 'fail' must be \"open\" or \"closed\", got maybe" },
      { 'redis = { port = 70000 } }', "bad.lua:3: mg.policy.rate_limit: redis: 'port' out of range (70000)" },
      { 'redis = { port = 63.5 } }', "bad.lua:3: mg.policy.rate_limit: redis: 'port' must be a whole number" },
      { 'redis = { timeout = 0 } }', "bad.lua:3: mg.policy.rate_limit: redis: 'timeout' out of range (0)" },
      { 'redis = { db = -1 } }', "bad.lua:3: mg.policy.rate_limit: redis: 'db' out of range (-1)" },
      { 'redis = { password = 7 } }', "bad.lua:3: mg.policy.rate_limit: redis: 'password' must be a string, got number" },
      { 'redis = { prefix = false } }', "bad.lua:3: mg.policy.rate_limit: redis: 'prefix' must be a string, got boolean" },
      { 'redis = { fail_status = 503 } }', "bad.lua:3: mg.policy.rate_limit: redis: 'fail_status' is for fail = \"closed\"" },
      { 'redis = { fail = "closed", fail_status = 429 } }', "bad.lua:3: mg.policy.rate_limit: redis: 'fail_status' out of range (429)" },
      { 'redis = { host = "" } }', "bad.lua:3: mg.policy.rate_limit: redis: 'host' must be a host name or an address" },
      { 'shared = "x", redis = {} }', "bad.lua:3: mg.policy.rate_limit: 'shared' and 'redis' exclude each other" },
    }
    for _, case in ipairs(cases) do
      assert.matches(case[2], load_error(RL .. case[1]), 1, true)
    end
  end)
end)
