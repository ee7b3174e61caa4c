-- The Lua scripts of rate_limit's Redis backend (lua/moongate/private/rate_limit_redis.lua)
-- run by a real redis-server (moongate.testing's t.redis), sent with EVAL through the
-- testing module's own RESP client: their arithmetic where the integration spec
-- cannot steer the clock (the sliding window's weighted previous count, the retry
-- times, the TTLs). Plain busted: no moongate binary.
local t = require "moongate.testing"
local backend = require "moongate.private.rate_limit_redis"

describe("rate_limit redis scripts", function()
  local srv, srv_err

  lazy_setup(function() srv, srv_err = t.redis() end)
  lazy_teardown(function() t.stop_all() end)
  before_each(function()
    if not srv then pending(srv_err) end
  end)

  local function now_us()
    local tm = assert(srv:command("TIME"))
    return tonumber(tm[1]) * 1e6 + tonumber(tm[2])
  end

  local function run(algorithm, key, args)
    local a = args
    local cmd = { "EVAL", backend.scripts[algorithm], 1, key }
    for i = 1, #a do cmd[#cmd + 1] = a[i] end
    return assert(srv:command(unpack(cmd)))
  end

  it("names keys by prefix, name, key and algorithm, in one hash tag", function()
    local rc = backend.config({ prefix = "p:" }, "test")
    assert.equal("p:{api:h:alice}:f", backend.key(rc, "api", "fixed", "h:alice"))
    assert.equal("p:{api:h:alice}:s", backend.key(rc, "api", "sliding", "h:alice"))
    assert.equal("p:{api:h:alice}:b", backend.key(rc, "api", "token_bucket", "h:alice"))
    assert.same({ 2000000, 200, 3000 }, backend.args("fixed", 2, 200))
    assert.same({ 2000000, 200, 5000 }, backend.args("sliding", 2, 200))
    assert.same({ "333333.33333333331", 3 }, backend.args("token_bucket", 1, 3, 3))
  end)

  it("fixed: counts to the limit, then refuses with the time left in the window; TTL window + 1 s", function()
    local key = "t:f" .. math.random(1e9)
    local args = backend.args("fixed", 1000, 3)
    local t0 = now_us()
    for i = 1, 3 do
      local r = run("fixed", key, args)
      assert.equal(1, r[1])
      assert.equal(3 - i, r[2])
    end
    local r = run("fixed", key, args)
    assert.equal(0, r[1])
    assert.equal(r[3], r[4])
    local idx = math.floor(t0 / 1e9)
    local left = (idx + 1) * 1e9 - t0
    assert.is_true(math.abs(r[3] - left) < 1e6, r[3] .. " vs " .. left) -- within a second of the test's own reading
    local pttl = srv:command("PTTL", key .. ":" .. idx)
    assert.is_true(pttl > 1000000 and pttl <= 1001000, tostring(pttl))
  end)

  it("sliding: the previous window's count weighs by its overlap; retry when one more fits", function()
    local key = "t:s" .. math.random(1e9)
    local w, limit, p = 1000e6, 100, 100 -- a window of 1000 s: the weight barely moves during the test
    local now = now_us()
    local idx = math.floor(now / w)
    assert.equal("OK", srv:command("SET", key .. ":" .. (idx - 1), p))
    local args = backend.args("sliding", 1000, limit)
    local n, refused = 0, nil
    for _ = 1, limit + 1 do
      local r = run("sliding", key, args)
      if r[1] == 0 then refused = r break end
      n = n + 1
    end
    if math.floor(now_us() / w) ~= idx then return pending("the 1000 s window ended during the test") end
    local elapsed = now - idx * w
    -- allowed while p * (w - elapsed) / w + count + 1 <= limit
    local want = math.floor(limit - p * (w - elapsed) / w)
    assert.is_true(n == want or n == want + 1, "allowed " .. n .. ", want about " .. want)
    assert.truthy(refused)
    assert.equal(0, refused[2])
    -- one more fits when the previous window's weight has dropped by 1/p
    local retry_want = w * (1 - (limit - n - 1) / p) - elapsed
    assert.is_true(refused[4] > 0 and math.abs(refused[4] - retry_want) < 1e6, refused[4] .. " vs " .. retry_want)
    assert.equal(tostring(n), srv:command("GET", key .. ":" .. idx)) -- the refused one not counted
  end)

  it("sliding: a full current window refuses until the next window's weight lets one through", function()
    local key = "t:s2" .. math.random(1e9)
    local args = backend.args("sliding", 1000, 2)
    assert.equal(1, run("sliding", key, args)[1])
    assert.equal(1, run("sliding", key, args)[1])
    local r = run("sliding", key, args)
    assert.equal(0, r[1])
    -- rest of this window, then until 2 of the 2 weigh at most limit - 1 = 1: half a window
    local reset = r[3]
    assert.is_true(math.abs(r[4] - (reset + 500e6)) <= 1, r[4] .. " vs " .. reset + 500e6)
  end)

  it("token bucket: the burst at once, then one per interval; the key holds the arrival time", function()
    local key = "t:b" .. math.random(1e9)
    local args = backend.args("token_bucket", 1, 10, 5) -- one token per 100 ms, 5 at most
    for i = 1, 5 do
      local r = run("token_bucket", key, args)
      assert.equal(1, r[1])
      assert.equal(5 - i, r[2])
      assert.is_true(r[3] > (i - 0.5) * 100000 and r[3] <= i * 100000, "reset " .. r[3])
    end
    local r = run("token_bucket", key, args)
    assert.equal(0, r[1])
    assert.is_true(r[4] > 50000 and r[4] <= 100000, "retry " .. r[4])
    local tat = tonumber(srv:command("GET", key))
    assert.is_true(tat > now_us() and tat <= now_us() + 500000)
    local pttl = srv:command("PTTL", key)
    assert.is_true(pttl > 1000 and pttl <= 1500, tostring(pttl))
  end)
end)
