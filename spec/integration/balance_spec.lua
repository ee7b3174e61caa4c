-- Balancing policies over state every worker shares (core/balance.c): one round
-- robin sequence for the whole process, least_conn and p2c seeing the attempts
-- and response times of both workers, weighted random, upstreams of 10,000
-- servers, and the balance hook still having the last word.
local helpers = require "spec.helpers"

local function conf(body, workers)
  return [[
local mg = require "moongate"
mg.config { workers = ]] .. (workers or 2) .. [[, access_log = false }
mg.listen { "127.0.0.1:${port}" }
]] .. body
end

-- `n` connections from different loopback addresses, so that SO_REUSEPORT spreads
-- them over the workers.
local function clients(proxy, n)
  local cs = {}
  for i = 1, n do cs[i] = helpers.connect(proxy.port, 5, nil, "127.0.0." .. (i + 1)) end
  return cs
end

local function close_all(cs)
  for _, c in ipairs(cs) do c:close() end
end

-- The origin's name for a GET of `path` on client c.
local function name_of(c, path)
  return helpers.echo(assert(c:request({ path = path or "/echo" }))).name
end

local function tally(list)
  local t = {}
  for _, v in ipairs(list) do t[v] = (t[v] or 0) + 1 end
  return t
end

describe("balance = round_robin (the default)", function()
  local a, b, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    b = helpers.origin({ name = "B" })
    proxy = helpers.proxy(conf([[
mg.route { upstream = mg.upstream "w" { servers = { "${a} weight=1", "${b} weight=3" } } }
]]), { vars = { a = a.addr, b = b.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("follows one sequence for the process: B A B B over 8 connections and 2 workers", function()
    local cs = clients(proxy, 8)
    local seq = {}
    for i = 1, 80 do seq[i] = name_of(cs[(i - 1) % #cs + 1], "/echo?" .. i) end
    close_all(cs)
    -- per-worker sequences would interleave two B A B B cycles and break the pattern
    assert.equal(string.rep("BABB", 20), table.concat(seq))
    assert.same({ A = 20, B = 60 }, tally(seq))
  end)
end)

describe("balance = least_conn", function()
  local a, b, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    b = helpers.origin({ name = "B" })
    proxy = helpers.proxy(conf([[
mg.route { upstream = mg.upstream "lc" { balance = "least_conn", servers = { "${a}", "${b}" } } }
]]), { vars = { a = a.addr, b = b.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("sends every request to the idle server while the other holds a slow one", function()
    local slow = helpers.connect(proxy.port, 5, nil, "127.0.0.40")
    assert(slow:send("GET /slow-head/1.5 HTTP/1.1\r\nHost: x\r\n\r\n"))
    -- the slow request reaches an origin (counted there) before the others start
    assert(helpers.wait_until(function()
      return a:stats().requests + b:stats().requests == 1
    end, 5, 0.01), "the slow request did not reach an origin")
    local busy = a:stats().requests == 1 and "A" or "B"
    local idle = busy == "A" and "B" or "A"
    local cs = clients(proxy, 6)
    local seq = {}
    for i = 1, 12 do seq[i] = name_of(cs[(i - 1) % #cs + 1], "/echo?" .. i) end
    close_all(cs)
    assert.same({ [idle] = 12 }, tally(seq))
    local res = assert(slow:response())
    slow:close()
    assert.equal(busy, helpers.echo(res).name)
  end)
end)

describe("balance = p2c", function()
  local a, b, s, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    b = helpers.origin({ name = "B" })
    s = helpers.origin({ name = "S", delay = 0.05 })
    proxy = helpers.proxy(conf([[
mg.route { upstream = mg.upstream "p" { balance = "p2c", servers = { "${a}", "${s}", "${b}" } } }
]]), { vars = { a = a.addr, b = b.addr, s = s.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("keeps away from the server 50 ms slower than the others", function()
    local cs = clients(proxy, 4)
    local seq = {}
    for i = 1, 300 do seq[i] = name_of(cs[(i - 1) % #cs + 1], "/echo?" .. i) end
    close_all(cs)
    local t = tally(seq)
    -- two choices out of three always hold a fast server: once the slow one has a
    -- response time it loses every draw; before that (one sample per worker at
    -- most, plus draws where neither had a sample) it may win a few
    assert.is_true((t.S or 0) <= 6, "slow server got " .. tostring(t.S))
    assert.is_true((t.A or 0) >= 100 and (t.B or 0) >= 100,
                   "fast servers: A " .. tostring(t.A) .. ", B " .. tostring(t.B))
  end)
end)

describe("balance = random", function()
  local a, b, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    b = helpers.origin({ name = "B" })
    proxy = helpers.proxy(conf([[
mg.route { upstream = mg.upstream "r" { balance = "random", servers = { "${a} weight=1", "${b} weight=3" } } }
]]), { vars = { a = a.addr, b = b.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("follows the weights within 5 standard deviations, in no fixed order", function()
    local cs = clients(proxy, 4)
    local seq = {}
    for i = 1, 800 do seq[i] = name_of(cs[(i - 1) % #cs + 1], "/echo?" .. i) end
    close_all(cs)
    local t = tally(seq)
    -- binomial(800, 1/4): mean 200, sd 12.2
    assert.is_true(t.A >= 139 and t.A <= 261, "A got " .. tostring(t.A))
    -- round robin never repeats A; 800 random draws do (P(no "AA") < 1e-20)
    assert.truthy(table.concat(seq):find("AA", 1, true))
  end)
end)

describe("10,000 servers", function()
  local a, b, c, d, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    b = helpers.origin({ name = "B" })
    c = helpers.origin({ name = "C" })
    d = helpers.origin({ name = "D" })
    -- A first, B at 5,000, C last, weight 100 each; D fills the 9,997 others with
    -- weight 1. A cycle has 10,297 slots: a server's k-th slot sits at (2k + 1) / 2w
    -- of it, so the first 150 are A B C x 50 and every D slot comes next, at 1/2
    -- (smooth weighted round robin spreads them the same way).
    proxy = helpers.proxy(conf([[
local servers = {}
for i = 1, 10000 do servers[i] = "${d}" end
servers[1], servers[5000], servers[10000] = "${a} weight=100", "${b} weight=100", "${c} weight=100"
mg.route { upstream = mg.upstream "big" { servers = servers } }
mg.route { path = "/lc/", upstream = mg.upstream "big_lc" { balance = "least_conn", servers = servers } }
mg.route { path = "/p2c/", upstream = mg.upstream "big_p2c" { balance = "p2c", servers = servers } }
]]), { vars = { a = a.addr, b = b.addr, c = c.addr, d = d.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("load, and round robin picks the first, the middle, the last and the rest in order", function()
    local cs = clients(proxy, 4)
    local seq = {}
    for i = 1, 170 do seq[i] = name_of(cs[(i - 1) % #cs + 1], "/echo?" .. i) end
    close_all(cs)
    assert.equal(string.rep("ABC", 50) .. string.rep("D", 20), table.concat(seq))
  end)

  it("answer through least_conn and p2c", function()
    local cs = clients(proxy, 2)
    for i = 1, 20 do
      assert.equal(200, assert(cs[1]:request({ path = "/lc/x?" .. i })).status)
      assert.equal(200, assert(cs[2]:request({ path = "/p2c/x?" .. i })).status)
    end
    close_all(cs)
  end)
end)

describe("failover past 64 servers", function()
  local live, proxy

  lazy_setup(function()
    live = helpers.origin({ name = "live" })
    -- 100 servers that refuse, then the live one: a GET tries each dead one once
    proxy = helpers.proxy(conf([[
local servers = {}
for i = 1, 100 do servers[i] = "127.0.0.1:${dead}" end
servers[101] = "${live}"
mg.route { upstream = mg.upstream "many" { servers = servers } }
]], 1), { vars = { live = live.addr, dead = helpers.free_port() } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("reaches the 101st server after 100 refused connects", function()
    assert.equal("live", name_of(helpers.connect(proxy.port), "/echo"))
    assert.equal(1, live:stats().requests)
  end)
end)

describe("the balance hook", function()
  local a, b, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    b = helpers.origin({ name = "B" })
    proxy = helpers.proxy(conf([[
for _, policy in ipairs({ "round_robin", "least_conn", "p2c", "random" }) do
  mg.route { path = "/" .. policy .. "/",
    upstream = mg.upstream(policy) { balance = policy, servers = { "${a}", "${b}" } },
    on = { balance = function(req) req:set_server(2) end } }
end
]]), { vars = { a = a.addr, b = b.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("overrides every policy", function()
    local cs = clients(proxy, 4)
    for _, policy in ipairs({ "round_robin", "least_conn", "p2c", "random" }) do
      for i = 1, 8 do
        assert.equal("B", name_of(cs[(i - 1) % #cs + 1], "/" .. policy .. "/echo?" .. i), policy)
      end
    end
    close_all(cs)
  end)
end)

describe("server state in the balance hook", function()
  local a, proxy, dead

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    dead = helpers.free_port()
    -- the hook notes every server's state as "active/response ms/fails", the
    -- response hook hands it back in a header
    proxy = helpers.proxy(conf([[
local function peek(req)
  local parts = {}
  for i, s in ipairs(req:servers()) do
    parts[i] = string.format("%d/%d/%d", s.active, math.floor(s.response_time * 1000), s.fails)
  end
  req.ctx.state = table.concat(parts, ",")
end
local function show(req, res) res:set_header("X-State", req.ctx.state) end
mg.route { host = "one.test", upstream = mg.upstream "one" { servers = { "${a}" } },
           on = { balance = peek, response = show } }
mg.route { host = "two.test", upstream = mg.upstream "two" { servers = { "127.0.0.1:${dead}", "${a}" } },
           on = { balance = peek, response = show } }
]]), { vars = { a = a.addr, dead = dead } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  -- GET path from upstream "one" or "two": the hook's view and the status
  local function state(c, up, path)
    local res = assert(c:request({ path = path, headers = { { "Host", up .. ".test" } } }))
    return res.h["x-state"], res.status
  end

  it("shows attempts in flight from another connection, response times and failures in a row", function()
    local cs = clients(proxy, 3)
    -- the hook runs before the attempt: nothing yet; the first response sets the
    -- average (a 300 ms answer)
    assert.equal("0/0/0", (state(cs[1], "one", "/slow-head/0.3")))
    local st = state(cs[2], "one", "/echo")
    local act, ms, fails = st:match("^(%d+)/(%d+)/(%d+)$")
    assert.equal("0", act)
    assert.equal("0", fails)
    assert.is_true(tonumber(ms) >= 250 and tonumber(ms) < 1000, st)
    -- a request in flight on one connection is seen by the hook of another
    assert(cs[3]:send("GET /slow-head/1 HTTP/1.1\r\nHost: one.test\r\n\r\n"))
    assert(helpers.wait_until(function() return a:stats().requests == 3 end, 5, 0.01))
    assert.truthy(state(cs[1], "one", "/echo"):match("^1/"))
    assert.equal(200, assert(cs[3]:response()).status)
    assert.truthy(state(cs[1], "one", "/echo"):match("^0/"))
    -- round robin tries the dead server first, then A, for each request; the hook
    -- runs again for the second attempt, which it sees last: the second request's
    -- second view shows two failures in a row
    local _, status = state(cs[1], "two", "/echo")
    assert.equal(200, status)
    local st2 = state(cs[2], "two", "/echo?2")
    assert.truthy(st2:match("^0/0/2,0/%d+/0$"), st2)
    close_all(cs)
  end)

  it("counts every attempt out again: after resets, 502s and cut clients nothing stays active", function()
    local c = helpers.connect(proxy.port)
    for _, up_path in ipairs({ { "one", "/reset" }, { "one", "/reset-rst" }, { "two", "/reset" },
                               { "two", "/echo" } }) do
      c:request({ path = up_path[2], headers = { { "Host", up_path[1] .. ".test" } } })
      c:close()
      c = helpers.connect(proxy.port)
    end
    -- clients that leave while their request waits on the server: the exchange is
    -- dropped with its upstream connection (no response head or end ever comes)
    for i = 1, 3 do
      local cut = helpers.connect(proxy.port, 5, nil, "127.0.0." .. (50 + i))
      assert(cut:send("GET /slow-head/1 HTTP/1.1\r\nHost: one.test\r\n\r\n"))
      helpers.sleep(0.05)
      if i == 3 then cut.sock:setoption("linger", { on = true, timeout = 0 }) end -- an RST
      cut:close()
    end
    helpers.sleep(1.3)
    local st = state(c, "two", "/echo")
    c:close()
    assert.truthy(st:match("^0/%d+/%d+,0/%d+/0$"), st)
  end)
end)

describe("balance config", function()
  local function check(upstream)
    local dir = helpers.tmpdir()
    local path = helpers.write_config(dir, [[
local mg = require "moongate"
mg.listen { "127.0.0.1:1" }
mg.route { upstream = mg.upstream "u" { servers = { "127.0.0.1:2" }, ]] .. upstream .. [[ } }
]])
    return helpers.moongate({ "-t", "-c", path })
  end

  it("refuses an unknown policy, naming the known ones", function()
    local out, rc = check('balance = "fastest"')
    assert.not_equal(0, rc)
    assert.truthy(out:find("'balance' must be \"round_robin\", \"least_conn\", \"p2c\", \"random\" or \"hash\", got \"fastest\"",
                           1, true), out)
  end)

  it("takes 10,000 servers (no limit of 64)", function()
    local dir = helpers.tmpdir()
    local path = helpers.write_config(dir, [[
local mg = require "moongate"
mg.listen { "127.0.0.1:1" }
local s = {}
for i = 1, 10000 do s[i] = "127.0.0.1:" .. (10000 + i) end
mg.route { upstream = mg.upstream "u" { servers = s } }
]])
    local out, rc = helpers.moongate({ "-t", "-c", path })
    assert.equal(0, rc, out)
  end)
end)
