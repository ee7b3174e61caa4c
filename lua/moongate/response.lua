-- The response object handed to the response, body and log hooks.
local ffi = require "ffi"
local abi = require "moongate.ffi"
local hdr = require "moongate.private.headers"

local C = ffi.C
local ffi_cast = ffi.cast
local type, error, pairs, setmetatable = type, error, pairs, setmetatable

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

return _M
