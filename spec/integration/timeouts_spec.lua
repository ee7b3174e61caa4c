-- Timeouts with small values: slow clients (head, body, idle keep-alive) and
-- slow origins (head, body, connect).
local helpers = require "spec.helpers"

-- Elapsed times are checked against the configured 1 s with room for a slow
-- (sanitizer) build: not before 0.8 s, not after 2.5 s.
local MIN, MAX = 0.8, 2.5

describe("timeouts", function()
  local origin, blackhole, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    -- Connect timeouts need a peer that never answers a SYN. On loopback a
    -- listener with a full accept queue is one (Linux drops the SYN), which
    -- origin.py --blackhole sets up.
    blackhole = helpers.origin({ name = "blackhole", blackhole = true })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, limits = { body_size = 0 }, timeouts = {
  client_header = 1, client_body = 1, keepalive = 1, send = 1,
  upstream_connect = 1, upstream_read = 1, upstream_write = 1,
} }
mg.listen { "127.0.0.1:${port}" }
mg.route { host = "blackhole.test", upstream = mg.upstream "bh" { servers = { "${blackhole}" } } }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } } }
]], { vars = { origin = origin.addr, blackhole = blackhole.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  local function within(t0, lo, hi)
    local dt = helpers.now() - t0
    assert(dt >= lo and dt <= hi, string.format("took %.2f s, expected %.1f..%.1f s", dt, lo, hi))
  end

  it("answers 408 and closes when the client stalls inside the head", function()
    local c = proxy:connect()
    local t0 = helpers.now()
    assert(c:send("GET /echo HTTP/1.1\r\nHost: x\r\n"))
    local res = assert(c:response({ timeout = 4 }))
    within(t0, MIN, MAX)
    helpers.assert_error(res, 408)
    assert.is_true((c:closed(2)))
  end)

  it("bounds the whole head by client_header, not each read", function()
    local c = proxy:connect()
    local t0 = helpers.now()
    assert(c:send("GET /echo HTTP/1.1\r\nHost: x\r\n"))
    -- One header line every 0.25 s: each read is quick, the head never ends.
    for i = 1, 16 do
      helpers.sleep(0.25)
      if c:readable() then break end
      if not c:send("X-Drip-" .. i .. ": 1\r\n") then break end
    end
    local res = assert(c:response({ timeout = 1 }))
    within(t0, MIN, MAX)
    helpers.assert_error(res, 408)
  end)

  it("answers 408 or closes when the client stalls inside the body", function()
    local c = proxy:connect()
    local t0 = helpers.now()
    assert(c:send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"))
    local data, why = c:read_until_close(5)
    within(t0, MIN, MAX)
    assert.equal("closed", why)
    if data ~= "" then
      assert.equal("HTTP/1.1 408 ", data:sub(1, 13))
    end
  end)

  it("closes an idle keep-alive connection after timeouts.keepalive without a response", function()
    local c = proxy:connect()
    assert.equal(200, assert(c:request({ path = "/echo" })).status)
    local t0 = helpers.now()
    local closed, data = c:closed(4)
    within(t0, MIN, MAX)
    assert.is_true(closed, "got bytes instead of a silent close: " .. tostring(data))
  end)

  it("answers 504 when the origin's head takes longer than upstream_read", function()
    local c = proxy:connect()
    local t0 = helpers.now()
    local res = assert(c:request({ path = "/slow-head/3" }))
    within(t0, MIN, MAX)
    local id = helpers.assert_error(res, 504)
    assert.is_nil(res.body:find(origin.addr, 1, true))
    assert.is_truthy(id)
  end)

  it("closes the client connection when the origin's body stalls past upstream_read", function()
    local c = proxy:connect()
    local t0 = helpers.now()
    assert(c:send("GET /slow-body/3 HTTP/1.1\r\nHost: x\r\n\r\n"))
    local head = assert(c:take_until("\r\n\r\n", helpers.now() + 2))
    assert.equal("HTTP/1.1 200", head:sub(1, 12))
    local rest, why = c:read_until_close(4)
    within(t0, MIN, MAX)
    assert.equal("closed", why)
    assert.is_true(#rest < 10, "the whole body arrived: " .. rest)
  end)

  it("answers 504 when connecting to the upstream takes longer than upstream_connect", function()
    local c = proxy:connect()
    local t0 = helpers.now()
    local res = assert(c:request({ path = "/", headers = { { "Host", "blackhole.test" } } }))
    within(t0, MIN, MAX)
    helpers.assert_error(res, 504)
    assert.is_nil(res.body:find(blackhole.addr, 1, true))
  end)

  it("closes the connection of a client that stops reading for longer than send", function()
    local c = proxy:connect()
    assert(c:send("GET /fill/1073741824 HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert(c:take_until("\r\n\r\n", helpers.now() + 3), "no response head")
    -- Once the socket buffers are full no write succeeds: after 1 s moongate
    -- gives up. What was buffered still arrives, then the close.
    helpers.sleep(2.5)
    local data, why = c:read_until_close(3)
    assert.equal("closed", why)
    assert.is_true(#data < 512 * 1024 * 1024, "got " .. #data .. " bytes")
  end)

  it("answers 504 when the origin stops reading the request body for longer than upstream_write", function()
    local c = proxy:connect()
    local t0 = helpers.now()
    assert(c:send("POST /slow-read/5 HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n"))
    -- The client keeps offering body bytes: once the origin's and moongate's
    -- buffers are full, it is moongate that does not read (backpressure), so
    -- the stall is the origin's and the answer is 504, not the client's 408.
    local chunk = ("w"):rep(1024 * 1024)
    for _ = 1, 1024 do
      if c:readable() then break end
      local ok, err = c:send(chunk, 0.1)
      if not ok and err ~= "timeout" then break end
      assert(helpers.now() - t0 < 5, "no answer within 5 s")
    end
    local res = assert(c:response({ timeout = 4 }))
    within(t0, MIN, 3.5)
    helpers.assert_error(res, 504)
  end)
end)

-- upstream_read judges the origin once it has the whole request: a client that
-- pauses mid-upload (within client_body) is not the origin's fault.
describe("upstream_read and a slow upload", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false,
            timeouts = { client_body = 3, upstream_read = 1 } }
mg.listen { "127.0.0.1:${port}" }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } } }
]], { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("answers 200 when the client pauses 1.5 s mid-body with upstream_read = 1", function()
    local c = proxy:connect()
    assert(c:send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n0123456789"))
    helpers.sleep(1.5)
    assert(c:send("0123456789"))
    local res = assert(c:response({ timeout = 3 }))
    assert.equal(200, res.status)
    assert.equal(20, helpers.echo(res).body_len)
  end)
end)
