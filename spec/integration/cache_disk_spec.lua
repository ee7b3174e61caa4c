-- The cache's disk store (docs/cache.md "The disk store"): mg.config { cache =
-- { path, size } } keeps every stored response in a file under path (relative to
-- proxy.lua's folder), so it is answered after a restart; the index is rebuilt
-- at start in the background; truncated files and leftover temp files are
-- deleted; size caps the files' bytes; a write error never reaches the client.
-- The origin's /hdrs/TAG counts requests per target, so every answer shows
-- whether the origin was asked.
local helpers = require "spec.helpers"

local function conf(cache)
  return [[
local mg = require "moongate"
mg.config { workers = 2, access_log = false, cache = ]] .. cache .. [[ }
mg.listen { "127.0.0.1:${port}" }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } }, cache = true }
]]
end

local DEFAULT = '{ memory = "8m", max_object = "256k", path = "cache/", size = "10m" }'

-- the object files under dir/cache (not its tmp/)
local function object_files(dir)
  local out = helpers.sh("find " .. dir .. "/cache -mindepth 2 -type f -not -path '*/cache/tmp/*' | sort")
  local t = {}
  for line in helpers.lines(out) do t[#t + 1] = line end
  return t
end

local function get(proxy, path)
  return assert(proxy:request({ path = path }))
end

describe("cache disk store", function()
  local origin

  lazy_setup(function()
    origin = helpers.origin({ name = "o" })
  end)

  lazy_teardown(function()
    helpers.teardown()
  end)

  -- starts moongate on dir's proxy.lua with this cache table
  local function start(dir, cache)
    return helpers.proxy(conf(cache or DEFAULT), { dir = dir, vars = { origin = origin.addr } })
  end

  -- waits until the log says this run's start walk is over (the log file is
  -- appended to by every run in the folder: one index line per run)
  local function indexed(p)
    assert(helpers.wait_until(function()
      local log = p:stderr()
      return helpers.count(log, "cache: disk index of") > helpers.count(log, "SIGTERM: draining")
    end, 10), "no index line:\n" .. p:stderr())
  end

  it("answers a stored response after a restart, from the file under proxy.lua's folder", function()
    local dir = helpers.tmpdir()
    local path = "/hdrs/restart?h=Cache-Control:max-age%3D600&n=70000"
    local p = start(dir)
    local a = get(p, path)
    assert.equal(200, a.status)
    assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
    assert.equal(helpers.pattern(70000), a.body)
    -- written off the loop: the file shows up under <dir>/cache/xx/ shortly
    assert(helpers.wait_until(function() return #object_files(dir) == 1 end, 5), "no file in " .. dir .. "/cache")
    assert.is_nil(helpers.sh("ls " .. dir .. "/cwd/cache 2>/dev/null"):match("%S"))
    p:stop()

    p = start(dir)
    indexed(p)
    local b = get(p, path)
    assert.equal(200, b.status)
    assert.equal(helpers.pattern(70000), b.body)
    assert.equal("70000", b.h["content-length"])
    assert.equal(a.h["date"], b.h["date"])
    local age = tonumber(b.h["age"])
    assert.truthy(age and age <= 5, tostring(b.h["age"]))
    assert.equal("moongate; hit; ttl=" .. (600 - age), b.h["cache-status"])
    assert.equal(1, origin:count_path(path))
    p:stop()
  end)

  it("deletes a truncated file at start and does not serve it", function()
    local dir = helpers.tmpdir()
    local path = "/hdrs/trunc?h=Cache-Control:max-age%3D600&n=20000"
    local p = start(dir)
    assert.equal("moongate; fwd=uri-miss; stored", get(p, path).h["cache-status"])
    assert(helpers.wait_until(function() return #object_files(dir) == 1 end, 5))
    p:stop()
    local file = object_files(dir)[1]
    local whole = helpers.read_file(file)
    helpers.write_file(file, whole:sub(1, #whole - 1000))

    p = start(dir)
    indexed(p)
    assert.truthy(p:stderr():find("cache: " .. file .. " is truncated or corrupt: deleted", 1, true), p:stderr())
    assert.is_false(helpers.file_exists(file))
    local b = get(p, path)
    assert.equal("moongate; fwd=uri-miss; stored", b.h["cache-status"])
    assert.equal(helpers.pattern(20000), b.body)
    assert.equal(2, origin:count_path(path))
    p:stop()
  end)

  it("removes temp files left by an earlier run at start", function()
    local dir = helpers.tmpdir()
    os.execute("mkdir -p " .. dir .. "/cache/tmp")
    local tmp = dir .. "/cache/tmp/00000000deadbeef-12"
    helpers.write_file(tmp, "half an object")
    local p = start(dir)
    indexed(p)
    assert.is_false(helpers.file_exists(tmp))
    assert.truthy(p:stderr():find("cache: removed the leftover temp file " .. tmp, 1, true), p:stderr())
    p:stop()
  end)

  it("keeps the files' bytes under size, evicting the least recently used", function()
    local dir = helpers.tmpdir()
    -- each file: 40000 body bytes and a small header, 40 KiB on disk; 120 KiB hold 3
    local cache = '{ memory = "1m", max_object = "60k", path = "cache", size = "120k" }'
    local paths = {}
    for i = 1, 4 do paths[i] = "/hdrs/cap" .. i .. "?h=Cache-Control:max-age%3D600&n=40000" end
    local p = start(dir, cache)
    for i = 1, 4 do
      assert.equal("moongate; fwd=uri-miss; stored", get(p, paths[i]).h["cache-status"])
      -- one at a time, so the files' order is the requests'
      assert(helpers.wait_until(function() return #object_files(dir) == math.min(i, 3) end, 5))
    end
    p:stop() -- after the queued writes
    assert.equal(3, #object_files(dir))

    p = start(dir, cache) -- memory is empty: hits come from the files
    indexed(p)
    for i = 2, 4 do
      local r = get(p, paths[i])
      assert.equal("moongate; hit; ttl=", r.h["cache-status"]:match("^moongate; hit; ttl="))
      assert.equal(helpers.pattern(40000), r.body)
      assert.equal(1, origin:count_path(paths[i]))
    end
    local r = get(p, paths[1]) -- evicted first
    assert.equal("moongate; fwd=uri-miss; stored", r.h["cache-status"])
    assert.equal(2, origin:count_path(paths[1]))
    p:stop()
  end)

  it("an invalidation removes the file too, so a restart does not bring the response back", function()
    local dir = helpers.tmpdir()
    local path = "/hdrs/inval?h=Cache-Control:max-age%3D600"
    local p = start(dir)
    assert.equal("inval count=1 al=-\n", get(p, path).body)
    assert(helpers.wait_until(function() return #object_files(dir) == 1 end, 5))
    local post = assert(p:request({ method = "POST", path = path, body = "x" }))
    assert.equal(200, post.status)
    assert.equal(0, #object_files(dir))
    p:stop()

    p = start(dir)
    indexed(p)
    local b = get(p, path)
    assert.equal("inval count=3 al=-\n", b.body) -- GET, POST, GET: the origin was asked again
    assert.equal("moongate; fwd=uri-miss; stored", b.h["cache-status"])
    p:stop()
  end)

  it("gives the client the whole response when the file cannot be written, and logs why", function()
    local dir = helpers.tmpdir()
    local p = start(dir)
    indexed(p)
    -- the temp folder becomes a file: every write fails (root ignores permissions)
    assert.equal(0, select(2, helpers.sh("rmdir " .. dir .. "/cache/tmp && touch " .. dir .. "/cache/tmp")))
    local path = "/hdrs/werr?h=Cache-Control:max-age%3D600&n=200000"
    local a = get(p, path)
    assert.equal(200, a.status)
    assert.equal("moongate; fwd=uri-miss; stored", a.h["cache-status"])
    assert.equal(helpers.pattern(200000), a.body)
    assert(helpers.wait_until(function()
      return p:stderr():find("cache: cannot store GET http://test.local"
        .. "/hdrs/werr?h=Cache-Control:max-age%3D600&n=200000 o on disk: open " .. dir -- the key: the URL, then the upstream
        .. "/cache/tmp/", 1, true)
    end, 5), p:stderr())
    assert.truthy(p:stderr():find(": Not a directory\n", 1, true))
    assert.equal(0, #object_files(dir))
    -- the memory store still has it
    local b = get(p, path)
    assert.equal(helpers.pattern(200000), b.body)
    assert.truthy(b.h["cache-status"]:find("^moongate; hit"))
    assert.equal(1, origin:count_path(path))
    p:assert_alive()
    p:stop()
  end)

  it("a reload that changes path or size keeps the store and says a restart applies it", function()
    local dir = helpers.tmpdir()
    local path = "/hdrs/reload?h=Cache-Control:max-age%3D600"
    local p = start(dir)
    indexed(p)
    assert.equal("reload count=1 al=-\n", get(p, path).body)
    local other = '{ memory = "8m", max_object = "256k", path = "cache2/", size = "10m" }'
    p:reload(helpers.expand(conf(other) .. 'mg.route { path = "/gen", respond = { status = 200, body = "2\\n" } }\n',
      { port = p.port, origin = origin.addr }), function()
      local r = p:request({ path = "/gen" })
      return r and r.body == "2\n"
    end)
    assert.truthy(p:stderr():find("cache: 'memory', 'max_object', 'path' or 'size' changed: the store keeps its old "
      .. "settings until a restart", 1, true), p:stderr())
    local b = get(p, path)
    assert.equal("reload count=1 al=-\n", b.body)
    assert.truthy(b.h["cache-status"]:find("^moongate; hit"))
    assert.is_false(helpers.file_exists(dir .. "/cache2"))
    p:stop()
  end)

  it("refuses bad path and size settings with a clear error", function()
    for _, bad in ipairs {
      { '{ path = 5 }', "'path' must be a folder name" },
      { '{ path = "" }', "'path' must be a folder name" },
      { '{ path = "c", size = "lots" }', "'size' is not a size: lots" },
      { '{ path = "c", size = 0 }', "'size'" },
      { '{ size = "1g" }', "'size' is the disk store's cap: it needs 'path'" },
      { '{ path = "c", size = "1m", max_object = "1m" }', "'size' must be at least twice 'max_object'" },
    } do
      local dir = helpers.tmpdir()
      helpers.write_file(dir .. "/proxy.lua", 'local mg = require "moongate"\nmg.listen { "127.0.0.1:1" }\n'
        .. "mg.config { cache = " .. bad[1] .. " }\n")
      local out, rc = helpers.moongate({ "-t", "-c", dir .. "/proxy.lua" })
      assert.is_not.equal(0, rc)
      assert.truthy(out:find(bad[2], 1, true), out)
      assert.truthy(out:find(dir .. "/proxy.lua:3:", 1, true), out)
    end
  end)

  it("does not start when path cannot be made a folder", function()
    local dir = helpers.tmpdir()
    helpers.write_file(dir .. "/cache", "a file, not a folder")
    local p = helpers.proxy(conf(DEFAULT), { dir = dir, vars = { origin = origin.addr }, wait = false })
    local how, code = p:wait(10)
    assert.equal("exited", how)
    assert.is_not.equal(0, code)
    assert.truthy(p:stderr():find("cache path " .. dir .. "/cache: cannot make or write " .. dir
      .. "/cache/tmp: Not a directory", 1, true), p:stderr())
  end)
end)
