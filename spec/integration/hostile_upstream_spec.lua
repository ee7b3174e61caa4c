-- A hostile origin (issue 9, items 1-4, 11, 14): the spec itself is the
-- origin (spec/support/raw.lua: a listening socket in this process), so every
-- byte moongate gets from "upstream" is written here by hand. For each bad
-- answer: the exact outcome for the client (502 before the head went out; the
-- head and the bytes so far then a close after it), a log line that names the
-- upstream and the cause, an origin connection that is not pooled when bytes
-- are left on it, and a worker that keeps serving.
local helpers = require "spec.helpers"
local raw = require "spec.support.raw"

local CONF = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, timeouts = { upstream_read = 2 } }
mg.listen { "127.0.0.1:${port}" }
mg.listen { "127.0.0.1:${redir}", redirect_https = 8443 }
local hostile = mg.upstream "hostile" { servers = { "${hostile}" } }
local good = mg.upstream "good" { servers = { "${origin}" } }
mg.route { path = "/h/", upstream = hostile }
mg.route { path = "/ok/", upstream = good }
mg.route { path = "/respond", respond = { status = 200, body = "made here\n",
  headers = { ["content-type"] = "text/plain" } } }
mg.route { host = "dead.test", upstream = mg.upstream "dead" { servers = { "127.0.0.1:${dead}" } } }
mg.route { path = "/hooked/", upstream = hostile, on = {
  response = function(req, res)
    res:set_header("X-Hook", "added")
    res:add_header("X-Hook-Add", "1")
  end,
  log = function(req, res)
    local names = {}
    for k in pairs(res:headers()) do names[#names + 1] = k end
    table.sort(names)
    mg.log.info("loghook status=" .. tostring(res.status) .. " h1=" .. tostring(res:header("x-h1"))
      .. " h15=" .. tostring(res:header("x-h15")) .. " t1=" .. tostring(res:header("x-t1"))
      .. " names=" .. table.concat(names, ",") .. " end")
  end,
} }
mg.route { host = "to200.test", upstream = good, on = { response = function(req, res)
  if res.status == 204 or res.status == 304 then res:set_status(200) end
end } }
mg.route { host = "to204.test", upstream = good, on = { response = function(req, res)
  if res.status == 200 then res:set_status(204) end
end } }
]]

local GET = "GET /h/x HTTP/1.1\r\nHost: t\r\n\r\n"

