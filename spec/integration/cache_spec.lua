-- The response cache's memory store (docs/cache.md): a route with cache = true
-- stores what RFC 9111 lets a shared cache store and answers from it, with Age
-- and Cache-Status (RFC 9211). The origin's /hdrs/TAG path sends the response
-- headers the query names and a body that counts how often the origin was asked
-- for that exact target, so every answer shows whether it came from the store.
local helpers = require "spec.helpers"
local url = require "socket.url"

local function conf(extra)
  return [[
local mg = require "moongate"
mg.config { workers = 2, access_log = false, cache = { memory = "8m", max_object = "64k" } }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
mg.route { host = "plain.test", upstream = o }
mg.route { upstream = o, cache = true }
]] .. (extra or "")
end

-- /hdrs/TAG with these response headers ({ "Name:Value", ... }) and query extras
local function target(tag, hdrs, extra)
  local q = {}
  for _, h in ipairs(hdrs) do q[#q + 1] = "h=" .. url.escape(h) end
  if extra then q[#q + 1] = extra end
  return "/hdrs/" .. tag .. (#q > 0 and ("?" .. table.concat(q, "&")) or "")
end

describe("cache", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "o" })
    proxy = helpers.proxy(conf(), { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  local function get(path, headers, method)
    return assert(proxy:request({ method = method, path = path, headers = headers }))
  end

  it("stores a miss and answers the next request from the store with Age and Cache-Status", function()
    local p = target("hit", { "Cache-Control:max-age=60" })
    local a = get(p)
    assert.equal(200, a.status)
    assert.equal("hit count=1 al=-\n", a.body)
    assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
    assert.is_nil(a.h["age"])
    local b = get(p)
    assert.equal(200, b.status)
    assert.equal("hit count=1 al=-\n", b.body) -- the origin was not asked again
    local age = tonumber(b.h["age"])
    assert.is_true(age == 0 or age == 1, "Age " .. tostring(b.h["age"]))
    assert.equal("moongate; hit; ttl=" .. (60 - age), b.h["cache-status"])
    assert.equal("max-age=60", b.h["cache-control"])
    assert.equal(tostring(#a.body), b.h["content-length"])
    assert.equal(a.h["date"], b.h["date"]) -- the stored response's Date, not the hit's
  end)

  it("a route without cache neither stores nor says Cache-Status", function()
    local p = target("plain", { "Cache-Control:max-age=60" })
    local hs = { { "Host", "plain.test" } }
    assert.equal("plain count=1 al=-\n", get(p, hs).body)
    local b = get(p, hs)
    assert.equal("plain count=2 al=-\n", b.body)
    assert.is_nil(b.h["cache-status"])
  end)

  it("goes to the origin again once max-age has passed, and stores the new response", function()
    local p = target("expiry", { "Cache-Control:max-age=1" })
    assert.equal("expiry count=1 al=-\n", get(p).body)
    assert.equal("expiry count=1 al=-\n", get(p).body)
    helpers.sleep(2.2)
    local c = get(p)
    assert.equal("expiry count=2 al=-\n", c.body)
    assert.equal("moongate; fwd=stale; stored", c.h["cache-status"])
    local d = get(p)
    assert.equal("expiry count=2 al=-\n", d.body)
    assert.truthy(d.h["cache-status"]:find("^moongate; hit; ttl="))
  end)

  it("does not store no-store, private or uncacheable responses", function()
    for _, case in ipairs {
      { "nostore", "Cache-Control:no-store", "no-store" },
      { "private", "Cache-Control:private, max-age=60", "private" },
      { "created", "status:201", "status" }, -- 201: not a status this cache stores
    } do
      local p = target(case[1], { case[2] })
      local a = get(p)
      assert.equal(case[1] .. " count=1 al=-\n", a.body)
      assert.equal("moongate; fwd=uri-miss; detail=" .. case[3], a.h["cache-status"])
      local b = get(p)
      assert.equal(case[1] .. " count=2 al=-\n", b.body)
      assert.equal("moongate; fwd=uri-miss; detail=" .. case[3], b.h["cache-status"])
    end
  end)

  it("does not store a request's no-store, and answers only-if-cached with 504 on a miss", function()
    local p = target("reqns", { "Cache-Control:max-age=60" })
    local a = get(p, { { "Cache-Control", "no-store" } })
    assert.equal("moongate; fwd=uri-miss; detail=no-store", a.h["cache-status"])
    assert.equal(504, get(target("oic", { "Cache-Control:max-age=60" }), { { "Cache-Control", "only-if-cached" } }).status)
    assert.equal("reqns count=2 al=-\n", get(p).body)
    local c = get(p, { { "Cache-Control", "only-if-cached" } })
    assert.equal(200, c.status)
    assert.equal("reqns count=2 al=-\n", c.body)
  end)

  it("keeps one variant per value of the headers Vary names", function()
    local p = target("vary", { "Cache-Control:max-age=60", "Vary:Accept-Language" })
    local en, fr = { { "Accept-Language", "en" } }, { { "Accept-Language", "fr" } }
    local a = get(p, en)
    assert.equal("vary count=1 al=en\n", a.body)
    assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
    local b = get(p, fr)
    assert.equal("vary count=2 al=fr\n", b.body)
    assert.equal("moongate; fwd=vary-miss; stored", b.h["cache-status"])
    local c = get(p, en)
    assert.equal("vary count=1 al=en\n", c.body)
    assert.truthy(c.h["cache-status"]:find("^moongate; hit"))
    assert.equal("vary count=2 al=fr\n", get(p, fr).body)
    local d = get(p) -- no Accept-Language: a variant of its own
    assert.equal("vary count=3 al=-\n", d.body)
    assert.equal("moongate; fwd=vary-miss; stored", d.h["cache-status"])
  end)

  it("does not store a 204 (its end passes no filter) and says so", function()
    local p = target("nocontent", { "Cache-Control:max-age=60", "status:204" })
    local a = get(p)
    assert.equal(204, a.status)
    assert.equal("moongate; fwd=uri-miss; detail=status", a.h["cache-status"])
    assert.equal("moongate; fwd=uri-miss; detail=status", get(p).h["cache-status"])
  end)

  it("an unsafe method answered 2xx/3xx removes the stored target, and Location's and Content-Location's", function()
    local p = target("inv", { "Cache-Control:max-age=60" })
    local p2 = target("inv2", { "Cache-Control:max-age=60" })
    local p3 = target("inv3", { "Cache-Control:max-age=60" })
    for _, q in ipairs { p, p2, p3 } do
      get(q)
      assert.truthy(get(q).h["cache-status"]:find("^moongate; hit"))
    end
    -- a 404 to a POST invalidates nothing
    local failed = "/hdrs/inv?h=" .. url.escape("status:404")
    assert.equal(404, assert(proxy:request({ method = "POST", path = failed, body = "x" })).status)
    assert.truthy(get(p).h["cache-status"]:find("^moongate; hit"))
    -- a POST to the target itself
    assert.equal(200, assert(proxy:request({ method = "POST", path = p, body = "x" })).status)
    local a = get(p)
    assert.equal("inv count=3 al=-\n", a.body) -- GET, POST, GET
    assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
    -- a DELETE elsewhere whose Location and Content-Location name the others
    local del = target("other", { "Location:" .. p2, "Content-Location:http://test.local" .. p3 })
    assert.equal(200, assert(proxy:request({ method = "DELETE", path = del })).status)
    assert.equal("moongate; fwd=uri-miss; stored", get(p2).h["cache-status"])
    assert.equal("moongate; fwd=uri-miss; stored", get(p3).h["cache-status"])
    -- another origin's Location removes nothing
    local p4 = target("inv4", { "Cache-Control:max-age=60" })
    get(p4)
    local del2 = target("other2", { "Location:http://elsewhere.test" .. p4 })
    assert.equal(200, assert(proxy:request({ method = "DELETE", path = del2 })).status)
    assert.truthy(get(p4).h["cache-status"]:find("^moongate; hit"))
  end)

  it("revalidates a stale response with its ETag: a 304 updates the stored headers and answers from the store", function()
    local p = target("reval", { "Cache-Control:max-age=1", 'ETag:"r1"' }, "cond=1")
    local a = get(p)
    assert.equal("reval count=1 al=-\n", a.body)
    assert.equal("1", a.h["x-count"])
    helpers.sleep(2.2)
    local b = get(p)
    assert.equal(200, b.status)
    assert.equal("reval count=1 al=-\n", b.body) -- the stored body
    assert.equal("2", b.h["x-count"]) -- the 304's header replaced the stored one
    assert.equal(tostring(#a.body), b.h["content-length"])
    assert.truthy(b.h["cache-status"]:find("^moongate; fwd=stale; fwd%-status=304; stored; ttl=[01]$"), b.h["cache-status"])
    local c = get(p)
    assert.equal("reval count=1 al=-\n", c.body)
    assert.equal("2", c.h["x-count"])
    assert.truthy(c.h["cache-status"]:find("^moongate; hit; ttl="))
    -- the client's own If-None-Match does not go to the origin: ours does, and
    -- the client's is answered from the store
    helpers.sleep(2.2)
    local d = get(p, { { "If-None-Match", '"zzz"' } })
    assert.equal(200, d.status)
    assert.equal("reval count=1 al=-\n", d.body)
    assert.equal("3", d.h["x-count"])
    helpers.sleep(2.2)
    local e = get(p, { { "If-None-Match", '"r1"' } })
    assert.equal(304, e.status)
    assert.is_nil(e.h["x-count"]) -- a 304 carries only the validator and cache headers
    assert.equal('"r1"', e.h["etag"])
    assert.truthy(e.h["cache-status"]:find("^moongate; fwd=stale; fwd%-status=304; stored"))
  end)

  it("a stale response the origin changed is replaced by the new one", function()
    local p = target("changed", { "Cache-Control:max-age=1", 'ETag:"c1"' }) -- no cond: always 200
    assert.equal("changed count=1 al=-\n", get(p).body)
    helpers.sleep(2.2)
    local b = get(p)
    assert.equal("changed count=2 al=-\n", b.body)
    assert.equal("moongate; fwd=stale; stored", b.h["cache-status"])
    assert.equal("changed count=2 al=-\n", get(p).body)
  end)

  it("does not store Vary: *", function()
    local p = target("varystar", { "Cache-Control:max-age=60", "Vary:*" })
    assert.equal("moongate; fwd=uri-miss; detail=vary-star", get(p).h["cache-status"])
    assert.equal("varystar count=2 al=-\n", get(p).body)
  end)

  it("answers a HEAD from a stored GET, and does not store a HEAD's answer", function()
    local p = target("head", { "Cache-Control:max-age=60" })
    local h1 = get(p, nil, "HEAD")
    assert.equal("moongate; fwd=uri-miss", h1.h["cache-status"])
    local g = get(p)
    assert.equal("head count=2 al=-\n", g.body) -- the HEAD stored nothing
    assert.equal("moongate; fwd=uri-miss; stored", g.h["cache-status"])
    local h2 = get(p, nil, "HEAD")
    assert.equal(200, h2.status)
    assert.equal("", h2.body)
    assert.equal(tostring(#g.body), h2.h["content-length"])
    assert.truthy(h2.h["cache-status"]:find("^moongate; hit; ttl="))
    assert.equal("head count=2 al=-\n", get(p).body)
  end)

  it("answers the client's If-None-Match and If-Modified-Since from the store with 304", function()
    local lm = "Sun, 06 Nov 1994 08:49:37 GMT"
    local p = target("cond", { "Cache-Control:max-age=60", 'ETag:"v1"', "Last-Modified:" .. lm })
    assert.equal("cond count=1 al=-\n", get(p).body)
    local c = proxy:connect()
    local r304 = assert(c:request({ path = p, headers = { { "If-None-Match", '"v1"' } } }))
    assert.equal(304, r304.status)
    assert.equal('"v1"', r304.h["etag"])
    assert.equal("max-age=60", r304.h["cache-control"])
    assert.truthy(r304.h["cache-status"]:find("^moongate; hit; ttl="))
    assert.truthy(r304.h["age"])
    assert.is_nil(r304.h["content-length"])
    -- the connection goes on after a 304 without a body
    local other = assert(c:request({ path = p, headers = { { "If-None-Match", '"v2"' } } }))
    assert.equal(200, other.status)
    assert.equal("cond count=1 al=-\n", other.body)
    local ims = assert(c:request({ path = p, headers = { { "If-Modified-Since", "Mon, 07 Nov 1994 00:00:00 GMT" } } }))
    assert.equal(304, ims.status)
    local old = assert(c:request({ path = p, headers = { { "If-Modified-Since", "Sat, 05 Nov 1994 00:00:00 GMT" } } }))
    assert.equal(200, old.status)
    assert.equal("cond count=1 al=-\n", old.body)
    c:close()
  end)

  it("streams a body over max_object whole and does not store it", function()
    local n = 100000 -- max_object is 64k
    for _, extra in ipairs { "n=" .. n, "n=" .. n .. "&chunked=1" } do
      local p = target("big", { "Cache-Control:max-age=60" }, extra)
      local a = get(p)
      assert.equal(200, a.status)
      assert.equal(n, #a.body)
      assert.equal(helpers.sha256(helpers.pattern(n)), helpers.sha256(a.body))
      local b = get(p)
      assert.equal(helpers.sha256(helpers.pattern(n)), helpers.sha256(b.body))
      assert.equal("moongate; fwd=uri-miss", (b.h["cache-status"]:gsub("; detail=too%-big", ""):gsub("; stored", "")))
      assert.is_nil(b.h["cache-status"]:find("hit", 1, true), "stored: " .. b.h["cache-status"])
    end
    assert.equal("moongate; fwd=uri-miss; detail=too-big",
                 get(target("big", { "Cache-Control:max-age=60" }, "n=" .. n)).h["cache-status"])
    -- a body just under max_object is stored, chunked or not
    local p = target("fits", { "Cache-Control:max-age=60" }, "n=60000&chunked=1")
    assert.equal("moongate; fwd=uri-miss; stored", get(p).h["cache-status"])
    local h = get(p)
    assert.truthy(h.h["cache-status"]:find("^moongate; hit"))
    assert.equal("60000", h.h["content-length"])
    assert.equal(helpers.sha256(helpers.pattern(60000)), helpers.sha256(h.body))
  end)

  it("one store for both workers: 40 connections at once all get the stored object", function()
    local p = target("shared", { "Cache-Control:max-age=60" })
    assert.equal("shared count=1 al=-\n", get(p).body)
    local conns = {}
    for i = 1, 40 do
      conns[i] = proxy:connect()
      assert(conns[i]:send(helpers.request_bytes({ path = p })))
    end
    for i = 1, 40 do
      local res = assert(conns[i]:response())
      assert.equal("shared count=1 al=-\n", res.body)
      assert.truthy(res.h["cache-status"]:find("^moongate; hit"))
      -- and a second request on the same connection
      local again = assert(conns[i]:request({ path = p }))
      assert.equal("shared count=1 al=-\n", again.body)
      conns[i]:close()
    end
    -- objects stored by one connection are hits on the others, key after key
    for k = 1, 20 do
      local q = target("shared" .. k, { "Cache-Control:max-age=60" })
      assert.equal("shared" .. k .. " count=1 al=-\n", get(q).body)
      for _ = 1, 3 do assert.equal("shared" .. k .. " count=1 al=-\n", get(q).body) end
    end
  end)

  it("keeps its objects and keeps working across a reload", function()
    local p = target("reload", { "Cache-Control:max-age=60" })
    assert.equal("reload count=1 al=-\n", get(p).body)
    local text = conf('mg.route { path = "/gen", respond = { status = 200, body = "2\\n" } }\n')
    proxy:reload(helpers.expand(text, { port = proxy.port, origin = origin.addr }), function()
      local r = proxy:request({ path = "/gen" })
      return r and r.body == "2\n"
    end)
    local b = get(p)
    assert.equal("reload count=1 al=-\n", b.body)
    assert.truthy(b.h["cache-status"]:find("^moongate; hit"))
    local q = target("reload2", { "Cache-Control:max-age=60" })
    assert.equal("reload2 count=1 al=-\n", get(q).body)
    assert.equal("reload2 count=1 al=-\n", get(q).body)
    proxy:assert_alive()
  end)

  it("refuses a config with the disk store or route options not yet implemented", function()
    for _, bad in ipairs {
      { 'mg.config { cache = { path = "cache/" } }', "not implemented yet" },
      { 'mg.config { cache = { memory = "1m", max_object = "1m" } }', "at most half" },
      { 'mg.config { cache = { memory = "lots" } }', "not a size" },
      { 'mg.route { upstream = mg.upstream "u" { servers = { "127.0.0.1:1" } }, cache = { ttl = 1 } }', "'ttl' must be a table" },
      { 'mg.route { respond = { status = 200 }, cache = true }', "needs an upstream" },
    } do
      local dir = helpers.tmpdir()
      helpers.write_file(dir .. "/proxy.lua", 'local mg = require "moongate"\nmg.listen { "127.0.0.1:1" }\n' .. bad[1] .. "\n")
      local out, rc = helpers.moongate({ "-t", "-c", dir .. "/proxy.lua" })
      assert.is_not.equal(0, rc)
      assert.truthy(out:find(bad[2], 1, true), out)
    end
  end)
end)

describe("cache under load", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "o" })
    -- a store far smaller than what is asked for: every round evicts and replaces
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 2, access_log = false, cache = { memory = "256k", max_object = "16k" } }
mg.listen { "127.0.0.1:${port}" }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } }, cache = true }
]], { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("30 connections x 20 rounds over 80 keys on 2 workers: every body whole, hits and misses both", function()
    local conns, sizes, hits, misses = {}, {}, 0, 0
    for i = 1, 30 do conns[i] = proxy:connect() end
    for k = 1, 80 do sizes[k] = 1000 + (k * 977) % 15000 end
    for round = 1, 20 do
      local asked = {}
      for i = 1, 30 do
        local k = (i * 7 + round * 13) % 80 + 1
        if round % 3 == 0 then k = (i % 8) + 1 end -- a few popular keys
        asked[i] = k
        local p = "/hdrs/s" .. k .. "?h=" .. url.escape("Cache-Control:max-age=60") .. "&n=" .. sizes[k]
        assert(conns[i]:send(helpers.request_bytes({ path = p })))
      end
      for i = 1, 30 do
        local res = assert(conns[i]:response())
        assert.equal(200, res.status)
        local n = sizes[asked[i]]
        assert.equal(n, #res.body)
        assert.equal(helpers.pattern(n), res.body)
        if res.h["cache-status"]:find("^moongate; hit") then hits = hits + 1 else misses = misses + 1 end
      end
    end
    for i = 1, 30 do conns[i]:close() end
    assert.is_true(hits > 0 and misses > 0, hits .. " hits, " .. misses .. " misses")
    proxy:assert_alive()
  end)
end)

describe("cache stale-if-error", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "o", status_file = true })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, cache = { memory = "1m", max_object = "64k" } }
mg.listen { "127.0.0.1:${port}" }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } }, cache = true }
]], { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  local function get(path)
    return assert(proxy:request({ path = path }))
  end

  it("answers a stale response when the origin fails, only when the response allows it", function()
    local sie = target("sie", { "Cache-Control:max-age=1, stale-if-error=60" })
    local strict = target("strict", { "Cache-Control:max-age=1, stale-if-error=60, must-revalidate" })
    local plain = target("plain", { "Cache-Control:max-age=1" })
    for _, p in ipairs { sie, strict, plain } do get(p) end
    helpers.sleep(2.2)
    origin:force_status(500)
    local a = get(sie)
    assert.equal(200, a.status)
    assert.equal("sie count=1 al=-\n", a.body)
    assert.truthy(a.h["cache-status"]:find("^moongate; hit; fwd=stale; fwd%-status=500; ttl=%-[12]$"), a.h["cache-status"])
    assert.equal(500, get(strict).status) -- must-revalidate: the failure is passed on
    assert.equal(500, get(plain).status)
    origin:force_status(nil)
    -- the origin gone: moongate's own 502 is replaced the same way
    origin:stop()
    local b = get(sie)
    assert.equal(200, b.status)
    assert.equal("sie count=1 al=-\n", b.body)
    assert.truthy(b.h["cache-status"]:find("fwd%-status=502"), b.h["cache-status"])
    assert.equal(502, get(plain).status)
  end)
end)
