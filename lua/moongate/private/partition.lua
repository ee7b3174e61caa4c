-- The partition key of a counting policy (rate_limit, limit_conn): what `key`
-- names, as a function of the request returning the partition (a string), or nil
-- when the request is not counted. docs/policies.md "rate_limit" (key).
local abi = require "moongate.ffi"
local ffi = require "ffi"
local check = require "moongate.private.check"

local C = abi.C
local fail = check.fail
local type, tostring = type, tostring

local info = ffi.new("mg_req_info_t")

local _M = {}

--- The client's address (X-Forwarded-For from trusted_proxies included).
function _M.client(req) return req.client_ip or "-" end
local client = _M.client

local WANT = "'key' must be \"ip\", \"header:NAME\", \"consumer\", \"route\" or a function"

--- key -> function(req) -> partition | nil, and the key's description for -T.
--- `name` (the policy's) goes into the error a user's function causes.
function _M.fn(k, what, name)
  if k == nil or k == "ip" then return client, "ip" end
  if type(k) == "function" then
    return function(req)
      local v = k(req)
      if v == nil or v == false then return nil end
      if type(v) ~= "string" and type(v) ~= "number" then
        error(name .. ": the key function returned a " .. type(v) .. " (want a string or nil)", 0)
      end
      return "f:" .. tostring(v)
    end, "function"
  end
  if type(k) ~= "string" then fail("%s: " .. WANT, what) end
  if k == "consumer" then
    -- no consumer (no auth policy ran or it let the request through anonymous): by address
    return function(req)
      local c = req.ctx.consumer
      if c and c.name then return "c:" .. tostring(c.name) end
      return client(req)
    end, "consumer"
  end
  if k == "route" then
    return function(req)
      if C.mg_req_info(req._r, info) ~= 0 then return "-" end
      return "r" .. tostring(info.route)
    end, "route"
  end
  local h = k:match("^header:(.+)$")
  if h then
    if not check.token(h) then fail("%s: key '%s': '%s' is not a header name", what, k, h) end
    -- without the header (or empty): by address
    return function(req)
      local v = req:header(h)
      if type(v) == "table" then v = v[1] end
      if v == nil or v == "" then return client(req) end
      return "h:" .. v
    end, k
  end
  fail("%s: " .. WANT .. ", got \"%s\"", what, k)
end

--- The shared dictionary a counting policy keeps its counters in: `shared` (it
--- must be declared in mg.config before the policy's line), else `default`,
--- declared here with `size` bytes unless the user declared it first (then the
--- user's size stands).
function _M.dict(shared, what, default, size)
  local declared = require("moongate")._state().shared
  if shared ~= nil then
    check.type(shared, "string", what, "shared")
    if not declared[shared] then
      fail("%s: no shared dictionary '%s' (declare it in mg.config { shared = { %s = \"10m\" } } before this line)",
           what, shared, shared)
    end
    return shared
  end
  if not declared[default] then declared[default] = size end
  return default
end

-- policies made so far per config line, so that two on one line get two
-- counters (a config loads in a Lua state of its own: this starts empty)
local per_site = {}

--- "FILE:LINE#N": which policy of its line this one is (a key prefix).
function _M.instance()
  local site = check.user_site()
  local n = (per_site[site] or 0) + 1
  per_site[site] = n
  return site .. "#" .. n
end

return _M
