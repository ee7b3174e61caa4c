-- Bodies both ways: chunked and Content-Length requests, 10 MiB in each
-- framing, checked byte for byte and by sha256.
local helpers = require "spec.helpers"

local MiB10 = 10 * 1024 * 1024

describe("bodies", function()
  local origin, proxy, big_file, big_sha

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, limits = { body_size = 16777216 } }
mg.listen { "127.0.0.1:${port}" }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } } }
]], { vars = { origin = origin.addr } })
    big_file = proxy.dir .. "/big.bin"
    helpers.write_file(big_file, helpers.pattern(MiB10))
    big_sha = helpers.sha256_file(big_file)
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("passes a chunked request body intact", function()
    local c = proxy:connect()
    local res = assert(c:request("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      .. "5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"))
    local doc = helpers.echo(res)
    assert.equal(11, doc.body_len)
    assert.equal(helpers.sha256("hello world"), doc.body_sha256)
    c:close()
  end)

  it("passes a 10 MiB request body with Content-Length intact", function()
    local res = assert(helpers.curl({ "-H", "Expect:", "-H", "Content-Type: application/octet-stream",
      "--data-binary", "@" .. big_file, proxy:url("/echo") }))
    local doc = helpers.echo(res)
    assert.equal(MiB10, doc.body_len)
    assert.equal(big_sha, doc.body_sha256)
  end)

  it("passes a 10 MiB chunked request body intact", function()
    local res = assert(helpers.curl({ "-H", "Expect:", "-H", "Transfer-Encoding: chunked",
      "-H", "Content-Type: application/octet-stream",
      "--data-binary", "@" .. big_file, proxy:url("/echo") }))
    local doc = helpers.echo(res)
    assert.equal(MiB10, doc.body_len)
    assert.equal(big_sha, doc.body_sha256)
  end)

  it("passes a 10 MiB request body sent by a raw client with Content-Length", function()
    local c = proxy:connect()
    local res = assert(c:request({ method = "POST", path = "/echo", body = helpers.pattern(MiB10) }))
    local doc = helpers.echo(res)
    assert.equal(MiB10, doc.body_len)
    assert.equal(big_sha, doc.body_sha256)
    c:close()
  end)

  for _, kind in ipairs({ "bytes", "chunked", "close" }) do
    it("passes a 10 MiB " .. kind .. " response body intact", function()
      local res = assert(helpers.curl({ proxy:url("/" .. kind .. "/" .. MiB10) },
        { keep_body_in_file = true }))
      assert.equal(200, res.status)
      assert.equal(big_sha, helpers.sha256_file(res.body_file))
      if kind == "bytes" then assert.equal(tostring(MiB10), res.h["content-length"]) end
    end)
  end

  it("passes a 10 MiB chunked response body to a raw client byte for byte", function()
    local c = proxy:connect()
    local res = assert(c:request({ path = "/chunked/" .. MiB10 }))
    assert.equal(MiB10, #res.body)
    assert.is_true(res.body == helpers.pattern(MiB10))
    c:close()
  end)

  it("gives an HTTP/1.0 client an until-close body for a chunked origin response", function()
    local c = proxy:connect()
    assert(c:send("GET /chunked/100000 HTTP/1.0\r\nHost: x\r\n\r\n"))
    local res = assert(c:response())
    assert.equal(200, res.status)
    assert.is_nil(res.h["transfer-encoding"])
    assert.equal(100000, #res.body)
    assert.is_true(res.body == helpers.pattern(100000))
    assert.is_true(res.close_delimited or (c:closed(2)))
    c:close()
  end)
end)
