-- Header rules of docs/config.md ("What the proxy does to headers"), checked
-- on what the origin received (/echo) and what the client received (/hop).
local helpers = require "spec.helpers"

describe("headers", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false }
mg.listen { "127.0.0.1:${port}" }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } } }
]], { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  -- GET /echo with the given header list; returns the echo document.
  local function echo_with(headers)
    return helpers.echo(assert(proxy:request({ path = "/echo", headers = headers })))
  end

  local function values(doc, name)
    return helpers.echo_headers(doc, name)
  end

  it("removes hop-by-hop request headers and those named in Connection", function()
    local doc = echo_with({
      { "Host", "x" },
      { "Connection", "keep-alive, X-Secret" },
      { "X-Secret", "1" },
      { "Keep-Alive", "timeout=5" },
      { "Proxy-Connection", "keep-alive" },
      { "TE", "trailers" },
      { "Trailer", "X-T" },
      { "Upgrade", "foo/1" },
      { "Proxy-Authorization", "Basic Zm9vOmJhcg==" },
      { "X-Keep", "yes" },
    })
    for _, name in ipairs({ "x-secret", "keep-alive", "proxy-connection", "te", "trailer",
                            "upgrade", "proxy-authorization" }) do
      assert.same({}, values(doc, name), name .. " reached the origin")
    end
    for _, v in ipairs(values(doc, "connection")) do
      assert.is_nil(v:lower():find("x-secret", 1, true), "Connection: " .. v)
    end
    assert.same({ "yes" }, values(doc, "x-keep"))
  end)

  it("sets X-Forwarded-For to the client address", function()
    assert.same({ "127.0.0.1" }, values(echo_with({ { "Host", "x" } }), "x-forwarded-for"))
  end)

  it("replaces the X-Forwarded-For of a client that is not a trusted proxy", function()
    local doc = echo_with({ { "Host", "x" }, { "X-Forwarded-For", "10.1.2.3" } })
    assert.same({ "127.0.0.1" }, values(doc, "x-forwarded-for"))
  end)

  it("sets X-Forwarded-Proto to http, replacing the client's value", function()
    assert.same({ "http" }, values(echo_with({ { "Host", "x" } }), "x-forwarded-proto"))
    assert.same({ "http" },
      values(echo_with({ { "Host", "x" }, { "X-Forwarded-Proto", "https" } }), "x-forwarded-proto"))
  end)

  it("sets X-Forwarded-Host to the client's Host, replacing the client's value", function()
    local doc = echo_with({ { "Host", "front.example:8080" }, { "X-Forwarded-Host", "evil.test" } })
    assert.same({ "front.example:8080" }, values(doc, "x-forwarded-host"))
  end)

  it("adds Via: 1.1 moongate", function()
    assert.same({ "1.1 moongate" }, values(echo_with({ { "Host", "x" } }), "via"))
  end)

  it("appends to an existing Via", function()
    local doc = echo_with({ { "Host", "x" }, { "Via", "1.0 fred" } })
    assert.equal("1.0 fred, 1.1 moongate", table.concat(values(doc, "via"), ", "))
  end)

  it("joins several Via headers into one list and appends to it", function()
    local doc = echo_with({ { "Host", "x" }, { "Via", "1.0 fred" }, { "Via", "1.1 p.example" } })
    assert.same({ "1.0 fred, 1.1 p.example, 1.1 moongate" }, values(doc, "via"))
  end)

  it("passes Host through unchanged", function()
    assert.same({ "Front.Example:8080" }, values(echo_with({ { "Host", "Front.Example:8080" } }), "host"))
  end)

  it("sets its own X-Request-Id, replacing an untrusted client's one", function()
    local ids = values(echo_with({ { "Host", "x" } }), "x-request-id")
    assert.equal(1, #ids)
    assert.matches("^%x+$", ids[1])
    local theirs = values(echo_with({ { "Host", "x" }, { "X-Request-Id", "abc-123" } }), "x-request-id")
    assert.equal(1, #theirs)
    assert.matches("^%x+$", theirs[1])
  end)

  it("gives different requests different request ids", function()
    local a = values(echo_with({ { "Host", "x" } }), "x-request-id")[1]
    local b = values(echo_with({ { "Host", "x" } }), "x-request-id")[1]
    assert.are_not.equal(a, b)
  end)

  it("removes Expect before the upstream", function()
    local c = proxy:connect()
    assert(c:send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"))
    local first = assert(c:response({ timeout = 3 }))
    assert.equal(100, first.status)
    assert(c:send("ok"))
    local doc = helpers.echo(assert(c:final_response()))
    assert.same({}, values(doc, "expect"))
    c:close()
  end)

  -- The origin's /hop-ka answers with Connection: keep-alive, X-Foo and friends.
  local function assert_response_cleaned(res)
    assert.equal(200, res.status)
    assert.equal("hop", res.body)
    for _, name in ipairs({ "x-foo", "keep-alive", "proxy-connection", "proxy-authenticate",
                            "x-powered-by" }) do
      assert.is_nil(res.h[name], name .. " reached the client")
    end
    assert.is_nil((res.h["server"] or ""):find("secret", 1, true), "backend Server reached the client")
    assert.is_nil((res.h["connection"] or ""):lower():find("x-foo", 1, true))
    assert.equal("yes", res.h["x-normal"])
  end

  it("removes hop-by-hop response headers, those named in Connection, Server and X-Powered-By", function()
    local c = proxy:connect()
    assert_response_cleaned(assert(c:request({ path = "/hop-ka" })))
    c:close()
  end)

  it("keeps the client connection open when the origin said Connection: close", function()
    local c = proxy:connect()
    local res = assert(c:request({ path = "/hop" }))
    assert_response_cleaned(res)
    assert.is_nil((res.h["connection"] or ""):lower():find("close", 1, true))
    assert.equal(200, assert(c:request({ path = "/echo" })).status)
    c:close()
  end)
end)
