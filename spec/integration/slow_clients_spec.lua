-- Slow and greedy clients (issue 9): a request must arrive whole within
-- timeouts.request, a body at limits.body_rate on average, a client that does not
-- take its response frees the upstream after timeouts.upstream_paused, and
-- limits.connections / limits.connections_per_ip answer 503 at accept.
--
-- Short configured timeouts; every wait is bounded. Timings allow for a loaded
-- machine and the sanitizer build.
local helpers = require "spec.helpers"

local function elapsed_between(t0, lo, hi)
  local dt = helpers.now() - t0
  assert(dt >= lo and dt <= hi, string.format("took %.2f s, expected %.1f..%.1f s", dt, lo, hi))
end

-- Waits for a line containing `needle` in moongate's stderr; returns the whole log.
local function log_with(proxy, needle, timeout)
  return helpers.wait_until(function()
    local log = proxy:stderr()
    return log:find(needle, 1, true) and log
  end, timeout or 3)
end

-- A normal request is answered. Connections the test closed just before may still
-- count against a limit for a moment (the close reaches moongate after the client
-- sees it): a 503 is retried for up to 2 s.
local function assert_served(proxy, port, bind)
  local res
  helpers.wait_until(function()
    local c = helpers.connect(port or proxy.port, nil, nil, bind)
    res = assert(c:request({ path = "/echo" }))
    c:close()
    return res.status ~= 503
  end, 2, 0.05)
  assert.equal(200, res.status)
end

-- n connections (from `bind`, when given) served at the same time; returns them,
-- open. Retried for up to 3 s: moongate's start-up probe, or connections a test
-- just closed, may count against a limit for a moment.
local function served_together(proxy, n, bind)
  local held = {}
  local ok = helpers.wait_until(function()
    for i = 1, n do
      if held[i] then held[i]:close() end
      held[i] = helpers.connect(proxy.port, nil, nil, bind)
    end
    for i = 1, n do
      local res = held[i]:request({ path = "/echo" })
      if not (res and res.status == 200) then return false end
    end
    return true
  end, 3, 0.05)
  if not ok then
    for i = 1, n do held[i]:close() end
    return nil
  end
  return held
end

describe("timeouts.request", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false,
            timeouts = { client_header = 10, client_body = 1, request = 2 },
            limits = { body_rate = 0 } }
mg.listen { "127.0.0.1:${port}" }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } } }
]], { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("answers 408 to a body trickled one byte every 0.3 s, though each byte is within client_body", function()
    local c = proxy:connect()
    local t0 = helpers.now()
    assert(c:send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"))
    for _ = 1, 20 do -- 6 s at most: the body would need 30 s
      helpers.sleep(0.3)
      if c:readable() then break end
      if not c:send("b") then break end
    end
    local res = assert(c:response({ timeout = 1 }))
    elapsed_between(t0, 1.8, 3.2)
    helpers.assert_error(res, 408)
    assert.equal("close", res.h.connection)
    assert.is_true((c:closed(2)))
    assert.truthy(log_with(proxy, "request timeout: not received in full within 2 s"))
    assert_served(proxy)
  end)

  it("counts the head too: a head trickled a line every 0.3 s gets 408 after request, before client_header", function()
    local c = proxy:connect()
    local t0 = helpers.now()
    assert(c:send("GET /echo HTTP/1.1\r\nHost: x\r\n"))
    for i = 1, 20 do
      helpers.sleep(0.3)
      if c:readable() then break end
      if not c:send("X-Drip-" .. i .. ": 1\r\n") then break end
    end
    local res = assert(c:response({ timeout = 1 }))
    elapsed_between(t0, 1.8, 3.2)
    helpers.assert_error(res, 408)
    assert_served(proxy)
  end)

  it("does not cover the wait for the upstream's answer", function()
    -- the request is in at once; the origin answers after 2.5 s (request = 2)
    local c = proxy:connect()
    local res = assert(c:request({ method = "POST", path = "/slow-head/2.5", body = "abc" }))
    assert.equal(200, res.status)
    assert.equal(3, helpers.echo(res).body_len)
    c:close()
  end)
end)

describe("timeouts.client_header", function()
  local proxy

  lazy_setup(function()
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, timeouts = { client_header = 1, request = 30 } }
mg.listen { "127.0.0.1:${port}" }
mg.route { respond = { status = 200, body = "ok" } }
]])
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("bounds a head trickled one byte every 0.1 s that never ends (whole head, not each read)", function()
    local c = proxy:connect()
    local t0 = helpers.now()
    assert(c:send("GET / HTTP/1.1\r\nHost: x\r\nX-Endless: "))
    for _ = 1, 60 do
      helpers.sleep(0.1)
      if c:readable() then break end
      if not c:send("v") then break end
    end
    local res = assert(c:response({ timeout = 1 }))
    elapsed_between(t0, 0.8, 2.2)
    helpers.assert_error(res, 408)
    assert.truthy(log_with(proxy, "client header timeout"))
    assert_served(proxy)
  end)
