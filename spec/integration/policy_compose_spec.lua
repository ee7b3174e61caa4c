-- Issue 14, composition: mg.use(...) and a route's `use = { ... }` through the
-- real binary. Policies here are user policies (mg.policy.new), built with the
-- interface every mg.policy.NAME follows (docs/policies.md): order of global
-- policies, route policies and the route's own hooks in the request and response
-- phases, a refusal that stops the chain and names the policy in the access log,
-- a policy that waits, config errors with file:line, and `moongate -T`.
local helpers = require "spec.helpers"

local CONF = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = "access.log" }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }

-- appends its tag to X-Order on the way in and on the way out
local function tag(v)
  return mg.policy.new {
    name = "tag_" .. v,
    describe = function(self) return "tag=" .. v end,
    request = function(self, req) req:add_header("X-Order", v) end,
    response = function(self, req, res) res:add_header("X-Order", v) end,
  }
end
-- refuses when the request has X-Deny
local deny = mg.policy.new {
  name = "deny",
  request = function(self, req)
    if req:header("x-deny") then req:respond(403, "denied\n", { ["x-by"] = "deny" }) end
  end,
}
-- waits 50 ms, then tags
local slow = mg.policy.new {
  name = "slow",
  request = function(self, req)
    mg.sleep(0.05)
    req:add_header("X-Order", "slow")
  end,
}
-- logs through req.ctx what it saw (read back by a respond route)
local seen = {}
local logger = mg.policy.new {
  name = "logger",
  request = function(self, req) req.ctx.by = "logger" end,
  log = function(self, req) seen[#seen + 1] = req.path .. ":" .. tostring(req.ctx.by) end,
}

mg.use(tag("g1"))
mg.use(tag("g2"), logger)

mg.route { path = "/order/", upstream = o, use = { tag("r1"), tag("r2") }, on = {
  request = function(req) req:add_header("X-Order", "hook") end,
  response = function(req, res) res:add_header("X-Order", "hook") end,
} }
mg.route { path = "/deny/", upstream = o, use = { tag("r1"), deny, tag("r3") }, on = {
  request = function(req) req:add_header("X-Order", "hook") end,
} }
mg.route { path = "/slow/", upstream = o, use = { tag("r1"), slow, tag("r2") } }
mg.route { path = "/seen", respond = function(req) return 200, table.concat(seen, ","), {} end }
]]

