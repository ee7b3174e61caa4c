-- Hostile inputs against the shipped policies (issue 14, helper i14-attack), through
-- the real binary over loopback. Each `it` names an input that once went wrong and
-- what must happen instead; the comments say what it did before the fix.
local helpers = require "spec.helpers"
local t = require "moongate.testing"
local socket = require "socket"

local dir = helpers.tmpdir()

-- base64url without padding, and an HS256 token signed with `secret` (openssl CLI)
local A = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local function b64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    for j = 1, (c and 4 or b and 3 or 2) do
      local k = math.floor(v / 64 ^ (4 - j)) % 64
      out[#out + 1] = A:sub(k + 1, k + 1)
    end
  end
  return table.concat(out)
end

-- standard base64 with padding (Basic credentials)
local B = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    for j = 1, 4 do
      if j == 3 and not b or j == 4 and not c then out[#out + 1] = "=" else
        local k = math.floor(v / 64 ^ (4 - j)) % 64
        out[#out + 1] = B:sub(k + 1, k + 1)
      end
    end
  end
  return table.concat(out)
end

local function hs256(secret, payload)
  local input = b64('{"alg":"HS256","typ":"JWT"}') .. "." .. b64(payload)
  helpers.write_file(dir .. "/in", input)
  assert(os.execute(("openssl dgst -sha256 -hmac '%s' -binary -out %s/sig %s/in"):format(secret, dir, dir)))
  return input .. "." .. b64(helpers.read_file(dir .. "/sig"))
end

local CONF = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = "access.log" }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
mg.route { path = "/jwt/", upstream = o, use = { mg.policy.jwt { secret = "k" } } }
mg.route { path = "/jwth/", upstream = o, use = { mg.policy.jwt { secret = "k", header = "X-Token" } } }
mg.route { path = "/fa/", upstream = o, use = { mg.policy.forward_auth {
  url = "${auth}/check", headers = { "Authorization" }, pass_headers = { "X-User" }, ttl = 30 } } }
mg.route { path = "/fa2/", upstream = o, use = { mg.policy.forward_auth {
  url = "${auth}/tenant", headers = { "Authorization", "X-Org", "X-Tenant" }, pass_headers = { "X-User" }, ttl = 30 } } }
mg.route { path = "/amp/", upstream = o, use = { mg.policy.headers { rewrite = { "^/amp/(.*)$", "/big/" .. ("$1"):rep(200) } } } }
mg.route { path = "/cors/", upstream = o, use = { mg.policy.cors { origins = { "*" }, credentials = true } } }
mg.route { path = "/", upstream = o }
]]

