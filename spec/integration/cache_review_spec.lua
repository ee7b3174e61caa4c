-- Defects found reviewing the cache (issue 13), each pinned against the real
-- binary: a hit answers with every header the miss had however many there are,
-- and the client's conditionals are not applied to a stored non-2xx response
-- (RFC 9110 13.2.1).
local helpers = require "spec.helpers"
local url = require "socket.url"

local CONF = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, cache = { memory = "8m", max_object = "64k" } }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
mg.route { upstream = o, cache = true }
]]

-- /hdrs/TAG with these response headers ({ "Name:Value", ... })
local function target(tag, hdrs)
  local q = {}
  for _, h in ipairs(hdrs) do q[#q + 1] = "h=" .. url.escape(h) end
  return "/hdrs/" .. tag .. "?" .. table.concat(q, "&")
end

describe("cache review", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "o" })
    proxy = helpers.proxy(CONF, { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  local function get(path, headers, method)
    return assert(proxy:request({ method = method, path = path, headers = headers }))
  end

  -- the origin may send up to 200 header fields; the store kept them all but a hit
  -- parsed only the first 128 of the stored head
  it("answers a hit with every stored header of a response with 150 fields", function()
    local hs = { "Cache-Control:max-age=60" }
    for i = 1, 148 do hs[#hs + 1] = ("X-H-%03d:v%d"):format(i, i) end
    hs[#hs + 1] = 'ETag:"many"'
    local p = target("many", hs)
    local a = get(p)
    assert.equal(200, a.status)
    assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
    assert.equal("v148", a.h["x-h-148"])
    local b = get(p)
    assert.equal(200, b.status)
    assert.truthy((b.h["cache-status"] or ""):find("^moongate; hit"), tostring(b.h["cache-status"]))
    assert.equal(a.body, b.body)
    for i = 1, 148 do assert.equal("v" .. i, b.h[("x-h-%03d"):format(i)], "X-H-" .. i) end
    assert.equal('"many"', b.h["etag"])
    -- the ETag (the 150th field) is a validator of the hit: a 304 from the store
    local c = get(p, { { "If-None-Match", '"many"' } })
    assert.equal(304, c.status)
  end)

  it("matches a variant whose Vary is past the 128th stored field", function()
    local hs = { "Cache-Control:max-age=60" }
    for i = 1, 140 do hs[#hs + 1] = ("X-V-%03d:v"):format(i) end
    hs[#hs + 1] = "Vary:Accept-Language"
    local p = target("varylate", hs)
    local a = get(p, { { "Accept-Language", "de" } })
    assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
    local b = get(p, { { "Accept-Language", "de" } })
    assert.truthy((b.h["cache-status"] or ""):find("^moongate; hit"), tostring(b.h["cache-status"]))
    assert.equal(a.body, b.body)
    assert.equal("Accept-Language", b.h["vary"])
  end)

  -- RFC 9110 13.2.1: preconditions are ignored when the response without them
  -- would not be a 2xx; the origin does so, a hit must too
  it("answers a stored 404 as stored whatever the client's conditionals say", function()
    local p = target("gone", { "Status:404", "Cache-Control:max-age=60", 'ETag:"g"',
                               "Last-Modified:Tue, 01 Dec 2026 10:00:00 GMT" })
    local a = get(p)
    assert.equal(404, a.status)
    assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
    for _, h in ipairs {
      { "If-None-Match", '"g"' },
      { "If-None-Match", "*" },
      { "If-Modified-Since", "Wed, 01 Dec 2100 10:00:00 GMT" },
      { "If-Match", '"other"' },
      { "If-Unmodified-Since", "Mon, 01 Jan 1990 00:00:00 GMT" },
    } do
      local r = get(p, { h })
      assert.equal(404, r.status, h[1] .. ": " .. h[2])
      assert.equal(a.body, r.body, h[1])
      assert.truthy((r.h["cache-status"] or ""):find("^moongate; hit"), h[1])
    end
    -- a stored 200 still answers them
    local q = target("there", { "Cache-Control:max-age=60", 'ETag:"t"' })
    get(q)
    assert.equal(304, get(q, { { "If-None-Match", '"t"' } }).status)
    assert.equal(412, get(q, { { "If-Match", '"other"' } }).status)
  end)
end)

describe("cache review, disk store", function()
  local origin

  local DISK_CONF = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false,
            cache = { memory = "8m", max_object = "64k", path = "cache/", size = "10m" } }
mg.listen { "127.0.0.1:${port}" }
mg.route { host = "stats.test", respond = function()
  local s = assert(mg.cache.stats())
  return 200, ("lookups=%d hits=%d misses=%d disk_hits=%d disk_writes=%d"):format(
    s.lookups, s.hits, s.misses, s.disk_hits, s.disk_writes)
end }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } }, cache = true }
]]

  lazy_setup(function()
    origin = helpers.origin({ name = "o" })
  end)

  lazy_teardown(function()
    helpers.teardown()
  end)

  local function stats(p)
    return assert(p:request({ path = "/", headers = { { "Host", "stats.test" } } })).body
  end

  -- a lookup answered from disk is a hit for the client (Cache-Status: hit):
  -- mg.cache.stats() counted it as a miss (misses = lookups - memory hits)
  it("counts a lookup answered from disk as a hit in mg.cache.stats()", function()
    local dir = helpers.tmpdir()
    local path = "/hdrs/diskstat?h=Cache-Control:max-age%3D600"
    local p = helpers.proxy(DISK_CONF, { dir = dir, vars = { origin = origin.addr } })
    assert.equal("moongate; fwd=uri-miss; stored", assert(p:request({ path = path })).h["cache-status"])
    assert(helpers.wait_until(function() return stats(p):find("disk_writes=1", 1, true) end, 5), stats(p))
    p:stop()
    p = helpers.proxy(DISK_CONF, { dir = dir, vars = { origin = origin.addr } })
    assert(helpers.wait_until(function()
      local log = p:stderr()
      return helpers.count(log, "cache: disk index of") > helpers.count(log, "SIGTERM: draining")
    end, 10), "no index line:\n" .. p:stderr())
    local b = assert(p:request({ path = path }))
    assert.truthy((b.h["cache-status"] or ""):find("^moongate; hit"), tostring(b.h["cache-status"]))
    assert.equal("lookups=1 hits=1 misses=0 disk_hits=1 disk_writes=0", stats(p))
    p:stop()
  end)
end)