describe("policy composition", function()
  local origin, proxy, log_path
  local seen = 0

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    proxy = helpers.proxy(CONF, { vars = { origin = origin.addr } })
    log_path = proxy.dir .. "/access.log"
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  -- the access log entries written since the last call, waiting for n of them
  local function new_entries(n)
    local lines
    helpers.wait_until(function()
      lines = {}
      for l in helpers.lines(helpers.read_file(log_path) or "") do lines[#lines + 1] = l end
      return #lines >= seen + n
    end, 2, 0.05)
    local out = {}
    for i = seen + 1, #lines do out[#out + 1] = helpers.decode_json(lines[i]) end
    seen = #lines
    return out
  end

  local function values(res, name)
    local t = {}
    for _, kv in ipairs(res.headers) do
      if kv[1]:lower() == name then t[#t + 1] = kv[2] end
    end
    return table.concat(t, ",")
  end

  it("runs global policies (mg.use order, across calls), then the route's, then its hook, in the request phase",
    function()
      local res = assert(proxy:request({ path = "/order/x" }))
      local doc = helpers.echo(res)
      assert.same({ "g1", "g2", "r1", "r2", "hook" }, helpers.echo_headers(doc, "x-order"))
      local e = new_entries(1)[1]
      assert.equal(200, e.status)
      assert.is_nil(e.policy) -- no policy answered
    end)

  it("runs the response phase in the same order", function()
    local res = assert(proxy:request({ path = "/order/y" }))
    assert.equal(200, res.status)
    assert.equal("g1,g2,r1,r2,hook", values(res, "x-order"))
    new_entries(1)
  end)

  it("stops the chain at a policy that answers and names it in the access log", function()
    local res = assert(proxy:request({ path = "/deny/x", headers = { { "X-Deny", "1" } } }))
    assert.equal(403, res.status)
    assert.equal("denied\n", res.body)
    assert.equal("deny", values(res, "x-by"))
    local e = new_entries(1)[1]
    assert.equal(403, e.status)
    assert.equal("deny", e.policy)
    assert.equal(helpers.null, e.upstream) -- the origin was not asked
    -- without X-Deny the same chain goes through, r3 and the hook included
    local doc = helpers.echo(assert(proxy:request({ path = "/deny/y" })))
    assert.same({ "g1", "g2", "r1", "r3", "hook" }, helpers.echo_headers(doc, "x-order"))
    assert.is_nil(new_entries(1)[1].policy)
  end)

  it("lets a policy wait (mg.sleep) and goes on with the chain after it", function()
    local t0 = helpers.now()
    local doc = helpers.echo(assert(proxy:request({ path = "/slow/x" })))
    assert.is_true(helpers.now() - t0 >= 0.045)
    assert.same({ "g1", "g2", "r1", "slow", "r2" }, helpers.echo_headers(doc, "x-order"))
    new_entries(1)
  end)

  it("runs the log phase with the request's ctx", function()
    local res = assert(proxy:request({ path = "/seen" }))
    assert.equal(200, res.status)
    -- every earlier request, in order, saw ctx.by set by the same policy's request phase
    assert.equal("/order/x:logger,/order/y:logger,/deny/x:logger,/deny/y:logger,/slow/x:logger", res.body)
    new_entries(1)
  end)
end)

describe("policy config errors", function()
  local function check(body)
    local path = helpers.write_config(helpers.tmpdir(), 'local mg = require "moongate"\n'
      .. 'mg.listen { "127.0.0.1:1" }\n' .. body)
    local out, rc = helpers.moongate({ "-t", "-c", path })
    return out, rc, path
  end

  it("refuses a use element that is not a policy, naming file:line", function()
    local out, rc, path = check('mg.route { path = "/", respond = { status = 200 },\n'
      .. '  use = { { name = "fake", request = function() end } } }\n')
    assert.equal(1, rc)
    assert.truthy(out:find(path .. ":3: mg.route: use[1] is not a policy (a table;", 1, true), out)
  end)

  it("refuses mg.use of something else, naming file:line", function()
    local out, rc, path = check('mg.use(function() end)\nmg.route { respond = { status = 200 } }\n')
    assert.equal(1, rc)
    assert.truthy(out:find(path .. ":3: mg.use: argument 1 is not a policy (a function;", 1, true), out)
  end)

  it("refuses an unknown mg.policy.NAME, naming file:line", function()
    local out, rc, path = check('mg.route { respond = { status = 200 },\n'
      .. '  use = { mg.policy.no_such_policy { } } }\n')
    assert.equal(1, rc)
    assert.truthy(out:find(path .. ":4: mg.policy: unknown policy 'no_such_policy'", 1, true), out)
  end)

  it("refuses a user policy without a phase and a single policy given as use", function()
    local out, rc, path = check('mg.policy.new { name = "x" }\n')
    assert.equal(1, rc)
    assert.truthy(out:find(path .. ":3: mg.policy.new: policy 'x' has no request, response or log function",
      1, true), out)
    out, rc, path = check('local p = mg.policy.new { name = "x", log = function() end }\n'
      .. 'mg.route { respond = { status = 200 }, use = p }\n')
    assert.equal(1, rc)
    assert.truthy(out:find(path .. ":4: mg.route: 'use' takes a list: use = { mg.policy.x { ... } }", 1, true), out)
  end)
end)

describe("moongate -T", function()
  it("prints every route with its policy chain and hooks, then exits 0", function()
    local dir = helpers.tmpdir()
    local path = helpers.write_config(dir, [[
local mg = require "moongate"
mg.listen { "127.0.0.1:1" }
mg.listen { "127.0.0.1:2", name = "admin" }
local app = mg.upstream "app" { servers = { "127.0.0.1:3" } }
local function p(name, d)
  return mg.policy.new { name = name, describe = function() return d end, request = function() end }
end
mg.on("request", function() end)
mg.use(p("g", "global one"))
mg.route { host = "api.test", path = "/v1/", methods = { "get", "POST" }, upstream = app,
  use = { p("a", "first"), p("b", "") }, on = { response = function() end, request = function() end } }
mg.route { listener = "admin", path = "/", respond = { status = 204 } }
]])
    for _, flag in ipairs { "-T", "--explain-config" } do
      local out, rc = helpers.moongate({ flag, "-c", path })
      assert.equal(0, rc, out)
      assert.equal(table.concat({
        "config " .. path .. " (routes in the order they are tried)",
        "global hooks (mg.on, before every route's policies): request x1",
        -- in the order routes are tried: a listener's own before the others
        "route 1: listener=admin host=* path=/ methods=* upstream=respond 204 (" .. path .. ":12)",
        "  policy 1: g (global): global one",
        "  hooks: none",
        "route 2: listener=* host=api.test path=/v1/ methods=GET,POST upstream=app (" .. path .. ":10)",
        "  policy 1: g (global): global one",
        "  policy 2: a (route): first",
        "  policy 3: b (route)",
        "  hooks: request, response",
        "",
      }, "\n"), out)
    end
  end)

  it("exits 1 with the config error", function()
    local path = helpers.write_config(helpers.tmpdir(), 'local mg = require "moongate"\n'
      .. 'mg.listen { "127.0.0.1:1" }\nmg.use(42)\n')
    local out, rc = helpers.moongate({ "-T", "-c", path })
    assert.equal(1, rc)
    assert.truthy(out:find("moongate: config error: " .. path .. ":3: mg.use: argument 1 is not a policy", 1, true), out)
  end)
end)
