-- Findings of an adversarial pass over the HTTP/1 codec, Upgrade tunnels,
-- PROXY protocol listeners and filter chains: one `it` per finding (or per
-- hostile input checked), each asserting the correct behaviour. A hostile
-- client talks to moongate over loopback; the hostile origin is a socket in
-- this process (spec/support/raw.lua), so every byte moongate gets from
-- "upstream" is written here by hand.
local helpers = require "spec.helpers"
local raw = require "spec.support.raw"

local CONF = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, trusted_proxies = { "127.0.0.0/8" },
  timeouts = { upstream_read = 3, tunnel = 6, client_header = 1 } }
mg.listen { "127.0.0.1:${port}" }
mg.listen { "127.0.0.1:${pp}", proxy_protocol = true }
local hostile = mg.upstream "hostile" { servers = { "${hostile}" } }
mg.route { path = "/who", respond = function(req) return 200, req.client_ip .. "\n" end }
mg.route { upstream = hostile }
]]

local UPGRADE = "GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
local SWITCH = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"

describe("attack2", function()
  local hostile, proxy

  local function start()
    proxy = helpers.proxy(CONF, { ports = { "pp" }, vars = { hostile = hostile.addr } })
  end

  lazy_setup(function()
    hostile = raw.origin()
    start()
  end)

  lazy_teardown(function()
    if hostile then hostile:close() end
    helpers.teardown(proxy)
  end)

  before_each(function()
    if proxy:wait(0) then start() end
  end)

  local connect, cleanup = raw.tracker(function() return proxy end, function() return hostile end)
  after_each(cleanup)

  local function assert_alive() proxy:assert_alive() end

  -----------------------------------------------------------------------
  -- tunnels
  -----------------------------------------------------------------------

  -- A client that sends its upgrade request, its first tunnel bytes and its
  -- FIN before the 101 arrives (a script piping into a socket does that): the
  -- half-close must still reach the upstream once the tunnel starts, as it does
  -- for a FIN sent after the 101 (docs/config.md, "Upgrades and WebSocket").
  it("a client's half-close sent before the 101 reaches the upstream as a FIN", function()
    local c = connect()
    assert(c:send(UPGRADE .. "early"))
    c.sock:shutdown("send")
    local o = assert(hostile:accept(3), "moongate did not connect to the origin")
    assert(o:read_request(3), "no request reached the origin")
    helpers.sleep(0.2) -- moongate has read the client's bytes and its FIN by now
    assert(o:send(SWITCH))
    -- the origin gets the early bytes, then the FIN
    local data, why = o:read_until_close(2)
    assert.equal("early", data)
    assert.equal("closed", why, "the client's FIN never reached the upstream")
    o:send("bye")
    o:close()
    local res = assert(raw.read_response(c, { head = true }))
    assert.equal(101, res.status)
    local rest, how = c:read_until_close(2)
    assert.equal("bye", rest)
    assert.equal("closed", how)
    assert_alive()
  end)


  -- The upgrade request `request` (default UPGRADE) from a new client; the
  -- origin side accepted and its request read. Returns client, origin, request.
  local function upgrade_exchange(request)
    local c = connect()
    assert(c:send(request or UPGRADE))
    local o = assert(hostile:accept(3), "moongate did not connect to the origin")
    local req = assert(o:read_request(3), "no request reached the origin")
    return c, o, req
  end

  local function soon() return helpers.now() + 3 end

  it("bytes the client sent before the 101 and bytes that came with the 101 pass whole, in order", function()
    local c, o = upgrade_exchange(UPGRADE .. "client-early")
    helpers.sleep(0.1)
    assert(o:send(SWITCH .. "origin-early"))
    local res = assert(raw.read_response(c, { head = true }))
    assert.equal(101, res.status)
    assert.equal("websocket", res.h.upgrade)
    assert.equal("origin-early", assert(c:take(12, soon())))
    assert.equal("client-early", assert(o:take(12, soon())))
    assert(c:send("more"))
    assert.equal("more", assert(o:take(4, soon())))
    assert(o:send("back"))
    assert.equal("back", assert(c:take(4, soon())))
    assert_alive()
  end)

  it("a 101 without Upgrade, or to a request that did not ask to upgrade, is a 502", function()
    local c, o = upgrade_exchange()
    assert(o:send("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n"))
    local res = assert(raw.read_response(c))
    assert.equal(502, res.status)
    c, o = upgrade_exchange("GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    assert(o:send(SWITCH .. "tunnel?"))
    res = assert(raw.read_response(c))
    assert.equal(502, res.status)
    assert_alive()
  end)

  it("what follows an upgrade request is the tunnel's, a request or not", function()
    local second = "GET /second HTTP/1.1\r\nHost: t\r\n\r\n"
    local c, o = upgrade_exchange(UPGRADE .. second)
    assert(o:send(SWITCH))
    local res = assert(raw.read_response(c, { head = true }))
    assert.equal(101, res.status)
    assert.equal(second, assert(o:take(#second, soon())))
    -- answered without a 101: the answer, then the close; the pipelined bytes go nowhere
    c, o = upgrade_exchange(UPGRADE .. second)
    assert(o:send("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    res = assert(raw.read_response(c, { close_wait = 2 }))
    assert.same({ 200, "ok", true }, { res.status, res.body, res.closed })
    assert.is_false(hostile:pending(0.3), "the pipelined request went upstream")
    assert_alive()
  end)

  -----------------------------------------------------------------------
  -- PROXY protocol
  -----------------------------------------------------------------------

  it("a PROXY header on a listener without proxy_protocol is a bad request", function()
    local c = connect()
    assert(c:send("PROXY TCP4 1.2.3.4 127.0.0.1 1 2\r\nGET /who HTTP/1.1\r\nHost: x\r\n\r\n"))
    local res = assert(raw.read_response(c, { close_wait = 2 }))
    assert.same({ 400, true }, { res.status, res.closed })
  end)

  -- docs/config.md: "A missing or malformed header closes the connection with a
  -- log line naming the fault." A header cut short by the peer's close, or one
  -- that never comes, was closed without a word (a keep-alive debug line).
  it("a PROXY header cut short by a close, or never sent, is logged when the connection closes", function()
    local mark = raw.log_mark(proxy)
    local c = helpers.connect(proxy.ports.pp)
    assert(c:send("PROXY TCP4 192.0.2.1 12"))
    c.sock:shutdown("send")
    assert.is_true((c:closed(2)))
    c:close()
    local line = raw.find_log(proxy, mark, { "bad PROXY protocol header", "closed inside it" })
    assert(line, "no log line for a header cut short:\n" .. raw.log_since(proxy, mark))
    -- a balancer's health check (connect, close, no byte) is not a fault
    mark = raw.log_mark(proxy)
    c = helpers.connect(proxy.ports.pp)
    c.sock:shutdown("send")
    assert.is_true((c:closed(2)))
    c:close()
    helpers.sleep(0.2)
    assert.is_nil(raw.log_since(proxy, mark):find("PROXY", 1, true), raw.log_since(proxy, mark))
    -- half a header, then nothing until timeouts.client_header (1 s)
    mark = raw.log_mark(proxy)
    c = helpers.connect(proxy.ports.pp)
    assert(c:send("PROXY TCP4 192.0.2.1 12"))
    assert.is_true((c:closed(3)))
    c:close()
    line = raw.find_log(proxy, mark, { "bad PROXY protocol header", "none within 1 s" })
    assert(line, "no log line for a header that never came:\n" .. raw.log_since(proxy, mark))
    assert_alive()
  end)

  -- limits.connections_per_ip on a PROXY protocol listener counts the
  -- balancer's address (docs/config.md). The count taken at accept must be
  -- given back at the close under that same address; once the header has
  -- replaced the connection's client, giving back the header's address instead
  -- left the balancer's count growing with every connection, until the
  -- balancer itself was refused (503) with no connection open.
  it("a PROXY protocol listener gives the balancer's connections_per_ip count back at each close", function()
    local p2 = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, trusted_proxies = { "127.0.0.0/8" },
  limits = { connections_per_ip = 2 } }
mg.listen { "127.0.0.1:${port}", proxy_protocol = true }
mg.route { path = "/who", respond = function(req) return 200, req.client_ip .. "\n" end }
]])
    local ok, err = pcall(function()
      for i = 1, 5 do
        local c = p2:connect()
        assert(c:send("PROXY TCP4 203.0.113." .. i .. " 127.0.0.1 4000" .. i .. " 80\r\n"
          .. "GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        local res = assert(raw.read_response(c, { close_wait = 2 }))
        assert.same({ 200, "203.0.113." .. i .. "\n" }, { res.status, res.body },
          "connection " .. i .. " (one at a time, each closed before the next)")
        assert.is_true(res.closed)
        c:close()
        helpers.sleep(0.2) -- moongate has closed its side by now
      end
    end)
    p2:stop()
    assert(ok, err)
  end)

end)
