-- Issue 14: the response phase of the policies on answers moongate writes itself
-- (docs/policies.md "Moongate's own answers"), through the real binary: a policy's
-- refusal (rate_limit's 429, key_auth's 401, a user policy's 403) gets the response
-- phases of the policies before it in the chain (cors' Access-Control-Allow-Origin
-- and Vary, headers' security preset), and the refusing policy's own; policies
-- after it do not run. A `respond` route (table or function) and a route's request
-- hook get the whole chain's; a global mg.on request hook (before every policy)
-- gets none. A preflight is still cors' own answer; a phase that raises on an own
-- answer is logged and the answer goes out with its status.
local helpers = require "spec.helpers"

local APP = "https://app.example"

-- all values of a header, in the order sent, joined with ","
local function values(res, name)
  local t = {}
  for _, kv in ipairs(res.headers) do
    if kv[1]:lower() == name then t[#t + 1] = kv[2] end
  end
  return table.concat(t, ",")
end

local CONF = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = "access.log" }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
local cors = mg.policy.cors { origins = { "https://app.example" } }

mg.route { path = "/rl/", upstream = o, use = {
  cors, mg.policy.rate_limit { limit = 1, window = 60, algorithm = "fixed" } } }
mg.route { path = "/rl-first/", upstream = o, use = {
  mg.policy.headers { response = { set = { ["X-Before"] = "1" } } },
  mg.policy.rate_limit { limit = 1, window = 60, algorithm = "fixed" }, cors } }
mg.route { path = "/two-rl/", upstream = o, use = {
  mg.policy.rate_limit { limit = 100, window = 60, name = "wide" },
  mg.policy.rate_limit { limit = 1, window = 60, algorithm = "fixed", name = "narrow" } } }
mg.route { path = "/pf/", upstream = o, use = {
  mg.policy.headers { preset = "security" }, cors, mg.policy.rate_limit { limit = 1, window = 60, algorithm = "fixed" } } }
mg.route { path = "/key/", upstream = o, use = {
  mg.policy.headers { preset = "security", response = { set = { ["X-Env"] = "prod" }, remove = { "X-Drop" } } },
  mg.policy.key_auth { header = "apikey", keys = { ["k-123"] = "alice" } } } }
]]

describe("policies on moongate's own answers: refusals", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "o" })
    proxy = helpers.proxy(CONF, { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("a 429 from rate_limit carries Access-Control-Allow-Origin and Vary: Origin from a cors policy before it", function()
    local first = assert(proxy:request({ path = "/rl/a", headers = { Origin = APP } }))
    assert.equal(200, first.status)
    assert.equal(APP, first.h["access-control-allow-origin"])
    local res = assert(proxy:request({ path = "/rl/a", headers = { Origin = APP } }))
    assert.equal(429, res.status)
    assert.equal(APP, res.h["access-control-allow-origin"])
    assert.equal("Origin", res.h["vary"])
    assert.truthy(tonumber(res.h["retry-after"]))
    assert.equal('"default";q=1;w=60', res.h["ratelimit-policy"])
    assert.truthy(res.h["ratelimit"]:find(";r=0;", 1, true), res.h["ratelimit"])
    assert.equal("Too Many Requests\n", res.body)
    -- still the refusing policy's in the access log
    local line
    helpers.wait_until(function()
      for l in helpers.lines(helpers.read_file(proxy.dir .. "/access.log") or "") do
        if l:find('"status":429', 1, true) and l:find('"/rl/a', 1, true) then line = l end
      end
      return line
    end, 3)
    assert.truthy(line and line:find('"policy":"rate_limit"', 1, true), line)
    assert.equal(1, origin:count_path("/rl/a"))
    -- another origin: no ACAO on the 429, but Vary still (caches keep them apart)
    local other = assert(proxy:request({ path = "/rl/a", headers = { Origin = "https://evil.example" } }))
    assert.equal(429, other.status)
    assert.is_nil(other.h["access-control-allow-origin"])
    assert.equal("Origin", other.h["vary"])
  end)

  it("a policy before the refusing one runs on its answer, a cors policy after it does not (chain order)", function()
    assert.equal(200, assert(proxy:request({ path = "/rl-first/a", headers = { Origin = APP } })).status)
    local res = assert(proxy:request({ path = "/rl-first/a", headers = { Origin = APP } }))
    assert.equal(429, res.status)
    assert.equal("1", res.h["x-before"])
    assert.is_nil(res.h["access-control-allow-origin"])
    assert.is_nil(res.h["vary"])
  end)

  it("a refusing rate_limit gets the RateLimit lines of one before it that let the request through", function()
    assert.equal(200, assert(proxy:request({ path = "/two-rl/a" })).status)
    local res = assert(proxy:request({ path = "/two-rl/a" }))
    assert.equal(429, res.status)
    -- the refusal's own lines first, then the earlier policy's response phase
    assert.equal('"narrow";q=1;w=60,"wide";q=100;w=60', values(res, "ratelimit-policy"))
    local rl = values(res, "ratelimit")
    assert.truthy(rl:find('^"narrow";r=0;t=%d+,"wide";r=98;t=%d+$'), rl)
  end)

  it("a 401 from key_auth carries the headers policy's security preset and response transforms", function()
    local res = assert(proxy:request({ path = "/key/a" }))
    assert.equal(401, res.status)
    assert.equal('ApiKey realm="moongate"', res.h["www-authenticate"])
    assert.equal("max-age=31536000; includeSubDomains", res.h["strict-transport-security"])
    assert.equal("nosniff", res.h["x-content-type-options"])
    assert.equal("strict-origin-when-cross-origin", res.h["referrer-policy"])
    assert.equal("DENY", res.h["x-frame-options"])
    assert.equal("prod", res.h["x-env"])
    assert.equal(0, origin:count_path("/key/a"))
    -- and on the upstream's answer, as before
    local ok = assert(proxy:request({ path = "/key/b", headers = { apikey = "k-123" } }))
    assert.equal(200, ok.status)
    assert.equal("DENY", ok.h["x-frame-options"])
    assert.equal("prod", ok.h["x-env"])
  end)

  it("a preflight is still answered by cors, its headers unchanged, a policy before it adding its own", function()
    local res = assert(proxy:request({ method = "OPTIONS", path = "/pf/a",
      headers = { Origin = APP, ["Access-Control-Request-Method"] = "PUT" } }))
    assert.equal(204, res.status)
    assert.equal(APP, res.h["access-control-allow-origin"])
    assert.equal("GET, HEAD, POST, PUT, PATCH, DELETE", res.h["access-control-allow-methods"])
    assert.equal("Origin, Access-Control-Request-Method, Access-Control-Request-Headers", values(res, "vary"))
    assert.equal(APP, values(res, "access-control-allow-origin")) -- once
    assert.equal("DENY", res.h["x-frame-options"]) -- the headers policy before cors
    assert.equal(0, origin:count_path("/pf/a"))
    -- not counted: the next actual request still gets through
    assert.equal(200, assert(proxy:request({ path = "/pf/a", headers = { Origin = APP } })).status)
  end)
end)

local CONF2 = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = "access.log" }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }

