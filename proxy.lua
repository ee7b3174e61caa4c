-- The moongate demo: runs with nothing else installed.
-- Two small "origins" are answered by moongate itself on :9001 and :9002, and the
-- front listener on :8080 balances across them (weights 1:3).
--   scripts/run            then   curl -i localhost:8080/
local mg = require "moongate"

mg.config {
  workers = 2,
  access_log = "logs/access.log",
  error_log = "-",
}

-- the front door
mg.listen { "127.0.0.1:8080", name = "front" }

-- a web application firewall on every route (docs/waf.md): paranoia level 1,
-- 403 on an attack
--   curl -i "localhost:8080/?id=1'%20union%20select%20password%20from%20users--"
mg.use(mg.policy.waf {})

-- two demo origins (stand-ins for your services)
mg.listen { "127.0.0.1:9001", name = "origin1" }
mg.listen { "127.0.0.1:9002", name = "origin2" }
mg.route { listener = "origin1", respond = {
  status = 200, body = "hello from origin 1\n", headers = { ["content-type"] = "text/plain" } } }
mg.route { listener = "origin2", respond = {
  status = 200, body = "hello from origin 2\n", headers = { ["content-type"] = "text/plain" } } }

local demo = mg.upstream "demo" {
  servers = { "127.0.0.1:9001", "127.0.0.1:9002 weight=3" },
}

-- a fixed answer for health probes, everything else goes to the origins
mg.route { listener = "front", path = "/healthz", respond = { status = 200, body = "ok\n" } }
mg.route { listener = "front", path = "/", upstream = demo }

-- an API behind gateway policies (docs/policies.md), run in the order written:
-- CORS for one web app (preflights answered here), an API key naming the
-- consumer, then 10 requests a second per consumer (429 past that).
--   curl -i -H 'apikey: k-123' localhost:8080/api/orders
mg.route { listener = "front", path = "/api/", upstream = demo, use = {
  mg.policy.cors { origins = { "https://app.example" } },
  mg.policy.key_auth { header = "apikey", keys = { ["k-123"] = "alice" } },
  mg.policy.rate_limit { limit = 10, window = 1, key = "consumer" },
} }
