-- Traffic split on a route (docs/config.md "Traffic split"): a weighted list of
-- upstreams followed as one smooth sequence for the whole process (exact counts
-- over two workers), a header rule that takes matching requests before the
-- weights, the choice visible to hooks as req.upstream, the access log naming the
-- chosen upstream's server, and a reload that changes the weights.
local helpers = require "spec.helpers"

local function conf(body, extra) return helpers.workers_conf(body, 2, extra) end

local function clients(proxy, n) return helpers.clients(proxy.port, n) end

-- At least n connections, both workers among them (/_w: a route of WORKER_HOOK
-- outside the split)
local function spread(proxy, n) return helpers.spread_clients(proxy.port, n, "/_w") end

local close_all, tally = helpers.close_all, helpers.tally


-- `count` GETs of <prefix>/echo round the connections: the origins' names in
-- order, and the set of workers (x-worker, set by a response hook) that answered.
local function run(cs, count, headers, prefix)
  local seq, workers = {}, {}
  for i = 1, count do
    local res = assert(cs[(i - 1) % #cs + 1]:request({ path = (prefix or "") .. "/echo?" .. i, headers = headers }))
    seq[i] = helpers.echo(res).name
    if res.h["x-worker"] then workers[res.h["x-worker"]] = true end
  end
  return seq, workers
end

local WORKER_HOOK = [[
mg.on("response", function(req, res) res:set_header("x-worker", tostring(mg.worker_id())) end)
mg.route { path = "/_w", respond = function() return 200, tostring(mg.worker_id()) end }
]]

describe("split: upstream = { { api_v1, weight = 90 }, { api_v2, weight = 10 } }", function()
  local a, b, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    b = helpers.origin({ name = "B" })
    proxy = helpers.proxy(conf([[
local api_v1 = mg.upstream "api_v1" { servers = { "${a}" } }
local api_v2 = mg.upstream "api_v2" { servers = { "${b}" } }
mg.route { path = "/", upstream = { { api_v1, weight = 90 }, { api_v2, weight = 10 } } }
]] .. WORKER_HOOK), { vars = { a = a.addr, b = b.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("sends exactly 90 of 100 requests to api_v1 and 10 to api_v2, one sequence over 2 workers", function()
    local cs = spread(proxy, 8)
    local seq, workers = run(cs, 100)
    close_all(cs)
    assert.same({ A = 90, B = 10 }, tally(seq))
    assert.is_true(workers["0"] and workers["1"], "both workers must have answered")
    -- one process-wide sequence: every run of 10 has its one B at the same place
    local cycle = table.concat(seq, "", 1, 10)
    assert.equal(1, select(2, cycle:gsub("B", "")))
    assert.equal(string.rep(cycle, 10), table.concat(seq))
  end)
end)

describe("split: three upstreams 50/30/20", function()
  local a, b, c, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    b = helpers.origin({ name = "B" })
    c = helpers.origin({ name = "C" })
    proxy = helpers.proxy(conf([[
mg.upstream "one" { servers = { "${a}" } }
mg.upstream "two" { servers = { "${b}" } }
local three = mg.upstream "three" { servers = { "${c}" } }
mg.route { path = "/", upstream = { { "one", weight = 50 }, { "two", weight = 30 }, { three, weight = 20 } } }
]] .. WORKER_HOOK), { vars = { a = a.addr, b = b.addr, c = c.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("sends exactly 50, 30 and 20 of 100 requests", function()
    local cs = spread(proxy, 6)
    local seq, workers = run(cs, 100)
    close_all(cs)
    assert.same({ A = 50, B = 30, C = 20 }, tally(seq))
    assert.is_true(workers["0"] and workers["1"], "both workers must have answered")
  end)
end)

describe("split by header", function()
  local a, b, c, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    b = helpers.origin({ name = "B" })
    c = helpers.origin({ name = "C" })
    proxy = helpers.proxy(conf([[
local v1 = mg.upstream "api_v1" { servers = { "${a}" } }
local v2 = mg.upstream "api_v2" { servers = { "${b}" } }
local v3 = mg.upstream "api_v3" { servers = { "${c}" } }
mg.route { path = "/", upstream = { { v1, weight = 9 }, { v2, weight = 1 } },
           split = { header = "X-Canary", values = { ["1"] = v2, beta = v3 } } }
mg.route { path = "/present", upstream = v1, split = { header = "x-canary", upstream = v3 } }
mg.route { path = "/both", upstream = v1, split = { header = "x-canary", values = { beta = v2 }, upstream = v3 } }
mg.route { path = "/hooks", upstream = { { v1, weight = 1 }, { v2, weight = 1 } },
           split = { header = "x-canary", values = { beta = v3 } }, on = {
  request = function(req) req.ctx.r = tostring(req.upstream) end,
  upstream_request = function(req) req.ctx.u = req.upstream end,
  balance = function(req) req.ctx.b = req.upstream end,
  response = function(req, res)
    res:set_header("x-seen", req.ctx.r .. " " .. req.ctx.u .. " " .. req.ctx.b .. " " .. req.upstream)
  end,
} }
mg.route { path = "/sethdr", upstream = v1, split = { header = "x-canary", values = { beta = v3 } },
           on = { request = function(req) req:set_header("x-canary", "beta") end } }
mg.route { path = "/override", upstream = { { v1, weight = 1 }, { v2, weight = 1 } },
           split = { header = "x-canary", values = { beta = v3 } },
           on = { request = function(req) req:set_upstream("api_v1") end } }
]] .. WORKER_HOOK), { vars = { a = a.addr, b = b.addr, c = c.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("routes every request with a listed value to its upstream; the others follow the weights", function()
    local cs = clients(proxy, 4)
    local ones = run(cs, 20, { ["x-canary"] = "1" })
    local betas = run(cs, 20, { ["X-CANARY"] = "beta" })
    local other = run(cs, 10, { ["x-canary"] = "Beta" }) -- values match exactly
    local none = run(cs, 10)
    close_all(cs)
    assert.same({ B = 20 }, tally(ones))
    assert.same({ C = 20 }, tally(betas))
    -- requests the header rule took did not move the weighted sequence: the 20
    -- unmatched ones are two whole 9:1 cycles
    local rest = {}
    for _, v in ipairs(other) do rest[#rest + 1] = v end
    for _, v in ipairs(none) do rest[#rest + 1] = v end
    assert.same({ A = 18, B = 2 }, tally(rest))
  end)

  it("with `upstream`, sends a request carrying the header with any value there", function()
    local cs = clients(proxy, 2)
    local with = run(cs, 6, { ["x-canary"] = "anything" }, "/present")
    local empty = run(cs, 2, { ["x-canary"] = "" }, "/present")
    local without = run(cs, 6, nil, "/present")
    close_all(cs)
    assert.same({ C = 6 }, tally(with))
    assert.same({ C = 2 }, tally(empty))
    assert.same({ A = 6 }, tally(without))
  end)

  it("looks at the listed values before the any-value upstream", function()
    local cs = clients(proxy, 2)
    local beta = run(cs, 4, { ["x-canary"] = "beta" }, "/both")
    local other = run(cs, 4, { ["x-canary"] = "gamma" }, "/both")
    local without = run(cs, 4, nil, "/both")
    close_all(cs)
    assert.same({ B = 4 }, tally(beta))
    assert.same({ C = 4 }, tally(other))
    assert.same({ A = 4 }, tally(without))
  end)

  it("shows the choice as req.upstream in upstream_request, balance and response, not yet in request", function()
    local c = helpers.connect(proxy.port)
    local res = assert(c:request({ path = "/hooks/echo", headers = { ["x-canary"] = "beta" } }))
    assert.equal("C", helpers.echo(res).name)
    assert.equal("nil api_v3 api_v3 api_v3", res.h["x-seen"])
    local names = {}
    for i = 1, 2 do
      res = assert(c:request({ path = "/hooks/echo?" .. i }))
      local name = helpers.echo(res).name
      names[name] = true
      local up = name == "A" and "api_v1" or "api_v2"
      assert.equal("nil " .. up .. " " .. up .. " " .. up, res.h["x-seen"])
    end
    c:close()
    assert.same({ A = true, B = true }, names)
  end)

  it("looks at the header as the request hook left it", function()
    local cs = clients(proxy, 2)
    local seq = run(cs, 4, { ["x-canary"] = "other" }, "/sethdr")
    close_all(cs)
    assert.same({ C = 4 }, tally(seq))
  end)

  it("lets req:set_upstream in the request hook win over the split", function()
    local cs = clients(proxy, 2)
    local seq = {}
    for i = 1, 6 do
      local res = assert(cs[(i - 1) % 2 + 1]:request({ path = "/override/echo?" .. i,
                                                      headers = { ["x-canary"] = "beta" } }))
      seq[i] = helpers.echo(res).name
    end
    close_all(cs)
    assert.same({ A = 6 }, tally(seq))
  end)
end)

describe("split and the access log", function()
  local a, b, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    b = helpers.origin({ name = "B" })
    proxy = helpers.proxy(conf([[
local v1 = mg.upstream "api_v1" { servers = { "${a}" } }
local v2 = mg.upstream "api_v2" { servers = { "${b}" } }
mg.route { path = "/", upstream = { { v1, weight = 1 }, { v2, weight = 1 } },
           split = { header = "x-canary", values = { ["1"] = v2 } } }
]], 'access_log = "access.log"'), { vars = { a = a.addr, b = b.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("names the chosen upstream's server in each line", function()
    local c = helpers.connect(proxy.port)
    for i = 1, 3 do
      assert.equal("B", helpers.echo(assert(c:request({ path = "/echo/canary" .. i,
                                                        headers = { ["x-canary"] = "1" } }))).name)
    end
    c:close()
    local lines = helpers.wait_until(function()
      local found = {}
      for line in helpers.lines(helpers.read_file(proxy.dir .. "/access.log") or "") do
        if line:find("canary", 1, true) then found[#found + 1] = helpers.decode_json(line) end
      end
      return #found == 3 and found
    end, 5, 0.05)
    assert.is_table(lines, "three access log lines")
    for _, l in ipairs(lines) do assert.equal(b.addr, l.upstream) end
  end)
end)

describe("split and reload", function()
  local a, b, proxy

  local function text(wa, wb, mark)
    return conf([[
local v1 = mg.upstream "api_v1" { servers = { "${a}" } }
local v2 = mg.upstream "api_v2" { servers = { "${b}" } }
mg.route { path = "/", upstream = { { v1, weight = ]] .. wa .. [[ }, { v2, weight = ]] .. wb .. [[ } } }
mg.route { path = "/gen", respond = { body = "]] .. mark .. [[" } }
]])
  end

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    b = helpers.origin({ name = "B" })
    proxy = helpers.proxy(text(90, 10, "one"), { vars = { a = a.addr, b = b.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("follows the new weights after a reload (90/10, then 30/70)", function()
    local cs = clients(proxy, 4)
    local before = run(cs, 100)
    close_all(cs)
    assert.same({ A = 90, B = 10 }, tally(before))
    -- ready once both workers answer from the new generation (new connections
    -- from several addresses reach both)
    proxy:reload(helpers.expand(text(30, 70, "two"), { port = proxy.port, a = a.addr, b = b.addr }), function()
      for i = 1, 8 do
        local c = helpers.connect(proxy.port, 5, nil, "127.0.0." .. (20 + i))
        local res = c:request({ path = "/gen" })
        c:close()
        if not (res and res.body == "two") then return false end
      end
      return true
    end)
    cs = clients(proxy, 4)
    local after = run(cs, 100)
    close_all(cs)
    assert.same({ A = 30, B = 70 }, tally(after))
  end)
end)