local function tag(v)
  return mg.policy.new { name = "tag_" .. v,
    response = function(self, req, res) res:add_header("X-Order", v) end }
end
-- refuses with X-Deny; has a response phase of its own
local deny = mg.policy.new { name = "deny",
  request = function(self, req)
    if req:header("x-deny") then req:respond(403, "denied\n", { ["X-By"] = "deny" }) end
  end,
  response = function(self, req, res) res:add_header("X-Order", "deny:" .. res.status) end }
-- its response phase raises on moongate's own answers
local boom = mg.policy.new { name = "boom",
  response = function(self, req, res)
    if res:header("x-by") then error("boom on own answer") end
    res:add_header("X-Order", "boom")
  end }

-- uses the res API on the answer of the policy after it
local probe = mg.policy.new { name = "probe",
  response = function(self, req, res)
    local out = { tostring(res.status) }
    local multi = res:header("x-multi")
    out[#out + 1] = type(multi) == "table" and table.concat(multi, "+") or tostring(multi)
    out[#out + 1] = tostring(#res:headers()["x-multi"])
    res:set_header("X-Multi", { "c", "d" })
    res:del_header("x-gone")
    res:set_status(409)
    out[#out + 1] = tostring((pcall(res.set_header, res, "Content-Length", "1")))
    out[#out + 1] = tostring((pcall(res.add_header, res, "X-Bad", "a\r\nb")))
    out[#out + 1] = tostring(res:compress(false))
    res:set_header("X-Probe", table.concat(out, " "))
  end }
local answer = mg.policy.new { name = "answer",
  request = function(self, req) req:respond(418, "tea\n", { ["X-Multi"] = { "a", "b" }, ["X-Gone"] = "1" }) end }

-- waits in its response phase
local sleepy = mg.policy.new { name = "sleepy",
  response = function(self, req, res) mg.sleep(1); res:add_header("X-Slept", "1") end }

mg.on("request", function(req)
  if req.path == "/early" then req:respond(503, "maintenance\n") end
end)
mg.use(mg.policy.cors { origins = { "https://app.example" } }, tag("g1"))

mg.route { path = "/static", respond = { status = 200, body = "static\n", headers = { ["X-Own"] = "1" } } }
mg.route { path = "/fn", respond = function(req) return 201, "fn\n", { ["X-Own"] = "2" } end }
mg.route { path = "/hook/", upstream = o, use = { tag("r1") }, on = {
  request = function(req) if req:header("x-stop") then req:respond(451, "hook\n") end end,
  response = function(req, res) res:add_header("X-Order", "on.response") end } }
mg.route { path = "/order/", upstream = o, use = { tag("r1"), deny, tag("r2") } }
mg.route { path = "/boom/", upstream = o, use = { boom, tag("after"), deny } }
mg.route { path = "/early", upstream = o }
mg.route { path = "/sleepy/", upstream = o, use = { sleepy, deny } }
mg.route { path = "/probe", upstream = o, use = { probe, answer } }
]]

describe("policies on moongate's own answers: respond routes, hooks, order, errors", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "o" })
    proxy = helpers.proxy(CONF2, { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("a respond = { ... } route gets the global cors headers", function()
    local res = assert(proxy:request({ path = "/static", headers = { Origin = APP } }))
    assert.equal(200, res.status)
    assert.equal("static\n", res.body)
    assert.equal("1", res.h["x-own"])
    assert.equal(APP, res.h["access-control-allow-origin"])
    assert.equal("Origin", res.h["vary"])
    assert.equal("g1", values(res, "x-order"))
    assert.equal("7", res.h["content-length"])
  end)

  it("a respond function route gets them too", function()
    local res = assert(proxy:request({ path = "/fn", headers = { Origin = APP } }))
    assert.equal(201, res.status)
    assert.equal("fn\n", res.body)
    assert.equal("2", res.h["x-own"])
    assert.equal(APP, res.h["access-control-allow-origin"])
    assert.equal("g1", values(res, "x-order"))
  end)

  it("a route's request hook answering gets the chain's response phases (not on.response); a global mg.on hook's none",
    function()
    local res = assert(proxy:request({ path = "/hook/a", headers = { Origin = APP, ["X-Stop"] = "1" } }))
    assert.equal(451, res.status)
    assert.equal(APP, res.h["access-control-allow-origin"])
    assert.equal("g1,r1", values(res, "x-order"))
    assert.equal(0, origin:count_path("/hook/a"))
    -- through the upstream: the same policies, then the route's on.response
    local up = assert(proxy:request({ path = "/hook/b", headers = { Origin = APP } }))
    assert.equal(200, up.status)
    assert.equal("g1,r1,on.response", values(up, "x-order"))
    -- a global mg.on request hook answers before any policy ran: no policy's response phase
    local early = assert(proxy:request({ path = "/early", headers = { Origin = APP } }))
    assert.equal(503, early.status)
    assert.equal("maintenance\n", early.body)
    assert.is_nil(early.h["access-control-allow-origin"])
    assert.is_nil(early.h["x-order"])
  end)

  it("runs the policies before the refusing one and its own, in chain order; not those after it", function()
    local res = assert(proxy:request({ path = "/order/a", headers = { ["X-Deny"] = "1" } }))
    assert.equal(403, res.status)
    assert.equal("deny", res.h["x-by"])
    assert.equal("g1,r1,deny:403", values(res, "x-order"))
    -- the upstream's answer: every policy, same order
    local up = assert(proxy:request({ path = "/order/b" }))
    assert.equal(200, up.status)
    assert.equal("g1,r1,deny:200,r2", values(up, "x-order"))
  end)

  it("gives the phase a res with the methods of an upstream answer's", function()
    local res = assert(proxy:request({ path = "/probe" }))
    assert.equal(409, res.status)
    assert.equal("tea\n", res.body)
    assert.equal("418 a+b 2 false false true", res.h["x-probe"])
    assert.equal("c,d", values(res, "x-multi"))
    assert.is_nil(res.h["x-gone"])
    assert.equal("4", res.h["content-length"])
    assert.equal("g1", values(res, "x-order"))
  end)

  it("a response phase may wait on an own answer (the request's coroutine waits, others are served)", function()
    -- one worker: while the first request's response phase sleeps (1 s), a second
    -- request on another connection is answered, and the first is not yet
    local c = helpers.connect(proxy.port)
    assert(c:send("GET /sleepy/a HTTP/1.1\r\nHost: x\r\nX-Deny: 1\r\n\r\n"))
    local other = assert(proxy:request({ path = "/order/b" }))
    assert.equal(200, other.status)
    local early, why = c:response({ timeout = 0.05 })
    assert.is_nil(early)
    assert.equal("timeout", why)
    local res = assert(c:response({ timeout = 5 }))
    c:close()
    assert.equal(403, res.status)
    assert.equal("1", res.h["x-slept"])
    assert.equal("g1,deny:403", values(res, "x-order"))
  end)

  it("a response phase raising on an own answer is logged; the answer goes out with its status, the rest run", function()
    local res = assert(proxy:request({ path = "/boom/a", headers = { ["X-Deny"] = "1" } }))
    assert.equal(403, res.status)
    assert.equal("denied\n", res.body)
    assert.equal("g1,after,deny:403", values(res, "x-order"))
    assert.truthy(helpers.wait_until(function()
      local err = proxy:stderr() or ""
      return err:find("policy boom: response phase failed on moongate's own 403 answer (sent all the same)", 1, true)
        and err:find("boom on own answer", 1, true)
    end, 3), proxy:stderr())
    -- the worker goes on
    local up = assert(proxy:request({ path = "/boom/b" }))
    assert.equal(200, up.status)
    assert.equal("g1,boom,after,deny:200", values(up, "x-order"))
  end)
end)