describe("a hostile origin", function()
  local origin, hostile, proxy

  local function start()
    proxy = helpers.proxy(CONF, { ports = { "redir" }, vars = {
      hostile = hostile.addr, origin = origin.addr, dead = helpers.free_port() } })
  end

  lazy_setup(function()
    hostile = raw.origin()
    origin = helpers.origin({ name = "good" })
    start()
  end)

  lazy_teardown(function()
    if hostile then hostile:close() end
    helpers.teardown(proxy)
  end)

  -- A test that killed moongate failed on its own (assert_alive); the next
  -- one gets a fresh moongate rather than failing for the same reason.
  before_each(function()
    if proxy:wait(0) then start() end
  end)

  -- moongate is still running and its stderr holds no sanitizer report.
  local function assert_alive() proxy:assert_alive() end

  -- No test sees another's origin connections: close what was accepted (a
  -- pooled one included) and whatever still waits to be accepted.
  local connect, cleanup = raw.tracker(function() return proxy end, function() return hostile end)
  after_each(function()
    cleanup()
    helpers.sleep(0.05)
  end)

  -- Send `request` on a new client connection (or opts.client), accept
  -- moongate's connection to the origin, read the request there and answer
  -- `answer` (nil: nothing yet). Returns client, origin side, the request.
  local function exchange(answer, opts)
    opts = opts or {}
    local c = opts.client or connect()
    assert(c:send(opts.request or GET))
    local o = opts.o or assert(hostile:accept(3), "moongate did not connect to the origin")
    local req = assert(o:read_request(3), "no request reached the origin")
    if answer then o:send(answer) end -- may fail once moongate gave up on it
    if opts.close then o:close() end
    return c, o, req
  end

  -- One response from the client side; a missing one fails, naming a crash
  -- when that is why.
  local function read(c, opts)
    local res, err, partial = raw.read_response(c, opts or { timeout = 4 })
    if not res then
      helpers.sleep(0.1)
      assert_alive()
      assert(false, "no response (" .. tostring(err) .. "): " .. raw.show(partial))
    end
    return res
  end

  local function read_final(c)
    local res, a, b, partial = raw.read_final(c, { timeout = 4 })
    if res then return res, a end
    helpers.sleep(0.1)
    assert_alive()
    assert(false, "no final response (" .. tostring(a) .. ") after " .. #b .. " interim: " .. raw.show(partial))
  end

  -- The worker still serves: a normal request through the proxy gets 200.
  local function still_serves()
    assert_alive()
    local res = assert(proxy:request({ path = "/ok/echo" }))
    assert.equal(200, res.status)
  end

  -- A line of moongate's stderr after `mark` names the upstream and a cause.
  local function assert_logged(mark)
    local line, text = raw.find_log(proxy, mark, { hostile.addr }, 2)
    if not line then
      assert(false, "no log line names the upstream " .. hostile.addr .. "; stderr since the request:\n" .. text)
    end
    local _, j = line:find(hostile.addr, 1, true)
    assert(line:sub(j + 1):find("%a%a%a"), "the log line names no cause: " .. line)
    return line
  end

  -- The answer is a 502 of the error contract (text/plain), and logged.
  local function assert_502(c, mark)
    local res = read(c)
    assert(res.status == 502, "expected 502, got " .. raw.show(res.raw))
    assert.is_nil(res.problem)
    helpers.assert_error(res, 502)
    assert_logged(mark)
    return res
  end

  -- The head went out, then the connection closed before the body ended.
  local function assert_truncated(c, mark, status)
    local res = read(c)
    assert.equal(status or 200, res.status)
    assert.is_nil(res.problem, res.problem)
    assert(not res.complete, "the body was completed (a truncation passed as a whole body): "
      .. raw.show(res.raw))
    assert(res.closed, "the connection was not closed after the truncated body (" .. tostring(res.err)
      .. "): " .. raw.show(res.raw))
    assert_logged(mark)
    return res
  end

  -- moongate closes its side of an origin connection within `t` seconds.
  local function assert_origin_closed(o, why, t)
    local closed, data, how = o:closed(t or 1.5)
    assert(closed, "moongate kept the origin connection (" .. why .. "): " .. tostring(how)
      .. " " .. raw.show(data))
  end

  -----------------------------------------------------------------------
  -- item 1: trailers
  -----------------------------------------------------------------------

  describe("trailers", function()
    local function chunked_with_trailers(ntrailers)
      local t = { "HTTP/1.1 200 OK\r\n" }
      for i = 1, 15 do t[#t + 1] = "X-H" .. i .. ": v" .. i .. "\r\n" end
      t[#t + 1] = "Transfer-Encoding: chunked\r\n\r\n"
      t[#t + 1] = "5\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\n"
      for i = 1, ntrailers do t[#t + 1] = "X-T" .. i .. ": trailer " .. i .. "\r\n" end
      t[#t + 1] = "\r\n"
      return table.concat(t)
    end

    it("a chunked body with 40 trailer fields reaches the client whole, with the hook's header, "
       .. "no trailers, and the log hook sees the 15 headers and no trailer", function()
      local mark = raw.log_mark(proxy)
      local c = exchange(chunked_with_trailers(40), { request = "GET /hooked/x HTTP/1.1\r\nHost: t\r\n\r\n" })
      local res, err, partial = raw.read_response(c, { timeout = 4 })
      helpers.sleep(0.1)
      assert_alive()
      assert(res, "no response (" .. tostring(err) .. "): " .. raw.show(partial))
      assert.equal(200, res.status)
      assert.is_nil(res.problem)
      assert.equal("chunked", res.framing)
      assert.is_true(res.complete, "no terminating 0-chunk: " .. raw.show(res.raw))
      assert.equal("hello world!", res.body)
      assert.same({}, res.trailers)
      assert.equal("added", res.h["x-hook"])
      assert.equal("1", res.h["x-hook-add"])
      for i = 1, 15 do assert.equal("v" .. i, res.h["x-h" .. i]) end
      for _, kv in ipairs(res.headers) do
        assert(not kv[1]:lower():match("^x%-t%d"), "a trailer reached the head: " .. kv[1])
      end
      local line = raw.find_log(proxy, mark, { "loghook", " end" }, 3)
      assert(line, "the log hook logged nothing: " .. raw.log_since(proxy, mark):sub(1, 3000))
      assert.truthy(line:find("status=200 h1=v1 h15=v15 t1=nil ", 1, true), line)
      local names = line:match("names=(%S*) end")
      for i = 1, 15 do assert.truthy(("," .. names .. ","):find(",x-h" .. i .. ",", 1, true), line) end
      assert.is_nil(names:find("x%-t%d"), "the log hook sees trailers: " .. line)
      assert_alive()
      still_serves()
    end)

    it("trailers larger than the upstream head limit cut the body (no 0-chunk), close, and are logged", function()
      local mark = raw.log_mark(proxy)
      local c, o = exchange("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
      assert(c:readable(3), "the head did not reach the client")
      local t = { "0\r\n" }
      for i = 1, 100 do t[#t + 1] = "X-T" .. i .. ": " .. ("t"):rep(1000) .. "\r\n" end
      t[#t + 1] = "\r\n"
      o:send(table.concat(t))
      local res = assert_truncated(c, mark)
      assert.equal("chunked", res.framing)
      assert.equal("hello", res.body)
      assert_alive()
      still_serves()
    end)
  end)

  -----------------------------------------------------------------------
  -- item 2: interim responses
  -----------------------------------------------------------------------

  describe("interim responses", function()
    it("parses the bytes after a 100 Continue that claims a body as the next response, "
       .. "re-serialized, never forwarded raw", function()
      local planted = "HTTP/1.1 200 OK\r\nServer: evil\r\nContent-Length: 0\r\n\r\n"
      local c = exchange("HTTP/1.1 100 Continue\r\nContent-Length: " .. #planted .. "\r\n\r\n" .. planted)
      local res, interim = read_final(c)
      assert.same({}, interim)
      assert.equal(200, res.status)
      assert.is_nil(res.problem)
      assert.equal("", res.body)
      assert.is_nil(res.h["server"], "the origin's raw response reached the client: " .. raw.show(res.raw))
      assert.equal(1, raw.count_header(res, "date"), "no Date: not re-serialized by moongate: "
        .. raw.show(res.raw))
      assert.is_nil(res.raw_head:find("Server: evil", 1, true))
      -- exactly one final response: nothing more follows on the connection
      assert.is_false(c:readable(0.3), "more bytes followed: " .. raw.show(c.buf))
      still_serves()
    end)

    local EARLY = "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
      .. "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    it("forwards a 103 Early Hints head (with its Link) before the 200 to an HTTP/1.1 client", function()
      local c = exchange(EARLY)
      local res, interim = read_final(c)
      assert.equal(1, #interim)
      assert.equal(103, interim[1].status)
      assert.is_nil(interim[1].problem)
      assert.equal("</style.css>; rel=preload", interim[1].h["link"])
      assert.equal(200, res.status)
      assert.equal("ok", res.body)
      still_serves()
    end)

    it("sends only the 200 to an HTTP/1.0 client", function()
      local c = exchange(EARLY, { request = "GET /h/x HTTP/1.0\r\nHost: t\r\n\r\n" })
      local res, interim = read_final(c)
      assert.same({}, interim)
      assert.equal(200, res.status)
      assert.equal("ok", res.body)
      still_serves()
    end)

    it("does not forward the origin's 100 Continue", function()
      local c = exchange("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
      local res, interim = read_final(c)
      assert.same({}, interim)
      assert.equal(200, res.status)
      assert.equal("ok", res.body)
    end)

    it("sends the client exactly one 100 Continue (its own) when the client expects one", function()
      local c = connect()
      assert(c:send("POST /h/x HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"))
      local cont = read(c, { timeout = 3 })
      assert.equal(100, cont.status)
      assert(c:send("data"))
      local o = assert(hostile:accept(3))
      local req = assert(o:read_request(3))
      assert.equal("data", req.body)
      o:send("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
      local res, interim = read_final(c)
      assert.same({}, interim)
      assert.equal(200, res.status)
      assert.equal("ok", res.body)
    end)

    for _, st in ipairs({ "099", "600" }) do
      it("answers 502 to a status line with status " .. st, function()
        local mark = raw.log_mark(proxy)
        local c = exchange("HTTP/1.1 " .. st .. " Odd\r\nContent-Length: 2\r\n\r\nok")
        assert_502(c, mark)
        still_serves()
      end)
    end

    it("answers 502 to a 101 when the request did not ask to upgrade", function()
      local mark = raw.log_mark(proxy)
      local c = exchange("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: evil\r\n\r\n")
      assert_502(c, mark)
      still_serves()
    end)
  end)

  -----------------------------------------------------------------------
  -- item 3: header syntax
  -----------------------------------------------------------------------

  describe("header syntax", function()
    -- RFC 9112 5.1: a proxy removes such whitespace or refuses the response;
    -- moongate refuses it (llhttp's strict mode), never forwarding "X-Bad ".
    it("refuses whitespace before the colon (X-Bad : v) with 502", function()
      local mark = raw.log_mark(proxy)
      local c = exchange("HTTP/1.1 200 OK\r\nX-Bad : v\r\nContent-Length: 2\r\n\r\nok")
      assert_502(c, mark)
      still_serves()
    end)

    it("answers 502 to a header name with a non-token byte (X@Y: v)", function()
      local mark = raw.log_mark(proxy)
      local c = exchange("HTTP/1.1 200 OK\r\nX@Y: v\r\nContent-Length: 2\r\n\r\nok")
      assert_502(c, mark)
      still_serves()
    end)
  end)

  -----------------------------------------------------------------------
  -- item 4: everything else an origin can send
  -----------------------------------------------------------------------

  describe("malformed heads get 502", function()
    local many = {}
    for i = 1, 10000 do many[i] = "A:b\r\n" end
    local CASES = {
      { "a 200 KB head", "HTTP/1.1 200 OK\r\nX-Big: " .. ("a"):rep(200 * 1024) .. "\r\nContent-Length: 2\r\n\r\nok" },
      { "10,000 headers", "HTTP/1.1 200 OK\r\n" .. table.concat(many) .. "Content-Length: 2\r\n\r\nok" },
      { "a NUL in a header value", "HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\nok" },
      { "a bare CR in a header value", "HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nok" },
      { "a head with bare LF line ends", "HTTP/1.1 200 OK\nContent-Length: 2\n\nok" },
      { "Content-Length with Transfer-Encoding: chunked",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n" },
      { "two different Content-Lengths", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!" },
      { "Content-Length: 18446744073709551616 (2^64)",
        "HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551616\r\n\r\nok" },
      -- found by mutation_spec: a one-digit status, a 1xx followed by a body
      -- (no content: the chunk lines are then no response)
      { "a one-digit status code", "HTTP/1.1 4 Whatever\r\nContent-Length: 9\r\n\r\nstatus 4\n" },
      { "a 100 Continue with a chunked body",
        "HTTP/1.1 100 Continue\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n" },
    }
    for _, case in ipairs(CASES) do
      it("for " .. case[1], function()
        local mark = raw.log_mark(proxy)
        local c = exchange(case[2])
        assert_502(c, mark)
        still_serves()
      end)
    end

    it("for a close in the middle of the head", function()
      local mark = raw.log_mark(proxy)
      local c = exchange("HTTP/1.1 200 OK\r\nContent-Le", { close = true })
      assert_502(c, mark)
      still_serves()
    end)
  end)

  describe("a body that fails after the head went out ends in a truncated close", function()
    -- the head goes first; the rest once the client has the head
    local function head_then(head, rest, close)
      local c, o = exchange(head)
      assert(c:readable(3), "the head did not reach the client")
      if rest then o:send(rest) end
      if close then o:close() end
      return c, o
    end

    it("for a chunk size that overflows", function()
      local mark = raw.log_mark(proxy)
      local c = head_then("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        "fffffffffffffffff1\r\n" .. ("x"):rep(64) .. "\r\n0\r\n\r\n")
      local res = assert_truncated(c, mark)
      assert.equal("", res.body)
      still_serves()
    end)

    it("for a close in the middle of a Content-Length body: the head, 50 bytes, then a close", function()
      local mark = raw.log_mark(proxy)
      local body = ("b"):rep(50)
      local c = head_then("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", body, true)
      local res = assert_truncated(c, mark)
      assert.equal("length", res.framing)
      assert.equal(body, res.body)
      still_serves()
    end)

    it("for a close in the middle of a chunk: no 0-chunk", function()
      local mark = raw.log_mark(proxy)
      local c = head_then("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        "5\r\nhello\r\n10\r\nabcde", true)
      local res = assert_truncated(c, mark)
      assert.equal("chunked", res.framing)
      assert.equal("hello", res.body:sub(1, 5))
      assert.is_nil(res.raw:find("\r\n0\r\n", 1, true), "a 0-chunk was sent: " .. raw.show(res.raw))
      still_serves()
    end)
  end)

  describe("bytes beyond the message", function()
    it("more bytes than Content-Length: the client gets exactly Content-Length bytes, the origin "
       .. "connection is closed, the next request gets its own answer on a new connection", function()
      local mark = raw.log_mark(proxy)
      local c, o = exchange("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        .. "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsurplus")
      local res = read(c)
      assert.equal(200, res.status)
      assert.is_true(res.complete)
      assert.equal("hello", res.body)
      -- the next request on the same client connection
      assert(c:send("GET /h/second HTTP/1.1\r\nHost: t\r\n\r\n"))
      local o2 = hostile:accept(2)
      if o2 then
        local req2 = assert(o2:read_request(3))
        assert.equal("/h/second", req2.target)
        o2:send("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
      end
      local res2 = read(c)
      assert(res2.body ~= "surplus", "the surplus of the last response answered the next request")
      assert(o2, "the next request did not open a new origin connection")
      assert.equal(200, res2.status)
      assert.equal("second", res2.body)
      assert_origin_closed(o, "bytes were left after the response")
      assert_logged(mark)
      still_serves()
    end)

    local NOBODY = {
      { "a 204 with a body", GET, "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\nhello", 204 },
      { "a 304 with a body", GET, "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello", 304 },
      { "a HEAD answered with a body", "HEAD /h/x HTTP/1.1\r\nHost: t\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, true },
    }
    for _, case in ipairs(NOBODY) do
      local name, request, answer, status, head = case[1], case[2], case[3], case[4], case[5]
      it(name .. ": the status without body bytes, the origin connection not pooled, "
         .. "the client connection still usable", function()
        local mark = raw.log_mark(proxy)
        local c, o = exchange(answer, { request = request })
        local res = read(c, { timeout = 4, head = head })
        assert.equal(status, res.status)
        assert.is_nil(res.problem, res.problem)
        assert.equal("", res.body)
        -- the next request on the same client connection: nothing of "hello"
        -- may come before its answer
        assert(c:send("GET /ok/echo HTTP/1.1\r\nHost: t\r\n\r\n"))
        local res2, err, partial = raw.read_response(c, { timeout = 4 })
        assert(res2, "no answer to the next request (" .. tostring(err) .. "): " .. raw.show(partial))
        assert(res2.status == 200, "the next answer is not the echo: " .. raw.show(res2.raw))
        assert.is_nil(res2.problem, res2.problem)
        helpers.echo(res2)
        assert_origin_closed(o, "the body bytes of a bodiless response were left on it")
        assert_logged(mark)
        still_serves()
      end)
    end
  end)

  -----------------------------------------------------------------------
  -- item 11: framing follows the status actually sent
  -----------------------------------------------------------------------

  describe("a response hook that changes the status", function()
    for _, st in ipairs({ 204, 304 }) do
      it("turning a " .. st .. " into 200: Content-Length: 0, no body, the connection serves on", function()
        local c = connect()
        assert(c:send("GET /status/" .. st .. " HTTP/1.1\r\nHost: to200.test\r\n\r\n"))
        local res = read(c, { timeout = 2 })
        assert.equal(200, res.status)
        assert.is_nil(res.problem, res.problem)
        assert(res.h["content-length"] == "0", "Content-Length is " .. tostring(res.h["content-length"])
          .. " (framing " .. res.framing .. ", " .. tostring(res.err) .. "): " .. raw.show(res.raw))
        assert.is_nil(res.h["transfer-encoding"])
        assert.equal("", res.body)
        assert(c:send("GET /echo HTTP/1.1\r\nHost: to200.test\r\n\r\n"))
        local res2, err = raw.read_response(c, { timeout = 3 })
        assert(res2, "no answer to the next request: " .. tostring(err))
        helpers.echo(res2)
      end)
    end

    it("turning a 200 with a body into 204: no body, no Content-Length or Transfer-Encoding, "
       .. "the connection serves on", function()
      local c = connect()
      assert(c:send("GET /bytes/100 HTTP/1.1\r\nHost: to204.test\r\n\r\n"))
      local res = read(c, { timeout = 3 })
      assert.equal(204, res.status)
      assert.is_nil(res.problem, res.problem)
      assert.is_nil(res.h["content-length"], "a 204 with Content-Length " .. tostring(res.h["content-length"]))
      assert.is_nil(res.h["transfer-encoding"], "a 204 with Transfer-Encoding")
      assert(c:send("GET /echo HTTP/1.1\r\nHost: to204.test\r\n\r\n"))
      local res2, err, partial = raw.read_response(c, { timeout = 3 })
      assert(res2, "no answer to the next request (" .. tostring(err) .. "): " .. raw.show(partial))
      assert(res2.status, "body bytes of the 204 came before the next answer: " .. raw.show(res2.raw_head))
      -- the hook turns this 200 into a 204 too: what matters is that it parses
      assert.equal(204, res2.status)
      assert.is_nil(res2.problem, res2.problem)
      assert.is_false(c:readable(0.3), "stray bytes after the 204: " .. raw.show(c.buf))
    end)
  end)

  -----------------------------------------------------------------------
  -- item 14: Date
  -----------------------------------------------------------------------

  describe("Date", function()
    local function assert_date(res, what)
      assert(res, "no response to " .. what)
      assert(raw.count_header(res, "date") == 1, what .. ": " .. raw.count_header(res, "date")
        .. " Date headers in " .. raw.show(res.raw_head))
      local t, why = raw.imf_fixdate(res.h["date"])
      assert(t, what .. ": " .. tostring(why))
      assert(math.abs(t - os.time()) <= 5, what .. ": Date " .. res.h["date"] .. " is not now")
    end

    local function get(port, request)
      local c = connect(port)
      assert(c:send(request))
      local res = raw.read_response(c, { timeout = 4 })
      c:close()
      return res
    end

    it("on answers moongate makes itself: a respond route, a 404, a 502 from a dead upstream, "
       .. "an https redirect", function()
      local res = get(nil, "GET /respond HTTP/1.1\r\nHost: t\r\n\r\n")
      assert.equal(200, res.status)
      assert_date(res, "the respond route")
      res = get(nil, "GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n")
      assert.equal(404, res.status)
      assert_date(res, "the 404")
      res = get(nil, "GET /x HTTP/1.1\r\nHost: dead.test\r\n\r\n")
      assert.equal(502, res.status)
      assert_date(res, "the 502")
      res = get(proxy.ports.redir, "GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
      assert.equal(301, res.status)
      assert_date(res, "the redirect")
    end)

    it("is added to a proxied response that has none", function()
      local c = exchange("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
      local res = read(c)
      assert.equal(200, res.status)
      assert_date(res, "the proxied response")
    end)

    it("keeps the origin's own Date, once", function()
      local date = "Tue, 15 Nov 1994 08:12:31 GMT"
      local c = exchange("HTTP/1.1 200 OK\r\nDate: " .. date .. "\r\nContent-Length: 2\r\n\r\nok")
      local res = read(c)
      assert.equal(200, res.status)
      assert.equal(1, raw.count_header(res, "date"))
      assert.equal(date, res.h["date"])
    end)
  end)
end)
