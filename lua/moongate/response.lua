-- The response object handed to the response, body and log hooks.
local ffi = require "ffi"
local abi = require "moongate.ffi"
local hdr = require "moongate.private.headers"

local C = ffi.C
local ffi_cast = ffi.cast
local type, error, pairs, setmetatable, tostring = type, error, pairs, setmetatable, tostring
local lower, find = string.lower, string.find
local token = require("moongate.private.check").token

local _M = {}
local methods = {}

local mt = {
  __index = function(self, k)
    local m = methods[k]
    if m then return m end
    if k == "status" then
      local s = C.mg_res_status(self._r)
      if s == abi.EPHASE then error("res.status: not available in this hook", 2) end
      return s
    end
    return nil
  end,
}

function _M.new(ptr)
  local obj = { _r = ffi_cast("mg_req_t *", ptr) }
  for k, f in pairs(methods) do obj[k] = f end -- see request.new
  return setmetatable(obj, mt)
end

function _M.reset(res, ptr)
  res._r = ffi_cast("mg_req_t *", ptr)
end

--- Detaches the object from its request and attaches it again (runtime.req_for).
function _M.detach(res) res._r = nil end
function _M.attach(res, ptr) res._r = ffi_cast("mg_req_t *", ptr) end

-- res:header, res:headers, res:set_header, res:add_header, res:del_header
hdr.install(methods, "res", C.mg_res_header, C.mg_res_header_count, C.mg_res_header_at,
            C.mg_res_set_header)

function methods.set_status(self, status)
  if type(status) ~= "number" or status % 1 ~= 0 then error("res:set_status: integer expected", 2) end
  hdr.check(C.mg_res_set_status(self._r, status), "res:set_status")
  return true
end

--- res:compress(false): this response goes as it comes, whatever the route's
--- compress settings; res:compress(true) lets them decide again. In the request
--- and response hooks (the head is not sent yet). i13-compress.
function methods.compress(self, on)
  if type(on) ~= "boolean" then error("res:compress: boolean expected", 2) end
  hdr.check(C.mg_res_compress(self._r, on and 1 or 0), "res:compress")
  return true
end

-- An answer moongate writes itself (req:respond: a policy's refusal, a respond
-- route, a request hook's answer), as the response phase of the policies sees it
-- before it is sent (docs/policies.md "Moongate's own answers"): the same methods
-- as an upstream answer's `res`, over a list of { name, value } pairs held in Lua.
local own_methods = {}
local own_mt = { __index = own_methods }

--- Checks one header field of an own answer; raises at `level` naming `what`.
function _M.check_field(name, value, what, level)
  if not token(name) then error(what .. ": bad header name " .. tostring(name), level + 1) end
  local ln = lower(name)
  if ln == "content-length" or ln == "transfer-encoding" or ln == "connection" then
    error(what .. ": header " .. name .. " is set by moongate", level + 1)
  end
  if type(value) == "number" then value = tostring(value) end
  if type(value) ~= "string" then error(what .. ": header " .. name .. " must be a string", level + 1) end
  if find(value, "[%z\r\n]") then error(what .. ": header " .. name .. " has CR, LF or NUL", level + 1) end
  return value
end
local check_field = _M.check_field

--- The object for an own answer of `status` with the header fields `fields`
--- ({ { name, value }, ... }, in the order they go out; the list is kept).
function _M.own(status, fields)
  return setmetatable({ status = status, _fields = fields }, own_mt)
end

--- The header fields of an own answer as they are now: { { name, value }, ... }.
function _M.own_fields(res) return res._fields end

local function own_del(fields, ln)
  local j = 0
  for i = 1, #fields do
    local f = fields[i]
    fields[i] = nil
    if lower(f[1]) ~= ln then j = j + 1; fields[j] = f end
  end
end

function own_methods.header(self, name)
  if type(name) ~= "string" then error("header name must be a string", 2) end
  local ln, one, list = lower(name), nil, nil
  local fields = self._fields
  for i = 1, #fields do
    if lower(fields[i][1]) == ln then
      if one == nil then one = fields[i][2]
      elseif list == nil then list = { one, fields[i][2] }
      else list[#list + 1] = fields[i][2] end
    end
  end
  return list or one
end

function own_methods.headers(self)
  local t = {}
  local fields = self._fields
  for i = 1, #fields do
    local k, v = lower(fields[i][1]), fields[i][2]
    local prev = t[k]
    if prev == nil then t[k] = v
    elseif type(prev) == "table" then prev[#prev + 1] = v
    else t[k] = { prev, v } end
  end
  return t
end

-- set: replaces every field of that name (at the place of the first, else at the
-- end); nil deletes; a list sets one field per value
function own_methods.set_header(self, name, value)
  if type(name) ~= "string" then error("res:set_header: header name must be a string", 2) end
  local fields = self._fields
  if value == nil then
    own_del(fields, lower(name))
    return true
  end
  local list = type(value) == "table" and value or { value }
  local vals = {}
  for i = 1, #list do vals[i] = check_field(name, list[i], "res:set_header", 2) end
  own_del(fields, lower(name))
  for i = 1, #vals do fields[#fields + 1] = { name, vals[i] } end
  return true
end

function own_methods.add_header(self, name, value)
  if value == nil then error("res:add_header: value expected", 2) end
  if type(name) ~= "string" then error("res:add_header: header name must be a string", 2) end
  local list = type(value) == "table" and value or { value }
  local fields = self._fields
  for i = 1, #list do fields[#fields + 1] = { name, check_field(name, list[i], "res:add_header", 2) } end
  return true
end

function own_methods.del_header(self, name)
  if type(name) ~= "string" then error("res:del_header: header name must be a string", 2) end
  own_del(self._fields, lower(name))
  return true
end

function own_methods.set_status(self, status)
  if type(status) ~= "number" or status % 1 ~= 0 then error("res:set_status: integer expected", 2) end
  if status < 200 or status > 599 then error("res:set_status: invalid argument", 2) end
  self.status = status
  return true
end

--- Own answers go out as written (never compressed): accepted, nothing to do.
function own_methods.compress(self, on)
  if type(on) ~= "boolean" then error("res:compress: boolean expected", 2) end
  return true
end

return _M
