-- Issue 14: mg.policy.headers on the real binary: request and response headers
-- removed, renamed, set and added; the path rewritten with a PCRE2 expression and
-- its captures (query kept); the "security" preset and its overrides; config
-- errors (a bad regular expression with PCRE2's message and offset, a $N past the
-- groups, CR/LF in values) naming file:line.
local helpers = require "spec.helpers"

local CONF = [[
local mg = require "moongate"
mg.config { workers = 2 }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
mg.route { path = "/v1/", upstream = o, use = { mg.policy.headers { rewrite = { "^/v1/(.*)$", "/api/$1" } } } }
mg.route { path = "/multi/", upstream = o, use = { mg.policy.headers { rewrite = {
  { "^/multi/user/(\\d+)/post/(?<post>\\d+)$", "/posts/${2}?by=$1" },
  { "^/multi/(a|b)(x)?/", "/$1[$2]$$/" },
} } } }
mg.route { path = "/req/", upstream = o, use = { mg.policy.headers { request = {
  remove = { "X-Drop" }, rename = { ["X-Old"] = "X-New" },
  set = { ["X-Set"] = "s1", ["X-Count"] = 7 }, add = { ["X-Add"] = { "a1", "a2" } } } } } }
mg.route { host = "rsp.test", path = "/hdrs/", upstream = o, use = { mg.policy.headers { response = {
  remove = { "X-Secret" }, rename = { ["X-Internal"] = "X-Public" }, set = { ["Cache-Control"] = "no-store" },
  add = { ["X-Via"] = "mg" } } } } }
mg.route { host = "sec.test", path = "/", upstream = o, use = { mg.policy.headers { preset = "security" } } }
mg.route { host = "sec2.test", path = "/", upstream = o, use = { mg.policy.headers { preset = "security",
  response = { set = { ["X-Frame-Options"] = "SAMEORIGIN", ["Strict-Transport-Security"] = false } } } } }
mg.route { path = "/", upstream = o }
]]

