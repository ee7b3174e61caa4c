-- Strict parsing: every ambiguous or malformed request is answered 400 and the
-- connection closed; limits have their own statuses; none of them ever
-- reaches the origin (its request counter does not move).
local helpers = require "spec.helpers"

local H = "Host: x\r\n"

-- name, raw request, accepted statuses (default 400)
local MALFORMED = {
  { "Content-Length together with Transfer-Encoding",
    "POST /echo HTTP/1.1\r\n" .. H .. "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" },
  { "Transfer-Encoding together with Content-Length",
    "POST /echo HTTP/1.1\r\n" .. H .. "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" },
  { "two differing Content-Length headers",
    "POST /echo HTTP/1.1\r\n" .. H .. "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!" },
  { "a Content-Length list with differing values",
    "POST /echo HTTP/1.1\r\n" .. H .. "Content-Length: 5, 6\r\n\r\nhello!" },
  { "Content-Length: 12a",
    "POST /echo HTTP/1.1\r\n" .. H .. "Content-Length: 12a\r\n\r\nhello world!" },
  { "Content-Length: -1",
    "POST /echo HTTP/1.1\r\n" .. H .. "Content-Length: -1\r\n\r\nhello" },
  { "Content-Length: +5",
    "POST /echo HTTP/1.1\r\n" .. H .. "Content-Length: +5\r\n\r\nhello" },
  { "Transfer-Encoding: chunked, gzip (chunked not last)",
    "POST /echo HTTP/1.1\r\n" .. H .. "Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n" },
  { "Transfer-Encoding: gzip, chunked (a coding moongate cannot undo)",
    "POST /echo HTTP/1.1\r\n" .. H .. "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", { 400, 501 } },
  { "Transfer-Encoding: chunked twice in separate headers, the last not chunked",
    "POST /echo HTTP/1.1\r\n" .. H .. "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    { 400, 501 } },
  { "a bad chunk size",
    "POST /echo HTTP/1.1\r\n" .. H .. "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n" },
  { "whitespace before the colon",
    "GET /echo HTTP/1.1\r\n" .. H .. "X-Foo : bar\r\n\r\n" },
  { "whitespace before the colon of Transfer-Encoding",
    "POST /echo HTTP/1.1\r\n" .. H .. "Transfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc" },
  { "obs-fold",
    "GET /echo HTTP/1.1\r\n" .. H .. "X-Foo: a\r\n b\r\n\r\n" },
  { "a NUL inside a header value",
    "GET /echo HTTP/1.1\r\n" .. H .. "X-Foo: a\0b\r\n\r\n" },
  { "a bare CR inside a header value",
    "GET /echo HTTP/1.1\r\n" .. H .. "X-Foo: a\rb\r\n\r\n" },
  { "an invalid method G@T",
    "G@T /echo HTTP/1.1\r\n" .. H .. "\r\n" },
  { "a request target without a leading slash",
    "GET foo HTTP/1.1\r\n" .. H .. "\r\n" },
  { "a space inside the request target",
    "GET /a b HTTP/1.1\r\n" .. H .. "\r\n" },
  -- wire framing a lenient parser takes (llhttp is built strict, and moongate
  -- checks the line endings of every head itself)
  { "two bytes other than CRLF after chunk data",
    "POST /echo HTTP/1.1\r\n" .. H .. "Transfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n" },
  { "chunk data followed by a bare LF",
    "POST /echo HTTP/1.1\r\n" .. H .. "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n" },
  { "a CR followed by another byte than LF inside the head",
    "GET /echo HTTP/1.1\r\n" .. H .. "X-A: 1\rX-B: 2\r\n\r\n" },
  { "a CR followed by another byte than LF at the end of the head",
    "GET /echo HTTP/1.1\r\n" .. H .. "\rX" },
  { "a bare LF ending the request line",
    "GET /echo HTTP/1.1\n" .. H .. "\r\n" },
  { "a bare LF ending a header line",
    "GET /echo HTTP/1.1\r\nX-A: 1\n" .. H .. "\r\n" },
  { "a bare LF ending the head",
    "GET /echo HTTP/1.1\r\n" .. H .. "\n" },
  { "whitespace before the first header line",
    "GET /echo HTTP/1.1\r\n " .. H .. "\r\n" },
  { "chunk extensions longer than 4096 bytes",
    "POST /echo HTTP/1.1\r\n" .. H .. "Transfer-Encoding: chunked\r\n\r\n3;x=" .. ("a"):rep(5000)
    .. "\r\nabc\r\n0\r\n\r\n" },
  { "CONNECT (a method moongate does not proxy)",
    "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", { 501 } },
}

describe("malformed requests", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false,
  limits = { head_size = 4096, headers = 20, uri_size = 1024, body_size = 1024 } }
mg.listen { "127.0.0.1:${port}" }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } } }
]], { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  -- Send raw bytes on a new connection; returns the response (nil if the
  -- connection closed without one) and the client.
  local function send_raw(bytes)
    local c = proxy:connect()
    c:send(bytes) -- may fail half way if moongate already closed: that is fine
    local res, err = c:response({ timeout = 3 })
    return res, c, err
  end

  -- Let anything the proxy might still forward arrive before counting.
  local function origin_requests()
    helpers.sleep(0.1)
    return origin:stats().requests
  end

  for _, case in ipairs(MALFORMED) do
    local name, bytes, statuses = case[1], case[2], case[3] or { 400 }
    local label = table.concat(statuses, " or ")
    local closes = statuses[1] == 400
    it("answers " .. label .. (closes and " and closes" or "") .. " for " .. name
       .. ", never reaching the origin", function()
      local before = origin_requests()
      local res, c, err = send_raw(bytes)
      assert(res, "no response: " .. tostring(err))
      assert(statuses[1] == res.status or statuses[2] == res.status,
        "status " .. res.status .. ", expected " .. label)
      helpers.assert_error(res, res.status)
      if closes then assert.is_true((c:closed(2)), "connection left open") end
      assert.equal(before, origin_requests())
    end)
  end

  it("refuses an endless chunk extension sent a little at a time (400, close)", function()
    local c = proxy:connect()
    c:send("POST /echo HTTP/1.1\r\n" .. H .. "Transfer-Encoding: chunked\r\n\r\n3;x=")
    local sent = 0
    while sent < 8192 do
      if not c:send(("e"):rep(512)) then break end
      sent = sent + 512
    end
    local res = assert(c:response({ timeout = 3 }))
    helpers.assert_error(res, 400)
    assert.is_true((c:closed(2)), "connection left open")
  end)

  it("takes empty lines before a request line, as RFC 9112 2.2 allows", function()
    local res = assert(send_raw("\r\n\r\nGET /echo HTTP/1.1\r\n" .. H .. "\r\n"))
    assert.equal(200, res.status)
  end)

  it("answers 431 for a head larger than limits.head_size, never reaching the origin", function()
    local before = origin_requests()
    local res = assert(send_raw("GET /echo HTTP/1.1\r\n" .. H .. "X-Big: " .. ("a"):rep(5000) .. "\r\n\r\n"))
    helpers.assert_error(res, 431)
    assert.equal(before, origin_requests())
  end)

  it("answers 431 for more headers than limits.headers, never reaching the origin", function()
    local before = origin_requests()
    local t = { "GET /echo HTTP/1.1\r\n", H }
    for i = 1, 25 do t[#t + 1] = "X-H" .. i .. ": v\r\n" end
    t[#t + 1] = "\r\n"
    helpers.assert_error(assert(send_raw(table.concat(t))), 431)
    assert.equal(before, origin_requests())
  end)

  it("accepts exactly limits.headers headers", function()
    local t = { "GET /echo HTTP/1.1\r\n", H }
    for i = 1, 19 do t[#t + 1] = "X-H" .. i .. ": v\r\n" end
    t[#t + 1] = "\r\n"
    local res = assert(send_raw(table.concat(t)))
    local doc = helpers.echo(res)
    assert.same({ "v" }, helpers.echo_headers(doc, "x-h19"))
  end)

  it("answers 414 for a URI longer than limits.uri_size, never reaching the origin", function()
    local before = origin_requests()
    local res = assert(send_raw("GET /echo?" .. ("a"):rep(2000) .. " HTTP/1.1\r\n" .. H .. "\r\n"))
    helpers.assert_error(res, 414)
    assert.equal(before, origin_requests())
  end)

  it("accepts a URI shorter than limits.uri_size", function()
    local path = "/echo?" .. ("a"):rep(900)
    assert.equal(path, helpers.echo(assert(send_raw("GET " .. path .. " HTTP/1.1\r\n" .. H .. "\r\n"))).path)
  end)

  it("answers 413 for a Content-Length above limits.body_size, never reaching the origin", function()
    local before = origin_requests()
    local res = assert(send_raw("POST /echo HTTP/1.1\r\n" .. H .. "Content-Length: 2048\r\n\r\n"
      .. ("b"):rep(2048)))
    helpers.assert_error(res, 413)
    assert.equal(before, origin_requests())
  end)

  it("accepts a body of exactly limits.body_size", function()
    local res = assert(send_raw("POST /echo HTTP/1.1\r\n" .. H .. "Content-Length: 1024\r\n\r\n"
      .. ("b"):rep(1024)))
    assert.equal(1024, helpers.echo(res).body_len)
  end)

  it("stops a chunked body growing past limits.body_size with 413 or a close", function()
    local c = proxy:connect()
    local chunk = ("c"):rep(512)
    c:send("POST /echo HTTP/1.1\r\n" .. H .. "Transfer-Encoding: chunked\r\n\r\n")
    for _ = 1, 4 do
      if not c:send("200\r\n" .. chunk .. "\r\n") then break end
    end
    c:send("0\r\n\r\n")
    local data, why = c:read_until_close(3)
    assert.equal("closed", why)
    if data ~= "" then
      assert.equal("HTTP/1.1 413 ", data:sub(1, 13))
    end
  end)
end)
