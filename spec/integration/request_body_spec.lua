-- Request bodies from Lua (docs/hooks.md "Request bodies"): req:read_body waits
-- for the whole body (other requests are served meanwhile), bounded by the
-- route's buffer_body and limits.body_size; req:body, req:set_body (moongate
-- frames it), req:set_method; the streaming request_body filter.
local helpers = require "spec.helpers"

-- body in chunked framing, `size` bytes a chunk
local function chunked(body, size)
  local parts = {}
  for i = 1, #body, size do
    local piece = body:sub(i, i + size - 1)
    parts[#parts + 1] = string.format("%x\r\n%s\r\n", #piece, piece)
  end
  parts[#parts + 1] = "0\r\n\r\n"
  return table.concat(parts)
end

-- a body whose bytes differ along it (a misplaced piece changes its hash)
local function pattern(n)
  local parts, len, i = {}, 0, 0
  while len < n do
    local line = string.format("line %08d abcdefghijklmnopqrstuvwxyz\n", i)
    parts[#parts + 1] = line
    len = len + #line
    i = i + 1
  end
  return table.concat(parts):sub(1, n)
end

local function post_head(path, framing, extra)
  return "POST " .. path .. " HTTP/1.1\r\nHost: x\r\n" .. (extra or "") .. framing .. "\r\n\r\n"
end

describe("request bodies", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, error_log = "error.log",
  limits = { body_size = 6 * 1024 * 1024 }, timeouts = { client_body = 1 }, shared = { d = "64k" } }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
local function echo_body(req) -- the body as read, back to the client
  local ok, err = req:read_body()
  if not ok then return req:respond(413, "read_body: " .. tostring(err) .. "\n") end
  return req:respond(200, req:body(), { ["x-len"] = tostring(#req:body()) })
end
mg.route { path = "/read/echo-back", upstream = o, on = { request = echo_body } }
mg.route { path = "/read/small", upstream = o, buffer_body = "1k", on = { request = echo_body } }
mg.route { path = "/read/proxy", upstream = o, on = { request = function(req)
  assert(req:read_body())
  req:set_header("x-read", tostring(#req:body()))
end } }
mg.route { path = "/read/ignore-error", upstream = o, buffer_body = "16m", on = { request = function(req)
  local ok, err = req:read_body()
  mg.shared("d"):set("last_err", tostring(err))
end } }
mg.route { path = "/read/respond", buffer_body = "64k", respond = function(req)
  local ok, err = req:read_body()
  if not ok then return 413, "respond: " .. err .. "\n" end
  return 200, "respond got " .. #req:body() .. " " .. tostring(req:body() == req:body()) .. "\n"
end }
mg.route { path = "/read/unread", upstream = o, on = { request = function(req)
  req:set_header("x-body", tostring(req:body()))
end } }
mg.route { path = "/set/", upstream = o, on = { request = function(req)
  if req:header("x-read-first") then assert(req:read_body()) end
  req:set_body("replaced:" .. (req:body() or "unread"))
  req:set_path("/echo")
end } }
mg.route { path = "/method/", upstream = o, on = { request = function(req)
  req:set_method(req:header("x-method"))
  if req:header("x-body") then req:set_body(req:header("x-body")) end
  req:set_path("/echo")
end } }
mg.route { path = "/upper/", upstream = o, buffer_body = "8m", on = {
  request = function(req)
    if req:header("x-read") then assert(req:read_body()) end
    req:set_path("/echo")
  end,
  request_body = function(req, chunk, eof)
    if eof then return req:header("x-tail") end -- nil: nothing more
    return chunk:upper()
  end } }
mg.route { path = "/filter-fails/", upstream = o, on = {
  request_body = function(req, chunk, eof) error("filter broke") end } }
mg.route { path = "/cancel", upstream = o, on = { request = function(req)
  req:read_body()
  mg.shared("d"):incr("after_read", 1, 0)
end } }
mg.route { path = "/count", respond = function(req)
  return 200, tostring(mg.shared("d"):get("after_read") or 0)
end }
mg.route { path = "/last-err", respond = function(req)
  return 200, tostring(mg.shared("d"):get("last_err"))
end }
mg.route { path = "/direct", respond = { status = 200, body = "direct\n" } }
]], { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy, origin)
  end)

  local function errlog() return helpers.read_file(proxy.dir .. "/error.log") or "" end

  describe("req:read_body", function()
    it("gives req:body() as the client sent it, with a Content-Length", function()
      local body = pattern(300000)
      local res = assert(proxy:request({ method = "POST", path = "/read/echo-back", body = body }))
      assert.equal(200, res.status)
      assert.equal(tostring(#body), res.h["x-len"])
      assert(res.body == body, "the body read differs from the one sent")
    end)

    it("gives req:body() as the client sent it, chunked", function()
      local body = pattern(200000)
      local c = proxy:connect()
      assert(c:send(post_head("/read/echo-back", "Transfer-Encoding: chunked") .. chunked(body, 7000)))
      local res = assert(c:response({ timeout = 5 }))
      c:close()
      assert.equal(200, res.status)
      assert(res.body == body, "the body read differs from the one sent")
    end)

    it("sends the body it read upstream, whole, with its Content-Length (even when it came chunked)", function()
      local body = pattern(100000)
      local c = proxy:connect()
      assert(c:send(post_head("/read/proxy", "Transfer-Encoding: chunked") .. chunked(body, 4096)))
      local doc = helpers.echo(assert(c:response({ timeout = 5 })))
      c:close()
      assert.equal(#body, doc.body_len)
      assert.equal(helpers.sha256(body), doc.body_sha256)
      assert.is_false(doc.chunked)
      assert.same({ tostring(#body) }, helpers.echo_headers(doc, "content-length"))
      assert.same({}, helpers.echo_headers(doc, "transfer-encoding"))
      assert.same({ tostring(#body) }, helpers.echo_headers(doc, "x-read"))
    end)

    it("returns true with an empty body for a request without one, and req:body() is nil when not read", function()
      local doc = helpers.echo(assert(proxy:request({ path = "/read/proxy" })))
      assert.equal(0, doc.body_len)
      assert.same({ "0" }, helpers.echo_headers(doc, "x-read"))
      doc = helpers.echo(assert(proxy:request({ method = "POST", path = "/read/unread", body = "abc" })))
      assert.same({ "nil" }, helpers.echo_headers(doc, "x-body"))
      assert.equal(3, doc.body_len)
    end)

    it("works in a route's respond function", function()
      local res = assert(proxy:request({ method = "POST", path = "/read/respond", body = ("r"):rep(5000) }))
      assert.equal(200, res.status)
      assert.equal("respond got 5000 true\n", res.body)
    end)

    it("waits for a body that comes in pieces over 1 s while the worker answers others", function()
      local body = pattern(10000)
      local c = proxy:connect()
      local t0 = helpers.now()
      assert(c:send(post_head("/read/echo-back", "Content-Length: " .. #body) .. body:sub(1, 1000)))
      for i = 2, 10 do
        helpers.sleep(0.1)
        local t = helpers.now()
        local other = assert(proxy:request({ path = "/direct" }))
        assert.equal("direct\n", other.body)
        assert(helpers.now() - t < 0.3, "request " .. i .. " waited behind the hook reading a body")
        assert(c:send(body:sub((i - 1) * 1000 + 1, i * 1000)))
      end
      local res = assert(c:response({ timeout = 5 }))
      c:close()
      assert(helpers.now() - t0 >= 0.9)
      assert.equal(200, res.status)
      assert(res.body == body, "the body read differs from the one sent")
    end)

    it("sends 100 Continue to a client that waits for it, then reads the body", function()
      local c = proxy:connect()
      assert(c:send(post_head("/read/echo-back", "Content-Length: 5", "Expect: 100-continue\r\n")))
      local interim = assert(c:response({ timeout = 5 }))
      assert.equal(100, interim.status)
      assert(c:send("hello"))
      local res = assert(c:response({ timeout = 5 }))
      c:close()
      assert.equal(200, res.status)
      assert.equal("hello", res.body)
    end)

    it("fails with 'body too large' beyond the route's buffer_body, and the hook answers 413", function()
      local body = pattern(2000)
      local res = assert(proxy:request({ method = "POST", path = "/read/small", body = body }))
      assert.equal(413, res.status)
      assert.equal("read_body: body too large\n", res.body)
      -- chunked: found out while it streams in
      local c = proxy:connect()
      assert(c:send(post_head("/read/small", "Transfer-Encoding: chunked") .. chunked(body, 300)))
      res = assert(c:response({ timeout = 5 }))
      assert.equal(413, res.status)
      assert.equal("read_body: body too large\n", res.body)
      -- the connection goes on: the rest of that body was read and dropped
      assert(c:send("GET /direct HTTP/1.1\r\nHost: x\r\n\r\n"))
      assert.equal("direct\n", assert(c:response({ timeout = 5 })).body)
      c:close()
      -- the same in a respond function, and within the bound all is well
      res = assert(proxy:request({ method = "POST", path = "/read/respond", body = ("x"):rep(70000) }))
      assert.equal(413, res.status)
      assert.equal("respond: body too large\n", res.body)
      res = assert(proxy:request({ method = "POST", path = "/read/small", body = ("y"):rep(1024) }))
      assert.equal(200, res.status)
      assert(helpers.wait_until(function()
        return errlog():find("req:read_body: body too large", 1, true)
      end, 2, 0.05), "no log line")
    end)

    it("answers 413 beyond limits.body_size when the hook does not answer", function()
      local body = ("z"):rep(6 * 1024 * 1024 + 100)
      local seen = #origin:requests()
      local c = proxy:connect()
      assert(c:send(post_head("/read/ignore-error", "Transfer-Encoding: chunked") .. chunked(body, 65536)))
      local res = assert(c:response({ timeout = 10 }))
      c:close()
      helpers.assert_error(res, 413)
      assert.equal("body too large", assert(proxy:request({ path = "/last-err" })).body)
      assert.equal(seen, #origin:requests())
    end)

    it("fails with 'bad request body' on bad chunk framing, and the connection ends after the answer", function()
      local c = proxy:connect()
      assert(c:send(post_head("/read/echo-back", "Transfer-Encoding: chunked") .. "5\r\nhello\r\nzz\r\n"))
      local res = assert(c:response({ timeout = 5 }))
      assert.equal(413, res.status)
      assert.equal("read_body: bad request body\n", res.body)
      assert(c:closed(3), "the connection stayed open")
      c:close()
    end)

    it("fails with 'timeout' when the client sends nothing for timeouts.client_body", function()
      local c = proxy:connect()
      local t0 = helpers.now()
      assert(c:send(post_head("/read/echo-back", "Content-Length: 100") .. ("t"):rep(10)))
      local res = assert(c:response({ timeout = 5 }))
      c:close()
      assert(helpers.now() - t0 >= 0.9, "answered after " .. (helpers.now() - t0) .. " s")
      assert.equal(413, res.status)
      assert.equal("read_body: timeout\n", res.body)
    end)

    it("answers a pipelined request after a read_body request, in order", function()
      local body = pattern(50000)
      local c = proxy:connect()
      -- all in one write
      assert(c:send(post_head("/read/proxy", "Content-Length: " .. #body) .. body
        .. "GET /direct HTTP/1.1\r\nHost: x\r\n\r\n"))
      local first = helpers.echo(assert(c:response({ timeout = 5 })))
      assert.equal(helpers.sha256(body), first.body_sha256)
      assert.equal("direct\n", assert(c:response({ timeout = 5 })).body)
      -- the head first, the body and the next request later (the hook waited)
      assert(c:send(post_head("/read/echo-back", "Transfer-Encoding: chunked")))
      helpers.sleep(0.1)
      assert(c:send(chunked(body, 5000) .. "GET /direct HTTP/1.1\r\nHost: x\r\n\r\n"
        .. "POST /read/echo-back HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"))
      local second = assert(c:response({ timeout = 5 }))
      assert(second.body == body, "the body read differs from the one sent")
      assert.equal("direct\n", assert(c:response({ timeout = 5 })).body)
      assert.equal("abc", assert(c:response({ timeout = 5 })).body)
      c:close()
    end)
  end)

  describe("req:set_body", function()
    it("replaces an unread chunked body: Content-Length set, no Transfer-Encoding, the client's body dropped", function()
      local c = proxy:connect()
      assert(c:send(post_head("/set/x", "Transfer-Encoding: chunked") .. chunked(pattern(30000), 1000)))
      local doc = helpers.echo(assert(c:response({ timeout = 5 })))
      assert.equal(15, doc.body_len)
      assert.equal(helpers.sha256("replaced:unread"), doc.body_sha256)
      assert.is_false(doc.chunked)
      assert.same({ "15" }, helpers.echo_headers(doc, "content-length"))
      assert.same({}, helpers.echo_headers(doc, "transfer-encoding"))
      -- the connection goes on after the dropped body
      assert(c:send("GET /direct HTTP/1.1\r\nHost: x\r\n\r\n"))
      assert.equal("direct\n", assert(c:response({ timeout = 5 })).body)
      c:close()
    end)

    it("replaces a body it read, and gives a bodyless GET one", function()
      local doc = helpers.echo(assert(proxy:request({ method = "POST", path = "/set/x",
        headers = { ["x-read-first"] = "1" }, body = "abc" })))
      assert.equal(helpers.sha256("replaced:abc"), doc.body_sha256)
      assert.same({ "12" }, helpers.echo_headers(doc, "content-length"))
      doc = helpers.echo(assert(proxy:request({ path = "/set/x" })))
      assert.equal("GET", doc.method)
      assert.equal(helpers.sha256("replaced:unread"), doc.body_sha256)
      assert.same({ "15" }, helpers.echo_headers(doc, "content-length"))
    end)
  end)

  describe("req:set_method", function()
    it("makes a GET a POST (Content-Length: 0 without a body, or the body set)", function()
      local doc = helpers.echo(assert(proxy:request({ path = "/method/", headers = { ["x-method"] = "POST" } })))
      assert.equal("POST", doc.method)
      assert.same({ "0" }, helpers.echo_headers(doc, "content-length"))
      doc = helpers.echo(assert(proxy:request({ path = "/method/",
        headers = { ["x-method"] = "PUT", ["x-body"] = "k=v" } })))
      assert.equal("PUT", doc.method)
      assert.equal(helpers.sha256("k=v"), doc.body_sha256)
      assert.same({ "3" }, helpers.echo_headers(doc, "content-length"))
    end)

    it("refuses a method HTTP does not know, and CONNECT (500, logged)", function()
      for _, m in ipairs({ "FROB", "get", "CONNECT" }) do
        local res = assert(proxy:request({ path = "/method/", headers = { ["x-method"] = m } }))
        assert.equal(500, res.status)
      end
      assert(helpers.wait_until(function()
        return errlog():find("req:set_method: unknown method 'FROB'", 1, true)
      end, 2, 0.05), "no log line")
    end)
  end)

  describe("the request_body filter", function()
    local body = pattern(5 * 1024 * 1024)
    local upper

    lazy_setup(function() upper = helpers.sha256(body:upper()) end)

    it("changes a 5 MB chunked body as it streams: the origin gets all of it, chunked", function()
      local c = proxy:connect()
      assert(c:send(post_head("/upper/", "Transfer-Encoding: chunked") .. chunked(body, 65536)))
      local doc = helpers.echo(assert(c:response({ timeout = 20 })))
      c:close()
      assert.equal(#body, doc.body_len)
      assert.equal(upper, doc.body_sha256)
      assert.is_true(doc.chunked)
    end)

    it("changes a 5 MB Content-Length body, re-framed chunked, with what it adds at the end", function()
      local doc = helpers.echo(assert(proxy:request({ method = "POST", path = "/upper/", body = body,
        headers = { ["x-tail"] = "<END>" } })))
      assert.equal(#body + 5, doc.body_len)
      assert.equal(helpers.sha256(body:upper() .. "<END>"), doc.body_sha256)
      assert.is_true(doc.chunked)
      assert.same({}, helpers.echo_headers(doc, "content-length"))
    end)

    it("runs over a body read whole, which then goes with its Content-Length", function()
      local doc = helpers.echo(assert(proxy:request({ method = "POST", path = "/upper/", body = body,
        headers = { ["x-read"] = "1", ["x-tail"] = "!" } })))
      assert.equal(#body + 1, doc.body_len)
      assert.equal(helpers.sha256(body:upper() .. "!"), doc.body_sha256)
      assert.is_false(doc.chunked)
      assert.same({ tostring(#body + 1) }, helpers.echo_headers(doc, "content-length"))
    end)
  end)

  it("answers 500 when a request_body hook raises, and logs it", function()
    local seen = #origin:requests()
    local res = assert(proxy:request({ method = "POST", path = "/filter-fails/echo", body = "abc" }))
    assert.equal(500, res.status)
    assert(helpers.wait_until(function()
      return errlog():find("request_body hook failed: .*filter broke")
    end, 2, 0.05), "no log line")
    assert(#origin:requests() <= seen + 1)
  end)

  describe("a client that leaves while read_body waits", function()
    local function leave_mid_read(n, linger)
      proxy:leave_mid_request(n, post_head("/cancel", "Content-Length: 1000") .. ("p"):rep(100), linger)
    end

    it("cancels the hook (nothing after read_body runs) and the next connection is served", function()
      local before = tonumber(assert(proxy:request({ path = "/count" })).body)
      leave_mid_read(20, 0.02)
      helpers.sleep(0.2)
      assert.equal(before, tonumber(assert(proxy:request({ path = "/count" })).body))
      assert.equal("direct\n", assert(proxy:request({ path = "/direct" })).body)
      -- a whole body still reaches the same hook's end
      local res = assert(proxy:request({ method = "POST", path = "/cancel", body = ("p"):rep(1000) }))
      assert.equal(200, res.status)
      assert.equal(before + 1, tonumber(assert(proxy:request({ path = "/count" })).body))
      proxy:assert_alive()
    end)

    it("does not grow while 1,000 clients leave in the middle of a read", function()
      leave_mid_read(50)
      helpers.sleep(0.5)
      local rss0 = proxy:rss()
      leave_mid_read(1000)
      helpers.sleep(0.6)
      proxy:assert_rss_flat(rss0, 4096)
      assert.equal("direct\n", assert(proxy:request({ path = "/direct" })).body)
      proxy:assert_alive()
    end)
  end)
end)

describe("req:read_body across a reload", function()
  local proxy

  lazy_setup(function()
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false }
mg.listen { "127.0.0.1:${port}" }
mg.route { path = "/direct", respond = { status = 200, body = "old\n" } }
mg.route { path = "/", respond = function(req)
  assert(req:read_body())
  return 200, "old:" .. #req:body() .. ":" .. req:body():sub(-4) .. "\n"
end }
]])
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("finishes a hook waiting for the rest of the body on the old generation", function()
    local c = proxy:connect()
    assert(c:send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabcdef"))
    helpers.sleep(0.2)
    proxy:reload(proxy:new_config(), function() return proxy:says_new("/direct") end)
    assert(c:send("ghij"))
    local res = assert(c:response({ timeout = 5 }))
    c:close()
    assert.equal(200, res.status)
    assert.equal("old:10:ghij\n", res.body)
  end)
end)

