-- Compression (docs/compression.md): responses encoded as the client's
-- Accept-Encoding and the route's `compress` settings say, decoded here with the
-- gzip, brotli and zstd command-line tools and compared byte for byte with what
-- the origin sent; every skip rule; Vary and ETag; HEAD; HTTP/1.0; the body hook
-- before the encoder; res:compress(false); reload.
local helpers = require "spec.helpers"
local socket = require "socket"

-- The response hook gives the response the headers the client asked for with
-- X-Res-<Name>: <value> (the origin's /bytes and /chunked answers carry
-- application/octet-stream and nothing else).
local TEMPLATE = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false${config} }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
local function res_headers(req, res)
  for name, value in pairs(req:headers()) do
    local n = name:lower():match("^x%-res%-(.+)$")
    if n then res:set_header(n, type(value) == "table" and value[1] or value) end
  end
  if req:header("x-no-compress") then res:compress(false) end
  if req:header("x-status") then res:set_status(tonumber(req:header("x-status"))) end
end
mg.route { host = "off.test", upstream = o, compress = false, on = { response = res_headers } }
mg.route { host = "gzip-only.test", upstream = o, compress = { prefer = { "gzip" }, level = { gzip = 9 } },
           on = { response = res_headers } }
mg.route { host = "hooked.test", upstream = o, on = { response = res_headers, body = function(req, res, chunk)
  return (chunk:gsub("0", "Z"))
end } }
mg.route { path = "/", upstream = o, on = { response = res_headers } }
]]

local TEXT = "text/plain; charset=utf-8"

local decode = helpers.decode

