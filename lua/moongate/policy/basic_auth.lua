-- mg.policy.basic_auth (issue 14): HTTP Basic authentication (RFC 7617) against an
-- htpasswd file or an inline table, with bcrypt ($2y$ / $2b$) and SHA-2 crypt
-- ($5$ / $6$) hashes verified by the system's crypt (libxcrypt, core/auth.c). A hash
-- of another scheme, or a malformed one, is a config error naming the file and
-- line. Successful verifications are remembered per worker for `cache_ttl` seconds
-- (bcrypt is slow by design), keyed by a SHA-256 of the credentials and the hash.
-- The consumer is the user name (req.ctx.consumer, access log `consumer`).
-- Refusal: 401 with `WWW-Authenticate: Basic realm="...", charset="UTF-8"`.
-- Phase: request. docs/policies.md "basic_auth".
local ffi = require "ffi"
local abi = require "moongate.ffi"
local check = require "moongate.private.check"
local auth = require "moongate.private.auth"

local C = abi.C
local EAGAIN, EPHASE = abi.EAGAIN, abi.EPHASE
local job_out = ffi.new("mg_crypt_job_t *[1]")
-- runtime requires moongate (init.lua): loaded on first use
local runtime
local fail = check.fail
local type, pairs, tostring, tonumber, open = type, pairs, tostring, tonumber, io.open
local find, sub, match = string.find, string.sub, string.match
local sha256 = auth.sha256

local conf_keys = { file = true, users = true, realm = true, hide_credentials = true, cache_ttl = true,
                    status = true }
local CACHE_MAX = 4096 -- entries per policy and worker; the table starts over when full

local Policy = {}
Policy.__index = Policy

