-- Header access shared by request.lua and response.lua: the same FFI shapes
-- (get by name and index, count-then-fill, set/add/del) for both heads.
local ffi = require "ffi"
local abi = require "moongate.ffi"

local ffi_str = ffi.string
local type, tostring, error, pairs, lower = type, tostring, error, pairs, string.lower
local EPHASE, EINVAL, ENOTFOUND = abi.EPHASE, abi.EINVAL, abi.ENOTFOUND

-- reused out-parameters: hooks run one at a time per worker state
local out = ffi.new("mg_str_t[1]")
local name_out = ffi.new("mg_str_t[1]")
local value_out = ffi.new("mg_str_t[1]")

local _M = {}

local phase_names = {} -- hook number -> name, from the one list (moongate.hooks)
for name, n in pairs(abi.hooks) do phase_names[n] = name end
_M.phase_names = phase_names

--- Turns a C code into a Lua error naming what was called (level 3: the user's line).
function _M.check(rc, what)
  if rc >= 0 then return rc end
  if rc == EPHASE then error(what .. ": not allowed in this hook", 3) end
  if rc == EINVAL then error(what .. ": invalid argument", 3) end
  if rc == ENOTFOUND then return nil end
  error(what .. ": failed (" .. rc .. ")", 3)
end

--- One header value, or a list when repeated, or nil.
function _M.get(fn, r, name)
  if type(name) ~= "string" then error("header name must be a string", 3) end
  local count = fn(r, name, #name, 0, out) -- how many have that name
  if count == EPHASE then error("header: not allowed in this hook", 3) end
  if count <= 0 then return nil end
  local first = ffi_str(out[0].p, out[0].len)
  if count == 1 then return first end
  local list = { first }
  for n = 1, count - 1 do
    fn(r, name, #name, n, out)
    list[n + 1] = ffi_str(out[0].p, out[0].len)
  end
  return list
end

--- All headers: lower-case name -> value (a list when repeated).
function _M.all(count_fn, at_fn, r)
  local t = {}
  for i = 0, tonumber(count_fn(r)) - 1 do
    if at_fn(r, i, name_out, value_out) == 0 then
      local k = lower(ffi_str(name_out[0].p, name_out[0].len))
      local v = ffi_str(value_out[0].p, value_out[0].len)
      local prev = t[k]
      if prev == nil then t[k] = v
      elseif type(prev) == "table" then prev[#prev + 1] = v
      else t[k] = { prev, v } end
    end
  end
  return t
end

--- set/add/del; value nil with op set deletes.
function _M.set(fn, r, name, value, op, what)
  if type(name) ~= "string" then error(what .. ": header name must be a string", 3) end
  if value == nil then
    op = abi.HDR_DEL
    value = ""
  elseif type(value) == "table" then
    -- a list: replace with every value
    _M.set(fn, r, name, nil, abi.HDR_DEL, what)
    for i = 1, #value do _M.set(fn, r, name, value[i], abi.HDR_ADD, what) end
    return true
  elseif type(value) ~= "string" then
    value = tostring(value)
  end
  local rc = fn(r, name, #name, value, #value, op)
  if rc == EPHASE then error(what .. ": not allowed in this hook", 3) end
  if rc == EINVAL then error(what .. ": invalid header name or value", 3) end
  if rc < 0 then error(what .. ": failed (" .. rc .. ")", 3) end
  return true
end

--- Adds header(), headers(), set_header(), add_header() and del_header() to
--- `methods`, for one head (`prefix` "req" or "res" names them in errors).
function _M.install(methods, prefix, get_fn, count_fn, at_fn, set_fn)
  local get, all, set = _M.get, _M.all, _M.set
  local SET, ADD, DEL = abi.HDR_SET, abi.HDR_ADD, abi.HDR_DEL
  local set_what, add_what, del_what = prefix .. ":set_header", prefix .. ":add_header", prefix .. ":del_header"
  --- :header(name): the value, a list of values when repeated, or nil.
  function methods.header(self, name) return get(get_fn, self._r, name) end
  --- :headers(): lower-case name -> value (a list when repeated).
  function methods.headers(self) return all(count_fn, at_fn, self._r) end
  -- the setters end in `return true`, not in a tail call: errors name the caller's line
  function methods.set_header(self, name, value)
    set(set_fn, self._r, name, value, SET, set_what)
    return true
  end
  function methods.add_header(self, name, value)
    if value == nil then error(add_what .. ": value expected", 2) end
    set(set_fn, self._r, name, value, ADD, add_what)
    return true
  end
  function methods.del_header(self, name)
    set(set_fn, self._r, name, nil, DEL, del_what)
    return true
  end
end

return _M
