-- Issue 14: mg.policy.cors on the real binary: preflights answered by moongate
-- (204 with the Access-Control-* headers, 403 without them when the origin, method
-- or a header is not allowed), actual requests with Access-Control-Allow-Origin,
-- credentials, exposed headers, `Vary: Origin` merged into the upstream's Vary,
-- wildcard and pattern origins, config errors with file:line.
local helpers = require "spec.helpers"

local CONF = [[
local mg = require "moongate"
mg.config { workers = 2, access_log = "access.log" }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
mg.route { path = "/min/", upstream = o, use = { mg.policy.cors { origins = { "https://app.example" } } } }
local full = mg.policy.cors {
  origins = { "https://app.example", "https://*.example.com", { pattern = "^http://localhost:%d+$" } },
  methods = { "GET", "POST", "DELETE" }, headers = { "Content-Type", "X-Token" },
  expose_headers = { "X-Count", "X-Request-Id" }, credentials = true, max_age = 600 }
mg.route { path = "/full/", upstream = o, use = { full } }
mg.route { path = "/hdrs/", upstream = o, use = { full } }
mg.route { path = "/any/", upstream = o, use = { mg.policy.cors { origins = { "*" } } } }
mg.route { path = "/anycred/", upstream = o, use = { mg.policy.cors { origins = { "*" }, credentials = true } } }
mg.route { path = "/", upstream = o }
]]

