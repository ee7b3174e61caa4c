-- Candidate `moongate` in the `auth` scenario: the same work as bench/nginx-auth.conf
-- (auth_request) and bench/nginx-lua-auth.conf. A request hook asks the auth
-- service (GET /check on the origin's second port, with the client's
-- Authorization) through mg.http.request, which keeps its connections in a
-- keep-alive pool; 401 is answered, anything but 200 is a 502, 200 is proxied.
local mg = require "moongate"
local bench = require "bench_env"
local env = bench.env

-- a build from before mg.http (issue 11) cannot run this: say so at load time
-- (scripts/bench then skips moongate-base here) instead of answering 500s
if mg.http == nil then error("bench/moongate-auth.lua needs mg.http (this moongate has none)", 0) end

bench.start()

local origin = mg.upstream "origin" {
  servers = { "127.0.0.1:" .. env("BENCH_ORIGIN_PORT", "18080") },
  keepalive = 64,
}

local AUTH_URL = "http://127.0.0.1:" .. env("BENCH_ORIGIN_PORT2", "18090") .. "/check"
local request = mg.http.request
local headers = {} -- reused: the hook fills the one header it forwards

mg.route { path = "/", upstream = origin, on = {
  request = function(req)
    headers.authorization = req:header("authorization")
    local res, err = request { url = AUTH_URL, headers = headers, timeout = 5 }
    if not res then
      mg.log.err("auth service: ", err)
      return req:respond(502, "auth service unavailable\n")
    end
    if res.status == 401 then return req:respond(401, "authorization required\n") end
    if res.status ~= 200 then
      mg.log.err("auth service answered ", res.status)
      return req:respond(502, "auth service unavailable\n")
    end
  end,
} }
