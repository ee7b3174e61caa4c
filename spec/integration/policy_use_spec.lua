-- Issue 14: the shipped policies through the runner, in the minimal forms the
-- issue fixes: mg.policy.rate_limit { limit, window, key = "ip" } on a route's
-- `use`, mg.policy.ip_rules through mg.use (global): refusals with their status
-- and headers, the access log's `policy` field naming the refusing policy; and
-- the issue's four fixed minimal forms (rate_limit, key_auth, cors, waf {}) exactly
-- as it writes them.
local helpers = require "spec.helpers"

local CONF = [[
local mg = require "moongate"
mg.config { workers = 2, access_log = "access.log" }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
mg.use(mg.policy.ip_rules { deny = { "127.0.0.2/32" } })
mg.route { path = "/rl/", upstream = o, use = { mg.policy.rate_limit { limit = 3, window = 30, key = "ip" } } }
mg.route { path = "/", upstream = o }
]]

describe("shipped policies through use / mg.use", function()
  local origin, proxy, log_path

  lazy_setup(function()
    origin = helpers.origin({ name = "o" })
    proxy = helpers.proxy(CONF, { vars = { origin = origin.addr } })
    log_path = proxy.dir .. "/access.log"
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  local function log_with(path)
    local found
    helpers.wait_until(function()
      for l in helpers.lines(helpers.read_file(log_path) or "") do
        if l:find('"' .. path, 1, true) then found = l end
      end
      return found
    end, 3)
    return found
  end

  it("rate_limit { limit = 3, window = 30, key = \"ip\" }: 3 through, then 429 with Retry-After and RateLimit headers, logged", function()
    local c = proxy:connect()
    for i = 1, 3 do
      local res = assert(c:request({ path = "/rl/" .. i }))
      assert.equal(200, res.status)
      assert.truthy(res.h["ratelimit-policy"])
    end
    local res = assert(c:request({ path = "/rl/4" }))
    c:close()
    assert.equal(429, res.status)
    assert.truthy(tonumber(res.h["retry-after"]))
    assert.truthy(res.h["ratelimit"])
    assert.equal(3, origin:count_path("/rl/1") + origin:count_path("/rl/2") + origin:count_path("/rl/3"))
    assert.equal(0, origin:count_path("/rl/4"))
    local line = log_with("/rl/4")
    assert.truthy(line and line:find('"policy":"rate_limit"', 1, true), line)
  end)

  it("ip_rules through mg.use refuses a denied address on every route, 403, logged", function()
    local c = helpers.connect(proxy.port, 5, nil, "127.0.0.2")
    local res = assert(c:request({ path = "/plain" }))
    c:close()
    assert.equal(403, res.status)
    assert.equal(0, origin:count_path("/plain"))
    local line = log_with("/plain")
    assert.truthy(line and line:find('"policy":"ip_rules"', 1, true), line)
    -- another address goes through
    local ok = assert(proxy:request({ path = "/plain2" }))
    assert.equal(200, ok.status)
  end)
end)

-- The four minimal forms the issue fixes, each exactly as the issue writes it.
describe("the issue's minimal forms, as written", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "o" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
mg.route { path = "/rl/", upstream = o, use = { mg.policy.rate_limit { limit = 10, window = 1, key = "ip" } } }
mg.route { path = "/key/", upstream = o, use = { mg.policy.key_auth { header = "apikey", keys = { ["k-123"] = "alice" } } } }
mg.route { path = "/cors/", upstream = o, use = { mg.policy.cors { origins = { "https://app.example" } } } }
mg.route { path = "/waf/", upstream = o, use = { mg.policy.waf {} } }
]], { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  local function req(t) return assert(proxy:request(t)) end

  it("rate_limit { limit = 10, window = 1, key = \"ip\" }: the first 10 pass, then 429 with Retry-After", function()
    local statuses, limited = {}, nil
    for i = 1, 25 do
      local res = req({ path = "/rl/" .. i })
      statuses[i] = res.status
      if res.status == 429 and not limited then limited = res end
    end
    for i = 1, 10 do assert.equal(200, statuses[i], table.concat(statuses, " ")) end
    assert.is_table(limited, table.concat(statuses, " "))
    assert.is_truthy(tonumber(limited.h["retry-after"]) >= 1)
  end)

  it("key_auth { header = \"apikey\", keys = { [\"k-123\"] = \"alice\" } }: 401 without the key, the origin with it", function()
    assert.equal(401, req({ path = "/key/a" }).status)
    assert.equal(401, req({ path = "/key/a", headers = { apikey = "k-124" } }).status)
    local res = req({ path = "/key/a", headers = { apikey = "k-123" } })
    assert.equal(200, res.status)
    assert.equal("o", helpers.echo(res).name)
  end)

  it("cors { origins = { \"https://app.example\" } }: the preflight answered, other origins get no ACAO", function()
    local res = req({ method = "OPTIONS", path = "/cors/a", headers = {
      Origin = "https://app.example", ["Access-Control-Request-Method"] = "PUT" } })
    assert.equal(204, res.status)
    assert.equal("https://app.example", res.h["access-control-allow-origin"])
    res = req({ path = "/cors/a", headers = { Origin = "https://evil.example" } })
    assert.equal(200, res.status)
    assert.is_nil(res.h["access-control-allow-origin"])
  end)

  it("waf {}: 403 on an attack (PL1, blocking), the look-alike through", function()
    assert.equal(403, req({ path = "/waf/?id=1%27%20union%20select%20password%20from%20users--" }).status)
    assert.equal(200, req({ path = "/waf/?q=O%27Brien%20union%20station" }).status)
  end)
end)
