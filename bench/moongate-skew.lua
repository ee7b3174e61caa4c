-- Candidate `moongate` in the `skew` scenario (issue 12): three origins, one of
-- them 20 ms late; `balance = "p2c"` (two random choices, the one with fewer
-- active requests x response time wins) keeps most requests off the late one.
local mg = require "moongate"
local bench = require "bench_env"

bench.start()

local pool = mg.upstream "pool" {
  servers = bench.pool(),
  keepalive = 64,
  balance = "p2c",
}

mg.route { path = "/", upstream = pool }
