-- Runs a proxy.lua and returns the normalised config the C core reads
-- (core/config.c walks this table; keep the two in sync).
local mg = require "moongate"
local router = require "moongate.router"
local abi = require "moongate.ffi"

local ipairs, pairs, pcall, load = ipairs, pairs, pcall, load
local open = io.open
local fmt = string.format

local _M = {}

local policy_phases = { "request", "response", "log" } -- issue 14: the phases a policy has

local function abspath(dir, p)
  if p == false or p == "-" or p:sub(1, 1) == "/" then return p end
  return dir .. "/" .. p
end

local function dirname(path)
  local d = path:match("^(.*)/[^/]*$")
  if d == nil then return "." end
  if d == "" then return "/" end
  return d
end

-- Lua shortens long chunk names in its messages ("...long/dir/proxy.lua:3: ...");
-- put the whole path back.
local function full_path(msg, path)
  local shown, rest = msg:match("^%.%.%.(.-)(:%d+:.*)$")
  if shown and path:sub(-#shown) == shown then return path .. rest end
  return msg
end

local function read_all(path)
  local f, err = open(path, "rb")
  if not f then return nil, err end
  local text, rerr = f:read("*a")
  f:close()
  if not text then return nil, path .. ": " .. tostring(rerr) end
  return text
end

--- Loads the config file at `path` (absolute), or runs `source` under that name
--- when given (the text an earlier load read). Returns the normalised table
--- (its `source` is the text that ran), or nil and a message naming file:line.
function _M.load(path, source)
  local dir = dirname(path)
  mg._reset(dir)
  local own = dir .. "/?.lua;" .. dir .. "/?/init.lua;"
  if package.path:sub(1, #own) ~= own then package.path = own .. package.path end
  if not source then
    local rerr
    source, rerr = read_all(path)
    if not source then return nil, "cannot open config " .. rerr end
  end
  -- LuaJIT's lexer skips a UTF-8 BOM and a first #! line in any chunk, as
  -- loadfile would
  local chunk, err = load(source, "@" .. path)
  if not chunk then return nil, full_path(err, path) end
  local ok, perr = pcall(chunk)
  if not ok then return nil, full_path(tostring(perr), path) end
  local st = mg._state()

  if #st.listeners == 0 then return nil, fmt("%s: no mg.listen { ... } address", path) end
  local c = st.config
  local out = {
    workers = c.workers or 0,
    access_log = abspath(dir, c.access_log == nil and "logs/access.log" or c.access_log),
    error_log = abspath(dir, c.error_log or "-"),
    log_level = c.log_level or "info",
    pid = abspath(dir, c.pid or "logs/moongate.pid"),
    timeouts = {}, limits = {},
    listeners = st.listeners, upstreams = st.upstreams, routes = {},
    hooks = 0, shared = {}, watch = c.watch or false, files = { path }, source = source,
    forward_path = c.forward_path or "normalized", trusted_proxies = c.trusted_proxies or {},
    keep_target = c.keep_target or false, -- i14-waf-core: set by mg.policy.waf
  }
  -- the cache store exists when mg.config has `cache` or a route caches (defaults)
  local any_cache = c.cache ~= nil
  for _, r in ipairs(st.routes) do any_cache = any_cache or r.cache == true end
  if any_cache then
    local d = mg._cache_defaults
    local cc = c.cache or {}
    out.cache = {
      memory = cc.memory or d.memory, max_object = cc.max_object or d.max_object,
      heuristic_max = cc.heuristic_max or d.heuristic_max,
      allow_set_cookie = cc.allow_set_cookie or d.allow_set_cookie,
      -- the disk store: a folder relative to proxy.lua's, as the other paths
      path = cc.path and (cc.path:sub(1, 1) == "/" and cc.path or dir .. "/" .. cc.path) or nil,
      size = cc.path and (cc.size or d.size) or nil,
    }
  end
  -- the files proxy.lua required from its own folder: watched for live reload
  for name in pairs(package.loaded) do
    local file = type(name) == "string" and package.searchpath(name, own)
    if file then out.files[#out.files + 1] = file end
  end
  table.sort(out.files)
  local names = mg._hook_names
  local numbers = abi.hooks
  for name in pairs(st.hooks) do
    if names[name] then out.hooks = out.hooks + 2 ^ numbers[name] end
  end
  for name, bytes in pairs(st.shared) do out.shared[#out.shared + 1] = { name = name, size = bytes } end
  table.sort(out.shared, function(a, b) return a.name < b.name end)
  for k, v in pairs(mg._defaults.timeouts) do out.timeouts[k] = (c.timeouts and c.timeouts[k]) or v end
  for k, v in pairs(mg._defaults.limits) do
    local x = c.limits and c.limits[k]
    if x == nil then x = v end
    out.limits[k] = x
  end

  local index = {}
  for i, u in ipairs(st.upstreams) do index[u.name] = i end
  -- i13-compress: every route's settings in full (false: off). Off unless mg.config
  -- or the route asks; a route's table completes mg.config's, which completes the defaults.
  local cdefaults = mg._compress_defaults
  local cglobal = c.compress ~= nil and mg._compress_settings(c.compress, cdefaults, "mg.config") or false
  for _, r in ipairs(st.routes) do
    if r.listener and not st.listener_names[r.listener] then
      return nil, fmt("%s: mg.route: unknown listener '%s'", r.site, r.listener)
    end
    r.upstream_index = r.upstream and index[r.upstream] or 0
    if r.compress_raw == nil then r.compress = cglobal
    else r.compress = mg._compress_settings(r.compress_raw, cglobal or cdefaults, "mg.route") end
    -- i12-split: the split's upstreams as indices too (core/config.c reads these)
    if r.split_list then
      for _, e in ipairs(r.split_list) do e.index = index[e.upstream] end
    end
    if r.split then
      for _, v in ipairs(r.split.values) do v.index = index[v.upstream] end
      r.split.present_index = r.split.present and index[r.split.present] or 0
    end
    local mask = 0
    if r.on then
      for name in pairs(r.on) do mask = mask + 2 ^ abi.hooks[name] end
    end
    if r.respond_fn then mask = mask + 2 ^ abi.HOOK_RESPOND end
    if r.cache_key then mask = mask + 2 ^ abi.hooks.cache_key end -- i13-api: cache = { key = fn }
    -- issue 14: the route's policy chain, global ones first (runtime.lua runs it
    -- in the route's request / response / log hook, before the route's own)
    if #st.policies > 0 or r.use then
      local chain = {}
      for _, p in ipairs(st.policies) do chain[#chain + 1] = p end
      for _, p in ipairs(r.use or {}) do chain[#chain + 1] = p end
      r.chain = chain
      for _, phase in ipairs(policy_phases) do
        local bit = 2 ^ abi.hooks[phase]
        if not (r.on and r.on[phase]) then
          for _, p in ipairs(chain) do
            if p[phase] then mask = mask + bit; break end
          end
        end
      end
    end
    r.hooks = mask
    out.routes[#out.routes + 1] = r
  end
  router.sort(out.routes)
  return out
end

return _M
