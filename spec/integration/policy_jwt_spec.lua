-- mg.policy.jwt on the real binary: tokens made here with the openssl CLI for
-- every algorithm (HS256/384/512 by -hmac, RS256/PS256/ES256/ES384 by dgst -sign,
-- ES DER signatures turned into raw r||s, EdDSA by pkeyutl), the classic attacks
-- (alg none, HS256 signed with the RSA public key), exp/nbf with leeway, iss/aud,
-- the consumer claim, and a JWKS from a stub origin: rotation, kid miss, unreachable.
local helpers = require "spec.helpers"
local t = require "moongate.testing"

local dir = helpers.tmpdir()
local function sh(cmd)
  local ok = os.execute(cmd .. " 2>" .. dir .. "/sh.err")
  assert(ok == 0 or ok == true, cmd .. ": " .. (helpers.read_file(dir .. "/sh.err") or ""))
end

local A = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local function b64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    local n = c and 4 or b and 3 or 2
    for j = 1, n do
      local k = math.floor(v / 64 ^ (4 - j)) % 64
      out[#out + 1] = A:sub(k + 1, k + 1)
    end
  end
  return table.concat(out)
end

-- DER ECDSA-Sig-Value -> r||s of `len` bytes each
local function der_to_raw(der, len)
  local i = 3
  if der:byte(2) == 0x81 then i = 4 end
  local out = {}
  for _ = 1, 2 do
    assert(der:byte(i) == 2)
    local l = der:byte(i + 1)
    local v = der:sub(i + 2, i + 1 + l):gsub("^%z+", "")
    out[#out + 1] = string.rep("\0", len - #v) .. v
    i = i + 2 + l
  end
  return out[1] .. out[2]
end

local function json(t_)
  local parts = {}
  for k, v in pairs(t_) do
    local val
    if type(v) == "number" then val = string.format("%d", v)
    elseif type(v) == "table" then
      local a = {}
      for i, s in ipairs(v) do a[i] = '"' .. s .. '"' end
      val = "[" .. table.concat(a, ",") .. "]"
    else val = '"' .. v .. '"' end
    parts[#parts + 1] = '"' .. k .. '":' .. val
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

-- sign(alg, keyfile_or_secret, claims, header_extra) -> compact JWS
local function token(alg, key, claims, hdr)
  hdr = hdr or {}
  hdr.alg, hdr.typ = alg, "JWT"
  local input = b64(json(hdr)) .. "." .. b64(json(claims or { sub = "alice" }))
  helpers.write_file(dir .. "/in", input)
  local sig
  local bits = alg:match("%d+")
  if alg:sub(1, 2) == "HS" then
    sh(("openssl dgst -sha%s -hmac '%s' -binary -out %s/sig %s/in"):format(bits, key, dir, dir))
  elseif alg == "RS256" then
    sh(("openssl dgst -sha256 -sign %s -binary -out %s/sig %s/in"):format(key, dir, dir))
  elseif alg == "PS256" then
    sh(("openssl dgst -sha256 -sign %s -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:-1 -binary -out %s/sig %s/in")
       :format(key, dir, dir))
  elseif alg == "ES256" or alg == "ES384" then
    sh(("openssl dgst -sha%s -sign %s -binary -out %s/sig %s/in"):format(bits, key, dir, dir))
  elseif alg == "EdDSA" then
    sh(("openssl pkeyutl -sign -inkey %s -rawin -in %s/in -out %s/sig"):format(key, dir, dir))
  end
  sig = helpers.read_file(dir .. "/sig") or ""
  if alg == "ES256" then sig = der_to_raw(sig, 32) elseif alg == "ES384" then sig = der_to_raw(sig, 48) end
  if alg == "none" then sig = "" end
  return input .. "." .. b64(sig)
end

local function keygen(name, args)
  sh(("openssl genpkey %s -out %s/%s.pem"):format(args, dir, name))
  sh(("openssl pkey -in %s/%s.pem -pubout -out %s/%s.pub"):format(dir, name, dir, name))
  return dir .. "/" .. name .. ".pem", helpers.read_file(dir .. "/" .. name .. ".pub")
end

local function ec_jwk(name, crv, kid, flen)
  sh(("openssl pkey -pubin -in %s/%s.pub -outform DER -out %s/%s.der"):format(dir, name, dir, name))
  local der = helpers.read_file(dir .. "/" .. name .. ".der")
  local xy = der:sub(-2 * flen)
  return ('{"kty":"EC","crv":"%s","kid":"%s","x":"%s","y":"%s"}'):format(crv, kid, b64(xy:sub(1, flen)), b64(xy:sub(flen + 1)))
end

local CONF = [[
local mg = require "moongate"
mg.config { workers = 1 }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
local function pem(f) local h = assert(io.open(f)) local s = h:read("*a") h:close() return s end
local show = mg.policy.new { name = "show", request = function(self, req)
  req:set_header("X-Consumer", req.ctx.consumer and req.ctx.consumer.name or "-")
end }
mg.route { path = "/hs/", upstream = o, use = { mg.policy.jwt { secret = "s3cret-s3cret-s3cret", algorithms = { "HS256", "HS384", "HS512" } }, show } }
mg.route { path = "/rs/", upstream = o, use = { mg.policy.jwt { public_key = pem("${dir}/rsa.pub") } } }
mg.route { path = "/rsonly/", upstream = o, use = { mg.policy.jwt { public_key = pem("${dir}/rsa.pub"), algorithms = { "RS256" } } } }
mg.route { path = "/es256/", upstream = o, use = { mg.policy.jwt { public_key = pem("${dir}/p256.pub") } } }
mg.route { path = "/es384/", upstream = o, use = { mg.policy.jwt { public_key = pem("${dir}/p384.pub") } } }
mg.route { path = "/ed/", upstream = o, use = { mg.policy.jwt { public_key = pem("${dir}/ed.pub") } } }
mg.route { path = "/claims/", upstream = o, use = { mg.policy.jwt { secret = "k", issuer = "https://iss.example", audience = { "api", "other" }, consumer_claim = "client" }, show } }
mg.route { path = "/leeway/", upstream = o, use = { mg.policy.jwt { secret = "k", leeway = 60 } } }
mg.route { path = "/jwks/", upstream = o, use = { mg.policy.jwt { jwks_url = "${jwks}", jwks_refresh = 300, jwks_min_refresh = 1 }, show } }
mg.route { path = "/down/", upstream = o, use = { mg.policy.jwt { jwks_url = "http://127.0.0.1:${closed}/jwks", jwks_timeout = 1 } } }
mg.route { path = "/", upstream = o }
]]

describe("mg.policy.jwt", function()
  local origin, proxy, jwks, rsa, p256, p384, ed, k1, k2
  local now = os.time()

  lazy_setup(function()
    local rsa_pub, ed_pub
    rsa, rsa_pub = keygen("rsa", "-algorithm RSA -pkeyopt rsa_keygen_bits:2048")
    p256 = keygen("p256", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256")
    p384 = keygen("p384", "-algorithm EC -pkeyopt ec_paramgen_curve:P-384")
    ed, ed_pub = keygen("ed", "-algorithm ED25519")
    k1 = keygen("k1", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256")
    k2 = keygen("k2", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256")
    -- the JWKS: the P-256 key "one", the RSA key as "r" (n from -modulus), the Ed25519 key as "e"
    local hex = io.popen("openssl rsa -pubin -in " .. dir .. "/rsa.pub -modulus -noout"):read("*a"):match("Modulus=(%x+)")
    local n = hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)
    sh(("openssl pkey -pubin -in %s/ed.pub -outform DER -out %s/ed.der"):format(dir, dir))
    local edx = helpers.read_file(dir .. "/ed.der"):sub(-32)
    helpers.write_file(dir .. "/jwks.json", '{"keys":[' .. ec_jwk("k1", "P-256", "one", 32)
      .. ',{"kty":"RSA","kid":"r","use":"sig","n":"' .. b64(n) .. '","e":"AQAB"}'
      .. ',{"kty":"OKP","crv":"Ed25519","kid":"e","alg":"EdDSA","x":"' .. b64(edx) .. '"}'
      .. ',{"kty":"oct","kid":"s","k":"c2VjcmV0"}]}')
    helpers.write_file(dir .. "/k2.jwk", ec_jwk("k2", "P-256", "two", 32))
    assert(rsa_pub and ed_pub)
    local jwks_file = dir .. "/jwks.json"
    jwks = assert(t.origin(function()
      local h = io.open(jwks_file) local s = h:read("*a") h:close()
      return 200, s, { ["Content-Type"] = "application/json" }
    end))
    origin = helpers.origin({ name = "o" })
    proxy = helpers.proxy(CONF, { dir = dir, vars = { origin = origin.addr, jwks = jwks:url("/jwks"),
                                                      closed = helpers.free_port() } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
    t.stop_all()
  end)

  local function get(path, tok)
    return assert(proxy:request({ path = path, headers = tok and { Authorization = "Bearer " .. tok } or nil }))
  end

  it("accepts HS256, HS384, HS512 and puts the sub claim in req.ctx.consumer", function()
    for _, alg in ipairs { "HS256", "HS384", "HS512" } do
      local res = get("/hs/" .. alg, token(alg, "s3cret-s3cret-s3cret"))
      assert.equal(200, res.status, alg)
      assert.truthy(res.body:find('["X-Consumer", "alice"]', 1, true), res.body)
    end
    local res = get("/hs/x", token("HS256", "wrong-secret"))
    assert.equal(401, res.status)
    assert.truthy(res.h["www-authenticate"]:find('Bearer error="invalid_token"', 1, true))
  end)

  it("accepts RS256, PS256, ES256, ES384 and EdDSA with PEM keys, refuses a signature by another key", function()
    assert.equal(200, get("/rs/a", token("RS256", rsa)).status)
    assert.equal(200, get("/rs/b", token("PS256", rsa)).status)
    assert.equal(200, get("/es256/a", token("ES256", p256)).status)
    assert.equal(200, get("/es384/a", token("ES384", p384)).status)
    assert.equal(200, get("/ed/a", token("EdDSA", ed)).status)
    assert.equal(401, get("/es256/b", token("ES256", k1)).status)
    assert.equal(401, get("/rsonly/a", token("PS256", rsa)).status) -- not in algorithms
    assert.equal(0, origin:count_path("/es256/b") + origin:count_path("/rsonly/a"))
  end)

  it("refuses alg none, the HS256-with-the-RSA-public-key confusion, a missing token and garbage", function()
    local none = token("none", nil)
    assert.equal(401, get("/rs/none", none).status)
    local confused = token("HS256", helpers.read_file(dir .. "/rsa.pub"))
    local res = get("/rs/confused", confused)
    assert.equal(401, res.status)
    assert.equal(0, origin:count_path("/rs/confused") + origin:count_path("/rs/none"))
    res = get("/rs/missing")
    assert.equal(401, res.status)
    assert.equal("Bearer", res.h["www-authenticate"])
    assert.equal(401, get("/rs/garbage", "a.b.c").status)
    assert.equal(401, get("/rs/tamper", (token("RS256", rsa):gsub("%.[^.]+%.", "." .. b64('{"sub":"mallory"}') .. ".", 1))).status)
  end)

  it("checks exp and nbf (with leeway), iss and aud; consumer_claim picks the consumer", function()
    assert.equal(401, get("/leeway/exp", token("HS256", "k", { exp = now - 120 })).status)
    assert.equal(200, get("/leeway/exp-in-leeway", token("HS256", "k", { exp = now - 30 })).status)
    assert.equal(401, get("/leeway/nbf", token("HS256", "k", { nbf = now + 120 })).status)
    assert.equal(200, get("/leeway/nbf-in-leeway", token("HS256", "k", { nbf = now + 30 })).status)
    local res = get("/hs/expired", token("HS256", "s3cret-s3cret-s3cret", { exp = now - 1 }))
    assert.equal(401, res.status)
    assert.truthy(res.h["www-authenticate"]:find("expired", 1, true))
    local good = { iss = "https://iss.example", aud = { "x", "api" }, client = "svc-1", exp = now + 60 }
    assert.equal(200, get("/claims/ok", token("HS256", "k", good)).status)
    good.iss = "https://evil.example"
    assert.equal(401, get("/claims/iss", token("HS256", "k", good)).status)
    good.iss, good.aud = "https://iss.example", "nope"
    assert.equal(401, get("/claims/aud", token("HS256", "k", good)).status)
  end)

  it("reads the scheme case-insensitively with spaces around the token; other shapes get a bare Bearer challenge", function()
    local tok = token("HS256", "s3cret-s3cret-s3cret")
    for _, hv in ipairs { "Bearer " .. tok, "bearer " .. tok, "BEARER   " .. tok .. "  " } do
      local res = assert(proxy:request({ path = "/hs/scheme", headers = { Authorization = hv } }))
      assert.equal(200, res.status, hv)
    end
    for _, hv in ipairs { "Bearer", "Bearer ", "Basic " .. tok, "Bearer" .. tok, "Bearer " .. tok .. " x",
                          "Bearer " .. tok:sub(1, 10) .. "*" .. tok:sub(12) } do
      local res = assert(proxy:request({ path = "/hs/scheme", headers = { Authorization = hv } }))
      assert.equal(401, res.status, hv)
      assert.equal("Bearer", res.h["www-authenticate"], hv)
    end
  end)

  it("a token whose signature holds but whose issuer is refused stays refused, cached or not", function()
    local bad = token("HS256", "k", { iss = "https://evil.example", aud = "api", exp = now + 60 })
    for i = 1, 3 do
      local res = get("/claims/iss-again", bad)
      assert.equal(401, res.status, "request " .. i)
      assert.truthy(res.h["www-authenticate"]:find("issuer not accepted", 1, true), res.h["www-authenticate"])
    end
    assert.equal(0, origin:count_path("/claims/iss-again"))
  end)

  it("a verified token is kept, but its exp is checked again on every request", function()
    local tok = token("ES256", p256, { sub = "carol", exp = os.time() + 2 })
    assert.equal(200, get("/es256/keep1", tok).status)
    assert.equal(200, get("/es256/keep2", tok).status)
    os.execute("sleep 2.2")
    local res = get("/es256/keep3", tok)
    assert.equal(401, res.status)
    assert.truthy(res.h["www-authenticate"]:find("expired", 1, true))
    assert.equal(0, origin:count_path("/es256/keep3"))
  end)

  it("JWKS: verifies with the fetched key, a new kid after rotation triggers one refresh", function()
    assert.equal(200, get("/jwks/1", token("ES256", k1, nil, { kid = "one" })).status)
    assert.equal(1, jwks:count())
    assert.equal(200, get("/jwks/r", token("RS256", rsa, nil, { kid = "r" })).status)
    assert.equal(200, get("/jwks/e", token("EdDSA", ed, nil, { kid = "e" })).status)
    -- an oct key in a JWKS is not taken: no HS256 through a fetched set
    assert.equal(401, get("/jwks/s", token("HS256", "secret", nil, { kid = "s" })).status)
    local c0 = jwks:count() -- 1, or 2 if the "s" miss came more than 1 s after the fetch
    -- rotate: the set now has "two" too
    local s = helpers.read_file(dir .. "/jwks.json"):gsub("%]}$", "," .. helpers.read_file(dir .. "/k2.jwk") .. "]}")
    helpers.write_file(dir .. "/jwks.json", s)
    local two = token("ES256", k2, nil, { kid = "two" })
    os.execute("sleep 1.1")
    assert.equal(200, get("/jwks/2", two).status)
    assert.equal(c0 + 1, jwks:count())
    -- unknown kids: at most one refresh per jwks_min_refresh (1 s): none right
    -- after the rotation's, then one, then none again
    local miss = token("ES256", k2, nil, { kid = "nope" })
    assert.equal(401, get("/jwks/miss0", miss).status)
    assert.equal(c0 + 1, jwks:count())
    os.execute("sleep 1.1")
    for i = 1, 5 do assert.equal(401, get("/jwks/miss" .. i, miss).status) end
    assert.equal(c0 + 2, jwks:count())
    assert.equal(0, origin:count_path("/jwks/miss1"))
  end)

  it("JWKS unreachable: 503 while no key set was ever fetched, logged", function()
    local res = get("/down/a", token("ES256", k1, nil, { kid = "one" }))
    assert.equal(503, res.status)
    assert.equal(0, origin:count_path("/down/a"))
    helpers.wait_until(function() return (proxy:stderr() or ""):find("jwt: JWKS http://127.0.0.1", 1, true) end, 3)
  end)
end)

describe("mg.policy.jwt config errors, naming the user's file and line", function()
  helpers.use_error_cases(it, {
    { 'mg.policy.jwt { secrte = "x" }', "mg.policy.jwt: unknown key 'secrte'" },
    { 'mg.policy.jwt { algorithms = { "HS256" } }', "mg.policy.jwt: needs a key" },
    { 'mg.policy.jwt { secret = "x", algorithms = { "none" } }', "mg.policy.jwt: algorithms[1]: 'none' is not one of" },
    { 'mg.policy.jwt { public_key = "-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----\\n" }', "mg.policy.jwt: 'public_key' is not a PEM public key" },
    { 'mg.policy.jwt { secret = "x", jwks_min_refresh = 3 }', "mg.policy.jwt: 'jwks_min_refresh' needs 'jwks_url'" },
    { 'mg.policy.jwt { jwks_url = "ftp://x/" }', "mg.policy.jwt: 'jwks_url' must be an http" },
  })
end)
