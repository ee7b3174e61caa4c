-- Candidates `mg-<policy>` in the `policies` scenario (issue 12): the `small`
-- request through an upstream of the three pool origins, once per `balance`
-- value (BENCH_BALANCE; with "hash", hash_key = "ip"). A build that does not
-- know a policy refuses this file for it, and scripts/bench skips that candidate.
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

local origins = {
  "127.0.0.1:" .. env("BENCH_POOL_PORT1", "18201"),
  "127.0.0.1:" .. env("BENCH_POOL_PORT2", "18202"),
  "127.0.0.1:" .. env("BENCH_POOL_PORT3", "18203"),
}
-- BENCH_SERVERS (candidates mg-<policy>-10k: 10000): the three origins listed that
-- many times in turn, so picks run over an upstream of that size (connections
-- still go to three addresses: this machine has no 10,000 origins)
local servers = {}
for i = 1, tonumber(env("BENCH_SERVERS", "3")) do servers[i] = origins[(i - 1) % 3 + 1] end
local up = { servers = servers, keepalive = 64, balance = env("BENCH_BALANCE", "round_robin") }
if up.balance == "hash" then up.hash_key = "ip" end

mg.route { path = "/", upstream = mg.upstream "pool" (up) }