describe("mg.policy.headers", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "o" })
    proxy = helpers.proxy(CONF, { vars = { origin = origin.addr, ["2"] = "${2}" } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("rewrite { \"^/v1/(.*)$\", \"/api/$1\" } sends /api/... upstream, the query kept", function()
    local doc = helpers.echo(proxy:request({ path = "/v1/users/7?x=1&y=2" }))
    assert.equal("/api/users/7?x=1&y=2", doc.path)
    doc = helpers.echo(proxy:request({ path = "/v1/" }))
    assert.equal("/api/", doc.path)
  end)

  it("a list of rewrites: the first that matches; named groups, ${N}, $$, an unset group is empty, the rest of the path stays", function()
    local doc = helpers.echo(proxy:request({ path = "/multi/user/12/post/345" }))
    assert.equal("/posts/345?by=12", doc.path)
    doc = helpers.echo(proxy:request({ path = "/multi/ax/rest?q=1" }))
    assert.equal("/a[x]$/rest?q=1", doc.path)
    doc = helpers.echo(proxy:request({ path = "/multi/b/rest" }))
    assert.equal("/b[]$/rest", doc.path)
    -- no match: unchanged
    doc = helpers.echo(proxy:request({ path = "/multi/user/1/post/2?x=y" }))
    assert.equal("/posts/2?by=1&x=y", doc.path)
    doc = helpers.echo(proxy:request({ path = "/multi/zzz" }))
    assert.equal("/multi/zzz", doc.path)
  end)

  it("request headers: remove, rename, set (replacing the client's), add (every value)", function()
    local doc = helpers.echo(proxy:request({ path = "/req/x", headers = {
      { "X-Drop", "d" }, { "X-Old", "o1" }, { "X-Set", "client" }, { "X-Add", "c" } } }))
    assert.same({}, helpers.echo_headers(doc, "x-drop"))
    assert.same({}, helpers.echo_headers(doc, "x-old"))
    assert.same({ "o1" }, helpers.echo_headers(doc, "x-new"))
    assert.same({ "s1" }, helpers.echo_headers(doc, "x-set"))
    assert.same({ "7" }, helpers.echo_headers(doc, "x-count"))
    assert.same({ "c", "a1", "a2" }, helpers.echo_headers(doc, "x-add"))
  end)

  it("response headers: remove, rename, set, add on the upstream's answer", function()
    local res = assert(proxy:request({ path = "/hdrs/r?h=X-Secret:s&h=X-Internal:i&h=Cache-Control:max-age%3D60",
                                       headers = { Host = "rsp.test" } }))
    assert.equal(200, res.status)
    assert.is_nil(res.h["x-secret"])
    assert.is_nil(res.h["x-internal"])
    assert.equal("i", res.h["x-public"])
    assert.equal("no-store", res.h["cache-control"])
    assert.equal("mg", res.h["x-via"])
  end)

  it("preset = \"security\" adds HSTS, nosniff, Referrer-Policy, X-Frame-Options; the upstream's own stay", function()
    local res = assert(proxy:request({ path = "/hdrs/s1", headers = { Host = "sec.test" } }))
    assert.equal("max-age=31536000; includeSubDomains", res.h["strict-transport-security"])
    assert.equal("nosniff", res.h["x-content-type-options"])
    assert.equal("strict-origin-when-cross-origin", res.h["referrer-policy"])
    assert.equal("DENY", res.h["x-frame-options"])
    res = assert(proxy:request({ path = "/hdrs/s2?h=Referrer-Policy:no-referrer", headers = { Host = "sec.test" } }))
    assert.equal("no-referrer", res.h["referrer-policy"])
  end)

  it("preset overrides: a set value replaces the preset's, false drops it", function()
    local res = assert(proxy:request({ path = "/hdrs/s3", headers = { Host = "sec2.test" } }))
    assert.equal("SAMEORIGIN", res.h["x-frame-options"])
    assert.is_nil(res.h["strict-transport-security"])
    assert.equal("nosniff", res.h["x-content-type-options"])
  end)

  it("routes without the policy are untouched", function()
    local res = assert(proxy:request({ path = "/hdrs/plain?h=X-Secret:s" }))
    assert.equal("s", res.h["x-secret"])
    assert.is_nil(res.h["x-content-type-options"])
    local doc = helpers.echo(proxy:request({ path = "/v2/x" }))
    assert.equal("/v2/x", doc.path)
  end)

  it("moongate -T shows the rewrite compiled by the JIT", function()
    local out, rc = helpers.moongate({ "-T", "-c", proxy.dir .. "/proxy.lua" })
    assert.equal(0, rc, out)
    assert.truthy(out:find("headers (route): rewrite=^/v1/(.*)$ -> /api/$1 (jit)", 1, true), out)
  end)
end)

describe("mg.policy.headers config errors", function()
  local cases = {
    { [[mg.policy.headers { rewrite = { "^/v1/(.*$", "/api/$1" } }]],
      "mg.policy.headers: rewrite: bad regular expression '^/v1/(.*$': missing closing parenthesis at offset 9" },
    { [[mg.policy.headers { rewrite = { { "^/a", "/b" }, { "x{2,1}", "/c" } } }]],
      "rewrite[2]: bad regular expression 'x{2,1}': numbers out of order in {} quantifier at offset 5" },
    { [[mg.policy.headers { rewrite = { "^/v1/(.*)$", "/api/$2" } }]], "rewrite: $2 but the expression has 1 capture group" },
    { [[mg.policy.headers { rewrite = { "^/v1/(.*)$", "/api/$x" } }]], "rewrite: '$' must be followed by a group number" },
    { [[mg.policy.headers { request = { set = { ["X-A"] = "a\r\nX-B: b" } } }]], "request.set.X-A has CR, LF or NUL" },
    { [[mg.policy.headers { response = { add = { ["X-A"] = { "ok", "b\0" } } } }]], "response.add.X-A[2] has CR, LF or NUL" },
    { [[mg.policy.headers { response = { set = { ["Bad Name"] = "v" } } }]], "response.set: 'Bad Name' is not a header name" },
    { [[mg.policy.headers { response = { replace = {} } }]], "response: unknown key 'replace'" },
    { [[mg.policy.headers { preset = "strict" }]], "'preset' must be \"security\"" },
    { [[mg.policy.headers { rewrites = {} }]], "unknown key 'rewrites'" },
    { [[mg.policy.headers {}]], "nothing to do" },
  }
  helpers.use_error_cases(it, cases)
end)
