-- Bodies are streamed, never fully buffered: when one side stops reading,
-- moongate stops reading the other. Kernel socket buffers on loopback hold a
-- few MiB per socket, so the bounds below are far above what a streaming
-- proxy lets through and far below what a buffering one would take in.
local helpers = require "spec.helpers"

local GiB = 1024 * 1024 * 1024
local MiB = 1024 * 1024

describe("backpressure", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, limits = { body_size = 0 } }
mg.listen { "127.0.0.1:${port}" }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } } }
]], { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("stops reading a 1 GiB response from the origin while the client reads nothing", function()
    origin:reset_stats()
    local rss0 = proxy:rss()
    local c = proxy:connect()
    assert(c:send("GET /fill/" .. GiB .. " HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert(c:take_until("\r\n\r\n", helpers.now() + 3), "no response head")
    helpers.sleep(1.5)
    local sent = origin:stats().body_bytes_sent
    local grown = proxy:rss() - rss0
    c:close()
    assert(sent < 64 * MiB, string.format("the origin could send %.1f MiB", sent / MiB))
    assert(grown < 48 * 1024, string.format("moongate grew by %.1f MiB", grown / 1024))
  end)

  it("stops reading a 1 GiB request body from the client while the origin reads nothing", function()
    origin:reset_stats()
    local rss0 = proxy:rss()
    local c = proxy:connect()
    assert(c:send("POST /slow-read/3 HTTP/1.1\r\nHost: x\r\nContent-Length: " .. GiB .. "\r\n\r\n"))
    local chunk = ("u"):rep(MiB)
    local sent, deadline = 0, helpers.now() + 1.5
    for _ = 1, 1024 do
      local ok, err, n = c:send(chunk, math.max(0.01, deadline - helpers.now()))
      if not ok then
        sent = sent + (n or 0)
        assert.equal("timeout", err)
        break
      end
      sent = sent + #chunk
    end
    local grown = proxy:rss() - rss0
    c:close()
    assert(sent < 64 * MiB, string.format("the client could send %.1f MiB", sent / MiB))
    assert(grown < 48 * 1024, string.format("moongate grew by %.1f MiB", grown / 1024))
  end)

  it("serves new requests after both aborted transfers", function()
    assert.equal(200, assert(proxy:request({ path = "/echo" })).status)
  end)
end)
