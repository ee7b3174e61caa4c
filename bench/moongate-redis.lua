-- Candidate `moongate` in the `redis` scenario: the same work as
-- bench/nginx-lua-redis.conf. A request hook counts the request in a fixed
-- window, "rl:<X-Api-Key>:<minute>", with INCR and EXPIRE pipelined in one write
-- to the bench's redis-server (moongate.redis on mg.tcp), puts the connection
-- back in the worker's pool, answers 429 past the limit (never reached in the
-- bench) and proxies the rest.
local mg = require "moongate"
local bench = require "bench_env"
local env = bench.env

-- a build from before mg.tcp / moongate.redis (issue 11) cannot run this: say
-- so at load time (scripts/bench then skips moongate-base here)
local has_redis, redis = pcall(require, "moongate.redis")
if not has_redis or mg.tcp == nil then
  error("bench/moongate-redis.lua needs mg.tcp and moongate.redis (this moongate has none)", 0)
end

bench.start()

local origin = mg.upstream "origin" {
  servers = { "127.0.0.1:" .. env("BENCH_ORIGIN_PORT", "18080") },
  keepalive = 64,
}

local REDIS_PORT = tonumber(env("BENCH_REDIS_PORT", "6379"))
local LIMIT, WINDOW = 1000000000, 60
local floor = math.floor

mg.route { path = "/", upstream = origin, on = {
  request = function(req)
    local red = redis.new()
    red:set_timeouts(1000, 1000, 1000)
    local ok, err = red:connect("127.0.0.1", REDIS_PORT, { pool_size = 64 })
    if not ok then
      mg.log.err("redis: connect: ", err)
      return req:respond(503, "rate limiter unavailable\n")
    end
    local key = "rl:" .. (req:header("x-api-key") or "-") .. ":" .. floor(mg.now() / WINDOW)
    red:init_pipeline()
    red:incr(key)
    red:expire(key, WINDOW)
    local res
    res, err = red:commit_pipeline()
    if not res or type(res[1]) ~= "number" then
      mg.log.err("redis: ", err or res[1][2])
      red:close()
      return req:respond(503, "rate limiter unavailable\n")
    end
    red:set_keepalive(10000, 64)
    if res[1] > LIMIT then return req:respond(429, "too many requests\n") end
  end,
} }
