-- Candidate `moongate` in the `waf` scenarios (waf-get, waf-post): one route to
-- the shared origin behind moongate's WAF with its defaults (mg.policy.waf {}),
-- against nginx + ModSecurity 3 + OWASP CRS 3.3 PL1 (bench/nginx-waf.conf).
local mg = require "moongate"
local bench = require "bench_env"
local env = bench.env

if mg.policy == nil then error("bench/moongate-waf.lua needs mg.policy (this moongate has none)", 0) end

bench.start()

local origin = mg.upstream "origin" {
  servers = { "127.0.0.1:" .. env("BENCH_ORIGIN_PORT", "18080") },
  keepalive = 64,
}

mg.route { path = "/", upstream = origin, use = { mg.policy.waf {} } }
