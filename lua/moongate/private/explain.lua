-- `moongate -T` / `--explain-config` (issue 14, docs/policies.md): loads the
-- config and describes every route, in the order they are matched, with its
-- policy chain (global first) and its hooks in the order they run.
local loader = require "moongate.private.loader"
local mg = require "moongate"
local policy = require "moongate.policy"

local ipairs, concat, fmt = ipairs, table.concat, string.format

local _M = {}

local order = {} -- the route hooks in request order (moongate.hooks)
for _, h in ipairs(require "moongate.hooks") do
  if h[2] == "route" then order[#order + 1] = h[1] end
end

--- The text for the config at `path` (absolute), or nil and the error.
function _M.text(path)
  local conf, err = loader.load(path)
  if not conf then return nil, err end
  local st = mg._state()
  local out = { "config " .. path .. " (routes in the order they are tried)" }
  local global = {}
  for _, name in ipairs(order) do
    if st.hooks[name] then global[#global + 1] = fmt("%s x%d", name, #st.hooks[name]) end
  end
  if #global > 0 then out[#out + 1] = "global hooks (mg.on, before every route's policies): " .. concat(global, ", ") end
  local nglobal = #st.policies
  for i, r in ipairs(conf.routes) do
    local up = r.upstream or (r.respond_fn and "respond function") or "respond " .. r.respond.status
    out[#out + 1] = fmt("route %d: listener=%s host=%s path=%s methods=%s upstream=%s (%s)", i,
      r.listener or "*", r.host or "*", r.path, r.methods and concat(r.methods, ",") or "*", up, r.site)
    local chain = r.chain or {}
    if #chain == 0 then out[#out + 1] = "  policies: none" end
    for j, p in ipairs(chain) do
      local d = policy.describe(p)
      out[#out + 1] = fmt("  policy %d: %s (%s)%s", j, p.name, j <= nglobal and "global" or "route",
        d ~= "" and ": " .. d or "")
    end
    local hooks = {}
    for _, name in ipairs(order) do
      if name == "cache_key" and r.cache_key then hooks[#hooks + 1] = name
      elseif r.on and r.on[name] then hooks[#hooks + 1] = name end
    end
    out[#out + 1] = "  hooks: " .. (#hooks > 0 and concat(hooks, ", ") or "none")
  end
  return concat(out, "\n") .. "\n"
end

return _M
