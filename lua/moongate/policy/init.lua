-- mg.policy: the gateway policies (issue 14, docs/policies.md). mg.policy.NAME
-- loads lua/moongate/policy/NAME.lua on first use; calling it checks the conf and
-- returns a policy object:
--   { name = "...", describe = function(self) -> one line (optional),
--     request = function(self, req), response = function(self, req, res),
--     log = function(self, req) }   -- each phase optional, at least one
-- mg.policy.new(t) checks and marks a user's own table the same way. Only marked
-- objects go into mg.use(...) and a route's `use = { ... }`.
local check = require "moongate.private.check"

local type, pcall, require, tostring, rawget, rawset, setmetatable =
      type, pcall, require, tostring, rawget, rawset, setmetatable
local fail = check.fail

local _M = {}

-- the objects a constructor made (weak: a policy may have its own metatable)
local made = setmetatable({}, { __mode = "k" })

local phases = { "request", "response", "log" }

--- Checks a policy object (from a constructor or the user) and marks it.
local function mark(p, what)
  if type(p) ~= "table" then fail("%s: a policy must be a table, got a %s", what, type(p)) end
  if type(p.name) ~= "string" or #p.name > 64 or not p.name:match("^[%w_%-%.]+$") then
    fail("%s: a policy needs a name (1 to 64 letters, digits, _ - .), got %s", what, tostring(p.name))
  end
  if p.describe ~= nil and type(p.describe) ~= "function" then
    fail("%s: policy '%s': describe must be a function", what, p.name)
  end
  local any = false
  for i = 1, #phases do
    local f = p[phases[i]]
    if f ~= nil then
      if type(f) ~= "function" then fail("%s: policy '%s': %s must be a function", what, p.name, phases[i]) end
      any = true
    end
  end
  if not any then fail("%s: policy '%s' has no request, response or log function", what, p.name) end
  made[p] = true
  return p
end

--- mg.policy.new { name = ..., request = fn, ... }: a user's own policy.
function _M.new(t) return mark(t, "mg.policy.new") end

--- true when `p` was made by a policy constructor or mg.policy.new.
function _M.is(p) return made[p] == true end

--- One line for `moongate -T`: the policy's describe(), or "" (an error is shown).
function _M.describe(p)
  if not p.describe then return "" end
  local ok, s = pcall(p.describe, p)
  if not ok then return "(describe failed: " .. tostring(s) .. ")" end
  return tostring(s or "")
end

-- the lazy loader: mg.policy.NAME -> a constructor wrapping the module's
setmetatable(_M, { __index = function(t, name)
  if type(name) ~= "string" or not name:match("^[%a_][%w_]*$") then
    fail("mg.policy: unknown policy '%s'", tostring(name))
  end
  local modname = "moongate.policy." .. name
  local ok, mod = pcall(require, modname)
  if not ok then
    if type(mod) == "string" and mod:find("module '" .. modname .. "' not found", 1, true) then
      fail("mg.policy: unknown policy '%s'", name)
    end
    error(mod, 0)
  end
  local new = mod
  if type(mod) == "table" then new = rawget(mod, "new") end
  if type(new) ~= "function" then
    fail("mg.policy.%s: lua/moongate/policy/%s.lua returns no constructor", name, name)
  end
  local what = "mg.policy." .. name
  local ctor = function(conf, ...)
    if conf == nil then conf = {} end
    if type(conf) ~= "table" then fail("%s: expects a table, got a %s", what, type(conf)) end
    return mark(new(conf, ...), what)
  end
  rawset(t, name, ctor)
  return ctor
end })

return _M
