-- Hostile input against dynamic upstreams (mg.upstreams, core/balance.c,
-- core/dyn.c): addresses and weights a Lua caller may pass, and a server removed
-- while a request's attempt on it is under way.
local helpers = require "spec.helpers"

describe("mg.upstreams under hostile input", function()
  local a, d, proxy

  lazy_setup(function()
    a = helpers.origin({ name = "A" })
    -- D holds a request 0.6 s, then closes without answering (a reset)
    d = helpers.origin({ name = "D", delay = 0.6, as_path = "/reset" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 2, access_log = false }
mg.listen { "127.0.0.1:${port}" }
-- /call?op=add&addr=..&w=..: one mg.upstreams call, its two results as "ok|err" text;
-- the address may carry %00 (a NUL), w may be "nil"
mg.route { path = "/call", respond = function(req)
  local op, up, addr, w = req:arg("op"), req:arg("up") or "dyn", req:arg("addr"), req:arg("w")
  addr = addr and addr:gsub("%%00", "\0")
  local ok, err
  if op == "add" then ok, err = mg.upstreams.add(up, addr, w and { weight = tonumber(w) } or nil)
  elseif op == "weight" then ok, err = mg.upstreams.set_weight(up, addr, tonumber(w))
  else ok, err = mg.upstreams[op](up, addr) end
  return 200, (ok and "ok" or "err " .. tostring(err)) .. "\n"
end }
mg.route { path = "/servers", respond = function(req)
  local out = {}
  for _, s in ipairs(mg.upstreams.servers(req:arg("up") or "dyn")) do
    out[#out + 1] = s.id .. " " .. s.addr .. " " .. s.weight .. " " .. s.state
  end
  return 200, table.concat(out, "\n") .. "\n"
end }
mg.route { path = "/rt/", upstream = mg.upstream "rt" { servers = { "${d}", "${a}" }, retry = { on = { "connect", "reset" } } },
           on = { balance = function(req) if req:arg("d") then req:set_server(1) end end } }
mg.route { upstream = mg.upstream "dyn" { servers = { "${a}" } } }
]], { vars = { a = a.addr, d = d.addr } })
  end)

  lazy_teardown(function() helpers.teardown(proxy, a, d) end)

  local function call(q)
    local res = assert(proxy:request({ path = "/call?" .. q }))
    assert.equal(200, res.status)
    return res.body
  end

  local function servers(up)
    return assert(proxy:request({ path = "/servers?up=" .. (up or "dyn") })).body
  end

  it("an address with a NUL inside is refused, not cut at the NUL", function()
    assert.equal("err mg.upstreams.add 127.0.0.9:80\0junk: bad address (want a numeric ip:port or [ip6]:port)\n",
                 call("op=add&addr=127.0.0.9:80%00junk"))
    assert.equal("0 " .. a.addr .. " 1 up\n", servers())
    proxy:assert_alive()
  end)

  it("a port must be digits: a sign or a blank before it is a bad address", function()
    for _, addr in ipairs({ "127.0.0.9:+80", "127.0.0.9:%2080", "127.0.0.9:-0", "127.0.0.9:8%200" }) do
      assert.equal("err", call("op=add&addr=" .. addr):match("^err"), addr)
      assert.matches("bad address %(want a numeric ip:port or %[ip6%]:port%)\n$", call("op=add&addr=" .. addr))
    end
    assert.equal("0 " .. a.addr .. " 1 up\n", servers())
  end)

  it("the error message carries no NUL byte and no more than 64 bytes of a long address", function()
    local body = call("op=add&addr=" .. string.rep("1", 5000) .. ":80")
    assert.is_nil(body:find("\0", 1, true))
    assert.equal("err mg.upstreams.add " .. string.rep("1", 64)
                 .. "...: bad address (want a numeric ip:port or [ip6]:port)\n", body)
    body = call("op=remove&addr=" .. string.rep("2", 5000))
    assert.equal("err mg.upstreams.remove " .. string.rep("2", 64)
                 .. "...: bad address (want a numeric ip:port or [ip6]:port)\n", body)
  end)

  it("set_weight without a weight is an error, and changes nothing", function()
    assert.equal("ok\n", call("op=weight&addr=" .. a.addr .. "&w=7"))
    assert.equal("err mg.upstreams.set_weight: weight must be an integer 1..1000, got nil\n",
                 call("op=weight&addr=" .. a.addr))
    assert.equal("0 " .. a.addr .. " 7 up\n", servers())
    assert.equal("ok\n", call("op=weight&addr=" .. a.addr .. "&w=1"))
  end)

  it("a server removed during an attempt on it: the retry still goes to the server left", function()
    local c = proxy:connect()
    assert(c:send("GET /rt/x?d=1 HTTP/1.1\r\nHost: x\r\n\r\n"))
    helpers.sleep(0.2) -- the attempt on D is under way
    assert.equal("ok\n", call("op=remove&up=rt&addr=" .. d.addr))
    local res = assert(c:response())
    c:close()
    assert.equal(200, res.status)
    assert.equal("A", helpers.echo(res).name)
    assert.equal("ok\n", call("op=add&up=rt&addr=" .. d.addr))
  end)
