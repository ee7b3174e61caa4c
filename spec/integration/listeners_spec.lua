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

-- deferred (TCP_DEFER_ACCEPT, on by default): the kernel hands a connection over
-- once its first bytes are in. Seen from outside in /proc/net/tcp: the server's
-- side of a connection that has sent nothing stays in SYN_RECV (state 03)
-- instead of ESTABLISHED (01).
describe("deferred accept", function()
  local signal = require "posix.signal"
  local proxy

  local count = helpers.count

  -- the state (hex) of the server-side socket of 127.0.0.1:port <- client
  local function server_state(port, client)
    local cport = tonumber(client:match(":(%d+)$"))
    local text = helpers.read_file("/proc/net/tcp") or ""
    for lport, rport, st in text:gmatch("\n%s*%d+: %x+:(%x+) %x+:(%x+) (%x%x)") do
      if tonumber(lport, 16) == port and tonumber(rport, 16) == cport then return st end
    end
  end

  local CONF = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, pid = "moongate.pid" }
mg.listen { "127.0.0.1:${port}" }
mg.listen { "127.0.0.1:${eager}", deferred = ${eager_deferred} }
mg.route { respond = { status = 200, body = "hi" } }
]]

  lazy_setup(function()
    proxy = helpers.proxy(CONF, { ports = { "eager" }, wait_ports = { "port", "eager" },
                                  vars = { eager_deferred = "false" } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("keeps a connection that has sent nothing in the kernel, and serves it once its request comes", function()
    local c = assert(proxy:connect())
    helpers.sleep(0.3)
    assert.equal("03", server_state(proxy.port, c:local_addr()))
    local res = assert(c:request({ path = "/" }))
    assert.equal(200, res.status)
    assert.equal("hi", res.body)
    assert.equal("01", server_state(proxy.port, c:local_addr()))
    c:close()
  end)

  -- a deferred listener establishes a silent connection too, after about 1 s
  -- (SYN-ACK retransmitted): look well before that
  it("accepts at once with deferred = false", function()
    local c = assert(proxy:connect(proxy.ports.eager))
    helpers.sleep(0.3)
    assert.equal("01", server_state(proxy.ports.eager, c:local_addr()))
    assert.equal("hi", assert(c:request({ path = "/" })).body)
    c:close()
  end)

  -- reload A adds a listener (deferred), reload B turns deferred off for it; the
  -- worker, busy in a handler, takes only B, with the socket A made
  it("a reload that replaces a reload the worker has not taken yet applies its own setting", function()
    local conf = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false }
mg.listen { "127.0.0.1:${port}" }
${more}
mg.route { path = "/busy", respond = function()
  local t = os.clock() + 1.5
  while os.clock() < t do end
  return 200, "done", { ["content-type"] = "text/plain" }
end }
mg.route { respond = { status = 200, body = "hi" } }
]]
    local p = helpers.proxy(conf, { ports = { "extra" }, vars = { more = "" } })
    local function install(more)
      local text = conf:gsub("%${port}", tostring(p.port)):gsub("%${more}", more)
      local f = assert(io.open(p.conf, "wb"))
      f:write(text)
      f:close()
    end
    local function reloaded(n)
      return helpers.wait_until(function()
        return count(p:stderr(), "reloaded (SIGHUP)") >= n
      end, 5)
    end
    local busy = assert(p:connect())
    assert(busy:send(helpers.request_bytes({ path = "/busy" })))
    helpers.sleep(0.2) -- the worker is in the handler now
    install('mg.listen { "127.0.0.1:' .. p.ports.extra .. '" }')
    p:signal(signal.SIGHUP)
    assert(reloaded(1), p:stderr())
    install('mg.listen { "127.0.0.1:' .. p.ports.extra .. '", deferred = false }')
    p:signal(signal.SIGHUP)
    assert(reloaded(2), p:stderr())
    assert.equal("done", assert(busy:final_response()).body)
    assert(helpers.wait_until(function() return count(p:stderr(), "config reloaded") >= 1 end, 5), p:stderr())
    local c = assert(p:connect(p.ports.extra))
    helpers.sleep(0.3)
    assert.equal("01", server_state(p.ports.extra, c:local_addr()))
    assert.equal("hi", assert(c:request({ path = "/" })).body)
    c:close()
    busy:close()
    p:stop()
  end)

  it("a reload that turns it on applies to the listener it keeps", function()
    local text = helpers.read_file(proxy.conf):gsub("deferred = false", "deferred = true")
    local f = assert(io.open(proxy.conf, "wb"))
    f:write(text)
    f:close()
    proxy:signal(signal.SIGHUP)
    assert(helpers.wait_until(function() return proxy:stderr():find("config reloaded", 1, true) end, 5),
      proxy:stderr())
    local c = assert(proxy:connect(proxy.ports.eager))
    helpers.sleep(0.3)
    assert.equal("03", server_state(proxy.ports.eager, c:local_addr()))
    assert.equal("hi", assert(c:request({ path = "/" })).body)
    c:close()
  end)
end)
