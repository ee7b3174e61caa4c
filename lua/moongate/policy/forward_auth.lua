-- mg.policy.forward_auth (issue 14): asks an external service whether a request
-- may pass (what nginx's auth_request does). The service gets a GET of `url` with
-- the request's selected headers and X-Forwarded-Method/-Proto/-Host/-Uri; a 2xx lets the request through with the chosen
-- answer headers set on it, anything else is answered to the client (status,
-- and the body, at most max_body bytes). Positive answers are cached per worker
-- for `ttl` seconds, keyed by the SHA-256 of the forwarded headers' values.
-- Phase: request. docs/policies.md "forward_auth".
local abi = require "moongate.ffi"
local check = require "moongate.private.check"
local sha256 = require("moongate.private.auth").sha256

local C = abi.C
local fail = check.fail
local type, tostring, ipairs, pairs, pcall, require = type, tostring, ipairs, pairs, pcall, require
local concat, lower = table.concat, string.lower

local keys = { url = true, headers = true, pass_headers = true, timeout = true, ttl = true,
               max_body = true, cache_size = true }

local function names(v, what, k)
  if v == nil then return {} end
  check.type(v, "table", what, k)
  for key in pairs(v) do
    if type(key) ~= "number" then fail("%s: '%s' must be a list of header names", what, k) end
  end
  local out = {}
  for i, n in ipairs(v) do
    if not check.token(n) then fail("%s: %s[%d] must be a header name, got %s", what, k, i, tostring(n)) end
    out[i] = lower(n)
    out[lower(n)] = n -- the spelling sent upstream
  end
  return out
end


local Policy = {}
Policy.__index = Policy

--- mg.policy.forward_auth { url = "http://auth/check", headers = { "authorization" },
---   pass_headers = { "x-user" }, timeout = 5, ttl = 0, max_body = 4096 }
local function new(conf)
  local what = "mg.policy.forward_auth"
  check.keys(conf, keys, what)
  local url = check.type(conf.url, "string", what, "url")
  if not url:find("^https?://") then fail("%s: 'url' must be an http:// or https:// URL", what) end
  local self = setmetatable({
    name = "forward_auth", url = url,
    headers = names(conf.headers, what, "headers"),
    pass = names(conf.pass_headers, what, "pass_headers"),
    timeout = conf.timeout == nil and 5 or check.number(conf.timeout, what, "timeout", 0.001, 300),
    -- bounded: an infinite ttl or cache_size would keep every positive answer for
    -- good (memory that grows with each distinct credential)
    ttl = conf.ttl == nil and 0 or check.number(conf.ttl, what, "ttl", 0, 86400),
    max_body = conf.max_body == nil and 4096 or check.whole(conf.max_body, what, "max_body", 0, 1048576),
    cache_size = conf.cache_size == nil and 10000 or check.whole(conf.cache_size, what, "cache_size", 1, 1e7),
    cache = {}, cached = 0,
  }, Policy)
  return self
end

function Policy:describe()
  return ("url=%s headers=%s ttl=%s"):format(self.url, concat(self.headers, ","), tostring(self.ttl))
end

-- the cache key: the SHA-256 of the forwarded headers' values, each value
-- length-prefixed (a header sent twice is its values in order, told apart from
-- one value holding the same text, and from the header absent); a 64-bit
-- non-cryptographic hash would let a client look for values that collide
local function cache_key(vals, n)
  local parts, k = {}, 0
  for i = 1, n do
    local v = vals[i]
    if v == nil then
      k = k + 1; parts[k] = "-"
    elseif type(v) == "table" then
      k = k + 1; parts[k] = "*" .. #v
      for j = 1, #v do k = k + 1; parts[k] = #v[j] .. ":" .. v[j] end
    else
      k = k + 1; parts[k] = #v .. ":" .. v
    end
  end
  return sha256(concat(parts, "\n"))
end

-- The chosen answer headers replace the client's; one the service did not send
-- is removed (a client cannot bring its own X-User through).
local function apply(req, names, pass)
  for i = 1, #names do
    local n = names[i]
    local v = pass[n]
    if v then req:set_header(names[n], v) else req:del_header(names[n]) end
  end
end

--- Request phase.
function Policy:request(req)
  local send, vals = {}, {}
  for i, n in ipairs(self.headers) do
    local v = req:header(n)
    vals[i] = v
    if v then send[n] = v end
  end
  -- what the client asked, as Traefik's forwardAuth tells its service (a client's
  -- own headers of these names are never passed on: these replace them)
  local q = req.query
  send["x-forwarded-method"] = req.method
  send["x-forwarded-proto"] = req.scheme or "http"
  send["x-forwarded-host"] = req.host or ""
  send["x-forwarded-uri"] = (q and q ~= "") and (req.path .. "?" .. q) or req.path
  local key
  if self.ttl > 0 then
    key = cache_key(vals, #self.headers)
    local hit = self.cache[key]
    if hit then
      if hit.expires > C.mg_api_now() then return apply(req, self.pass, hit.pass) end
      self.cache[key] = nil
      self.cached = self.cached - 1
    end
  end
  local ok, res, err = pcall(require("moongate.http").request,
    { url = self.url, headers = send, timeout = self.timeout, max_body = 1048576 })
  if not ok then res, err = nil, res end
  if not res then
    require("moongate").log.err(("forward_auth: %s: %s"):format(self.url, tostring(err)))
    return req:respond(503, "Service Unavailable\n")
  end
  if res.status >= 200 and res.status < 300 then
    local pass = {}
    for _, n in ipairs(self.pass) do
      if res.headers[n] then pass[n] = res.headers[n] end
    end
    if key then
      if self.cached >= self.cache_size then self.cache, self.cached = {}, 0 end
      self.cache[key] = { pass = pass, expires = C.mg_api_now() + self.ttl }
      self.cached = self.cached + 1
    end
    return apply(req, self.pass, pass)
  end
  local body = res.body or ""
  if #body > self.max_body then body = body:sub(1, self.max_body) end
  local h = {}
  if res.headers["content-type"] then h["Content-Type"] = res.headers["content-type"] end
  if res.headers["www-authenticate"] then h["WWW-Authenticate"] = res.headers["www-authenticate"] end
  if res.headers["location"] then h["Location"] = res.headers["location"] end
  local status = res.status
  if status < 200 or status > 599 then status = 502 end
  req:respond(status, body, h)
end

return new
