-- Hostile input against the response cache and compression (docs/cache.md,
-- docs/compression.md): clients that try to put one origin's answer under
-- another's key or read what another client was given, and origins that answer
-- with contradictions, lies and broken bodies. Each test asserts the exact
-- outcome (status, headers, body bytes, how often the origin was asked).
-- WORKERS=2 in the environment runs it on two workers.
local helpers = require "spec.helpers"
local raw = require "spec.support.raw"

local WORKERS = tonumber(os.getenv("WORKERS") or "1")

-- data decompressed by the gzip tool (nil when it is not a whole stream)
local function gunzip(data)
  local f = os.tmpname()
  helpers.write_file(f, data)
  local p = assert(io.popen("gzip -dc < " .. f .. " 2>/dev/null; echo \"rc=$?\""))
  local out = p:read("*a")
  p:close()
  os.remove(f)
  local body, rc = out:match("^(.*)rc=(%d+)\n$")
  return rc == "0" and body or nil
end

-- data compressed by the gzip tool
local function gzip(data)
  local f = os.tmpname()
  helpers.write_file(f, data)
  local p = assert(io.popen("gzip -c " .. f))
  local out = p:read("*a")
  p:close()
  os.remove(f)
  return out
end

local CONF = [[
local mg = require "moongate"
mg.config { workers = ${workers}, access_log = false, timeouts = { upstream_read = 2 },
  cache = { memory = "8m", max_object = "64k" } }
mg.listen { "127.0.0.1:${port}" }
mg.listen { "127.0.0.1:${inner}", name = "inner" }
local pub = mg.upstream "pub" { servers = { "${pub}" } }
local inner = mg.upstream "inner" { servers = { "${innerorigin}" } }
local hostile = mg.upstream "hostile" { servers = { "${hostile}" } }
mg.route { listener = "inner", upstream = inner, cache = true }
mg.route { upstream = pub, cache = true }
mg.route { host = "split.test", upstream = pub, cache = true,
  split = { header = "x-canary", values = { ["1"] = inner } } }
mg.route { host = "dec.test", upstream = hostile, cache = true, decode = true }
mg.route { host = "h.test", upstream = hostile, cache = true }
mg.route { host = "*.h.test", upstream = hostile, cache = true }
local gz = { prefer = { "gzip" }, min_length = 1 }
mg.route { host = "gz.test", upstream = hostile, cache = true, compress = gz }
mg.route { host = "cz.test", upstream = hostile, compress = gz }
mg.route { host = "dz.test", upstream = hostile, decode = true }
mg.route { host = "tenant.test", upstream = hostile, cache = true, on = { request = function(req)
  req:set_header("Host", (req:header("X-Tenant") or "none") .. ".tenants.test")
end } }
mg.route { host = "gzlong.test", upstream = hostile, cache = true, compress = gz, on = {
  body = function(req, res, chunk) return (chunk:gsub(".", "%0%0")) end } }
mg.route { host = "gzshort.test", upstream = hostile, cache = true, compress = gz, on = {
  body = function(req, res, chunk) return (chunk:gsub("b", "")) end } }
]]

