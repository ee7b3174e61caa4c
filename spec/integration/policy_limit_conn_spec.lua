-- Issue 14: mg.policy.limit_conn on the real binary with 2 workers: exactly `limit`
-- slow requests of one key in progress at once (connections from 8 loopback
-- addresses, which SO_REUSEPORT spreads over both workers), the others 503 with
-- policy=limit_conn in the access log; the slots come
-- back when the requests end, also when their clients abort while the upstream has
-- not answered (no answer, so no log phase); keys apart; max_body 413 for
-- Content-Length and chunked bodies; config errors with file:line.
local helpers = require "spec.helpers"
local socket = require "socket"

local CONF = [[
local mg = require "moongate"
mg.config { workers = 2, access_log = "access.log" }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" }, timeouts = { read = 30 } }
mg.route { path = "/slow-head/", upstream = o, use = { mg.policy.limit_conn { limit = 3, key = "header:X-Tenant" } } }
mg.route { path = "/up/", upstream = o, use = { mg.policy.limit_conn { max_body = "1k" } } }
mg.route { path = "/", upstream = o }
]]

describe("mg.policy.limit_conn", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "o" })
    proxy = helpers.proxy(CONF, { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  -- n clients from n loopback addresses (spread over the workers), each sending
  -- one request; returns the statuses, sorted
  local function burst(n, path, tenant, first)
    local cs = helpers.clients(proxy.port, n, first)
    for _, c in ipairs(cs) do
      assert(c:send(helpers.request_bytes({ path = path, headers = { ["X-Tenant"] = tenant } })))
    end
    local st = {}
    for i, c in ipairs(cs) do
      local res = assert(c:final_response())
      st[i] = res.status
    end
    return st, cs
  end

  local function count(list, v)
    local n = 0
    for _, x in ipairs(list) do if x == v then n = n + 1 end end
    return n
  end

  it("limit = 3: of 8 slow requests of one key at once on 2 workers, exactly 3 go through, 5 get 503 (logged)", function()
    local st, cs = burst(8, "/slow-head/1", "t1", 10)
    assert.equal(3, count(st, 200), table.concat(st, ","))
    assert.equal(5, count(st, 503), table.concat(st, ","))
    -- the connections stay open (keep-alive): the slots came back all the same
    local again = burst(3, "/slow-head/0.2", "t1", 30)
    assert.same({ 200, 200, 200 }, again)
    helpers.close_all(cs)
    local n = 0
    helpers.wait_until(function()
      n = 0
      for l in helpers.lines(helpers.read_file(proxy.dir .. "/access.log") or "") do
        if l:find('"/slow-head/1"', 1, true) and l:find('"policy":"limit_conn"', 1, true)
           and l:find('"status":503', 1, true) then n = n + 1 end
      end
      return n == 5
    end, 3)
    assert.equal(5, n)
  end)

  it("keys are counted apart: another tenant gets its own 3", function()
    local cs = helpers.clients(proxy.port, 3, 40)
    for _, c in ipairs(cs) do
      assert(c:send(helpers.request_bytes({ path = "/slow-head/1", headers = { ["X-Tenant"] = "a" } })))
    end
    socket.sleep(0.2)
    local other = burst(3, "/slow-head/0.1", "b", 50)
    assert.same({ 200, 200, 200 }, other)
    local one = burst(1, "/slow-head/0.1", "a", 60)
    assert.same({ 503 }, one)
    for _, c in ipairs(cs) do assert.equal(200, assert(c:final_response()).status) end
    helpers.close_all(cs)
  end)

  local function hold(n, first, path, tenant)
    local cs = helpers.clients(proxy.port, n, first)
    for _, c in ipairs(cs) do
      assert(c:send(helpers.request_bytes({ path = path, headers = { ["X-Tenant"] = tenant } })))
    end
    socket.sleep(0.3)
    return cs
  end

  it("clients that reset their connection while the upstream has not answered give their slots back at once", function()
    local cs = hold(3, 70, "/slow-head/4", "ab")
    assert.same({ 503 }, (burst(1, "/slow-head/0", "ab", 80)))
    local t0 = socket.gettime()
    for _, c in ipairs(cs) do
      c.sock:setoption("linger", { on = true, timeout = 0 }) -- close sends RST: an abort
      c:close()
    end
    -- no answer was sent: no log phase for these three; long before the origin
    -- would answer them (4 s), three fit again
    local ok = helpers.wait_until(function()
      return burst(1, "/slow-head/0", "ab", 81)[1] == 200
    end, 1.5)
    assert.truthy(ok, "a slot came back after the resets")
    local st = burst(3, "/slow-head/0.5", "ab", 90)
    assert.same({ 200, 200, 200 }, st)
    assert.truthy(socket.gettime() - t0 < 3, "the slots came back before the origin's answers")
    -- and the limit still holds after that
    local h = hold(3, 100, "/slow-head/1", "ab")
    assert.same({ 503 }, (burst(1, "/slow-head/0", "ab", 110)))
    helpers.close_all(h)
  end)

  it("clients that close (FIN) mid-request: a half-close, the slot is held until the upstream's answer, then given back", function()
    local cs = hold(3, 120, "/slow-head/1.5", "fin")
    helpers.close_all(cs)
    socket.sleep(0.2)
    assert.same({ 503 }, (burst(1, "/slow-head/0", "fin", 130)))
    local ok = helpers.wait_until(function()
      return burst(1, "/slow-head/0", "fin", 131)[1] == 200
    end, 4)
    assert.truthy(ok, "the slots came back once the origin answered")
    assert.same({ 200, 200, 200 }, (burst(3, "/slow-head/0.3", "fin", 140)))
  end)

  it("max_body = \"1k\": Content-Length over 1024 gets 413 without going upstream; 1024 goes through", function()
    local big = string.rep("x", 1025)
    local res = assert(proxy:request({ method = "POST", path = "/up/a", body = big }))
    assert.equal(413, res.status)
    assert.equal(0, origin:count_path("/up/a"))
    res = assert(proxy:request({ method = "POST", path = "/up/b", body = big:sub(2) }))
    assert.equal(200, res.status)
    assert.equal(1024, helpers.echo(res).body_len)
  end)

  it("max_body: a chunked body over the limit gets 413, under it goes through whole", function()
    local function chunked(n)
      local c = proxy:connect()
      local body = string.rep("y", n)
      assert(c:send("POST /up/c" .. n .. " HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        .. string.format("%x\r\n%s\r\n0\r\n\r\n", n, body)))
      local res = assert(c:final_response())
      c:close()
      return res
    end
    assert.equal(413, chunked(1500).status)
    assert.equal(0, origin:count_path("/up/c1500"))
    local ok = chunked(600)
    assert.equal(200, ok.status)
    assert.equal(600, helpers.echo(ok).body_len)
  end)
end)

describe("mg.policy.limit_conn config errors", function()
  local cases = {
    { 'mg.policy.limit_conn {}', "'limit' is required" },
    { 'mg.policy.limit_conn { limit = 0 }', "'limit' out of range" },
    { 'mg.policy.limit_conn { limit = 2.5 }', "'limit' must be a whole number" },
    { 'mg.policy.limit_conn { limit = 2, key = "cookie" }', "'key' must be \"ip\"" },
    { 'mg.policy.limit_conn { limit = 2, limt = 3 }', "unknown key 'limt'" },
    { 'mg.policy.limit_conn { limit = 2, shared = "nope" }', "no shared dictionary 'nope'" },
    { 'mg.policy.limit_conn { max_body = "1x" }', "'max_body' must be bytes" },
    { 'mg.policy.limit_conn { max_body = 10, key = "ip" }', "'key', 'status' and 'shared' need 'limit'" },
  }
  helpers.use_error_cases(it, cases, "mg.policy.limit_conn: ")
end)
