-- mg.policy.forward_auth on the real binary, against a stub auth service: allow
-- and deny (the service's status and body reach the client, the upstream is not
-- asked), only the selected headers are forwarded, the chosen answer headers go
-- upstream, positive answers cached for ttl (counted at the service), a slow
-- service cut by timeouts.hook (504) and an unreachable one (503).
local helpers = require "spec.helpers"
local t = require "moongate.testing"

local CONF = [[
local mg = require "moongate"
mg.config { workers = 1, timeouts = { hook = 1 }, access_log = "access.log" }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
mg.route { path = "/fa/", upstream = o, use = { mg.policy.forward_auth {
  url = "${auth}/check", headers = { "Authorization", "X-Tenant" }, pass_headers = { "X-User" } } } }
mg.route { path = "/cached/", upstream = o, use = { mg.policy.forward_auth {
  url = "${auth}/cache", headers = { "Authorization" }, pass_headers = { "X-User" }, ttl = 2 } } }
mg.route { path = "/slow/", upstream = o, use = { mg.policy.forward_auth { url = "${auth}/slow", timeout = 10 } } }
mg.route { path = "/gone/", upstream = o, use = { mg.policy.forward_auth { url = "http://127.0.0.1:${closed}/x", timeout = 1 } } }
mg.route { path = "/", upstream = o }
]]

describe("mg.policy.forward_auth", function()
  local origin, proxy, auth

  lazy_setup(function()
    local function decide(req)
      local a = req:header("authorization")
      if a == "Bearer good" or a == "Bearer other" then
        return { status = 200, body = "ok", headers = { ["X-User"] = a == "Bearer good" and "alice" or "bob",
                                                        ["X-Secret"] = "no" } }
      end
      if a == "Bearer nouser" then return { status = 200, body = "ok" } end
      return { status = 403, body = "denied by auth: " .. tostring(a), headers = { ["Content-Type"] = "text/plain" } }
    end
    auth = assert(t.origin({ ["/check"] = decide, ["/cache"] = decide,
                             ["/slow"] = { status = 200, body = "late", delay = 3 } }))
    origin = helpers.origin({ name = "o" })
    proxy = helpers.proxy(CONF, { vars = { origin = origin.addr, auth = auth:url(""):gsub("/$", ""),
                                           closed = helpers.free_port() } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
    t.stop_all()
  end)

  local function get(path, headers)
    return assert(proxy:request({ path = path, headers = headers }))
  end

  it("2xx: the request goes upstream with the chosen answer headers; only the selected headers are asked about", function()
    local res = get("/fa/ok", { Authorization = "Bearer good", ["X-Tenant"] = "t1", Cookie = "c=1" })
    assert.equal(200, res.status)
    assert.truthy(res.body:find('["X-User", "alice"]', 1, true), res.body)
    assert.falsy(res.body:find("X-Secret", 1, true), res.body)
    local asked = auth:last()
    assert.equal("/check", asked.path)
    assert.equal("GET", asked.method)
    assert.equal("Bearer good", asked:header("authorization"))
    assert.equal("t1", asked:header("x-tenant"))
    assert.is_nil(asked:header("cookie"))
  end)

  it("tells the service the method, scheme, host and URI asked (X-Forwarded-*), replacing the client's own", function()
    local res = assert(proxy:request({ method = "POST", path = "/fa/orders/7?x=1&y=%27", body = "b",
      headers = { Authorization = "Bearer good", Host = "shop.example",
                  ["X-Forwarded-Uri"] = "/public", ["X-Forwarded-Method"] = "GET" } }))
    assert.equal(200, res.status)
    local asked = auth:last()
    assert.equal("GET", asked.method)
    assert.equal("POST", asked:header("x-forwarded-method"))
    assert.equal("http", asked:header("x-forwarded-proto"))
    assert.equal("shop.example", asked:header("x-forwarded-host"))
    assert.equal("/fa/orders/7?x=1&y=%27", asked:header("x-forwarded-uri"))
  end)

  it("a client's own X-User is replaced by the service's", function()
    local res = get("/fa/spoof", { Authorization = "Bearer other", ["X-User"] = "admin" })
    assert.equal(200, res.status)
    assert.truthy(res.body:find('["X-User", "bob"]', 1, true), res.body)
    assert.falsy(res.body:find('"admin"', 1, true), res.body)
    -- the service sent no X-User: the client's is removed
    res = get("/fa/spoof2", { Authorization = "Bearer nouser", ["X-User"] = "admin" })
    assert.equal(200, res.status)
    assert.falsy(res.body:find("X-User", 1, true), res.body)
  end)

  it("not 2xx: the service's status and body go to the client, nothing upstream, policy logged", function()
    local res = get("/fa/no", { Authorization = "Bearer bad" })
    assert.equal(403, res.status)
    assert.equal("denied by auth: Bearer bad", res.body)
    assert.equal(0, origin:count_path("/fa/no"))
    local line
    helpers.wait_until(function()
      for l in helpers.lines(helpers.read_file(proxy.dir .. "/access.log") or "") do
        if l:find('"/fa/no', 1, true) then line = l end
      end
      return line
    end, 3)
    assert.truthy(line and line:find('"policy":"forward_auth"', 1, true), line)
  end)

  it("ttl: positive answers are cached per forwarded header values, refusals are not", function()
    auth:reset()
    for i = 1, 3 do assert.equal(200, get("/cached/a" .. i, { Authorization = "Bearer good" }).status) end
    assert.equal(1, auth:count())
    local res = get("/cached/b", { Authorization = "Bearer other" })
    assert.truthy(res.body:find('["X-User", "bob"]', 1, true), res.body)
    assert.equal(2, auth:count())
    for i = 1, 2 do assert.equal(403, get("/cached/no" .. i, { Authorization = "Bearer bad" }).status) end
    assert.equal(4, auth:count())
    res = get("/cached/a4", { Authorization = "Bearer good" })
    assert.truthy(res.body:find('["X-User", "alice"]', 1, true), res.body)
    assert.equal(4, auth:count())
    os.execute("sleep 2.2")
    assert.equal(200, get("/cached/a5", { Authorization = "Bearer good" }).status)
    assert.equal(5, auth:count())
  end)

  it("a slow service: the hook budget (timeouts.hook = 1) answers 504; unreachable: 503, logged", function()
    local t0 = os.time()
    local res = get("/slow/x")
    assert.equal(504, res.status)
    assert.truthy(os.time() - t0 <= 2)
    assert.equal(0, origin:count_path("/slow/x"))
    res = get("/gone/x")
    assert.equal(503, res.status)
    assert.equal(0, origin:count_path("/gone/x"))
    helpers.wait_until(function() return (proxy:stderr() or ""):find("forward_auth: http://127.0.0.1", 1, true) end, 3)
  end)
end)

describe("mg.policy.forward_auth config errors, naming the user's file and line", function()
  helpers.use_error_cases(it, {
    { 'mg.policy.forward_auth { url = "http://a/", ttll = 3 }', "mg.policy.forward_auth: unknown key 'ttll'" },
    { 'mg.policy.forward_auth { }', "mg.policy.forward_auth: 'url' must be a string" },
    { 'mg.policy.forward_auth { url = "http://a/", headers = { "a", "b c" } }', "mg.policy.forward_auth: headers[2] must be a header name" },
  })
end)
