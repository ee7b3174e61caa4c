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
mg.config { workers = 1, access_log = "access.log", trusted_proxies = { "127.0.0.0/8" },
  timeouts = { upstream_read = 3, tunnel = 6, drain = 1 } }
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

  local function assert_alive()
    local report = helpers.sanitizer_report(proxy:stderr())
    assert(not report, "sanitizer report:\n" .. tostring(report))
    assert(not proxy:wait(0), "moongate died")
  end

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
end)
