-- What every moongate config of scripts/bench shares: the BENCH_* variables the
-- script sets, the process settings (no access log, warnings only, no body
-- limit) and the listener. `require "bench_env"` finds it beside the config.
local mg = require "moongate"

local _M = {}

function _M.env(k, d) return os.getenv(k) or d end
local env = _M.env

--- mg.config for a benchmark (`extra`: more fields, e.g. timeouts) and the plain
--- listener on BENCH_PORT.
function _M.start(extra)
  local c = {
    workers = tonumber(env("BENCH_WORKERS", "1")),
    access_log = false,
    error_log = env("BENCH_ERRLOG", "-"),
    log_level = "warn",
    pid = env("BENCH_PIDFILE", "/tmp/moongate-bench.pid"),
    limits = { body_size = 0 },
  }
  for k, v in pairs(extra or {}) do c[k] = v end
  mg.config(c)
  mg.listen { "127.0.0.1:" .. env("BENCH_PORT", "18081") }
end

--- The three origins of the failover, skew and policies scenarios.
function _M.pool()
  return {
    "127.0.0.1:" .. env("BENCH_POOL_PORT1", "18201"),
    "127.0.0.1:" .. env("BENCH_POOL_PORT2", "18202"),
    "127.0.0.1:" .. env("BENCH_POOL_PORT3", "18203"),
  }
end

return _M
