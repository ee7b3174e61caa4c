-- lua/moongate/shdict.lua's get against a stand-in for core/shdict.c: each call of
-- mg_shdict_get sees the next value of a script, as when another worker sets the key
-- between two calls. The stand-in keeps the C contract (core/shdict.h): it copies at
-- most bufcap bytes and reports the full length.
local ffi = require "ffi"

local STRING, NUMBER, NIL = 2, 1, 0
local DELETED = {} -- in a script: the key is absent for that call

describe("shared dict get (Lua wrapper)", function()
  local real_abi, shdict
  local script, caps -- the values the next calls see; the bufcap of each call

  local fake = {
    mg_shdict_find = function() return true end,
    mg_shdict_get = function(h, key, klen, type_out, num_out, buf, bufcap, len_out)
      local v = assert(table.remove(script, 1), "get called more often than scripted")
      caps[#caps + 1] = tonumber(bufcap)
      num_out[0], len_out[0] = 0, 0
      if type(v) == "string" then
        type_out[0], len_out[0] = STRING, #v
        ffi.copy(buf, v, math.min(#v, tonumber(bufcap)))
      elseif type(v) == "number" then
        type_out[0], num_out[0] = NUMBER, v
      else
        type_out[0] = NIL
      end
      return 0
    end,
  }

  setup(function()
    real_abi = require "moongate.ffi"
    local abi = setmetatable({ C = fake }, { __index = real_abi })
    package.loaded["moongate.ffi"] = abi
    package.loaded["moongate.shdict"] = nil
    shdict = require "moongate.shdict"
  end)

  teardown(function()
    package.loaded["moongate.ffi"] = real_abi
    package.loaded["moongate.shdict"] = nil
  end)

  before_each(function()
    script, caps = {}, {}
  end)

  local a5000, b6000 = string.rep("a", 5000), string.rep("b", 6000)

  it("a value above 4 KiB: asks again with a buffer of its size", function()
    script = { a5000, a5000 }
    assert.equal(a5000, shdict.get("d"):get("k"))
    assert.same({ 4096, 5000 }, caps)
  end)

  it("a value that grew between the two calls is asked for again, never read past the buffer", function()
    script = { a5000, b6000, b6000 }
    local v = shdict.get("d"):get("k")
    assert.equal(6000, #v)
    assert.is_true(v == b6000, "not the whole value written: " .. v:sub(4990, 5010):gsub("%c", "?"))
    assert.same({ 4096, 5000, 10000 }, caps) -- the third buffer at least doubles
    assert.equal(0, #script)
  end)

  it("a value that keeps growing is asked for until it fits", function()
    local c30000 = string.rep("c", 30000)
    script = { a5000, b6000, string.rep("x", 11000), c30000, c30000 }
    assert.equal(c30000, shdict.get("d"):get("k"))
    assert.same({ 4096, 5000, 10000, 20000, 40000 }, caps)
  end)

  it("a value that shrank, became a number or was deleted meanwhile: the new value", function()
    script = { a5000, "small" }
    assert.equal("small", shdict.get("d"):get("k"))
    script = { a5000, 42 }
    assert.equal(42, shdict.get("d"):get("k"))
    script = { a5000, DELETED }
    assert.is_nil(shdict.get("d"):get("k"))
    assert.equal(0, #script)
  end)
end)
