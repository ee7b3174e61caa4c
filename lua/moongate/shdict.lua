-- Shared dictionaries (mg.shared): one store per name for all workers, in C
-- (core/shdict.c: sharded, mutex per shard, TTL, LRU eviction).
local ffi = require "ffi"
local abi = require "moongate.ffi"

local C = abi.C
local ffi_str = ffi.string
local type, error, setmetatable, tonumber = type, error, setmetatable, tonumber

local NIL, NUMBER, STRING = 0, 1, 2
local ENOTFOUND, EEXISTS, ETYPE, ENOMEM, ETOOBIG = -20001, -20002, -20003, -20004, -20005

-- reused out-parameters
local type_out = ffi.new("int[1]")
local num_out = ffi.new("double[1]")
local len_out = ffi.new("size_t[1]")
local evicted_out = ffi.new("int[1]")
local buf_size = 4096
local buf = ffi.new("char[?]", buf_size)

local _M = {}
local Dict = {}
local mt = { __index = Dict }

local dicts = {}

--- The dictionary called `name` (looked up in C on first use).
function _M.get(name)
  local d = dicts[name]
  if not d then
    d = setmetatable({ name = name }, mt)
    dicts[name] = d
  end
  return d
end

local function handle(self)
  local h = self._h
  if h == nil then
    h = C.mg_shdict_find(self.name, #self.name)
    if h == nil then error("mg.shared: no dictionary '" .. self.name .. "' (declare it in mg.config { shared = ... })", 3) end
    self._h = h
  end
  return h
end

-- the C handle, for the policies that call shdict functions of their own (rate_limit)
function Dict._handle(self) return handle(self) end

local function key_check(k)
  if type(k) ~= "string" then
    if type(k) == "number" then return tostring(k) end
    error("shared dict: key must be a string", 3)
  end
  if #k == 0 then error("shared dict: empty key", 3) end
  return k
end

local errors = { [EEXISTS] = "exists", [ETYPE] = "not a number", [ENOMEM] = "no memory",
                 [ETOOBIG] = "too big", [ENOTFOUND] = "not found" }

--- dict:get(key): the value (number or string), or nil.
-- C copies under the shard lock, at most bufcap bytes, and reports the value's real
-- length; another worker may change the value between two calls. So a string is
-- taken only from the call whose buffer held all of it: when it did not fit, ask
-- again with a buffer of the reported size, and again (at least doubling) while the
-- value keeps outgrowing it. A value never exceeds one shard's capacity, so that
-- ends after a few rounds at most; in practice one.
function Dict.get(self, key)
  local h = handle(self)
  key = key_check(key)
  local b, cap = buf, buf_size
  while true do
    local rc = C.mg_shdict_get(h, key, #key, type_out, num_out, b, cap, len_out)
    if rc < 0 then return nil, errors[rc] or rc end
    local t = type_out[0]
    if t == NUMBER then return num_out[0] end
    if t ~= STRING then return nil end
    local n = tonumber(len_out[0])
    if n <= cap then return ffi_str(b, n) end
    -- rare: values above 4 KiB; one that outgrew our last buffer gets at least double
    if b ~= buf and n < 2 * cap then n = 2 * cap end
    cap, b = n, ffi.new("char[?]", n)
  end
end

local function store(fn, self, key, value, ttl)
  local h = handle(self)
  key = key_check(key)
  ttl = ttl or 0
  if type(ttl) ~= "number" or ttl < 0 then error("shared dict: ttl must be a number >= 0", 3) end
  local rc
  local tv = type(value)
  if tv == "number" then
    rc = fn(h, key, #key, NUMBER, value, nil, 0, ttl, evicted_out)
  elseif tv == "string" then
    rc = fn(h, key, #key, STRING, 0, value, #value, ttl, evicted_out)
  elseif value == nil then
    rc = fn(h, key, #key, NIL, 0, nil, 0, 0, evicted_out)
  else
    error("shared dict: values are numbers or strings", 3)
  end
  if rc < 0 then return false, errors[rc] or tostring(rc) end
  return true, nil, evicted_out[0] == 1
end

--- dict:set(key, value, ttl?): true, or false and an error; third result: something was evicted.
function Dict.set(self, key, value, ttl) return store(C.mg_shdict_set, self, key, value, ttl) end
--- dict:add(key, value, ttl?): like set, but false, "exists" when the key is there.
function Dict.add(self, key, value, ttl) return store(C.mg_shdict_add, self, key, value, ttl) end

--- dict:incr(key, by, init?, ttl?): the new value, or nil and an error.
function Dict.incr(self, key, by, init, ttl)
  local h = handle(self)
  key = key_check(key)
  by = by or 1
  if type(by) ~= "number" then error("shared dict: incr step must be a number", 2) end
  local has_init = init ~= nil
  local rc = C.mg_shdict_incr(h, key, #key, by, has_init and 1 or 0, init or 0, ttl or 0, num_out)
  if rc < 0 then return nil, errors[rc] or tostring(rc) end
  return num_out[0]
end

function Dict.delete(self, key)
  local h = handle(self)
  key = key_check(key)
  C.mg_shdict_delete(h, key, #key)
  return true
end

return _M
