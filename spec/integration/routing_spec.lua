-- Routing: requests reach the right upstream or `respond` route, the most
-- specific route wins (docs/config.md, mg.route), and no match is a 404.
local helpers = require "spec.helpers"

describe("routing", function()
  local a, b, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    b = helpers.origin({ name = "B" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false }
mg.listen { "127.0.0.1:${port}" }
mg.listen { "127.0.0.1:${admin}", name = "admin" }
local a = mg.upstream "a" { servers = { "${a}" } }
mg.upstream "b" { servers = { "${b}" } }

mg.route { host = "proxied.test", upstream = a }
mg.route { host = "byname.test", upstream = "b" }
mg.route { host = "respond.test", respond = { status = 201, body = "made\n",
  headers = { ["content-type"] = "text/x-test", ["x-custom"] = "yes" } } }

mg.route { host = "api.example.com", respond = { status = 200, body = "exact api" } }
mg.route { host = "*.example.com", respond = { status = 200, body = "wild example" } }
mg.route { host = "a.example.com", respond = { status = 200, body = "exact a" } }
mg.route { host = "*.b.example.com", respond = { status = 200, body = "wild b" } }

mg.route { host = "paths.test", path = "/p/", respond = { status = 200, body = "p" } }
mg.route { host = "paths.test", path = "/p/long/", respond = { status = 200, body = "p long" } }
mg.route { host = "paths.test", path = "/m/", respond = { status = 200, body = "m any" } }
mg.route { host = "paths.test", path = "/m/", methods = { "POST" },
  respond = { status = 200, body = "m post" } }
mg.route { host = "paths.test", path = "/dup/", respond = { status = 200, body = "dup first" } }
mg.route { host = "paths.test", path = "/dup/", respond = { status = 200, body = "dup second" } }

mg.route { path = "/hostwins-long-path/", respond = { status = 200, body = "path only" } }
mg.route { host = "hostwins.test", respond = { status = 200, body = "host" } }

mg.route { listener = "admin", respond = { status = 200, body = "admin root" } }
mg.route { listener = "admin", path = "/admin/", respond = { status = 200, body = "admin area" } }
]], { ports = { "admin" }, wait_ports = { "port", "admin" }, vars = { a = a.addr, b = b.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  local function get(host, path, method, port)
    local res = assert(proxy:request({ method = method or "GET", path = path,
                                       headers = { { "Host", host } } }, port))
    return res
  end

  local function body_of(host, path, method, port)
    local res = get(host, path, method, port)
    assert.equal(200, res.status)
    return res.body
  end

  it("proxies a request to the route's upstream with method and path intact", function()
    local doc = helpers.echo(get("proxied.test", "/some/path?q=1"))
    assert.equal("A", doc.name)
    assert.equal("GET", doc.method)
    assert.equal("/some/path?q=1", doc.path)
  end)

  it("passes a POST body through to the upstream", function()
    local res = assert(proxy:request({ method = "POST", path = "/post",
      headers = { { "Host", "proxied.test" } }, body = "payload" }))
    local doc = helpers.echo(res)
    assert.equal("POST", doc.method)
    assert.equal(7, doc.body_len)
    assert.equal(helpers.sha256("payload"), doc.body_sha256)
  end)

  it("finds an upstream given by name", function()
    assert.equal("B", helpers.echo(get("byname.test", "/x")).name)
  end)

  it("answers 404 with the error body when no route matches", function()
    helpers.assert_error(get("nothing.test", "/x"), 404)
  end)

  it("answers a respond route with its status, body and headers", function()
    local res = get("respond.test", "/")
    assert.equal(201, res.status)
    assert.equal("made\n", res.body)
    assert.equal("text/x-test", res.h["content-type"])
    assert.equal("yes", res.h["x-custom"])
    assert.equal("5", res.h["content-length"])
  end)

  it("matches an exact host", function()
    assert.equal("exact api", body_of("api.example.com", "/"))
  end)

  it("matches hosts case-insensitively and ignores the port", function()
    assert.equal("exact api", body_of("API.Example.COM:8080", "/"))
  end)

  it("matches a wildcard host for any subdomain", function()
    assert.equal("wild example", body_of("x.example.com", "/"))
    assert.equal("wild example", body_of("deep.x.example.com", "/"))
  end)

  it("prefers an exact host over a wildcard of the same length declared before it", function()
    assert.equal("exact a", body_of("a.example.com", "/"))
  end)

  it("prefers the longer wildcard host", function()
    assert.equal("wild b", body_of("x.b.example.com", "/"))
  end)

  it("prefers the longest path prefix", function()
    assert.equal("p long", body_of("paths.test", "/p/long/x"))
    assert.equal("p", body_of("paths.test", "/p/x"))
  end)

  it("treats path as a prefix, so /px matches no /p/ route", function()
    helpers.assert_error(get("paths.test", "/px"), 404)
  end)

  it("prefers a route with methods over one without when the method matches", function()
    assert.equal("m post", body_of("paths.test", "/m/", "POST"))
    assert.equal("m any", body_of("paths.test", "/m/", "GET"))
  end)

  it("takes the first declared of two equal routes", function()
    assert.equal("dup first", body_of("paths.test", "/dup/"))
  end)

  it("prefers a longer host over a longer path", function()
    assert.equal("host", body_of("hostwins.test", "/hostwins-long-path/x"))
    assert.equal("path only", body_of("other.test", "/hostwins-long-path/x"))
  end)

  it("prefers routes bound to the request's listener over more specific unbound ones", function()
    assert.equal("admin root", body_of("paths.test", "/p/long/x", "GET", proxy.ports.admin))
    assert.equal("admin area", body_of("paths.test", "/admin/x", "GET", proxy.ports.admin))
  end)

  it("never serves a listener-bound route on another listener", function()
    helpers.assert_error(get("nothing.test", "/admin/x"), 404)
  end)
end)
