-- Hostile and odd traffic against retries, circuit breakers and timeouts
-- (issue 12, "Retries and limits"). The spec is the origin (spec/support/raw.lua:
-- listening sockets in this process, every upstream byte written by hand), so it
-- sees every attempt: a POST on a route that is not idempotent reaches an origin
-- once whatever fails, a resend carries the body exactly, nothing of a
-- discarded answer reaches the client, and the gauges of mg.upstream_stats are
-- back to 0 once the traffic is over.
local helpers = require "spec.helpers"
local raw = require "spec.support.raw"
local socket = require "socket"

local CONF = [[
local mg = require "moongate"
mg.config { workers = ${workers}, access_log = false }
mg.listen { "127.0.0.1:${port}" }
]] .. helpers.STATS_ROUTE .. [[
local all = { "connect", "timeout", "reset", "502", "503", "504" }
local two = mg.upstream "two" { servers = { "${a}", "${b}" }, keepalive = 0,
  retry = { tries = 4, on = all, per_try_timeout = 0.4, backoff = { base = 0.05, max = 0.1 }, buffer = "1k" } }
mg.route { host = "post.test", upstream = two }
mg.route { host = "idem.test", upstream = two, idempotent = true }
local one = mg.upstream "one" { servers = { "${a}" }, keepalive = 0,
  retry = { tries = 3, on = all, backoff = { base = 0.4, max = 0.4 } } }
mg.route { host = "one.test", upstream = one }
mg.route { host = "failhook.test", upstream = one, on = {
  balance = function(req)
    local n = (tonumber(req:header("x-n")) or 0) + 1
    req:set_header("x-n", tostring(n))
    if n > 1 then error("balance fails on the retry") end
  end,
} }
mg.route { host = "attempt.test", upstream = two, on = {
  balance = function(req)
    local n = (tonumber(req:header("x-attempt")) or 0) + 1
    req:set_header("x-attempt", tostring(n))
    if n == 2 then mg.sleep(0.01) end
  end,
} }
mg.route { host = "hooked.test", upstream = one, on = {
  balance = function(req) mg.sleep(0.01) end,
  upstream_request = function(req) mg.sleep(0.01) end,
} }
local ej = mg.upstream "ej" { servers = { "${a}", "127.0.0.1:${dead}" }, keepalive = 0,
  eject = { consecutive = 1, base = 60, max_percent = 50 },
  retry = { tries = 3, on = all, backoff = { base = 0.4, max = 0.4 } } }
mg.route { host = "ej.test", upstream = ej }
mg.route { host = "readbody.test", upstream = two, idempotent = true, on = {
  request = function(req) assert(req:read_body()) end,
} }
mg.route { host = "ct.test", timeouts = { connect = 0.2 },
  upstream = mg.upstream "ct" { servers = { "${hole}" }, timeouts = { connect = 3 } } }
local rt = mg.upstream "rt" { servers = { "${a}" }, keepalive = 0, timeouts = { read = 3 } }
mg.route { host = "rt.test", upstream = rt, timeouts = { read = 0.3 } }
local hundred = mg.upstream "hundred" { servers = { "127.0.0.1:${dead}" },
  retry = { tries = 100, backoff = { base = 0 } } }
mg.route { host = "hundred.test", upstream = hundred }
]]

local function dl(t) return helpers.now() + (t or 3) end

local GAUGES = { "active_requests", "active_connections", "pending", "active_retries" }

