-- Candidate `moongate` in the `gzip` scenario (issue 13): moongate-small.lua's
-- route (upstream keepalive = 64 for wrk's 50 connections) with compression on:
-- gzip only, level 5, JSON, min_length 256 (docs/compression.md); the same work
-- as bench/nginx-gzip.conf.
local mg = require "moongate"
local bench = require "bench_env"
local env = bench.env

bench.start {
  compress = {
    types = { "application/json" },
    min_length = 256,
    level = { gzip = 5 },
    prefer = { "gzip" },
  },
}

local origin = mg.upstream "origin" {
  servers = { "127.0.0.1:" .. env("BENCH_ORIGIN_PORT", "18080") },
  keepalive = 64,
}

mg.route { path = "/", upstream = origin }
