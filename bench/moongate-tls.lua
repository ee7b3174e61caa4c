-- Candidate `moongate` for the TLS scenarios (tls, tls-handshake): the small
-- scenario's proxy behind a TLS listener (an ECDSA P-256 certificate that
-- scripts/bench makes, the same one nginx-tls.conf serves). Values come from the
-- environment set by scripts/bench.
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

mg.listen { "127.0.0.1:" .. env("BENCH_PORT", "18081"),
            tls = { cert = env("BENCH_CERT", "cert.pem"), key = env("BENCH_KEY", "key.pem") } }

local origin = mg.upstream "origin" {
  servers = { "127.0.0.1:" .. env("BENCH_ORIGIN_PORT", "18080") },
  keepalive = 64,
}

mg.route { path = "/", upstream = origin }
