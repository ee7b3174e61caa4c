-- moongate.redis inside the real binary: hooks talk to a real redis-server
-- (started by moongate.testing on a free loopback port) over mg.tcp. The unit
-- spec (spec/unit/redis_spec.lua) covers the protocol over luasocket; this one
-- covers what only the binary shows: the wait, pooling, errors, cancellation.
local helpers = require "spec.helpers"
local t = require "moongate.testing"

local CONFIG = [[
local mg = require "moongate"
local redis = require "moongate.redis"
mg.config { workers = 1, access_log = false, error_log = "error.log", timeouts = { hook = 5 } }
mg.listen { "127.0.0.1:${port}" }
local PORT, CLOSED = ${redis}, ${closed}
local counts = { begun = 0, after = 0 }
local function open(read_ms)
  local red = redis.new()
  red:set_timeouts(1000, 1000, read_ms or 2000)
  local ok, err = red:connect("127.0.0.1", PORT)
  if not ok then return nil, err end
  return red
end
-- a fixed-window counter, as a rate limiter keeps one: INCR + EXPIRE pipelined
mg.route { path = "/count", respond = function(req)
  local red = assert(open())
  red:init_pipeline()
  red:incr("hits:" .. req:header("x-key"))
  red:expire("hits:" .. req:header("x-key"), 60)
  local res = assert(red:commit_pipeline())
  local reused = red:get_reused_times()
  assert(red:set_keepalive(10000, 8))
  return 200, res[1] .. " " .. res[2] .. " " .. reused .. "\n"
end }
-- waits in redis itself: BLPOP blocks until the timeout (or a push)
mg.route { path = "/blpop", respond = function(req)
  counts.begun = counts.begun + 1
  local red = assert(open(3000))
  local v, err = red:blpop("queue:" .. (req:header("x-q") or "q"), 1)
  counts.after = counts.after + 1
  red:close()
  if v == redis.null then return 200, "empty\n" end
  if not v then return 200, "error:" .. tostring(err) .. "\n" end
  return 200, v[1] .. "=" .. v[2] .. "\n"
end }
mg.route { path = "/counts", respond = function()
  return 200, counts.begun .. " " .. counts.after .. "\n"
end }
mg.route { path = "/direct", respond = { status = 200, body = "direct\n" } }
mg.route { path = "/refused", respond = function()
  local red = redis.new()
  return 200, tostring(select(2, red:connect("127.0.0.1", CLOSED))) .. "\n"
end }
mg.route { path = "/timeout", respond = function()
  local red = assert(open(200))
  local v, err = red:blpop("never", 2) -- redis holds it 2 s; the read gives up at 0.2
  return 200, tostring(v) .. " " .. tostring(err) .. "\n"
end }
mg.route { path = "/error-reply", respond = function()
  local red = assert(open())
  assert(red:set("str", "x"))
  local v, err = red:incr("str")
  local after = red:get("str") -- the connection goes on after an error reply
  red:close()
  return 200, tostring(v) .. "|" .. tostring(err) .. "|" .. after .. "\n"
end }
mg.route { path = "/eval", respond = function()
  local red = assert(open())
  local v = assert(red:eval("return { KEYS[1], ARGV[1], 7 }", 1, "k", "a"))
  red:close()
  return 200, table.concat(v, ",") .. "\n"
end }
-- the response hook waits on redis too (every hook may)
mg.route { path = "/in-response", upstream = mg.upstream "self" { servers = { "127.0.0.1:${port}" } }, on = {
  request = function(req) req:set_path("/direct") end,
  response = function(req, res)
    local red = assert(open())
    res:set_header("x-hits", tostring(assert(red:incr("response-hits"))))
    red:set_keepalive()
  end,
} }
]]

