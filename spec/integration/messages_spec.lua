-- Message semantics: Expect: 100-continue, HEAD, responses without a body
-- (204, 304) and interim 1xx responses from the origin.
local helpers = require "spec.helpers"

describe("message semantics", function()
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

  it("answers Expect: 100-continue with 100 Continue, then the final response", function()
    local c = proxy:connect()
    assert(c:send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
      .. "Expect: 100-continue\r\n\r\n"))
    local interim = assert(c:response({ timeout = 3 }))
    assert.equal("HTTP/1.1 100 Continue", interim.status_line)
    assert(c:send("hello"))
    local res, more = c:final_response()
    local doc = helpers.echo(res)
    assert.same({}, more)
    assert.equal(5, doc.body_len)
    assert.equal(helpers.sha256("hello"), doc.body_sha256)
    assert.same({}, helpers.echo_headers(doc, "expect"))
    c:close()
  end)

  it("answers HEAD with the GET's Content-Length and no body", function()
    local c = proxy:connect()
    assert(c:send("HEAD /bytes/1000 HTTP/1.1\r\nHost: x\r\n\r\n"))
    local res = assert(c:response({ head = true }))
    assert.equal(200, res.status)
    assert.equal("1000", res.h["content-length"])
    -- Had a body followed, it would be read here as the next status line.
    local next = helpers.echo(assert(c:request({ path = "/echo?after-head" })))
    assert.equal("/echo?after-head", next.path)
    c:close()
  end)

  it("sends HEAD to the origin as HEAD", function()
    local c = proxy:connect()
    assert(c:send("HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert.equal(200, assert(c:response({ head = true })).status)
    local lines = origin:requests()
    assert.equal("HEAD /echo HTTP/1.1", lines[#lines])
    c:close()
  end)

  it("passes 204 without a body", function()
    local c = proxy:connect()
    assert(c:send("GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\n"))
    local res = assert(c:response())
    assert.equal(204, res.status)
    assert.is_nil(res.h["transfer-encoding"])
    assert.equal("/echo?after-204", helpers.echo(assert(c:request({ path = "/echo?after-204" }))).path)
    c:close()
  end)

  it("passes 304 without a body although it carries Content-Length", function()
    local c = proxy:connect()
    assert(c:send("GET /status/304 HTTP/1.1\r\nHost: x\r\n\r\n"))
    local res = assert(c:response({ timeout = 3 }))
    assert.equal(304, res.status)
    assert.equal('"v1"', res.h["etag"])
    assert.equal("/echo?after-304", helpers.echo(assert(c:request({ path = "/echo?after-304" }))).path)
    c:close()
  end)

  it("gives the final 200 after an origin's 103 Early Hints, never the 103 as final", function()
    local c = proxy:connect()
    assert(c:send("GET /status/103 HTTP/1.1\r\nHost: x\r\n\r\n"))
    local res, interim = c:final_response({ timeout = 3 })
    assert(res, interim)
    assert.equal(200, res.status)
    assert.equal("final after 103\n", res.body)
    for _, r in ipairs(interim) do assert.equal(103, r.status) end
    assert.equal("/echo?after-103", helpers.echo(assert(c:request({ path = "/echo?after-103" }))).path)
    c:close()
  end)

  it("passes other statuses with their body", function()
    local res = assert(proxy:request({ path = "/status/418" }))
    assert.equal(418, res.status)
    assert.equal("status 418\n", res.body)
  end)
end)
