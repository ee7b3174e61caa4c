-- mg.policy.rate_limit (issue 14, docs/policies.md "rate_limit"), through the real
-- binary with 2 workers. The composition runner (mg.use / route `use`) is not on
-- this branch: each route calls the policy object from its own hooks, as the
-- runner will.
local helpers = require "spec.helpers"
local socket = require "socket"

local CONF = [[
local mg = require "moongate"
mg.config { workers = 2, access_log = false, shared = { tiny = "16k" } }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
local rate_limit = require "moongate.policy.rate_limit"

local function on(p)
  return {
    request = function(req) p:request(req) end,
    response = function(req, res) p:response(req, res) end,
  }
end

-- the minimal form of the issue
local minimal = rate_limit { limit = 10, window = 1, key = "ip" }
mg.route { path = "/minimal", upstream = o, on = on(minimal) }

mg.route { path = "/sliding", upstream = o,
  on = on(rate_limit { limit = 5, window = 60, key = "header:X-User", name = "per-user" }) }
mg.route { path = "/fixed", upstream = o,
  on = on(rate_limit { limit = 3, window = 60, key = "header:X-User", algorithm = "fixed" }) }
mg.route { path = "/bucket", upstream = o,
  on = on(rate_limit { limit = 2, window = 1, burst = 3, key = "header:X-User", algorithm = "token_bucket" }) }
mg.route { path = "/fn", upstream = o,
  on = on(rate_limit { limit = 1, window = 60, algorithm = "fixed", status = 503,
                       key = function(req) if req:header("X-Free") then return nil end return "all" end }) }

-- consumers: the request hook plays key_auth (sets req.ctx.consumer), then the limit
local by_consumer = rate_limit { limit = 2, window = 60, key = "consumer", algorithm = "fixed" }
mg.route { path = "/consumer", upstream = o, on = {
  request = function(req)
    local who = req:header("X-Consumer")
    if who then req.ctx.consumer = { name = who, source = "test" } end
    by_consumer:request(req)
  end,
  response = function(req, res) by_consumer:response(req, res) end,
} }

-- two policies stacked: both RateLimit lines on the answer
local a = rate_limit { limit = 100, window = 60, key = "header:X-User", name = "permin", algorithm = "fixed" }
local b = rate_limit { limit = 1000, window = 3600, key = "header:X-User", name = "perhr", algorithm = "fixed" }
mg.route { path = "/stacked", upstream = o, on = {
  request = function(req) a:request(req); if not req._answered then b:request(req) end end,
  response = function(req, res) a:response(req, res); b:response(req, res) end,
} }

-- a dictionary too small for the key: let through, logged
mg.route { path = "/tiny", upstream = o,
  on = on(rate_limit { limit = 1, window = 60, shared = "tiny", key = "header:X-Big", algorithm = "fixed" }) }
mg.route { path = "/tinyb", upstream = o,
  on = on(rate_limit { limit = 1, window = 60, shared = "tiny", key = "header:X-Big", algorithm = "token_bucket" }) }

-- exactness under load: a counter per path (one per run of the spec)
mg.route { path = "/exact/", upstream = o,
  on = on(rate_limit { limit = 200, window = 60, algorithm = "fixed", key = function(req) return req.path end }) }
mg.route { path = "/exactb/", upstream = o,
  on = on(rate_limit { limit = 1, window = 3600, burst = 150, algorithm = "token_bucket",
                       key = function(req) return req.path end }) }
]]

