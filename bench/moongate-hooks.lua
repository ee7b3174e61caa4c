-- Candidate `moongate` in the `hooks` scenario: the same work as the
-- rewrite_by_lua / header_filter_by_lua blocks of bench/nginx-lua.conf.
-- A request hook reads a header, sets an upstream request header and picks the
-- upstream by path prefix; a response hook sets a response header.
local mg = require "moongate"
local bench = require "bench_env"
local env = bench.env

bench.start()

local default = mg.upstream "default" {
  servers = { "127.0.0.1:" .. env("BENCH_ORIGIN_PORT", "18080") },
  keepalive = 64,
}
local api = mg.upstream "api" {
  servers = { "127.0.0.1:" .. env("BENCH_ORIGIN_PORT2", "18090") },
  keepalive = 64,
}

mg.on("request", function(req)
  req:set_header("x-tenant-id", req:header("x-tenant") or "none")
  if req.path:sub(1, 5) == "/api/" then req:set_upstream(api) end
end)

mg.on("response", function(req, res)
  res:set_header("x-proxy", "moongate")
end)

mg.route { path = "/", upstream = default }
