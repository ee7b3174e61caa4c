-- i13-api: the cache from Lua and from the network (docs/cache.md "Purge and
-- statistics", "Per-route options"): mg.cache.purge / purge_prefix / stats,
-- PURGE from trusted_proxies, the cache_key hook (route cache.key) and the route
-- cache.ttl. The origin's /hdrs/TAG sends the headers its query names and a body
-- that counts how often it was asked for that exact target ("TAG count=N al=-").
local helpers = require "spec.helpers"
local url = require "socket.url"

-- The API is called from a respond route (host api.test): /purge?a=, /prefix?a=,
-- /stats, /badtype: the answer is what the call returned, as text.
local CONF = [[
local mg = require "moongate"
mg.config { workers = 2, access_log = false, trusted_proxies = { "127.0.0.1" },
            cache = { memory = "8m", max_object = "64k" }, shared = { d = "64k" } }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
local function show(a, b) return 200, tostring(a) .. "|" .. tostring(b) end
mg.route { host = "api.test", respond = function(req)
  local op = req.path:match("^/(%w+)")
  if op == "purge" then return show(mg.cache.purge(req:arg("a"))) end
  if op == "prefix" then return show(mg.cache.purge_prefix(req:arg("a"))) end
  if op == "badtype" then
    local a, b = mg.cache.purge(42)
    local c, d = mg.cache.purge_prefix({})
    return 200, tostring(a) .. "|" .. tostring(b) .. "|" .. tostring(c) .. "|" .. tostring(d)
  end
  if op == "timer" then
    -- a timer's purge (a worker's timer, no request): the count it got
    mg.timer.at(0, function(key) mg.shared("d"):set("timer", (mg.cache.purge(key))) end, req:arg("a"))
    mg.sleep(0.2)
    return 200, tostring(mg.shared("d"):get("timer"))
  end
  if op == "stats" then
    local s = assert(mg.cache.stats())
    local keys = {}
    for k, v in pairs(s) do keys[#keys + 1] = k .. "=" .. string.format("%d", v) end
    table.sort(keys)
    return 200, table.concat(keys, " ")
  end
  return 404, "no such op"
end }
-- every object of this route is under "item:<id>", whatever the path
mg.route { host = "keyed.test", upstream = o,
           cache = { key = function(req) return "item:" .. (req:arg("id") or "none") end } }
-- a key function that fails: a table, or an error
mg.route { host = "badkey.test", upstream = o, cache = { key = function(req)
  if req:arg("err") then error("boom in the key function") end
  return { "not", "a", "string" }
end } }
-- a key function that waits before it answers
mg.route { host = "slowkey.test", upstream = o,
           cache = { key = function(req) mg.sleep(0.05) return "slow:" .. req.path:sub(1, 8) end } }
-- a global cache_key hook (mg.on) for one host; a route's own function runs after it and wins
mg.on("cache_key", function(req) if req.host == "global.test" then return "global-key" end end)
mg.route { host = "global.test", upstream = o, cache = true }
-- one that waits past its route's timeouts.hook
mg.route { host = "latekey.test", upstream = o, timeouts = { hook = 0.1 },
           cache = { key = function(req) mg.sleep(5) return "never" end } }
mg.route { host = "ttl.test", upstream = o, cache = { ttl = { [200] = 60, [404] = 10 } } }
mg.route { host = "get.test", methods = { "GET", "HEAD" }, upstream = o, cache = true }
mg.route { upstream = o, cache = true }
]]

-- /hdrs/TAG with these response headers ({ "Name:Value", ... })
local function target(tag, hdrs, extra)
  local q = {}
  for _, h in ipairs(hdrs or {}) do q[#q + 1] = "h=" .. url.escape(h) end
  if extra then q[#q + 1] = extra end
  return "/hdrs/" .. tag .. (#q > 0 and ("?" .. table.concat(q, "&")) or "")
end

local MAXAGE = { "Cache-Control:max-age=60" }

describe("cache api", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "o" })
    proxy = helpers.proxy(CONF, { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  local function req(method, host, path, headers)
    local hs = { { "Host", host } }
    for _, h in ipairs(headers or {}) do hs[#hs + 1] = h end
    return assert(proxy:request({ method = method, path = path, headers = hs }))
  end
  local function get(host, path, headers) return req("GET", host, path, headers) end
  local function api(op, arg)
    local r = get("api.test", "/" .. op .. (arg and ("?a=" .. url.escape(arg)) or ""))
    assert.equal(200, r.status)
    return r.body
  end

  it("mg.cache.purge removes a key given as a URL (host case, default port, path normalized) or raw", function()
    local p = target("pu", MAXAGE)
    assert.equal("pu count=1 al=-\n", get("cache.test", p).body)
    assert.equal("pu count=1 al=-\n", get("cache.test", p).body) -- stored
    -- the URL form: the key a GET of it is stored under
    assert.equal("1|nil", api("purge", "http://CACHE.test:80/hdrs/./pu" .. p:match("%?.*$")))
    assert.equal("0|nil", api("purge", "http://cache.test" .. p)) -- gone already
    local again = get("cache.test", p)
    assert.equal("pu count=2 al=-\n", again.body)
    assert.equal("moongate; fwd=uri-miss; stored", again.h["cache-status"])
    -- the raw key: the URL's, a space and the upstream's name
    assert.equal("0|nil", api("purge", "GET http://cache.test" .. p))
    assert.equal("1|nil", api("purge", "GET http://cache.test" .. p .. " o"))
    assert.equal("pu count=3 al=-\n", get("cache.test", p).body)
    -- a URL that does not parse
    assert.equal("nil|mg.cache.purge: not a URL moongate can make a key of", api("purge", "http://bad host/x"))
  end)

  it("mg.cache.purge removes every variant of the key", function()
    local p = target("pv", { "Cache-Control:max-age=60", "Vary:Accept-Language" })
    get("cache.test", p, { { "Accept-Language", "en" } })
    get("cache.test", p, { { "Accept-Language", "fr" } })
    assert.equal("pv count=2 al=fr\n", get("cache.test", p, { { "Accept-Language", "fr" } }).body)
    assert.equal("2|nil", api("purge", "http://cache.test" .. p))
    assert.equal("pv count=3 al=en\n", get("cache.test", p, { { "Accept-Language", "en" } }).body)
  end)

  it("mg.cache.purge_prefix removes every key under a URL or key prefix, and only those", function()
    local a, b, other = target("px-a", MAXAGE), target("px-b", MAXAGE), target("py", MAXAGE)
    for _, p in ipairs { a, b, other } do get("cache.test", p) end
    assert.equal("2|nil", api("prefix", "http://Cache.Test/hdrs/px-"))
    assert.equal("px-a count=2 al=-\n", get("cache.test", a).body)
    assert.equal("px-b count=2 al=-\n", get("cache.test", b).body)
    assert.equal("py count=1 al=-\n", get("cache.test", other).body) -- still stored
    assert.equal("2|nil", api("prefix", "GET http://cache.test/hdrs/px-")) -- a raw key prefix
    assert.equal("0|nil", api("prefix", "GET http://cache.test/hdrs/px-"))
  end)

  it("errors come back as nil, err", function()
    assert.equal("nil|mg.cache.purge: the key must be a string|nil|mg.cache.purge_prefix: the prefix must be a string",
      api("badtype"))
  end)

  it("mg.cache.stats counts exactly a known sequence", function()
    api("prefix", "") -- empties the store
    local function stats()
      local t = {}
      for k, v in api("stats"):gmatch("(%w[%w_]*)=(%d+)") do t[k] = tonumber(v) end
      return t
    end
    local s0 = stats()
    assert.equal(0, s0.objects)
    assert.equal(0, s0.bytes)
    assert.equal(8 * 1024 * 1024, s0.cap)
    local p1, p2 = target("st1", MAXAGE), target("st2", { "Cache-Control:no-store" })
    get("cache.test", p1)         -- lookup, miss, stored
    get("cache.test", p1)         -- lookup, hit
    get("cache.test", p2)         -- lookup, miss, not stored
    req("HEAD", "cache.test", p1) -- lookup, hit
    get("cache.test", p2)         -- lookup, miss, not stored
    local s1 = stats()
    assert.equal(1, s1.objects)
    assert.is_true(s1.bytes > 0 and s1.bytes <= s1.cap)
    assert.equal(5, s1.lookups - s0.lookups)
    assert.equal(2, s1.hits - s0.hits)
    assert.equal(3, s1.misses - s0.misses)
    assert.equal(s1.lookups - s1.hits, s1.misses)
    assert.equal(1, s1.stores - s0.stores)
    assert.equal(0, s1.evictions - s0.evictions)
    assert.equal(0, s1.rejected - s0.rejected)
    assert.equal(0, s1.too_big - s0.too_big)
    assert.equal(0, s1.replaced - s0.replaced)
  end)

  it("PURGE from a trusted proxy removes its URL's key (200, then 404) and never reaches the origin", function()
    local p = target("pg", MAXAGE)
    get("cache.test", p)
    local r = req("PURGE", "cache.test", p)
    assert.equal(200, r.status)
    assert.truthy(r.body:find("purged: 1\n", 1, true))
    local r2 = req("PURGE", "cache.test", p)
    assert.equal(404, r2.status)
    local g = get("cache.test", p)
    assert.equal("pg count=2 al=-\n", g.body) -- asked twice by GETs, never by the PURGEs
    assert.equal("moongate; fwd=uri-miss; stored", g.h["cache-status"])
    assert.equal(2, origin:count_path(p))
  end)

  it("PURGE reaches the caching route a GET would take, even one limited to GET and HEAD", function()
    local p = target("pgm", MAXAGE)
    get("get.test", p)
    assert.equal(200, req("PURGE", "get.test", p).status)
    assert.equal("pgm count=2 al=-\n", get("get.test", p).body)
  end)

  it("PURGE from a peer not in trusted_proxies is refused with 403 and removes nothing", function()
    local p = target("pgu", MAXAGE)
    get("cache.test", p)
    local c = helpers.connect(proxy.port, 5, nil, "127.0.0.2")
    local r = assert(c:request({ method = "PURGE", path = p, headers = { { "Host", "cache.test" } } }))
    c:close()
    assert.equal(403, r.status)
    local g = get("cache.test", p)
    assert.equal("pgu count=1 al=-\n", g.body) -- still stored
    assert.truthy(g.h["cache-status"]:find("^moongate; hit"))
    assert.truthy(proxy:stderr():find("PURGE from 127.0.0.2", 1, true))
  end)

  it("a cache_key function's key is the primary key: two URLs share one object, HEAD too", function()
    local a = target("k1", MAXAGE, "id=7")
    local b = target("k2", MAXAGE, "id=7")
    local first = get("keyed.test", a)
    assert.equal("k1 count=1 al=-\n", first.body)
    assert.equal("moongate; fwd=uri-miss; stored", first.h["cache-status"])
    local second = get("keyed.test", b)
    assert.equal("k1 count=1 al=-\n", second.body) -- k2's URL answered with k1's object
    assert.truthy(second.h["cache-status"]:find("^moongate; hit"))
    local head = req("HEAD", "keyed.test", target("k3", MAXAGE, "id=7"))
    assert.equal(200, head.status)
    assert.truthy(head.h["cache-status"]:find("^moongate; hit"))
    assert.equal(0, origin:count_path(b))
    -- no scheme or host is added: the raw key purges it
    assert.equal("1|nil", api("purge", "item:7"))
    assert.equal("k2 count=1 al=-\n", get("keyed.test", b).body)
    -- PURGE computes the key with the same function
    assert.equal(200, req("PURGE", "keyed.test", "/anything?id=7").status)
    assert.equal(404, req("PURGE", "keyed.test", "/anything?id=7").status)
  end)

  it("a key function may wait; mg.on('cache_key') keys every caching route; a timer purges", function()
    local a, b = target("sk1", MAXAGE), target("sk2", MAXAGE)
    assert.equal("sk1 count=1 al=-\n", get("slowkey.test", a).body)
    local hit = get("slowkey.test", b) -- both paths begin with "/hdrs/sk": one key
    assert.equal("sk1 count=1 al=-\n", hit.body)
    assert.truthy(hit.h["cache-status"]:find("^moongate; hit"))
    assert.equal(200, req("PURGE", "slowkey.test", b).status)
    assert.equal("sk2 count=1 al=-\n", get("slowkey.test", b).body)
    local g1, g2 = target("g1", MAXAGE), target("g2", MAXAGE)
    assert.equal("g1 count=1 al=-\n", get("global.test", g1).body)
    assert.equal("g1 count=1 al=-\n", get("global.test", g2).body)
    assert.equal("1", api("timer", "global-key"))
    assert.equal("g2 count=1 al=-\n", get("global.test", g2).body)
  end)

  it("a key function that returns no string or fails leaves the default key, with a log line", function()
    local p = target("bk", MAXAGE)
    assert.equal("bk count=1 al=-\n", get("badkey.test", p).body)
    local hit = get("badkey.test", p)
    assert.equal("bk count=1 al=-\n", hit.body)
    assert.truthy(hit.h["cache-status"]:find("^moongate; hit"))
    local e = target("bke", MAXAGE, "err=1")
    assert.equal("bke count=1 al=-\n", get("badkey.test", e).body)
    assert.equal("bke count=1 al=-\n", get("badkey.test", e).body)
    -- stored under the default keys
    assert.equal("1|nil", api("purge", "http://badkey.test" .. p))
    assert.equal("1|nil", api("purge", "http://badkey.test" .. e))
    -- past timeouts.hook: dropped, the default key
    local l = target("lk", MAXAGE)
    assert.equal("lk count=1 al=-\n", get("latekey.test", l).body)
    assert.equal("1|nil", api("purge", "http://latekey.test" .. l))
    local log = proxy:stderr()
    assert.truthy(log:find("cache_key hook of route %d+ took longer than timeouts.hook: the default key is used"))
    assert.truthy(log:find("cache_key hook must return a string or nil, got a table", 1, true))
    assert.truthy(log:find("boom in the key function", 1, true))
    assert.truthy(log:find("the default key is used", 1, true))
  end)

  it("cache.ttl gives a 200 and a 404 without freshness headers their lifetimes", function()
    local ok, nf = target("t200"), target("t404", { "status:404" })
    local a = get("ttl.test", ok)
    assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
    local b = get("ttl.test", ok)
    assert.equal("t200 count=1 al=-\n", b.body)
    local age = tonumber(b.h["age"])
    assert.equal("moongate; hit; ttl=" .. (60 - age), b.h["cache-status"])
    assert.equal(404, get("ttl.test", nf).status)
    local d = get("ttl.test", nf)
    assert.equal(404, d.status)
    assert.equal("t404 count=1 al=-\n", d.body)
    assert.equal("moongate; hit; ttl=" .. (10 - tonumber(d.h["age"])), d.h["cache-status"])
    -- a route without ttl: the same response is stale at once (no Last-Modified)
    local plain = target("t200p")
    get("cache.test", plain)
    local e = get("cache.test", plain)
    assert.equal("t200p count=2 al=-\n", e.body)
    -- an explicit lifetime and no-store still win over the ttl
    local ma = target("t200m", { "Cache-Control:max-age=5" })
    get("ttl.test", ma)
    local m2 = get("ttl.test", ma)
    assert.equal("moongate; hit; ttl=" .. (5 - tonumber(m2.h["age"])), m2.h["cache-status"])
    local ns = target("t200n", { "Cache-Control:no-store" })
    assert.equal("moongate; fwd=uri-miss; detail=no-store", get("ttl.test", ns).h["cache-status"])
    assert.equal("t200n count=2 al=-\n", get("ttl.test", ns).body)
  end)
end)

describe("cache api without a cache", function()
  it("mg.cache.* answer nil, err", function()
    local proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false }
mg.listen { "127.0.0.1:${port}" }
mg.route { respond = function(req)
  local a, b = mg.cache.stats()
  local c, d = mg.cache.purge("x")
  return 200, tostring(a) .. "|" .. tostring(b) .. "|" .. tostring(c) .. "|" .. tostring(d)
end }
]])
    local r = assert(proxy:request({ path = "/" }))
    helpers.teardown(proxy)
    assert.equal("nil|mg.cache.stats: no cache is configured|nil|mg.cache.purge: no cache is configured", r.body)
  end)
end)
