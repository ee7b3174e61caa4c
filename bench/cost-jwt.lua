-- For `scripts/cost --use bench/cost-jwt.lua --header "Authorization: Bearer $(cat bench/jwt-es256.token)"`:
-- the `jwt` scenario's policy (bench/moongate-jwt.lua) as a list for a route's
-- `use`: what checking an ES256 token (verified-token cache on) costs per request.
local mg = require "moongate"
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local f = assert(io.open(here .. "/jwt-es256.pub.pem"))
local pem = f:read("*a")
f:close()
return {
  mg.policy.jwt {
    public_key = pem,
    algorithms = { "ES256" },
    issuer = "https://idp.bench.test",
    audience = "api",
    require_exp = true,
  },
}
