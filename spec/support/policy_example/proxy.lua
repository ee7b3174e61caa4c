-- docs/policies.md "Writing your own" (policy_example_spec runs it)
local mg = require "moongate"
local require_header = require "policies.require_header"
mg.listen { "127.0.0.1:8080" }
mg.route { path = "/", upstream = mg.upstream "app" { servers = { "127.0.0.1:9000" } },
           use = { require_header { header = "x-tenant" } } }
