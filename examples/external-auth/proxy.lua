-- External authorization with a cached answer (docs/hooks.md "mg.http").
--
-- Every request to the API first asks an auth service: GET /check with the
-- client's Authorization header. 200 lets the request through to the API, any
-- other answer gets the client a 401. The verdict is kept per token in a shared
-- dictionary (every worker sees it): "allow" for 30 s, "deny" for 5 s, so a
-- token seen recently costs no call. While a call waits, the worker serves
-- other requests; a client that leaves meanwhile cancels its call.
--
--   AUTH_URL=http://127.0.0.1:9002/check moongate -c examples/external-auth/proxy.lua
local mg = require "moongate"

local AUTH_URL = os.getenv("AUTH_URL") or "http://127.0.0.1:9002/check"

mg.config { workers = "auto", shared = { auth_cache = "1m" } }
mg.listen { "127.0.0.1:8080" }

local api = mg.upstream "api" { servers = { "127.0.0.1:9001" } }

local function authorize(req)
  local token = req:header("authorization")
  if not token then return req:respond(401, "credentials needed\n") end
  local cache = mg.shared("auth_cache")
  local verdict = cache:get(token)
  if verdict == nil then
    local res, err = mg.http.request { url = AUTH_URL, headers = { Authorization = token }, timeout = 2 }
    if not res then
      mg.log.warn("auth service: ", err)
      return req:respond(503, "authorization unavailable\n")
    end
    verdict = res.status == 200 and "allow" or "deny"
    cache:set(token, verdict, verdict == "allow" and 30 or 5)
  end
  if verdict ~= "allow" then return req:respond(401, "not allowed\n") end
end

mg.route { path = "/", upstream = api, on = { request = authorize } }
