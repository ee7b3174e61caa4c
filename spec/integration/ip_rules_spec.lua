-- mg.policy.ip_rules (issue 14, docs/policies.md "ip_rules"), through the real binary:
-- prefixes matched in C through the FFI (core/cidr.c), from the connection's peer
-- (loopback addresses 127.x picked with bind) or from the X-Forwarded-For client
-- trusted_proxies lets through. The composition runner is not on this branch: each
-- route calls the policy from its own request hook, as the runner will.
local helpers = require "spec.helpers"
local socket = require "socket"

local function ipv6_loopback()
  local s = socket.tcp6()
  local ok = s and s:bind("::1", 0)
  if s then s:close() end
  return ok ~= nil
end
local V6 = ipv6_loopback()

local CONF = [[
local mg = require "moongate"
mg.config { workers = 2, access_log = false, trusted_proxies = { "127.0.0.1" } }
mg.listen { "127.0.0.1:${port}" LISTEN6 }
local ip_rules = require "moongate.policy.ip_rules"
local function guard(p) return { request = function(req) p:request(req) end } end
local function echo(req) return 200, "ok " .. tostring(req.client_ip), {} end

-- connection source: 127/8 allowed but for 127.0.0.8/30, and ::1
mg.route { path = "/conn", respond = echo, on = guard(ip_rules {
  allow = { "127.0.0.0/8", "::1" }, deny = { "127.0.0.8/30" } }) }
-- deny only: everyone else gets through; status is configurable
mg.route { path = "/deny", respond = echo, on = guard(ip_rules {
  deny = { "127.0.0.2", "::1/128" }, status = 404, body = "nope\n" }) }
-- the forwarded client, against 100,000 prefixes (50,000 IPv4 /24s, 50,000 IPv6 /48s)
local list = {}
for i = 0, 49999 do
  list[#list + 1] = ("20.%d.%d.0/24"):format(math.floor(i / 256), i % 256)
  list[#list + 1] = ("2001:db8:%x::/48"):format(i)
end
local t0 = os.clock()
local big = ip_rules { allow = list, deny = { "20.0.1.128/25", "2001:db8:1:8000::/49" }, source = "forwarded" }
io.stderr:write(("ip_rules: built %d prefixes in %.3f s (worker %d)\n"):format(#list + 2, os.clock() - t0, mg.worker_id()))
mg.route { path = "/big", respond = echo, on = guard(big) }
-- the same allow list, but from the connection: X-Forwarded-For is not looked at
mg.route { path = "/bigconn", respond = echo, on = guard(ip_rules { allow = { "20.0.0.0/8" } }) }
]]

describe("ip_rules policy", function()
  local proxy
  setup(function()
    local conf = CONF:gsub("LISTEN6", V6 and ', "[::1]:${port6}"' or "")
    proxy = helpers.proxy(conf, { ports = V6 and { "port6" } or nil })
  end)
  teardown(function() helpers.teardown(proxy) end)

  local function from(bind, path, headers)
    local c = helpers.connect(proxy.port, 5, nil, bind)
    local res = assert(c:request({ path = path, headers = headers }))
    c:close()
    return res
  end

  it("from the connection: allow 127/8, deny 127.0.0.8/30, exact at the /30's edges", function()
    assert.equal(200, from("127.0.0.1", "/conn").status)
    assert.equal(200, from("127.0.0.7", "/conn").status)
    for _, a in ipairs({ "127.0.0.8", "127.0.0.9", "127.0.0.10", "127.0.0.11" }) do
      local res = from(a, "/conn")
      assert.equal(403, res.status, a)
      assert.equal("Forbidden\n", res.body)
    end
    assert.equal(200, from("127.0.0.12", "/conn").status)
    assert.equal(200, from("127.255.255.255", "/conn").status)
  end)

  it("deny only lets everyone else through; status and body as configured", function()
    assert.equal(200, from("127.0.0.1", "/deny").status)
    assert.equal(200, from("127.0.0.3", "/deny").status)
    local res = from("127.0.0.2", "/deny")
    assert.equal(404, res.status)
    assert.equal("nope\n", res.body)
  end)

  it("IPv6 connections (::1)", function()
    if not V6 then pending("no IPv6 loopback") return end
    local c = helpers.connect(proxy.ports.port6, 5, "::1")
    assert.equal(200, assert(c:request({ path = "/conn" })).status)
    c:close()
    c = helpers.connect(proxy.ports.port6, 5, "::1")
    assert.equal(404, assert(c:request({ path = "/deny" })).status)
    c:close()
  end)

  local function fwd(ip, path)
    return from("127.0.0.1", path or "/big", { ["X-Forwarded-For"] = ip })
  end

  it("100,000 prefixes from the trusted X-Forwarded-For: IPv4 edges", function()
    print("\n" .. (proxy:stderr():match("ip_rules: built [^\n]*") or "no build time printed"))
    local cases = {
      { "20.0.0.0", 200 }, { "20.0.0.255", 200 }, { "19.255.255.255", 403 },
      { "20.195.79.0", 200 }, { "20.195.79.255", 200 }, { "20.195.80.0", 403 },
      { "21.0.0.0", 403 }, { "20.100.50.7", 200 },
      -- deny 20.0.1.128/25 inside the allowed 20.0.1.0/24: deny wins
      { "20.0.1.127", 200 }, { "20.0.1.128", 403 }, { "20.0.1.255", 403 }, { "20.0.2.0", 200 },
    }
    for _, case in ipairs(cases) do
      local res = fwd(case[1])
      assert.equal(case[2], res.status, case[1])
      if case[2] == 200 then assert.equal("ok " .. case[1], res.body) end
    end
  end)

  it("100,000 prefixes: IPv6 and IPv4-mapped edges", function()
    local cases = {
      { "2001:db8::", 200 }, { "2001:db8:0:ffff:ffff:ffff:ffff:ffff", 200 },
      { "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", 403 },
      { "2001:db8:c34f::1", 200 }, { "2001:db8:c34f:ffff:ffff:ffff:ffff:ffff", 200 },
      { "2001:db8:c350::", 403 },
      -- deny 2001:db8:1:8000::/49 inside the allowed 2001:db8:1::/48
      { "2001:db8:1:7fff:ffff:ffff:ffff:ffff", 200 }, { "2001:db8:1:8000::", 403 },
      { "::ffff:20.0.0.1", 200 }, { "::ffff:19.255.255.255", 403 }, { "::ffff:20.0.1.200", 403 },
      { "::20.0.0.1", 403 }, -- IPv4-compatible is not IPv4-mapped
    }
    for _, case in ipairs(cases) do
      assert.equal(case[2], fwd(case[1]).status, case[1])
    end
  end)

  it("source = connection does not believe X-Forwarded-For; forwarded does only from trusted proxies", function()
    assert.equal(403, fwd("20.0.0.1", "/bigconn").status)
    -- 127.0.0.3 is not a trusted proxy: its X-Forwarded-For is ignored, the client is 127.0.0.3
    assert.equal(403, from("127.0.0.3", "/big", { ["X-Forwarded-For"] = "20.0.0.1" }).status)
    assert.equal(200, fwd("20.0.0.1").status)
  end)
end)

describe("ip_rules config errors", function()
  local function load_error(cfg)
    local dir = helpers.scratch()
    local path = dir .. "/bad.lua"
    helpers.write_file(path, 'local mg = require "moongate"\nmg.listen { "127.0.0.1:1" }\n' .. cfg .. "\n")
    local out, rc = helpers.moongate({ "-t", "-c", path })
    assert.is_not.equal(0, rc)
    return out
  end
  local IR = 'require("moongate.policy.ip_rules") '

  it("names the user's file and line", function()
    assert.matches("bad.lua:3: mg.policy.ip_rules: allow[2] is not an IPv4 or IPv6 address or prefix: 10.0.0.0/33",
      load_error(IR .. '{ allow = { "10.0.0.0/8", "10.0.0.0/33" } }'), 1, true)
    assert.matches("bad.lua:3: mg.policy.ip_rules: deny[1] is not an IPv4 or IPv6 address or prefix: example.com",
      load_error(IR .. '{ deny = { "example.com" } }'), 1, true)
    assert.matches("bad.lua:3: mg.policy.ip_rules: unknown key 'alow'",
      load_error(IR .. '{ alow = { "10.0.0.0/8" } }'), 1, true)
    assert.matches("bad.lua:3: mg.policy.ip_rules: needs 'allow', 'deny' or both",
      load_error(IR .. '{ }'), 1, true)
    assert.matches("bad.lua:3: mg.policy.ip_rules: 'source' must be",
      load_error(IR .. '{ deny = {}, source = "xff" }'), 1, true)
  end)
end)
