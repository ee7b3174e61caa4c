-- mg.http.request (docs/hooks.md "mg.http"): HTTP/1.1 calls from hooks over the
-- upstream client and its keep-alive pools, against the real binary on loopback.
-- Stub services: moongate.testing's t.origin (what it received is asserted with
-- origin:last()) and spec/support/origin.py where TLS, resets or multi-MB bodies
-- are needed.
local helpers = require "spec.helpers"
local t = require "moongate.testing"

-- The hooks below answer with a Lua table literal of what mg.http.request gave.
local DUMP = [[
local function dump(v)
  if type(v) == "table" then
    local p = {}
    for k, x in pairs(v) do p[#p + 1] = "[" .. dump(k) .. "]=" .. dump(x) end
    return "{" .. table.concat(p, ",") .. "}"
  end
  if type(v) == "string" then return string.format("%q", v) end
  return tostring(v)
end
local function outcome(res, err, extra)
  local o = { err = err }
  if res then o.status, o.headers, o.body = res.status, res.headers, res.body end
  for k, v in pairs(extra or {}) do o[k] = v end
  return dump(o)
end
]]

local function result(res)
  assert(res, "no answer from moongate")
  assert.equal(200, res.status, res.body)
  return assert(loadstring("return " .. res.body))()
end

describe("mg.http.request", function()
  local origin, py, tlso, proxy, cert, refused_port

  lazy_setup(function()
    origin = assert(t.origin({
      ["/hello"] = { status = 200, body = "hello\n",
                     headers = { ["X-Origin"] = "stub", ["X-Multi"] = { "a", "b" }, ["Content-Type"] = "text/plain" } },
      ["/echo"] = function(req) return 201, req.method .. " " .. req.body, { ["X-Seen-Test"] = req:header("x-test") or "" } end,
      ["/slow"] = { status = 200, body = "slow\n", delay = 1 },
      ["/late"] = { status = 200, body = "late\n", delay = 3 },
      ["/big"] = { status = 200, body = ("x"):rep(5000) },
      ["/chunked-big"] = { status = 200, body = ("y"):rep(5000), headers = { ["Transfer-Encoding"] = "chunked" } },
      ["/redir"] = { status = 302, headers = { Location = "/hello" } },
      ["/see-other"] = { status = 303, headers = { Location = "/echo" } },
      ["/nobody"] = { status = 204 },
    }))
    local dir = helpers.tmpdir()
    local key
    cert, key = helpers.self_signed(dir, "localhost")
    py = helpers.origin({ name = "py" })
    tlso = helpers.origin({ name = "tls", tls = { cert = cert, key = key } })
    refused_port = helpers.free_port()
    proxy = helpers.proxy(DUMP .. [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, error_log = "error.log", shared = { d = "64k" } }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }

-- the options come from the request's headers
local function opts(req)
  local o = { url = req:header("x-url"), method = req:header("x-method"), body = req:header("x-body"),
              timeout = tonumber(req:header("x-timeout")), max_body = tonumber(req:header("x-max")),
              follow = tonumber(req:header("x-follow")) }
  if req:header("x-send") then o.headers = { ["X-Test"] = req:header("x-send") } end
  if req:header("x-bad-header") then o.headers = { ["X-Bad"] = "a\r\nInjected: 1" } end
  if req:header("x-ca") then o.tls = { ca = req:header("x-ca") } end
  if req:header("x-noverify") then o.tls = { verify = false } end
  return o
end

mg.route { path = "/call", respond = function(req)
  return 200, outcome(mg.http.request(opts(req)))
end }
mg.route { path = "/twice", respond = function(req)
  local a, e1 = mg.http.request(opts(req))
  local b, e2 = mg.http.request(opts(req))
  return 200, outcome(b, e1 or e2, { first = a and a.body })
end }
mg.route { path = "/stream", respond = function(req)
  local o = opts(req)
  o.stream = true
  local res, err = mg.http.request(o)
  if not res then return 200, outcome(nil, err) end
  local parts, n = {}, 0
  while true do
    local piece, rerr = res:read(65536)
    if not piece then err = rerr break end
    n = n + 1
    parts[#parts + 1] = piece
    if #piece > 65536 then err = "piece too big" break end
  end
  return 200, outcome({ status = res.status, headers = res.headers, body = table.concat(parts) }, err,
    { pieces = n })
end }
mg.route { path = "/stream-left-open", respond = function(req)
  local res = assert(mg.http.request { url = req:header("x-url"), stream = true })
  return 200, assert(res:read(1000)) -- the rest is never read, the call never closed
end }
mg.route { path = "/cancel", respond = function(req)
  mg.http.request { url = req:header("x-url"), timeout = 5 }
  mg.shared("d"):incr("after_call", 1, 0)
  return 200, "done\n"
end }
mg.route { path = "/count", respond = function(req)
  return 200, tostring(mg.shared("d"):get("after_call") or 0)
end }
mg.route { path = "/direct", respond = { status = 200, body = "direct\n" } }
mg.route { path = "/px/", upstream = o, on = { request = function(req) req:set_path(req.path:sub(4)) end } }
mg.route { path = "/in-response/", upstream = o, on = {
  request = function(req) req:set_path("/hello") end,
  request_body = function(req, chunk, eof) mg.http.request { url = "http://${origin}/hello" } end } }
]], { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy, py, tlso)
    origin:stop()
  end)

  local function errlog() return helpers.read_file(proxy.dir .. "/error.log") or "" end

  local function call(headers, path)
    return result(proxy:request({ path = path or "/call", headers = headers }))
  end

  it("answers a GET with status, lower-case headers (repeats joined) and body; the origin saw it", function()
    local r = call({ ["x-url"] = origin:url("/hello?q=1"), ["x-send"] = "v1" })
    assert.is_nil(r.err)
    assert.equal(200, r.status)
    assert.equal("hello\n", r.body)
    assert.equal("stub", r.headers["x-origin"])
    assert.equal("a, b", r.headers["x-multi"])
    assert.equal("text/plain", r.headers["content-type"])
    local seen = origin:last()
    assert.equal("GET", seen.method)
    assert.equal("/hello?q=1", seen.target)
    assert.equal("v1", seen:header("x-test"))
    assert.equal(origin.addr, seen:header("host"))
  end)

  it("sends a POST body with its Content-Length and returns the answer", function()
    local r = call({ ["x-url"] = origin:url("/echo"), ["x-method"] = "POST", ["x-body"] = "payload 123",
                     ["x-send"] = "t" })
    assert.is_nil(r.err)
    assert.equal(201, r.status)
    assert.equal("POST payload 123", r.body)
    local seen = origin:last()
    assert.equal("POST", seen.method)
    assert.equal("payload 123", seen.body)
    assert.equal("11", seen:header("content-length"))
  end)

  it("gives a 204 and a HEAD answer without body, and skips interim 1xx answers", function()
    local r = call({ ["x-url"] = origin:url("/nobody") })
    assert.equal(204, r.status)
    assert.equal("", r.body)
    r = call({ ["x-url"] = origin:url("/big"), ["x-method"] = "HEAD" })
    assert.equal(200, r.status)
    assert.equal("", r.body)
    assert.equal("HEAD", origin:last().method)
    r = call({ ["x-url"] = "http://" .. py.addr .. "/status/103" })
    assert.equal(200, r.status)
    assert.equal("final after 103\n", r.body)
  end)

  it("reuses a keep-alive connection: two calls arrive on one connection", function()
    origin:reset()
    local r = call({ ["x-url"] = origin:url("/hello") }, "/twice")
    assert.is_nil(r.err)
    assert.equal("hello\n", r.first)
    assert.equal("hello\n", r.body)
    local seen = origin:requests()
    assert.equal(2, #seen)
    assert.equal(seen[1].conn, seen[2].conn)
  end)

  it("sends again, once, on a new connection when a pooled one turns out closed (GET only)", function()
    -- answers the first request of each connection, closes on the next one unanswered
    local seen = {}
    local flaky = assert(t.origin(function(req)
      seen[req.conn] = (seen[req.conn] or 0) + 1
      if seen[req.conn] > 1 then return { close = true } end
      return 200, "conn " .. req.conn
    end))
    local r = call({ ["x-url"] = flaky:url("/a") }, "/twice")
    assert.is_nil(r.err)
    assert.equal("conn 1", r.first)
    assert.equal("conn 2", r.body)
    -- a POST on the pooled connection 2 is not sent again: it fails; the next one
    -- gets a new connection
    r = call({ ["x-url"] = flaky:url("/b"), ["x-method"] = "POST", ["x-body"] = "x" }, "/twice")
    assert.is_nil(r.first)
    assert.matches("closed before a response", r.err)
    assert.equal("conn 3", r.body)
    flaky:stop()
  end)

  it("shares the keep-alive pool of the proxy path to the same server", function()
    origin:reset()
    assert.equal(200, assert(proxy:request({ path = "/px/hello" })).status)
    local r = call({ ["x-url"] = origin:url("/hello") })
    assert.equal(200, r.status)
    local seen = origin:requests()
    assert.equal(2, #seen)
    assert.equal(seen[1].conn, seen[2].conn)
  end)

  it("resolves a host name (localhost) without blocking", function()
    local r = call({ ["x-url"] = "http://localhost:" .. origin.port .. "/hello" })
    assert.is_nil(r.err)
    assert.equal(200, r.status)
    assert.equal("localhost:" .. origin.port, origin:last():header("host"))
  end)

  it("returns nil, err when the connection is refused", function()
    local r = call({ ["x-url"] = "http://127.0.0.1:" .. refused_port .. "/" })
    assert.is_nil(r.status)
    assert.matches("connect failed: .*refused", r.err)
  end)

  it("returns nil, \"timeout\" when the answer takes longer than the timeout", function()
    local t0 = helpers.now()
    local r = call({ ["x-url"] = origin:url("/late"), ["x-timeout"] = "0.3" })
    assert.equal("timeout", r.err)
    local took = helpers.now() - t0
    assert(took >= 0.29 and took < 2, "answered after " .. took .. " s")
  end)

  it("returns nil, err when the server resets the connection", function()
    local r = call({ ["x-url"] = "http://" .. py.addr .. "/reset-rst" })
    assert.is_nil(r.status)
    assert.matches("closed", r.err)
  end)

  it("refuses a response larger than max_body (sized or chunked)", function()
    local r = call({ ["x-url"] = origin:url("/big"), ["x-max"] = "1000" })
    assert.equal("response too large", r.err)
    r = call({ ["x-url"] = origin:url("/chunked-big"), ["x-max"] = "1000" })
    assert.equal("response too large", r.err)
    r = call({ ["x-url"] = origin:url("/chunked-big"), ["x-max"] = "5000" })
    assert.equal(("y"):rep(5000), r.body)
  end)

  it("refuses CR/LF in a header value and a bad method with nil, err; nothing is sent", function()
    local n = origin:count()
    local r = call({ ["x-url"] = origin:url("/hello"), ["x-bad-header"] = "1" })
    assert.matches("CR, LF or NUL", r.err)
    r = call({ ["x-url"] = origin:url("/hello"), ["x-method"] = "GE T" })
    assert.matches("bad method", r.err)
    r = call({ ["x-url"] = "ftp://x/" })
    assert.matches("http://", r.err, 1, true)
    assert.equal(n, origin:count())
  end)

  it("verifies https against the CA given (tls.ca) and names verification when it fails", function()
    local url = "https://localhost:" .. tlso.port .. "/x"
    local r = call({ ["x-url"] = url, ["x-ca"] = cert })
    assert.is_nil(r.err)
    assert.equal(200, r.status)
    local doc = helpers.decode_json(r.body)
    assert.equal("localhost", doc.tls.sni)
    r = call({ ["x-url"] = url }) -- the system bundle does not trust it
    assert.is_nil(r.status)
    assert.matches("certificate verification failed", r.err)
    r = call({ ["x-url"] = url, ["x-noverify"] = "1" })
    assert.equal(200, r.status)
  end)

  it("streams a multi-MB body with res:read", function()
    local n = 5 * 1024 * 1024
    local r = call({ ["x-url"] = "http://" .. py.addr .. "/bytes/" .. n }, "/stream")
    assert.is_nil(r.err)
    assert.equal(200, r.status)
    assert.equal(n, #r.body)
    assert.equal(helpers.sha256(helpers.pattern(n)), helpers.sha256(r.body))
    assert(r.pieces >= n / 65536, "pieces: " .. r.pieces)
    -- chunked too
    r = call({ ["x-url"] = "http://" .. py.addr .. "/chunked/" .. n }, "/stream")
    assert.equal(n, #r.body)
    assert.equal(helpers.sha256(helpers.pattern(n)), helpers.sha256(r.body))
  end)

  it("frees a streamed call left open when its request ends: its connection is closed", function()
    local n = 8 * 1024 * 1024
    local fresh = helpers.origin({ name = "fresh" }) -- no connection of other tests in its pool
    for _ = 1, 5 do
      local res = assert(proxy:request({ path = "/stream-left-open",
                                         headers = { ["x-url"] = "http://" .. fresh.addr .. "/bytes/" .. n } }))
      assert.equal(200, res.status)
      assert.equal(helpers.pattern(1000), res.body)
    end
    assert.equal(5, fresh:stats().connections) -- none was pooled mid-body
    local closed = helpers.wait_until(function() return fresh:stats().open == 0 end, 3, 0.05)
    local open = fresh:stats().open
    fresh:stop()
    assert(closed, "connections still open: " .. open)
  end)

  it("follows redirects only when asked (follow), and turns a 303 into a GET without body", function()
    local r = call({ ["x-url"] = origin:url("/redir") })
    assert.equal(302, r.status)
    assert.equal("/hello", r.headers.location)
    r = call({ ["x-url"] = origin:url("/redir"), ["x-follow"] = "1" })
    assert.equal(200, r.status)
    assert.equal("hello\n", r.body)
    r = call({ ["x-url"] = origin:url("/see-other"), ["x-follow"] = "2", ["x-method"] = "POST", ["x-body"] = "b" })
    assert.equal(201, r.status)
    assert.equal("GET ", r.body)
    assert.equal("GET", origin:last().method)
  end)

  it("serves other requests on the same worker while a call waits 1 s", function()
    local a = proxy:connect()
    local t0 = helpers.now()
    assert(a:send("GET /call HTTP/1.1\r\nHost: x\r\nX-Url: " .. origin:url("/slow") .. "\r\n\r\n"))
    helpers.sleep(0.05)
    for i = 1, 5 do
      local t1 = helpers.now()
      local res = assert(proxy:request({ path = "/direct" }))
      assert.equal("direct\n", res.body)
      assert(helpers.now() - t1 < 0.4, "request " .. i .. " waited behind the call")
    end
    assert(helpers.now() - t0 < 0.8, "the others were not served while the call waited")
    local r = result(assert(a:response({ timeout = 5 })))
    a:close()
    assert.equal("slow\n", r.body)
    assert(helpers.now() - t0 >= 0.95)
  end)

  it("fails a hook that may not wait (request_body) with 500 and says why", function()
    local res = assert(proxy:request({ method = "POST", path = "/in-response/x", body = "abc" }))
    assert.equal(500, res.status)
    assert(helpers.wait_until(function()
      return errlog():find("only a hook that may wait", 1, true)
    end, 2, 0.05), "no log line")
  end)

  -- n clients send a request whose hook calls a slow service and leave `linger` s later
  local function leave_mid_call(n, linger)
    local url = "http://" .. py.addr .. "/slow-head/2"
    proxy:leave_mid_request(n, "GET /cancel HTTP/1.1\r\nHost: x\r\nX-Url: " .. url .. "\r\n\r\n", linger)
  end

  it("abandons the call of a client that leaves: nothing after the call runs", function()
    local before = tonumber(assert(proxy:request({ path = "/count" })).body)
    py:reset_stats()
    leave_mid_call(20, 0.03)
    helpers.sleep(2.3) -- past every call's answer
    assert.equal(before, tonumber(assert(proxy:request({ path = "/count" })).body))
    assert(py:stats().connections >= 15, "the calls did not reach the service")
    proxy:assert_alive()
  end)

  it("does not grow while 1,000 clients leave in the middle of a call", function()
    leave_mid_call(50, 0.002)
    helpers.sleep(0.5)
    local rss0 = proxy:rss()
    leave_mid_call(1000, 0.002)
    helpers.sleep(0.6)
    proxy:assert_rss_flat(rss0, 4096)
    assert.equal(200, assert(proxy:request({ path = "/direct" })).status)
  end)
end)

describe("mg.http.request across a reload", function()
  local origin, proxy

  lazy_setup(function()
    origin = assert(t.origin({ ["/slow"] = { status = 200, body = "from origin\n", delay = 0.8 } }))
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false }
mg.listen { "127.0.0.1:${port}" }
mg.route { path = "/", respond = function(req)
  local res, err = mg.http.request { url = "http://${origin}/slow" }
  return 200, "gen old: " .. (res and res.body or err)
end }
]], { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
    origin:stop()
  end)

  it("finishes a call in flight on the old generation while new requests get the new one", function()
    local c = proxy:connect()
    assert(c:send("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
    helpers.sleep(0.2)
    proxy:reload(function(old) return (old:gsub('"gen old: "', '"gen new: "')) end, function()
      local res = proxy:request({ path = "/" })
      return res and res.body:find("gen new: from origin", 1, true)
    end)
    local res = assert(c:response({ timeout = 5 }))
    c:close()
    assert.equal(200, res.status)
    assert.equal("gen old: from origin\n", res.body)
  end)
end)