local function supported(h) return C.mg_api_crypt_supported(h, #h) == 0 end
local UNSUPPORTED = "unsupported or malformed password hash (want bcrypt $2y$/$2b$ or SHA-2 crypt $5$/$6$)"

local function user_ok(u) return type(u) == "string" and u ~= "" and #u <= 256 and not find(u, "[%c:]") end

-- htpasswd: "user:hash" lines; blank lines and lines starting with # are skipped.
local function read_file(path, what, users)
  local f, err = open(path, "rb")
  if not f then fail("%s: cannot read htpasswd file: %s", what, tostring(err)) end
  local text = f:read("*a")
  f:close()
  local n, lineno, pos = 0, 0, 1
  while pos <= #text do
    local nl = find(text, "\n", pos, true) or #text + 1
    local line = sub(text, pos, nl - 1)
    pos = nl + 1
    lineno = lineno + 1
    if sub(line, -1) == "\r" then line = sub(line, 1, -2) end
    if line ~= "" and not find(line, "^%s*#") then
      local u, h = match(line, "^([^:]*):(.*)$")
      if not u then fail("%s: %s:%d: not a 'user:hash' line", what, path, lineno) end
      if not user_ok(u) then fail("%s: %s:%d: bad user name", what, path, lineno) end
      if users[u] then fail("%s: %s:%d: user '%s' appears twice", what, path, lineno, u) end
      if not supported(h) then fail("%s: %s:%d: user '%s': %s", what, path, lineno, u, UNSUPPORTED) end
      users[u] = h
      n = n + 1
    end
  end
  return n
end

-- A hash's cost in about microseconds on one core: bcrypt of cost N ~70 us x 2^N,
-- SHA-2 crypt ~0.6 us per round (`rounds=`, default 5000). Only the order
-- matters: it picks the decoy.
local function cost(h)
  local n = match(h, "^%$2[by]%$(%d%d)%$")
  if n then return 70 * 2 ^ tonumber(n) end
  local r = match(h, "^%$[56]%$rounds=(%d+)%$")
  r = r and tonumber(r) or 5000
  if r < 1000 then r = 1000 elseif r > 999999999 then r = 999999999 end -- libxcrypt's bounds
  return 0.6 * r
end

--- mg.policy.basic_auth { file = "htpasswd" } or { users = { alice = "$2y$..." } }
local function new(conf)
  local what = "mg.policy.basic_auth"
  check.keys(conf, conf_keys, what)
  if (conf.file == nil) == (conf.users == nil) then fail("%s: needs one of 'file' and 'users'", what) end
  local users, n = {}, 0
  if conf.file ~= nil then
    local f = check.type(conf.file, "string", what, "file")
    if f == "" then fail("%s: 'file' must not be empty", what) end
    if sub(f, 1, 1) ~= "/" then f = require("moongate")._state().confdir .. "/" .. f end
    n = read_file(f, what, users)
  else
    check.type(conf.users, "table", what, "users")
    for u, h in pairs(conf.users) do
      if not user_ok(u) then fail("%s: users: bad user name %s", what, tostring(u)) end
      if type(h) ~= "string" or not supported(h) then fail("%s: users['%s']: %s", what, u, UNSUPPORTED) end
      users[u] = h
      n = n + 1
    end
  end
  if n == 0 then fail("%s: no users", what) end
  local ttl = 30
  if conf.cache_ttl ~= nil then ttl = check.number(conf.cache_ttl, what, "cache_ttl", 0, 86400) end
  local realm = auth.realm(conf.realm, what)
  -- the decoy an unknown user is checked against: the costliest hash, so that a
  -- refusal is never faster for a user that does not exist than for one that does
  local any_hash, top = nil, -1
  for _, h in pairs(users) do
    local c = cost(h)
    if c > top or (c == top and h < any_hash) then any_hash, top = h, c end
  end
  return setmetatable({
    name = "basic_auth", users = users, n = n, ttl = ttl, any_hash = any_hash,
    hide = auth.bool(conf.hide_credentials, true, what, "hide_credentials"),
    status = auth.status(conf.status, 401, what),
    cache = {}, cached = 0,
    challenge = { ["WWW-Authenticate"] = ('Basic realm="%s", charset="UTF-8"'):format(realm),
                  ["Content-Type"] = "text/plain" },
  }, Policy)
end

function Policy:describe()
  return ("users=%d cache_ttl=%gs hide_credentials=%s"):format(self.n, self.ttl, tostring(self.hide))
end

--- The (user, password) of the Authorization header, or nil.
local function credentials(req)
  local v = req:header("authorization")
  if type(v) == "table" then return nil end -- two Authorization headers: refused
  if not v then return nil end
  local b64 = match(v, "^[Bb][Aa][Ss][Ii][Cc] +([%w+/=]+) *$")
  if not b64 then return nil end
  local s = auth.unbase64(b64)
  if not s then return nil end
  local colon = find(s, ":", 1, true)
  if not colon then return nil end
  return sub(s, 1, colon - 1), sub(s, colon + 1)
end

--- mg_api_crypt_check's answer for pw against h, computed on libuv's thread pool
--- while the request waits (the worker goes on with other requests); in place
--- when nothing that may wait runs.
local function crypt_check(pw, h)
  local rc = C.mg_api_crypt_begin(pw, #pw, h, #h, job_out)
  if rc == EAGAIN then
    runtime = runtime or require "moongate.private.runtime"
    local job = job_out[0]
    repeat
      runtime.wait("io")
      rc = C.mg_api_crypt_result(job)
    until rc ~= EAGAIN
  elseif rc == EPHASE then
    rc = C.mg_api_crypt_check(pw, #pw, h, #h)
  end
  return rc
end

--- true when `pw` is user's password (from the cache when verified lately).
function Policy:verify(user, pw)
  local h = self.users[user]
  if not h then
    -- unknown user: spend the time a known one costs, then refuse
    crypt_check(pw, self.any_hash)
    return false
  end
  local ck
  if self.ttl > 0 then
    ck = sha256(user .. "\0" .. pw .. "\0" .. h)
    local exp = self.cache[ck]
    if exp and exp > C.mg_api_now() then return true end
  end
  local rc = crypt_check(pw, h)
  if rc < 0 then error("basic_auth: password check failed (" .. tostring(rc) .. ")", 0) end
  if rc ~= 1 then return false end
  if ck then
    if self.cached >= CACHE_MAX then self.cache, self.cached = {}, 0 end
    if not self.cache[ck] then self.cached = self.cached + 1 end
    self.cache[ck] = C.mg_api_now() + self.ttl
  end
  return true
end

--- Request phase: the consumer is the user; refuses with 401 otherwise.
function Policy:request(req)
  local user, pw = credentials(req)
  if not user or not self:verify(user, pw) then
    return req:respond(self.status, "Unauthorized\n", self.challenge)
  end
  auth.set_consumer(req, user, "basic_auth")
  if self.hide then req:del_header("authorization") end
end

return new
