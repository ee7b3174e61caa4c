-- mg.policy.jwt (issue 14): a bearer JSON Web Token (RFC 7519, compact JWS) checked
-- per request. Signatures in C through BoringSSL (core/jws.c): HS256/384/512,
-- RS256, PS256, ES256, ES384, EdDSA (Ed25519). Keys are parsed once (config time,
-- or when a JWKS is fetched) and kept. Phase: request. docs/policies.md "jwt".
local ffi = require "ffi"
local abi = require "moongate.ffi"
local check = require "moongate.private.check"
local json = require "moongate.private.json"
local auth = require "moongate.private.auth"

local C = abi.C
local fail = check.fail
local type, tostring, ipairs, pairs, pcall, next, os_time = type, tostring, ipairs, pairs, pcall, next, os.time
local byte, sub, find, floor, lower = string.byte, string.sub, string.find, math.floor, string.lower
local ffi_str = ffi.string

local ALG = { HS256 = 1, HS384 = 2, HS512 = 3, RS256 = 4, PS256 = 5, ES256 = 6, ES384 = 7, EdDSA = 8 }
local ALG_NAMES = { "HS256", "HS384", "HS512", "RS256", "PS256", "ES256", "ES384", "EdDSA" }
local KEY_TYPE = { "oct", "RSA", "EC P-256", "EC P-384", "Ed25519" }

local keys = {
  algorithms = true, secret = true, public_key = true, keys = true,
  jwks_url = true, jwks_refresh = true, jwks_min_refresh = true, jwks_timeout = true,
  issuer = true, audience = true, leeway = true, require_exp = true,
  header = true, query = true, consumer_claim = true, cache_size = true,
}

-- base64url (RFC 4648 §5) without padding, strict: other bytes, '=' or a
-- length of 1 mod 4 make it nil.
local dec = {}
do
  local a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
  for i = 1, 64 do dec[byte(a, i)] = i - 1 end
end
local b64buf = ffi.new("uint8_t[?]", 8192)
local b64cap = 8192
local function b64url(s)
  local n = #s
  if n % 4 == 1 then return nil end
  local out = floor(n * 3 / 4)
  if out > b64cap then
    b64cap = out
    b64buf = ffi.new("uint8_t[?]", out)
  end
  local buf, o, i = b64buf, 0, 1
  while i + 3 <= n do
    local a, b, c, d = dec[byte(s, i)], dec[byte(s, i + 1)], dec[byte(s, i + 2)], dec[byte(s, i + 3)]
    if not (a and b and c and d) then return nil end
    local v = ((a * 64 + b) * 64 + c) * 64 + d
    buf[o] = floor(v / 65536); buf[o + 1] = floor(v / 256) % 256; buf[o + 2] = v % 256
    o, i = o + 3, i + 4
  end
  local r = n - i + 1
  if r == 2 then
    local a, b = dec[byte(s, i)], dec[byte(s, i + 1)]
    if not (a and b) or b % 16 ~= 0 then return nil end
    buf[o] = a * 4 + floor(b / 16); o = o + 1
  elseif r == 3 then
    local a, b, c = dec[byte(s, i)], dec[byte(s, i + 1)], dec[byte(s, i + 2)]
    if not (a and b and c) or c % 4 ~= 0 then return nil end
    local v = (a * 64 + b) * 64 + c
    buf[o] = floor(v / 1024); buf[o + 1] = floor(v / 4) % 256; o = o + 2
  end
  return ffi_str(buf, o)
end

local function own(k) return k ~= nil and ffi.gc(k, C.mg_api_jws_key_free) or nil end