end)

describe("re-resolution with resolve = 0.001 and a failing DNS", function()
  it("keeps one lookup in flight per upstream, warns once, and stops at once", function()
    local a = helpers.origin({ name = "A" })
    local hosts = helpers.tmpdir() .. "/hosts"
    helpers.write_file(hosts, "127.0.0.1 one.invalid two.invalid\n")
    helpers.env.MOONGATE_HOSTS_FILE = hosts
    local proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false }
mg.listen { "127.0.0.1:${port}" }
mg.route { path = "/two/", upstream = mg.upstream "two" { servers = { "two.invalid:${p}" }, resolve = 0.001 } }
mg.route { upstream = mg.upstream "one" { servers = { "one.invalid:${p}" }, resolve = 0.001 } }
]], { vars = { p = a.port } })
    helpers.env.MOONGATE_HOSTS_FILE = nil
    -- the names leave the override: every tick now asks DNS, which has no answer
    helpers.write_file(hosts, "127.0.0.1 elsewhere.invalid\n")
    helpers.sleep(4)
    assert.equal("A", helpers.echo(assert(proxy:request({ path = "/echo" }))).name)
    local log = proxy:stderr()
    local t0 = helpers.now()
    assert.equal(0, proxy:stop(20))
    local took = helpers.now() - t0
    assert(took < 1.5, "SIGTERM took " .. took .. " s: lookups piled up")
    assert.equal(1, helpers.count(log, "upstream one: re-resolving one.invalid failed"))
    assert.equal(1, helpers.count(log, "upstream two: re-resolving two.invalid failed"))
    helpers.teardown(a)
  end)
end)

describe("re-resolution into a full upstream", function()
  it("an address that cannot join is logged with the cause", function()
    local a = helpers.origin({ name = "A" })
    local hosts = helpers.tmpdir() .. "/hosts"
    helpers.write_file(hosts, "127.0.0.1 full.invalid\n")
    helpers.env.MOONGATE_HOSTS_FILE = hosts
    local proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false }
mg.listen { "127.0.0.1:${port}" }
-- fills the upstream's ids: 131,072 in all (the name's one and these)
mg.route { path = "/fill", respond = function()
  local ok, err
  for c = 0, 131 do
    local list = {}
    for i = 0, 999 do list[#list + 1] = ("127.%d.%d.%d:9"):format(c + 2, math.floor(i / 250), i % 250 + 1) end
    ok, err = mg.upstreams.add("full", list)
    if not ok then break end
  end
  return 200, tostring(err) .. "\n"
end }
mg.route { upstream = mg.upstream "full" { servers = { "full.invalid:${p}" }, resolve = 0.05 } }
]], { vars = { p = a.port } })
    helpers.env.MOONGATE_HOSTS_FILE = nil
    assert.matches("too many servers in this upstream",
                   assert(proxy:request({ path = "/fill" })).body, 1, true)
    helpers.write_file(hosts, "127.0.0.1 full.invalid\n127.0.0.2 full.invalid\n")
    assert.truthy(helpers.wait_until(function()
      return proxy:stderr():find("upstream full: full.invalid resolves to 127.0.0.2:" .. a.port
                                 .. ", which cannot join: too many servers in this upstream", 1, true)
    end, 5))
    assert.equal("A", helpers.echo(assert(proxy:request({ path = "/echo" }))).name)
    helpers.teardown(proxy, a)
  end)
end)

describe("MOONGATE_HOSTS_FILE", function()
  it("a line longer than 512 bytes (many aliases) is read whole", function()
    local a = helpers.origin({ name = "A" })
    local hosts = helpers.tmpdir() .. "/hosts"
    local aliases = {}
    for i = 1, 60 do aliases[i] = ("alias%02d.example.invalid"):format(i) end
    -- the name after 1,400 bytes of aliases; the 512-byte cut falls inside an alias
    helpers.write_file(hosts, "127.0.0.1 " .. table.concat(aliases, " ") .. " long.invalid\n")
    helpers.env.MOONGATE_HOSTS_FILE = hosts
    local proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false }
mg.listen { "127.0.0.1:${port}" }
mg.route { upstream = mg.upstream "long" { servers = { "long.invalid:${p}" }, resolve = false } }
]], { vars = { p = a.port }, wait = false })
    helpers.env.MOONGATE_HOSTS_FILE = nil
    local ok, err = proxy:wait_ready()
    assert(ok, err)
    assert.equal("A", helpers.echo(assert(proxy:request({ path = "/echo" }))).name)
    helpers.teardown(proxy, a)
  end)
end)
