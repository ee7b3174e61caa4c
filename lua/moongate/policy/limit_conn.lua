-- mg.policy.limit_conn (issue 14): at most `limit` requests in progress at once per
-- key, counted in a shared dictionary (mg.shared) every worker of the process sees:
-- the count goes up in the request phase (atomically, in C: mg_req_hold) and down
-- when the request ends, however it ends (answered, client gone mid-response,
-- upstream failed, hook error), in C at the request's end: the log phase does not
-- run for a request that got no answer, so it could not be the release point.
-- Also `max_body`: a request body over that many bytes gets 413 (Content-Length
-- checked at once; a chunked body is read, up to max_body + 1 bytes, and counted).
-- Phase: request. docs/policies.md "limit_conn".
local ffi = require "ffi"
local abi = require "moongate.ffi"
local check = require "moongate.private.check"
local partition = require "moongate.private.partition"
local shdict = require "moongate.shdict"

local C = abi.C
local fail = check.fail
local type, tostring, tonumber, setmetatable, pairs = type, tostring, tonumber, setmetatable, pairs
local fmt = string.format

local keys = { limit = true, key = true, status = true, shared = true, body = true,
               max_body = true, headers = true }

local DEFAULT_DICT, DEFAULT_DICT_SIZE = "limit_conn", 4 * 1024 * 1024

local count_out = ffi.new("double[1]")

local Policy = {}
Policy.__index = Policy




--- mg.policy.limit_conn { limit, key, status, shared, body, headers, max_body }
local function new(conf)
  local what = "mg.policy.limit_conn"
  check.keys(conf, keys, what)
  if conf.limit == nil and conf.max_body == nil then
    fail("%s: 'limit' is required (requests in progress at once per key), or 'max_body' alone", what)
  end
  local limit = conf.limit ~= nil and check.whole(conf.limit, what, "limit", 1, 1e9) or nil
  local status = conf.status == nil and 503 or check.whole(conf.status, what, "status", 400, 599)
  local max_body = conf.max_body ~= nil and check.size(conf.max_body, what, "max_body") or nil
  local body = conf.body == nil and "Service Unavailable: too many requests in progress\n"
               or check.type(conf.body, "string", what, "body")
  local extra = {}
  if conf.headers ~= nil then
    check.type(conf.headers, "table", what, "headers")
    for k, v in pairs(conf.headers) do
      if not check.token(k) then fail("%s: headers: '%s' is not a header name", what, tostring(k)) end
      if type(v) ~= "string" or v:find("[%z\r\n]") then fail("%s: headers: '%s' must be a string without CR/LF", what, k) end
      extra[k] = v
    end
  end
  if limit == nil and (conf.key ~= nil or conf.status ~= nil or conf.shared ~= nil) then
    fail("%s: 'key', 'status' and 'shared' need 'limit'", what)
  end
  local self = setmetatable({ name = "limit_conn", limit = limit, status = status, max_body = max_body,
                              body = body, extra = extra }, Policy)
  if limit then
    local dict_name = partition.dict(conf.shared, what, DEFAULT_DICT, DEFAULT_DICT_SIZE)
    local fn, key_desc = partition.fn(conf.key, what, "limit_conn")
    self.dict_name, self.key_desc, self._key = dict_name, key_desc, fn
    self._dict = shdict.get(dict_name)
    self._prefix = "lc|" .. partition.instance() .. "|"
  end
  return self
end

function Policy:describe()
  local s = {}
  if self.limit then
    s[#s + 1] = fmt("limit=%d key=%s status=%d", self.limit, self.key_desc, self.status)
    if self.dict_name ~= DEFAULT_DICT then s[#s + 1] = "shared=" .. self.dict_name end
  end
  if self.max_body then s[#s + 1] = "max_body=" .. fmt("%d", self.max_body) end
  return table.concat(s, " ")
end

local function too_large(req)
  return req:respond(413, "Payload Too Large\n")
end

--- Request phase: the body size first (a refused body holds no slot), then the slot.
function Policy:request(req)
  local mb = self.max_body
  if mb then
    local cl = req:header("content-length")
    if type(cl) == "table" then cl = cl[1] end
    if cl and tonumber(cl) and tonumber(cl) > mb then return too_large(req) end
    local te = req:header("transfer-encoding")
    if te and not cl then
      -- chunked: read it (bounded by the route's buffer_body) and count
      local ok, err = req:read_body()
      if not ok then
        if err == "body too large" then return too_large(req) end
        return req:respond(400, "Bad Request\n")
      end
      local b = req:body()
      if b and #b > mb then return too_large(req) end
    end
  end
  if not self.limit then return end
  local key = self._key(req)
  if key == nil then return end
  local k = self._prefix .. key
  local rc = C.mg_req_hold(req._r, self._dict:_handle(), k, #k, self.limit, count_out)
  if rc == 1 then return end
  if rc == 0 then
    local h = {}
    for n, v in pairs(self.extra) do h[n] = v end
    return req:respond(self.status, self.body, h)
  end
  if rc == abi.EPHASE then error("limit_conn: not allowed in this hook", 0) end
  -- the dictionary failed (full, out of memory): let the request through, say so
  require("moongate").log.err("limit_conn: shared dictionary '" .. self.dict_name .. "': error " .. tostring(rc)
                              .. " (request let through)")
end

return new