describe("compression", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    proxy = helpers.proxy(TEMPLATE, { vars = { origin = origin.addr,
      config = ", compress = { min_length = 256 }" } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  -- GET path; a path "/<name>.test/..." goes with Host: <name>.test (the routes of
  -- the template), the rest of it as the target
  local function get(path, headers, opts)
    opts = opts or {}
    local c = proxy:connect()
    local hs = {}
    local host, rest = path:match("^/([%w%-]+%.test)(/.*)$")
    if host then
      path = rest
      hs[1] = { "Host", host }
    elseif opts.version ~= "HTTP/1.0" then
      hs[1] = { "Host", "test.local" }
    end
    for _, kv in ipairs(headers or {}) do hs[#hs + 1] = kv end
    local res = assert(c:request({ method = opts.method, path = path, headers = hs, version = opts.version }))
    c:close()
    return res
  end

  -- the complete chunks' data of a chunked body so far
  local function dechunk(raw)
    local out, pos = {}, 1
    while true do
      local line_end = raw:find("\r\n", pos, true)
      if not line_end then break end
      local size = tonumber(raw:sub(pos, line_end - 1):match("^%x+"), 16)
      if not size or size == 0 or #raw < line_end + 1 + size + 2 then break end
      out[#out + 1] = raw:sub(line_end + 2, line_end + 1 + size)
      pos = line_end + 2 + size + 2
    end
    return table.concat(out)
  end

  -- what a reference decoder gives of a stream that is not over yet: gzip's and
  -- zstd's tools write what they decoded before the cut; brotli's writes nothing
  -- then, so libbrotlidec's streaming call is used directly (through the FFI)
  local PARTIAL = { gzip = "gzip -dc", zstd = "zstd -dcq" }
  local function br_partial(data)
    local ffi = require "ffi"
    pcall(ffi.cdef, [[
      void *BrotliDecoderCreateInstance(void *, void *, void *);
      void BrotliDecoderDestroyInstance(void *);
      int BrotliDecoderDecompressStream(void *, size_t *, const uint8_t **, size_t *, uint8_t **, size_t *);
    ]])
    local lib = ffi.load("brotlidec")
    local st = lib.BrotliDecoderCreateInstance(nil, nil, nil)
    local out = ffi.new("uint8_t[?]", 65536)
    local avail_in = ffi.new("size_t[1]", #data)
    local next_in = ffi.new("const uint8_t *[1]", ffi.cast("const uint8_t *", data))
    local avail_out = ffi.new("size_t[1]", 65536)
    local next_out = ffi.new("uint8_t *[1]", out)
    lib.BrotliDecoderDecompressStream(st, avail_in, next_in, avail_out, next_out, nil)
    lib.BrotliDecoderDestroyInstance(st)
    return ffi.string(out, 65536 - tonumber(avail_out[0]))
  end
  local function decode_partial(coding, data)
    if coding == "br" then return br_partial(data) end
    local f = helpers.scratch() .. "/partial-" .. coding
    helpers.write_file(f, data)
    helpers.sh(PARTIAL[coding] .. " < " .. f .. " > " .. f .. ".out 2>/dev/null")
    return helpers.read_file(f .. ".out")
  end

  for _, coding in ipairs { "gzip", "br", "zstd" } do
    it(coding .. ": a streamed body flows: each piece the upstream sent reaches the client before the next comes", function()
      local c = proxy:connect()
      assert(c:send(helpers.request_bytes({ path = "/drip/3/1.5", headers = {
        { "Host", "test.local" }, { "Accept-Encoding", coding }, { "Connection", "close" } } })))
      local head = assert(c:take_until("\r\n\r\n", socket.gettime() + 5))
      assert.matches("content%-encoding: " .. coding, head:lower())
      local function line(i)
        return ('{"event": %d, "text": "the same words again and again and again"}\n'):format(i)
      end
      -- the origin sends the second line 1.5 s after the first: by 1 s the
      -- first one is readable at the client
      local deadline = socket.gettime() + 1.0
      while c:fill(deadline) do end
      assert.equal(line(0), decode_partial(coding, dechunk(c.buf)))
      local raw, why = c:read_until_close(10)
      assert.equal("closed", why)
      assert.equal(line(0) .. line(1) .. line(2), decode(coding, dechunk(raw)))
      c:close()
    end)
  end

  for _, coding in ipairs { "gzip", "br", "zstd" } do
    for _, kind in ipairs { "bytes", "chunked" } do
      for _, n in ipairs { 1, 300, 4096, 65537, 1024 * 1024 } do
        it(("%s: a %d-byte %s body round-trips"):format(coding, n, kind), function()
          local res = get("/" .. kind .. "/" .. n, { { "Accept-Encoding", coding },
                                                      { "X-Res-Content-Type", TEXT } })
          assert.equal(200, res.status)
          if n < 256 and kind == "bytes" then -- under min_length with a known length
            assert.is_nil(res.h["content-encoding"])
            assert.equal(tostring(n), res.h["content-length"])
            assert.equal(helpers.pattern(n), res.body)
          else
            assert.equal(coding, res.h["content-encoding"])
            assert.is_nil(res.h["content-length"])
            assert.equal("chunked", res.h["transfer-encoding"])
            assert.equal("Accept-Encoding", res.h["vary"])
            if n >= 4096 then assert.is_true(#res.body < n / 2) end
            assert.is_true(decode(coding, res.body) == helpers.pattern(n))
          end
        end)
      end
    end
  end

  it("the server's preference breaks a tie; q-values win over it", function()
    local function enc(ae)
      return get("/bytes/5000", { { "Accept-Encoding", ae }, { "X-Res-Content-Type", TEXT } }).h["content-encoding"]
    end
    assert.equal("br", enc("gzip, deflate, br, zstd"))
    assert.equal("zstd", enc("gzip, zstd"))
    assert.equal("gzip", enc("br;q=0.5, gzip;q=0.9"))
    assert.equal("gzip", enc("br;q=0, zstd;q=0, gzip"))
    assert.equal("br", enc("*"))
    assert.is_nil(enc("br;q=0, zstd;q=0, gzip;q=0"))
    assert.is_nil(enc("deflate, compress"))
    assert.is_nil(enc("gzip;q=0.5, identity"))
    assert.equal("gzip", enc("br;q=2, gzip")) -- a malformed element is skipped
  end)

  it("no Accept-Encoding: identity, with its Content-Length (and Vary: another client would get it encoded)", function()
    local res = get("/bytes/5000", { { "X-Res-Content-Type", TEXT }, { "Accept-Encoding", "gzip" } })
    assert.equal("gzip", res.h["content-encoding"]) -- the control
    res = get("/bytes/5000", { { "X-Res-Content-Type", TEXT } })
    assert.is_nil(res.h["content-encoding"])
    assert.equal("5000", res.h["content-length"])
    assert.equal("Accept-Encoding", res.h["vary"])
    res = get("/bytes/5000", { { "Accept-Encoding", "deflate" }, { "X-Res-Content-Type", TEXT }, { "X-Res-Vary", "Origin" } })
    assert.is_nil(res.h["content-encoding"])
    assert.equal("Origin, Accept-Encoding", res.h["vary"])
    -- not a response that would be encoded at all: no Vary
    res = get("/bytes/5000", { { "Accept-Encoding", "gzip" } })
    assert.is_nil(res.h["content-encoding"])
    assert.is_nil(res.h["vary"])
    res = get("/bytes/100", { { "Accept-Encoding", "gzip" }, { "X-Res-Content-Type", TEXT } })
    assert.is_nil(res.h["content-encoding"])
    assert.is_nil(res.h["vary"])
  end)

  it("identity;q=0: compressed even under min_length and of an unlisted type", function()
    local res = get("/bytes/10", { { "Accept-Encoding", "gzip, identity;q=0" } })
    assert.equal("gzip", res.h["content-encoding"])
    assert.equal(helpers.pattern(10), decode("gzip", res.body))
    -- no coding acceptable either: sent as it is (RFC 9110 12.1: no 406 from a proxy)
    res = get("/bytes/1000", { { "Accept-Encoding", "identity;q=0, deflate" }, { "X-Res-Content-Type", TEXT } })
    assert.is_nil(res.h["content-encoding"])
    assert.equal(helpers.pattern(1000), res.body)
  end)

  it("route settings: compress = false, and prefer/level of its own", function()
    local res = get("/off.test/bytes/5000", { { "Accept-Encoding", "gzip, br" }, { "X-Res-Content-Type", TEXT } })
    assert.is_nil(res.h["content-encoding"])
    assert.equal("5000", res.h["content-length"])
    res = get("/gzip-only.test/bytes/5000", { { "Accept-Encoding", "br, zstd, gzip" }, { "X-Res-Content-Type", TEXT } })
    assert.equal("gzip", res.h["content-encoding"])
    assert.equal(helpers.pattern(5000), decode("gzip", res.body))
    res = get("/gzip-only.test/bytes/5000", { { "Accept-Encoding", "br, zstd" }, { "X-Res-Content-Type", TEXT } })
    assert.is_nil(res.h["content-encoding"])
  end)

  describe("skips", function()
    local AE = { "Accept-Encoding", "gzip, br, zstd" }
    -- path with AE and `extra` is not encoded, while the same client gets a plain
    -- text response encoded (the control: on code that encodes nothing this fails)
    local function skipped(path, extra, opts)
      assert.equal("br", get("/bytes/5000", { AE, { "X-Res-Content-Type", TEXT } }).h["content-encoding"])
      local hs = { AE }
      for _, kv in ipairs(extra) do hs[#hs + 1] = kv end
      local res = get(path, hs, opts)
      assert.is_nil(res.h["content-encoding"], path)
      return res
    end

    it("a type not listed (application/octet-stream)", function()
      local res = skipped("/bytes/5000", {})
      assert.equal("5000", res.h["content-length"])
      assert.equal(helpers.pattern(5000), res.body)
    end)

    it("text/event-stream, which text/* does not take", function()
      skipped("/chunked/5000", { { "X-Res-Content-Type", "text/event-stream" } })
      local res = get("/chunked/5000", { AE, { "X-Res-Content-Type", "Text/HTML ; charset=x" } })
      assert.equal("br", res.h["content-encoding"])
    end)

    it("a response with a Content-Encoding already", function()
      assert.equal("br", get("/bytes/5000", { AE, { "X-Res-Content-Type", TEXT } }).h["content-encoding"])
      local res = get("/bytes/5000", { AE, { "X-Res-Content-Type", TEXT }, { "X-Res-Content-Encoding", "br" } })
      assert.equal("br", res.h["content-encoding"]) -- the origin's, once, and its bytes untouched
      assert.equal("5000", res.h["content-length"])
      assert.equal(helpers.pattern(5000), res.body)
    end)

    it("Cache-Control: no-transform", function()
      local res = skipped("/bytes/5000", { { "X-Res-Content-Type", TEXT },
                                           { "X-Res-Cache-Control", "public, No-Transform, max-age=5" } })
      assert.equal(helpers.pattern(5000), res.body)
    end)

    it("206, 204 and 304", function()
      local part = skipped("/bytes/5000", { { "X-Res-Content-Type", TEXT }, { "X-Status", "206" },
                                            { "X-Res-Content-Range", "bytes 0-4999/9999" } })
      assert.equal(206, part.status)
      assert.equal(helpers.pattern(5000), part.body)
      local res = get("/status/204", { AE })
      assert.equal(204, res.status)
      assert.is_nil(res.h["content-encoding"])
      res = get("/status/304", { AE })
      assert.equal(304, res.status)
      assert.is_nil(res.h["content-encoding"])
    end)

    it("HEAD", function()
      local res = skipped("/bytes/5000", { { "X-Res-Content-Type", TEXT } }, { method = "HEAD" })
      assert.equal("5000", res.h["content-length"])
      assert.equal("", res.body)
    end)

    it("under min_length with a known length (not when chunked)", function()
      skipped("/bytes/255", { { "X-Res-Content-Type", TEXT } })
      local res = get("/bytes/256", { AE, { "X-Res-Content-Type", TEXT } })
      assert.equal("br", res.h["content-encoding"])
      res = get("/chunked/10", { AE, { "X-Res-Content-Type", TEXT } })
      assert.equal("br", res.h["content-encoding"])
      assert.equal(helpers.pattern(10), decode("br", res.body))
    end)

    it("res:compress(false) from the response hook", function()
      local res = skipped("/bytes/5000", { { "X-Res-Content-Type", TEXT }, { "X-No-Compress", "1" } })
      assert.equal("5000", res.h["content-length"])
    end)
  end)

  it("Vary: merged with the origin's, not twice, not after Vary: *", function()
    local function vary(v)
      return get("/bytes/5000", { { "Accept-Encoding", "gzip" }, { "X-Res-Content-Type", TEXT },
                                  { "X-Res-Vary", v } })
    end
    local res = vary("Origin")
    assert.equal("gzip", res.h["content-encoding"])
    assert.equal("Origin, Accept-Encoding", res.h["vary"])
    res = vary("accept-encoding, Origin")
    assert.equal("accept-encoding, Origin", res.h["vary"])
    res = vary("*")
    assert.equal("gzip", res.h["content-encoding"])
    assert.equal("*", res.h["vary"])
  end)

  it("a strong ETag is made weak, a weak one kept", function()
    local res = get("/bytes/5000", { { "Accept-Encoding", "gzip" }, { "X-Res-Content-Type", TEXT },
                                     { "X-Res-ETag", '"abc"' } })
    assert.equal('W/"abc"', res.h["etag"])
    res = get("/bytes/5000", { { "Accept-Encoding", "gzip" }, { "X-Res-Content-Type", TEXT },
                               { "X-Res-ETag", 'W/"abc"' } })
    assert.equal('W/"abc"', res.h["etag"])
    res = get("/bytes/5000", { { "X-Res-Content-Type", TEXT }, { "X-Res-ETag", '"abc"' } })
    assert.equal('"abc"', res.h["etag"]) -- not encoded: left alone
  end)

  it("HTTP/1.0 clients get a close-delimited encoded body", function()
    for _, coding in ipairs { "gzip", "br", "zstd" } do
      local res = get("/bytes/100000", { { "Accept-Encoding", coding }, { "X-Res-Content-Type", TEXT } },
                      { version = "HTTP/1.0" })
      assert.equal(coding, res.h["content-encoding"])
      assert.is_nil(res.h["content-length"])
      assert.is_nil(res.h["transfer-encoding"])
      assert.is_true(res.close_delimited)
      assert.is_true(decode(coding, res.body) == helpers.pattern(100000))
    end
  end)

  it("the body hook sees the plain body; its output is encoded", function()
    local n = 200000
    for _, coding in ipairs { "gzip", "br", "zstd" } do
      local res = get("/hooked.test/chunked/" .. n, { { "Accept-Encoding", coding }, { "X-Res-Content-Type", TEXT } })
      assert.equal(coding, res.h["content-encoding"])
      assert.is_true(decode(coding, res.body) == (helpers.pattern(n):gsub("0", "Z")))
    end
  end)

  it("keep-alive: an encoded response, then a plain one on one connection", function()
    local c = proxy:connect()
    local a = assert(c:request({ path = "/bytes/3000", headers = { { "Accept-Encoding", "zstd" },
                                                                    { "X-Res-Content-Type", TEXT } } }))
    local b = assert(c:request({ path = "/bytes/3000" }))
    c:close()
    assert.equal("zstd", a.h["content-encoding"])
    assert.equal(helpers.pattern(3000), decode("zstd", a.body))
    assert.is_nil(b.h["content-encoding"])
    assert.equal(helpers.pattern(3000), b.body)
  end)

  it("a body cut short by the upstream, or a client gone mid-body: the encoder goes with the request", function()
    local c = proxy:connect()
    assert(c:send(helpers.request_bytes({ path = "/short/100000", headers = {
      { "Accept-Encoding", "gzip" }, { "X-Res-Content-Type", TEXT } } })))
    local raw = c:read_until_close(5)
    c:close()
    assert.matches("Content%-Encoding: gzip\r\n", raw)
    assert.is_nil(raw:find("\r\n0\r\n\r\n$")) -- no last chunk: the client sees the cut
    for _, coding in ipairs { "gzip", "br", "zstd" } do
      c = proxy:connect()
      assert(c:send(helpers.request_bytes({ path = "/chunked/1048576", headers = {
        { "Accept-Encoding", coding }, { "X-Res-Content-Type", TEXT } } })))
      assert(c:take(200, require("socket").gettime() + 5))
      c:close()
    end
    -- the proxy goes on (and, under ASan, leaks nothing: checked at its exit)
    local res = get("/bytes/5000", { { "Accept-Encoding", "zstd" }, { "X-Res-Content-Type", TEXT } })
    assert.equal(helpers.pattern(5000), decode("zstd", res.body))
    proxy:assert_alive()
  end)

  it("curl --compressed decodes what it gets", function()
    local res = assert(helpers.curl({ "--compressed", "-H", "X-Res-Content-Type: " .. TEXT,
                                      proxy:url("/chunked/300000") }))
    assert.equal(200, res.status)
    assert.is_not_nil(res.h["content-encoding"])
    assert.is_true(res.body == helpers.pattern(300000))
  end)

  it("a reload turns compression on and off", function()
    proxy:reload(function(text)
      return text:gsub(", compress = { min_length = 256 }", "")
    end, function()
      local res = get("/bytes/5000", { { "Accept-Encoding", "gzip" }, { "X-Res-Content-Type", TEXT } })
      return res.h["content-encoding"] == nil and res.body == helpers.pattern(5000)
    end)
    proxy:reload(function(text)
      return text:gsub("access_log = false", "access_log = false, compress = { prefer = { \"zstd\" } }")
    end, function()
      local res = get("/bytes/5000", { { "Accept-Encoding", "gzip, zstd" }, { "X-Res-Content-Type", TEXT } })
      return res.h["content-encoding"] == "zstd" and decode("zstd", res.body) == helpers.pattern(5000)
    end)
    proxy:assert_alive()
  end)
end)

-- decode = true: a second moongate (the "front") in front of the first (which
-- encodes the origin's bodies as the Accept-Encoding it is sent asks)
describe("decode = true", function()
  local origin, back, front
  local FRONT = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, compress = true }
mg.listen { "127.0.0.1:${port}" }
local b = mg.upstream "back" { servers = { "${back}" } }
mg.route { host = "dec.test", upstream = b, decode = true, on = { body = function(req, res, chunk)
  return (chunk:gsub("0", "Z"))
end } }
mg.route { host = "plain.test", upstream = b, decode = true, compress = false }
mg.route { upstream = b }
]]

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    back = helpers.proxy(TEMPLATE, { vars = { origin = origin.addr, config = ", compress = true" } })
    front = helpers.proxy(FRONT, { vars = { back = "127.0.0.1:" .. back.port } })
  end)

  lazy_teardown(function()
    helpers.teardown(front, back)
  end)

  local function get(host, path, headers)
    local c = front:connect()
    local hs = { { "Host", host } }
    for _, kv in ipairs(headers) do hs[#hs + 1] = kv end
    local res = assert(c:request({ path = path, headers = hs }))
    c:close()
    return res
  end

  it("the body hook sees the decoded body, which is encoded again as negotiated", function()
    local n = 300000
    for _, coding in ipairs { "gzip", "br", "zstd" } do
      -- without decode the front passes the back's encoding untouched
      local raw = get("other.test", "/chunked/" .. n, { { "Accept-Encoding", coding }, { "X-Res-Content-Type", TEXT } })
      assert.equal(coding, raw.h["content-encoding"])
      assert.is_true(decode(coding, raw.body) == helpers.pattern(n))
      local res = get("dec.test", "/chunked/" .. n, { { "Accept-Encoding", coding }, { "X-Res-Content-Type", TEXT } })
      assert.equal(200, res.status)
      assert.equal(coding, res.h["content-encoding"])
      assert.is_true(decode(coding, res.body) == (helpers.pattern(n):gsub("0", "Z")))
    end
  end)

  it("decoded and sent as identity when the route does not compress", function()
    for _, coding in ipairs { "gzip", "br", "zstd" } do
      local res = get("plain.test", "/bytes/100000", { { "Accept-Encoding", coding }, { "X-Res-Content-Type", TEXT },
                                                       { "X-Res-ETag", '"v1"' } })
      assert.is_nil(res.h["content-encoding"])
      assert.equal("chunked", res.h["transfer-encoding"])
      assert.equal('W/"v1"', res.h["etag"])
      assert.is_true(res.body == helpers.pattern(100000))
    end
  end)

  it("a coding it does not know goes as it came", function()
    local res = get("plain.test", "/bytes/5000", { { "X-Res-Content-Type", TEXT }, { "X-Res-Content-Encoding", "deflate" } })
    assert.equal("deflate", res.h["content-encoding"])
    assert.equal("5000", res.h["content-length"])
    assert.equal(helpers.pattern(5000), res.body)
  end)

  it("a body that does not decode is cut short, with a log line", function()
    local c = front:connect()
    assert(c:send(helpers.request_bytes({ path = "/bytes/5000", headers = { { "Host", "plain.test" },
      { "X-Res-Content-Type", TEXT }, { "X-Res-Content-Encoding", "gzip" } } })))
    local raw = c:read_until_close(5)
    c:close()
    assert.matches("^HTTP/1.1 200", raw)
    assert.is_nil(raw:find("\r\n0\r\n\r\n$"))
    assert.truthy(helpers.wait_until(function()
      return front:stderr():find("encoded response body does not decode", 1, true)
    end, 5))
    front:assert_alive()
  end)
end)

describe("compress config errors", function()
  local function load_error(cfg)
    local dir = helpers.scratch()
    local path = dir .. "/bad.lua"
    helpers.write_file(path, 'local mg = require "moongate"\nmg.listen { "127.0.0.1:1" }\n' .. cfg .. "\n")
    local out, rc = helpers.moongate({ "-t", "-c", path })
    assert.is_not.equal(0, rc)
    return out
  end

  it("names the bad key and the line", function()
    assert.matches("bad.lua:3: mg.config compress level: 'gzip' out of range", load_error(
      'mg.config { compress = { level = { gzip = 12 } } }'), 1, true)
    assert.matches("bad.lua:3: mg.config compress: unknown key 'minlength'", load_error(
      'mg.config { compress = { minlength = 5 } }'), 1, true)
    assert.matches("prefer[1] is not gzip, br or zstd: deflate", load_error(
      'mg.config { compress = { prefer = { "deflate" } } }'), 1, true)
    assert.matches("types[1] is not a media type", load_error(
      'mg.config { compress = { types = { "html" } } }'), 1, true)
    assert.matches("'compress' must be true, false or a table", load_error(
      'mg.route { path = "/", respond = { status = 200 }, compress = "yes" }'), 1, true)
  end)
end)