describe("retries under attack", function()
  local A, B, hole, proxy
  local clients = {}

  local function start(workers)
    proxy = helpers.proxy(CONF, { vars = { a = A.addr, b = B.addr, workers = workers or 1,
                                           dead = helpers.free_port(), hole = hole.addr } })
  end

  lazy_setup(function()
    A, B = raw.origin(), raw.origin()
    hole = helpers.origin({ name = "hole", blackhole = true })
    start()
  end)

  lazy_teardown(function()
    for _, o in ipairs({ A, B }) do if o then o:close() end end
    helpers.teardown(proxy)
  end)

  local function connect()
    local c = proxy:connect()
    clients[#clients + 1] = c
    return c
  end

  after_each(function()
    for _, c in ipairs(clients) do c:close() end
    clients = {}
    for _, o in ipairs({ A, B }) do
      o:close_conns()
      while o:pending(0) do
        local s = o:accept(0)
        if s then s:close() end
      end
    end
    proxy:assert_alive()
  end)

  -- the next attempt, on whichever origin it went to
  local function accept_any(timeout)
    local r = socket.select({ A.srv, B.srv }, nil, timeout or 3)
    if not r or not r[1] then return nil end
    local o = r[1] == A.srv and A or B
    return assert(o:accept(0)), o
  end

  -- no attempt at all (a new connection or bytes on one accepted) for t seconds
  local function no_attempt(t)
    local socks = { A.srv, B.srv }
    for _, o in ipairs({ A, B }) do
      for _, s in ipairs(o.conns) do
        if not s.eof and s.buf == "" then socks[#socks + 1] = s.sock end
      end
    end
    local deadline = helpers.now() + t
    while helpers.now() < deadline do
      local r = socket.select(socks, nil, deadline - helpers.now())
      if not r or not r[1] then return true end
      for _, s in ipairs(r) do
        if s == A.srv or s == B.srv then return false end
        local data, _, part = s:receive(1)
        if (data or part or "") ~= "" then return false end
        -- a close: that connection is done
        for i, x in ipairs(socks) do if x == s then table.remove(socks, i) break end end
      end
    end
    return true
  end

  local function rst(s)
    s.sock:setoption("linger", { on = true, timeout = 0 })
    s:close()
  end

  local function stats(name)
    local res = assert(proxy:request({ path = "/?u=" .. name, headers = { { "Host", "stats.test" } } }))
    assert.equal(200, res.status, res.body)
    local t = {}
    for k, v in res.body:gmatch("(%S+)=(%S+)") do t[k] = tonumber(v) end
    return t
  end

  -- every gauge of the upstream back to 0 (within a second)
  local function gauges_zero(name)
    local s
    helpers.wait_until(function()
      s = stats(name)
      for _, g in ipairs(GAUGES) do if s[g] ~= 0 then return false end end
      return true
    end, 2, 0.05)
    for _, g in ipairs(GAUGES) do assert.equal(0, s[g], name .. " " .. g) end
    return s
  end

  local function answer(s, status, body, extra)
    s:send(("HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n%s"):format(
      status, #body, extra or "", body))
  end

  local function post_head(host, len, extra)
    return ("POST /p HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n%s\r\n"):format(host, len, extra or "")
  end

  describe("a POST on a route that is not idempotent reaches one origin once", function()
    it("when the origin resets mid-body", function()
      local c = connect()
      c:send(post_head("post.test", 2000) .. ("x"):rep(1000))
      local s = assert(accept_any())
      assert(s:take_until("\r\n\r\n", dl()))
      assert(s:take(500, dl()))
      rst(s)
      helpers.sleep(0.05)
      c:send(("y"):rep(1000))
      local res = assert(raw.read_response(c))
      assert.equal(502, res.status)
      assert.is_true(no_attempt(0.6))
      gauges_zero("two")
    end)

    it("when the origin resets after the whole body, before a head", function()
      local c = connect()
      c:send(post_head("post.test", 10) .. "0123456789")
      local s = assert(accept_any())
      local req = assert(s:read_request())
      assert.equal("0123456789", req.body)
      rst(s)
      assert.equal(502, assert(raw.read_response(c)).status)
      assert.is_true(no_attempt(0.6))
      gauges_zero("two")
    end)

    it("when the origin answers 503 and \"503\" is in retry.on (the client gets that 503)", function()
      local c = connect()
      c:send(post_head("post.test", 10) .. "0123456789")
      local s = assert(accept_any())
      assert(s:read_request())
      answer(s, 503, "busy\n")
      local res = assert(raw.read_response(c))
      assert.equal(503, res.status)
      assert.equal("busy\n", res.body)
      assert.is_true(no_attempt(0.6))
      gauges_zero("two")
    end)

    it("when per_try_timeout runs out after the body went out (504)", function()
      local c = connect()
      c:send(post_head("post.test", 10) .. "0123456789")
      local s = assert(accept_any())
      assert(s:read_request())
      local res = assert(raw.read_response(c, { timeout = 3 }))
      assert.equal(504, res.status)
      assert.is_true(no_attempt(0.8))
      gauges_zero("two")
    end)

    it("when the body comes after the attempt started, then the origin resets", function()
      local c = connect()
      c:send(post_head("post.test", 10))
      local s = assert(accept_any())
      assert(s:take_until("\r\n\r\n", dl()))
      helpers.sleep(0.2)
      c:send("0123456789")
      assert.equal("0123456789", assert(s:take(10, dl())))
      rst(s)
      assert.equal(502, assert(raw.read_response(c)).status)
      assert.is_true(no_attempt(0.6))
      gauges_zero("two")
    end)

    it("with a chunked body, reset after it", function()
      local c = connect()
      c:send("POST /p HTTP/1.1\r\nHost: post.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
      local s = assert(accept_any())
      assert.equal("hello", assert(s:read_request()).body)
      rst(s)
      assert.equal(502, assert(raw.read_response(c)).status)
      assert.is_true(no_attempt(0.6))
      gauges_zero("two")
    end)

    it("with Expect: 100-continue, reset once the body is in", function()
      local c = connect()
      c:send(post_head("post.test", 10, "Expect: 100-continue\r\n"))
      local interim = assert(raw.read_response(c))
      assert.equal(100, interim.status)
      local s = assert(accept_any())
      assert(s:take_until("\r\n\r\n", dl()))
      c:send("0123456789")
      assert.equal("0123456789", assert(s:take(10, dl())))
      rst(s)
      assert.equal(502, assert(raw.read_final(c)).status)
      assert.is_true(no_attempt(0.6))
      gauges_zero("two")
    end)

    it("when a 503 comes while the body is still being sent", function()
      local c = connect()
      c:send(post_head("post.test", 2000) .. ("x"):rep(100))
      local s = assert(accept_any())
      assert(s:take_until("\r\n\r\n", dl()))
      answer(s, 503, "early\n")
      helpers.sleep(0.1)
      c:send(("y"):rep(1900))
      local res = assert(raw.read_response(c))
      assert.equal(503, res.status)
      assert.equal("early\n", res.body)
      assert.is_true(no_attempt(0.6))
      gauges_zero("two")
    end)
  end)

  describe("an idempotent route", function()
    it("sends a body of exactly retry.buffer again, byte for byte", function()
      local body = helpers.pattern(1024)
      local c = connect()
      c:send(post_head("idem.test", #body) .. body)
      local s = assert(accept_any())
      assert.equal(body, assert(s:read_request()).body)
      rst(s)
      local s2 = assert(accept_any())
      assert.equal(body, assert(s2:read_request()).body)
      answer(s2, 200, "ok")
      local res = assert(raw.read_response(c))
      assert.equal(200, res.status)
      assert.equal("ok", res.body)
      gauges_zero("two")
    end)

    it("does not send a body one byte past retry.buffer again", function()
      local body = helpers.pattern(1025)
      local c = connect()
      c:send(post_head("idem.test", #body) .. body)
      local s = assert(accept_any())
      assert.equal(body, assert(s:read_request()).body)
      rst(s)
      assert.equal(502, assert(raw.read_response(c)).status)
      assert.is_true(no_attempt(0.6))
      gauges_zero("two")
    end)

    it("resends a body whose rest arrives during the backoff after a 503 mid-body", function()
      local c = connect()
      c:send(post_head("idem.test", 20) .. "0123456789")
      local s = assert(accept_any())
      assert(s:take_until("\r\n\r\n", dl()))
      assert.equal("0123456789", assert(s:take(10, dl())))
      answer(s, 503, "early\n")
      helpers.sleep(0.02)
      c:send("abcdefghij")
      local s2 = assert(accept_any())
      assert.equal("0123456789abcdefghij", assert(s2:read_request()).body)
      answer(s2, 200, "ok")
      local res = assert(raw.read_response(c))
      assert.equal(200, res.status)
      assert.equal("ok", res.body)
      gauges_zero("two")
    end)
  end)

  it("drops a discarded 503's large body: the client gets only the retry's answer", function()
    local c = connect()
    c:send("GET /g HTTP/1.1\r\nHost: post.test\r\n\r\n")
    local s = assert(accept_any())
    assert(s:read_request())
    s.sock:settimeout(1)
    s.sock:send("HTTP/1.1 503 X\r\nContent-Length: 200000\r\n\r\n" .. ("z"):rep(60000))
    s.sock:settimeout(0)
    local s2 = assert(accept_any())
    assert(s2:read_request())
    answer(s2, 200, "ok", "")
    local res = assert(raw.read_response(c))
    assert.equal(200, res.status)
    assert.equal("ok", res.body)
    assert.is_nil(c.buf:find("zzz", 1, true))
    gauges_zero("two")
  end)

  it("retries a HEAD on a 503 that announces a body, and frames the answer right", function()
    local c = connect()
    c:send("HEAD /h HTTP/1.1\r\nHost: post.test\r\n\r\n")
    local s = assert(accept_any())
    assert(s:read_request())
    s:send("HTTP/1.1 503 X\r\nContent-Length: 50000\r\n\r\n")
    local s2 = assert(accept_any())
    assert.equal("HEAD", assert(s2:read_request()).method)
    s2:send("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    local res = assert(raw.read_response(c, { head = true }))
    assert.equal(200, res.status)
    assert.equal("10", res.h["content-length"])
    c:send("GET /after HTTP/1.1\r\nHost: post.test\r\n\r\n")
    local s3 = assert(accept_any())
    assert.equal("/after", assert(s3:read_request()).target)
    answer(s3, 200, "after")
    local res2 = assert(raw.read_response(c))
    assert.equal("after", res2.body)
    gauges_zero("two")
  end)

  it("answers pipelined requests in order while the first one backs off", function()
    local c = connect()
    c:send("GET /1 HTTP/1.1\r\nHost: one.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: one.test\r\n\r\n")
    local s = assert(A:accept())
    assert.equal("/1", assert(s:read_request()).target)
    answer(s, 503, "no")
    helpers.sleep(0.1) -- in the backoff (0.4 s)
    c:send("GET /3 HTTP/1.1\r\nHost: one.test\r\n\r\n")
    for _, want in ipairs({ "/1", "/2", "/3" }) do
      local x = assert(A:accept())
      assert.equal(want, assert(x:read_request()).target)
      answer(x, 200, want)
      local res = assert(raw.read_response(c))
      assert.equal(200, res.status)
      assert.equal(want, res.body)
    end
    gauges_zero("one")
  end)

  it("forgets a request whose client resets during the backoff", function()
    local c = connect()
    c:send("GET /1 HTTP/1.1\r\nHost: one.test\r\n\r\n")
    local s = assert(A:accept())
    assert(s:read_request())
    answer(s, 503, "no")
    helpers.sleep(0.1)
    rst(c)
    assert.is_true(no_attempt(0.7))
    gauges_zero("one")
  end)

  it("still answers a client that half-closes during the backoff", function()
    local c = connect()
    c:send("GET /1 HTTP/1.1\r\nHost: one.test\r\n\r\n")
    local s = assert(A:accept())
    assert(s:read_request())
    answer(s, 503, "no")
    helpers.sleep(0.1)
    c.sock:shutdown("send")
    local x = assert(A:accept())
    assert(x:read_request())
    answer(x, 200, "late")
    local res = assert(raw.read_response(c))
    assert.equal("late", res.body)
    gauges_zero("one")
  end)

  it("retries a WebSocket upgrade that got a 503, then tunnels", function()
    local c = connect()
    c:send("GET /ws HTTP/1.1\r\nHost: post.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" ..
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    local s = assert(accept_any())
    assert(s:read_request())
    answer(s, 503, "no")
    local s2 = assert(accept_any())
    local req = assert(s2:read_request())
    assert.equal("websocket", req.h["upgrade"])
    s2:send("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    local res = assert(raw.read_response(c, { head = true }))
    assert.equal(101, res.status)
    c:send("ping")
    assert.equal("ping", s2:take(4, dl()))
    s2:send("pong")
    assert.equal("pong", c:take(4, dl()))
    local st = stats("two")
    assert.equal(1, st.active_requests)
    s2:close()
    assert.is_true(c:closed(2))
    gauges_zero("two")
  end)

  it("runs waiting balance and upstream_request hooks again on a retry; a client gone in them leaks nothing", function()
    local c = connect()
    c:send("GET /1 HTTP/1.1\r\nHost: hooked.test\r\n\r\n")
    local s = assert(A:accept())
    assert(s:read_request())
    answer(s, 503, "no")
    local x = assert(A:accept(2))
    assert(x:read_request())
    answer(x, 200, "hooked")
    assert.equal("hooked", assert(raw.read_response(c)).body)
    -- the client leaves while the retry's balance hook sleeps (after the 0.4 s backoff)
    local c2 = connect()
    c2:send("GET /2 HTTP/1.1\r\nHost: hooked.test\r\n\r\n")
    local s2 = assert(A:accept())
    assert(s2:read_request())
    answer(s2, 503, "no")
    helpers.sleep(0.405)
    rst(c2)
    helpers.sleep(0.5)
    gauges_zero("one")
  end)

  it("backs off before trying its one usable server again when the others are ejected", function()
    -- two requests: the dead server is tried (refused) and ejected, A answers
    for i = 1, 2 do
      local c = connect()
      c:send("GET /warm" .. i .. " HTTP/1.1\r\nHost: ej.test\r\n\r\n")
      local s = assert(A:accept())
      assert(s:read_request())
      answer(s, 200, "ok")
      assert.equal(200, assert(raw.read_response(c)).status)
    end
    assert.matches("ejected", proxy:stderr(), 1, true)
    local c = connect()
    c:send("GET /1 HTTP/1.1\r\nHost: ej.test\r\n\r\n")
    local s = assert(A:accept())
    assert(s:read_request())
    answer(s, 503, "no")
    local t0 = helpers.now()
    local x = assert(A:accept(2))
    local waited = helpers.now() - t0
    assert(x:read_request())
    answer(x, 200, "again")
    assert.equal("again", assert(raw.read_response(c)).body)
    -- backoff = { base = 0.4, max = 0.4 }: the wait is between 0.2 and 0.4 s
    assert.is_true(waited >= 0.15, "the retry came after " .. waited .. " s")
    gauges_zero("ej")
  end)

  it("resends a chunked body a request hook read whole (req:read_body), byte for byte", function()
    local c = connect()
    c:send("PUT /rb HTTP/1.1\r\nHost: readbody.test\r\nTransfer-Encoding: chunked\r\n\r\n" ..
           "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    local s = assert(accept_any())
    assert.equal("hello world", assert(s:read_request()).body)
    rst(s)
    local s2 = assert(accept_any())
    assert.equal("hello world", assert(s2:read_request()).body)
    answer(s2, 200, "ok")
    assert.equal("ok", assert(raw.read_response(c)).body)
    gauges_zero("two")
  end)

  it("drops a request whose client half-closes mid-body during the backoff", function()
    local c = connect()
    c:send(post_head("idem.test", 20) .. "0123456789")
    local s = assert(accept_any())
    assert(s:take_until("\r\n\r\n", dl()))
    assert.equal("0123456789", assert(s:take(10, dl())))
    answer(s, 503, "early\n")
    c.sock:shutdown("send")
    assert.is_true(c:closed(2))
    helpers.sleep(0.3)
    gauges_zero("two")
  end)

  it("sends what the balance hook changed for this attempt, on a retry too", function()
    for _, how in ipairs({ "503", "reset" }) do
      local body = "0123456789"
      local c = connect()
      c:send("PUT /a HTTP/1.1\r\nHost: attempt.test\r\nContent-Length: 10\r\n\r\n" .. body)
      local s = assert(accept_any())
      local req = assert(s:read_request())
      assert.equal("1", req.h["x-attempt"])
      if how == "503" then answer(s, 503, "no") else rst(s) end
      local s2 = assert(accept_any())
      local req2 = assert(s2:read_request())
      assert.equal("2", req2.h["x-attempt"], how)
      assert.equal(body, req2.body)
      answer(s2, 200, "ok")
      assert.equal("ok", assert(raw.read_response(c)).body)
    end
    gauges_zero("two")
  end)

  it("resends an idempotent Expect: 100-continue request whose body came during the backoff", function()
    local c = connect()
    c:send("PUT /e HTTP/1.1\r\nHost: idem.test\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
    assert.equal(100, assert(raw.read_response(c)).status)
    local s = assert(accept_any())
    assert(s:take_until("\r\n\r\n", dl()))
    rst(s)
    c:send("0123456789")
    local s2 = assert(accept_any())
    assert.equal("0123456789", assert(s2:read_request()).body)
    answer(s2, 200, "ok")
    assert.equal("ok", assert(raw.read_final(c)).body)
    gauges_zero("two")
  end)

  it("answers an upgrade that fails every try with the last 503, and leaks nothing", function()
    local c = connect()
    c:send("GET /ws HTTP/1.1\r\nHost: one.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" ..
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    for i = 1, 3 do
      local s = assert(A:accept(2))
      assert(s:read_request())
      answer(s, 503, "no " .. i)
    end
    local res = assert(raw.read_response(c, { timeout = 3 }))
    assert.equal(503, res.status)
    assert.equal("no 3", res.body)
    assert.is_true(c:closed(2))
    gauges_zero("one")
  end)

  it("lets a route's connect timeout override its upstream's", function()
    local t0 = helpers.now()
    local res = assert(proxy:request({ path = "/", headers = { { "Host", "ct.test" } } }))
    local took = helpers.now() - t0
    assert.equal(504, res.status)
    assert.is_true(took >= 0.15 and took < 1.5, "took " .. took)
    gauges_zero("ct")
  end)

  it("lets a route's read timeout override its upstream's", function()
    local c = connect()
    local t0 = helpers.now()
    c:send("GET /1 HTTP/1.1\r\nHost: rt.test\r\n\r\n")
    local s = assert(A:accept())
    assert(s:read_request())
    local res = assert(raw.read_response(c, { timeout = 3 }))
    assert.equal(504, res.status)
    local took = helpers.now() - t0
    assert.is_true(took >= 0.25 and took < 1.5, "took " .. took)
    gauges_zero("rt")
  end)

  it("tries a refused server 100 times without a backoff, then 502, counters back to 0", function()
    local res = assert(proxy:request({ path = "/", headers = { { "Host", "hundred.test" } } }))
    assert.equal(502, res.status)
    local s = gauges_zero("hundred")
    assert.equal(99, s.retries)
  end)
  it("answers 500 when the balance hook fails on a retry, and leaks nothing", function()
    local c = connect()
    c:send("GET /1 HTTP/1.1\r\nHost: failhook.test\r\n\r\n")
    local s = assert(A:accept())
    assert(s:read_request())
    answer(s, 503, "no")
    assert.equal(500, assert(raw.read_response(c)).status)
    assert.is_true(no_attempt(0.3))
    gauges_zero("one")
  end)

  for _, changed in ipairs({ false, true }) do
    it("finishes a request that was backing off across a reload (upstream " ..
       (changed and "changed" or "unchanged") .. ")", function()
      local c = connect()
      c:send("GET /1 HTTP/1.1\r\nHost: one.test\r\n\r\n")
      local s = assert(A:accept())
      assert(s:read_request())
      answer(s, 503, "no")
      local text = helpers.read_file(proxy.conf)
      local new = text .. "\nmg.route { host = 'gen2.test', respond = { status = 200, body = '2' } }\n"
      if changed then
        new = new:gsub('servers = { "' .. A.addr .. '" }, keepalive = 0,', 'servers = { "' .. A.addr ..
                       '" }, keepalive = 0, max_requests = 1000,', 1)
      end
      proxy:reload(new, function()
        local r = proxy:request({ path = "/", headers = { { "Host", "gen2.test" } } })
        return r and r.status == 200
      end)
      local x = assert(A:accept(2))
      assert(x:read_request())
      answer(x, 200, "after reload")
      assert.equal("after reload", assert(raw.read_response(c)).body)
      gauges_zero("one")
      proxy:reload(text, function()
        local r = proxy:request({ path = "/", headers = { { "Host", "gen2.test" } } })
        return r and r.status ~= 200
      end)
    end)
  end
end)

-- Two workers, three origins (one answers 503 late, one answers late, one never
-- accepts: its connects hang), every breaker low, and clients that leave at
-- every moment: connecting, waiting for a head, backing off, mid-body. Once it
-- is all over, every gauge is back to 0 and the breakers did trip.
describe("a flood with aborts over two workers", function()
  local f503, slow, hole, proxy

  lazy_setup(function()
    f503 = helpers.origin({ name = "F", as_path = "/status/503", delay = 0.1 })
    slow = helpers.origin({ name = "S", delay = 0.2 })
    hole = helpers.origin({ name = "H", blackhole = true })
    proxy = helpers.proxy(helpers.workers_conf([[
mg.route { host = "stats.test", respond = function(req)
  local s = mg.upstream_stats(req:arg("u"))
  local out = {}
  for k, v in pairs(s) do out[#out + 1] = k .. "=" .. v end
  return 200, table.concat(out, " ")
end }
local mix = mg.upstream "mix" { servers = { "${f}", "${s}", "${h}" }, timeouts = { connect = 0.3 },
  retry = { tries = 5, on = { "connect", "timeout", "reset", "503" }, per_try_timeout = 0.5,
            backoff = { base = 0.02, max = 0.05 }, budget = 0.5, buffer = "4k" },
  max_requests = 24, max_pending = 6, max_connections = 12 }
mg.route { host = "mix.test", upstream = mix, idempotent = true }
]], 2), { vars = { f = f503.addr, s = slow.addr, h = hole.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  local function stats()
    local res = assert(proxy:request({ path = "/?u=mix", headers = { { "Host", "stats.test" } } }))
    local t = {}
    for k, v in res.body:gmatch("(%S+)=(%S+)") do t[k] = tonumber(v) end
    return t
  end

  it("leaks no gauge", function()
    math.randomseed(12)
    for round = 1, 3 do
      local cs = helpers.clients(proxy.port, 40, round * 50)
      for i, c in ipairs(cs) do
        if i % 3 == 0 then
          c:send("PUT /p HTTP/1.1\r\nHost: mix.test\r\nContent-Length: 3000\r\n\r\n" .. ("x"):rep(1000))
        elseif i % 3 == 1 then
          c:send("POST /p HTTP/1.1\r\nHost: mix.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        else
          c:send("GET /g HTTP/1.1\r\nHost: mix.test\r\n\r\n")
        end
      end
      local t0 = helpers.now()
      local leave = {}
      for i = 1, #cs do leave[i] = (i % 2 == 0) and math.random() * 0.6 or nil end
      while helpers.now() - t0 < 0.7 do
        for i, c in ipairs(cs) do
          if leave[i] and helpers.now() - t0 >= leave[i] then
            if i % 4 == 0 then c.sock:setoption("linger", { on = true, timeout = 0 }) end
            c:close()
            leave[i] = nil
            cs[i] = false
          end
        end
        helpers.sleep(0.01)
      end
      for i, c in ipairs(cs) do
        if c then
          if i % 3 == 0 then c:send(("y"):rep(2000)) end
        end
      end
      for _, c in ipairs(cs) do
        if c then
          c:response({ timeout = 5 })
          c:close()
        end
      end
    end
    local s
    helpers.wait_until(function()
      s = stats()
      return s.active_requests == 0 and s.active_connections == 0 and s.pending == 0 and s.active_retries == 0
    end, 5, 0.1)
    for _, g in ipairs(GAUGES) do assert.equal(0, s[g], g) end
    assert.is_true(s.overflow_requests + s.overflow_pending + s.overflow_connections > 0, "no breaker tripped")
    proxy:assert_alive()
  end)
end)
