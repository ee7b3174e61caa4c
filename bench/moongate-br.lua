-- Candidate `moongate` in the `br` scenario (issue 13): moongate-small.lua's
-- route (upstream keepalive = 64 for wrk's 50 connections) with compression on:
-- br only, quality 4, JSON, min_length 256 (docs/compression.md); the same work
-- as bench/nginx-br.conf.
local mg = require "moongate"
local bench = require "bench_env"
local env = bench.env

bench.start {
  compress = {
    types = { "application/json" },
    min_length = 256,
    level = { br = 4 },
    prefer = { "br" },
  },
}

local origin = mg.upstream "origin" {
  servers = { "127.0.0.1:" .. env("BENCH_ORIGIN_PORT", "18080") },
  keepalive = 64,
}

mg.route { path = "/", upstream = origin }
