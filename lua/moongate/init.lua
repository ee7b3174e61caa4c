-- The public config DSL: what proxy.lua sees as `require "moongate"`.
-- Calls record into a per-load state; moongate.private.loader turns that state into
-- the normalised table the C core reads (docs/config.md is the reference).
local check = require "moongate.private.check"
local router = require "moongate.router"

local type, pairs, ipairs, tostring, tonumber, setmetatable =
      type, pairs, ipairs, tostring, tonumber, setmetatable
local fail = check.fail
local upper, lower, match = string.upper, string.lower, string.match

local _M = { _VERSION = "0.1.0" }

local state

--- Forgets everything recorded so far (the loader calls it before each load).
function _M._reset(confdir)
  state = {
    confdir = confdir or ".",
    config = {}, config_site = nil,
    listeners = {}, listener_names = {},
    upstreams = {}, upstream_by_name = {},
    routes = {},
    hooks = {},   -- hook name -> list of functions (mg.on)
    policies = {}, -- mg.use(...): the global policies, in the order written
    shared = {},  -- dict name -> size in bytes
  }
end
_M._reset(".")

function _M._state() return state end

local timeout_keys = {
  client_header = 10, client_body = 30, keepalive = 60, send = 60,
  upstream_connect = 5, upstream_read = 60, upstream_write = 60, drain = 30, handshake = 10,
  request = 60, upstream_paused = 60, tunnel = 300, hook = 30,
}
local limit_keys = {
  head_size = 32768, headers = 100, uri_size = 8192, body_size = 1048576,
  body_rate = 1024, connections = "auto", connections_per_ip = 0,
}
-- timeouts that 0 turns off (every other timeout must be positive)
local timeout_off = { request = true }
-- limits that count things: whole numbers only
local limit_integer = { body_rate = true, connections = true, connections_per_ip = true }
_M._defaults = { timeouts = timeout_keys, limits = limit_keys }

