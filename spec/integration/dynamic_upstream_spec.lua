-- Dynamic upstreams (core/dyn.c, core/balance.c snapshots, lua/moongate/upstreams.lua):
-- servers added, removed, drained and re-weighted at run time through
-- mg.upstreams from a hook or a timer, seen by both workers at once without a
-- reload; a reload keeps them when the upstream's config did not change; host
-- names re-resolved every `resolve` seconds (through $MOONGATE_HOSTS_FILE, the
-- override a spec controls); 10,000 servers added at run time.
local helpers = require "spec.helpers"

-- An admin route runs mg.upstreams.<op> in a respond function (or in a timer with
-- op=timer_add) and answers "ok", "err <message>", or the servers one a line.
local ADMIN = [[
local function render(list)
  local out = {}
  for _, s in ipairs(list) do
    out[#out + 1] = table.concat({ s.id, s.addr, s.weight, s.state, s.active, s.fails }, " ")
  end
  return table.concat(out, "\n") .. "\n"
end
mg.route { path = "/admin/", respond = function(req)
  local op, up, addr = req:arg("op"), req:arg("up") or "dyn", req:arg("addr")
  local w = req:arg("w")
  local wv = w and (tonumber(w) or w)
  local ok, err
  if op == "add" then ok, err = mg.upstreams.add(up, addr, w and { weight = wv } or nil)
  elseif op == "timer_add" then
    mg.timer.at(0, function() assert(mg.upstreams.add(up, addr)) end)
    ok = true
  elseif op == "remove" then ok, err = mg.upstreams.remove(up, addr)
  elseif op == "drain" then ok, err = mg.upstreams.drain(up, addr)
  elseif op == "weight" then ok, err = mg.upstreams.set_weight(up, addr, wv)
  elseif op == "servers" then
    local list, e = mg.upstreams.servers(up)
    if not list then return 200, "err " .. e .. "\n" end
    return 200, render(list)
  elseif op == "list" then return 200, table.concat(mg.upstreams.list(), ",") .. "\n"
  elseif op == "big" then
    local list = {}
    for i = 0, 9996 do list[#list + 1] = ("127.1.%d.%d:9"):format(math.floor(i / 250), i % 250 + 1) end
    ok, err = mg.upstreams.add(up, req:arg("b"), { weight = 100 })
    if ok then ok, err = mg.upstreams.add(up, list) end
    if ok then ok, err = mg.upstreams.add(up, req:arg("c"), { weight = 100 }) end
  end
  return 200, (ok and "ok" or ("err " .. tostring(err))) .. "\n"
end }
mg.route { path = "/who", respond = function() return 200, tostring(mg.worker_id()) end }
]]

local function conf(body)
  return [[
local mg = require "moongate"
mg.config { workers = 2, access_log = false }
mg.listen { "127.0.0.1:${port}" }
]] .. ADMIN .. body
end

local function admin(proxy, q)
  local res = assert(proxy:request({ path = "/admin/?" .. q }))
  assert.equal(200, res.status)
  return res.body
end

-- "id addr weight state active fails" lines -> list of tables
local function servers(proxy, up)
  local out = {}
  for line in admin(proxy, "op=servers&up=" .. (up or "dyn")):gmatch("[^\n]+") do
    local id, addr, w, state, active = line:match("^(%d+) (%S+) (%d+) (%S+) (%-?%d+)")
    if id then
      out[#out + 1] = { id = tonumber(id), addr = addr, weight = tonumber(w), state = state,
                        active = tonumber(active) }
    end
  end
  return out
end

-- n connections from different loopback addresses: SO_REUSEPORT spreads them
-- over the two workers
local function clients(proxy, n)
  local cs = {}
  for i = 1, n do cs[i] = helpers.connect(proxy.port, 5, nil, "127.0.0." .. (i + 1)) end
  return cs
end

local function close_all(cs) for _, c in ipairs(cs) do c:close() end end

local function name_of(c, path)
  return helpers.echo(assert(c:request({ path = path or "/echo" }))).name
end

local function tally(list)
  local t = {}
  for _, v in ipairs(list) do t[v] = (t[v] or 0) + 1 end
  return t
end

describe("mg.upstreams", function()
  local a, b, c, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    b = helpers.origin({ name = "B" })
    c = helpers.origin({ name = "C" })
    proxy = helpers.proxy(conf([[
mg.route { path = "/other/", upstream = mg.upstream "other" { servers = { "${a}" } } }
-- the balance hook sees every id and picks the newest server (or the one ?pick= names)
mg.route { path = "/newest/", upstream = "other", on = { balance = function(req)
  local list = req:servers()
  req:set_server(tonumber(req:arg("pick")) or #list)
end } }
mg.route { upstream = mg.upstream "dyn" { servers = { "${a}" } } }
]]), { vars = { a = a.addr } })
  end)

  lazy_teardown(function() helpers.teardown(proxy) end)

  it("add from a hook: both workers send to the new server at once, no reload", function()
    local cs = helpers.spread_clients(proxy.port, 8, "/who")
    for i = 1, #cs do assert.equal("A", name_of(cs[i], "/echo?before" .. i)) end
    assert.equal("ok\n", admin(proxy, "op=add&addr=" .. b.addr))
    -- per worker: which servers its connections reached
    -- (two picks in a row on each connection: one sequence for the process, so
    -- one of them is B)
    local seen, workers = {}, {}
    for i = 1, #cs do
      local cl = cs[i]
      local w = assert(cl:request({ path = "/who" })).body
      workers[w] = true
      seen[w] = seen[w] or {}
      seen[w][name_of(cl, "/echo?after" .. i)] = true
      seen[w][name_of(cl, "/echo?again" .. i)] = true
    end
    close_all(cs)
    assert.same({ ["0"] = true, ["1"] = true }, workers)
    assert.same({ A = true, B = true }, seen["0"])
    assert.same({ A = true, B = true }, seen["1"])
    assert.equal("ok\n", admin(proxy, "op=remove&addr=" .. b.addr))
  end)

  it("add from a timer callback", function()
    assert.equal("ok\n", admin(proxy, "op=timer_add&addr=" .. c.addr))
    assert.truthy(helpers.wait_until(function()
      for _, s in ipairs(servers(proxy)) do if s.addr == c.addr and s.state == "up" then return true end end
    end, 5))
    local names = {}
    for i = 1, 10 do names[i] = name_of(proxy:connect(), "/echo?t" .. i) end
    assert.same({ A = 5, C = 5 }, tally(names))
    assert.equal("ok\n", admin(proxy, "op=remove&addr=" .. c.addr))
  end)

  it("servers() gives address, weight, state; list() the upstream names", function()
    assert.equal("other,dyn\n", admin(proxy, "op=list"))
    assert.equal("ok\n", admin(proxy, "op=add&addr=" .. b.addr .. "&w=7"))
    local list = servers(proxy)
    -- ids are permanent: B keeps the id it got first (1), C (2) stays removed
    assert.same({ { id = 0, addr = a.addr, weight = 1, state = "up", active = 0 },
                  { id = 1, addr = b.addr, weight = 7, state = "up", active = 0 } }, list)
    assert.equal("ok\n", admin(proxy, "op=drain&addr=" .. b.addr))
    assert.equal("draining", servers(proxy)[2].state)
    for i = 1, 6 do assert.equal("A", name_of(proxy:connect(), "/echo?d" .. i)) end
    assert.equal("ok\n", admin(proxy, "op=add&addr=" .. b.addr)) -- back, id 1 again
    list = servers(proxy)
    assert.same({ 1, "up", 1 }, { list[2].id, list[2].state, list[2].weight })
    assert.equal("ok\n", admin(proxy, "op=remove&addr=" .. b.addr))
    assert.equal(1, #servers(proxy))
  end)

  it("set_weight changes the round robin distribution exactly", function()
    assert.equal("ok\n", admin(proxy, "op=add&addr=" .. b.addr))
    assert.equal("ok\n", admin(proxy, "op=weight&addr=" .. b.addr .. "&w=3"))
    local cs = clients(proxy, 4)
    local names = {}
    for i = 1, 40 do names[i] = name_of(cs[(i - 1) % #cs + 1], "/echo?w" .. i) end
    assert.same({ A = 10, B = 30 }, tally(names))
    assert.equal("ok\n", admin(proxy, "op=weight&addr=" .. a.addr .. "&w=4"))
    names = {}
    for i = 1, 70 do names[i] = name_of(cs[(i - 1) % #cs + 1], "/echo?v" .. i) end
    close_all(cs)
    assert.same({ A = 40, B = 30 }, tally(names))
    assert.equal("ok\n", admin(proxy, "op=weight&addr=" .. a.addr .. "&w=1"))
    assert.equal("ok\n", admin(proxy, "op=remove&addr=" .. b.addr))
  end)

  it("the balance hook sees servers added at run time; a removed one is not picked", function()
    assert.equal("A", name_of(proxy:connect(), "/newest/echo"))
    assert.equal("ok\n", admin(proxy, "op=add&up=other&addr=" .. c.addr))
    for i = 1, 4 do assert.equal("C", name_of(proxy:connect(), "/newest/echo?" .. i)) end
    assert.equal("ok\n", admin(proxy, "op=remove&up=other&addr=" .. c.addr))
    -- id 1 (C) is still in req:servers() but takes no new request: the policy picks
    for i = 1, 4 do assert.equal("A", name_of(proxy:connect(), "/newest/echo?pick=2&" .. i)) end
  end)

  it("errors come back as nil, message", function()
    local cases = {
      { "op=add&up=nope&addr=" .. b.addr, "err mg.upstreams.add: unknown upstream 'nope'" },
      { "op=add&addr=localhost:80", "err mg.upstreams.add localhost:80: bad address" },
      { "op=add&addr=1.2.3.4", "err mg.upstreams.add 1.2.3.4: bad address" },
      { "op=add&addr=1.2.3.4:0", "err mg.upstreams.add 1.2.3.4:0: bad address" },
      { "op=add&addr=" .. a.addr, "err mg.upstreams.add " .. a.addr .. ": already a server" },
      { "op=add&addr=" .. b.addr .. "&w=0", "err mg.upstreams.add: weight must be an integer 1..1000" },
      { "op=add&addr=" .. b.addr .. "&w=1001", "err mg.upstreams.add: weight must be" },
      { "op=add&addr=" .. b.addr .. "&w=x", "err mg.upstreams.add: weight must be" },
      { "op=remove&addr=127.0.0.1:1", "err mg.upstreams.remove 127.0.0.1:1: no such server" },
      { "op=drain&up=nope&addr=127.0.0.1:1", "err mg.upstreams.drain: unknown upstream 'nope'" },
      { "op=weight&addr=" .. a.addr .. "&w=2.5", "err mg.upstreams.set_weight: weight must be" },
      { "op=servers&up=nope", "err mg.upstreams.servers: unknown upstream 'nope'" },
    }
    for _, k in ipairs(cases) do
      local body = admin(proxy, k[1])
      assert.equal(k[2], body:sub(1, #k[2]), k[1])
    end
    assert.equal(1, #servers(proxy))
    proxy:assert_alive()
  end)
end)

describe("mg.upstreams.remove and drain", function()
  local a, s, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    s = helpers.origin({ name = "S", delay = 1.0 })
    proxy = helpers.proxy(conf([[
mg.route { upstream = mg.upstream "dyn" { servers = { "${s}" } } }
]]), { vars = { s = s.addr } })
  end)

  lazy_teardown(function() helpers.teardown(proxy) end)

  for _, op in ipairs({ "remove", "drain" }) do
    it(op .. ": no new requests, the one in flight finishes", function()
      local slow = proxy:connect()
      assert(slow:send("GET /echo?slow HTTP/1.1\r\nHost: x\r\n\r\n"))
      assert.truthy(helpers.wait_until(function() return servers(proxy)[1].active == 1 end, 5))
      assert.equal("ok\n", admin(proxy, "op=add&addr=" .. a.addr))
      assert.equal("ok\n", admin(proxy, "op=" .. op .. "&addr=" .. s.addr))
      for i = 1, 6 do assert.equal("A", name_of(proxy:connect(), "/echo?n" .. i)) end
      local res = assert(slow:response())
      assert.equal(200, res.status)
      assert.equal("S", helpers.echo(res).name)
      slow:close()
      local st = {}
      for _, x in ipairs(servers(proxy)) do st[x.addr] = x.state end
      assert.same(op == "drain" and { [s.addr] = "draining", [a.addr] = "up" } or { [a.addr] = "up" }, st)
      assert.equal("ok\n", admin(proxy, "op=add&addr=" .. s.addr))
      assert.equal("ok\n", admin(proxy, "op=remove&addr=" .. a.addr))
    end)
  end
end)

describe("a reload", function()
  local a, b, proxy
  local body = [[
mg.route { upstream = mg.upstream "dyn" { servers = { "${a}" } } }
]]

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    b = helpers.origin({ name = "B" })
    proxy = helpers.proxy(conf(body), { vars = { a = a.addr } })
  end)

  lazy_teardown(function() helpers.teardown(proxy) end)

  it("keeps runtime changes when the upstream did not change, drops them when it did", function()
    assert.equal("ok\n", admin(proxy, "op=add&addr=" .. b.addr .. "&w=2"))
    local text = helpers.expand(conf(body), { a = a.addr, port = proxy.port })
    proxy:reload(text .. 'mg.route { path = "/gen2", respond = { status = 200, body = "gen2\\n" } }\n',
                 function() local r = proxy:request({ path = "/gen2" }) return r and r.body == "gen2\n" end)
    local list = servers(proxy)
    assert.same({ a.addr, b.addr }, { list[1].addr, list[2] and list[2].addr })
    assert.equal(2, list[2].weight)
    local names = {}
    for i = 1, 9 do names[i] = name_of(proxy:connect(), "/echo?r" .. i) end
    assert.same({ A = 3, B = 6 }, tally(names))
    -- the upstream itself changes (a weight): a new balancer, as configured
    proxy:reload(text:gsub('"' .. a.addr .. '"', '"' .. a.addr .. ' weight=2"') ..
                 'mg.route { path = "/gen3", respond = { status = 200, body = "gen3\\n" } }\n',
                 function() local r = proxy:request({ path = "/gen3" }) return r and r.body == "gen3\n" end)
    list = servers(proxy)
    assert.same({ { id = 0, addr = a.addr, weight = 2, state = "up", active = 0 } }, list)
  end)
end)

describe("resolve", function()
  local a, b, proxy, hosts

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    b = helpers.origin({ name = "B", host = "127.0.0.2", port = a.port })
    hosts = helpers.tmpdir() .. "/hosts"
    helpers.write_file(hosts, "127.0.0.1 dyn.test\n")
    helpers.env.MOONGATE_HOSTS_FILE = hosts
    proxy = helpers.proxy(conf([[
mg.route { upstream = mg.upstream "dyn" { servers = { "dyn.test:${p}" }, resolve = 0.2 } }
mg.route { path = "/fixed/", upstream = mg.upstream "fixed" { servers = { "dyn.test:${p}" }, resolve = false } }
mg.route { path = "/local/", upstream = mg.upstream "local" { servers = { "localhost:${p}" }, resolve = 0.1 } }
]]), { vars = { p = a.port } })
    helpers.env.MOONGATE_HOSTS_FILE = nil
  end)

  lazy_teardown(function() helpers.teardown(proxy) end)

  local function states()
    local t = {}
    for _, s in ipairs(servers(proxy)) do t[s.addr] = s.state end
    return t
  end

  it("re-resolves: added addresses join, removed ones drain", function()
    assert.same({ [a.addr] = "up" }, states())
    helpers.write_file(hosts, "127.0.0.1 dyn.test\n127.0.0.2 other dyn.test # two now\n")
    assert.truthy(helpers.wait_until(function() return states()[b.addr] == "up" end, 5))
    local names = {}
    for i = 1, 10 do names[i] = name_of(proxy:connect(), "/echo?x" .. i) end
    assert.same({ A = 5, B = 5 }, tally(names))
    helpers.write_file(hosts, "127.0.0.2 dyn.test\n")
    assert.truthy(helpers.wait_until(function() return states()[a.addr] == "draining" end, 5))
    for i = 1, 6 do assert.equal("B", name_of(proxy:connect(), "/echo?y" .. i)) end
    -- resolve = false: resolved once, at load
    local fixed = servers(proxy, "fixed")
    assert.same({ a.addr, "up" }, { fixed[1].addr, fixed[1].state })
    assert.equal(1, #fixed)
    assert.equal("A", name_of(proxy:connect(), "/fixed/echo"))
  end)

  it("a name not in the override goes to DNS off the workers; an unchanged answer changes nothing", function()
    local before = servers(proxy, "local")
    assert.equal(1, #before)
    helpers.sleep(0.6) -- about 6 lookups through uv_getaddrinfo
    assert.same(before, servers(proxy, "local"))
    local log = proxy:stderr()
    assert.falsy(log:find("re-resolving localhost failed", 1, true))
    assert.falsy(log:find("localhost no longer resolves", 1, true))
    assert.truthy(log:find("dyn.test no longer resolves to " .. a.addr .. ": it drains", 1, true))
  end)
end)

describe("10,000 servers added at run time", function()
  local a, b, c, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    b = helpers.origin({ name = "B" })
    c = helpers.origin({ name = "C" })
    proxy = helpers.proxy(conf([[
mg.route { upstream = mg.upstream "dyn" { servers = { "${a} weight=100" } } }
]]), { vars = { a = a.addr } })
  end)

  lazy_teardown(function() helpers.teardown(proxy) end)

  it("are listed, and round robin follows the rebuilt schedule in order", function()
    -- ids: A 0, B 1, 9,997 others (weight 1, never reached in the sample), C 9999
    assert.equal("ok\n", admin(proxy, "op=big&b=" .. b.addr .. "&c=" .. c.addr))
    local list = servers(proxy)
    assert.equal(10000, #list)
    assert.same({ 9999, c.addr, 100 }, { list[10000].id, list[10000].addr, list[10000].weight })
    -- the schedule (10,297 slots) starts A B C x 50 (slot times (2k+1)/200, ties
    -- by id); no pick was made on this upstream before
    local cs = clients(proxy, 4)
    local seq = {}
    for i = 1, 150 do seq[i] = name_of(cs[(i - 1) % #cs + 1], "/echo?" .. i) end
    close_all(cs)
    assert.equal(string.rep("ABC", 50), table.concat(seq))
  end)
end)

describe("runtime changes with hash and health", function()
  local a, b, c, d, e, proxy
  local body = [[
mg.route { path = "/h/", upstream = mg.upstream "h" { servers = { "${a}", "${b}", "${c}" },
  balance = "hash", hash_key = "header:x-key", hash_bound = false } }
mg.route { path = "/hc/", upstream = mg.upstream "hc" { servers = { "${a}" },
  health = { path = "/health", interval = 0.2, timeout = 1, rise = 1, fall = 1 } } }
]]

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    b = helpers.origin({ name = "B" })
    c = helpers.origin({ name = "C" })
    d = helpers.origin({ name = "D" })
    e = helpers.origin({ name = "E", status_file = true })
    e:force_status(503)
    proxy = helpers.proxy(conf(body), { vars = { a = a.addr, b = b.addr, c = c.addr } })
  end)

  lazy_teardown(function() helpers.teardown(proxy) end)

  -- key -> origin name for keys 1..n, over both workers' connections
  local function where(n)
    local cs = clients(proxy, 4)
    local t = {}
    for k = 1, n do
      local res = assert(cs[k % 4 + 1]:request({ path = "/h/echo", headers = { ["x-key"] = "key-" .. k } }))
      t[k] = helpers.echo(res).name
    end
    close_all(cs)
    return t
  end

  it("hash: a server added at run time takes about 1/n of the keys, the others stay; removing it gives them back", function()
    local N = 400
    local before = where(N)
    assert.equal("ok\n", admin(proxy, "op=add&up=h&addr=" .. d.addr))
    local after = where(N)
    local to_d, elsewhere = 0, 0
    for k = 1, N do
      if after[k] == "D" then to_d = to_d + 1
      elseif after[k] ~= before[k] then elsewhere = elsewhere + 1 end
    end
    -- 1/4 of the keys expected on the 4th server; keys moving between the old
    -- servers are Maglev's small extra disruption
    assert.is_true(to_d >= N * 0.12 and to_d <= N * 0.40, "keys on the new server: " .. to_d)
    assert.is_true(elsewhere <= N * 0.05, "keys moved between old servers: " .. elsewhere)
    assert.equal("ok\n", admin(proxy, "op=remove&up=h&addr=" .. d.addr))
    assert.same(before, where(N)) -- the same members: the same table
  end)

  it("health: a server added at run time is checked (down, then up when it answers)", function()
    assert.equal("ok\n", admin(proxy, "op=add&up=hc&addr=" .. e.addr))
    local function state()
      for _, s in ipairs(servers(proxy, "hc")) do
        if s.addr == e.addr then return s.state end
      end
    end
    assert.truthy(helpers.wait_until(function() return state() == "down" end, 5, 0.05), proxy:stderr())
    assert.truthy(helpers.count(proxy:stderr(), "upstream hc: server " .. e.addr .. " up -> down (status 503)") >= 1)
    assert.truthy(e:count_path("/health") >= 1)
    -- down: every request goes to A
    local cs = clients(proxy, 4)
    for i = 1, 8 do assert.equal("A", name_of(cs[i % 4 + 1], "/hc/echo?" .. i)) end
    close_all(cs)
    e:force_status(nil)
    assert.truthy(helpers.wait_until(function() return state() == "up" end, 5, 0.05), proxy:stderr())
    -- removed: no longer probed
    assert.equal("ok\n", admin(proxy, "op=remove&up=hc&addr=" .. e.addr))
    helpers.wait_until(function() return false end, 0.5, 0.1) -- a probe in flight ends
    local n = e:count_path("/health")
    helpers.wait_until(function() return false end, 1, 0.1)
    assert.equal(n, e:count_path("/health"))
  end)

  it("health: a reload that keeps the upstream keeps a down server down until it answers", function()
    local function state()
      for _, s in ipairs(servers(proxy, "hc")) do
        if s.addr == e.addr then return s.state end
      end
    end
    e:force_status(503)
    assert.equal("ok\n", admin(proxy, "op=add&up=hc&addr=" .. e.addr)) -- (revived: removed above)
    assert.truthy(helpers.wait_until(function() return state() == "down" end, 5, 0.05), proxy:stderr())
    local text = helpers.expand(conf(body), { a = a.addr, b = b.addr, c = c.addr, port = proxy.port })
    proxy:reload(text .. 'mg.route { path = "/gen2", respond = { status = 200, body = "gen2\\n" } }\n',
                 function() local r = proxy:request({ path = "/gen2" }) return r and r.body == "gen2\n" end)
    assert.equal("down", state()) -- the balancer and the verdict carried over
    e:force_status(nil)
    -- the new generation's checks see it answer and bring it back
    assert.truthy(helpers.wait_until(function() return state() == "up" end, 5, 0.05), proxy:stderr())
  end)
end)
