-- Request collapsing and stale-while-revalidate (docs/cache.md): concurrent
-- misses of one key on a caching route make one origin fetch, the others wait
-- for it (route cache lock) and answer from what it stored; a stale response
-- within stale-while-revalidate answers at once and is refreshed once in the
-- background. The origin's /slow-hdrs/S/TAG path answers as /hdrs/TAG after S
-- seconds, and its request log counts how often it was asked.
local helpers = require "spec.helpers"
local url = require "socket.url"

local function conf(workers)
  return [[
local mg = require "moongate"
mg.config { workers = ]] .. workers .. [[, access_log = false, cache = { memory = "8m", max_object = "1m" } }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" }, keepalive = 128 }
mg.route { host = "nolock.test", upstream = o, cache = { lock = false } }
mg.route { host = "short.test", upstream = o, cache = { lock = { timeout = 0.2 } } }
mg.route { host = "keyed.test", upstream = o,
           cache = { key = function(req) mg.sleep(0.01) return "keyed:" .. req.path end } }
mg.route { upstream = o, cache = true }
]]
end

-- /slow-hdrs/S/TAG with these response headers and query extras
local function target(delay, tag, hdrs, extra)
  local q = {}
  for _, h in ipairs(hdrs) do q[#q + 1] = "h=" .. url.escape(h) end
  if extra then q[#q + 1] = extra end
  return "/slow-hdrs/" .. delay .. "/" .. tag .. (#q > 0 and ("?" .. table.concat(q, "&")) or "")
end

-- n requests of path at once, each on its own connection: the responses in order
local function burst(proxy, n, path, host)
  local clients, out = {}, {}
  local headers = host and { { "Host", host } } or nil
  for i = 1, n do clients[i] = proxy:connect() end
  for _, c in ipairs(clients) do assert(c:send(helpers.request_bytes({ path = path, headers = headers }))) end
  for i, c in ipairs(clients) do
    out[i] = assert(c:response())
    c:close()
  end
  return out
end

local function tally(responses)
  local t = {}
  for _, r in ipairs(responses) do
    local k = (r.h["cache-status"] or "-"):gsub("ttl=%-?%d+", "ttl=N")
    t[k] = (t[k] or 0) + 1
  end
  return t
end

for _, workers in ipairs({ 1, 2 }) do
  describe("cache request collapsing (" .. workers .. " worker(s))", function()
    local origin, proxy

    lazy_setup(function()
      origin = helpers.origin({ name = "o" })
      proxy = helpers.proxy(conf(workers), { vars = { origin = origin.addr } })
    end)

    lazy_teardown(function()
      helpers.teardown(proxy)
    end)

    it("50 concurrent misses of one URL make one origin fetch, and all 50 get its exact body", function()
      local p = target(0.3, "c50-" .. workers, { "Cache-Control:max-age=60" }, "n=40000")
      local rs = burst(proxy, 50, p)
      local want = helpers.pattern(40000)
      for i, r in ipairs(rs) do
        assert.equal(200, r.status, "response " .. i)
        assert.equal(want, r.body, "response " .. i)
        assert.equal("1", r.h["x-count"], "response " .. i) -- all from the one fetch
      end
      assert.equal(1, origin:count_path(p))
      assert.same({ ["moongate; fwd=uri-miss; stored"] = 1,
                    ["moongate; fwd=uri-miss; collapsed; ttl=N"] = 49 }, tally(rs))
      -- and the next one is a plain hit
      local b = assert(proxy:request({ path = p }))
      assert.matches("^moongate; hit; ttl=%d+$", b.h["cache-status"])
      assert.equal(1, origin:count_path(p))
    end)

    it("misses whose cache_key hook waited first collapse too: one origin fetch for 20", function()
      local p = target(0.3, "keyed-" .. workers, { "Cache-Control:max-age=60" }, "n=5000")
      local rs = burst(proxy, 20, p, "keyed.test")
      local want = helpers.pattern(5000)
      for i, r in ipairs(rs) do
        assert.equal(200, r.status, "response " .. i)
        assert.equal(want, r.body, "response " .. i)
      end
      assert.equal(1, origin:count_path(p))
      assert.same({ ["moongate; fwd=uri-miss; stored"] = 1,
                    ["moongate; fwd=uri-miss; collapsed; ttl=N"] = 19 }, tally(rs))
    end)

    it("when the first response is not storable, the waiters go to the origin each, at once", function()
      local p = target(0.3, "ns-" .. workers, { "Cache-Control:no-store" })
      local t0 = os.time()
      local clock = require("socket").gettime
      t0 = clock()
      local rs = burst(proxy, 20, p)
      local took = clock() - t0
      local seen = {}
      for i, r in ipairs(rs) do
        assert.equal(200, r.status, "response " .. i)
        assert.equal("moongate; fwd=uri-miss; detail=no-store", r.h["cache-status"])
        local n = tonumber(r.body:match("count=(%d+)"))
        assert.is_nil(seen[n], "count " .. tostring(n) .. " twice")
        seen[n] = true
      end
      assert.equal(20, origin:count_path(p))
      -- the waiters went when the first head came (0.3 s), not after the 5 s lock
      assert.is_true(took < 2.5, "took " .. took .. " s")
    end)

    it("waiters go to the origin on their own once the route's lock timeout passes", function()
      local p = target(0.8, "short-" .. workers, { "Cache-Control:max-age=60" })
      local rs = burst(proxy, 10, p, "short.test")
      for i, r in ipairs(rs) do
        assert.equal(200, r.status, "response " .. i)
        assert.equal("moongate; fwd=uri-miss; stored", r.h["cache-status"])
      end
      assert.equal(10, origin:count_path(p))
    end)

    it("lock = false: every concurrent miss goes to the origin", function()
      local p = target(0.3, "nolock-" .. workers, { "Cache-Control:max-age=60" })
      local rs = burst(proxy, 10, p, "nolock.test")
      for i, r in ipairs(rs) do
        assert.equal(200, r.status, "response " .. i)
        assert.equal("moongate; fwd=uri-miss; stored", r.h["cache-status"])
      end
      assert.equal(10, origin:count_path(p))
    end)

    it("concurrent requests of a stale response make one revalidation, and all answer from its merge", function()
      local p = target(0.3, "reval-" .. workers, { "Cache-Control:max-age=1", 'ETag:"e1"' }, "cond=1")
      local a = assert(proxy:request({ path = p }))
      assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
      helpers.sleep(2.2)
      local rs = burst(proxy, 20, p)
      for i, r in ipairs(rs) do
        assert.equal(200, r.status, "response " .. i)
        assert.equal(a.body, r.body, "response " .. i)
      end
      local seen = {}
      for k, v in pairs(tally(rs)) do seen[#seen + 1] = k .. " x" .. v end
      assert.equal(2, origin:count_path(p), table.concat(seen, ", ")) -- the first fetch and one revalidation
      assert.same({ ["moongate; fwd=stale; fwd-status=304; stored; ttl=N"] = 1,
                    ["moongate; fwd=stale; collapsed; ttl=N"] = 19 }, tally(rs))
    end)

    it("a HEAD waits for the GET under way and gets its stored head", function()
      local p = target(0.4, "head-" .. workers, { "Cache-Control:max-age=60" })
      local g = proxy:connect()
      assert(g:send(helpers.request_bytes({ path = p })))
      helpers.sleep(0.1)
      local h = proxy:connect()
      assert(h:send(helpers.request_bytes({ method = "HEAD", path = p })))
      local a = assert(g:response())
      local b = assert(h:response({ head = true }))
      g:close()
      h:close()
      assert.equal(200, b.status)
      assert.equal("", b.body)
      assert.equal(tostring(#a.body), b.h["content-length"])
      assert.matches("^moongate; fwd=uri%-miss; collapsed; ttl=%d+$", b.h["cache-status"])
      assert.equal(1, origin:count_path(p))
    end)

    it("a client that leaves while it waits is let go; the others get their answer", function()
      local p = target(0.5, "leave-" .. workers, { "Cache-Control:max-age=60" })
      local leader = proxy:connect()
      assert(leader:send(helpers.request_bytes({ path = p })))
      helpers.sleep(0.1)
      local gone, stay = {}, {}
      for i = 1, 6 do gone[i] = proxy:connect() end
      for i = 1, 3 do stay[i] = proxy:connect() end
      for _, c in ipairs(gone) do assert(c:send(helpers.request_bytes({ path = p }))) end
      for _, c in ipairs(stay) do assert(c:send(helpers.request_bytes({ path = p }))) end
      helpers.sleep(0.1)
      for _, c in ipairs(gone) do c:close() end
      local r = assert(leader:response())
      assert.equal(200, r.status)
      for _, c in ipairs(stay) do
        local s = assert(c:response())
        assert.equal(r.body, s.body)
        assert.matches("^moongate; fwd=uri%-miss; collapsed; ttl=%d+$", s.h["cache-status"])
        c:close()
      end
      leader:close()
      assert.equal(1, origin:count_path(p))
      proxy:assert_alive()
    end)
  end)
end

describe("cache stale-while-revalidate", function()
  local origin, proxy
  local clock = require("socket").gettime

  lazy_setup(function()
    origin = helpers.origin({ name = "o", status_file = true })
    proxy = helpers.proxy(conf(2), { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    origin:force_status(nil)
    helpers.teardown(proxy)
  end)

  local function get(p) return assert(proxy:request({ path = p })) end

  -- waits until the origin was asked n times for p, then for its answer (it
  -- waits `delay` seconds) to reach the store
  local function asked(p, n, delay)
    assert(helpers.wait_until(function() return origin:count_path(p) >= n end, 5), "origin not asked " .. n .. " times")
    helpers.sleep(delay + 0.3)
  end

  it("answers a stale response at once with the old body, refreshes it with one origin request, and the next request is a hit on the new body", function()
    local p = target(1.0, "swr", { "Cache-Control:max-age=3, stale-while-revalidate=30" })
    local a = get(p)
    assert.equal("swr count=1 al=-\n", a.body)
    assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
    helpers.sleep(4.2)
    local t0 = clock()
    local rs = burst(proxy, 10, p)
    local took = clock() - t0
    for i, r in ipairs(rs) do
      assert.equal(200, r.status, "response " .. i)
      assert.equal("swr count=1 al=-\n", r.body, "response " .. i)
      assert.matches("^moongate; hit; ttl=%-%d+; detail=stale%-while%-revalidate$", r.h["cache-status"])
    end
    assert.is_true(took < 0.9, "the stale answers waited for the origin: " .. took .. " s")
    asked(p, 2, 1.0)
    local b = get(p)
    assert.equal("swr count=2 al=-\n", b.body)
    assert.matches("^moongate; hit; ttl=%d+$", b.h["cache-status"])
    assert.equal(2, origin:count_path(p)) -- the first fetch and exactly one refresh
  end)

  it("refreshes with the stored validators: a 304 updates the stored headers and keeps the body", function()
    local p = target(0.3, "swr304", { "Cache-Control:max-age=3, stale-while-revalidate=30", 'ETag:"s1"' }, "cond=1")
    local a = get(p)
    assert.equal("swr304 count=1 al=-\n", a.body)
    assert.equal("1", a.h["x-count"])
    helpers.sleep(4.2)
    local s = get(p)
    assert.equal("swr304 count=1 al=-\n", s.body)
    assert.matches("detail=stale%-while%-revalidate$", s.h["cache-status"])
    asked(p, 2, 0.3)
    local b = get(p)
    assert.equal("swr304 count=1 al=-\n", b.body) -- the body kept
    assert.equal("2", b.h["x-count"])              -- the headers of the 304
    assert.matches("^moongate; hit; ttl=%d+$", b.h["cache-status"])
    assert.equal(2, origin:count_path(p))
  end)

  it("a refresh that fails leaves the stale response in the store", function()
    local p = target(0.1, "swrfail", { "Cache-Control:max-age=3, stale-while-revalidate=30" })
    assert.equal("swrfail count=1 al=-\n", get(p).body)
    helpers.sleep(4.2)
    origin:force_status(500)
    local s = get(p)
    assert.equal("swrfail count=1 al=-\n", s.body)
    asked(p, 2, 0.1)
    local t = get(p) -- still the stale one (and another refresh goes)
    assert.equal("swrfail count=1 al=-\n", t.body)
    assert.matches("^moongate; hit; ttl=%-%d+; detail=stale%-while%-revalidate$", t.h["cache-status"])
    asked(p, 3, 0.1)
    origin:force_status(nil)
    proxy:assert_alive()
  end)
end)

describe("cache request collapsing and a graceful stop", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "o" })
    proxy = helpers.proxy(conf(2), { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("SIGTERM while misses wait for a fetch: every one is answered, then moongate exits 0", function()
    local p = target(0.6, "stop", { "Cache-Control:max-age=60" })
    local cs = {}
    for i = 1, 8 do cs[i] = proxy:connect() end
    for _, c in ipairs(cs) do assert(c:send(helpers.request_bytes({ path = p }))) end
    helpers.sleep(0.2)
    proxy:signal(helpers.SIGTERM)
    for i, c in ipairs(cs) do
      local r = assert(c:response({ timeout = 5 }))
      assert.equal(200, r.status, "response " .. i)
      assert.equal("stop count=1 al=-\n", r.body, "response " .. i)
      c:close()
    end
    assert.same({ "exited", 0 }, { proxy:wait(5) })
    assert.equal(1, origin:count_path(p))
  end)
end)

describe("cache stale-while-revalidate and a graceful stop", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "o" })
    proxy = helpers.proxy(conf(1), { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("SIGTERM drops a background refresh (no client waits for it) and exits 0 at once", function()
    local p = target(3, "swrstop", { "Cache-Control:max-age=1, stale-while-revalidate=30" })
    assert.equal("swrstop count=1 al=-\n", assert(proxy:request({ path = p })).body)
    helpers.sleep(2.2)
    local s = assert(proxy:request({ path = p }))
    assert.equal("swrstop count=1 al=-\n", s.body)
    assert(helpers.wait_until(function() return origin:count_path(p) == 2 end, 2), "no refresh")
    local t0 = helpers.now()
    proxy:signal(helpers.SIGTERM)
    assert.same({ "exited", 0 }, { proxy:wait(5) })
    local dt = helpers.now() - t0
    assert.is_true(dt < 1.5, "exit took " .. dt .. " s (the refresh's origin answers after 3 s)")
  end)
end)
