-- docs/policies.md "Testing a policy", as written there: a user policy in a
-- module next to proxy.lua (spec/support/policy_example), tested with
-- moongate.testing against the real binary.
local t = require "moongate.testing"
local helpers = require "spec.helpers"

describe("require_header (docs/policies.md example)", function()
  local app, proxy
  lazy_setup(function()
    app = assert(t.origin { ["/"] = { status = 200, body = "ok" } })
    proxy = assert(t.start { config = helpers.spec_dir .. "/support/policy_example/proxy.lua",
                             upstreams = { ["127.0.0.1:9000"] = app }, bin = helpers.bin })
  end)
  lazy_teardown(function() t.stop_all() end)

  it("refuses a request without the header, and says so in the access log", function()
    local res = assert(proxy:request "/x")
    assert.equal(400, res.status)
    assert.equal("missing x-tenant\n", res.body)
    assert.equal(0, app:count())
    local line = t.wait_until(function()
      for _, l in ipairs(proxy:access_lines()) do
        if l:find('"policy":"require_header"', 1, true) then return l end
      end
    end)
    assert.truthy(line)
  end)

  it("lets it through with the header", function()
    local res = assert(proxy:request { path = "/x", headers = { ["X-Tenant"] = "a" } })
    assert.equal(200, res.status)
    assert.equal("ok", res.body)
    assert.equal(1, app:count())
  end)
end)