describe("rate_limit policy", function()
  local origin, proxy
  setup(function()
    origin = helpers.origin()
    proxy = helpers.proxy(CONF, { vars = { origin = origin.addr } })
  end)
  teardown(function()
    helpers.teardown(proxy)
    if origin then origin:stop() end
  end)

  local function get(path, headers)
    return assert(proxy:request({ path = path, headers = headers }))
  end

  it("the minimal form: limit 10 a second by IP, with RateLimit headers on allowed answers", function()
    -- start right after a second boundary of the server's clock would be ideal; instead
    -- send 30 requests at once: whatever the window split, at most 2 x 10 pass
    local ok, refused, first = 0, 0
    for i = 1, 30 do
      local res = get("/minimal")
      if i == 1 then first = res end
      if res.status == 200 then ok = ok + 1 else
        assert.equal(429, res.status)
        refused = refused + 1
      end
    end
    assert.is_true(ok >= 10 and ok <= 20, "allowed " .. ok)
    assert.is_true(refused >= 10, "refused " .. refused)
    if first.status == 200 then
      assert.equal('"default";q=10;w=1', first.h["ratelimit-policy"])
      assert.matches('^"default";r=%d+;t=1$', first.h["ratelimit"])
    end
  end)

  it("sliding: the 6th request of a user in the window gets 429 with Retry-After and the draft's headers", function()
    local user = "u" .. math.random(1e9)
    for i = 1, 5 do
      local res = get("/sliding", { ["X-User"] = user })
      assert.equal(200, res.status)
      assert.equal('"per-user";q=5;w=60', res.h["ratelimit-policy"])
      local r, t = res.h["ratelimit"]:match('^"per%-user";r=(%d+);t=(%d+)$')
      assert.equal(5 - i, tonumber(r), res.h["ratelimit"])
      assert.is_true(tonumber(t) >= 1 and tonumber(t) <= 60)
    end
    local res = get("/sliding", { ["X-User"] = user })
    assert.equal(429, res.status)
    assert.equal("Too Many Requests\n", res.body)
    local retry = tonumber(res.h["retry-after"])
    assert.is_true(retry >= 1 and retry <= 120, tostring(res.h["retry-after"]))
    assert.equal('"per-user";q=5;w=60', res.h["ratelimit-policy"])
    assert.matches('^"per%-user";r=0;t=%d+$', res.h["ratelimit"])
    -- another user has a counter of their own
    assert.equal(200, get("/sliding", { ["X-User"] = user .. "x" }).status)
    -- without the header: keyed by address, not refused by the user's counter
    assert.equal(200, get("/sliding").status)
  end)

  it("fixed: exactly `limit` per window; Retry-After is the time left in the window", function()
    local user = "f" .. math.random(1e9)
    local codes = {}
    for i = 1, 5 do codes[i] = get("/fixed", { ["X-User"] = user }).status end
    -- a window boundary between the requests would let a 4th through: see t
    assert.same({ 200, 200, 200, 429, 429 }, codes)
    local res = get("/fixed", { ["X-User"] = user })
    local t = tonumber(res.h["ratelimit"]:match(";t=(%d+)$"))
    assert.equal(t, tonumber(res.h["retry-after"]))
    assert.is_true(t >= 1 and t <= 60)
  end)

  it("token bucket: burst at once, then one token per interval", function()
    local user = "b" .. math.random(1e9)
    for i = 1, 3 do
      local res = get("/bucket", { ["X-User"] = user })
      assert.equal(200, res.status, "request " .. i)
      assert.equal('"default";q=3;w=1', res.h["ratelimit-policy"])
      assert.matches('^"default";r=' .. (3 - i) .. ';t=%d+$', res.h["ratelimit"])
    end
    local res = get("/bucket", { ["X-User"] = user })
    assert.equal(429, res.status)
    assert.equal("1", res.h["retry-after"]) -- 0.5 s to the next token, rounded up
    socket.sleep(0.6)
    assert.equal(200, get("/bucket", { ["X-User"] = user }).status)
    assert.equal(429, get("/bucket", { ["X-User"] = user }).status)
  end)

  it("a key function: nil exempts the request; status is configurable", function()
    local first = get("/fn").status
    assert.is_true(first == 200 or first == 503)
    assert.equal(503, get("/fn").status)
    assert.equal(200, get("/fn", { ["X-Free"] = "1" }).status)
    assert.equal(200, get("/fn", { ["X-Free"] = "1" }).status)
  end)

  it("key = consumer: per consumer name, falling back to the address", function()
    local c = "c" .. math.random(1e9)
    assert.equal(200, get("/consumer", { ["X-Consumer"] = c }).status)
    assert.equal(200, get("/consumer", { ["X-Consumer"] = c }).status)
    assert.equal(429, get("/consumer", { ["X-Consumer"] = c }).status)
    assert.equal(200, get("/consumer", { ["X-Consumer"] = c .. "2" }).status)
  end)

  it("two policies: one RateLimit-Policy and one RateLimit line each", function()
    local res = get("/stacked", { ["X-User"] = "s" .. math.random(1e9) })
    assert.equal(200, res.status)
    assert.equal('"permin";q=100;w=60, "perhr";q=1000;w=3600', res.h["ratelimit-policy"])
    assert.matches('^"permin";r=99;t=%d+, "perhr";r=999;t=%d+$', res.h["ratelimit"])
  end)

  it("a shared dictionary failure lets the request through and logs why", function()
    local big = string.rep("b", 6000) -- more than one shard of a 16k dictionary holds
    for _, path in ipairs({ "/tiny", "/tinyb" }) do
      for _ = 1, 3 do
        local res = get(path, { ["X-Big"] = big })
        assert.equal(200, res.status, path)
        assert.is_nil(res.h["ratelimit"])
      end
    end
    assert.truthy(helpers.wait_until(function()
      return helpers.count(proxy:stderr(), "rate_limit: shared dictionary 'tiny': too big (request let through)") >= 6
    end, 5), proxy:stderr():sub(-2000))
  end)

  -- wrk on 8 connections over both workers for 2 s: the origin sees exactly the limit
  local function run_exact(prefix, want)
    local path
    for _ = 1, 3 do
      path = prefix .. math.random(1e9)
      local res = get(path)
      local t = tonumber((res.h["ratelimit"] or ""):match(";t=(%d+)$"))
      if t and t >= 10 then break end
      socket.sleep((t or 0) + 0.2) -- too close to the end of a window: next one
    end
    local out = helpers.wrk("-t2 -c8 -d2s " .. proxy:url(path))
    local total = tonumber(out:match("(%d+) requests in"))
    local non2xx = tonumber(out:match("Non%-2xx or 3xx responses: (%d+)")) or 0
    assert.is_true(total and total > want + 100, "too few requests to test: " .. out)
    assert.equal(want, origin:count_path(path), out)
    assert.equal(total + 1 - want, non2xx, out)
  end

  it("fixed window is exact across 2 workers under concurrent load (200 of thousands)", function()
    run_exact("/exact/", 200)
  end)

  it("token bucket is exact across 2 workers under concurrent load (burst 150)", function()
    run_exact("/exactb/", 150)
  end)
end)

