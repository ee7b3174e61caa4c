-- Candidate `moongate` in the `skew` scenario (issue 12): three origins, one of
-- them 20 ms late; `balance = "p2c"` (two random choices, the one with fewer
-- active requests x response time wins) keeps most requests off the late one.
local mg = require "moongate"
local env = function(k, d) return os.getenv(k) or d end

mg.config {
  workers = tonumber(env("BENCH_WORKERS", "1")),
  access_log = false,
  error_log = env("BENCH_ERRLOG", "-"),
  log_level = "warn",
  pid = env("BENCH_PIDFILE", "/tmp/moongate-bench.pid"),
  limits = { body_size = 0 },
}

mg.listen { "127.0.0.1:" .. env("BENCH_PORT", "18081") }

local pool = mg.upstream "pool" {
  servers = {
    "127.0.0.1:" .. env("BENCH_POOL_PORT1", "18201"),
    "127.0.0.1:" .. env("BENCH_POOL_PORT2", "18202"),
    "127.0.0.1:" .. env("BENCH_POOL_PORT3", "18203"),
  },
  keepalive = 64,
  balance = "p2c",
}

mg.route { path = "/", upstream = pool }