describe("policy attacks", function()
  local origin, proxy, auth

  lazy_setup(function()
    auth = assert(t.origin({ ["/check"] = function(req)
      local a = req:header("authorization")
      if a == "good" then return { status = 200, body = "", headers = { ["X-User"] = "alice" } } end
      return { status = 403, body = "denied\n" }
    end, ["/tenant"] = function(req)
      -- tenant t1 is public (no Authorization needed); t2 is not
      if req:header("x-tenant") == "t1" then return { status = 200, body = "", headers = { ["X-User"] = "t1-guest" } } end
      return { status = 403, body = "denied\n" }
    end }))
    origin = helpers.origin({ name = "o" })
    proxy = helpers.proxy(CONF, { dir = dir, vars = { origin = origin.addr, auth = auth:url(""):gsub("/$", "") } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
    t.stop_all()
  end)

  local function get(path, headers)
    return assert(proxy:request({ path = path, headers = headers }))
  end

  local function log_with(path)
    local found
    helpers.wait_until(function()
      for l in helpers.lines(helpers.read_file(dir .. "/access.log") or "") do
        if l:find('"path":"' .. path, 1, true) then found = helpers.decode_json(l) end
      end
      return found
    end, 3)
    return found
  end

  local function no_hook_error()
    local err = proxy:stderr()
    assert.falsy(err:find("hook failed", 1, true), err)
  end

  describe("jwt", function()
    -- before: the policy called :match on the list of two values, a hook error: 500
    it("two Authorization headers (a valid token and another): 401 invalid_token, not a hook error", function()
      local good = hs256("k", '{"sub":"alice"}')
      assert.equal(200, get("/jwt/one", { Authorization = "Bearer " .. good }).status)
      for i, hs in ipairs {
        { { "Authorization", "Bearer " .. good }, { "Authorization", "Bearer x.y.z" } },
        { { "Authorization", "Bearer x.y.z" }, { "Authorization", "Bearer " .. good } },
        { { "Authorization", "Bearer " .. good }, { "Authorization", "Bearer " .. good } },
      } do
        local res = get("/jwt/two" .. i, hs)
        assert.equal(401, res.status, res.body)
        assert.truthy(res.h["www-authenticate"]:find('Bearer', 1, true))
      end
      assert.equal(0, origin:count_path("/jwt/two1") + origin:count_path("/jwt/two2") + origin:count_path("/jwt/two3"))
      no_hook_error()
    end)

    -- before: find() on the list of two values, a hook error: 500
    it("header = \"X-Token\" sent twice: 401, not a hook error", function()
      local good = hs256("k", '{"sub":"alice"}')
      assert.equal(200, get("/jwth/one", { ["X-Token"] = good }).status)
      local res = get("/jwth/two", { { "X-Token", good }, { "X-Token", good } })
      assert.equal(401, res.status, res.body)
      no_hook_error()
    end)

    -- before: ctx.consumer was set but the access log had no consumer field for jwt
    it("the consumer claim is the access log's consumer, as with key_auth and basic_auth", function()
      local res = get("/jwt/logged", { Authorization = "Bearer " .. hs256("k", '{"sub":"carol"}') })
      assert.equal(200, res.status)
      local line = log_with("/jwt/logged")
      assert.equal("carol", line and line.consumer)
    end)

    -- before: accepted, with "a\r\nX-Evil: 1" as the consumer name (CR/LF in what later
    -- policies put in headers and logs; NUL cut the access log's copy short)
    it("a consumer claim with control characters or over 256 bytes: 401 malformed claims", function()
      for i, sub in ipairs { [["a\r\nX-Evil: 1"]], [["a\u0000b"]], '"' .. ("x"):rep(257) .. '"' } do
        local res = get("/jwt/bad-sub" .. i, { Authorization = "Bearer " .. hs256("k", '{"sub":' .. sub .. '}') })
        assert.equal(401, res.status, sub)
        assert.truthy(res.h["www-authenticate"]:find("malformed claims", 1, true))
      end
      assert.equal(200, get("/jwt/sub-256", { Authorization = "Bearer " .. hs256("k", '{"sub":"' .. ("x"):rep(256) .. '"}') }).status)
      assert.equal(200, get("/jwt/sub-num", { Authorization = "Bearer " .. hs256("k", '{"sub":42}') }).status)
      no_hook_error()
    end)
  end)

  describe("headers", function()
    -- before: the rewrite's result went upstream whatever its size: 200 copies of a
    -- 100-byte capture made a 20 KB request line (a client's 8 KB URI, 1.6 MB)
    it("a rewrite whose result is over limits.uri_size (8192) is refused 414, not sent upstream", function()
      local res = get("/amp/" .. ("x"):rep(100))
      assert.equal(414, res.status, res.body:sub(1, 200))
      assert.equal(0, origin:count_path("/big/" .. ("x"):rep(20000)))
      res = get("/amp/ab")
      assert.equal(200, res.status)
      assert.equal("/big/" .. ("ab"):rep(200), helpers.decode_json(res.body).path)
      local err = proxy:stderr()
      assert.truthy(err:find("limits.uri_size", 1, true), err)
    end)
  end)

  describe("cors", function()
    -- before: "null" (the opaque origin of sandboxed iframes, data: and file: pages,
    -- which any site can produce) got Access-Control-Allow-Origin: null with
    -- Access-Control-Allow-Credentials: true: any page could read credentialed answers
    it("origins = { \"*\" } with credentials: the origin \"null\" is not allowed (actual request and preflight)", function()
      local res = get("/cors/x", { Origin = "null" })
      assert.equal(200, res.status)
      assert.is_nil(res.h["access-control-allow-origin"])
      assert.is_nil(res.h["access-control-allow-credentials"])
      res = assert(proxy:request({ method = "OPTIONS", path = "/cors/x",
                                   headers = { Origin = "null", ["Access-Control-Request-Method"] = "GET" } }))
      assert.equal(403, res.status)
      assert.is_nil(res.h["access-control-allow-origin"])
      -- a real origin is still echoed with credentials, as documented
      res = get("/cors/y", { Origin = "https://app.example" })
      assert.equal("https://app.example", res.h["access-control-allow-origin"])
      assert.equal("true", res.h["access-control-allow-credentials"])
    end)
  end)

  describe("forward_auth", function()
    -- before: the cache key concatenated the list of values, a hook error: 500
    it("ttl > 0 and the forwarded header sent twice: the service is asked (both values), no hook error", function()
      auth:reset()
      local res = get("/fa/dup", { { "Authorization", "good" }, { "Authorization", "bad" } })
      assert.equal(403, res.status, res.body)
      assert.equal(1, auth:count())
      -- the two values are not the single one: a positive answer for "good" is not theirs
      assert.equal(200, get("/fa/single", { Authorization = "good" }).status)
      assert.equal(2, auth:count())
      res = get("/fa/dup2", { { "Authorization", "good" }, { "Authorization", "bad" } })
      assert.equal(403, res.status, res.body)
      assert.equal(3, auth:count())
      no_hook_error()
    end)

    -- before: the key was built from #vals, and a list whose first two headers are absent
    -- has length 0: every request without Authorization shared one cache entry, so
    -- tenant t2 got tenant t1's positive answer and its X-User
    it("ttl > 0, the first forwarded headers absent: the last one still tells cached answers apart", function()
      auth:reset()
      local res = get("/fa2/t1", { ["X-Tenant"] = "t1" })
      assert.equal(200, res.status)
      assert.equal(1, auth:count())
      res = get("/fa2/t2", { ["X-Tenant"] = "t2" })
      assert.equal(403, res.status, res.body)
      assert.equal(2, auth:count())
      assert.equal(0, origin:count_path("/fa2/t2"))
    end)
  end)
end)

-- Config values that used to load and then made a policy silently useless (every
-- request refused, or a key ignored): each is now an error naming the file and line.
describe("policy attacks: hostile config values", function()
  local cases = {
    -- before: loaded; the header was never found, every request 401
    { 'mg.policy.jwt { secret = "k", header = "bad header" }', "mg.policy.jwt: 'header' must be a header name" },
    { 'mg.policy.jwt { secret = "k", header = "" }', "mg.policy.jwt: 'header' must be a header name" },
    { 'mg.policy.jwt { secret = "k", query = "" }', "mg.policy.jwt: 'query' must be a query argument name" },
    -- before: loaded with an empty set: every token "audience not accepted"
    { 'mg.policy.jwt { secret = "k", audience = { api = true } }', "mg.policy.jwt: 'audience' must be a string or a list of strings" },
    { 'mg.policy.jwt { secret = "k", issuer = { x = "https://idp" } }', "mg.policy.jwt: 'issuer' must be a string or a list of strings" },
    -- before: loaded; no token ever had a consumer
    { 'mg.policy.jwt { secret = "k", consumer_claim = "" }', "mg.policy.jwt: 'consumer_claim' must be a claim name" },
    -- before: loaded; every token with an unknown kid fetched the JWKS (no bound at all)
    { 'mg.policy.jwt { jwks_url = "http://127.0.0.1:1/", jwks_min_refresh = 0 }', "mg.policy.jwt: 'jwks_min_refresh' out of range (0)" },
    -- before: loaded; the named entry was ignored (nothing forwarded, one cache entry for all)
    { 'mg.policy.forward_auth { url = "http://127.0.0.1:1/", headers = { auth = "Authorization" } }',
      "mg.policy.forward_auth: 'headers' must be a list of header names" },
    -- before: loaded; positive answers kept for good, and a cache never emptied
    { 'mg.policy.forward_auth { url = "http://127.0.0.1:1/", ttl = 1/0 }', "mg.policy.forward_auth: 'ttl' out of range (inf)" },
    { 'mg.policy.forward_auth { url = "http://127.0.0.1:1/", cache_size = 1/0 }', "mg.policy.forward_auth: 'cache_size' out of range (inf)" },
    { 'mg.policy.forward_auth { url = "http://127.0.0.1:1/", max_body = 0.5 }', "mg.policy.forward_auth: 'max_body' must be a whole number" },
    -- before: loaded; every request 403
    { 'mg.policy.ip_rules { allow = {} }', "mg.policy.ip_rules: 'allow' is empty" },
  }
  helpers.use_error_cases(it, cases)
end)

-- limit_conn = 1: whatever way a request ends, its slot comes back (the next
-- request of the key gets through, none is refused 503)
describe("policy attacks: limit_conn slots", function()
  local proxy, origin
  local CONF2 = [[
local mg = require "moongate"
mg.config { workers = 1 }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
local dead = mg.upstream "dead" { servers = { "127.0.0.1:${closed}" } }
local lc = mg.policy.limit_conn { limit = 1, key = "header:X-K" }
local boom = mg.policy.new { name = "boom", request = function(self, req) error("boom") end }
local no = mg.policy.new { name = "no", request = function(self, req) req:respond(403, "no\n") end }
mg.route { path = "/err/", upstream = o, use = { lc, boom } }
mg.route { path = "/refused/", upstream = o, use = { lc, no } }
mg.route { path = "/dead/", upstream = dead, use = { lc } }
mg.route { path = "/own/", respond = function() return 200, "own\n" end, use = { lc } }
mg.route { path = "/ok/", upstream = o, use = { lc } }
mg.route { path = "/", upstream = o }
]]

  lazy_setup(function()
    origin = helpers.origin({ name = "o2" })
    proxy = helpers.proxy(CONF2, { vars = { origin = origin.addr, closed = helpers.free_port() } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("after a hook error (500), a later policy's refusal, an upstream that refuses connections (502), an own answer", function()
    for _, c in ipairs { { "/err/x", 500 }, { "/refused/x", 403 }, { "/dead/x", 502 }, { "/own/x", 200 } } do
      for i = 1, 3 do
        local res = assert(proxy:request({ path = c[1], headers = { ["X-K"] = "k1" } }))
        assert.equal(c[2], res.status, c[1] .. " #" .. i .. ": " .. res.body)
      end
      local res = assert(proxy:request({ path = "/ok/x", headers = { ["X-K"] = "k1" } }))
      assert.equal(200, res.status, "after " .. c[1])
    end
  end)
end)

-- basic_auth, user enumeration by time: an unknown user is checked against a decoy
-- hash so that it costs what a known one does. Before: the decoy was whichever hash
-- pairs() gave first, here a cheap SHA-512 crypt one, while the one bcrypt user
-- (cost 12) took ~100x longer to refuse: a slow 401 meant "this user exists".
describe("policy attacks: basic_auth timing", function()
  local proxy
  local SLOW = "$2b$12$e7vcNGrCe/z1x8VpRP4k7OzbnVGxBNIZZ3AxlXuixA8Uakcknei3C" -- "pw", cost 12
  local d = helpers.tmpdir()

  lazy_setup(function()
    local lines = {}
    for i = 1, 20 do
      local h = io.popen("openssl passwd -6 -salt salt" .. i .. " pw" .. i):read("*l")
      lines[#lines + 1] = "user" .. i .. ":" .. h
    end
    lines[#lines + 1] = "slow:" .. SLOW
    helpers.write_file(d .. "/htpasswd", table.concat(lines, "\n") .. "\n")
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1 }
mg.listen { "127.0.0.1:${port}" }
mg.route { path = "/", respond = function() return 200, "in\n" end,
           use = { mg.policy.basic_auth { file = "htpasswd", cache_ttl = 0 } } }
]], { dir = d })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  local function took(user, pw)
    local t0 = socket.gettime()
    local res = assert(proxy:request({ path = "/", headers = { Authorization = "Basic " .. base64(user .. ":" .. pw) } }))
    return socket.gettime() - t0, res.status
  end

  it("an unknown user's 401 takes as long as a wrong password of the slowest (bcrypt) user", function()
    assert.equal(200, select(2, took("slow", "pw")))
    assert.equal(200, select(2, took("user3", "pw3")))
    local known, unknown = math.huge, math.huge
    for _ = 1, 3 do -- the fastest of three: the machine's other load only adds time
      local k, ks = took("slow", "wrong")
      local u, us = took("nobody", "wrong")
      assert.equal(401, ks)
      assert.equal(401, us)
      known, unknown = math.min(known, k), math.min(unknown, u)
    end
    assert.truthy(unknown > known / 3, ("unknown user %.4fs, known bcrypt user %.4fs"):format(unknown, known))
  end)
end)

-- limit_conn across a reload: a request in flight in the old generation gives its
-- slot back when it ends, once (the count neither leaks nor goes below zero)
describe("policy attacks: limit_conn across a reload", function()
  local proxy, origin
  local function conf(gen)
    return ([[
local mg = require "moongate"
mg.config { workers = 1 }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" }, timeouts = { read = 30 } }
mg.route { path = "/gen", respond = { status = 200, body = "GEN\n" } }
mg.route { path = "/", upstream = o, use = { mg.policy.limit_conn { limit = 1, key = "header:X-K" } } }
]]):gsub("GEN", gen)
  end

  lazy_setup(function()
    origin = helpers.origin({ name = "o3" })
    proxy = helpers.proxy(conf("one"), { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  local function send(path)
    local c = proxy:connect()
    assert(c:send(helpers.request_bytes({ path = path, headers = { ["X-K"] = "r" } })))
    return c
  end

  it("a slot held through a reload comes back once; the limit still holds after", function()
    local held = send("/slow-head/1.5")
    socket.sleep(0.3)
    assert.equal(503, assert(proxy:request({ path = "/x", headers = { ["X-K"] = "r" } })).status)
    proxy:reload(helpers.expand(conf("two"), { port = proxy.port, origin = origin.addr }), function()
      local res = proxy:request({ path = "/gen" })
      return res and res.body == "two\n"
    end)
    assert.equal(200, assert(held:final_response()).status)
    held:close()
    -- slot free again: one slow request holds it, a second is refused, exactly once each
    local a = send("/slow-head/1")
    socket.sleep(0.3)
    local b = assert(proxy:request({ path = "/y", headers = { ["X-K"] = "r" } }))
    assert.equal(503, b.status, "the limit holds after the reload")
    assert.equal(200, assert(a:final_response()).status)
    a:close()
    assert.equal(200, assert(proxy:request({ path = "/z", headers = { ["X-K"] = "r" } })).status)
  end)
end)
