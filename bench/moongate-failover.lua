-- Candidate `moongate` in the `failover` scenario (issue 12): three origins, one
-- killed 2 s into the run and started again at 6 s. Active HTTP checks every
-- 0.5 s (a server changes state after one result either way), passive ejection,
-- and retries on another server for connect failures, resets and 502/503/504:
-- what an operator who wants no client errors for idempotent requests writes.
-- The keys `health`, `eject` and `retry` come with issue 12's health and retry
-- work; a build without them refuses this file, and scripts/bench then skips
-- moongate in this scenario with the error.
local mg = require "moongate"
local env = function(k, d) return os.getenv(k) or d end

mg.config {
  workers = tonumber(env("BENCH_WORKERS", "1")),
  access_log = false,
  error_log = env("BENCH_ERRLOG", "-"),
  log_level = "warn",
  pid = env("BENCH_PIDFILE", "/tmp/moongate-bench.pid"),
  limits = { body_size = 0 },
  timeouts = { upstream_connect = 1 },
}

mg.listen { "127.0.0.1:" .. env("BENCH_PORT", "18081") }

local pool = mg.upstream "pool" {
  servers = {
    "127.0.0.1:" .. env("BENCH_POOL_PORT1", "18201"),
    "127.0.0.1:" .. env("BENCH_POOL_PORT2", "18202"),
    "127.0.0.1:" .. env("BENCH_POOL_PORT3", "18203"),
  },
  keepalive = 64,
  health = { type = "http", path = "/", interval = 0.5, timeout = 0.5, fall = 1, rise = 1 },
  eject = { consecutive = 3, base = 2, max_percent = 50 },
  retry = { tries = 3, on = { "connect", "reset", "502", "503", "504" } },
}

mg.route { path = "/", upstream = pool }