describe("mg.policy.cors", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "o" })
    proxy = helpers.proxy(CONF, { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  local function preflight(path, org, method, hdrs)
    local h = { ["Origin"] = org, ["Access-Control-Request-Method"] = method }
    if hdrs then h["Access-Control-Request-Headers"] = hdrs end
    return assert(proxy:request({ method = "OPTIONS", path = path, headers = h }))
  end

  it("the minimal form answers a preflight itself: 204 with exactly the allow headers", function()
    local res = preflight("/min/p1", "https://app.example", "PUT", "X-A, Content-Type")
    assert.equal(204, res.status)
    assert.equal("https://app.example", res.h["access-control-allow-origin"])
    assert.equal("GET, HEAD, POST, PUT, PATCH, DELETE", res.h["access-control-allow-methods"])
    assert.equal("x-a, content-type", res.h["access-control-allow-headers"])
    assert.equal("Origin, Access-Control-Request-Method, Access-Control-Request-Headers", res.h["vary"])
    assert.is_nil(res.h["access-control-allow-credentials"])
    assert.is_nil(res.h["access-control-max-age"])
    assert.equal("", res.body)
    assert.equal(0, origin:count_path("/min/p1"))
  end)

  it("a preflight from another origin gets 403 without any Access-Control-Allow-* header, logged policy=cors", function()
    local res = preflight("/min/p2", "https://evil.example", "GET")
    assert.equal(403, res.status)
    assert.is_nil(res.h["access-control-allow-origin"])
    assert.is_nil(res.h["access-control-allow-methods"])
    assert.equal(0, origin:count_path("/min/p2"))
    local line
    helpers.wait_until(function()
      for l in helpers.lines(helpers.read_file(proxy.dir .. "/access.log") or "") do
        if l:find('"/min/p2', 1, true) then line = l end
      end
      return line
    end, 3)
    assert.truthy(line and line:find('"policy":"cors"', 1, true), line)
  end)

  it("with methods/headers lists: a method or header outside them is refused, the lists are sent as configured", function()
    assert.equal(403, preflight("/full/a", "https://app.example", "PUT").status)
    assert.equal(403, preflight("/full/a", "https://app.example", "POST", "X-Token, X-Other").status)
    local res = preflight("/full/a", "https://app.example", "POST", "x-token,content-type")
    assert.equal(204, res.status)
    assert.equal("https://app.example", res.h["access-control-allow-origin"])
    assert.equal("GET, POST, DELETE", res.h["access-control-allow-methods"])
    assert.equal("Content-Type, X-Token", res.h["access-control-allow-headers"])
    assert.equal("true", res.h["access-control-allow-credentials"])
    assert.equal("600", res.h["access-control-max-age"])
  end)

  it("wildcard origins match one or more labels under the domain, not the domain itself nor look-alikes", function()
    assert.equal(204, preflight("/full/w", "https://api.example.com", "GET").status)
    assert.equal(204, preflight("/full/w", "https://a.b.example.com", "GET").status)
    assert.equal(403, preflight("/full/w", "https://example.com", "GET").status)
    assert.equal(403, preflight("/full/w", "https://evilexample.com", "GET").status)
    assert.equal(403, preflight("/full/w", "http://api.example.com", "GET").status)
    assert.equal(403, preflight("/full/w", "https://api.example.com.evil.net", "GET").status)
    -- the Lua pattern entry
    assert.equal("http://localhost:3000", preflight("/full/w", "http://localhost:3000", "GET").h["access-control-allow-origin"])
    assert.equal(403, preflight("/full/w", "http://localhost:3000.evil", "GET").status)
  end)

  it("an actual request gets the origin itself, credentials, exposed headers and Vary: Origin merged into the upstream's", function()
    local res = assert(proxy:request({ path = "/hdrs/t1?h=Vary:Accept-Encoding",
                                       headers = { ["Origin"] = "https://app.example" } }))
    assert.equal(200, res.status)
    assert.equal("https://app.example", res.h["access-control-allow-origin"])
    assert.equal("true", res.h["access-control-allow-credentials"])
    assert.equal("X-Count, X-Request-Id", res.h["access-control-expose-headers"])
    assert.equal("Accept-Encoding, Origin", res.h["vary"])
    -- already there: not repeated
    res = assert(proxy:request({ path = "/hdrs/t2?h=Vary:origin", headers = { ["Origin"] = "https://app.example" } }))
    assert.equal("origin", res.h["vary"])
    -- Vary: * stays
    res = assert(proxy:request({ path = "/hdrs/t3?h=Vary:*", headers = { ["Origin"] = "https://app.example" } }))
    assert.equal("*", res.h["vary"])
  end)

  it("an actual request from a refused origin goes through without Allow headers (the browser blocks it), with Vary: Origin", function()
    local res = assert(proxy:request({ path = "/min/x", headers = { ["Origin"] = "https://evil.example" } }))
    assert.equal(200, res.status)
    assert.is_nil(res.h["access-control-allow-origin"])
    assert.equal("Origin", res.h["vary"])
    -- no Origin at all: Vary too (a cache must keep the two apart)
    res = assert(proxy:request({ path = "/min/y" }))
    assert.is_nil(res.h["access-control-allow-origin"])
    assert.equal("Origin", res.h["vary"])
    -- OPTIONS without Access-Control-Request-Method is not a preflight: it goes upstream
    res = assert(proxy:request({ method = "OPTIONS", path = "/min/opt", headers = { ["Origin"] = "https://app.example" } }))
    assert.equal(200, res.status)
    assert.equal(1, origin:count_path("/min/opt"))
    assert.equal("https://app.example", res.h["access-control-allow-origin"])
  end)

  it("origins = { \"*\" } sends * and no Vary; with credentials it sends the origin itself, never *", function()
    local res = assert(proxy:request({ path = "/any/x", headers = { ["Origin"] = "https://who.ever" } }))
    assert.equal("*", res.h["access-control-allow-origin"])
    assert.is_nil(res.h["vary"])
    res = assert(proxy:request({ path = "/anycred/x", headers = { ["Origin"] = "https://who.ever" } }))
    assert.equal("https://who.ever", res.h["access-control-allow-origin"])
    assert.equal("true", res.h["access-control-allow-credentials"])
    assert.equal("Origin", res.h["vary"])
    local p = preflight("/anycred/p", "https://who.ever", "GET")
    assert.equal("https://who.ever", p.h["access-control-allow-origin"])
  end)

  it("routes without the policy are untouched", function()
    local res = assert(proxy:request({ path = "/plain", headers = { ["Origin"] = "https://app.example" } }))
    assert.is_nil(res.h["access-control-allow-origin"])
    assert.is_nil(res.h["vary"])
  end)
end)

describe("mg.policy.cors config errors", function()
  local cases = {
    { 'mg.policy.cors { origin = { "https://a" } }', "mg.policy.cors: unknown key 'origin'" },
    { 'mg.policy.cors {}', "mg.policy.cors: 'origins' is required" },
    { 'mg.policy.cors { origins = { "https://a/x" } }', "origins[1]: 'https://a/x': an origin has no path" },
    { 'mg.policy.cors { origins = { "app.example" } }', "origins[1]: 'app.example' is not an origin" },
    { 'mg.policy.cors { origins = { "https://a.*.com" } }', "a wildcard is one '*' in front of a domain" },
    { 'mg.policy.cors { origins = { { pattern = "[" } } }', "origins[1]: bad Lua pattern '['" },
    { 'mg.policy.cors { origins = { "*" }, methods = { "GE T" } }', "methods[1]: 'GE T' is not an HTTP token" },
    { 'mg.policy.cors { origins = { "*" }, max_age = 1.5 }', "'max_age' must be whole seconds" },
    { 'mg.policy.cors { origins = { "*" }, credentials = "yes" }', "'credentials' must be a boolean" },
  }
  helpers.use_error_cases(it, cases)
end)