end)

describe("limits.body_rate", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    -- client_body = 0.5 is the grace: the rate is judged after half a second of body
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false,
            timeouts = { client_body = 0.5, request = 30 },
            limits = { body_rate = 1000, body_size = 0 } }
mg.listen { "127.0.0.1:${port}" }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } } }
]], { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("answers 408 to a body at 100 B/s once past the grace, and logs the rate measured", function()
    local c = proxy:connect()
    local t0 = helpers.now()
    assert(c:send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"))
    for _ = 1, 40 do -- 4 s at most
      helpers.sleep(0.1)
      if c:readable() then break end
      if not c:send(("r"):rep(10)) then break end
    end
    local res = assert(c:response({ timeout = 1 }))
    elapsed_between(t0, 0.5, 2)
    helpers.assert_error(res, 408)
    local log = assert(log_with(proxy, "request body too slow"))
    local rate, min = log:match("request body too slow: %d+ bytes in [%d%.]+ s %((%d+) B/s, limits%.body_rate = (%d+) B/s%)")
    assert.truthy(rate, log)
    assert.equal("1000", min)
    assert.is_true(tonumber(rate) > 0 and tonumber(rate) < 1000, "rate logged: " .. rate)
    assert_served(proxy)
  end)

  it("lets a body at 5000 B/s through, judged well past the grace", function()
    local c = proxy:connect()
    assert(c:send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 7500\r\n\r\n"))
    for _ = 1, 15 do -- 1.5 s
      helpers.sleep(0.1)
      assert.is_false(c:readable(), "answered before the body was sent")
      assert(c:send(("f"):rep(500)))
    end
    local res = assert(c:response({ timeout = 3 }))
    assert.equal(200, res.status)
    assert.equal(7500, helpers.echo(res).body_len)
    c:close()
  end)
end)

describe("limits.body_rate and backpressure", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    -- A rate only a fast client meets (4 MB/s): 8 MB sent at loopback speed meets
    -- it while moongate reads, but not if the 3 s the origin does not read were
    -- counted (8 MB / 3 s is under 3 MB/s).
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false,
            timeouts = { client_body = 0.5, request = 30 },
            limits = { body_rate = 4 * 1024 * 1024, body_size = 0 } }
mg.listen { "127.0.0.1:${port}" }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } } }
]], { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("does not count the time moongate stops reading because the upstream does not take the body", function()
    local size = 8 * 1024 * 1024
    local c = proxy:connect()
    local t0 = helpers.now()
    assert(c:send("POST /slow-read/3 HTTP/1.1\r\nHost: x\r\nContent-Length: " .. size .. "\r\n\r\n"))
    local chunk = ("p"):rep(1024 * 1024)
    for _ = 1, size / #chunk do
      assert(c:send(chunk, 10))
      assert(helpers.now() - t0 < 10, "the body could not be sent within 10 s")
    end
    local res = assert(c:response({ timeout = 10 }))
    assert.equal(200, res.status, res.body)
    assert.equal(size, helpers.echo(res).body_len)
    assert.is_true(helpers.now() - t0 >= 2.9, "the origin did not hold the body back")
    assert.is_nil(proxy:stderr():find("request body too slow", 1, true))
    c:close()
    assert_served(proxy)
  end)
end)

describe("timeouts.upstream_paused", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    -- send and upstream_read are long: only upstream_paused can end the wait
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false,
            timeouts = { upstream_paused = 1, send = 30, upstream_read = 30 } }
