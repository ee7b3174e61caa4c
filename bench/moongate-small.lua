-- Candidate `moongate` for the plain scenarios (small, large, close, post):
-- one route to the shared origin, upstream keep-alive. Values come from the
-- environment set by scripts/bench (defaults let it run by hand).
local mg = require "moongate"
local bench = require "bench_env"
local env = bench.env

bench.start()

local servers = { servers = { "127.0.0.1:" .. env("BENCH_ORIGIN_PORT", "18080") }, keepalive = 64 }
-- BENCH_SPLICE=1: bodies spliced socket to socket (docs/config.md, `splice`); the
-- key only then, so that a base build from before it reads this file too
if env("BENCH_SPLICE", "0") == "1" then servers.splice = true end
local origin = mg.upstream "origin" (servers)

mg.route { path = "/", upstream = origin }
