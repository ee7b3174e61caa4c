-- Candidate `moongate` in the `failover` scenario (issue 12): three origins, one
-- killed 2 s into the run and started again at 6 s. Active HTTP checks every
-- 0.5 s (a server changes state after one result either way), passive ejection,
-- and retries on another server for connect failures, resets and 502/503/504:
-- what an operator who wants no client errors for idempotent requests writes.
-- The keys `health`, `eject` and `retry` come with issue 12's health and retry
-- work; a build without them refuses this file, and scripts/bench then skips
-- moongate in this scenario with the error.
local mg = require "moongate"
local bench = require "bench_env"
local env = bench.env

bench.start { timeouts = { upstream_connect = 1 } }

local pool = mg.upstream "pool" {
  servers = bench.pool(),
  keepalive = 64,
  health = { type = "http", path = "/", interval = 0.5, timeout = 0.5, fall = 1, rise = 1 },
  eject = { consecutive = 3, base = 2, max_percent = 50 },
  retry = { tries = 3, on = { "connect", "reset", "502", "503", "504" } },
}

mg.route { path = "/", upstream = pool }