mg.listen { "127.0.0.1:${port}" }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" }, keepalive = 0 } }
]], { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("closes the upstream and the client when the client does not read a large response", function()
    assert.equal(0, origin:stats().open)
    local c = proxy:connect()
    local client = c:local_addr()
    local t0 = helpers.now()
    assert(c:send("GET /fill/1073741824 HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert(helpers.wait_until(function() return origin:stats().open == 1 end, 3), "the origin got no connection")
    -- the client reads nothing: once the buffers are full moongate stops reading
    -- the origin, and after upstream_paused it ends both connections
    assert(helpers.wait_until(function() return origin:stats().open == 0 end, 5, 0.05),
           "the origin's connection is still open")
    elapsed_between(t0, 0.9, 4)
    local log = assert(log_with(proxy, "(timeouts.upstream_paused)"))
    assert.truthy(log:find("client " .. client .. " did not take the response for 1 s "
                           .. "(timeouts.upstream_paused): closing it and upstream " .. origin.addr, 1, true), log)
    local data, why = c:read_until_close(10)
    assert.equal("closed", why)
    assert.is_true(#data < 512 * 1024 * 1024, "got " .. #data .. " bytes")
    c:close()
    assert_served(proxy)
  end)

  it("does not cut a client that reads, however long the response takes", function()
    -- 40 MB read in pieces with pauses shorter than upstream_paused: the queue
    -- drains each time, so no pause lasts 1 s
    local c = proxy:connect()
    local size = 40 * 1024 * 1024
    assert(c:send("GET /fill/" .. size .. " HTTP/1.1\r\nHost: x\r\n\r\n"))
    local head = assert(c:take_until("\r\n\r\n", helpers.now() + 3))
    assert.equal("HTTP/1.1 200", head:sub(1, 12))
    local got, t0 = 0, helpers.now()
    while got < size do
      local part = assert(c:take(math.min(4 * 1024 * 1024, size - got), helpers.now() + 5))
      got = got + #part
      helpers.sleep(0.3)
    end
    assert.is_true(helpers.now() - t0 > 1.5, "too fast to show anything")
    assert.equal(size, got)
    c:close()
  end)
end)

describe("limits.connections", function()
  local proxy

  lazy_setup(function()
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, limits = { connections = 3 } }
mg.listen { "127.0.0.1:${port}", deferred = false }
mg.route { path = "/echo", respond = { status = 200, body = "ok" } }
]])
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  -- c sends a request, or (send_first false) nothing: the listener does not defer
  -- accepts, so the 503 comes at once
  local function assert_refused(c, send_first)
    if send_first then assert(c:send("GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")) end
    local res = assert(c:response({ timeout = 3 }))
    assert.equal(503, res.status)
    assert.equal("close", res.h.connection)
    assert.equal("503 Service Unavailable\ntoo many connections\n", res.body)
    assert.truthy(res.h.date)
    assert.is_true((c:closed(3)))
    c:close()
  end

  it("answers 503 and closes a 4th connection; the first 3 go on; a close makes room", function()
    local held = assert(served_together(proxy, 3), "3 connections not served")
    assert_refused(proxy:connect(), false)
    assert_refused(proxy:connect(), true) -- its request is read and dropped, not reset
    for i = 1, 3 do
      assert.equal(200, assert(held[i]:request({ path = "/echo" })).status)
    end
    held[1]:close()
    local c
    assert(helpers.wait_until(function()
      if c then c:close() end
      c = proxy:connect()
      local res = c:request({ path = "/echo" })
      return res and res.status == 200
    end, 3, 0.05), "no room after a close")
    c:close()
    held[2]:close()
    held[3]:close()
    assert.truthy(log_with(proxy, "connection refused: limits.connections = 3 reached on this worker"))
    assert_served(proxy)
  end)

  it("logs at most a line a second for a burst of refusals, with the count of the others", function()
    local held = assert(served_together(proxy, 3), "3 connections not served")
    helpers.sleep(1.1) -- past the line of the test before
    local before = helpers.count(proxy:stderr(), "connection refused:")
    for _ = 1, 5 do assert_refused(proxy:connect(), false) end
    helpers.sleep(1.1)
    assert_refused(proxy:connect(), false)
    local log = assert(helpers.wait_until(function()
      local l = proxy:stderr()
      return helpers.count(l, "connection refused:") >= before + 2 and l
    end, 2))
    assert.equal(before + 2, helpers.count(log, "connection refused:"))
    assert.truthy(log:find("(and 4 more refused since the last such line)", 1, true), log)
    for i = 1, 3 do held[i]:close() end
    assert(helpers.wait_until(function()
      local c = proxy:connect()
      local res = c:request({ path = "/echo" })
      c:close()
      return res and res.status == 200
    end, 3, 0.05))
  end)
end)

describe("limits.connections_per_ip", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 2, access_log = false,
            timeouts = { client_header = 0.5, keepalive = 0.5 },
            limits = { connections_per_ip = 2 } }
