-- Candidate `moongate` in the `gateway` scenario: an API gateway route, the
-- shipped policies in front of the shared origin. The same work as
-- bench/nginx-lua-gateway.conf does by hand:
--   key_auth    the API key from the `apikey` header names the consumer (two keys
--               known), the header is removed before the request goes upstream;
--   rate_limit  a fixed window of 60 s per consumer in the shared dictionary, with
--               a limit the run never reaches, RateLimit headers on the answer;
--   cors        one allowed origin with credentials: Access-Control-Allow-Origin
--               and -Allow-Credentials on the answer, Origin merged into Vary;
--   headers     request: X-Debug removed, X-Gateway set; response: Server and
--               X-Powered-By removed, Cache-Control set; the security preset (four
--               headers: HSTS, nosniff, Referrer-Policy, X-Frame-Options).
local mg = require "moongate"
local bench = require "bench_env"
local env = bench.env

-- a build without the policies (before issue 14) cannot run this: say so at load
-- time, so that scripts/bench skips it with the reason
if mg.policy == nil then error("bench/moongate-gateway.lua needs mg.policy (this moongate has none)", 0) end

bench.start()

local origin = mg.upstream "origin" {
  servers = { "127.0.0.1:" .. env("BENCH_ORIGIN_PORT", "18080") },
  keepalive = 64,
}

mg.route { path = "/", upstream = origin, use = {
  mg.policy.key_auth { header = "apikey", keys = { ["bench-key-alice"] = "alice", ["bench-key-bob"] = "bob" } },
  mg.policy.rate_limit { limit = 1000000000, window = 60, key = "consumer", algorithm = "fixed" },
  mg.policy.cors { origins = { "https://app.example" }, credentials = true },
  mg.policy.headers {
    request = { remove = { "X-Debug" }, set = { ["X-Gateway"] = "moongate" } },
    response = { remove = { "Server", "X-Powered-By" }, set = { ["Cache-Control"] = "no-store" } },
    preset = "security",
  },
} }