local config_keys = {
  workers = true, access_log = true, error_log = true, log_level = true, pid = true,
  timeouts = true, limits = true, shared = true, watch = true,
  forward_path = true, trusted_proxies = true, compress = true, cache = true,
}
-- mg.config { cache = { ... } } (issue 13): the memory store shared by the workers,
-- and with path (a folder, relative to proxy.lua's) the disk store behind it, of
-- size bytes (docs/cache.md "The disk store").
local cache_keys = { memory = true, max_object = true, heuristic_max = true,
                     allow_set_cookie = true, path = true, size = true }
_M._cache_defaults = { memory = 256 * 1024 * 1024, max_object = 8 * 1024 * 1024,
                       heuristic_max = 86400, allow_set_cookie = false, size = 1024 * 1024 * 1024 }

-- i13-compress: compress = { types, min_length, level, prefer } (docs/compression.md)
local compress_keys = { types = true, min_length = true, level = true, prefer = true }
local coding_levels = { gzip = { 1, 9 }, br = { 0, 11 }, zstd = { 1, 19 } }
local compress_defaults = {
  types = { "text/*", "application/json", "application/javascript", "application/xml",
            "application/xhtml+xml", "application/rss+xml", "application/atom+xml",
            "application/ld+json", "application/manifest+json", "application/wasm",
            "application/x-javascript", "image/svg+xml", "image/x-icon", "font/ttf", "font/otf" },
  min_length = 256,
  level = { gzip = 5, br = 4, zstd = 3 },
  prefer = { "br", "zstd", "gzip" },
}
_M._compress_defaults = compress_defaults

-- A `compress` value checked and completed over `base` (the defaults, or the
-- mg.config settings for a route): a full table, or false (off).
local function compress_settings(v, base, what)
  if v == false then return false end
  if v == true then return base end
  if type(v) ~= "table" then fail("%s: 'compress' must be true, false or a table, got %s", what, type(v)) end
  what = what .. " compress"
  check.keys(v, compress_keys, what)
  local out = { types = base.types, min_length = base.min_length, prefer = base.prefer, level = {} }
  for k, l in pairs(base.level) do out.level[k] = l end
  if v.types ~= nil then
    check.type(v.types, "table", what, "types")
    out.types = {}
    for i, ty in ipairs(v.types) do
      if type(ty) ~= "string" or not match(ty, "^[%w%.%+%-!#$&^_]+/[%w%.%+%-!#$&^_%*]+$") then
        fail("%s: types[%d] is not a media type (like \"text/html\" or \"text/*\"): %s", what, i, tostring(ty))
      end
      out.types[i] = lower(ty)
    end
  end
  if v.min_length ~= nil then
    out.min_length = check.number(v.min_length, what, "min_length", 0, 2^40)
    if out.min_length % 1 ~= 0 then fail("%s: 'min_length' must be a whole number", what) end
  end
  if v.level ~= nil then
    check.type(v.level, "table", what, "level")
    for k, l in pairs(v.level) do
      local range = coding_levels[k]
      if not range then fail("%s level: unknown coding '%s' (gzip, br, zstd)", what, tostring(k)) end
      check.number(l, what .. " level", k, range[1], range[2])
      if l % 1 ~= 0 then fail("%s level: '%s' must be a whole number", what, k) end
      out.level[k] = l
    end
  end
  if v.prefer ~= nil then
    check.type(v.prefer, "table", what, "prefer")
    local seen = {}
    out.prefer = {}
    for i, c in ipairs(v.prefer) do
      if not coding_levels[c] then fail("%s: prefer[%d] is not gzip, br or zstd: %s", what, i, tostring(c)) end
      if seen[c] then fail("%s: prefer lists '%s' twice", what, c) end
      seen[c] = true
      out.prefer[i] = c
    end
    if #out.prefer == 0 then fail("%s: 'prefer' is empty (use compress = false to turn it off)", what) end
  end
  return out
end
_M._compress_settings = compress_settings

-- the names users may write, from the one list of hooks (moongate.hooks)
local hook_names, route_hook_names, route_hook_list = {}, {}, {}
for _, h in ipairs(require "moongate.hooks") do
  if h[2] ~= "internal" then hook_names[h[1]] = true end
  if h[2] == "route" then
    route_hook_names[h[1]] = true
    route_hook_list[#route_hook_list + 1] = h[1]
  end
end
route_hook_list = table.concat(route_hook_list, ", ")
_M._hook_names = hook_names

-- "64k", "10m", "1g" or a number of bytes
local function size(v, what, key)
  if type(v) == "number" then return check.number(v, what, key, 1, 2^40) end
  if type(v) ~= "string" then fail("%s: '%s' must be a size (bytes, or like \"10m\")", what, key) end
  local n, unit = match(lower(v), "^(%d+)([kmg]?)$")
  if not n then fail("%s: '%s' is not a size: %s", what, key, v) end
  local mult = ({ [""] = 1, k = 1024, m = 1024 * 1024, g = 1024 * 1024 * 1024 })[unit]
  -- the same range as the number form: "0" and "99999999999999999g" are refused too
  -- (C reads the value as an unsigned integer)
  return check.number(tonumber(n) * mult, what, key, 1, 2^40)
end
local levels = { debug = true, info = true, warn = true, error = true }

local function log_path(v, what, key)
  if v == false and key == "access_log" then return false end
  check.type(v, "string", what, key)
  if v == "" then fail("%s: '%s' must not be empty", what, key) end
  return v
end

--- mg.config { workers, access_log, error_log, log_level, pid, timeouts, limits }
function _M.config(t)
  if type(t) ~= "table" then fail("mg.config: expects a table") end
  check.keys(t, config_keys, "mg.config")
  local c = state.config
  if t.workers ~= nil then
    if t.workers == "auto" then c.workers = 0
    else c.workers = check.number(t.workers, "mg.config", "workers", 1, 256) end
    if c.workers % 1 ~= 0 then fail("mg.config: 'workers' must be an integer") end
  end
  if t.access_log ~= nil then c.access_log = log_path(t.access_log, "mg.config", "access_log") end
  if t.error_log ~= nil then c.error_log = log_path(t.error_log, "mg.config", "error_log") end
  if t.pid ~= nil then c.pid = log_path(t.pid, "mg.config", "pid") end
  if t.watch ~= nil then c.watch = check.type(t.watch, "boolean", "mg.config", "watch") end
  if t.log_level ~= nil then
    if not levels[t.log_level] then
      fail("mg.config: 'log_level' must be debug, info, warn or error, got %s", tostring(t.log_level))
    end
    c.log_level = t.log_level
  end
  if t.compress ~= nil then
    compress_settings(t.compress, compress_defaults, "mg.config") -- checked here, for the user's line
    c.compress = t.compress -- completed by the loader, with the routes'
  end
  if t.shared ~= nil then
    check.type(t.shared, "table", "mg.config", "shared")
    for name, sz in pairs(t.shared) do
      if type(name) ~= "string" or not match(name, "^[%w_%.%-]+$") then
        fail("mg.config shared: dictionary names must be words, got %s", tostring(name))
      end
      local bytes = size(sz, "mg.config shared", name)
      if bytes < 16384 then fail("mg.config shared: '%s' must be at least 16k", name) end
      state.shared[name] = bytes
    end
  end
  if t.cache ~= nil then
    local w = "mg.config cache"
    check.type(t.cache, "table", "mg.config", "cache")
    check.keys(t.cache, cache_keys, w)
    local cc = {}
    if t.cache.path ~= nil then
      if type(t.cache.path) ~= "string" or t.cache.path == "" then
        fail("%s: 'path' must be a folder name (a non-empty string), got %s", w, tostring(t.cache.path))
      end
      cc.path = t.cache.path
    end
    if t.cache.size ~= nil then
      if cc.path == nil then fail("%s: 'size' is the disk store's cap: it needs 'path'", w) end
      cc.size = size(t.cache.size, w, "size")
    end
    if t.cache.memory ~= nil then cc.memory = size(t.cache.memory, w, "memory") end
    if t.cache.max_object ~= nil then cc.max_object = size(t.cache.max_object, w, "max_object") end
    if t.cache.heuristic_max ~= nil then
      cc.heuristic_max = check.number(t.cache.heuristic_max, w, "heuristic_max", 0, 2^31)
    end
    if t.cache.allow_set_cookie ~= nil then
      cc.allow_set_cookie = check.type(t.cache.allow_set_cookie, "boolean", w, "allow_set_cookie")
    end
    local mem = cc.memory or _M._cache_defaults.memory
    local maxo = cc.max_object or _M._cache_defaults.max_object
    if mem < 65536 then fail("%s: 'memory' must be at least 64k", w) end
    if maxo * 2 > mem then fail("%s: 'max_object' must be at most half of 'memory'", w) end
    if cc.path and (cc.size or _M._cache_defaults.size) < maxo * 2 then
      fail("%s: 'size' must be at least twice 'max_object'", w)
    end
    c.cache = cc
  end
  if t.forward_path ~= nil then
    if t.forward_path ~= "normalized" and t.forward_path ~= "as_received" then
      fail("mg.config: 'forward_path' must be \"normalized\" or \"as_received\", got %s",
           tostring(t.forward_path))
    end
    c.forward_path = t.forward_path
  end
  if t.trusted_proxies ~= nil then
    check.type(t.trusted_proxies, "table", "mg.config", "trusted_proxies")
    local list = {}
    for i, v in ipairs(t.trusted_proxies) do
      if not check.cidr(v) then
        fail("mg.config trusted_proxies: entry %d is not an address or prefix (like 10.0.0.0/8 or fd00::/8): %s",
             i, tostring(v))
      end
      list[i] = v
    end
    for k in pairs(t.trusted_proxies) do
      if type(k) ~= "number" or k < 1 or k > #list or k % 1 ~= 0 then
        fail("mg.config trusted_proxies: must be a list of addresses or prefixes")
      end
    end
    c.trusted_proxies = list
  end
  for _, group in ipairs { { "timeouts", timeout_keys, 0.001, 86400 }, { "limits", limit_keys, 0, 2^40 } } do
    local name, allowed, min, max = group[1], group[2], group[3], group[4]
    local v = t[name]
    if v ~= nil then
      check.type(v, "table", "mg.config", name)
      check.keys(v, allowed, "mg.config " .. name)
      c[name] = c[name] or {}
      for k, n in pairs(v) do
        local what = "mg.config " .. name
        if name == "limits" and k == "connections" and n == "auto" then
          c[name][k] = n
        elseif name == "timeouts" and timeout_off[k] and n == 0 then
          c[name][k] = 0
        else
          c[name][k] = check.number(n, what, k, min, max)
          if name == "limits" and limit_integer[k] and n % 1 ~= 0 then
            fail("%s: '%s' must be a whole number, got %s", what, k, tostring(n))
          end
        end
      end
    end
  end
end

local function parse_addr(s, what)
  if type(s) ~= "string" then fail("%s: address must be a string, got %s", what, type(s)) end
  local host, port = match(s, "^%[([%x:%.]+)%]:(%d+)$")
  if not host then host, port = match(s, "^([%w%.%-]+):(%d+)$") end
  port = tonumber(port)
  if not host or not port or port < 1 or port > 65535 then
    fail("%s: bad address '%s' (want host:port)", what, s)
  end
  return host, port
end

local listen_keys = { [1] = true, name = true, tls = true, redirect_https = true, deferred = true,
  proxy_protocol = true,
                      hsts = true }
local tls_keys = { cert = true, key = true, certs = true, min_version = true,
                   verify_client = true, client_ca = true, profile = true, ciphers = true,
                   session_timeout = true }
local cert_keys = { cert = true, key = true, name = true }
local hsts_keys = { max_age = true, subdomains = true, preload = true }
-- tls.profile -> the lowest version it allows ("modern" is TLS 1.3 only; the
-- cipher list of each is in core/tls.c)
local profiles = { modern = 0x0304, intermediate = 0x0303, compatible = 0x0303 }

-- A file named in proxy.lua: relative paths are relative to proxy.lua's directory.
local function conf_path(v, what, key)
  check.type(v, "string", what, key)
  if v == "" then fail("%s: '%s' must not be empty", what, key) end
  if v:sub(1, 1) == "/" then return v end
  return state.confdir .. "/" .. v
end

-- mg.listen's tls table -> { certs = { {cert, key, name} }, min_version, verify_client, client_ca,
-- profile, ciphers, session_timeout }
local function listen_tls(t)
  local what = "mg.listen tls"
  check.type(t, "table", "mg.listen", "tls")
  check.keys(t, tls_keys, what)
  local out = { certs = {}, min_version = 0x0303, verify_client = 0, profile = "intermediate",
                site = check.user_site() }
  if t.cert ~= nil or t.key ~= nil then
    out.certs[1] = { cert = conf_path(t.cert, what, "cert"), key = conf_path(t.key, what, "key") }
  end
  if t.certs ~= nil then
    check.type(t.certs, "table", what, "certs")
    for i, c in ipairs(t.certs) do
      local w = what .. " certs[" .. i .. "]"
      check.type(c, "table", what, "certs[" .. i .. "]")
      check.keys(c, cert_keys, w)
      if c.name ~= nil then check.type(c.name, "string", w, "name") end
      out.certs[#out.certs + 1] = { cert = conf_path(c.cert, w, "cert"), key = conf_path(c.key, w, "key"),
                                    name = c.name }
    end
  end
  if #out.certs == 0 then fail("%s: needs 'cert' and 'key', or 'certs'", what) end
  if t.min_version ~= nil then
    local v = ({ ["1.2"] = 0x0303, ["1.3"] = 0x0304 })[t.min_version]
    if not v then fail("%s: 'min_version' must be \"1.2\" or \"1.3\", got %s", what, tostring(t.min_version)) end
    out.min_version = v
  end
  if t.profile ~= nil then
    if not profiles[t.profile] then
      fail("%s: 'profile' must be \"modern\", \"intermediate\" or \"compatible\", got %s", what,
           tostring(t.profile))
    end
    out.profile = t.profile
    if t.min_version ~= nil and out.min_version < profiles[t.profile] then
      fail("%s: 'min_version' \"%s\" contradicts profile \"%s\" (TLS 1.3 only)", what, t.min_version, t.profile)
    end
    if profiles[t.profile] > out.min_version then out.min_version = profiles[t.profile] end
  end
  if t.ciphers ~= nil then
    check.type(t.ciphers, "string", what, "ciphers")
    if t.ciphers == "" or t.ciphers:find("[%s%c,;]") then
      fail("%s: 'ciphers' must be cipher names and rules joined by ':' (no spaces), got %q", what, t.ciphers)
    end
    if out.min_version >= 0x0304 then
      fail("%s: 'ciphers' chooses TLS 1.2 suites, but this listener is TLS 1.3 only", what)
    end
    out.ciphers = t.ciphers
  end
  if t.session_timeout ~= nil then
    out.session_timeout = check.number(t.session_timeout, what, "session_timeout", 1, 86400)
    if out.session_timeout % 1 ~= 0 then fail("%s: 'session_timeout' must be whole seconds", what) end
  end
  if t.verify_client ~= nil then
    local v = ({ optional = 1, required = 2 })[t.verify_client]
    if not v then
      fail("%s: 'verify_client' must be \"optional\" or \"required\", got %s", what, tostring(t.verify_client))
    end
    out.verify_client = v
    out.client_ca = conf_path(t.client_ca, what, "client_ca")
  elseif t.client_ca ~= nil then
    fail("%s: 'client_ca' without 'verify_client'", what)
  end
  return out
end

-- mg.listen's hsts table -> the Strict-Transport-Security value (RFC 6797)
local function listen_hsts(t)
  local what = "mg.listen hsts"
  check.type(t, "table", "mg.listen", "hsts")
  check.keys(t, hsts_keys, what)
  local age = 63072000 -- two years
  if t.max_age ~= nil then
    age = check.number(t.max_age, what, "max_age", 0, 2^31 - 1)
    if age % 1 ~= 0 then fail("%s: 'max_age' must be whole seconds", what) end
  end
  local sub = t.subdomains ~= nil and check.type(t.subdomains, "boolean", what, "subdomains") or false
  local preload = t.preload ~= nil and check.type(t.preload, "boolean", what, "preload") or false
  if preload and (not sub or age < 31536000) then
    fail("%s: 'preload' needs subdomains = true and max_age of at least 31536000 (one year)", what)
  end
  return "max-age=" .. string.format("%d", age) .. (sub and "; includeSubDomains" or "")
         .. (preload and "; preload" or "")
end

--- mg.listen { "host:port", ..., name = "NAME", tls = {...}, redirect_https = true | PORT,
---             deferred = true (default) | false, hsts = { max_age, subdomains, preload },
---             proxy_protocol = false (default) | true }
function _M.listen(t)
  if type(t) ~= "table" then fail("mg.listen: expects a table") end
  check.keys(t, listen_keys, "mg.listen")
  local deferred = true
  if t.deferred ~= nil then
    check.type(t.deferred, "boolean", "mg.listen", "deferred")
    deferred = t.deferred
  end
  local proxy_protocol = false
  if t.proxy_protocol ~= nil then
    check.type(t.proxy_protocol, "boolean", "mg.listen", "proxy_protocol")
    proxy_protocol = t.proxy_protocol
  end
  local tls = t.tls ~= nil and listen_tls(t.tls) or nil
  local redirect = nil
  if t.redirect_https ~= nil then
    if t.redirect_https == true then redirect = 443
    else redirect = check.number(t.redirect_https, "mg.listen", "redirect_https", 1, 65535) end
    if tls then fail("mg.listen: 'redirect_https' is for plain listeners, not with 'tls'") end
  end
  local hsts = nil
  if t.hsts ~= nil then
    hsts = listen_hsts(t.hsts)
    if not tls then fail("mg.listen: 'hsts' needs 'tls' (browsers ignore it over plain HTTP, RFC 6797)") end
  end
  if #t == 0 then fail("mg.listen: needs at least one address") end
  if t.name ~= nil then
    check.type(t.name, "string", "mg.listen", "name")
    if not match(t.name, "^[%w_%.%-]+$") or #t.name > 40 then
      fail("mg.listen: 'name' must be a word of at most 40 characters")
    end
    state.listener_names[t.name] = true
  end
  for _, a in ipairs(t) do
    local host, port = parse_addr(a, "mg.listen")
    for _, l in ipairs(state.listeners) do
      if l.host == host and l.port == port then fail("mg.listen: '%s' is already listened on", a) end
    end
    state.listeners[#state.listeners + 1] = { host = host, port = port, name = t.name, tls = tls,
                                              redirect_https = redirect, deferred = deferred,
                                              hsts = hsts, proxy_protocol = proxy_protocol or nil }
  end
end

local upstream_keys = { servers = true, keepalive = true, keepalive_timeout = true, tls = true,
                        proxy_protocol = true, splice = true, balance = true, hash_key = true,
                        hash_bound = true, sticky = true,
                        health = true, eject = true, slow_start = true, panic = true,
                        -- i12-retry
                        retry = true, max_connections = true, max_pending = true, max_requests = true,
                        timeouts = true,
                        -- i12-dyn
                        resolve = true }
-- balance: the policies core/balance.c knows
local balance_policies = { round_robin = true, least_conn = true, p2c = true, random = true, hash = true }
local sticky_keys = { cookie = true, path = true, domain = true, max_age = true, secure = true,
                      httponly = true, samesite = true, secret = true }
local samesite_values = { Strict = true, Lax = true, None = true }

-- hash_key = "ip" | "header:NAME" | "cookie:NAME" | "arg:NAME" (core/maglev.c
-- checks the same at load; here for the user's file:line)
local function hash_key_spec(v, what)
  if v == "ip" then return v end
  local kind, name = match(v, "^(%a+):(.*)$")
  if kind ~= "header" and kind ~= "cookie" and kind ~= "arg" then
    fail("%s: 'hash_key' must be \"ip\", \"header:NAME\", \"cookie:NAME\", \"arg:NAME\" or a function, got %q",
         what, v)
  end
  if #name == 0 or #name > 256 then fail("%s: 'hash_key' %q: the name must be 1 to 256 characters", what, v) end
  if kind == "arg" then
    if name:find("[^\33-\126]") or name:find("[&=#]") then
      fail("%s: 'hash_key' %q: an argument name is visible ASCII without '&', '=' or '#'", what, v)
    end
  elseif not match(name, "^[!#$%%&'*+%-.^_`|~%w]+$") then
    fail("%s: 'hash_key' %q: a %s name must be a token", what, v, kind)
  end
  return v
end

-- sticky = true | { cookie = "mg_sticky", path = "/", domain, max_age, secure,
-- httponly = true, samesite, secret }: the Set-Cookie attributes are prebuilt here
local function sticky_conf(t, what)
  if t == true then t = {} end
  local w = what .. " sticky"
  check.type(t, "table", what, "sticky")
  check.keys(t, sticky_keys, w)
  local cookie = t.cookie == nil and "mg_sticky" or check.type(t.cookie, "string", w, "cookie")
  if not match(cookie, "^[!#$%%&'*+%-.^_`|~%w]+$") or #cookie > 256 then
    fail("%s: 'cookie' must be a cookie name (a token of 1 to 256 characters), got %q", w, cookie)
  end
  local function attr_value(k)
    local v = check.type(t[k], "string", w, k)
    if v == "" or #v > 1024 or v:find("[%c;\128-\255]") then
      fail("%s: '%s' must be printable ASCII without ';' (1 to 1024 characters)", w, k)
    end
    return v
  end
  local attrs = "; Path=" .. (t.path == nil and "/" or attr_value("path"))
  if t.domain ~= nil then attrs = attrs .. "; Domain=" .. attr_value("domain") end
  if t.max_age ~= nil then
    attrs = attrs .. "; Max-Age=" .. string.format("%d", check.number(t.max_age, w, "max_age", 1, 2 ^ 31 - 1))
  end
  if t.secure ~= nil and check.type(t.secure, "boolean", w, "secure") then attrs = attrs .. "; Secure" end
  if t.httponly == nil or check.type(t.httponly, "boolean", w, "httponly") then attrs = attrs .. "; HttpOnly" end
  if t.samesite ~= nil then
    if not samesite_values[t.samesite] then fail("%s: 'samesite' must be \"Strict\", \"Lax\" or \"None\"", w) end
    attrs = attrs .. "; SameSite=" .. t.samesite
  end
  local secret = t.secret == nil and "" or check.type(t.secret, "string", w, "secret")
  return { cookie = cookie, attrs = attrs, secret = secret }
end
-- most servers an upstream may list (core/balance.h: the round robin schedule and
-- the tried-servers bitmap grow with it)
local MAX_SERVERS = 100000
-- proxy_protocol: what proxy.lua says -> the version core/config.c reads (0: none)
local pp_versions = { v1 = 1, v2 = 2 }
local upstream_tls_keys = { verify = true, ca = true, sni = true, cert = true, key = true }
local upstream_mt = { __tostring = function(u) return "upstream " .. u.name end }

-- i12-health: an upstream's `health`, `eject`, `slow_start` and `panic`, normalised
-- for core/config.c (defaults filled in; docs/config.md "Health checks")
local health_keys = { type = true, path = true, host = true, expect = true, interval = true,
                      timeout = true, rise = true, fall = true }
local eject_keys = { consecutive = true, base = true, max_percent = true }
local floor = math.floor
local function upstream_health(u, t, what)
  if t.health ~= nil then
    local w = what .. " health"
    check.type(t.health, "table", what, "health")
    check.keys(t.health, health_keys, w)
    local h = t.health
    local n = { type = h.type or "http", path = h.path or "/", interval = 2, timeout = 1, rise = 2, fall = 3 }
    if n.type ~= "http" and n.type ~= "tcp" then
      fail("%s: 'type' must be \"http\" or \"tcp\", got %s", w, tostring(h.type))
    end
    check.type(n.path, "string", w, "path")
    if not match(n.path, "^/[\33-\126]*$") then
      fail("%s: 'path' must start with '/' and hold no space or control character: %q", w, n.path)
    end
    if h.host ~= nil then
      n.host = check.type(h.host, "string", w, "host")
      if not match(n.host, "^[\33-\126]+$") then fail("%s: 'host' must be a host name: %q", w, n.host) end
    end
    if h.expect ~= nil then
      check.type(h.expect, "table", w, "expect")
      if #h.expect == 0 or #h.expect > 16 then fail("%s: 'expect' must list 1 to 16 status codes", w) end
      n.expect = {}
      for i, c in ipairs(h.expect) do
        if type(c) ~= "number" or c ~= floor(c) or c < 100 or c > 599 then
          fail("%s: expect[%d] must be a status code (100..599), got %s", w, i, tostring(c))
        end
        if c < 200 and c ~= 101 then
          fail("%s: expect[%d] is %d, an interim status: checks skip it to the final one", w, i, c)
        end
        n.expect[i] = c
      end
    end
    if h.interval ~= nil then n.interval = check.number(h.interval, w, "interval", 0.01, 3600) end
    if h.timeout ~= nil then n.timeout = check.number(h.timeout, w, "timeout", 0.01, 3600) end
    if h.rise ~= nil then n.rise = check.number(h.rise, w, "rise", 1, 100) end
    if h.fall ~= nil then n.fall = check.number(h.fall, w, "fall", 1, 100) end
    if n.rise ~= floor(n.rise) or n.fall ~= floor(n.fall) then
      fail("%s: 'rise' and 'fall' must be whole numbers", w)
    end
    u.health = n
  end
  if t.eject ~= nil and t.eject ~= false then
    local w = what .. " eject"
    local e = t.eject == true and {} or check.type(t.eject, "table", what, "eject")
    check.keys(e, eject_keys, w)
    local n = { consecutive = 5, base = 30, max_percent = 50 }
    if e.consecutive ~= nil then n.consecutive = check.number(e.consecutive, w, "consecutive", 1, 1000) end
    if e.base ~= nil then n.base = check.number(e.base, w, "base", 0.01, 3600) end
    if e.max_percent ~= nil then n.max_percent = check.number(e.max_percent, w, "max_percent", 0, 100) end
    if n.consecutive ~= floor(n.consecutive) then fail("%s: 'consecutive' must be a whole number", w) end
    u.eject = n
  end
  if t.slow_start ~= nil then u.slow_start = check.number(t.slow_start, what, "slow_start", 0, 3600) end
  if t.panic ~= nil then u.panic = check.type(t.panic, "boolean", what, "panic") end
end

-- An upstream's tls.sni: a DNS host name (RFC 6066 3: no IP literal, no trailing
-- dot), since it is both the name sent and the name the certificate must carry.
local function sni_name(v, what)
  local bad = function(why) fail("%s: 'sni' %s: %q", what, why, v) end
  if v == "" then bad("must not be empty") end
  if #v > 253 then bad("is longer than 253 characters") end
  if v:find("[^%w%.%-_]") then bad("must be a host name (letters, digits, '-', '_' and '.')") end
  if v:sub(-1) == "." then bad("must not end with a dot (SNI names are sent without it)") end
  for label in (v .. "."):gmatch("([^.]*)%.") do
    if label == "" then bad("has an empty label") end
    if #label > 63 then bad("has a label longer than 63 characters") end
    if label:sub(1, 1) == "-" or label:sub(-1) == "-" then bad("has a label that starts or ends with '-'") end
  end
  if v:match("[^.]*$"):match("^%d+$") then bad("is an IP address; SNI carries host names only (RFC 6066)") end
  return v
end

-- i12-dyn: a canonical text of a normalised upstream (keys sorted); a function
-- in it (a hook-like option) never compares equal across loads.
local function upstream_key(u)
  local out = {}
  local function walk(v)
    local tv = type(v)
    if tv == "table" then
      local keys = {}
      for k in pairs(v) do if k ~= "config_key" then keys[#keys + 1] = k end end
      table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
      out[#out + 1] = "{"
      for _, k in ipairs(keys) do
        out[#out + 1] = ("%q="):format(tostring(k))
        walk(v[k])
        out[#out + 1] = ","
      end
      out[#out + 1] = "}"
    elseif tv == "string" then out[#out + 1] = ("%q"):format(v)
    elseif tv == "function" then out[#out + 1] = tostring(v) .. tostring({})
    else out[#out + 1] = tostring(v) end
  end
  walk(u)
  return table.concat(out)
end

-- i12-retry: an upstream's retry, circuit breakers and timeouts (docs/config.md
-- "Retries, circuit breakers and timeouts"), flattened for core/config.c
local retry_keys = { tries = true, on = true, per_try_timeout = true, backoff = true, budget = true,
                     buffer = true }
local backoff_keys = { base = true, max = true }
local retry_conditions = { connect = 1, timeout = 2, reset = 4 } -- core/config.h MG_RETRY_*
local io_timeout_keys = { connect = true, read = true, write = true }
local function whole(v, what, key, min, max)
  local n = check.number(v, what, key, min, max)
  if n % 1 ~= 0 then fail("%s: '%s' must be a whole number, got %s", what, key, tostring(v)) end
  return n
end
local function upstream_retry(u, t, what)
  u.retry_tries, u.retry_on, u.retry_status, u.retry_per_try = 0, retry_conditions.connect, {}, 0
  u.retry_backoff_base, u.retry_backoff_max, u.retry_budget, u.retry_buffer = 0.025, 0.25, 0.2, 65536
  u.max_connections, u.max_pending, u.max_requests = 0, 0, 0
  u.timeout_connect, u.timeout_read, u.timeout_write = 0, 0, 0
  for _, k in ipairs { "max_connections", "max_pending", "max_requests" } do
    if t[k] ~= nil then u[k] = whole(t[k], what, k, 1, 1e9) end
  end
  if t.timeouts ~= nil then
    local w = what .. " timeouts"
    check.type(t.timeouts, "table", what, "timeouts")
    check.keys(t.timeouts, io_timeout_keys, w)
    for k in pairs(io_timeout_keys) do
      if t.timeouts[k] ~= nil then u["timeout_" .. k] = check.number(t.timeouts[k], w, k, 0.001, 86400) end
    end
  end
  local r = t.retry
  if r == nil then return end
  local w = what .. " retry"
  check.type(r, "table", what, "retry")
  check.keys(r, retry_keys, w)
  if r.tries ~= nil then u.retry_tries = whole(r.tries, w, "tries", 1, 100) end
  if r.on ~= nil then
    check.type(r.on, "table", w, "on")
    local mask, statuses = 0, {}
    for i, c in ipairs(r.on) do
      local code = tonumber(c)
      if retry_conditions[c] then
        if mask % (2 * retry_conditions[c]) < retry_conditions[c] then mask = mask + retry_conditions[c] end
      elseif code and code % 1 == 0 and code >= 400 and code <= 599 then
        statuses[#statuses + 1] = code
      else
        fail("%s: on[%d] must be \"connect\", \"timeout\", \"reset\" or a status 400..599, got %s", w, i,
             tostring(c))
      end
    end
    if #statuses > 16 then fail("%s: 'on' lists more than 16 statuses", w) end
    u.retry_on, u.retry_status = mask, statuses
  end
  if r.per_try_timeout ~= nil then u.retry_per_try = check.number(r.per_try_timeout, w, "per_try_timeout", 0.001, 86400) end
  if r.backoff ~= nil then
    local bw = w .. " backoff"
    check.type(r.backoff, "table", w, "backoff")
    check.keys(r.backoff, backoff_keys, bw)
    if r.backoff.base ~= nil then
      u.retry_backoff_base = check.number(r.backoff.base, bw, "base", 0, 3600)
      u.retry_backoff_max = 10 * u.retry_backoff_base -- Envoy's default max
    end
    if r.backoff.max ~= nil then u.retry_backoff_max = check.number(r.backoff.max, bw, "max", 0, 3600) end
    if u.retry_backoff_max < u.retry_backoff_base then fail("%s: 'max' is less than 'base'", bw) end
  end
  if r.budget ~= nil then u.retry_budget = check.number(r.budget, w, "budget", 0, 1) end
  if r.buffer ~= nil then u.retry_buffer = r.buffer == 0 and 0 or size(r.buffer, w, "buffer") end
end

--- mg.upstream "NAME" { servers = {...}, keepalive = 32, keepalive_timeout = 60, tls = {...},
---                     proxy_protocol = false (default) | "v1" | "v2", splice = false,
---                     balance = "round_robin" (default) | "least_conn" | "p2c" | "random" | "hash",
---                     hash_key = "ip" | "header:NAME" | "cookie:NAME" | "arg:NAME" | function(req),
---                     hash_bound = 1.25 | false, sticky = true | { cookie = "mg_sticky", ... },
---                     health = {...}, eject = {...}, slow_start = 0, panic = false }
function _M.upstream(name)
  if type(name) ~= "string" or not match(name, "^[%w_%.%-]+$") then
    fail("mg.upstream: name must be a word, got %s", tostring(name))
  end
  if state.upstream_by_name[name] then fail("mg.upstream: '%s' is defined twice", name) end
  return function(t)
    local what = "mg.upstream '" .. name .. "'"
    if type(t) ~= "table" then fail("%s: expects a table", what) end
    check.keys(t, upstream_keys, what)
    check.type(t.servers, "table", what, "servers")
    if #t.servers == 0 then fail("%s: 'servers' is empty", what) end
    if #t.servers > MAX_SERVERS then fail("%s: at most %d servers per upstream", what, MAX_SERVERS) end
    local u = setmetatable({ name = name, servers = {}, keepalive = 32, keepalive_timeout = 60,
                             proxy_protocol = 0, splice = 0, balance = "round_robin" }, upstream_mt)
    if t.balance ~= nil then
      local b = t.balance
      if type(b) ~= "string" or not balance_policies[b] then
        fail("%s: 'balance' must be \"round_robin\", \"least_conn\", \"p2c\", \"random\" or \"hash\", got %s", what,
             type(b) == "string" and ("%q"):format(b) or tostring(b))
      end
      u.balance = b
    end
    local seen = {}
    for i, s in ipairs(t.servers) do
      if type(s) ~= "string" then fail("%s: servers[%d] must be a string", what, i) end
      local addr, opts = match(s, "^(%S+)%s*(.*)$")
      local host, port = parse_addr(addr, what)
      local weight = 1
      for opt in opts:gmatch("%S+") do
        local k, v = match(opt, "^(%w+)=(%d+)$")
        if k ~= "weight" then fail("%s: servers[%d]: unknown option '%s'", what, i, opt) end
        weight = tonumber(v)
        if weight < 1 or weight > 1000 then fail("%s: servers[%d]: weight must be 1..1000", what, i) end
      end
      -- the name the hash table and sticky tokens use: unique, so that a server
      -- listed twice gets a permutation of its own (equal names would make the
      -- Maglev build walk the same slots again and again)
      local k = (seen[addr] or 0) + 1
      seen[addr] = k
      u.servers[i] = { host = host, port = port, weight = weight, name = k == 1 and addr or addr .. "#" .. k }
    end
    if u.balance == "hash" then
      u.hash_key, u.hash_bound = "ip", 1.25
      if type(t.hash_key) == "function" then u.hash_key_fn = t.hash_key
      elseif t.hash_key ~= nil then u.hash_key = hash_key_spec(check.type(t.hash_key, "string", what, "hash_key"), what) end
      if t.hash_bound == false then u.hash_bound = nil
      elseif t.hash_bound ~= nil then u.hash_bound = check.number(t.hash_bound, what, "hash_bound", 1, 100) end
    elseif t.hash_key ~= nil or t.hash_bound ~= nil then
      fail("%s: 'hash_key' and 'hash_bound' go with balance = \"hash\"", what)
    end
    if t.sticky ~= nil and t.sticky ~= false then u.sticky = sticky_conf(t.sticky, what) end
    if t.keepalive ~= nil then u.keepalive = check.number(t.keepalive, what, "keepalive", 0, 100000) end
    if t.tls ~= nil then
      local w = what .. " tls"
      check.type(t.tls, "table", what, "tls")
      check.keys(t.tls, upstream_tls_keys, w)
      local tls = { verify = true }
      if t.tls.verify ~= nil then tls.verify = check.type(t.tls.verify, "boolean", w, "verify") end
      if t.tls.ca ~= nil then tls.ca = conf_path(t.tls.ca, w, "ca") end
      if t.tls.sni ~= nil then tls.sni = sni_name(check.type(t.tls.sni, "string", w, "sni"), w) end
      if (t.tls.cert == nil) ~= (t.tls.key == nil) then fail("%s: 'cert' and 'key' go together", w) end
      if t.tls.cert ~= nil then
        tls.cert = conf_path(t.tls.cert, w, "cert")
        tls.key = conf_path(t.tls.key, w, "key")
      end
      if tls.verify and not tls.sni then
        fail("%s: 'sni' is needed to verify the server's name (or verify = false)", w)
      end
      u.tls = tls
    end
    if t.proxy_protocol ~= nil and t.proxy_protocol ~= false then
      u.proxy_protocol = pp_versions[t.proxy_protocol]
      if not u.proxy_protocol then
        fail("%s: 'proxy_protocol' must be \"v1\", \"v2\" or false, got %s", what,
             type(t.proxy_protocol) == "string" and ("%q"):format(t.proxy_protocol) or tostring(t.proxy_protocol))
      end
    end
    -- splice: response bodies that pass as they are move from socket to socket in
    -- the kernel (core/transport.h); the core reads 0 or 1
    if t.splice ~= nil then u.splice = check.type(t.splice, "boolean", what, "splice") and 1 or 0 end
    if t.keepalive_timeout ~= nil then
      u.keepalive_timeout = check.number(t.keepalive_timeout, what, "keepalive_timeout", 0.001, 86400)
    end
    upstream_health(u, t, what) -- i12-health
    upstream_retry(u, t, what) -- i12-retry
    -- i12-dyn: resolve = seconds between re-resolutions of the names in servers
    -- (default 30; false or 0: never); config_key: the normalised upstream, equal
    -- across a reload when nothing changed (the new config then keeps the balancer)
    u.resolve = 30
    if t.resolve ~= nil then
      if t.resolve == false then u.resolve = 0
      else u.resolve = check.number(t.resolve, what, "resolve", 0, 86400) end
    end
    u.config_key = upstream_key(u)
    state.upstreams[#state.upstreams + 1] = u
    state.upstream_by_name[name] = u
    return u
  end
end

-- issue 13: a route's cache = true | false | { key, ttl, lock, range_fetch }
-- (docs/cache.md "Per-route options"). r.cache is a boolean for the core; the
-- options go beside it: cache_key (a function(req) -> string, run where the key
-- is computed), cache_ttl ({ [status] = seconds }: the lifetime of a response of
-- that status that carries no freshness of its own), cache_lock (seconds a miss
-- waits for a fetch of the same key already under way; 0: no collapsing),
-- cache_range_fetch (a range request that misses fetches the whole object).
local route_cache_keys = { key = true, ttl = true, lock = true, range_fetch = true }
local route_cache_lock_keys = { timeout = true }
_M._route_cache_defaults = { lock = 5, range_fetch = false }
local function route_cache(r, c, what, respond)
  if type(c) == "table" then
    local w = what .. " cache"
    check.keys(c, route_cache_keys, w)
    if c.key ~= nil then r.cache_key = check.type(c.key, "function", w, "key") end
    if c.ttl ~= nil then
      check.type(c.ttl, "table", w, "ttl")
      local ttl = {}
      for status, secs in pairs(c.ttl) do
        if type(status) ~= "number" or status % 1 ~= 0 or status < 200 or status > 599 then
          fail("%s: ttl: keys must be status codes 200..599, got %s", w, tostring(status))
        end
        ttl[#ttl + 1] = { status = status, seconds = check.number(secs, w, ("ttl[%d]"):format(status), 0, 2^31) }
        if #ttl > 32 then fail("%s: ttl: at most 32 statuses", w) end
      end
      table.sort(ttl, function(a, b) return a.status < b.status end)
      r.cache_ttl = ttl
    end
    r.cache_lock = _M._route_cache_defaults.lock
    if c.lock == false then
      r.cache_lock = 0
    elseif c.lock ~= nil and c.lock ~= true then
      check.type(c.lock, "table", w, "lock")
      check.keys(c.lock, route_cache_lock_keys, w .. " lock")
      if c.lock.timeout ~= nil then r.cache_lock = check.number(c.lock.timeout, w .. " lock", "timeout", 0.001, 3600) end
    end
    if c.range_fetch ~= nil then r.cache_range_fetch = check.type(c.range_fetch, "boolean", w, "range_fetch") end
    r.cache = true
  else
    r.cache = check.type(c, "boolean", what, "cache")
    r.cache_lock = _M._route_cache_defaults.lock
  end
  if r.cache and respond then fail("%s: 'cache' needs an upstream (a respond route is not cached)", what) end
end

local route_keys = { host = true, path = true, methods = true, listener = true, upstream = true,
                     respond = true, on = true, use = true, buffer_body = true, timeouts = true, split = true,
                     idempotent = true, compress = true, decode = true, cache = true }
-- a route's own timeouts.hook, and (i12-retry) its upstream connect/read/write
local route_timeout_keys = { hook = true, connect = true, read = true, write = true }
local respond_keys = { status = true, body = true, headers = true }
local methods_ok = {
  GET = true, HEAD = true, POST = true, PUT = true, DELETE = true, OPTIONS = true,
  PATCH = true, TRACE = true,
}

-- i12-split: traffic split on a route (docs/config.md "Traffic split") ----------
local split_keys = { header = true, values = true, upstream = true }
local next = next
local SPLIT_MAX = 64          -- upstreams in one weighted list
local SPLIT_WEIGHT_MAX = 1000 -- core/balance.c takes weights 1..1000

local function show(v)
  if type(v) == "string" then return ("%q"):format(v) end
  if getmetatable(v) == upstream_mt then return tostring(v) end
  return type(v) == "table" and "a table" or tostring(v)
end

-- An upstream object (mg.upstream "name" {...}) or the name of one -> its name.
local function split_target(v, what)
  if type(v) == "string" then
    if not state.upstream_by_name[v] then fail("%s: unknown upstream '%s'", what, v) end
    return v
  end
  if getmetatable(v) ~= upstream_mt then
    fail("%s must be an upstream (made by mg.upstream) or its name, got %s", what, show(v))
  end
  return v.name
end

-- upstream = { { api_v1, weight = 90 }, { api_v2, weight = 10 } } -> { { upstream = name, weight = n }, ... }
local function split_weights(list, what)
  local n = #list
  if next(list) == nil then
    fail("%s: 'upstream' is an empty list (want { { up, weight = N }, ... })", what)
  end
  for k in pairs(list) do
    if type(k) ~= "number" or k % 1 ~= 0 or k < 1 or k > n then
      fail("%s: 'upstream' must be an upstream, its name or a list of { upstream, weight = N }, got key %s",
           what, show(k))
    end
  end
  if n > SPLIT_MAX then fail("%s: at most %d upstreams in a split", what, SPLIT_MAX) end
  local out, seen = {}, {}
  for i = 1, n do
    local e, ew = list[i], ("%s: upstream[%d]"):format(what, i)
    if type(e) ~= "table" or getmetatable(e) == upstream_mt then
      fail("%s must be { upstream, weight = N }, got %s", ew, show(e))
    end
    for k in pairs(e) do
      if k ~= 1 and k ~= "weight" then
        fail("%s: unknown key %s (want { upstream, weight = N })", ew, show(k))
      end
    end
    local name = split_target(e[1], ew .. "[1]")
    local w = e.weight
    if w == nil then fail("%s: 'weight' is missing (want { %s, weight = N })", ew, name) end
    if type(w) ~= "number" or w ~= w or w % 1 ~= 0 or w < 1 or w > SPLIT_WEIGHT_MAX then
      fail("%s: 'weight' must be an integer from 1 to %d, got %s", ew, SPLIT_WEIGHT_MAX, show(w))
    end
    if seen[name] then fail("%s: upstream '%s' is listed twice", ew, name) end
    seen[name] = true
    out[i] = { upstream = name, weight = w }
  end
  return out
end

-- split = { header = "x-canary", values = { ["1"] = api_v2 }, upstream = api_v3 }
local function split_rule(s, what)
  local w = what .. " split"
  check.type(s, "table", what, "split")
  check.keys(s, split_keys, w)
  if s.header == nil then fail("%s: 'header' is missing (the request header to split on)", w) end
  check.type(s.header, "string", w, "header")
  if not check.token(s.header) then fail("%s: 'header' is not a header name: %s", w, show(s.header)) end
  if s.values == nil and s.upstream == nil then
    fail("%s: needs 'values' (header value -> upstream) or 'upstream' (for any value)", w)
  end
  local out = { header = lower(s.header), values = {} }
  if s.values ~= nil then
    check.type(s.values, "table", w, "values")
    for k, v in pairs(s.values) do
      if type(k) ~= "string" then
        fail("%s: the keys of 'values' are header values (strings), got %s", w, show(k))
      end
      if k:find("[%z\r\n]") or k:find("^[ \t]") or k:find("[ \t]$") then
        fail("%s: values[%q] cannot match a header value (CR, LF, NUL or blanks at an end)", w, k)
      end
      out.values[#out.values + 1] = { value = k, upstream = split_target(v, ("%s: values[%q]"):format(w, k)) }
    end
    if #out.values == 0 then fail("%s: 'values' is empty", w) end
    table.sort(out.values, function(a, b) return a.value < b.value end)
  end
  if s.upstream ~= nil then out.present = split_target(s.upstream, w .. ": 'upstream'") end
  return out
end
-- end i12-split -------------------------------------------------------------

-- issue 14: policies (lua/moongate/policy/init.lua, docs/policies.md)
local policy = require "moongate.policy"
_M.policy = policy

-- a route's use = { p1, p2, ... }: a list of policy objects, checked here
local function policy_list(list, what)
  if policy.is(list) then fail("%s: 'use' takes a list: use = { %s }", what, "mg.policy." .. list.name .. " { ... }") end
  if type(list) ~= "table" or getmetatable(list) ~= nil then
    fail("%s: 'use' must be a list of policies ({ mg.policy.NAME { ... }, ... })", what)
  end
  local n = #list
  for k in pairs(list) do
    if type(k) ~= "number" or k % 1 ~= 0 or k < 1 or k > n then
      fail("%s: 'use' must be a list of policies, not a table with key '%s'", what, tostring(k))
    end
  end
  local out = {}
  for i = 1, n do
    if not policy.is(list[i]) then
      fail("%s: use[%d] is not a policy (a %s; make one with mg.policy.NAME { ... } or mg.policy.new { ... })",
        what, i, type(list[i]))
    end
    out[i] = list[i]
  end
  return out
end

--- mg.use(p1, p2, ...): global policies, for every route, before the route's own
--- `use` (in the order written, across calls).
function _M.use(...)
  local n = select("#", ...)
  if n == 0 then fail("mg.use: expects one or more policies") end
  for i = 1, n do
    local p = select(i, ...)
    if not policy.is(p) then
      fail("mg.use: argument %d is not a policy (a %s; make one with mg.policy.NAME { ... } or mg.policy.new { ... })",
        i, type(p))
    end
    state.policies[#state.policies + 1] = p
  end
end

--- mg.route { host, path, methods, listener, upstream | respond, split }
--- (upstream: an upstream, its name, or a weighted list { { up, weight = N }, ... })
function _M.route(t)
  local what = "mg.route"
  if type(t) ~= "table" then fail("mg.route: expects a table") end
  check.keys(t, route_keys, what)
  local r = { path = "/", site = check.user_site() }
  if t.host ~= nil then
    check.type(t.host, "string", what, "host")
    local h = lower(t.host)
    if not (match(h, "^[%w%-%.]+$") or match(h, "^%*%.[%w%-%.]+$")) then
      fail("%s: bad host '%s' (want name or *.suffix)", what, t.host)
    end
    r.host = h
  end
  if t.path ~= nil then
    check.type(t.path, "string", what, "path")
    if t.path:sub(1, 1) ~= "/" then fail("%s: 'path' must start with '/'", what) end
    r.path = t.path
  end
  if t.methods ~= nil then
    check.type(t.methods, "table", what, "methods")
    r.methods = {}
    for i, m in ipairs(t.methods) do
      if type(m) ~= "string" or not methods_ok[upper(m)] then
        fail("%s: methods[%d] is not a method: %s", what, i, tostring(m))
      end
      r.methods[i] = upper(m)
    end
  end
  if t.listener ~= nil then
    check.type(t.listener, "string", what, "listener")
    r.listener = t.listener
  end
  -- the most req:read_body holds for a request of this route (1m by default)
  if t.buffer_body ~= nil then r.buffer_body = size(t.buffer_body, what, "buffer_body") end
  if (t.upstream == nil) == (t.respond == nil) then
    fail("%s: needs exactly one of 'upstream' or 'respond'", what)
  end
  if t.timeouts ~= nil then
    check.type(t.timeouts, "table", what, "timeouts")
    check.keys(t.timeouts, route_timeout_keys, what .. " timeouts")
    if t.timeouts.hook ~= nil then r.hook_timeout = check.number(t.timeouts.hook, what .. " timeouts", "hook", 0.001, 86400) end
    for _, k in ipairs { "connect", "read", "write" } do -- i12-retry
      if t.timeouts[k] ~= nil then
        r[k .. "_timeout"] = check.number(t.timeouts[k], what .. " timeouts", k, 0.001, 86400)
      end
    end
  end
  if t.idempotent ~= nil then r.idempotent = check.type(t.idempotent, "boolean", what, "idempotent") end
  if t.compress ~= nil then -- i13-compress: completed over mg.config's by the loader
    if t.compress ~= true and t.compress ~= false then
      compress_settings(t.compress, compress_defaults, what) -- checked here, for the user's line
    end
    r.compress_raw = t.compress
  end
  if t.decode ~= nil then r.decode = check.type(t.decode, "boolean", what, "decode") end
  if t.cache ~= nil then route_cache(r, t.cache, what, t.respond ~= nil) end -- issue 13
  if t.on ~= nil then
    check.type(t.on, "table", what, "on")
    for k, fn in pairs(t.on) do
      if not route_hook_names[k] then
        fail("%s: on: '%s' is not a route hook (%s)", what, tostring(k), route_hook_list)
      end
      if type(fn) ~= "function" then fail("%s: on.%s must be a function", what, k) end
    end
    r.on = t.on
    -- i13-api: the route's cache_key hook, from one place only, on a caching route
    if t.on.cache_key ~= nil then
      if r.cache_key then fail("%s: the cache key function is given twice (cache.key and on.cache_key)", what) end
      if not r.cache then fail("%s: on.cache_key needs cache = true (or a cache table)", what) end
    end
  end
  if t.use ~= nil then r.use = policy_list(t.use, what) end -- issue 14
  if type(t.respond) == "function" then
    r.respond_fn = t.respond
  elseif type(t.upstream) == "table" and getmetatable(t.upstream) ~= upstream_mt then
    r.split_list = split_weights(t.upstream, what) -- i12-split: a weighted list
    r.upstream = r.split_list[1].upstream
  elseif t.upstream ~= nil then
    local u = t.upstream
    if type(u) == "string" then
      u = state.upstream_by_name[u] or fail("%s: unknown upstream '%s'", what, t.upstream)
    elseif getmetatable(u) ~= upstream_mt then
      fail("%s: 'upstream' must be an upstream or its name", what)
    end
    r.upstream = u.name
  else
    local rs = t.respond
    check.type(rs, "table", what, "respond")
    check.keys(rs, respond_keys, what .. " respond")
    local status = rs.status == nil and 200 or check.number(rs.status, what .. " respond", "status", 200, 599)
    if status % 1 ~= 0 then fail("%s: respond status must be an integer", what) end
    local body = rs.body == nil and "" or check.type(rs.body, "string", what .. " respond", "body")
    local headers = {}
    if rs.headers ~= nil then
      check.type(rs.headers, "table", what .. " respond", "headers")
      for k, v in pairs(rs.headers) do
        if not check.token(k) then
          fail("%s: respond header name '%s' is not a token", what, tostring(k))
        end
        if type(v) ~= "string" and type(v) ~= "number" then
          fail("%s: respond header '%s' must be a string", what, k)
        end
        v = tostring(v)
        if v:find("[%z\r\n]") then fail("%s: respond header '%s' has CR, LF or NUL", what, k) end
        local lk = lower(k)
        if lk == "content-length" or lk == "transfer-encoding" or lk == "connection" then
          fail("%s: respond header '%s' is set by moongate", what, k)
        end
        headers[#headers + 1] = { k, v }
      end
      table.sort(headers, function(a, b) return a[1] < b[1] end)
    end
    r.respond = { status = status, body = body, headers = headers }
  end
  if t.split ~= nil then
    if t.upstream == nil then fail("%s: 'split' needs 'upstream' (the requests no header rule takes)", what) end
    r.split = split_rule(t.split, what)
  end
  state.routes[#state.routes + 1] = r
end

--- mg.on(hook, fn): runs fn at that hook point for every request (or connection,
--- or worker for connect / init_worker). Several functions run in order.
function _M.on(name, fn)
  if not hook_names[name] then fail("mg.on: unknown hook '%s'", tostring(name)) end
  if type(fn) ~= "function" then fail("mg.on: '%s' needs a function", name) end
  local list = state.hooks[name] or {}
  list[#list + 1] = fn
  state.hooks[name] = list
end

local shdict = require "moongate.shdict"

--- mg.shared(name): the shared dictionary declared in mg.config { shared = ... }.
function _M.shared(name)
  if type(name) ~= "string" then error("mg.shared: name expected", 2) end
  return shdict.get(name)
end

require "moongate.ffi"
local ffi = require "ffi"
local function logger(level)
  return function(...)
    local n = select("#", ...)
    local parts = {}
    for i = 1, n do parts[i] = tostring((select(i, ...))) end
    local msg = table.concat(parts, " ")
    ffi.C.mg_api_log(level, msg, #msg)
  end
end
_M.log = { debug = logger(0), info = logger(1), warn = logger(2), err = logger(3) }
_M.log.error = _M.log.err

--- mg.now(): the worker loop's cached time in seconds (monotonic).
function _M.now() return ffi.C.mg_api_now() end

--- mg.timer.at(delay, fn, ...) / mg.timer.every(interval, fn, ...): fn(...) runs
--- after delay seconds (once), or every interval seconds (after each run ends),
--- in a coroutine of its own (it may wait). Returns a handle with :cancel().
--- Timers belong to the configuration that started them: a reload stops them.
_M.timer = {
  at = function(delay, fn, ...) return require("moongate.private.runtime").timer_add(false, delay, fn, ...) end,
  every = function(interval, fn, ...) return require("moongate.private.runtime").timer_add(true, interval, fn, ...) end,
}

--- mg.sleep(seconds): the hook waits that long without holding the worker (other
--- requests are served meanwhile). Every hook may wait, and timer callbacks.
function _M.sleep(seconds)
  if type(seconds) ~= "number" or seconds ~= seconds or seconds < 0 then
    error("mg.sleep: seconds must be a number >= 0, got " .. tostring(seconds), 2)
  end
  local co, main = coroutine.running()
  if co == nil or main then
    error("mg.sleep: only hooks and timer callbacks may wait (not while proxy.lua is read)", 2)
  end
  local runtime = require "moongate.private.runtime"
  runtime.io_begin()
  return runtime.wait("sleep", seconds)
end
--- mg.tcp(): a TCP socket for hooks that may wait (OpenResty's cosocket shape:
--- connect, sslhandshake, send, receive, setkeepalive, close; lua/moongate/tcp.lua).
function _M.tcp() return require("moongate.tcp").new() end
--- mg.http.request { url = ..., ... }: an HTTP/1.1 call from a hook that may wait
--- (lua/moongate/http.lua; docs/hooks.md "mg.http").
_M.http = require "moongate.http"

--- mg.worker_id(): 0-based worker number (-1 outside workers).
function _M.worker_id() return ffi.C.mg_api_worker_id() end

-- i12-retry
local stats_out = ffi.new("mg_upstream_stats_t")
local stats_fields = { "requests", "retries", "retries_budget_exceeded", "overflow_connections",
                       "overflow_pending", "overflow_requests", "active_requests", "active_connections",
                       "pending", "active_retries" }
--- mg.upstream_stats(name): the upstream's retry and circuit breaker counters,
--- all workers together, since the configuration was loaded (docs/config.md):
--- { requests, retries, retries_budget_exceeded, overflow_connections,
---   overflow_pending, overflow_requests, active_requests, active_connections,
---   pending, active_retries }, or nil, err when no upstream has that name.
function _M.upstream_stats(name)
  if type(name) ~= "string" then error("mg.upstream_stats: name expected", 2) end
  local rc = ffi.C.mg_upstream_stats(name, #name, stats_out)
  if rc == -30002 then error("mg.upstream_stats: only in hooks and timers of a worker", 2) end
  if rc ~= 0 then return nil, "no upstream '" .. name .. "'" end
  local t = {}
  for _, k in ipairs(stats_fields) do t[k] = tonumber(stats_out[k]) end
  return t
end

_M.router = router

--- mg.upstreams.add / remove / drain / set_weight / servers / list: run-time
--- membership of the upstreams (lua/moongate/upstreams.lua; docs/hooks.md).
_M.upstreams = require "moongate.upstreams"

--- mg.cache.purge / purge_prefix / stats: the response cache from any hook or
--- timer (lua/moongate/cache.lua; docs/cache.md "Purge and statistics").
_M.cache = require "moongate.cache"

return _M
