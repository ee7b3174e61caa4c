-- examples/external-auth/proxy.lua, tested as a user would (moongate.testing):
-- stub API and auth service, the verdict cached in mg.shared.
local t = require "moongate.testing"

local here = debug.getinfo(1, "S").source:match("^@(.*)$")
local CONFIG = (here:match("^(.*)/[^/]*$") or ".") .. "/../examples/external-auth/proxy.lua"

describe("the external authorization example", function()
  local api, auth, proxy

  lazy_setup(function()
    api = assert(t.origin({ status = 200, body = "api answer\n" }))
    auth = assert(t.origin(function(req)
      if req:header("authorization") == "Bearer good" then return 200, "ok" end
      return 401, "no"
    end))
    proxy = assert(t.start { config = CONFIG, set = { workers = 1 },
                             upstreams = { ["127.0.0.1:9001"] = api },
                             env = { AUTH_URL = auth:url("/check") } })
  end)

  lazy_teardown(function() t.stop_all() end)

  it("lets a request through when the auth service says 200, with the client's credentials", function()
    local res = assert(proxy:request { path = "/x", headers = { Authorization = "Bearer good" } })
    assert.equal(200, res.status)
    assert.equal("api answer\n", res.body)
    local asked = auth:last()
    assert.equal("GET", asked.method)
    assert.equal("/check", asked.path)
    assert.equal("Bearer good", asked:header("authorization"))
    assert.equal("/x", api:last().path)
  end)

  it("answers 401 when the auth service says 401, and the API is not asked", function()
    local n = api:count()
    local res = assert(proxy:request { path = "/y", headers = { Authorization = "Bearer bad" } })
    assert.equal(401, res.status)
    assert.equal(n, api:count())
  end)

  it("does not ask the auth service again for a cached verdict", function()
    local n = auth:count()
    for _ = 1, 3 do
      assert.equal(200, assert(proxy:request { path = "/z", headers = { Authorization = "Bearer good" } }).status)
      assert.equal(401, assert(proxy:request { path = "/z", headers = { Authorization = "Bearer bad" } }).status)
    end
    assert.equal(n, auth:count())
  end)

  it("answers 401 without a call when there are no credentials", function()
    local n = auth:count()
    assert.equal(401, assert(proxy:request { path = "/" }).status)
    assert.equal(n, auth:count())
  end)
end)
