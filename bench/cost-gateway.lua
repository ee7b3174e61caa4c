-- For `scripts/cost --use bench/cost-gateway.lua --header "apikey: bench-key-alice"
-- --header "Origin: https://app.example"`: the `gateway` scenario's chain
-- (bench/moongate-gateway.lua) as a list for a route's `use`.
local mg = require "moongate"
return {
  mg.policy.key_auth { header = "apikey", keys = { ["bench-key-alice"] = "alice", ["bench-key-bob"] = "bob" } },
  mg.policy.rate_limit { limit = 1000000000, window = 60, key = "consumer", algorithm = "fixed" },
  mg.policy.cors { origins = { "https://app.example" }, credentials = true },
  mg.policy.headers {
    request = { remove = { "X-Debug" }, set = { ["X-Gateway"] = "moongate" } },
    response = { remove = { "Server", "X-Powered-By" }, set = { ["Cache-Control"] = "no-store" } },
    preset = "security",
  },
}
