-- The repo's own proxy.lua (the demo), tested the way a user tests theirs:
-- through moongate.testing (docs/testing.md), with no spec/ helpers.
--
--   scripts/busted -o utfTerminal spec/demo_spec.lua
local t = require "moongate.testing"
local json = require "dkjson"

-- proxy.lua sits next to spec/ (found from this file, whatever the cwd).
local here = debug.getinfo(1, "S").source:match("^@(.*)$")
local CONFIG = (here:match("^(.*)/[^/]*$") or ".") .. "/../proxy.lua"

local ORIGIN1 = "hello from origin 1\n"
local ORIGIN2 = "hello from origin 2\n"

-- Headers the proxy adds on the way to the origin, or must strip on the way
-- back: none of them may reach the client.
local NOT_TO_CLIENT = { "via", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                        "server", "x-powered-by", "keep-alive", "proxy-connection", "upgrade" }

local function count_bodies(proxy, n, req)
  local counts = {}
  for _ = 1, n do
    local res = assert(proxy:request(req or "/"))
    assert.equal(200, res.status)
    counts[res.body] = (counts[res.body] or 0) + 1
  end
  return counts
end

describe("the demo proxy.lua", function()
  local proxy

  lazy_setup(function()
    proxy = assert(t.start { config = CONFIG })
  end)

  lazy_teardown(function()
    t.stop_all()
  end)

  it("listens on ephemeral ports instead of 8080, 9001 and 9002", function()
    for _, addr in ipairs { "127.0.0.1:8080", "127.0.0.1:9001", "127.0.0.1:9002" } do
      assert.is_number(proxy.ports[addr])
      assert.are_not.equal(tonumber(addr:match("%d+$")), proxy.ports[addr])
    end
    -- the demo upstream follows its two origin listeners
    local servers = proxy.upstreams.demo
    assert.equal(proxy.addrs["127.0.0.1:9001"], servers[1].to)
    assert.equal(proxy.addrs["127.0.0.1:9002"], servers[2].to)
    assert.same({ 1, 3 }, { servers[1].weight, servers[2].weight })
  end)

  it("answers /healthz itself", function()
    local res = assert(proxy:request "/healthz")
    assert.equal(200, res.status)
    assert.equal("ok\n", res.body)
    local head = assert(proxy:request { method = "HEAD", path = "/healthz" })
    assert.equal(200, head.status)
    assert.equal("", head.body)
  end)

  it("balances / between the two demo origins 1:3", function()
    local counts = count_bodies(proxy, 40)
    local one, two = counts[ORIGIN1] or 0, counts[ORIGIN2] or 0
    assert.equal(40, one + two)
    assert.is_true(one > 0 and two > 0, "both origins must answer")
    assert.is_true(two >= 2 * one, ("origin 2 answered %d, origin 1 %d"):format(two, one))
    -- workers = 2, and each worker runs its own smooth weighted round robin
    -- (origin 1 exactly once in every 4 picks). Whatever the split of the 40
    -- connections between the workers, each worker gives origin 1 floor or
    -- ceil of a quarter of its share: 9 to 11 in all.
    assert.is_true(one >= 9 and one <= 11, "origin 1 answered " .. one .. " of 40")
  end)

  it("serves any path and method on the front door from the origins", function()
    for _, req in ipairs {
      { path = "/some/page?x=1" },
      { method = "POST", path = "/form", body = "a=1&b=2",
        headers = { ["content-type"] = "application/x-www-form-urlencoded" } },
      { method = "DELETE", path = "/thing/1" },
    } do
      local res = assert(proxy:request(req))
      assert.equal(200, res.status)
      assert.is_truthy(res.body == ORIGIN1 or res.body == ORIGIN2, res.body)
      assert.equal("text/plain", res.headers["content-type"])
    end
  end)

  it("does not leak proxy headers back to the client", function()
    for _, path in ipairs { "/", "/healthz" } do
      local res = assert(proxy:request { path = path, headers = { ["X-Forwarded-For"] = "10.9.8.7" } })
      assert.equal(200, res.status)
      for _, name in ipairs(NOT_TO_CLIENT) do
        assert.is_nil(res.headers[name], path .. " answered with " .. name)
      end
      assert.equal(#res.body, tonumber(res.headers["content-length"]))
    end
  end)

  it("serves each origin on its own listener, where /healthz is not special", function()
    assert.equal(ORIGIN1, assert(proxy:request { path = "/", listen = "origin1" }).body)
    assert.equal(ORIGIN2, assert(proxy:request { path = "/", listen = "127.0.0.1:9002" }).body)
    assert.equal(ORIGIN1, assert(proxy:request { path = "/healthz", listen = "origin1" }).body)
  end)

  it("writes one access log line per request, naming the origin that answered", function()
    local before = #proxy:access_lines()
    local res = assert(proxy:request "/logged")
    assert.equal(200, res.status)
    -- two lines: the front door's, and the origin listener's (Host is passed
    -- through, so both show the front's address as host)
    assert.truthy(t.wait_until(function() return #proxy:access_lines() >= before + 2 end),
      "the access log did not grow")
    local proxied, answered = {}, {}
    for _, line in ipairs(proxy:access_lines()) do
      local e = assert(json.decode(line, 1, json.null))
      if e.path == "/logged" then
        assert.equal(200, e.status)
        assert.equal(proxy.addrs["127.0.0.1:8080"], e.host)
        assert.is_string(e.request_id)
        if e.upstream == json.null then answered[#answered + 1] = e else proxied[#proxied + 1] = e end
      end
    end
    assert.equal(1, #proxied)
    assert.equal(1, #answered)
    local expected = res.body == ORIGIN1 and "127.0.0.1:9001" or "127.0.0.1:9002"
    assert.equal(proxy.addrs[expected], proxied[1].upstream)
    assert.is_number(proxied[1].upstream_time)
  end)

  it("refuses attacks with 403 on every route (the global waf), lets look-alikes through", function()
    for _, path in ipairs { "/?id=1'%20union%20select%20password%20from%20users--",
                            "/page?file=../../../../etc/passwd",
                            "/healthz?q=%3Cscript%3Ealert(1)%3C/script%3E" } do
      local res = assert(proxy:request(path))
      assert.equal(403, res.status, path)
    end
    for _, path in ipairs { "/?q=O'Brien%20and%20sons", "/?q=select%20your%20size",
                            "/healthz?x=1%3C2" } do
      local res = assert(proxy:request(path))
      assert.equal(200, res.status, path)
    end
  end)

  it("puts /api/ behind an API key: 401 without it, the origin with it", function()
    local res = assert(proxy:request "/api/orders")
    assert.equal(401, res.status)
    res = assert(proxy:request { path = "/api/orders", headers = { apikey = "k-999" } })
    assert.equal(401, res.status)
    res = assert(proxy:request { path = "/api/orders", headers = { apikey = "k-123" } })
    assert.equal(200, res.status)
    assert.is_truthy(res.body == ORIGIN1 or res.body == ORIGIN2, res.body)
  end)

  it("answers a CORS preflight for https://app.example on /api/ without a key", function()
    local res = assert(proxy:request { method = "OPTIONS", path = "/api/orders", headers = {
      Origin = "https://app.example", ["Access-Control-Request-Method"] = "POST" } })
    assert.equal(204, res.status)
    assert.equal("https://app.example", res.headers["access-control-allow-origin"])
    assert.matches("POST", res.headers["access-control-allow-methods"], 1, true)
    res = assert(proxy:request { path = "/api/orders", headers = {
      Origin = "https://app.example", apikey = "k-123" } })
    assert.equal(200, res.status)
    assert.equal("https://app.example", res.headers["access-control-allow-origin"])
    assert.matches("Origin", res.headers["vary"], 1, true)
  end)

  it("lets alice make 10 requests a second on /api/, then answers 429 with Retry-After and CORS", function()
    -- a sliding window also counts part of the second before it: start 2 s
    -- clear of the earlier tests' requests
    t.sleep(2.1)
    local statuses, limited = {}, nil
    for i = 1, 25 do
      local res = assert(proxy:request { path = "/api/n/" .. i,
                                         headers = { apikey = "k-123", Origin = "https://app.example" } })
      statuses[i] = res.status
      if res.status == 429 and not limited then limited = res end
    end
    for i = 1, 10 do assert.equal(200, statuses[i], "request " .. i) end
    assert.is_table(limited, "no 429 in 25 requests: " .. table.concat(statuses, " "))
    assert.is_string(limited.headers["retry-after"])
    assert.is_truthy(tonumber(limited.headers["retry-after"]) >= 1)
    assert.is_string(limited.headers["ratelimit-policy"])
    -- cors runs before rate_limit: the browser script can read the 429
    assert.equal("https://app.example", limited.headers["access-control-allow-origin"])
  end)

  it("logs its start to the error log", function()
    local log = proxy:read_log()
    assert.matches("listening on", log, 1, true)
    assert.matches(proxy.addrs["127.0.0.1:8080"], log, 1, true)
    assert.is_nil(log:find("[error]", 1, true), log)
  end)
end)

describe("the demo proxy.lua in front of stub origins", function()
  local o1, o2, proxy

  -- Each stub answers with its name, and /hop with hop-by-hop and server
  -- headers the proxy must not pass to the client.
  local function routes(name)
    return {
      ["/"] = function(req) return 200, name .. " " .. req.method .. " " .. req.target .. "\n" end,
      ["/hop"] = { status = 200, body = "hop\n", headers = {
        Server = "stub/1.0", ["X-Powered-By"] = "lua", ["Keep-Alive"] = "timeout=5",
        Connection = "x-internal", ["X-Internal"] = "secret", ["X-Kept"] = "yes",
        ["Content-Type"] = "text/plain" } },
    }
  end

  lazy_setup(function()
    o1 = assert(t.origin(routes "stub1", { name = "stub1" }))
    o2 = assert(t.origin(routes "stub2", { name = "stub2" }))
    proxy = assert(t.start {
      config = CONFIG,
      upstreams = { ["127.0.0.1:9001"] = o1, ["127.0.0.1:9002"] = o2 },
      set = { workers = 1 },  -- one smooth-WRR sequence: the split is exact
    })
  end)

  lazy_teardown(function()
    t.stop_all()
  end)

  before_each(function()
    o1:reset()
    o2:reset()
  end)

  it("sends exactly 10 of 40 requests to origin 1 and 30 to origin 2", function()
    for i = 1, 40 do
      local res = assert(proxy:request("/n/" .. i))
      assert.equal(200, res.status)
      assert.matches("^stub[12] GET /n/" .. i .. "\n$", res.body)
    end
    assert.equal(10, o1:count())
    assert.equal(30, o2:count())
  end)

  it("tells the origin who asked, and passes the request through", function()
    local res = assert(proxy:request {
      method = "POST", path = "/orders?id=7", body = "{\"qty\":2}",
      headers = { Host = "shop.example", ["Content-Type"] = "application/json" },
    })
    assert.equal(200, res.status)
    local got = (o1:last() or o2:last())
    assert.is_table(got)
    assert.equal("POST", got.method)
    assert.equal("/orders?id=7", got.target)
    assert.equal("/orders", got.path)
    assert.equal("id=7", got.query)
    assert.equal("{\"qty\":2}", got.body)
    assert.equal("application/json", got:header("Content-Type"))
    assert.equal("shop.example", got.headers.host)
    assert.equal("127.0.0.1", got.headers["x-forwarded-for"])
    assert.equal("http", got.headers["x-forwarded-proto"])
    assert.equal("shop.example", got.headers["x-forwarded-host"])
    assert.equal("1.1 moongate", got.headers.via)
    assert.matches("^%x+$", got.headers["x-request-id"])
  end)

  it("replaces the X-Forwarded-For of a client that is not a trusted proxy", function()
    assert(proxy:request { path = "/", headers = { ["X-Forwarded-For"] = "203.0.113.9" } })
    local got = o1:last() or o2:last()
    assert.equal("127.0.0.1", got.headers["x-forwarded-for"])
  end)

  it("removes hop-by-hop headers on the way to the origin", function()
    assert(proxy:request { path = "/", headers = {
      Connection = "x-secret", ["X-Secret"] = "s", ["Proxy-Connection"] = "keep-alive",
      TE = "trailers", ["X-Kept"] = "k" } })
    local got = o1:last() or o2:last()
    assert.equal("k", got.headers["x-kept"])
    for _, name in ipairs { "x-secret", "proxy-connection", "te" } do
      assert.is_nil(got.headers[name], name .. " reached the origin")
    end
  end)

  it("removes hop-by-hop and server headers on the way back", function()
    local res = assert(proxy:request "/hop")
    assert.equal(200, res.status)
    assert.equal("hop\n", res.body)
    assert.equal("yes", res.headers["x-kept"])
    for _, name in ipairs { "server", "x-powered-by", "keep-alive", "x-internal" } do
      assert.is_nil(res.headers[name], name .. " reached the client")
    end
  end)
end)

describe("the demo proxy.lua when origins go down", function()
  local o1, o2, proxy

  lazy_setup(function()
    o1 = assert(t.origin(nil, { name = "stub1" }))  -- answers "stub1\n"
    o2 = assert(t.origin(nil, { name = "stub2" }))
    proxy = assert(t.start {
      config = CONFIG,
      upstreams = { ["127.0.0.1:9001"] = o1, ["127.0.0.1:9002"] = o2 },
      set = { workers = 1 },
    })
  end)

  lazy_teardown(function()
    t.stop_all()
  end)

  it("moves GETs on to the origin that is up", function()
    o1:stop()
    local counts = count_bodies(proxy, 12)
    assert.same({ ["stub2\n"] = 12 }, counts)
  end)

  it("moves a POST on too when its origin refuses the connection (nothing was sent)", function()
    for _ = 1, 8 do
      local res = assert(proxy:request { method = "POST", path = "/", body = "x" })
      assert.equal(200, res.status)
      assert.equal("stub2\n", res.body)
    end
  end)

  it("answers 502 with a request id, never naming a backend, when every origin is down", function()
    o2:stop()
    local res = assert(proxy:request "/")
    assert.equal(502, res.status)
    local id = res.body:match("^502 Bad Gateway\nrequest id: (%S+)\n$")
    assert.is_string(id, res.body)
    assert.equal(id, res.headers["x-request-id"])
    assert.is_nil(res.body:find("127.0.0.1", 1, true))
  end)

  it("still answers /healthz itself", function()
    local res = assert(proxy:request "/healthz")
    assert.equal(200, res.status)
    assert.equal("ok\n", res.body)
  end)
end)

describe("stopping the demo", function()
  lazy_teardown(function()
    t.stop_all()
  end)

  it("drains and exits 0 on SIGTERM, then refuses connections", function()
    local proxy = assert(t.start { config = CONFIG })
    assert.equal(200, assert(proxy:request "/").status)
    assert.equal(0, proxy:stop())
    assert.is_false(proxy:alive())
    local res, err = proxy:request { path = "/", timeout = 2 }
    assert.is_nil(res)
    assert.matches("connect", err)
  end)

  it("reports a broken config as nil and moongate's message, naming the file", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir) ~= false)
    local path = dir .. "/proxy.lua"
    local f = assert(io.open(path, "w"))
    f:write('local mg = require "moongate"\nmg.listen { "127.0.0.1:8080" }\nmg.route { pth = "/" }\n')
    f:close()
    local proxy, err = t.start { config = path }
    os.remove(path)
    os.remove(dir)
    assert.is_nil(proxy)
    assert.matches(path .. ":3: mg.route: unknown key 'pth'", err, 1, true)
  end)
end)