describe("rate_limit config errors", function()
  local function load_error(cfg, extra)
    local dir = helpers.scratch()
    local path = dir .. "/bad.lua"
    helpers.write_file(path, 'local mg = require "moongate"\nmg.listen { "127.0.0.1:1" }\n'
      .. (extra or "") .. cfg .. "\n")
    local out, rc = helpers.moongate({ "-t", "-c", path })
    assert.is_not.equal(0, rc)
    return out
  end
  local RL = 'require("moongate.policy.rate_limit") '

  it("names the user's file and line", function()
    assert.matches("bad.lua:3: mg.policy.rate_limit: unknown key 'limt'",
      load_error(RL .. "{ limt = 10 }"), 1, true)
    assert.matches("bad.lua:3: mg.policy.rate_limit: 'limit' is required",
      load_error(RL .. "{ window = 10 }"), 1, true)
    assert.matches("bad.lua:3: mg.policy.rate_limit: 'algorithm' must be",
      load_error(RL .. '{ limit = 1, algorithm = "leaky" }'), 1, true)
    assert.matches("bad.lua:3: mg.policy.rate_limit: 'key' must be",
      load_error(RL .. '{ limit = 1, key = "cookie:x" }'), 1, true)
    assert.matches("bad.lua:3: mg.policy.rate_limit: 'burst' is for algorithm",
      load_error(RL .. '{ limit = 1, burst = 5 }'), 1, true)
    assert.matches("bad.lua:3: mg.policy.rate_limit: 'limit' must be a whole number",
      load_error(RL .. '{ limit = 1.5 }'), 1, true)
    assert.matches("bad.lua:3: mg.policy.rate_limit: no shared dictionary 'rl'",
      load_error(RL .. '{ limit = 1, shared = "rl" }'), 1, true)
    assert.matches("bad.lua:4: mg.policy.rate_limit: 'window' out of range",
      load_error(RL .. '{ limit = 1, shared = "rl", window = 0 }', 'mg.config { shared = { rl = "1m" } }\n'), 1, true)
  end)
end)
