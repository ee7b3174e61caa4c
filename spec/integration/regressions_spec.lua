-- Regressions: each case below is a bug fixed in moongate, checked with the
-- exact behaviour the fix established (and that the old code did not have).
local helpers = require "spec.helpers"

local MiB = 1024 * 1024
local H = "Host: x\r\n"

-- `n` trailer lines of exactly 100 bytes each, CRLF included.
local function trailer_lines(n)
  local t = {}
  for i = 1, n do
    local name = string.format("X-Trailer-%03d: ", i)
    t[#t + 1] = name .. ("t"):rep(100 - #name - 2) .. "\r\n"
  end
  return table.concat(t)
end

-- The first access log entry matching pred, or nil.
local function find_entry(path, pred)
  for line in helpers.lines(helpers.read_file(path)) do
    local e = helpers.decode_json(line)
    if pred(e) then return e end
  end
end

-- The access log entry matching pred, waiting up to 3 s for it.
local function log_entry(path, pred)
  return helpers.wait_until(function() return find_entry(path, pred) end, 3, 0.05)
end

-- Split raw response bytes into the parsed head (status, content-length)
-- and the body.
local function split_response(data)
  local i = data:find("\r\n\r\n", 1, true)
  assert(i, "no response head in " .. #data .. " bytes")
  local head = data:sub(1, i + 3)
  local status = tonumber(head:match("^HTTP/1%.1 (%d%d%d)"))
  local cl = head:lower():match("\r\ncontent%-length: *(%d+)\r\n")
  return status, tonumber(cl), data:sub(i + 4)
end

-- Keep sending `probe` (a few bytes) until a send fails with something other
-- than a timeout: the peer closed (reset) the connection. Returns the
-- error, or nil when `deadline` passed first.
local function wait_closed_by_send(c, probe, deadline)
  for _ = 1, 1000 do
    local remaining = deadline - helpers.now()
    if remaining <= 0 then return nil end
    local ok, err = c:send(probe, math.min(0.25, remaining))
    if not ok and err ~= "timeout" then return err end
    if ok then helpers.sleep(0.05) end
  end
end

describe("regressions", function()
  local origin, blackhole, proxy, log_path

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    blackhole = helpers.origin({ name = "blackhole", blackhole = true })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = "access.log",
  timeouts = { upstream_connect = 1 },
  limits = { head_size = 4096, headers = 100 } }
mg.listen { "127.0.0.1:${port}" }
mg.route { host = "respond.test", respond = { status = 200, body = "responded\n",
                                               headers = { ["content-type"] = "text/plain" } } }
local pattern = {}
for i = 0, 374999 do pattern[#pattern + 1] = string.format("%015d\n", i) end
mg.route { host = "big.test", respond = { status = 200, body = table.concat(pattern) } }
mg.route { host = "bh.test", upstream = mg.upstream "bh" { servers = { "${blackhole}" } } }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } } }
]], { vars = { origin = origin.addr, blackhole = blackhole.addr } })
    log_path = proxy.dir .. "/access.log"
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  local function by_client(c)
    local addr = c:local_addr()
    return function(e) return e.client == addr end
  end

  -- Trailers used to be appended to the frozen request head (a use after free).
  local function chunked_with_trailers(host)
    return "POST /echo HTTP/1.1\r\nHost: " .. host .. "\r\n"
      .. "X-Big: " .. ("a"):rep(400 - 9) .. "\r\n"
      .. "Transfer-Encoding: chunked\r\n\r\n"
      .. "5\r\nhello\r\n0\r\n" .. trailer_lines(20) .. "\r\n"
  end

  it("proxies a chunked request with a 400-byte header and 20 trailer lines, logging POST /echo", function()
    local c = proxy:connect()
    local doc = helpers.echo(assert(c:request(chunked_with_trailers("x"))))
    assert.equal(5, doc.body_len)
    assert.equal(helpers.sha256("hello"), doc.body_sha256)
    assert.is_true(doc.chunked)
    local e = log_entry(log_path, by_client(c))
    c:close()
    assert(e, "no access log line for the request")
    assert.same({ "POST", "/echo", 200 }, { e.method, e.path, e.status })
  end)

  it("answers a chunked request with 20 trailer lines on a respond route, logging POST /echo", function()
    local c = proxy:connect()
    local res = assert(c:request(chunked_with_trailers("respond.test")))
    assert.equal(200, res.status)
    assert.equal("responded\n", res.body)
    local e = log_entry(log_path, by_client(c))
    c:close()
    assert(e, "no access log line for the request")
    assert.same({ "POST", "/echo", 200 }, { e.method, e.path, e.status })
  end)

  -- Trailer bytes count against limits.head_size. A respond route has answered
  -- before the trailers arrive, so this goes through the origin, which answers
  -- only after the whole body.
  it("answers 431 and closes when trailers exceed limits.head_size before the origin answered", function()
    local c = proxy:connect()
    c:send("POST /echo HTTP/1.1\r\n" .. H .. "Transfer-Encoding: chunked\r\n\r\n"
      .. "5\r\nhello\r\n0\r\n" .. trailer_lines(60) .. "\r\n")
    local res, err = c:response({ timeout = 3 })
    assert(res, "no response: " .. tostring(err))
    helpers.assert_error(res, 431)
    assert.is_true((c:closed(2)), "connection left open")
  end)

  -- An upgrade request (not supported yet) used to leave the connection hanging.
  it("answers an Upgrade request with Connection: close and closes within 3 s", function()
    local c = proxy:connect()
    local res = assert(c:request("GET /echo HTTP/1.1\r\n" .. H
      .. "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"))
    assert.equal("/echo", helpers.echo(res).path)
    assert.equal("close", res.h["connection"])
    assert.is_true((c:closed(3)), "connection not closed within 3 s")
  end)

  -- Read a response slowly: a piece at a time, 10 ms apart, until moongate has
  -- logged the request (it has queued the last byte then), stop reading for
  -- `pause` seconds, then read the rest until the close. Returns all bytes
  -- read and why reading ended.
  local function read_slowly(c, pause)
    c.sock:setoption("recv-buffer-size", 32 * 1024) -- keep the rest in moongate
    local logged = by_client(c)
    local parts = {}
    local deadline = helpers.now() + 20
    for _ = 1, 2000 do
      if find_entry(log_path, logged) then break end
      local ok, err = c:fill(deadline)
      parts[#parts + 1] = c.buf
      c.buf = ""
      if not ok then return table.concat(parts), err end
      helpers.sleep(0.01)
    end
    helpers.sleep(pause)
    local rest, why = c:read_until_close(20)
    parts[#parts + 1] = rest
    return table.concat(parts), why
  end

  local function assert_6000000(data)
    local status, cl, body = split_response(data)
    assert.equal(200, status)
    assert.equal(6000000, cl)
    assert.equal(6000000, #body)
    assert.equal(helpers.sha256(helpers.pattern(6000000)), helpers.sha256(body))
  end

  -- The same 6,000,000 bytes from the origin (streamed) and from a respond
  -- route (queued at once, so the old code lost its tail every time).
  for _, src in ipairs({ { "from the origin", "x", "/bytes/6000000" },
                         { "from a respond route", "big.test", "/" } }) do
    local from, host, path = src[1], src[2], src[3]

    -- The linger after a Connection: close response used to start its
    -- 2 s timer when the last byte was queued instead of sent.
    it("delivers all of a 6,000,000-byte Connection: close response " .. from
       .. " to a client that stops reading for 2.5 s", function()
      local c = proxy:connect()
      assert(c:send("GET " .. path .. " HTTP/1.1\r\nHost: " .. host .. "\r\nConnection: close\r\n\r\n"))
      local data, why = read_slowly(c, 2.5)
      c:close()
      assert.equal("closed", why)
      assert_6000000(data)
    end)

    -- A client half-close used to drop the response still queued.
    it("delivers all of a 6,000,000-byte keep-alive response " .. from
       .. " after the client half-closes", function()
      local c = proxy:connect()
      assert(c:send("GET " .. path .. " HTTP/1.1\r\nHost: " .. host .. "\r\n\r\n"))
      assert(c.sock:shutdown("send"))
      local data, why = read_slowly(c, 0.5)
      c:close()
      assert.equal("closed", why)
      assert_6000000(data)
    end)
  end

  -- No Host used to hit undefined behaviour (a UBSan report in the router).
  it("answers GET /echo HTTP/1.0 without Host through a host-less route and stays alive", function()
    local c = proxy:connect()
    local res = assert(c:request("GET /echo HTTP/1.0\r\n\r\n"))
    c:close()
    assert.equal("/echo", helpers.echo(res).path)
    assert.is_nil(helpers.sanitizer_report(proxy:stderr()))
    assert.is_nil((proxy:wait(0)))
    assert.equal(200, assert(proxy:request({ path = "/echo" })).status)
  end)

  -- obs-fold right after an empty value used to slip through.
  local function origin_requests()
    helpers.sleep(0.1)
    return origin:stats().requests
  end

  for _, case in ipairs({
    { "X-A:\\r\\n b", "GET /echo HTTP/1.1\r\n" .. H .. "X-A:\r\n b\r\n\r\n" },
    { "Content-Length:\\r\\n 5", "POST /echo HTTP/1.1\r\n" .. H .. "Content-Length:\r\n 5\r\n\r\nhello" },
  }) do
    it("answers 400 and closes for obs-fold after an empty value (" .. case[1] .. "), never reaching the origin", function()
      local before = origin_requests()
      local c = proxy:connect()
      c:send(case[2])
      local res, err = c:response({ timeout = 3 })
      assert(res, "no response: " .. tostring(err))
      helpers.assert_error(res, 400)
      assert.is_true((c:closed(2)), "connection left open")
      assert.equal(before, origin_requests())
    end)
  end

  -- HTTP/1.0 has no chunked framing: the connection cannot be trusted after it.
  it("answers an HTTP/1.0 chunked request with Connection: keep-alive, then closes", function()
    local c = proxy:connect()
    local res = assert(c:request("POST /echo HTTP/1.0\r\n" .. H
      .. "Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
    local doc = helpers.echo(res)
    assert.same({ 5, helpers.sha256("hello") }, { doc.body_len, doc.body_sha256 })
    assert.is_true((c:closed(2)), "connection left open")
  end)

  -- Access log fields for requests that fail early or time out.
  it("logs method GET for a request refused with 431 for 120 headers", function()
    local t = { "GET /echo HTTP/1.1\r\n", H }
    for i = 1, 119 do t[#t + 1] = "X-H" .. i .. ": v\r\n" end
    t[#t + 1] = "\r\n"
    local c = proxy:connect()
    c:send(table.concat(t))
    local res, err = c:response({ timeout = 3 })
    assert(res, "no response: " .. tostring(err))
    helpers.assert_error(res, 431)
    local e = log_entry(log_path, by_client(c))
    c:close()
    assert(e, "no access log line for the request")
    assert.same({ "GET", 431 }, { e.method, e.status })
  end)

  it("logs an upstream_time below upstream_connect + 1 for a 504 after a connect timeout", function()
    local c = proxy:connect()
    local res = assert(c:request({ path = "/", headers = { { "Host", "bh.test" } } }))
    helpers.assert_error(res, 504)
    local e = log_entry(log_path, by_client(c))
    c:close()
    assert(e, "no access log line for the request")
    assert.equal(504, e.status)
    assert.equal(blackhole.addr, e.upstream)
    assert.equal("number", type(e.upstream_time))
    assert(e.upstream_time >= 0.9 and e.upstream_time < 2,
      "upstream_time " .. tostring(e.upstream_time) .. ", expected 0.9 <= t < 2 (upstream_connect = 1)")
  end)

  -- Codings other than chunked cannot be re-framed: they used to be passed on broken.
  it("answers 502 for an upstream response with Transfer-Encoding: gzip, chunked", function()
    local res = assert(proxy:request({ path = "/te-gzip" }))
    helpers.assert_error(res, 502)
  end)

  -- Found by fuzz_exchange: an idle connection gave its request codec back after
  -- every read, even one that had taken the CR of an empty line; the next read
  -- began on a fresh codec, so a lone CR before the request line was an error
  -- when it came with the request and was forgotten when it came alone.
  it("answers 400 to a lone CR before the request line, in one read or in a read of its own", function()
    local req = "GET / HTTP/1.1\r\nHost: respond.test\r\n\r\n"
    local c = proxy:connect()
    helpers.assert_error(assert(c:request("\r" .. req)), 400)
    c:close()
    c = proxy:connect()
    assert(c:send("\r"))
    helpers.sleep(0.2)
    helpers.assert_error(assert(c:request(req)), 400)
    c:close()
    -- an empty line before a request is allowed (RFC 9112 2.2), split or not
    c = proxy:connect()
    assert(c:send("\r"))
    helpers.sleep(0.2)
    assert(c:send("\n"))
    helpers.sleep(0.2)
    local res = assert(c:request(req))
    assert.equal(200, res.status)
    assert.equal("responded\n", res.body)
    c:close()
  end)
end)

-- Pipelined requests to a respond route used to be answered into an
-- unbounded output queue while the client read nothing.
describe("regressions: pipelined flood against a respond route", function()
  local proxy

  lazy_setup(function()
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, timeouts = { send = 1 } }
mg.listen { "127.0.0.1:${port}" }
mg.route { respond = { status = 200, body = "${body}" } }
]], { vars = { body = ("r"):rep(1000) } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("stays under 64 MiB RSS while the client never reads, closes on the send timeout, then serves", function()
    local req = "GET / HTTP/1.1\r\nHost: d\r\n\r\n"
    local block = req:rep(math.floor(MiB / #req))
    local total = 20 * #block -- about 20 MiB of requests
    local c = proxy:connect()
    c.sock:setoption("recv-buffer-size", 16 * 1024) -- may be refused: then simply never read
    local t0 = helpers.now()
    local sent, peak, closed_err = 0, proxy:rss() or 0, nil
    for _ = 1, 200 do
      if sent >= total or helpers.now() >= t0 + 10 then break end
      local piece = block:sub((sent % #block) + 1)
      local ok, err, n = c:send(piece, 0.25)
      sent = sent + (ok and #piece or (n or 0))
      peak = math.max(peak, proxy:rss() or 0)
      if not ok and err ~= "timeout" then
        closed_err = err
        break
      end
      if peak >= 64 * 1024 then break end -- failed already: do not feed it more
    end
    -- all of it went in without a close: go on sending whole requests
    if not closed_err and sent == total then
      closed_err = wait_closed_by_send(c, req, helpers.now() + 5)
    end
    local elapsed = helpers.now() - t0
    peak = math.max(peak, proxy:rss() or 0)
    c:close()
    assert(peak < 64 * 1024, string.format("moongate RSS reached %.1f MiB (client sent %.1f MiB)",
      peak / 1024, sent / MiB))
    assert(closed_err, string.format("connection still open after %.1f s (client sent %.1f MiB)",
      elapsed, sent / MiB))
    assert.equal(200, assert(proxy:request({ path = "/" })).status)
  end)
end)

-- Full duplex: an origin echoing the body back while a client sends and
-- never reads used to leave the connection stuck forever.
describe("regressions: full-duplex echo with a client that never reads", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "D" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, limits = { body_size = 0 },
  timeouts = { send = 2, upstream_connect = 10, upstream_read = 10, upstream_write = 10 } }
mg.listen { "127.0.0.1:${port}" }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } } }
]], { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("closes the client connection within 6 s of a 40 MB upload, then serves a fresh request", function()
    local c = proxy:connect()
    c.sock:setoption("recv-buffer-size", 64 * 1024)
    c.sock:setoption("send-buffer-size", 64 * 1024)
    local chunk = string.format("%x\r\n", 256 * 1024) .. ("e"):rep(256 * 1024) .. "\r\n"
    local t0 = helpers.now()
    local deadline = t0 + 8
    assert(c:send("POST /stream-echo HTTP/1.1\r\n" .. H .. "Transfer-Encoding: chunked\r\n\r\n"))
    local sent, pos, closed_err = 0, 1, nil
    for _ = 1, 2000 do
      if (sent >= 40 * MiB and pos == 1) or helpers.now() >= deadline then break end
      local ok, err, n = c:send(chunk:sub(pos), math.min(0.25, math.max(0.01, deadline - helpers.now())))
      if ok then
        sent, pos = sent + (#chunk - pos + 1), 1
      else
        sent, pos = sent + (n or 0), pos + (n or 0)
        if err ~= "timeout" then
          closed_err = err
          break
        end
      end
    end
    -- all 40 MiB went in without a close: go on sending small chunks
    if not closed_err and pos == 1 then
      closed_err = wait_closed_by_send(c, "1\r\ne\r\n", deadline)
    end
    local elapsed = helpers.now() - t0
    c:close()
    assert(closed_err, string.format("connection still open after %.1f s (client sent %.1f MiB)",
      elapsed, sent / MiB))
    assert(elapsed < 6, string.format("closed only after %.1f s", elapsed))
    assert.equal(200, assert(proxy:request({ path = "/echo" })).status)
  end)
end)

-- Found by fuzz_exchange: req:set_method changed the framing of what went back
-- to the client. A HEAD made a POST for the upstream got a 502 with a body, and
-- the client read that body as the next response; a GET made a HEAD got the
-- upstream's Content-Length with no body after it, and read the next response
-- as that body. The client's answer follows the method the client sent.
describe("regressions: req:set_method and the framing of the client's answer", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "M" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, timeouts = { upstream_connect = 1 } }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
local dead = mg.upstream "dead" { servers = { "127.0.0.1:1" } }
mg.route { host = "post-dead.test", upstream = dead,
  on = { upstream_request = function(req) req:set_method("POST") end } }
mg.route { host = "post.test", upstream = o,
  on = { upstream_request = function(req) req:set_method("POST") end } }
mg.route { host = "head.test", upstream = o,
  on = { upstream_request = function(req) req:set_method("HEAD") end } }
]], { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
    if origin then origin:stop() end
  end)

  -- two pipelined requests, the first one `method` to `host`; the raw answer
  local function pipelined(method, host)
    local c = proxy:connect()
    assert(c:send(method .. " /bytes/100 HTTP/1.1\r\nHost: " .. host .. "\r\n\r\n"
      .. "GET /bytes/7 HTTP/1.1\r\nHost: post.test\r\nConnection: close\r\n\r\n"))
    local data = c:read_until_close(10)
    c:close()
    return data
  end

  it("sends no body in the 502 to a HEAD request that a hook made a POST", function()
    local data = pipelined("HEAD", "post-dead.test")
    local first = data:match("^HTTP/1%.1 502 [^\r]*\r\n.-\r\n\r\n")
    assert.truthy(first, data)
    -- the next bytes are the second response's head, not the 502's body
    assert.truthy(data:sub(#first + 1):match("^HTTP/1%.1 200 "), data)
  end)

  it("frames a proxied answer by the client's method: HEAD made POST, GET made HEAD", function()
    local data = pipelined("HEAD", "post.test")
    local status, cl, rest = split_response(data)
    assert.equal(200, status)
    assert.equal(100, cl) -- the length a GET would get, and no body
    assert.truthy(rest:match("^HTTP/1%.1 200 "), data)
    data = pipelined("GET", "head.test")
    status, cl, rest = split_response(data)
    assert.equal(200, status)
    assert.equal(0, cl) -- the upstream sent no body: the client is told so
    assert.truthy(rest:match("^HTTP/1%.1 200 "), data)
  end)
end)