describe("cache under attack", function()
  local pub, innerorigin, hostile, proxy

  local function start()
    proxy = helpers.proxy(CONF, { ports = { "inner" }, vars = { workers = WORKERS,
      pub = pub.addr, innerorigin = innerorigin.addr, hostile = hostile.addr } })
  end

  lazy_setup(function()
    pub = helpers.origin({ name = "pub" })
    innerorigin = helpers.origin({ name = "inner" })
    hostile = raw.origin()
    start()
  end)

  lazy_teardown(function()
    if hostile then hostile:close() end
    helpers.teardown(proxy)
  end)

  before_each(function()
    if proxy:wait(0) then start() end
  end)

  local connect, cleanup = raw.tracker(function() return proxy end, function() return hostile end)
  after_each(function()
    cleanup()
    helpers.sleep(0.05)
  end)

  local function get(path, headers, port)
    return assert(proxy:request({ path = path, headers = headers }, port))
  end

  -- a request on a new client connection, answered by the hostile origin with
  -- `answer` (then its connection is closed); returns the client's response
  -- and the request the origin got
  local function through_hostile(request, answer, opts)
    opts = opts or {}
    local c = connect()
    assert(c:send(request))
    local o = assert(hostile:accept(3), "moongate did not connect to the origin")
    local req = assert(o:read_request(3), "no request reached the origin")
    o:send(answer)
    o:close()
    local res, err, partial = raw.read_response(c, { timeout = 4, head = opts.head })
    c:close()
    assert(res, "no response: " .. tostring(err) .. " " .. raw.show(partial))
    return res, req
  end

  -- the client's request is answered from the store: the origin is not asked
  local function from_store(request, opts)
    local c = connect()
    assert(c:send(request))
    local res, err, partial = raw.read_response(c, { timeout = 4, head = opts and opts.head })
    c:close()
    assert(res, "no response: " .. tostring(err) .. " " .. raw.show(partial))
    assert(not hostile:pending(0.2), "the origin was asked: " .. raw.show(res.raw))
    return res
  end

  local function GET(path, host, extra)
    return "GET " .. path .. " HTTP/1.1\r\nHost: " .. (host or "h.test") .. "\r\n" .. (extra or "") .. "\r\n"
  end

  -- a response head: status line, then the lines of `hdrs`, then the body
  local function answer(status, hdrs, body)
    local t = { "HTTP/1.1 " .. status .. " X\r\n" }
    for _, h in ipairs(hdrs) do t[#t + 1] = h .. "\r\n" end
    if body and not table.concat(hdrs, "\n"):lower():find("transfer%-encoding") then
      t[#t + 1] = "Content-Length: " .. #body .. "\r\n"
    end
    t[#t + 1] = "\r\n"
    return table.concat(t) .. (body or "")
  end

  describe("keys", function()
    it("a response of one listener's upstream is not a hit on another listener with the same Host", function()
      local a = get("/who/lst", { { "Host", "site.test" } })
      assert.equal("pub lst count=1\n", a.body)
      local b = get("/who/lst", { { "Host", "site.test" } }, proxy.ports.inner)
      assert.equal(200, b.status)
      assert.equal("inner lst count=1\n", b.body)
      assert.equal("inner", b.h["x-origin"])
      assert.equal("moongate; fwd=uri-miss; stored", b.h["cache-status"])
      -- each is a hit on its own listener afterwards
      assert.equal("pub lst count=1\n", get("/who/lst", { { "Host", "site.test" } }).body)
      assert.equal("inner lst count=1\n", get("/who/lst", { { "Host", "site.test" } }, proxy.ports.inner).body)
    end)

    it("Host variants: case and default port are one origin, another port or an absolute target another", function()
      through_hostile(GET("/hv/x"), answer(200, { "Cache-Control: max-age=60" }, "h.test\n"))
      assert.equal("h.test\n", from_store(GET("/hv/x", "H.TEST:80")).body)
      assert.equal("h.test\n", from_store("GET http://h.test/hv/x HTTP/1.1\r\nHost: o.h.test\r\n\r\n").body)
      local a, ra = through_hostile(GET("/hv/x", "h.test:8080"), answer(200, { "Cache-Control: max-age=60" }, "8080\n"))
      assert.equal("8080\n", a.body)
      assert.equal("h.test:8080", ra.h["host"])
      local b, rb = through_hostile("GET http://o.h.test/hv/x HTTP/1.1\r\nHost: h.test\r\n\r\n",
        answer(200, { "Cache-Control: max-age=60" }, "o.h.test\n"))
      assert.equal("o.h.test\n", b.body)
      assert.equal("o.h.test", rb.h["host"]) -- the origin was asked for what the key says
      assert.equal("h.test\n", from_store(GET("/hv/x")).body)
      local c = connect()
      assert(c:send("GET /hv/x HTTP/1.1\r\nHost: h.test\r\nHost: o.h.test\r\n\r\n"))
      assert.equal(400, assert(raw.read_response(c)).status)
    end)

    it("a Host a request hook sets (from an unkeyed header) is the one keyed on", function()
      local function ask(tenant)
        return GET("/t/x", "tenant.test", tenant and ("X-Tenant: " .. tenant .. "\r\n") or "")
      end
      local a, ra = through_hostile(ask("a"), answer(200, { "Cache-Control: max-age=60" }, "for a\n"))
      assert.equal("a.tenants.test", ra.h["host"])
      assert.equal("for a\n", a.body)
      local b, rb = through_hostile(ask("b"), answer(200, { "Cache-Control: max-age=60" }, "for b\n"))
      assert.equal("b.tenants.test", rb.h["host"])
      assert.equal("for b\n", b.body)
      assert.equal("moongate; fwd=uri-miss; stored", b.h["cache-status"])
      assert.equal("for a\n", from_store(ask("a")).body)
      assert.equal("for b\n", from_store(ask("b")).body)
      -- a Host that is no host is not cached (keys would be ambiguous)
      local c = through_hostile(ask("x/y"), answer(200, { "Cache-Control: max-age=60" }, "slash\n"))
      assert.equal("slash\n", c.body)
      assert.is_nil(c.h["cache-status"])
      assert.equal("again\n", through_hostile(ask("x/y"), answer(200, { "Cache-Control: max-age=60" }, "again\n")).body)
    end)

    it("an unsafe request removes the URL stored for every upstream, not only its own", function()
      local hs = { { "Host", "site.test" } }
      assert.equal("pub inv count=1\n", get("/who/inv", hs).body)
      assert.equal("inner inv count=1\n", get("/who/inv", hs, proxy.ports.inner).body)
      assert.equal("inner inv count=1\n", get("/who/inv", hs, proxy.ports.inner).body)
      local p = assert(proxy:request({ method = "POST", path = "/who/inv", headers = hs, body = "x" }))
      assert.equal(200, p.status)
      assert.equal("pub inv count=3\n", get("/who/inv", hs).body) -- the POST was the 2nd
      assert.equal("inner inv count=2\n", get("/who/inv", hs, proxy.ports.inner).body)
    end)

    it("a canary's response (split by header) is not served to requests without the header", function()
      local a = get("/who/canary", { { "Host", "split.test" }, { "X-Canary", "1" } })
      assert.equal("inner canary count=1\n", a.body)
      local b = get("/who/canary", { { "Host", "split.test" } })
      assert.equal("pub canary count=1\n", b.body)
      assert.equal("moongate; fwd=uri-miss; stored", b.h["cache-status"])
      assert.equal("inner canary count=1\n", get("/who/canary", { { "Host", "split.test" }, { "X-Canary", "1" } }).body)
      assert.equal("pub canary count=1\n", get("/who/canary", { { "Host", "split.test" } }).body)
    end)
  end)

  describe("decode = true", function()
    it("stores the decoded body without the upstream's Content-Encoding", function()
      local plain = string.rep("decoded body line\n", 20)
      local gz = gzip(plain)
      local res = assert(through_hostile("GET /dec HTTP/1.1\r\nHost: dec.test\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Encoding: gzip\r\nETag: \"e1\"\r\n"
        .. "Cache-Control: max-age=60\r\nContent-Length: " .. #gz .. "\r\n\r\n" .. gz))
      assert.equal(200, res.status)
      assert.is_nil(res.h["content-encoding"])
      assert.equal(plain, res.body)
      local hit = from_store("GET /dec HTTP/1.1\r\nHost: dec.test\r\n\r\n")
      assert.equal(200, hit.status)
      assert.truthy(hit.h["cache-status"]:find("^moongate; hit"))
      assert.is_nil(hit.h["content-encoding"])
      assert.equal('W/"e1"', hit.h["etag"])
      assert.equal(plain, hit.body)
    end)
  end)

  describe("invalidation", function()
    it("a POST whose Location does not fit a key still invalidates its own target", function()
      local a = through_hostile(GET("/inv/x"), answer(200, { "Cache-Control: max-age=60" }, "v1\n"))
      assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
      assert.equal("v1\n", from_store(GET("/inv/x")).body)
      local post = "POST /inv/x HTTP/1.1\r\nHost: h.test\r\nContent-Length: 2\r\n\r\nhi"
      local p = through_hostile(post, answer(201, { "Location: http://h.test/" .. string.rep("l", 6000) }, "made\n"))
      assert.equal(201, p.status)
      local b = through_hostile(GET("/inv/x"), answer(200, { "Cache-Control: max-age=60" }, "v2\n"))
      assert.equal("v2\n", b.body)
      assert.equal("moongate; fwd=uri-miss; stored", b.h["cache-status"])
    end)
  end)

  describe("a stored head of more than 128 fields", function()
    local function many(n)
      local t = {}
      for i = 1, n do t[#t + 1] = "X-F" .. i .. ": value " .. i end
      return t
    end

    it("with Vary after the 128th field is a hit for the same request", function()
      local hdrs = many(140)
      hdrs[#hdrs + 1] = "Cache-Control: max-age=60"
      hdrs[#hdrs + 1] = "Vary: Accept-Language"
      local req = GET("/many/vary", nil, "Accept-Language: fr\r\n")
      local a = through_hostile(req, answer(200, hdrs, "many\n"))
      assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
      local b = from_store(req)
      assert.equal("many\n", b.body)
      assert.truthy(b.h["cache-status"]:find("^moongate; hit"))
      assert.equal("value 140", b.h["x-f140"])
      assert.equal("Accept-Language", b.h["vary"])
      -- another language is another variant
      local c = through_hostile(GET("/many/vary", nil, "Accept-Language: de\r\n"), answer(200, hdrs, "de\n"))
      assert.equal("moongate; fwd=vary-miss; stored", c.h["cache-status"])
    end)

    it("keeps every field when a 304 revalidates it", function()
      local hdrs = many(150)
      hdrs[#hdrs + 1] = "Content-Type: text/x-late"
      hdrs[#hdrs + 1] = "ETag: \"m1\""
      hdrs[#hdrs + 1] = "Cache-Control: no-cache"
      local a = through_hostile(GET("/many/reval"), answer(200, hdrs, "body\n"))
      assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
      local b, rq = through_hostile(GET("/many/reval"), answer(304, { "ETag: \"m1\"", "Cache-Control: no-cache",
        "Content-Length: 0" }))
      assert.equal("\"m1\"", rq.h["if-none-match"])
      assert.equal(200, b.status)
      assert.equal("body\n", b.body)
      assert.equal("text/x-late", b.h["content-type"])
      assert.equal("value 150", b.h["x-f150"])
      local xf = 0
      for _, kv in ipairs(b.headers) do if kv[1]:match("^X%-F%d+$") then xf = xf + 1 end end
      assert.equal(150, xf)
      -- and again, from the object the 304 stored
      local c = through_hostile(GET("/many/reval"), answer(304, { "ETag: \"m1\"", "Cache-Control: no-cache",
        "Content-Length: 0" }))
      assert.equal("text/x-late", c.h["content-type"])
      assert.equal("value 1", c.h["x-f1"])
      assert.equal("value 150", c.h["x-f150"])
    end)
  end)

  describe("what must not be stored", function()
    local STORE = "Cache-Control: max-age=60"

    -- the next GET of `path` goes to the origin, which answers "fresh\n": stored now
    local function asked_again(path, host)
      local r = through_hostile(GET(path, host), answer(200, { STORE }, "fresh\n"))
      assert.equal("fresh\n", r.body)
      assert.equal("moongate; fwd=uri-miss; stored", r.h["cache-status"])
    end

    it("a body cut inside its Content-Length", function()
      local res = through_hostile(GET("/cut/len"), "HTTP/1.1 200 OK\r\n" .. STORE .. "\r\nContent-Length: 100\r\n\r\n"
        .. string.rep("x", 40))
      assert.equal(200, res.status)
      assert.is_falsy(res.complete)
      assert.equal(string.rep("x", 40), res.body)
      asked_again("/cut/len")
    end)

    it("a chunked body cut before its last chunk", function()
      local res = through_hostile(GET("/cut/chunked"), "HTTP/1.1 200 OK\r\n" .. STORE
        .. "\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
      assert.equal(200, res.status)
      assert.is_falsy(res.complete)
      assert.equal("hello", res.body)
      asked_again("/cut/chunked")
    end)

    it("a body delimited by the close that ends in a reset, not a close", function()
      local c = connect()
      assert(c:send(GET("/cut/rst")))
      local o = assert(hostile:accept(3))
      assert(o:read_request(3))
      o:send("HTTP/1.1 200 OK\r\n" .. STORE .. "\r\n\r\n" .. string.rep("r", 3000))
      helpers.sleep(0.2)
      o.sock:setoption("linger", { on = true, timeout = 0 })
      o:close() -- RST
      local res = assert(raw.read_response(c, { timeout = 4 }))
      c:close()
      assert.equal(200, res.status)
      asked_again("/cut/rst")
    end)

    it("a gzip body (kept whole for libdeflate) whose Content-Length lies", function()
      local req = GET("/cut/gz", "gz.test", "Accept-Encoding: gzip\r\n")
      local res = through_hostile(req, "HTTP/1.1 200 OK\r\n" .. STORE .. "\r\nContent-Type: text/plain\r\n"
        .. "Content-Length: 2000\r\n\r\n" .. string.rep("a", 1000))
      assert.equal(200, res.status)
      assert.equal("gzip", res.h["content-encoding"])
      assert.is_falsy(res.complete) -- no last chunk: the client knows it is cut
      asked_again("/cut/gz", "gz.test")
    end)

    it("a gzip body that does not decode on a decode = true route", function()
      local res = through_hostile(GET("/cut/dec", "dec.test"), "HTTP/1.1 200 OK\r\n" .. STORE
        .. "\r\nContent-Type: text/plain\r\nContent-Encoding: gzip\r\nContent-Length: 40\r\n\r\n"
        .. string.rep("not gzip ", 5) .. "abcde")
      assert.equal(200, res.status)
      assert.is_falsy(res.complete)
      asked_again("/cut/dec", "dec.test")
    end)

    it("contradicting framing: two Content-Lengths, or Content-Length with Transfer-Encoding", function()
      local a = through_hostile(GET("/frame/cl2"), "HTTP/1.1 200 OK\r\n" .. STORE
        .. "\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
      assert.equal(502, a.status)
      asked_again("/frame/cl2")
      local b = through_hostile(GET("/frame/clte"), "HTTP/1.1 200 OK\r\n" .. STORE
        .. "\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
      assert.equal(502, b.status)
      asked_again("/frame/clte")
    end)

    it("Set-Cookie, an Authorization request, Vary: * and a Vary too long to key", function()
      local a = through_hostile(GET("/priv/cookie"), answer(200, { STORE, "Set-Cookie: sid=secret" }, "mine\n"))
      assert.equal("sid=secret", a.h["set-cookie"])
      assert.equal("moongate; fwd=uri-miss; detail=set-cookie", a.h["cache-status"])
      asked_again("/priv/cookie")
      local b = through_hostile(GET("/priv/auth", nil, "Authorization: Basic dTpw\r\n"),
        answer(200, { STORE }, "for u\n"))
      assert.equal("moongate; fwd=uri-miss; detail=authorization", b.h["cache-status"])
      asked_again("/priv/auth")
      local c = through_hostile(GET("/priv/star"), answer(200, { STORE, "Vary: *" }, "star\n"))
      assert.equal("moongate; fwd=uri-miss; detail=vary-star", c.h["cache-status"])
      asked_again("/priv/star")
      local names = {}
      for i = 1, 300 do names[i] = "X-Vary-Name-" .. i end
      local d = through_hostile(GET("/priv/vary300"), answer(200, { STORE, "Vary: " .. table.concat(names, ", ") },
        "v\n"))
      assert.equal(200, d.status)
      assert.is_nil(d.h["cache-status"]:find("stored", 1, true))
      asked_again("/priv/vary300")
    end)

    it("a 304 to the client's own conditional, and a HEAD's answer", function()
      local a = through_hostile(GET("/cond/x", nil, "If-None-Match: \"c1\"\r\n"),
        answer(304, { STORE, "ETag: \"c1\"" }))
      assert.equal(304, a.status)
      assert.equal("moongate; fwd=uri-miss; detail=status", a.h["cache-status"])
      asked_again("/cond/x")
      local h = through_hostile("HEAD /head/x HTTP/1.1\r\nHost: h.test\r\n\r\n",
        "HTTP/1.1 200 OK\r\n" .. STORE .. "\r\nContent-Length: 7\r\n\r\n", { head = true })
      assert.equal(200, h.status)
      assert.equal("7", h.h["content-length"])
      asked_again("/head/x")
      -- a HEAD now gets the stored GET's head and no body
      local c = connect()
      assert(c:send("HEAD /head/x HTTP/1.1\r\nHost: h.test\r\n\r\nGET /head/x HTTP/1.1\r\nHost: h.test\r\n\r\n"))
      local hr = assert(raw.read_response(c, { head = true }))
      assert.equal("6", hr.h["content-length"])
      local gr = assert(raw.read_response(c))
      assert.equal("fresh\n", gr.body)
      assert.is_false(hostile:pending(0.2))
    end)
  end)

  describe("what is stored is what the client got", function()
    it("an 8 KiB path and query is stored and hit", function()
      local path = "/long/" .. string.rep("p", 4000) .. "?" .. string.rep("q", 4000)
      local a = through_hostile(GET(path), answer(200, { "Cache-Control: max-age=60" }, "long\n"))
      assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
      assert.equal("long\n", from_store(GET(path)).body)
      -- one byte more of query is another key
      local b = through_hostile(GET(path .. "q"), answer(200, { "Cache-Control: max-age=60" }, "longer\n"))
      assert.equal("longer\n", b.body)
    end)

    for _, case in ipairs {
      { "gzlong.test", "lengthens", function(s) return (s:gsub(".", "%0%0")) end },
      { "gzshort.test", "shortens", function(s) return (s:gsub("b", "")) end },
    } do
      it("a body hook that " .. case[2] .. " a gzip body of known length: encoded and stored as the hook made it",
        function()
        local body = string.rep("abcdefgh", 500)
        local want = case[3](body)
        local req = GET("/hook/" .. case[2], case[1], "Accept-Encoding: gzip\r\n")
        local a = through_hostile(req, answer(200, { "Cache-Control: max-age=60", "Content-Type: text/plain" }, body))
        assert.equal(200, a.status)
        assert.is_true(a.complete)
        assert.equal("gzip", a.h["content-encoding"])
        assert.equal(want, gunzip(a.body))
        assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
        -- the hit is encoded as the miss was (the store keeps the identity body)
        local b = from_store(req)
        assert.equal("gzip", b.h["content-encoding"])
        assert.is_nil(b.h["content-length"])
        assert.equal(want, gunzip(b.body))
      end)
    end
  end)

  describe("hostile freshness", function()
    -- stored, then: "hit" (answered from the store) or "stale" (the origin is asked again)
    local function after(path, hdrs)
      local a = through_hostile(GET(path), answer(200, hdrs, "one\n"))
      assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
      local c = connect()
      assert(c:send(GET(path)))
      local o = hostile:accept(0.5)
      if not o then
        local res = assert(raw.read_response(c, { timeout = 4 }))
        assert.equal("one\n", res.body)
        return "hit", res
      end
      assert(o:read_request(3))
      o:send(answer(200, { "Cache-Control: max-age=60" }, "two\n"))
      o:close()
      local res = assert(raw.read_response(c, { timeout = 4 }))
      assert.equal("two\n", res.body)
      assert.equal("moongate; fwd=stale; stored", res.h["cache-status"])
      return "stale", res
    end

    it("an overflowing max-age is capped, not wrapped", function()
      local how, res = after("/fr/maxage", { "Cache-Control: max-age=99999999999999999999999" })
      assert.equal("hit", how)
      local ttl = tonumber(res.h["cache-status"]:match("ttl=(%d+)$"))
      assert.is_true(ttl > 2147483000 and ttl <= 2147483648, res.h["cache-status"])
    end)

    it("a negative Age counts as 0; a huge one makes it stale at once", function()
      local how, res = after("/fr/negage", { "Cache-Control: max-age=60", "Age: -500" })
      assert.equal("hit", how)
      assert.is_true(tonumber(res.h["age"]) <= 1)
      assert.equal("stale", (after("/fr/bigage", { "Cache-Control: max-age=60", "Age: 99999999999999999999" })))
    end)

    it("a garbage Expires, several Expires, or Expires before Date is stale at once", function()
      assert.equal("stale", (after("/fr/expg", { "Expires: tomorrow, probably" })))
      assert.equal("stale", (after("/fr/exp2", { "Expires: Fri, 31 Dec 9999 23:59:59 GMT",
        "Expires: Fri, 31 Dec 9999 23:59:59 GMT" })))
      assert.equal("stale", (after("/fr/expp", { "Date: Fri, 31 Dec 9999 23:59:59 GMT",
        "Expires: Thu, 01 Jan 1970 00:00:00 GMT" })))
    end)

    it("contradicting directives take the most restrictive", function()
      assert.equal("stale", (after("/fr/two", { "Cache-Control: max-age=600", "Cache-Control: max-age=0" })))
      assert.equal("stale", (after("/fr/bad", { "Cache-Control: max-age=600, max-age=\"x\"" })))
    end)
  end)

  describe("unsafe methods", function()
    it("a PURGE from a peer not in trusted_proxies is refused (403), never forwarded, and removes nothing", function()
      through_hostile(GET("/purge/x"), answer(200, { "Cache-Control: max-age=60" }, "kept\n"))
      for _ = 1, 2 do
        local p = from_store("PURGE /purge/x HTTP/1.1\r\nHost: h.test\r\n\r\n")
        assert.equal(403, p.status)
      end
      assert.equal("kept\n", from_store(GET("/purge/x")).body)
    end)

    it("a Location naming another host removes nothing there", function()
      through_hostile(GET("/loc/x", "o.h.test"), answer(200, { "Cache-Control: max-age=60" }, "other\n"))
      local post = "POST /loc/y HTTP/1.1\r\nHost: h.test\r\nContent-Length: 0\r\n\r\n"
      through_hostile(post, answer(303, { "Location: http://o.h.test/loc/x" }, ""))
      through_hostile(post, answer(303, { "Location: //O.H.test:80/loc/x" }, ""))
      through_hostile(post, answer(303, { "Content-Location: http://o.h.test@h.test/loc/x" }, ""))
      assert.equal("other\n", from_store(GET("/loc/x", "o.h.test")).body)
    end)
  end)

  describe("revalidation", function()
    it("a 304 followed by bytes of another response: the connection is not used again", function()
      local hdrs = { "ETag: \"s1\"", "Cache-Control: no-cache" }
      through_hostile(GET("/smug/x"), answer(200, hdrs, "stored\n"))
      local c = connect()
      assert(c:send(GET("/smug/x")))
      local o = assert(hostile:accept(3))
      local rq = assert(o:read_request(3))
      assert.equal("\"s1\"", rq.h["if-none-match"])
      o:send("HTTP/1.1 304 Not Modified\r\nETag: \"s1\"\r\nCache-Control: no-cache\r\n\r\n"
        .. "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 9\r\n\r\nsmuggled\n")
      local res = assert(raw.read_response(c, { timeout = 4 }))
      c:close()
      assert.equal(200, res.status)
      assert.equal("stored\n", res.body)
      -- the next request on this route must not get the bytes left on that connection
      local c2 = connect()
      assert(c2:send(GET("/smug/other")))
      local o2 = hostile:accept(2)
      if o2 then
        assert(o2:read_request(3))
        o2:send(answer(200, { "Cache-Control: max-age=60" }, "other\n"))
        o2:close()
      end
      local res2 = assert(raw.read_response(c2, { timeout = 4 }))
      c2:close()
      o:close()
      assert.equal("other\n", res2.body)
    end)
  end)

  describe("a 304 that does not match what is stored", function()
    it("is not passed to a client that sent no conditional: the request goes again without ours", function()
      local hdrs = { "ETag: \"old\"", "Cache-Control: no-cache" }
      through_hostile(GET("/nm/x"), answer(200, hdrs, "old body\n"))
      local c = connect()
      assert(c:send(GET("/nm/x")))
      local o = assert(hostile:accept(3))
      local rq = assert(o:read_request(3))
      assert.equal("\"old\"", rq.h["if-none-match"]) -- ours
      o:send("HTTP/1.1 304 Not Modified\r\nETag: \"new\"\r\n\r\n")
      local o2 = assert(hostile:accept(3), "the request was not sent again")
      local rq2 = assert(o2:read_request(3))
      assert.is_nil(rq2.h["if-none-match"])
      o2:send(answer(200, { "ETag: \"new\"", "Cache-Control: max-age=60" }, "new body\n"))
      local res = assert(raw.read_response(c, { timeout = 4 }))
      c:close()
      o:close()
      o2:close()
      assert.equal(200, res.status)
      assert.equal("new body\n", res.body)
      assert.equal("moongate; fwd=stale; stored", res.h["cache-status"])
      assert.equal("new body\n", from_store(GET("/nm/x")).body)
    end)

    it("a client's own conditional goes with the second request, and its 304 reaches it", function()
      local hdrs = { "ETag: \"o2\"", "Cache-Control: no-cache" }
      through_hostile(GET("/nm/y"), answer(200, hdrs, "old\n"))
      local c = connect()
      assert(c:send(GET("/nm/y", nil, "If-None-Match: \"n2\"\r\n")))
      local o = assert(hostile:accept(3))
      assert.equal("\"o2\"", assert(o:read_request(3)).h["if-none-match"])
      o:send("HTTP/1.1 304 Not Modified\r\nETag: \"n2\"\r\n\r\n")
      local o2 = assert(hostile:accept(3), "the request was not sent again")
      assert.equal("\"n2\"", assert(o2:read_request(3)).h["if-none-match"])
      o2:send("HTTP/1.1 304 Not Modified\r\nETag: \"n2\"\r\n\r\n")
      local res = assert(raw.read_response(c, { timeout = 4 }))
      c:close()
      o:close()
      o2:close()
      assert.equal(304, res.status)
      assert.equal("\"n2\"", res.h["etag"])
    end)
  end)

  describe("variants", function()
    it("a key keeps 16 variants: clients inventing header values replace the least recently used", function()
      local function al(v) return GET("/var/x", nil, "Accept-Language: " .. v .. "\r\n") end
      local hdrs = { "Cache-Control: max-age=60", "Vary: Accept-Language" }
      for i = 1, 16 do
        local r = through_hostile(al("l" .. i), answer(200, hdrs, "v" .. i .. "\n"))
        assert.equal(i == 1 and "moongate; fwd=uri-miss; stored" or "moongate; fwd=vary-miss; stored",
          r.h["cache-status"])
      end
      assert.equal("v1\n", from_store(al("l1")).body) -- l1 is used again: l2 is the least recent
      through_hostile(al("l17"), answer(200, hdrs, "v17\n"))
      local r = through_hostile(al("l2"), answer(200, hdrs, "v2 again\n"))
      assert.equal("moongate; fwd=vary-miss; stored", r.h["cache-status"])
      for _, i in ipairs { 1, 4, 16, 17 } do
        assert.equal("v" .. i .. "\n", from_store(al("l" .. i)).body)
      end
    end)
  end)

  describe("max_object", function()
    it("a chunked body that grows past it reaches the client whole and is not stored", function()
      local piece = string.rep("z", 16000)
      local t = { "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: chunked\r\n\r\n" }
      for _ = 1, 5 do t[#t + 1] = string.format("%x\r\n%s\r\n", #piece, piece) end
      t[#t + 1] = "0\r\n\r\n"
      local a = through_hostile(GET("/big/chunked"), table.concat(t))
      assert.is_true(a.complete)
      assert.equal(string.rep(piece, 5), a.body)
      local b = through_hostile(GET("/big/chunked"), answer(200, { "Cache-Control: max-age=60" }, "small\n"))
      assert.equal("small\n", b.body)
      -- exactly max_object (64k) is stored; one byte more is too big
      local exact = string.rep("e", 65536)
      assert.equal("moongate; fwd=uri-miss; stored",
        through_hostile(GET("/big/exact"), answer(200, { "Cache-Control: max-age=60" }, exact)).h["cache-status"])
      assert.equal(exact, from_store(GET("/big/exact")).body)
      assert.equal("moongate; fwd=uri-miss; detail=too-big",
        through_hostile(GET("/big/over"), answer(200, { "Cache-Control: max-age=60" }, exact .. "e")).h["cache-status"])
    end)
  end)

  describe("the disk store", function()
    local DISK = [[
local mg = require "moongate"
mg.config { workers = ${workers}, access_log = false,
  cache = { memory = "8m", max_object = "64k", path = "cache/", size = "10m" } }
mg.listen { "127.0.0.1:${port}" }
mg.listen { "127.0.0.1:${inner}", name = "inner" }
mg.route { listener = "inner", upstream = mg.upstream "inner" { servers = { "${innerorigin}" } }, cache = true }
mg.route { upstream = mg.upstream "pub" { servers = { "${pub}" } }, cache = true }
]]

    it("names files by hash whatever the key holds, and keeps upstreams apart across a restart", function()
      local dir = helpers.tmpdir()
      local function start()
        return helpers.proxy(DISK, { dir = dir, ports = { "inner" }, vars = { workers = WORKERS,
          pub = pub.addr, innerorigin = innerorigin.addr } })
      end
      local p = start()
      local hs = { { "Host", "disk.test" } }
      local hostile_q = "/who/disk?../../../../../../tmp/x%00/" .. string.rep("..%2f", 1000)
      local ok, err = pcall(function()
        assert.equal("pub disk count=1\n", assert(p:request({ path = hostile_q, headers = hs })).body)
        assert.equal("inner disk count=1\n", assert(p:request({ path = hostile_q, headers = hs }, p.ports.inner)).body)
        local files
        assert(helpers.wait_until(function()
          files = {}
          for line in helpers.lines(helpers.sh("find " .. dir .. " -type f -newer " .. dir .. "/proxy.lua")) do
            if not line:find("/logs/", 1, true) and not line:find("moongate.std", 1, true) then files[#files + 1] = line end
          end
          return #files == 2
        end, 5), "files: " .. table.concat(files or {}, " "))
        for _, f in ipairs(files) do
          assert.truthy(f:match("^" .. dir:gsub("%p", "%%%0") .. "/cache/%x%x/%x+$"), f)
          assert.equal(64, #f:match("/(%x+)$"))
        end
      end)
      local stopped = p:stop()
      assert(ok, err)
      assert.equal(0, stopped)
      p = start()
      ok, err = pcall(function()
        -- from disk (the origins are not asked again), each listener its own upstream's
        assert(helpers.wait_until(function() return p:stderr():find("cache: disk index of", 1, true) end, 5))
        local a = assert(p:request({ path = hostile_q, headers = hs }))
        assert.equal("pub disk count=1\n", a.body)
        local b = assert(p:request({ path = hostile_q, headers = hs }, p.ports.inner))
        assert.equal("inner disk count=1\n", b.body)
      end)
      stopped = p:stop()
      assert(ok, err)
      assert.equal(0, stopped)
    end)
  end)

  describe("a large stored body and clients that do not read", function()
    -- N clients with small receive buffers GET PATH (then /hdrs/after?... on the
    -- same connection, pipelined) and read nothing for a while: moongate's RSS
    -- growth; then every answer is read and checked against SIZE bytes of the
    -- pattern. Output: "grown=<KiB> ok=<answers whole and in order>"
    local SLOW = [=[
import re, socket, sys, time
port, pid, n, path, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
def rss():
    for line in open("/proc/%s/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
pat = b"".join(b"%015d\n" % i for i in range(size // 16 + 1))[:size]
base = rss()
socks = []
for _ in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(("GET %s HTTP/1.1\r\nHost: big.test\r\n\r\nGET /who/after HTTP/1.1\r\nHost: big.test\r\n\r\n" % path).encode())
    socks.append(s)
time.sleep(1.5)
grown = rss() - base
ok = 0
for s in socks:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.settimeout(10)
    buf = b""
    while True:
        d = s.recv(1 << 20)
        if not d:
            break
        buf += d
        if re.search(rb"pub after count=\d+\n$", buf):
            break
    head, _, rest = buf.partition(b"\r\n\r\n")
    body, second = rest[:size], rest[size:]
    if b" 200 " in head.split(b"\r\n")[0] and b"Cache-Status: moongate; hit" in head and body == pat \
            and second.startswith(b"HTTP/1.1 200") and re.search(rb"pub after count=\d+\n$", second):
        ok += 1
    s.close()
print("grown=%d ok=%d" % (grown, ok))
]=]

    it("holds about one high-water mark per client, not a copy of the object, and sends it whole", function()
      local cert, key = helpers.self_signed(helpers.tmpdir(), "big.test")
      local big = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = ${workers}, access_log = false, cache = { memory = "64m", max_object = "4m" } }
mg.listen { "127.0.0.1:${port}" }
mg.listen { "127.0.0.1:${tls}", tls = { cert = "${cert}", key = "${key}" } }
mg.route { path = "/who/after", upstream = mg.upstream "pub" { servers = { "${pub}" } } }
mg.route { upstream = mg.upstream "big" { servers = { "${pub}" } }, cache = true }
]], { ports = { "tls" }, vars = { workers = WORKERS, pub = pub.addr, cert = cert, key = key } })
      local ok, err = pcall(function()
        local path, size = "/hdrs/big?h=Cache-Control:max-age%3D600&n=4000000", 4000000
        local a = assert(big:request({ path = path, headers = { { "Host", "big.test" } } }))
        assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
        assert.equal(size, #a.body)
        local out = helpers.run({ helpers.python, "-c", SLOW, tostring(big.port), tostring(big.pid), "20", path,
          tostring(size) })
        local grown, n = out:match("grown=(%-?%d+) ok=(%d+)")
        assert(grown, out)
        assert.equal(20, tonumber(n))
        -- a copy each would be 20 x 4 MB = 76 MiB (less what the kernel's socket
        -- buffers take); one high-water mark (256 KiB) each is 5 MiB
        if not big:asan() then assert(tonumber(grown) < 20 * 1024, "RSS grew by " .. grown .. " KiB") end
        -- over TLS (another scheme: another key), to a client that reads slowly:
        -- whole, from the store
        local args = { "-k", "--resolve", "big.test:" .. big.ports.tls .. ":127.0.0.1",
          "https://big.test:" .. big.ports.tls .. path }
        local miss = assert(helpers.curl(args))
        assert.equal("moongate; fwd=uri-miss; stored", miss.h["cache-status"])
        table.insert(args, 1, "--limit-rate")
        table.insert(args, 2, "8M")
        local res = assert(helpers.curl(args))
        assert.equal(200, res.status)
        assert.truthy(res.h["cache-status"]:find("^moongate; hit"))
        assert.is_true(res.body == helpers.pattern(size), "the body differs")
        -- a large body answered after a 304 (revalidation) goes out whole too
        local rv = "/hdrs/bigrv?h=Cache-Control:no-cache&h=ETag:%22b1%22&cond=1&n=" .. size
        local hs = { { "Host", "big.test" } }
        assert.equal("moongate; fwd=uri-miss; stored", assert(big:request({ path = rv, headers = hs })).h["cache-status"])
        local again = assert(big:request({ path = rv, headers = hs }))
        assert.equal(200, again.status)
        assert.truthy(again.h["cache-status"]:find("^moongate; fwd=stale; fwd%-status=304; stored; ttl="))
        assert.is_true(again.body == helpers.pattern(size), "the revalidated body differs")
      end)
      local stopped = big:stop()
      assert(ok, err)
      assert.equal(0, stopped)
    end)
  end)

  describe("compression", function()
    local TEXT = "Content-Type: text/plain"
    local body = string.rep("compress me ", 100)

    local function enc(ae)
      local res = through_hostile(GET("/cz", "cz.test", "Accept-Encoding: " .. ae .. "\r\n"), answer(200, { TEXT }, body))
      assert.equal(200, res.status)
      assert.is_true(res.complete)
      return res
    end

    it("a 10 KB Accept-Encoding of junk and malformed weights picks the one well-formed coding", function()
      local junk = {}
      for i = 1, 600 do junk[#junk + 1] = "x-junk-" .. i .. ";q=0.1" end
      local res = enc(table.concat(junk, ", ") .. ", br;q=abc, zstd;q=1.5, gzip;q=0.3")
      assert.equal("gzip", res.h["content-encoding"])
      assert.equal(body, gunzip(res.body))
    end)

    it("identity refused with no coding acceptable: the body as it is", function()
      for _, ae in ipairs { "identity;q=0", "*;q=0", "gzip;q=0, identity;q=0", "gzip;q=0, *" } do
        local res = enc(ae)
        assert.is_nil(res.h["content-encoding"], ae)
        assert.equal(body, res.body, ae)
      end
    end)

    it("an upstream's own Content-Encoding is left alone where nothing decodes", function()
      local bytes = "not really gzip at all"
      local res = through_hostile(GET("/cz", "cz.test", "Accept-Encoding: gzip\r\n"),
        answer(200, { TEXT, "Content-Encoding: gzip" }, bytes))
      assert.equal("gzip", res.h["content-encoding"])
      assert.equal(bytes, res.body)
      local two = through_hostile(GET("/dz", "dz.test"), answer(200, { TEXT, "Content-Encoding: gzip, gzip" }, bytes))
      assert.equal("gzip, gzip", two.h["content-encoding"])
      assert.equal(bytes, two.body)
    end)

    it("a bomb on a decode route is cut short and logged", function()
      -- 1 GB of zeros in 31 KB: any piece of it read at once decodes to more than 16 MiB
      local p = assert(io.popen("head -c 1000000000 /dev/zero | zstd -c -3 -q"))
      local bomb = p:read("*a")
      p:close()
      local mark = raw.log_mark(proxy)
      local res = through_hostile(GET("/dz/bomb", "dz.test"), answer(200, { TEXT, "Content-Encoding: zstd" }, bomb))
      assert.equal(200, res.status)
      assert.is_falsy(res.complete)
      assert.is_true(#res.body < 64 * 1024 * 1024) -- a piece decodes to 16 MiB at most: far from 1 GB
      assert(raw.find_log(proxy, mark, { "decodes to more than" }, 3), raw.log_since(proxy, mark))
    end)
  end)

  describe("with forward_path = \"as_received\"", function()
    local raw_proxy
    lazy_setup(function()
      raw_proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = ${workers}, access_log = false, forward_path = "as_received",
  cache = { memory = "8m", max_object = "64k" } }
mg.listen { "127.0.0.1:${port}" }
mg.route { upstream = mg.upstream "hostile" { servers = { "${hostile}" } }, cache = true }
]], { vars = { workers = WORKERS, hostile = hostile.addr } })
    end)
    lazy_teardown(function() assert.equal(0, raw_proxy:stop()) end)

    -- GET `target` through raw_proxy; the origin (when asked) answers `body`
    local function ask(target, body)
      local c = raw_proxy:connect()
      assert(c:send("GET " .. target .. " HTTP/1.1\r\nHost: raw.test\r\n\r\n"))
      local o = hostile:accept(body and 3 or 0.3)
      local req
      if o then
        req = assert(o:read_request(3))
        o:send("HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: " .. #(body or "")
          .. "\r\n\r\n" .. (body or ""))
      end
      local res = assert(raw.read_response(c, { timeout = 4 }))
      c:close()
      if o then o:close() end
      return res, req
    end

    it("keys on the target the origin gets, not the normalized path it routes on", function()
      local a, ra = ask("//dup/./x", "answer for //dup/./x\n")
      assert.equal("//dup/./x", ra.target)
      assert.equal("answer for //dup/./x\n", a.body)
      -- /dup/x routes the same, but the origin was not asked for it
      local b, rb = ask("/dup/x", "answer for /dup/x\n")
      assert(rb, "/dup/x was answered from the store with: " .. raw.show(b.body))
      assert.equal("/dup/x", rb.target)
      assert.equal("answer for /dup/x\n", b.body)
      assert.equal("moongate; fwd=uri-miss; stored", b.h["cache-status"])
      -- each is a hit of its own now
      assert.equal("answer for //dup/./x\n", (ask("//dup/./x")).body)
      assert.equal("answer for /dup/x\n", (ask("/dup/x")).body)
    end)
  end)
end)
