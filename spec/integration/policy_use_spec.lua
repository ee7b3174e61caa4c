-- Issue 14: the shipped policies through the runner, in the minimal forms the
-- issue fixes: mg.policy.rate_limit { limit, window, key = "ip" } on a route's
-- `use`, mg.policy.ip_rules through mg.use (global): refusals with their status
-- and headers, the access log's `policy` field naming the refusing policy.
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
