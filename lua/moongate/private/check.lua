-- Argument checking for the config DSL. Errors point at the user's proxy.lua line:
-- the first stack frame whose source is not a moongate library file.
local debug_getinfo = debug.getinfo
local fmt = string.format
local type, pairs, ipairs, tostring, tonumber, error = type, pairs, ipairs, tostring, tonumber, error

local _M = {}

-- The library's own folder ("@/x/lua/moongate/"): frames from files under it are
-- ours, every other Lua file is the user's.
local lib_prefix = debug_getinfo(1, "S").source:match("^(@.*/)private/[^/]*$") or "@lua/moongate/"

local function user_site()
  local level = 2
  while true do
    local info = debug_getinfo(level, "Sl")
    if not info then return "?" end
    local src = info.source or ""
    if info.currentline and info.currentline > 0 and src:sub(1, 1) == "@"
       and src:sub(1, #lib_prefix) ~= lib_prefix then
      return src:sub(2) .. ":" .. info.currentline
    end
    level = level + 1
  end
end
_M.user_site = user_site

--- Raises a config error prefixed with the user's file:line.
function _M.fail(...)
  error(user_site() .. ": " .. fmt(...), 0)
end

--- Checks that every key of `t` is in `allowed`; `what` names the call.
function _M.keys(t, allowed, what)
  for k in pairs(t) do
    if type(k) ~= "number" and not allowed[k] then
      _M.fail("%s: unknown key '%s'", what, tostring(k))
    elseif type(k) == "number" and not allowed[1] then
      _M.fail("%s: unexpected positional value #%d", what, k)
    end
  end
end

function _M.type(v, ty, what, key)
  if type(v) ~= ty then
    _M.fail("%s: '%s' must be a %s, got %s", what, key, ty, type(v))
  end
  return v
end

--- A non-negative number, optionally bounded.
function _M.number(v, what, key, min, max)
  _M.type(v, "number", what, key)
  if v ~= v or (min and v < min) or (max and v > max) then
    _M.fail("%s: '%s' out of range (%s)", what, key, tostring(v))
  end
  return v
end

--- A whole number, bounded like check.number.
function _M.whole(v, what, key, min, max)
  _M.number(v, what, key, min, max)
  if v % 1 ~= 0 then _M.fail("%s: '%s' must be a whole number, got %s", what, key, tostring(v)) end
  return v
end

--- A size in bytes: a whole number, or a string like "64k", "10m", "1g"; at
--- least `min` (default 0), at most 2^40.
function _M.size(v, what, key, min)
  local n = v
  if type(v) == "string" then
    local d, unit = v:match("^(%d+)([kmgKMG]?)$")
    if not d then _M.fail("%s: '%s' must be bytes (a number, or like \"64k\", \"10m\"), got %s", what, key, v) end
    n = tonumber(d) * (({ [""] = 1, k = 1024, m = 1048576, g = 1073741824 })[unit:lower()])
  elseif type(v) ~= "number" then
    _M.fail("%s: '%s' must be bytes (a number, or like \"64k\", \"10m\"), got a %s", what, key, type(v))
  end
  if n ~= n or n < (min or 0) or n > 2^40 or n % 1 ~= 0 then
    _M.fail("%s: '%s' must be a whole number of bytes from %d to 2^40, got %s", what, key, min or 0, tostring(v))
  end
  return n
end

--- True when s is an HTTP token (RFC 9110 tchar+): a method or a header name.
--- The one pattern for req:respond, req:set_method, mg.http and route `respond`.
function _M.token(s)
  return type(s) == "string" and s:find("^[%w!#$%%&'*+%-.^_`|~]+$") ~= nil
end

--- True when v is an IPv4 or IPv6 address, optionally with a /prefix length that
-- fits it ("10.0.0.0/8", "192.168.1.7", "fd00::/8", "::1"). The C side parses it
-- again (core/cidr.c) and is the final judge; this gives the user's file:line.
function _M.cidr(v)
  if type(v) ~= "string" then return false end
  local addr, bits = v:match("^([^/]+)/(%d+)$")
  if not addr then addr = v end
  local a, b, c, d = addr:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  local max
  if a then
    for _, n in ipairs { a, b, c, d } do
      if #n > 3 or tonumber(n) > 255 then return false end
    end
    max = 32
  elseif addr:match("^[%x:%.]+$") and addr:find(":", 1, true) then
    max = 128
  else
    return false
  end
  if bits and (#bits > 3 or tonumber(bits) > max) then return false end
  return true
end

return _M
