-- mg.policy.cors (issue 14): Cross-Origin Resource Sharing for the routes it is on.
-- Phases: request (answers a preflight itself: OPTIONS with Origin and
-- Access-Control-Request-Method), response (adds Access-Control-Allow-Origin and
-- friends to an actual request's answer, merges `Vary: Origin`).
-- Origins: "https://app.example" (exact, compared without case), "https://*.example.com"
-- (`*` stands for one or more DNS labels: not the bare example.com), "*" (any origin),
-- or { pattern = "^https://app%d+%.example$" } (a Lua pattern, matched against the
-- lower-cased Origin; anchor it yourself). docs/policies.md "cors".
local check = require "moongate.private.check"

local fail = check.fail
local type, tostring, pairs, ipairs, pcall, setmetatable, concat =
      type, tostring, pairs, ipairs, pcall, setmetatable, table.concat
local lower, find, sub = string.lower, string.find, string.sub

local keys = { origins = true, methods = true, headers = true, expose_headers = true,
               credentials = true, max_age = true, preflight_status = true }

local DEFAULT_METHODS = { "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE" }

local Policy = {}
Policy.__index = Policy

local function value_ok(s) return type(s) == "string" and not find(s, "[%z\r\n]") end

-- a list of HTTP tokens (methods or header names) -> the list, a set (lower-cased
-- for headers), and the header value joined with ", "
local function token_list(v, what, key, fold)
  check.type(v, "table", what, key)
  local list, set = {}, {}
  for i, t in ipairs(v) do
    if not check.token(t) then fail("%s: %s[%d]: '%s' is not an HTTP token", what, key, i, tostring(t)) end
    list[#list + 1] = t
    set[fold and lower(t) or t] = true
  end
  for k in pairs(v) do
    if type(k) ~= "number" then fail("%s: '%s' must be a list", what, key) end
  end
  return list, set, concat(list, ", ")
end

-- one origins entry -> a matcher function(origin_lc) -> boolean, or "*" for any
local function origin_matcher(o, what, i)
  if o == "*" then return "*" end
  if type(o) == "table" then
    if type(o.pattern) ~= "string" then fail("%s: origins[%d]: a table entry needs a 'pattern' string", what, i) end
    for k in pairs(o) do if k ~= "pattern" then fail("%s: origins[%d]: unknown key '%s'", what, i, tostring(k)) end end
    local pat = o.pattern
    local ok, err = pcall(find, "", pat)
    if not ok then fail("%s: origins[%d]: bad Lua pattern '%s': %s", what, i, pat, tostring(err)) end
    return function(origin) return find(origin, pat) ~= nil end
  end
  if not value_ok(o) or not find(o, "^%a[%w+.-]*://") or find(o, "[%s,]") then
    fail("%s: origins[%d]: '%s' is not an origin (scheme://host[:port])", what, i, tostring(o))
  end
  if find(o, "/", #o:match("^%a[%w+.-]*://") + 1, true) then
    fail("%s: origins[%d]: '%s': an origin has no path", what, i, o)
  end
  local lo = lower(o)
  local star = find(lo, "*", 1, true)
  if not star then return function(origin) return origin == lo end end
  -- "scheme://*.rest": one star, right after the scheme, followed by a dot
  local scheme, rest = lo:match("^(%a[%w+.-]*://)%*(%..+)$")
  if not scheme or find(rest, "*", 1, true) then
    fail("%s: origins[%d]: '%s': a wildcard is one '*' in front of a domain (https://*.example.com)", what, i, o)
  end
  local n = #scheme
  return function(origin)
    if sub(origin, 1, n) ~= scheme or #origin <= n + #rest then return false end
    if sub(origin, -#rest) ~= rest then return false end
    local labels = sub(origin, n + 1, #origin - #rest)
    return find(labels, "^[%w-]+[%w.-]*$") ~= nil and not find(labels, "%.%.") and sub(labels, -1) ~= "."
  end
end

--- mg.policy.cors { origins, methods, headers, expose_headers, credentials, max_age }
local function new(conf)
  local what = "mg.policy.cors"
  check.keys(conf, keys, what)
  if conf.origins == nil then fail("%s: 'origins' is required (a list of allowed origins)", what) end
  check.type(conf.origins, "table", what, "origins")
  if #conf.origins == 0 then fail("%s: 'origins' is empty", what) end
  local matchers, any = {}, false
  for i, o in ipairs(conf.origins) do
    local m = origin_matcher(o, what, i)
    if m == "*" then any = true else matchers[#matchers + 1] = m end
  end
  for k in pairs(conf.origins) do
    if type(k) ~= "number" then fail("%s: 'origins' must be a list", what) end
  end
  local methods, method_set, methods_value = token_list(conf.methods or DEFAULT_METHODS, what, "methods", false)
  local headers, header_set, headers_value
  if conf.headers ~= nil then headers, header_set, headers_value = token_list(conf.headers, what, "headers", true) end
  local expose_value
  if conf.expose_headers ~= nil then
    local _, _, v = token_list(conf.expose_headers, what, "expose_headers", false)
    if v ~= "" then expose_value = v end
  end
  local credentials = false
  if conf.credentials ~= nil then credentials = check.type(conf.credentials, "boolean", what, "credentials") end
  local max_age
  if conf.max_age ~= nil then
    check.number(conf.max_age, what, "max_age", 0, 86400 * 365)
    if conf.max_age % 1 ~= 0 then fail("%s: 'max_age' must be whole seconds", what) end
    max_age = tostring(conf.max_age)
  end
  local pstatus = conf.preflight_status == nil and 204 or check.number(conf.preflight_status, what, "preflight_status", 200, 299)
  return setmetatable({
    name = "cors",
    any = any, matchers = matchers, methods = methods, method_set = method_set,
    methods_value = methods_value, headers = headers, header_set = header_set,
    headers_value = headers_value, expose_value = expose_value, credentials = credentials,
    max_age = max_age, preflight_status = pstatus, n_origins = #conf.origins,
  }, Policy)
end

function Policy:describe()
  local s = "origins=" .. (self.any and "*" or tostring(self.n_origins)) .. " methods=" .. concat(self.methods, ",")
  if self.headers then s = s .. " headers=" .. concat(self.headers, ",") end
  if self.credentials then s = s .. " credentials" end
  if self.max_age then s = s .. " max_age=" .. self.max_age end
  return s
end

-- the Access-Control-Allow-Origin value for `origin`, or nil: not allowed
local function allow_origin(self, origin)
  local lo = lower(origin)
  local ms = self.matchers
  for i = 1, #ms do
    if ms[i](lo) then return origin end
  end
  if self.any then
    if not self.credentials then return "*" end
    -- with credentials a browser refuses "*": the origin itself; but not "null",
    -- the opaque origin any page can take (a sandboxed iframe, data:, file:): it
    -- would let every site read credentialed answers ({ pattern = "^null$" } if meant)
    if lo == "null" then return nil end
    return origin
  end
  return nil
end

-- the answer depends on the Origin unless every origin gets "*"
local function varies(self) return not (self.any and not self.credentials) end

-- appends `names` (", "-joined) to a Vary value, without repeats; "*" stays "*"
local function merge_vary(cur, names)
  if cur == nil or cur == "" then return names end
  if type(cur) == "table" then cur = concat(cur, ", ") end
  if find(cur, "^%s*%*%s*$") then return cur end
  local have = {}
  for t in cur:gmatch("[^,%s]+") do have[lower(t)] = true end
  local out = cur
  for t in names:gmatch("[^,%s]+") do
    if not have[lower(t)] then out = out .. ", " .. t; have[lower(t)] = true end
  end
  return out
end

--- Request phase: a preflight is answered here (the route's upstream never sees
--- it); an actual request's Origin is kept for the response phase.
function Policy:request(req)
  local origin = req:header("origin")
  if type(origin) == "table" then origin = nil end -- two Origin fields: not a browser's, no CORS
  if origin == nil then return end
  local acrm = req.method == "OPTIONS" and req:header("access-control-request-method")
  if not acrm then
    req.ctx._cors_origin = origin
    return
  end
  local vary = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
  local allowed = allow_origin(self, origin)
  if not allowed or type(acrm) ~= "string" or not self.method_set[acrm] then
    return req:respond(403, "CORS preflight refused\n", { ["Vary"] = vary })
  end
  local acrh = req:header("access-control-request-headers")
  if type(acrh) == "table" then acrh = concat(acrh, ",") end
  local allow_headers
  if acrh and find(acrh, "[^%s,]") then
    if self.header_set then
      for h in acrh:gmatch("[^,%s]+") do
        if not self.header_set[lower(h)] then
          return req:respond(403, "CORS preflight refused\n", { ["Vary"] = vary })
        end
      end
      allow_headers = self.headers_value
    else
      -- no 'headers' list: every requested header is allowed (echoed), if a token list
      local list = {}
      for h in acrh:gmatch("[^,%s]+") do
        if not check.token(h) then return req:respond(403, "CORS preflight refused\n", { ["Vary"] = vary }) end
        list[#list + 1] = lower(h)
      end
      allow_headers = concat(list, ", ")
    end
  elseif self.headers_value and self.headers_value ~= "" then
    allow_headers = self.headers_value
  end
  local h = {
    ["Access-Control-Allow-Origin"] = allowed,
    ["Access-Control-Allow-Methods"] = self.methods_value,
  }
  if varies(self) then h["Vary"] = vary else h["Vary"] = "Access-Control-Request-Method, Access-Control-Request-Headers" end
  if allow_headers then h["Access-Control-Allow-Headers"] = allow_headers end
  if self.credentials then h["Access-Control-Allow-Credentials"] = "true" end
  if self.max_age then h["Access-Control-Max-Age"] = self.max_age end
  req:respond(self.preflight_status, "", h)
end

--- Response phase: an allowed origin gets Access-Control-Allow-Origin (the origin
--- itself, or "*" for `"*"` without credentials), -Credentials and -Expose-Headers;
--- `Vary: Origin` is merged into the upstream's Vary whenever the answer depends
--- on the Origin (also for requests without one: caches must keep them apart).
function Policy:response(req, res)
  local ctx = req.ctx
  if ctx._cors_done then return end -- a second cors policy on the chain: the first one decides
  ctx._cors_done = true
  if varies(self) then res:set_header("Vary", merge_vary(res:header("vary"), "Origin")) end
  local origin = ctx._cors_origin
  if not origin then return end
  local allowed = allow_origin(self, origin)
  if not allowed then return end
  res:set_header("Access-Control-Allow-Origin", allowed)
  if self.credentials then res:set_header("Access-Control-Allow-Credentials", "true") end
  if self.expose_value then res:set_header("Access-Control-Expose-Headers", self.expose_value) end
end

-- for the unit specs
Policy._merge_vary = merge_vary
Policy._allow_origin = allow_origin

return new
