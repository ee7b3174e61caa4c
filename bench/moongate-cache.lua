-- Candidate `moongate` in issue 13's `cache-hit` and `collapse` scenarios: one
-- route to the cache origin (bench/origin-cache.nginx.conf) with the response
-- cache on (docs/cache.md): the memory store at 256 MiB, as Varnish's
-- `-s malloc,256m` and nginx's `max_size=256m`; `cache = true` with its
-- defaults (the lock that collapses misses included, where the build has it).
-- Upstream keep-alive pool of 256: above `collapse`'s 200 clients.
local mg = require "moongate"
local bench = require "bench_env"
local env = bench.env

bench.start { cache = { memory = "256m" } }

local origin = mg.upstream "origin" {
  servers = { "127.0.0.1:" .. env("BENCH_CACHE_ORIGIN_PORT", "18204") },
  keepalive = 256,
}

mg.route { path = "/", upstream = origin, cache = true }