mg.listen { "127.0.0.1:${port}", deferred = false }
mg.listen { "127.0.0.1:${deny}", name = "deny", deferred = false }
mg.on("connect", function(conn)
  if conn.listener == "deny" then return false end
end)
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } } }
]], { vars = { origin = origin.addr }, ports = { "deny" } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  -- a connection from `ip` is served (retried briefly: a close reaches the
  -- worker a moment after the client sees it)
  local function eventually_served(ip)
    return helpers.wait_until(function()
      local c = helpers.connect(proxy.port, nil, nil, ip)
      local res = c:request({ path = "/echo" })
      c:close()
      return res and res.status == 200
    end, 3, 0.05)
  end

  local function refused(ip)
    local c = helpers.connect(proxy.port, nil, nil, ip)
    assert(c:send("GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"))
    local res = c:response({ timeout = 3 })
    local closed = c:closed(3)
    c:close()
    return res and res.status == 503 and res.body == "503 Service Unavailable\ntoo many connections\n" and closed
  end

  it("answers 503 to a third connection from an address on either worker; other addresses and closes make room", function()
    -- two connections from 127.0.0.1 (once the start-up probes are gone), then
    -- held: their second requests wait 3 s for the origin
    local held = assert(served_together(proxy, 2, "127.0.0.1"), "two connections from 127.0.0.1 not served")
    for i = 1, 2 do
      assert(held[i]:send("GET /slow-head/3 HTTP/1.1\r\nHost: x\r\n\r\n"))
    end
    -- with two workers, eight tries land on both (SO_REUSEPORT hashes the ports)
    for i = 1, 8 do
      assert.is_true(refused("127.0.0.1"), "try " .. i .. " was not refused")
    end
    assert_served(proxy, nil, "127.0.0.2")
    for i = 1, 2 do
      assert.equal(200, assert(held[i]:response({ timeout = 6 })).status)
    end
    -- now idle: keepalive (0.5 s) closes them, and their counts go
    for i = 1, 2 do assert.is_true((held[i]:closed(3))) end
    assert.truthy(eventually_served("127.0.0.1"))
    assert.truthy(log_with(proxy, "connection refused: limits.connections_per_ip = 2 reached for 127.0.0.1"))
    for i = 1, 2 do held[i]:close() end
    assert_served(proxy)
  end)

  it("gives back the count of connections closed by the header timeout", function()
    local cs = {}
    for i = 1, 2 do
      cs[i] = helpers.connect(proxy.port, nil, nil, "127.0.0.3")
      assert(cs[i]:send("GET /echo HTTP/1.1\r\nHost: x\r\n"))
    end
    for i = 1, 2 do
      helpers.assert_error(assert(cs[i]:response({ timeout = 3 })), 408)
      cs[i]:close()
    end
    for _, c in ipairs(assert(served_together(proxy, 2, "127.0.0.3"), "two connections from 127.0.0.3 not served")) do
      c:close()
    end
    assert_served(proxy)
  end)

  it("gives back the count of connections the connect hook refuses", function()
    for i = 1, 5 do
      local c = helpers.connect(proxy.ports.deny, nil, nil, "127.0.0.5")
      c:send("GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
      local closed, data = c:closed(3)
      c:close()
      assert.is_true(closed, "connection " .. i .. " got " .. tostring(data))
    end
    for _, c in ipairs(assert(served_together(proxy, 2, "127.0.0.5"), "two connections from 127.0.0.5 not served")) do
      c:close()
    end
    assert_served(proxy)
  end)
end)

describe("limits.connections on a TLS listener", function()
  local proxy

  lazy_setup(function()
    local dir = helpers.tmpdir()
    local out, rc = helpers.sh("cd " .. helpers.shell_quote(dir) .. " && openssl req -x509 -newkey ec "
      .. "-pkeyopt ec_paramgen_curve:P-256 -nodes -keyout k.pem -out c.pem -subj /CN=localhost -days 1")
    assert(rc == 0, out)
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, limits = { connections = 1 } }
mg.listen { "127.0.0.1:${port}", deferred = false, tls = { cert = "${dir}/c.pem", key = "${dir}/k.pem" } }
mg.route { respond = { status = 200, body = "ok" } }
]], { vars = { dir = dir } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("closes a connection over the limit without a handshake and without a plaintext answer", function()
    -- a connection with no handshake yet counts all the same; the start-up probe
    -- may still count for a moment: a refused one is closed at once, retry then
    local held
    assert(helpers.wait_until(function()
      if held then held:close() end
      held = proxy:connect()
      return not held:readable(0.3)
    end, 3, 0.05), "no connection held")
    local c = proxy:connect()
    assert(c:send("\22\3\1\0\1")) -- the start of a ClientHello
    local closed, data = c:closed(3)
    c:close()
    assert.is_true(closed, "got " .. tostring(data))
    assert.truthy(log_with(proxy, "connection refused: limits.connections = 1 reached on this worker"))
    held:close()
    local res
    helpers.wait_until(function()
      res = helpers.curl({ "-k", "https://127.0.0.1:" .. proxy.port .. "/" })
      return res and res.status == 200
    end, 3, 0.1)
    assert.equal(200, res and res.status)
  end)
end)