local function pem_key(pem) return own(C.mg_api_jws_key_pem(pem, #pem)) end
local function secret_key(s) return own(C.mg_api_jws_key_hmac(s, #s)) end

-- A key from a JWK (a table): the key object, or nil, why. A JWK's "alg",
-- when present, binds the key to that algorithm.
local function jwk_key(j)
  if type(j) ~= "table" then return nil, "not an object" end
  if j.use ~= nil and j.use ~= "sig" then return nil, "use is not sig" end
  local function b(name)
    local v = j[name]
    return type(v) == "string" and b64url(v) or nil
  end
  local k
  if j.kty == "RSA" then
    local n, e = b("n"), b("e")
    if not n or not e then return nil, "RSA key without n or e" end
    k = C.mg_api_jws_key_rsa(n, #n, e, #e)
  elseif j.kty == "EC" then
    local crv = j.crv == "P-256" and 256 or j.crv == "P-384" and 384 or nil
    local x, y = b("x"), b("y")
    if not crv or not x or not y then return nil, "EC key needs crv P-256 or P-384, x and y" end
    k = C.mg_api_jws_key_ec(crv, x, #x, y, #y)
  elseif j.kty == "OKP" then
    local x = b("x")
    if j.crv ~= "Ed25519" or not x then return nil, "OKP key needs crv Ed25519 and x" end
    k = C.mg_api_jws_key_ed25519(x, #x)
  else
    return nil, "kty " .. tostring(j.kty) .. " is not RSA, EC or OKP"
  end
  if k == nil then return nil, "not a valid " .. tostring(j.kty) .. " key" end
  if j.alg ~= nil and not ALG[j.alg] then return nil, "alg " .. tostring(j.alg) .. " not supported" end
  return { key = own(k), alg = j.alg }
end

local function list_or_string(v, what, k)
  if v == nil then return nil end
  if type(v) == "string" then return { [v] = true } end
  check.type(v, "table", what, k)
  for key in pairs(v) do
    if type(key) ~= "number" then fail("%s: '%s' must be a string or a list of strings", what, k) end
  end
  local set = {}
  for i, s in ipairs(v) do
    if type(s) ~= "string" then fail("%s: %s[%d] must be a string", what, k, i) end
    set[s] = true
  end
  if next(v) == nil then fail("%s: '%s' is empty", what, k) end
  return set
end

local Policy = {}
Policy.__index = Policy

--- mg.policy.jwt { secret | public_key | keys | jwks_url, algorithms, issuer, audience, leeway, ... }
local function new(conf)
  local what = "mg.policy.jwt"
  check.keys(conf, keys, what)
  local self = setmetatable({ name = "jwt", inline = {}, n_inline = 0, jwks = nil }, Policy)
  local function add(kid, spec, where)
    local entry
    if type(spec) == "table" then
      check.keys(spec, { secret = true, public_key = true }, what .. " " .. where)
      if (spec.secret == nil) == (spec.public_key == nil) then
        fail("%s: %s needs one of 'secret' or 'public_key'", what, where)
      end
      spec = spec.secret ~= nil and { secret = spec.secret } or spec.public_key
    end
    if type(spec) == "table" then
      local s = check.type(spec.secret, "string", what, where .. ".secret")
      entry = { key = secret_key(s) }
      if not entry.key then fail("%s: %s: a secret must be 1 to 4096 bytes", what, where) end
    elseif type(spec) == "string" then
      entry = { key = pem_key(spec) }
      if not entry.key then
        fail("%s: %s is not a PEM public key (RSA of 2048 bits or more, EC P-256/P-384, Ed25519)", what, where)
      end
    else
      fail("%s: %s must be a PEM string or { secret = ... }", what, where)
    end
    entry.kid = kid
    self.n_inline = self.n_inline + 1
    self.inline[self.n_inline] = entry
  end
  if conf.secret ~= nil then add(nil, { secret = check.type(conf.secret, "string", what, "secret") }, "'secret'") end
  if conf.public_key ~= nil then add(nil, check.type(conf.public_key, "string", what, "public_key"), "'public_key'") end
  if conf.keys ~= nil then
    check.type(conf.keys, "table", what, "keys")
    for kid, spec in pairs(conf.keys) do
      if type(kid) ~= "string" then fail("%s: 'keys' maps kid (a string) to a key", what) end
      add(kid, spec, "keys[\"" .. kid .. "\"]")
    end
  end
  if conf.jwks_url ~= nil then
    local u = check.type(conf.jwks_url, "string", what, "jwks_url")
    if not find(u, "^https?://") then fail("%s: 'jwks_url' must be an http:// or https:// URL", what) end
    self.jwks_url = u
    self.jwks_refresh = conf.jwks_refresh == nil and 300 or check.number(conf.jwks_refresh, what, "jwks_refresh", 1)
    -- at least 1 s: each token with an unknown kid would fetch the set otherwise
    self.jwks_min_refresh = conf.jwks_min_refresh == nil and 10
      or check.number(conf.jwks_min_refresh, what, "jwks_min_refresh", 1)
    self.jwks_timeout = conf.jwks_timeout == nil and 5 or check.number(conf.jwks_timeout, what, "jwks_timeout", 0.001, 300)
    self.jwks = {}       -- kid -> entry; [i] = entry
    self.fetched = nil   -- when the set in use came (mg_api_now)
    self.attempt = nil   -- when the last fetch was tried
  else
    for _, k in ipairs { "jwks_refresh", "jwks_min_refresh", "jwks_timeout" } do
      if conf[k] ~= nil then fail("%s: '%s' needs 'jwks_url'", what, k) end
    end
  end
  if self.n_inline == 0 and not self.jwks_url then
    fail("%s: needs a key: 'secret', 'public_key', 'keys' or 'jwks_url'", what)
  end
  self.algs = {}
  if conf.algorithms ~= nil then
    check.type(conf.algorithms, "table", what, "algorithms")
    for i, a in ipairs(conf.algorithms) do
      if not ALG[a] then
        fail("%s: algorithms[%d]: '%s' is not one of HS256 HS384 HS512 RS256 PS256 ES256 ES384 EdDSA",
             what, i, tostring(a))
      end
      self.algs[a] = true
    end
    if next(self.algs) == nil then fail("%s: 'algorithms' is empty", what) end
  else
    for a in pairs(ALG) do self.algs[a] = true end
  end
  self.issuer = list_or_string(conf.issuer, what, "issuer")
  self.audience = list_or_string(conf.audience, what, "audience")
  self.leeway = conf.leeway == nil and 0 or check.number(conf.leeway, what, "leeway", 0, 86400)
  self.require_exp = conf.require_exp == true
  if conf.require_exp ~= nil then check.type(conf.require_exp, "boolean", what, "require_exp") end
  if conf.header ~= nil and not check.token(conf.header) then
    fail("%s: 'header' must be a header name, got %s", what, tostring(conf.header))
  end
  self.header = conf.header == nil and "authorization" or conf.header:lower()
  self.query = conf.query ~= nil and check.type(conf.query, "string", what, "query") or nil
  if self.query == "" then fail("%s: 'query' must be a query argument name, got \"\"", what) end
  self.cache_size = conf.cache_size == nil and 10000 or check.number(conf.cache_size, what, "cache_size", 0, 1e7)
  self.verified, self.n_verified = {}, 0
  self.consumer_claim = conf.consumer_claim == nil and "sub"
    or check.type(conf.consumer_claim, "string", what, "consumer_claim")
  if self.consumer_claim == "" then fail("%s: 'consumer_claim' must be a claim name, got \"\"", what) end
  return self
end

function Policy:describe()
  local a = {}
  for _, n in ipairs(ALG_NAMES) do if self.algs[n] then a[#a + 1] = n end end
  return ("algorithms=%s keys=%d%s"):format(table.concat(a, ","), self.n_inline,
    self.jwks_url and (" jwks=" .. self.jwks_url) or "")
end

-- Fetches the JWKS (one fetch at a time per worker: others wait for it).
function Policy:fetch()
  local mg = require "moongate"
  local now = C.mg_api_now()
  -- a fetch in flight (its start; one whose hook was dropped by timeouts.hook
  -- never clears it, hence the age check)
  if self.fetching and now - self.fetching < self.jwks_timeout + 1 then
    local deadline = self.fetching + self.jwks_timeout + 1
    while self.fetching and C.mg_api_now() < deadline do mg.sleep(0.005) end
    return
  end
  self.fetching = now
  self.attempt = now
  local ok, res, err = pcall(require("moongate.http").request,
    { url = self.jwks_url, timeout = self.jwks_timeout, max_body = 1024 * 1024 })
  self.fetching = false
  if not ok then res, err = nil, res end
  local why
  if not res then
    why = tostring(err)
  elseif res.status ~= 200 then
    why = "status " .. res.status
  else
    local doc, jerr = json.decode(res.body)
    if not doc then
      why = "not JSON: " .. jerr
    elseif type(doc) ~= "table" or type(doc.keys) ~= "table" then
      why = "no 'keys' list"
    else
      local set, n = {}, 0
      for i, j in ipairs(doc.keys) do
        local e, kerr = jwk_key(j)
        if e then
          e.kid = type(j.kid) == "string" and j.kid or nil
          n = n + 1
          set[n] = e
          if e.kid then set[e.kid] = e end
        else
          mg.log.warn(("jwt: %s: keys[%d] skipped: %s"):format(self.jwks_url, i, kerr))
        end
      end
      self.jwks, self.fetched = set, C.mg_api_now()
      self.verified, self.n_verified = {}, 0 -- tokens checked with the old set go
      return
    end
  end
  mg.log.err(("jwt: JWKS %s: %s (keeping %d keys)"):format(self.jwks_url, why, #self.jwks))
end

-- the keys to try for (kid, alg): a list, or nil, "no key" (a kid miss)
function Policy:candidates(kid, alg)
  local out = {}
  local function consider(e)
    if (kid == nil or e.kid == kid) and (e.alg == nil or e.alg == alg) then out[#out + 1] = e end
  end
  for i = 1, self.n_inline do consider(self.inline[i]) end
  if self.jwks_url then
    local now = C.mg_api_now()
    if self.fetched == nil or now - self.fetched >= self.jwks_refresh then
      if self.attempt == nil or now - self.attempt >= math.min(self.jwks_min_refresh, self.jwks_refresh) then
        self:fetch()
      end
    end
    local found = #out
    for _, e in ipairs(self.jwks) do consider(e) end
    if #out == found and kid ~= nil and (self.attempt == nil or C.mg_api_now() - self.attempt >= self.jwks_min_refresh) then
      self:fetch() -- a kid miss: the set may have rotated
      for _, e in ipairs(self.jwks) do consider(e) end
    end
    if #out == 0 and self.fetched == nil then return nil, "unavailable" end
  end
  return out
end

local function deny(req, desc)
  req.ctx.jwt_error = desc
  req:respond(401, "Unauthorized\n", {
    ["WWW-Authenticate"] = 'Bearer error="invalid_token", error_description="' .. desc .. '"',
  })
end

-- a verified token is kept (per worker, key = the whole token) at most this long
local CACHE_LIFE = 60

local function bad_claim(v) return v ~= nil and type(v) ~= "number" end

-- "Bearer <token>" (scheme case-insensitive, spaces around the token): the token,
-- or nil. Its characters are checked where it is decoded: a cache hit is a token
-- that was verified, so it is made of base64url and dots already.
local function bearer(h)
  local n = #h
  if n < 8 or lower(sub(h, 1, 7)) ~= "bearer " then return nil end
  local i, j = 8, n
  while byte(h, i) == 32 do i = i + 1 end
  while j >= i and byte(h, j) == 32 do j = j - 1 end
  if j < i then return nil end
  return sub(h, i, j)
end

-- What a verified token's claims say that does not depend on the time, checked
-- once: nil and the reason, or a cache entry { claims, exp, nbf, consumer,
-- valid } (time-dependent checks run on every request, cached or not).
function Policy:judge(claims)
  if bad_claim(claims.exp) or bad_claim(claims.nbf) then return nil, "malformed claims" end
  if claims.exp == nil and self.require_exp then return nil, "token without exp" end
  if self.issuer and not (type(claims.iss) == "string" and self.issuer[claims.iss]) then
    return nil, "issuer not accepted"
  end
  if self.audience then
    local aud, hit = claims.aud, false
    if type(aud) == "string" then
      hit = self.audience[aud] == true
    elseif type(aud) == "table" then
      for _, x in ipairs(aud) do if type(x) == "string" and self.audience[x] then hit = true end end
    end
    if not hit then return nil, "audience not accepted" end
  end
  local c = claims[self.consumer_claim]
  if type(c) == "number" then c = tostring(c) end
  -- the consumer goes into headers and the access log, as key_auth's: 1 to 256
  -- bytes, no control characters (CR/LF, NUL)
  if type(c) == "string" and (c == "" or #c > 256 or find(c, "%c")) then
    return nil, "malformed claims"
  end
  return { claims = claims, exp = claims.exp, nbf = claims.nbf,
           consumer = type(c) == "string" and c or false, valid = C.mg_api_now() + CACHE_LIFE }
end

-- A judged token at this second: the time checks, then the request carries it.
function Policy:accept(req, e)
  if e.bad then return deny(req, e.bad) end
  local now = os_time()
  if e.exp ~= nil and now >= e.exp + self.leeway then return deny(req, "token expired") end
  if e.nbf ~= nil and now + self.leeway < e.nbf then return deny(req, "token not yet valid") end
  req.ctx.jwt = e.claims
  if e.consumer then auth.set_consumer(req, e.consumer, "jwt") end
end

--- Request phase: 401 unless the token verifies and its claims hold.
function Policy:request(req)
  local tok
  local h = req:header(self.header)
  if type(h) == "table" then return deny(req, "more than one token") end -- which one counts is not ours to guess
  if h then
    if self.header == "authorization" then tok = bearer(h) else tok = h end
  elseif self.query then
    tok = req:arg(self.query)
    if tok ~= nil and type(tok) ~= "string" then return deny(req, "more than one token") end
  end
  if not tok then return req:respond(401, "Unauthorized\n", { ["WWW-Authenticate"] = 'Bearer' }) end
  local e = self.cache_size > 0 and self.verified[tok]
  if e then
    if C.mg_api_now() < e.valid then return self:accept(req, e) end
    self.verified[tok] = nil
  end
  -- not a bearer token (what a verified one never is)
  if h and self.header == "authorization" and find(tok, "[^%w%-_%.]") then
    return req:respond(401, "Unauthorized\n", { ["WWW-Authenticate"] = 'Bearer' })
  end
  local p1 = find(tok, ".", 1, true)
  local p2 = p1 and find(tok, ".", p1 + 1, true)
  if not p2 or find(tok, ".", p2 + 1, true) or #tok > 16384 then return deny(req, "malformed token") end
  local hj, pj, sig = b64url(sub(tok, 1, p1 - 1)), b64url(sub(tok, p1 + 1, p2 - 1)), b64url(sub(tok, p2 + 1))
  if not hj or not pj or not sig then return deny(req, "malformed token") end
  local hdr = json.decode(hj)
  if type(hdr) ~= "table" then return deny(req, "malformed header") end
  local alg = hdr.alg
  if type(alg) ~= "string" or not ALG[alg] or not self.algs[alg] then
    return deny(req, "algorithm not allowed")
  end
  if hdr.crit ~= nil then return deny(req, "unsupported crit header") end
  local kid = hdr.kid
  if kid ~= nil and type(kid) ~= "string" then return deny(req, "malformed header") end
  local cands = self:candidates(kid, alg)
  if not cands then
    return req:respond(503, "Service Unavailable\n") -- no JWKS yet (logged by fetch)
  end
  local input, n = sub(tok, 1, p2 - 1), ALG[alg]
  local ok = false
  for i = 1, #cands do
    local rc = C.mg_api_jws_verify(cands[i].key, n, input, #input, sig, #sig)
    if rc == 1 then ok = true break end
  end
  if not ok then return deny(req, #cands == 0 and "unknown key" or "bad signature") end
  local claims = json.decode(pj)
  if type(claims) ~= "table" or claims[1] ~= nil then return deny(req, "malformed claims") end
  local why
  e, why = self:judge(claims)
  -- a token whose signature holds but whose claims do not is kept too: its
  -- refusal costs no second verification
  if not e then e = { bad = why, valid = C.mg_api_now() + CACHE_LIFE } end
  if self.cache_size > 0 then
    if self.n_verified >= self.cache_size then self.verified, self.n_verified = {}, 0 end
    self.verified[tok] = e
    self.n_verified = self.n_verified + 1
  end
  return self:accept(req, e)
end

return new
