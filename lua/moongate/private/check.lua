-- Argument checking for the config DSL. Errors point at the user's proxy.lua line:
-- the first stack frame whose source is not a moongate library file.
local debug_getinfo = debug.getinfo
local fmt = string.format
local type, pairs, tostring, error = type, pairs, tostring, error

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

return _M