describe("moongate.redis in hooks", function()
  local proxy, srv, srv_err

  lazy_setup(function()
    srv, srv_err = t.redis()
    if not srv then return end
    proxy = helpers.proxy(CONFIG, { vars = { redis = srv.port, closed = helpers.free_port() } })
  end)

  lazy_teardown(function()
    if proxy then helpers.teardown(proxy) end
    if srv then srv:stop() end
  end)

  before_each(function()
    if not srv then pending(srv_err) end
  end)

  local function get(path, headers)
    local res = assert(proxy:request({ path = path, headers = headers }))
    assert.equal(200, res.status, res.body)
    return res.body
  end

  it("counts with INCR + EXPIRE pipelined, and reuses the pooled connection", function()
    local before = tonumber(srv:command("INFO", "stats"):match("total_connections_received:(%d+)"))
    assert.equal("1 1 0\n", get("/count", { ["X-Key"] = "a" }))
    assert.equal("2 1 1\n", get("/count", { ["X-Key"] = "a" }))
    assert.equal("3 1 2\n", get("/count", { ["X-Key"] = "a" }))
    assert.equal("1 1 3\n", get("/count", { ["X-Key"] = "b" }))
    assert.equal("3", srv:command("GET", "hits:a"))
    local ttl = srv:command("TTL", "hits:a")
    assert(ttl > 50 and ttl <= 60, "TTL " .. tostring(ttl))
    local after = tonumber(srv:command("INFO", "stats"):match("total_connections_received:(%d+)"))
    -- one connection for the four requests; srv:command opens one per call
    -- (GET, TTL and this INFO: three)
    assert.equal(before + 1 + 3, after)
  end)

  it("serves other requests on the same worker while one waits 1 s in BLPOP", function()
    local c = proxy:connect()
    local t0 = helpers.now()
    assert(c:send("GET /blpop HTTP/1.1\r\nHost: x\r\nX-Q: idle\r\n\r\n"))
    helpers.sleep(0.1)
    for _ = 1, 5 do assert.equal("direct\n", get("/direct")) end
    assert(helpers.now() - t0 < 0.8, "the others were not served while redis held one")
    local res = assert(c:response({ timeout = 5 }))
    c:close()
    assert.equal("empty\n", res.body)
    assert(helpers.now() - t0 >= 0.95)
  end)

  it("wakes a waiting hook when redis answers (a push during BLPOP)", function()
    local c = proxy:connect()
    assert(c:send("GET /blpop HTTP/1.1\r\nHost: x\r\nX-Q: jobs\r\n\r\n"))
    helpers.sleep(0.2)
    assert.equal(1, srv:command("RPUSH", "queue:jobs", "job-1"))
    local res = assert(c:response({ timeout = 5 }))
    c:close()
    assert.equal("queue:jobs=job-1\n", res.body)
  end)

  it("says connection refused, and times a read out", function()
    assert.equal("connection refused\n", get("/refused"))
    local t0 = helpers.now()
    assert.equal("nil timeout\n", get("/timeout"))
    assert(helpers.now() - t0 < 1.5)
  end)

  it("gives an error reply as false, message, and the connection goes on", function()
    assert.equal("false|ERR value is not an integer or out of range|x\n", get("/error-reply"))
  end)

  it("runs EVAL with keys and arguments", function()
    assert.equal("k,a,7\n", get("/eval"))
  end)

  it("waits in a response hook (every hook may)", function()
    local res = assert(proxy:request({ path = "/in-response" }))
    assert.equal(200, res.status)
    assert.equal("direct\n", res.body)
    assert.equal(tostring(srv:command("GET", "response-hits")), res.h["x-hits"])
  end)

  it("cancels hooks whose clients leave during BLPOP: nothing after the wait runs, memory stays flat", function()
    local function counts()
      local body = get("/counts")
      local b, a = body:match("^(%d+) (%d+)\n$")
      assert(b, "/counts answered " .. body)
      return tonumber(b), tonumber(a)
    end
    local function leave(n)
      proxy:leave_mid_request(n, "GET /blpop HTTP/1.1\r\nHost: x\r\nX-Q: gone\r\n\r\n", 0.002)
    end
    leave(50)
    helpers.sleep(1.3)
    local rss0 = proxy:rss()
    local b0, a0 = counts()
    leave(1000)
    helpers.sleep(1.3)
    local b1, a1 = counts()
    assert(b1, "no counts after the 1,000: " .. tostring(helpers.read_file(proxy.dir .. "/error.log")):sub(-2000))
    assert.equal(1000, b1 - b0)
    assert.equal(a0, a1) -- every one was dropped where it waited
    proxy:assert_rss_flat(rss0, 4096)
    -- redis is not left holding the abandoned connections
    assert(helpers.wait_until(function()
      return tonumber(srv:command("INFO", "clients"):match("connected_clients:(%d+)")) < 10
    end, 5, 0.1), "redis still has the abandoned connections")
    assert.equal("direct\n", get("/direct"))
    proxy:assert_alive()
  end)
end)

describe("moongate.redis across a reload", function()
  local proxy, srv, srv_err

  lazy_setup(function()
    srv, srv_err = t.redis()
    if not srv then return end
    proxy = helpers.proxy([[
local mg = require "moongate"
local redis = require "moongate.redis"
mg.config { workers = 1, access_log = false }
mg.listen { "127.0.0.1:${port}" }
mg.route { path = "/direct", respond = { status = 200, body = "old\n" } }
mg.route { path = "/", respond = function(req)
  local red = redis.new()
  red:set_timeouts(1000, 1000, 9000)
  assert(red:connect("127.0.0.1", ${redis}))
  local v = assert(red:blpop("reload-q", 8))
  return 200, "old:" .. tostring(v == redis.null and "empty" or v[2]) .. "\n"
end }
]], { vars = { redis = srv.port } })
  end)

  lazy_teardown(function()
    if proxy then helpers.teardown(proxy) end
    if srv then srv:stop() end
  end)

  before_each(function()
    if not srv then pending(srv_err) end
  end)

  it("finishes a hook waiting in BLPOP on the old generation, with the value pushed after the reload", function()
    local c = proxy:connect()
    assert(c:send("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
    helpers.sleep(0.2)
    proxy:reload(proxy:new_config(), function() return proxy:says_new("/direct") end)
    assert.equal(1, srv:command("RPUSH", "reload-q", "late-job"))
    local res = assert(c:response({ timeout = 10 }))
    c:close()
    assert.equal(200, res.status)
    assert.equal("old:late-job\n", res.body)
  end)
end)
