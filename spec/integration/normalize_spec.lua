-- Routing on the normalized path and a checked Host (hardening item 7): routes
-- match what the path means, not how it was spelled; what goes upstream is the
-- normalized target by default, or the target as received (forward_path).
local helpers = require "spec.helpers"

local CONFIG = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, forward_path = "${forward}" }
mg.listen { "127.0.0.1:${port}" }
mg.route { path = "/admin", respond = { status = 403, body = "denied\n" } }
mg.route { host = "example.com", path = "/where", respond = { status = 200, body = "example.com\n" } }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } } }
]]

local function get(proxy, target, host)
  return proxy:request("GET " .. target .. " HTTP/1.1\r\nHost: " .. (host or "x") .. "\r\n\r\n")
end

describe("path normalization", function()
  local origin, proxy, raw_proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    proxy = helpers.proxy(CONFIG, { vars = { origin = origin.addr, forward = "normalized" } })
    raw_proxy = helpers.proxy(CONFIG, { vars = { origin = origin.addr, forward = "as_received" } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy, raw_proxy)
  end)

  for _, target in ipairs { "/admin", "/%61dmin", "/%61%64%6D%69%6E", "//admin", "///admin/", "/x/../admin",
                            "/./admin", "/x/y/../../admin", "/%2e%2e/admin", "/%2E/admin", "/../admin",
                            "/admin/./x/.." } do
    it("routes " .. target .. " as /admin (denied by its route), whatever forward_path says", function()
      for _, p in ipairs { proxy, raw_proxy } do
        local res = assert(get(p, target))
        assert.equal(403, res.status)
        assert.equal("denied\n", res.body)
      end
    end)
  end

  for _, target in ipairs { "/%2Fadmin", "/a%2fb", "/a%5Cb", "/a%00b", "/a%0Ab", "/a%0db", "/a%7Fb", "/a%1Fb" } do
    it("answers 400 to " .. target .. " (an escape of '/', '\\', NUL or a control byte)", function()
      local before = origin:stats().requests
      helpers.assert_error(assert(get(proxy, target)), 400)
      assert.equal(before, origin:stats().requests)
    end)
  end

  for _, target in ipairs { "/a%zzb", "/a%4", "/a?x=%zz", "/a?x=%4", "/a?x=%" } do
    it("answers 400 to " .. target .. " (a '%' that does not start an escape, in the path or the query)", function()
      helpers.assert_error(assert(get(proxy, target)), 400)
    end)
  end

  it("forwards the normalized target by default, with the query as sent", function()
    local doc = helpers.echo(assert(get(proxy, "/echo/./a//b/../c%7E%41?q=%2F..//&x=%41")))
    assert.equal("/echo/a/c~A?q=%2F..//&x=%41", doc.path)
  end)

  it("forwards the target as received with forward_path = \"as_received\"", function()
    local doc = helpers.echo(assert(get(raw_proxy, "/echo/./a//b/../c%7E%41?q=%2F..//")))
    assert.equal("/echo/./a//b/../c%7E%41?q=%2F..//", doc.path)
  end)

  it("gives hooks the normalized path", function()
    local p = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false }
mg.listen { "127.0.0.1:${port}" }
mg.route { path = "/", respond = function(req) return 200, req.path .. "\n" end }
]])
    local res = assert(get(p, "/a/%62/../c//d"))
    assert.equal("/a/c/d\n", res.body)
    p:stop()
  end)

  it("refuses forward_path values it does not know, naming the line", function()
    local dir = helpers.tmpdir()
    helpers.write_file(dir .. "/proxy.lua",
      'local mg = require "moongate"\nmg.listen { "127.0.0.1:1" }\nmg.config { forward_path = "raw" }\n')
    local out, rc = helpers.moongate({ "-t", "-c", dir .. "/proxy.lua" })
    assert.equal(1, rc)
    assert.truthy(out:find("proxy.lua:3:", 1, true), out)
    assert.truthy(out:find("forward_path", 1, true), out)
  end)

  describe("Host", function()
    for _, host in ipairs { "example.com:80a", "example.com:", "user@example.com", "a b", "example.com:99999",
                            "ex%61mple.com", "[::1", "example..com" } do
      if host ~= "example.com:" then
        it("answers 400 to Host: " .. host, function()
          helpers.assert_error(assert(get(proxy, "/echo", host)), 400)
        end)
      end
    end

    it("takes an empty port after the colon as no port (RFC 3986)", function()
      local res = assert(get(proxy, "/where", "example.com:"))
      assert.equal("example.com\n", res.body)
    end)

    it("matches a host with a trailing dot to the same routes as without", function()
      assert.equal("example.com\n", assert(get(proxy, "/where", "example.com")).body)
      assert.equal("example.com\n", assert(get(proxy, "/where", "example.com.")).body)
      assert.equal("example.com\n", assert(get(proxy, "/where", "EXAMPLE.com.:8080")).body)
    end)

    it("passes a bracketed IPv6 host with a port, and the Host header unchanged", function()
      local doc = helpers.echo(assert(get(proxy, "/echo", "[::1]:8080")))
      assert.same({ "[::1]:8080" }, helpers.echo_headers(doc, "host"))
    end)

    it("answers 400 to an absolute-form target whose authority has userinfo", function()
      helpers.assert_error(assert(proxy:request("GET http://user@example.com/where HTTP/1.1\r\nHost: x\r\n\r\n")), 400)
    end)
  end)
end)
