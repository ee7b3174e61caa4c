-- mg.shared (docs/hooks.md "mg.*"): one dictionary for all workers, get / set
-- / add / incr / delete with TTLs, LRU eviction when full. Driven through a
-- respond function that runs one dictionary call and prints what it returned.
local helpers = require "spec.helpers"

local CONF = [[
local mg = require "moongate"
mg.config { workers = 2, access_log = false, shared = { s = "1m", other = "64k", tiny = "16k", spread = "4m" } }
mg.listen { "127.0.0.1:${port}" }

mg.on("init_worker", function()
  mg.shared("s"):incr("workers_started", 1, 0)
end)

-- each returned value as type:value, joined by ","; n = select("#")
local function show(...)
  local out = {}
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    out[i] = type(v) .. ":" .. tostring(v)
  end
  return table.concat(out, ",")
end

local function num_or_nil(v) return v and tonumber(v) end

-- /op?d=DICT&fn=get|set|add|incr|delete&k=KEY&v=VALUE&vt=n|s&by=&init=&ttl=
mg.route { path = "/op", respond = function(req)
  local d = mg.shared(req:arg("d") or "s")
  local fn, k = req:arg("fn"), req:arg("k")
  local v = req:arg("v")
  if req:arg("vt") == "n" then v = tonumber(v) end
  if req:arg("rep") then v = string.rep(v, tonumber(req:arg("rep"))) end
  local r
  if fn == "get" then r = show(d:get(k))
  elseif fn == "set" then r = show(d:set(k, v, num_or_nil(req:arg("ttl"))))
  elseif fn == "add" then r = show(d:add(k, v, num_or_nil(req:arg("ttl"))))
  elseif fn == "incr" then
    r = show(d:incr(k, num_or_nil(req:arg("by")), num_or_nil(req:arg("init")), num_or_nil(req:arg("ttl"))))
  elseif fn == "delete" then r = show(d:delete(k))
  elseif fn == "len" then local x = d:get(k) r = show(type(x) == "string" and #x or x, x == v)
  end
  return 200, r, { ["x-worker"] = tostring(mg.worker_id()) }
end }

-- Fills the 16k dict: n values of `size` bytes; reports evictions and what is left.
mg.route { path = "/fill", respond = function(req)
  local d = mg.shared("tiny")
  local n, size = tonumber(req:arg("n")), tonumber(req:arg("size"))
  local touch = req:arg("touch")
  if touch then d:set(touch, "keep me") end
  local ok_all, evictions, first_evicted = true, 0, nil
  for i = 1, n do
    local ok, err, evicted = d:set("key" .. i, string.rep(string.char(97 + i % 26), size))
    if ok ~= true or err ~= nil then ok_all = false end
    if evicted == true then
      evictions = evictions + 1
      first_evicted = first_evicted or i
    end
    if touch then d:get(touch) end
  end
  local present, first_present = 0, nil
  for i = 1, n do
    local v = d:get("key" .. i)
    if v then
      present = present + 1
      first_present = first_present or i
      if v ~= string.rep(string.char(97 + i % 26), size) then return 500, "corrupt key" .. i end
    end
  end
  local tail_ok = true
  for i = n - 9, n do if not d:get("key" .. i) then tail_ok = false end end
  return 200, table.concat({
    "ok_all=" .. tostring(ok_all), "evictions=" .. evictions, "first_evicted=" .. tostring(first_evicted),
    "present=" .. present, "first_present=" .. tostring(first_present),
    "key1=" .. tostring(d:get("key1")), "tail_ok=" .. tostring(tail_ok),
    "touched=" .. tostring(touch and d:get(touch)),
  }, "\n") .. "\n", {}
end }
-- /race?k=KEY&n=N: n rounds of set (alternately A, 5000 bytes, and B, 9000: both
-- above get's first 4 KiB buffer) then get. Run on both workers at once, the other
-- worker's sets land between the two C calls of a get. Counts the reads that were
-- not A or B whole, and those that saw the other worker's write.
mg.route { path = "/race", respond = function(req)
  local d = mg.shared("s")
  local k, n = req:arg("k"), tonumber(req:arg("n"))
  local a, b = string.rep("a", 5000), string.rep("b", 9000)
  local bad, other = 0, 0
  for i = 1, n do
    local mine = i % 2 == 0 and a or b
    d:set(k, mine)
    local v = d:get(k)
    if v ~= a and v ~= b then bad = bad + 1 elseif v ~= mine then other = other + 1 end
  end
  return 200, "bad=" .. bad .. " other=" .. other, { ["x-worker"] = tostring(mg.worker_id()) }
end }

-- 10,000 keys of 224 bytes that all had one hash under the hash shdict.c used before
-- SipHash, for every seed (core/test/test_shdict.c explains the construction and
-- checks it): 14 blocks of two 8-byte words, each block one of a pair.
local ffi, bit = require "ffi", require "bit"
local C1, C2 = 0x87c37b91114253d5ULL, 0x4cf5ad432745937fULL
local function f(w) return bit.rol(w * C1, 31) * C2 end
local function inverse(c) local x = c for _ = 1, 5 do x = x * (2 - c * x) end return x end
local I1, I2 = inverse(C1), inverse(C2)
local function f_inverse(y) return bit.rol(y * I2, 33) * I1 end
local word = ffi.new("uint64_t[1]")
local function w8(x) word[0] = x return ffi.string(word, 8) end
local blocks = {}
for i = 0, 13 do
  local a, b = 0x6b65790000000000ULL + i, 0x626c6f636b000000ULL + i
  blocks[i] = { w8(a) .. w8(b),
                w8(f_inverse(bit.bxor(f(a), bit.lshift(1ULL, 36)))) ..
                w8(f_inverse(bit.bxor(f(b), bit.lshift(1ULL, 63)))) }
end
local function colliding_key(n)
  local t = {}
  for i = 0, 13 do t[i + 1] = blocks[i][bit.band(bit.rshift(n, i), 1) + 1] end
  return table.concat(t)
end

-- /collide: sets the 10,000 keys in the 4m dict (16 shards of 256 KiB, each room for
-- about 860 such entries: 10,000 fit only if spread), then reads them back.
mg.route { path = "/collide", respond = function(req)
  local d = mg.shared("spread")
  local evictions, present, distinct = 0, 0, {}
  for n = 0, 9999 do
    local key = colliding_key(n)
    distinct[key] = true
    local _, _, evicted = d:set(key, n)
    if evicted then evictions = evictions + 1 end
  end
  for n = 0, 9999 do
    if d:get(colliding_key(n)) == n then present = present + 1 end
  end
  local keys = 0
  for _ in pairs(distinct) do keys = keys + 1 end
  return 200, "keys=" .. keys .. " evictions=" .. evictions .. " present=" .. present
end }
]]

describe("shared dictionaries", function()
  local proxy

  lazy_setup(function()
    proxy = helpers.proxy(CONF)
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  local function q(s)
    return (s:gsub("[^%w%-%._~]", function(ch) return string.format("%%%02X", ch:byte()) end))
  end

  -- One dictionary call on a fresh connection; returns the printed results and the worker.
  local function op(args)
    local parts = {}
    for _, k in ipairs({ "d", "fn", "k", "v", "vt", "by", "init", "ttl", "rep" }) do
      if args[k] ~= nil then parts[#parts + 1] = k .. "=" .. q(tostring(args[k])) end
    end
    local res = assert(proxy:request({ path = "/op?" .. table.concat(parts, "&") }))
    assert.equal(200, res.status, res.body)
    return res.body, res.h["x-worker"]
  end

  local n = 0
  local function key(prefix)
    n = n + 1
    return (prefix or "k") .. n
  end

  describe("across workers", function()
    it("init_worker ran once in each of the 2 workers against the same dictionary", function()
      assert.equal("number:2", op({ fn = "get", k = "workers_started" }))
    end)

    it("a value set by one request is seen by every later one, on both workers", function()
      local k = key()
      assert.equal("boolean:true,nil:nil,boolean:false", op({ fn = "set", k = k, v = "shared value" }))
      local workers = {}
      for _ = 1, 40 do
        local body, w = op({ fn = "get", k = k })
        assert.equal("string:shared value", body)
        workers[w] = true
      end
      assert.is_true(workers["0"] and workers["1"], "40 connections all landed on one worker")
    end)

    it("incr from both workers adds up", function()
      local k = key()
      local workers = {}
      for _ = 1, 40 do
        local _, w = op({ fn = "incr", k = k, by = 1, init = 0 })
        workers[w] = true
      end
      assert.is_true(workers["0"] and workers["1"], "40 connections all landed on one worker")
      assert.equal("number:40", op({ fn = "get", k = k }))
    end)

    it("concurrent incr from 8 pipelining connections on both workers loses no update", function()
      local k = key()
      -- SO_REUSEPORT spreads connections by a hash of their addresses: open
      -- connections until 4 have landed on each worker (one request each
      -- tells which), then pipeline on those 8 at once.
      local probe = "GET /op?fn=get&k=" .. k .. " HTTP/1.1\r\nHost: x\r\n\r\n"
      local by_worker, spare = { ["0"] = {}, ["1"] = {} }, {}
      for _ = 1, 64 do
        if #by_worker["0"] == 4 and #by_worker["1"] == 4 then break end
        local c = proxy:connect()
        assert(c:send(probe))
        local res = assert(c:response({ timeout = 10 }))
        local list = by_worker[res.h["x-worker"]]
        if list and #list < 4 then list[#list + 1] = c else spare[#spare + 1] = c end
      end
      for _, c in ipairs(spare) do c:close() end
      assert.equal(4, #by_worker["0"], "64 connections, fewer than 4 on worker 0")
      assert.equal(4, #by_worker["1"], "64 connections, fewer than 4 on worker 1")
      local conns = {}
      for _, w in ipairs({ "0", "1" }) do
        for _, c in ipairs(by_worker[w]) do conns[#conns + 1] = { c = c, w = w } end
      end
      local req = "GET /op?fn=incr&k=" .. k .. "&by=1&init=0 HTTP/1.1\r\nHost: x\r\n\r\n"
      for _, e in ipairs(conns) do assert(e.c:send(string.rep(req, 50))) end
      for _, e in ipairs(conns) do
        for _ = 1, 50 do
          local res = assert(e.c:response({ timeout = 10 }))
          assert.equal(200, res.status)
          assert.equal(e.w, res.h["x-worker"])
        end
        e.c:close()
      end
      assert.equal("number:400", op({ fn = "get", k = k }))
    end)
  end)

  describe("get / set", function()
    it("get of a missing key is nil", function()
      assert.equal("nil:nil", op({ fn = "get", k = key() }))
    end)

    it("keeps strings and numbers apart", function()
      local ks, kn, kf = key(), key(), key()
      op({ fn = "set", k = ks, v = "42" })
      op({ fn = "set", k = kn, v = "42", vt = "n" })
      op({ fn = "set", k = kf, v = "-1.5", vt = "n" })
      assert.equal("string:42", op({ fn = "get", k = ks }))
      assert.equal("number:42", op({ fn = "get", k = kn }))
      assert.equal("number:-1.5", op({ fn = "get", k = kf }))
    end)

    it("overwrites, also from a number to a string", function()
      local k = key()
      op({ fn = "set", k = k, v = "1", vt = "n" })
      op({ fn = "set", k = k, v = "now a string" })
      assert.equal("string:now a string", op({ fn = "get", k = k }))
    end)

    it("stores the empty string and binary bytes", function()
      local k1, k2 = key(), key()
      op({ fn = "set", k = k1, v = "" })
      assert.equal("string:", op({ fn = "get", k = k1 }))
      op({ fn = "set", k = k2, v = "a\0b\r\n\255" })
      assert.equal("string:a\0b\r\n\255", op({ fn = "get", k = k2 }))
    end)

    it("round-trips a value larger than 4 KiB", function()
      local k = key()
      assert.equal("boolean:true,nil:nil,boolean:false", op({ fn = "set", k = k, v = "ab", rep = 5000 }))
      assert.equal("number:10000,boolean:false", op({ fn = "len", k = k, v = "ab" }))
      local body = op({ fn = "get", k = k })
      assert.equal("string:" .. string.rep("ab", 5000), body)
    end)

    it("keeps dictionaries apart", function()
      local k = key()
      op({ fn = "set", k = k, v = "in s" })
      op({ d = "other", fn = "set", k = k, v = "in other" })
      assert.equal("string:in s", op({ fn = "get", k = k }))
      assert.equal("string:in other", op({ d = "other", fn = "get", k = k }))
    end)

    it("an undeclared dictionary is an error in the hook: 500", function()
      local res = assert(proxy:request({ path = "/op?d=nope&fn=get&k=x" }))
      helpers.assert_error(res, 500)
      assert.is_truthy(helpers.wait_until(function()
        return proxy:stderr():find("no dictionary 'nope'", 1, true)
      end, 3))
    end)
  end)

  describe("add", function()
    it("adds a missing key, refuses a present one with false, \"exists\"", function()
      local k = key()
      assert.equal("boolean:true,nil:nil,boolean:false", op({ fn = "add", k = k, v = "first" }))
      assert.equal("boolean:false,string:exists", op({ fn = "add", k = k, v = "second" }))
      assert.equal("string:first", op({ fn = "get", k = k }))
    end)
  end)

  describe("incr", function()
    it("without init on a missing key: nil, \"not found\", and the key stays missing", function()
      local k = key()
      assert.equal("nil:nil,string:not found", op({ fn = "incr", k = k, by = 1 }))
      assert.equal("nil:nil", op({ fn = "get", k = k }))
    end)

    it("with init on a missing key starts from init, then adds by (default 1)", function()
      local k = key()
      assert.equal("number:15", op({ fn = "incr", k = k, by = 5, init = 10 }))
      assert.equal("number:16", op({ fn = "incr", k = k }))
      assert.equal("number:13.5", op({ fn = "incr", k = k, by = -2.5 }))
      assert.equal("number:13.5", op({ fn = "get", k = k }))
    end)

    it("ignores init when the key is present", function()
      local k = key()
      op({ fn = "set", k = k, v = "100", vt = "n" })
      assert.equal("number:101", op({ fn = "incr", k = k, by = 1, init = 7 }))
    end)

    it("on a string value fails and leaves it alone", function()
      local k = key()
      op({ fn = "set", k = k, v = "text" })
      assert.matches("^nil:nil,string:", op({ fn = "incr", k = k, by = 1 }))
      assert.equal("string:text", op({ fn = "get", k = k }))
    end)
  end)

  describe("delete", function()
    it("removes the key; deleting a missing key is fine", function()
      local k = key()
      op({ fn = "set", k = k, v = "x" })
      op({ fn = "delete", k = k })
      assert.equal("nil:nil", op({ fn = "get", k = k }))
      assert.equal("boolean:true", op({ fn = "delete", k = k }))
      assert.equal("boolean:true,nil:nil,boolean:false", op({ fn = "add", k = k, v = "again" }))
    end)
  end)

  describe("ttl", function()
    it("set with a ttl: present before, gone after it (and add succeeds again)", function()
      local k = key()
      op({ fn = "set", k = k, v = "short", ttl = 0.4 })
      assert.equal("string:short", op({ fn = "get", k = k }))
      helpers.sleep(0.7)
      assert.equal("nil:nil", op({ fn = "get", k = k }))
      assert.equal("boolean:true,nil:nil,boolean:false", op({ fn = "add", k = k, v = "new" }))
      assert.equal("string:new", op({ fn = "get", k = k }))
    end)

    it("ttl 0 means none; add and incr take a ttl too", function()
      local k0, ka, ki = key(), key(), key()
      op({ fn = "set", k = k0, v = "forever", ttl = 0 })
      op({ fn = "add", k = ka, v = "added", ttl = 0.4 })
      op({ fn = "incr", k = ki, by = 1, init = 0, ttl = 0.4 })
      assert.equal("string:added", op({ fn = "get", k = ka }))
      assert.equal("number:1", op({ fn = "get", k = ki }))
      helpers.sleep(0.7)
      assert.equal("string:forever", op({ fn = "get", k = k0 }))
      assert.equal("nil:nil", op({ fn = "get", k = ka }))
      assert.equal("nil:nil", op({ fn = "get", k = ki }))
      assert.equal("nil:nil,string:not found", op({ fn = "incr", k = ki, by = 1 }))
    end)

    it("set without a ttl removes an earlier ttl", function()
      local k = key()
      op({ fn = "set", k = k, v = "a", ttl = 0.3 })
      op({ fn = "set", k = k, v = "b" })
      helpers.sleep(0.6)
      assert.equal("string:b", op({ fn = "get", k = k }))
    end)
  end)

  describe("eviction", function()
    local function fill(args)
      local res = assert(proxy:request({ path = "/fill?" .. args }))
      assert.equal(200, res.status, res.body)
      local t = {}
      for k, v in res.body:gmatch("([%w_]+)=([^\n]*)\n") do t[k] = v end
      return t
    end

    it("a full 16k dictionary evicts the oldest keys, keeps the newest, and set says so", function()
      local t = fill("n=2000&size=100")
      assert.equal("true", t.ok_all)
      assert.is_true(tonumber(t.evictions) > 0, "no set reported an eviction")
      assert.is_true(tonumber(t.first_evicted) > 1)
      assert.equal("nil", t.key1)
      assert.equal("true", t.tail_ok)
      local present = tonumber(t.present)
      assert.is_true(present > 10 and present < 2000, "present: " .. present)
      -- 2000 * 100 bytes cannot fit in 16 KiB: at most ~163 values of 100 bytes
      assert.is_true(present <= 164, "present: " .. present)
      assert.is_true(tonumber(t.first_present) > 1000, "an early key survived: " .. t.first_present)
    end)

    it("evicts the least recently used: a key read after every set survives", function()
      local t = fill("n=2000&size=100&touch=hot")
      assert.equal("true", t.ok_all)
      assert.equal("keep me", t.touched)
      assert.equal("nil", t.key1)
      assert.equal("true", t.tail_ok)
    end)
  end)
  describe("reads racing writes", function()
    it("get while the other worker grows and shrinks the value: always one whole value", function()
      -- The kernel spreads connections over the workers by a hash of their ports:
      -- open keep-alive connections (a cheap /race?n=0 says which worker took
      -- each) until each worker holds two, then start the four races together.
      local k = key("race")
      local by_worker, spare = { ["0"] = {}, ["1"] = {} }, {}
      for _ = 1, 64 do
        if #by_worker["0"] >= 2 and #by_worker["1"] >= 2 then break end
        local c = proxy:connect()
        assert(c:send("GET /race?k=" .. k .. "&n=0 HTTP/1.1\r\nHost: x\r\n\r\n"))
        local res = assert(c:response({ timeout = 5 }))
        local list = by_worker[res.h["x-worker"]]
        if #list < 2 then list[#list + 1] = c else spare[#spare + 1] = c end
      end
      for _, c in ipairs(spare) do c:close() end
      assert(#by_worker["0"] == 2 and #by_worker["1"] == 2, "64 connections did not reach both workers")
      local conns = { by_worker["0"][1], by_worker["1"][1], by_worker["0"][2], by_worker["1"][2] }
      for _, c in ipairs(conns) do
        assert(c:send("GET /race?k=" .. k .. "&n=20000 HTTP/1.1\r\nHost: x\r\n\r\n"))
      end
      local bad, other = 0, 0
      for _, c in ipairs(conns) do
        local res = assert(c:response({ timeout = 60 }))
        c:close()
        assert.equal(200, res.status, res.body)
        local b, o = res.body:match("^bad=(%d+) other=(%d+)$")
        bad, other = bad + tonumber(b), other + tonumber(o)
      end
      assert.is_true(other > 0, "the workers never read each other's writes: no race happened")
      assert.equal(0, bad)
    end)
  end)

  describe("keys chosen to collide", function()
    it("10,000 keys with one hash under the old hash spread: none evicted, all found", function()
      local res = assert(proxy:request({ path = "/collide", timeout = 60 }))
      assert.equal(200, res.status, res.body)
      assert.equal("keys=10000 evictions=0 present=10000", res.body)
    end)
  end)
end)
