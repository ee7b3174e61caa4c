-- Candidates `moongate` and `mg-jwt-nocache` in the `jwt` scenario: one route to
-- the shared origin behind mg.policy.jwt with an inline ES256 (P-256) public key
-- (bench/jwt-es256.pub.pem; the token wrk sends is bench/jwt-es256.token: ES256,
-- no kid, sub/iss/aud, exp in 2100). issuer, audience and exp are checked on every
-- request. BENCH_JWT_CACHE: the policy's cache_size (scripts/bench sets 10000, the
-- default, for `moongate`; 0 for `mg-jwt-nocache`: every request decodes the token
-- and checks its signature). Same work as bench/nginx-lua-jwt.conf.
local mg = require "moongate"
local bench = require "bench_env"
local env = bench.env

if mg.policy == nil then error("bench/moongate-jwt.lua needs mg.policy (this moongate has none)", 0) end

bench.start()

local origin = mg.upstream "origin" {
  servers = { "127.0.0.1:" .. env("BENCH_ORIGIN_PORT", "18080") },
  keepalive = 64,
}

local f = assert(io.open(env("BENCH_JWT_KEY", "bench/jwt-es256.pub.pem")))
local pem = f:read("*a")
f:close()

mg.route { path = "/", upstream = origin, use = {
  mg.policy.jwt {
    public_key = pem,
    algorithms = { "ES256" },
    issuer = "https://idp.bench.test",
    audience = "api",
    require_exp = true,
    cache_size = tonumber(env("BENCH_JWT_CACHE", "10000")),
  },
} }
