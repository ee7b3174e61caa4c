-- Listeners and workers: several addresses (IPv6 too), several workers on
-- SO_REUSEPORT sockets serving many concurrent connections.
local helpers = require "spec.helpers"
local socket = require "socket"

local function ipv6_loopback()
  local s = socket.tcp6()
  local ok = s and s:bind("::1", 0)
  if s then s:close() end
  return ok ~= nil
end

describe("listeners", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    local v6 = ipv6_loopback() and '"[::1]:${port6}", ' or ""
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 2, access_log = false }
mg.listen { "127.0.0.1:${port}", ]] .. v6 .. [["127.0.0.1:${port2}" }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } } }
]], { ports = { "port2", "port6" }, wait_ports = { "port", "port2" },
      vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("serves every address of one mg.listen", function()
    assert.equal(200, assert(proxy:request({ path = "/echo" })).status)
    assert.equal(200, assert(proxy:request({ path = "/echo" }, proxy.ports.port2)).status)
  end)

  it("serves an IPv6 address", function()
    if not ipv6_loopback() then
      pending("no IPv6 loopback on this machine")
      return
    end
    local c
    assert(helpers.wait_until(function()
      local ok, conn = pcall(helpers.connect, proxy.ports.port6, 1, "::1")
      c = ok and conn
      return c
    end, 3), "nothing listens on [::1]")
    local doc = helpers.echo(assert(c:request({ path = "/echo" })))
    assert.equal("::1", helpers.echo_headers(doc, "x-forwarded-for")[1])
    c:close()
  end)

  it("answers 50 concurrent keep-alive connections, 3 requests each, with 2 workers", function()
    local clients = {}
    for i = 1, 50 do clients[i] = proxy:connect() end
    for round = 1, 3 do
      for i, c in ipairs(clients) do
        assert(c:send(helpers.request_bytes({ path = "/echo?c=" .. i .. "&r=" .. round })))
      end
      for i, c in ipairs(clients) do
        local doc = helpers.echo(assert(c:response()))
        assert.equal("/echo?c=" .. i .. "&r=" .. round, doc.path)
      end
    end
    for _, c in ipairs(clients) do c:close() end
  end)
end)
