-- Ranges answered from the store and compression of hits (docs/cache.md "Ranges",
-- "Compression"). The origin's /rng/TAG path sends N bytes of the shared pattern
-- with the headers the query names, says in X-Got-Range / X-Got-If-Range what it
-- got and in X-Count how often this exact target was asked for, and answers a
-- single Range itself with a 206 (its own), so every answer shows where it came
-- from.
local helpers = require "spec.helpers"
local url = require "socket.url"

local CONF = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, cache = { memory = "8m", max_object = "256k" } }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
mg.route { host = "fetch.test", upstream = o, cache = { range_fetch = true } }
mg.route { host = "z.test", upstream = o, cache = true, compress = true }
mg.route { upstream = o, cache = true }
]]

local N = 1000
local LM = "Tue, 01 Dec 2026 10:00:00 GMT"

-- /rng/TAG?n=..&h=..: with these response headers ({ "Name:Value", ... })
local function target(tag, hdrs, n, extra)
  local q = { "n=" .. (n or N) }
  for _, h in ipairs(hdrs or {}) do q[#q + 1] = "h=" .. url.escape(h) end
  if extra then q[#q + 1] = extra end
  return "/rng/" .. tag .. "?" .. table.concat(q, "&")
end

local function stored(tag, n, more)
  local hs = { "Cache-Control:max-age=60", 'ETag:"' .. tag .. '"', "Last-Modified:" .. LM,
               "Content-Type:text/plain" }
  for _, h in ipairs(more or {}) do hs[#hs + 1] = h end
  return target(tag, hs, n)
end

local decode = helpers.decode

describe("cache ranges", function()
  local origin, proxy
  local body = helpers.pattern(N)

  lazy_setup(function()
    origin = helpers.origin({ name = "o" })
    proxy = helpers.proxy(CONF, { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  -- path, headers ({ {n, v} }), method, host, version
  local function get(path, headers, method, host, version)
    local hs = {}
    if host then hs[1] = { "Host", host } end
    for _, kv in ipairs(headers or {}) do hs[#hs + 1] = kv end
    return assert(proxy:request({ method = method, path = path, headers = hs, version = version }))
  end

  local function is_hit(res)
    assert.truthy((res.h["cache-status"] or ""):find("^moongate; hit; ttl="), tostring(res.h["cache-status"]))
  end

  -- a range cut from a full response (range_fetch) is complete before the rest of
  -- the body is: the object is committed a moment later. only-if-cached asks the
  -- store alone (504 until then), not the origin.
  local function wait_stored(p, host)
    assert(helpers.wait_until(function()
      return get(p, { { "Cache-Control", "only-if-cached" } }, nil, host).status == 200
    end, 5, 0.02), "not stored: " .. p)
  end

  local function store(p, host)
    local a = get(p, nil, nil, host)
    assert.equal(200, a.status)
    assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
    return a
  end

  it("answers each single range form from a stored 200 with a 206 and exactly those bytes", function()
    local p = stored("forms")
    store(p)
    for _, case in ipairs {
      { "bytes=0-99", 0, 99 },
      { "bytes=990-", 990, 999 },
      { "bytes=-10", 990, 999 },
      { "bytes=500-5000", 500, 999 }, -- a last past the end: up to the end
      { "bytes=-5000", 0, 999 },      -- a suffix longer than the body: all of it
      { "bytes=999-999", 999, 999 },
      { "Bytes=7-8", 7, 8 },          -- the unit's case does not matter
      { "bytes=3-4, ", 3, 4 },        -- empty list elements are allowed
    } do
      local r = get(p, { { "Range", case[1] } })
      assert.equal(206, r.status, case[1])
      assert.equal(("bytes %d-%d/%d"):format(case[2], case[3], N), r.h["content-range"], case[1])
      assert.equal(tostring(case[3] - case[2] + 1), r.h["content-length"], case[1])
      assert.equal(body:sub(case[2] + 1, case[3] + 1), r.body, case[1])
      assert.equal("1", r.h["x-count"]) -- from the store: the origin was asked once
      assert.equal('"forms"', r.h["etag"])
      assert.equal("text/plain", r.h["content-type"])
      is_hit(r)
    end
  end)

  it("answers a range past the end with 416 and Content-Range: bytes */LEN, nothing else of the stored head", function()
    local p = stored("unsat")
    store(p)
    for _, v in ipairs { "bytes=1000-", "bytes=5000-6000", "bytes=-0" } do
      local r = get(p, { { "Range", v } })
      assert.equal(416, r.status, v)
      assert.equal("bytes */1000", r.h["content-range"], v)
      assert.equal("0", r.h["content-length"])
      assert.equal("", r.body)
      assert.is_nil(r.h["cache-control"]) -- a cache downstream must not keep it for the URL
      assert.is_nil(r.h["etag"])
      is_hit(r)
    end
    assert.equal("1", get(p).h["x-count"])
  end)

  it("answers several ranges, or a Range it cannot parse, with the whole 200", function()
    local p = stored("whole")
    store(p)
    for _, hs in ipairs {
      { { "Range", "bytes=0-1,5-6" } },
      { { "Range", "bytes=-1, 0-0" } },
      { { "Range", "bytes=5-1" } },      -- last before first: invalid
      { { "Range", "bytes=abc" } },
      { { "Range", "items=0-1" } },
      { { "Range", "bytes=1-2;x" } },
      { { "Range", "bytes 0-1" } },
      { { "Range", "bytes=0-1" }, { "Range", "bytes=2-3" } }, -- two fields
    } do
      local r = get(p, hs)
      assert.equal(200, r.status, hs[1][2])
      assert.equal(body, r.body)
      assert.equal(tostring(N), r.h["content-length"])
      assert.is_nil(r.h["content-range"])
      is_hit(r)
    end
  end)

  it("If-Range: a strong ETag or the exact Last-Modified gets the range, anything else the whole 200", function()
    local p = stored("ifr")
    store(p)
    local function with(v) return get(p, { { "Range", "bytes=10-19" }, { "If-Range", v } }) end
    local a = with('"ifr"')
    assert.equal(206, a.status)
    assert.equal(body:sub(11, 20), a.body)
    local b = with(LM)
    assert.equal(206, b.status)
    assert.equal("bytes 10-19/1000", b.h["content-range"])
    for _, v in ipairs { '"other"', 'W/"ifr"', "Wed, 02 Dec 2026 10:00:00 GMT", "garbage" } do
      local r = with(v)
      assert.equal(200, r.status, v)
      assert.equal(body, r.body, v)
      assert.is_nil(r.h["content-range"], v)
      is_hit(r)
    end
  end)

  it("a HEAD with Range gets the 200's head (ranges are for GET)", function()
    local p = stored("head")
    store(p)
    local r = get(p, { { "Range", "bytes=0-9" } }, "HEAD")
    assert.equal(200, r.status)
    assert.equal(tostring(N), r.h["content-length"])
    assert.is_nil(r.h["content-range"])
    assert.equal("", r.body)
    is_hit(r)
  end)

  it("a 304 or 412 to the client's conditionals comes before its Range", function()
    local p = stored("condr")
    store(p)
    assert.equal(304, get(p, { { "Range", "bytes=0-9" }, { "If-None-Match", '"condr"' } }).status)
    assert.equal(412, get(p, { { "Range", "bytes=0-9" }, { "If-Match", '"nope"' } }).status)
    assert.equal(206, get(p, { { "Range", "bytes=0-9" }, { "If-Match", '"condr"' } }).status)
  end)

  it("a stored response whose origin said Accept-Ranges: none is answered whole", function()
    local p = stored("none", nil, { "Accept-Ranges:none" })
    store(p)
    local r = get(p, { { "Range", "bytes=0-9" } })
    assert.equal(200, r.status)
    assert.equal(body, r.body)
    assert.equal("none", r.h["accept-ranges"])
    is_hit(r)
  end)

  it("a range request of a stale response: the origin's 304 lets the store answer the range", function()
    -- /hdrs answers 304 when If-None-Match is its ETag (cond=1), ignoring Range
    local p = "/hdrs/stale?n=1000&cond=1&h=" .. url.escape("Cache-Control:max-age=1") .. "&h=" .. url.escape('ETag:"s1"')
    assert.equal("moongate; fwd=uri-miss; stored", get(p).h["cache-status"])
    helpers.sleep(2.2)
    local r = get(p, { { "Range", "bytes=-16" } })
    assert.equal(206, r.status)
    assert.equal("bytes 984-999/1000", r.h["content-range"])
    assert.equal(body:sub(985), r.body)
    assert.equal("2", r.h["x-count"]) -- the 304's
    assert.truthy(r.h["cache-status"]:find("^moongate; fwd=stale; fwd%-status=304; stored"), r.h["cache-status"])
  end)

  it("a range request that misses goes to the origin as it is, and its 206 is not stored", function()
    local p = stored("miss")
    local a = get(p, { { "Range", "bytes=0-9" } })
    assert.equal(206, a.status)
    assert.equal("bytes=0-9", a.h["x-got-range"])
    assert.equal("bytes 0-9/1000", a.h["content-range"])
    assert.equal(body:sub(1, 10), a.body)
    assert.equal("moongate; fwd=uri-miss; detail=status", a.h["cache-status"])
    local b = get(p)
    assert.equal(200, b.status)
    assert.equal("2", b.h["x-count"])
    assert.equal("moongate; fwd=uri-miss; stored", b.h["cache-status"])
    local c = get(p, { { "Range", "bytes=0-9" } })
    assert.equal(206, c.status)
    assert.equal("2", c.h["x-count"])
    is_hit(c)
  end)

  it("range_fetch: a range miss fetches the whole object without Range, stores it and answers the range", function()
    local p = stored("rf")
    local a = get(p, { { "Range", "bytes=10-19" }, { "If-Range", '"rf"' } }, nil, "fetch.test")
    assert.equal(206, a.status)
    assert.equal("-", a.h["x-got-range"])     -- the origin was asked for all of it
    assert.equal("-", a.h["x-got-if-range"])
    assert.equal("bytes 10-19/1000", a.h["content-range"])
    assert.equal("10", a.h["content-length"])
    assert.equal(body:sub(11, 20), a.body)
    assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
    wait_stored(p, "fetch.test")
    local b = get(p, nil, nil, "fetch.test")
    assert.equal(200, b.status)
    assert.equal(body, b.body)
    assert.equal("1", b.h["x-count"])
    is_hit(b)
    local c = get(p, { { "Range", "bytes=-5" } }, nil, "fetch.test")
    assert.equal(206, c.status)
    assert.equal(body:sub(-5), c.body)
    is_hit(c)
  end)

  it("range_fetch: If-Range that does not match, several ranges and a range past the end", function()
    local p = stored("rf2")
    local a = get(p, { { "Range", "bytes=10-19" }, { "If-Range", '"old"' } }, nil, "fetch.test")
    assert.equal(200, a.status)
    assert.equal(body, a.body)
    assert.equal("-", a.h["x-got-range"])
    assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
    local q = stored("rf3")
    local b = get(q, { { "Range", "bytes=0-1,4-5" } }, nil, "fetch.test")
    assert.equal(200, b.status)
    assert.equal(body, b.body)
    assert.equal("-", b.h["x-got-range"])
    local s = stored("rf4")
    local c = get(s, { { "Range", "bytes=2000-" } }, nil, "fetch.test")
    assert.equal(416, c.status)
    assert.equal("bytes */1000", c.h["content-range"])
    assert.equal("0", c.h["content-length"])
    assert.equal("", c.body)
    assert.is_nil(c.h["etag"])
    assert.equal("moongate; fwd=uri-miss; stored", c.h["cache-status"])
    wait_stored(s, "fetch.test")
    local d = get(s, nil, nil, "fetch.test") -- the whole object was stored all the same
    assert.equal(body, d.body)
    is_hit(d)
  end)

  it("range_fetch: a response that is not stored is cut to the range all the same", function()
    local p = target("rfns", { "Cache-Control:no-store", "Content-Type:text/plain" })
    local a = get(p, { { "Range", "bytes=100-199" } }, nil, "fetch.test")
    assert.equal(206, a.status)
    assert.equal("-", a.h["x-got-range"])
    assert.equal(body:sub(101, 200), a.body)
    assert.equal("moongate; fwd=uri-miss; detail=no-store", a.h["cache-status"])
    -- a HEAD is not a range request: it goes as it is
    local h = get(p, { { "Range", "bytes=100-199" } }, "HEAD", "fetch.test")
    assert.equal("bytes=100-199", h.h["x-got-range"])
  end)

  it("without range_fetch a range miss still forwards Range (the route default)", function()
    local p = stored("rfoff")
    local a = get(p, { { "Range", "bytes=0-0" } })
    assert.equal("bytes=0-0", a.h["x-got-range"])
    assert.equal(206, a.status)
  end)
end)

describe("cache with compression", function()
  local origin, proxy
  local SIZE = 4000
  local body = helpers.pattern(SIZE)

  lazy_setup(function()
    origin = helpers.origin({ name = "o" })
    proxy = helpers.proxy(CONF, { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  local function get(path, headers, method, version)
    local hs = { { "Host", "z.test" } }
    for _, kv in ipairs(headers or {}) do hs[#hs + 1] = kv end
    return assert(proxy:request({ method = method, path = path, headers = hs, version = version }))
  end

  local function plain_body(res)
    local ce = res.h["content-encoding"]
    return ce and decode(ce, res.body) or res.body
  end

  -- the headers the encoding decides, as the client got them
  local SAME = { "content-encoding", "vary", "etag", "transfer-encoding", "content-length", "content-type" }
  local function same_headers(a, b, what)
    for _, n in ipairs(SAME) do assert.equal(a.h[n], b.h[n], what .. ": " .. n) end
  end

  for _, coding in ipairs { "gzip", "br" } do
    it(coding .. ": a hit is encoded as the miss was, with the same headers", function()
      local p = stored("z" .. coding, SIZE)
      local ae = { { "Accept-Encoding", coding } }
      local a = get(p, ae)
      assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
      assert.equal(coding, a.h["content-encoding"])
      local b = get(p, ae)
      assert.equal(200, b.status)
      assert.truthy(b.h["cache-status"]:find("^moongate; hit"))
      assert.equal("1", b.h["x-count"])
      same_headers(a, b, coding)
      assert.equal(coding, b.h["content-encoding"])
      assert.equal("Accept-Encoding", b.h["vary"])
      assert.equal('W/"z' .. coding .. '"', b.h["etag"])
      assert.equal("chunked", b.h["transfer-encoding"])
      assert.is_nil(b.h["content-length"])
      assert.equal(body, decode(coding, b.body))
    end)
  end

  it("the encoding of a hit is negotiated per client: gzip, br, identity", function()
    local p = stored("zneg", SIZE)
    local a = get(p) -- stored from an identity client
    assert.is_nil(a.h["content-encoding"])
    assert.equal("Accept-Encoding", a.h["vary"])
    for _, case in ipairs {
      { "gzip", "gzip" }, { "br;q=1, gzip;q=0.5", "br" }, { "identity", nil }, { nil, nil },
    } do
      local r = get(p, case[1] and { { "Accept-Encoding", case[1] } } or nil)
      assert.equal(200, r.status)
      assert.truthy(r.h["cache-status"]:find("^moongate; hit"))
      assert.equal(case[2], r.h["content-encoding"], tostring(case[1]))
      assert.equal("Accept-Encoding", r.h["vary"])
      assert.equal(body, plain_body(r))
      if case[2] then
        assert.equal('W/"zneg"', r.h["etag"])
      else
        assert.equal('"zneg"', r.h["etag"])
        assert.equal(tostring(SIZE), r.h["content-length"])
        assert.equal(a.body, r.body)
      end
    end
  end)

  it("merges Accept-Encoding into the stored Vary as the miss did", function()
    local p = stored("zvary", SIZE, { "Vary:Accept-Language" })
    local hs = { { "Accept-Encoding", "gzip" }, { "Accept-Language", "en" } }
    local a = get(p, hs)
    local b = get(p, hs)
    assert.truthy(b.h["cache-status"]:find("^moongate; hit"))
    same_headers(a, b, "vary")
    assert.equal("Accept-Language, Accept-Encoding", b.h["vary"])
    assert.equal(body, decode("gzip", b.body))
  end)

  it("a body under min_length is not encoded, on a miss or a hit, and neither says Vary", function()
    local p = stored("zsmall", 100)
    local a = get(p, { { "Accept-Encoding", "gzip" } })
    local b = get(p, { { "Accept-Encoding", "gzip" } })
    assert.truthy(b.h["cache-status"]:find("^moongate; hit"))
    same_headers(a, b, "small")
    assert.is_nil(b.h["content-encoding"])
    assert.is_nil(b.h["vary"])
    assert.equal("100", b.h["content-length"])
  end)

  it("a 304 from the store carries the ETag and Vary the 200 would; a strong If-Match fails on the weak one", function()
    local p = stored("zcond", SIZE)
    local a = get(p, { { "Accept-Encoding", "gzip" } })
    assert.equal('W/"zcond"', a.h["etag"])
    local b = get(p, { { "Accept-Encoding", "gzip" }, { "If-None-Match", a.h["etag"] } })
    assert.equal(304, b.status)
    assert.equal('W/"zcond"', b.h["etag"])
    assert.equal("Accept-Encoding", b.h["vary"])
    assert.is_nil(b.h["content-encoding"])
    assert.equal("", b.body)
    local c = get(p, { { "If-None-Match", '"zcond"' } }) -- an identity client's validator
    assert.equal(304, c.status)
    assert.equal('"zcond"', c.h["etag"])
    assert.equal(412, get(p, { { "Accept-Encoding", "gzip" }, { "If-Match", 'W/"zcond"' } }).status)
  end)

  it("a range of a hit is a part of the identity body, not encoded; a HEAD is not encoded", function()
    local p = stored("zrange", SIZE)
    get(p, { { "Accept-Encoding", "gzip" } })
    local r = get(p, { { "Accept-Encoding", "gzip" }, { "Range", "bytes=100-199" } })
    assert.equal(206, r.status)
    assert.is_nil(r.h["content-encoding"])
    assert.equal('"zrange"', r.h["etag"])
    assert.equal("bytes 100-199/4000", r.h["content-range"])
    assert.equal(body:sub(101, 200), r.body)
    -- the weak ETag of the encoded response does not match If-Range: the whole, encoded
    local w = get(p, { { "Accept-Encoding", "gzip" }, { "Range", "bytes=100-199" }, { "If-Range", 'W/"zrange"' } })
    assert.equal(200, w.status)
    assert.equal("gzip", w.h["content-encoding"])
    assert.equal(body, decode("gzip", w.body))
    local h = get(p, { { "Accept-Encoding", "gzip" } }, "HEAD")
    assert.equal(200, h.status)
    assert.is_nil(h.h["content-encoding"])
    assert.equal(tostring(SIZE), h.h["content-length"])
  end)

  it("an HTTP/1.0 client gets an encoded hit framed by the close", function()
    local p = stored("z10", SIZE)
    get(p, { { "Accept-Encoding", "gzip" } })
    local r = get(p, { { "Accept-Encoding", "gzip" } }, nil, "HTTP/1.0")
    assert.equal(200, r.status)
    assert.truthy(r.h["cache-status"]:find("^moongate; hit"))
    assert.equal("gzip", r.h["content-encoding"])
    assert.is_nil(r.h["transfer-encoding"])
    assert.is_nil(r.h["content-length"])
    assert.equal("close", r.h["connection"])
    assert.equal(body, decode("gzip", r.body))
  end)
end)

-- decode = true: a second moongate (the "back") encodes the origin's bodies as
-- the Accept-Encoding it gets asks; the front decodes and stores them
describe("cache with decode", function()
  local origin, back, front
  local BACK = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, compress = true }
mg.listen { "127.0.0.1:${port}" }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } } }
]]
  local FRONT = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, cache = { memory = "8m", max_object = "256k" } }
mg.listen { "127.0.0.1:${port}" }
mg.route { upstream = mg.upstream "b" { servers = { "${back}" } }, cache = true, decode = true, compress = false }
]]

  lazy_setup(function()
    origin = helpers.origin({ name = "o" })
    back = helpers.proxy(BACK, { vars = { origin = origin.addr } })
    front = helpers.proxy(FRONT, { vars = { back = "127.0.0.1:" .. back.port } })
  end)

  lazy_teardown(function()
    helpers.teardown(front, back)
  end)

  it("stores the decoded body with the decoded head: a hit has no Content-Encoding", function()
    local p = stored("dec", 5000)
    local ae = { { "Accept-Encoding", "gzip" } }
    local a = assert(front:request({ path = p, headers = ae }))
    assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
    assert.is_nil(a.h["content-encoding"])
    assert.equal(helpers.pattern(5000), a.body)
    local b = assert(front:request({ path = p, headers = ae }))
    assert.truthy(b.h["cache-status"]:find("^moongate; hit"))
    assert.is_nil(b.h["content-encoding"])
    assert.equal('W/"dec"', b.h["etag"])
    assert.equal("5000", b.h["content-length"])
    assert.equal(helpers.pattern(5000), b.body)
  end)
end)

-- A hit's body is queued by reference to the stored object (docs/cache.md "The
-- store"): the object must outlive its removal while a slow client still reads it.
describe("cache hits by reference", function()
  local origin, proxy
  local BIG = 6 * 1024 * 1024
  local CONF_BIG = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, cache = { memory = "32m", max_object = "8m" } }
mg.listen { "127.0.0.1:${port}" }
mg.listen { "127.0.0.1:${tls}", tls = { cert = "${cert}", key = "${key}" } }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } }, cache = true }
]]
  local tls_port

  lazy_setup(function()
    origin = helpers.origin({ name = "o" })
    local cert, key = helpers.self_signed(helpers.tmpdir(), "localhost")
    tls_port = helpers.free_port()
    proxy = helpers.proxy(CONF_BIG, { vars = { origin = origin.addr, tls = tls_port, cert = cert, key = key } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("a large hit read slowly arrives whole after its object was removed and replaced", function()
    local p = target("big", { "Cache-Control:max-age=60", "Content-Type:application/octet-stream" }, BIG)
    local want = helpers.pattern(BIG)
    local a = assert(proxy:request({ path = p }))
    assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
    assert.is_true(a.body == want)
    -- two slow readers of the hit (one whole, one a range), then the object goes
    local c, d = proxy:connect(), proxy:connect()
    assert(c:send(helpers.request_bytes({ path = p })))
    assert(d:send(helpers.request_bytes({ path = p, headers = { { "Range", "bytes=100000-5999999" } } })))
    helpers.sleep(0.3) -- the hits are queued; the kernel holds a part of them
    assert.equal(200, assert(proxy:request({ method = "POST", path = p, body = "x" })).status) -- removes it
    local e = assert(proxy:request({ path = p })) -- and stores a new one in its place
    assert.equal("moongate; fwd=uri-miss; stored", e.h["cache-status"])
    local r = assert(c:response())
    assert.equal(200, r.status)
    assert.truthy(r.h["cache-status"]:find("^moongate; hit"))
    assert.equal("1", r.h["x-count"])
    assert.is_true(r.body == want)
    local s = assert(d:response())
    assert.equal(206, s.status)
    assert.equal("bytes 100000-5999999/" .. BIG, s.h["content-range"])
    assert.is_true(s.body == want:sub(100001, 6000000))
    c:close()
    d:close()
    proxy:assert_alive()
  end)

  it("a large hit goes through TLS whole (its pieces referenced, then encrypted)", function()
    local p = target("bigtls", { "Cache-Control:max-age=60", "Content-Type:application/octet-stream" }, BIG)
    local want = helpers.pattern(BIG)
    local function https(args)
      local a = { "-k", "--resolve", "localhost:" .. tls_port .. ":127.0.0.1" }
      for _, x in ipairs(args) do a[#a + 1] = x end
      a[#a + 1] = "https://localhost:" .. tls_port .. p
      return assert(helpers.curl(a, { max_time = 20 }))
    end
    local m = https({}) -- the scheme is part of the key: stored anew for https
    assert.equal("moongate; fwd=uri-miss; stored", m.h["cache-status"])
    local r = https({})
    assert.truthy(r.h["cache-status"]:find("^moongate; hit"))
    assert.is_true(r.body == want)
    local s = https({ "-H", "Range: bytes=-70000" })
    assert.equal(206, s.status)
    assert.is_true(s.body == want:sub(-70000))
  end)
end)
