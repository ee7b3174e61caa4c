-- Attacks on a tls_hello hook that waits (tls_hello_wait_spec.lua shows the
-- feature): clients that send more, send garbage, half-close, reset or simply
-- leave while the handshake is paused; a reload in the middle of the wait; a hook
-- that asks the same worker over mg.http (and one that asks its own listener,
-- which runs the hook again); timeouts.hook against timeouts.handshake; a PROXY
-- protocol header in front of the TLS handshake.
--
-- Raw clients send a real ClientHello, captured once from openssl s_client by a
-- listener of the spec's own (hello_bytes below).
local helpers = require "spec.helpers"
local socket = require "socket"
local signal = require "posix.signal"

local q = helpers.shell_quote

-- The first TLS record openssl s_client sends for `sni`: its ClientHello.
local function hello_bytes(sni)
  local srv = assert(socket.bind("127.0.0.1", 0))
  local _, port = srv:getsockname()
  helpers.sh("(timeout 3 openssl s_client -connect 127.0.0.1:" .. port .. " -servername " .. q(sni)
    .. " </dev/null >/dev/null 2>&1 &)")
  srv:settimeout(5)
  local c = assert(srv:accept())
  c:settimeout(5)
  local head = assert(c:receive(5))
  local body = assert(c:receive(head:byte(4) * 256 + head:byte(5)))
  c:close()
  srv:close()
  assert(head:byte(1) == 22, "not a handshake record")
  return head .. body
end

local CERTS = [=[
tls = { certs = {
  { cert = "${a}/cert.pem", key = "${a}/key.pem", name = "a" },
  { cert = "${b}/cert.pem", key = "${b}/key.pem", name = "b" },
} }]=]

local CONF = [=[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, log_level = "info", trusted_proxies = { "127.0.0.1" },
            timeouts = { handshake = 5, hook = 3 } }
mg.listen { "127.0.0.1:${port}", ]=] .. CERTS .. [=[ }
mg.listen { "127.0.0.1:${pp}", proxy_protocol = true, ]=] .. CERTS .. [=[ }
mg.listen { "127.0.0.1:${plain}" }

-- per SNI: hooks that began, hooks that got past their wait
local began, past = {}, {}
local function count(t, k) t[k] = (t[k] or 0) + 1 end
mg.on("tls_hello", function(hello)
  local sni = hello.sni or "-"
  count(began, sni)
  if sni == "wait1.test" then mg.sleep(1) count(past, sni) return "b" end
  if sni == "short.test" then mg.sleep(0.3) count(past, sni) return "b" end
  if sni == "self.test" then -- the same worker answers, after a wait of its own
    local res, err = mg.http.request { url = "http://127.0.0.1:${plain}/slow-pick", timeout = 2 }
    if not res then error("mg.http: " .. tostring(err)) end
    count(past, sni)
    return res.body
  end
  if sni == "loop.test" then -- asks its own TLS listener: that handshake runs this hook again
    local res, err = mg.http.request { url = "https://127.0.0.1:${port}/", timeout = 1,
                                       tls = { verify = false, sni = "loop.test" } }
    count(past, sni)
    if not res then error("mg.http: " .. tostring(err)) end
    return "b"
  end
  return nil
end)

mg.route { path = "/slow-pick", respond = function() mg.sleep(0.2) return 200, "b" end }
mg.route { path = "/count", respond = function(req)
  local sni = req:arg("sni")
  return 200, (began[sni] or 0) .. " " .. (past[sni] or 0)
end }
mg.route { path = "/who", respond = function(req) return 200, req.client_ip .. "\n" end }
mg.route { path = "/", respond = function() return 200, "hello\n" end }
]=]

describe("a waiting tls_hello hook under attack", function()
  local proxy, dirs = nil, {}
  local hellos = {}

  local function counts(sni)
    local res = assert(proxy:request({ path = "/count?sni=" .. sni }, proxy.ports.plain))
    local b, p = res.body:match("^(%d+) (%d+)$")
    return tonumber(b), tonumber(p)
  end

  local function s_client(sni, port, secs)
    local out, rc = helpers.sh("timeout " .. (secs or 10) .. " openssl s_client -connect 127.0.0.1:"
      .. (port or proxy.port) .. " -servername " .. q(sni) .. " </dev/null")
    return { out = out, ok = rc == 0 and out:find("\nsubject=", 1, true) ~= nil,
             cn = out:match("\nsubject=[^\n]-CN ?= ?([^,/\n]+)") }
  end

  -- a raw client that has sent its ClientHello and waits for the hook
  local function paused(sni)
    local c = proxy:connect()
    assert(c:send(hellos[sni]))
    return c
  end

  lazy_setup(function()
    dirs.a, dirs.b = helpers.tmpdir(), helpers.tmpdir()
    helpers.self_signed(dirs.a, "a.test")
    helpers.self_signed(dirs.b, "b.test")
    proxy = helpers.proxy(CONF, { ports = { "plain", "pp" }, wait_ports = { "port", "plain", "pp" },
                                  vars = { a = dirs.a, b = dirs.b } })
    for _, sni in ipairs { "wait1.test", "short.test" } do hellos[sni] = hello_bytes(sni) end
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("runs the hook once when a second ClientHello comes while it waits, then fails the handshake", function()
    local c = paused("short.test")
    socket.sleep(0.1)
    assert(c:send(hellos["short.test"])) -- the same hello again, while the first one's hook waits
    local got = c:read_until_close(5)
    c:close()
    -- the paused handshake went on after the wait (a ServerHello came), then the
    -- stray ClientHello failed it
    assert.equal(22, got:byte(1), "no ServerHello")
    assert(helpers.wait_until(function()
      return proxy:stderr():find("TLS handshake failed", 1, true) or proxy:stderr():find("TLS error", 1, true)
    end, 3), proxy:stderr())
    assert.same({ 1, 1 }, { counts("short.test") })
    proxy:assert_alive()
  end)

  it("fails the handshake on garbage sent while the hook waits, after the wait", function()
    local b0, p0 = counts("short.test")
    local c = paused("short.test")
    socket.sleep(0.05)
    assert(c:send("GET / HTTP/1.1\r\nHost: x\r\n\r\n" .. ("\0"):rep(1000)))
    local got = c:read_until_close(5)
    c:close()
    assert.truthy(#got > 0)
    assert.same({ b0 + 1, p0 + 1 }, { counts("short.test") })
    assert.is_true(s_client("short.test").ok)
    proxy:assert_alive()
  end)

  it("closes at once a client that sends more than 64 KiB while the hook waits (the hook is dropped)", function()
    local b0, p0 = counts("wait1.test")
    local c = paused("wait1.test")
    local t0 = socket.gettime()
    c:send(("x"):rep(80 * 1024), 2)
    assert.truthy(c:closed(3))
    assert.is_true(socket.gettime() - t0 < 0.9)
    c:close()
    assert(helpers.wait_until(function()
      return proxy:stderr():find("more than 64 KiB of input while the handshake waited", 1, true)
    end, 3), proxy:stderr())
    socket.sleep(1.2) -- past the hook's sleep: it did not go on
    assert.same({ b0 + 1, p0 }, { counts("wait1.test") })
    proxy:assert_alive()
  end)

  it("cancels the hook of a client that half-closes or resets while it waits", function()
    local b0, p0 = counts("wait1.test")
    local n0 = helpers.count(proxy:stderr(), "the client closed while a tls_hello hook waited")
    local fin = paused("wait1.test")
    local rst = paused("wait1.test")
    socket.sleep(0.1)
    fin.sock:shutdown("send")
    rst.sock:setoption("linger", { on = true, timeout = 0 })
    rst:close()
    assert.truthy(fin:closed(3))
    fin:close()
    socket.sleep(1.2) -- past the hooks' sleep: neither went on
    assert.same({ b0 + 2, p0 }, { counts("wait1.test") })
    assert.equal(n0 + 1, helpers.count(proxy:stderr(), "the client closed while a tls_hello hook waited"))
    proxy:assert_alive()
  end)

  it("does not grow while 1,000 clients leave in the middle of the wait", function()
    local function leave(n)
      for _ = 1, n / 50 do
        local batch = {}
        for i = 1, 50 do batch[i] = paused("wait1.test") end
        socket.sleep(0.02) -- the hooks have begun their wait
        for i = 1, 50 do batch[i]:close() end
      end
    end
    leave(100)
    socket.sleep(0.5)
    local rss0 = proxy:rss()
    local b0, p0 = counts("wait1.test")
    leave(1000)
    socket.sleep(1.2)
    proxy:assert_rss_flat(rss0, 4096)
    assert.same({ b0 + 1000, p0 }, { counts("wait1.test") })
    assert.is_true(s_client("short.test").ok)
    proxy:assert_alive()
  end)

  it("may wait on mg.http to the same worker, for many handshakes at once", function()
    local dir = helpers.tmpdir()
    for i = 1, 10 do
      helpers.sh("(timeout 10 openssl s_client -connect 127.0.0.1:" .. proxy.port .. " -servername self.test"
        .. " </dev/null > " .. q(dir .. "/" .. i) .. " 2>&1; echo done >> " .. q(dir .. "/" .. i) .. ") >/dev/null 2>&1 &")
    end
    assert(helpers.wait_until(function()
      for i = 1, 10 do
        if not (helpers.read_file(dir .. "/" .. i) or ""):find("\ndone\n", 1, true) then return false end
      end
      return true
    end, 8))
    for i = 1, 10 do
      local out = helpers.read_file(dir .. "/" .. i)
      assert.truthy(out:match("\nsubject=[^\n]-CN ?= ?b%.test"), out)
    end
    proxy:assert_alive()
  end)

  it("survives a hook that asks its own TLS listener (each handshake starts another) until timeouts end it", function()
    local r = s_client("loop.test", nil, 12)
    assert.is_false(r.ok) -- the chain ends in failures, the first hook refuses
    proxy:assert_alive()
    -- everything the chain opened is closed again: the worker still serves
    assert(helpers.wait_until(function() return s_client("short.test").ok end, 8))
    local res = assert(proxy:request({ path = "/" }, proxy.ports.plain))
    assert.equal(200, res.status)
  end)

  it("reads the PROXY header, then pauses the handshake, then serves the header's client", function()
    local res, out = helpers.curl({ "-k", "--haproxy-protocol", "--resolve", "short.test:" .. proxy.ports.pp .. ":127.0.0.1",
                                    "https://short.test:" .. proxy.ports.pp .. "/who" }, { max_time = 10 })
    assert.truthy(res, out)
    assert.equal(200, res.status)
    assert.equal("127.0.0.1\n", res.body)
    -- the header and the hello in one write, then the client leaves mid-wait
    local b0, p0 = counts("wait1.test")
    local c = proxy:connect(proxy.ports.pp)
    assert(c:send("PROXY TCP4 192.0.2.7 127.0.0.1 4000 443\r\n" .. hellos["wait1.test"]))
    socket.sleep(0.1)
    c:close()
    assert(helpers.wait_until(function()
      return proxy:stderr():find("192.0.2.7:4000: the client closed while a tls_hello hook waited", 1, true)
    end, 3), proxy:stderr())
    socket.sleep(1.2)
    assert.same({ b0 + 1, p0 }, { counts("wait1.test") })
    proxy:assert_alive()
  end)
end)

describe("a tls_hello hook that waits through a reload", function()
  local proxy, dirs, text = nil, {}, nil

  local function conf(pick)
    return [=[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, log_level = "info", timeouts = { handshake = 5, hook = 5 } }
mg.listen { "127.0.0.1:${port}", deferred = false, ]=] .. CERTS .. [=[ }
mg.on("tls_hello", function(hello)
  if hello.sni == "slow.test" then mg.sleep(1) end
  return "]=] .. pick .. [=["
end)
mg.route { path = "/", respond = function() return 200, "hello\n" end }
]=]
  end

  lazy_setup(function()
    dirs.a, dirs.b = helpers.tmpdir(), helpers.tmpdir()
    helpers.self_signed(dirs.a, "a.test")
    helpers.self_signed(dirs.b, "b.test")
    text = conf("a")
    proxy = helpers.proxy(text, { vars = { a = dirs.a, b = dirs.b } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("finishes the waiting handshake with the old configuration's pick; new ones get the new", function()
    local dir = helpers.tmpdir()
    helpers.sh("(timeout 10 openssl s_client -connect 127.0.0.1:" .. proxy.port .. " -servername slow.test"
      .. " </dev/null > " .. q(dir .. "/slow") .. " 2>&1; echo done >> " .. q(dir .. "/slow") .. ") >/dev/null 2>&1 &")
    socket.sleep(0.3)
    helpers.write_file(proxy.conf, helpers.expand(conf("b"), { port = proxy.port, a = dirs.a, b = dirs.b }))
    proxy:signal(signal.SIGHUP)
    assert(helpers.wait_until(function()
      local out = helpers.sh("timeout 5 openssl s_client -connect 127.0.0.1:" .. proxy.port
        .. " -servername new.test </dev/null")
      return out:match("\nsubject=[^\n]-CN ?= ?b%.test")
    end, 5), proxy:stderr())
    assert(helpers.wait_until(function()
      return (helpers.read_file(dir .. "/slow") or ""):find("\ndone\n", 1, true)
    end, 5))
    local slow = helpers.read_file(dir .. "/slow")
    assert.truthy(slow:match("\nsubject=[^\n]-CN ?= ?a%.test"), slow)
    proxy:assert_alive()
  end)

  it("runs the hook of the configuration it was accepted on when the hello comes after a reload", function()
    -- a connection accepted under a configuration whose hook picks "b"; the
    -- reload brings one whose hook refuses; then the ClientHello comes (openssl
    -- s_client through a relay of the spec's that connected before the reload).
    -- The connection holds the old configuration's certificates: the old hook
    -- decides ("b"), not the new one (refused), and it is not skipped (SNI would
    -- pick the default, "a")
    helpers.write_file(proxy.conf, helpers.expand(conf("b"), { port = proxy.port, a = dirs.a, b = dirs.b }))
    proxy:signal(signal.SIGHUP)
    local function cn(sni)
      local out = helpers.sh("timeout 5 openssl s_client -connect 127.0.0.1:" .. proxy.port
        .. " -servername " .. sni .. " </dev/null")
      return out:match("\nsubject=[^\n]-CN ?= ?([^,/\n]+)")
    end
    assert(helpers.wait_until(function() return cn("x.test") == "b.test" end, 5), proxy:stderr())
    local up = assert(socket.connect("127.0.0.1", proxy.port))
    socket.sleep(0.1)
    helpers.write_file(proxy.conf, helpers.expand(conf("false"):gsub('return "false"', "return false"),
      { port = proxy.port, a = dirs.a, b = dirs.b }))
    proxy:signal(signal.SIGHUP)
    assert(helpers.wait_until(function() return cn("x.test") == nil end, 5), proxy:stderr())
    -- the relay: openssl s_client -> srv -> up (accepted before the reload)
    local srv = assert(socket.bind("127.0.0.1", 0))
    local _, rport = srv:getsockname()
    local out = helpers.tmpdir() .. "/out"
    helpers.sh("(timeout 5 openssl s_client -connect 127.0.0.1:" .. rport .. " -servername x.test </dev/null > "
      .. q(out) .. " 2>&1; echo done >> " .. q(out) .. ") >/dev/null 2>&1 &")
    srv:settimeout(5)
    local down = assert(srv:accept())
    srv:close()
    down:settimeout(0)
    up:settimeout(0)
    local deadline = socket.gettime() + 6
    local open = 2
    while open == 2 and socket.gettime() < deadline do
      local ready = socket.select({ down, up }, nil, 0.1)
      for _, s in ipairs(ready) do
        local data, err, part = s:receive(16384)
        data = data or part
        if data and #data > 0 then (s == down and up or down):send(data) end
        if err == "closed" then open = 1 end
      end
    end
    down:close()
    up:close()
    assert(helpers.wait_until(function() return (helpers.read_file(out) or ""):find("\ndone\n", 1, true) end, 5))
    local got = helpers.read_file(out)
    assert.truthy(got:match("\nsubject=[^\n]-CN ?= ?b%.test"), got)
    proxy:assert_alive()
  end)
end)

describe("a tls_hello hook that waits while the worker stops", function()
  it("exits 0 on SIGTERM, nothing leaked, the waiting handshake closed", function()
    local dir = helpers.tmpdir()
    helpers.self_signed(dir, "a.test")
    local proxy = helpers.proxy([=[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, log_level = "info", timeouts = { drain = 3, hook = 10 } }
mg.listen { "127.0.0.1:${port}", tls = { cert = "${dir}/cert.pem", key = "${dir}/key.pem" } }
mg.on("tls_hello", function(hello) mg.sleep(5) return nil end)
mg.route { path = "/", respond = function() return 200, "hello\n" end }
]=], { vars = { dir = dir } })
    local clients = {}
    for i = 1, 5 do
      clients[i] = proxy:connect()
      assert(clients[i]:send(hello_bytes("a.test")))
    end
    socket.sleep(0.2)
    local t0 = socket.gettime()
    local ok, err = pcall(proxy.stop, proxy, 8)
    assert(ok, err)
    assert.equal("exited", proxy.exit_how)
    assert.equal(0, proxy.exit_code)
    assert.is_true(socket.gettime() - t0 < 4.5)
    for i = 1, 5 do
      assert.truthy(clients[i]:closed(1))
      clients[i]:close()
    end
    helpers.teardown(proxy)
  end)
end)

describe("timeouts.hook and timeouts.handshake, equal, on a waiting tls_hello hook", function()
  local proxy

  lazy_setup(function()
    local dir = helpers.tmpdir()
    helpers.self_signed(dir, "a.test")
    proxy = helpers.proxy([=[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, log_level = "info", timeouts = { handshake = 1, hook = 1 } }
mg.listen { "127.0.0.1:${port}", tls = { cert = "${dir}/cert.pem", key = "${dir}/key.pem" } }
mg.on("tls_hello", function(hello)
  if hello.sni == "slow.test" then mg.sleep(5) end
  return nil
end)
mg.route { path = "/", respond = function() return 200, "hello\n" end }
]=], { vars = { dir = dir } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("closes the connection once, at 1 s, whichever fires first", function()
    for _ = 1, 5 do
      local t0 = socket.gettime()
      local out, rc = helpers.sh("timeout 10 openssl s_client -connect 127.0.0.1:" .. proxy.port
        .. " -servername slow.test </dev/null")
      local took = socket.gettime() - t0
      assert.is_false(rc == 0 and out:find("\nsubject=", 1, true) ~= nil, out)
      assert.is_true(took >= 0.9 and took < 2.5, "closed after " .. took .. " s")
    end
    local err = proxy:stderr()
    local n = helpers.count(err, "TLS handshake timeout (a tls_hello hook waited: cancelled)")
      + helpers.count(err, "tls_hello hook still waiting after timeouts.hook")
    assert.equal(5, n, err)
    local fine, rc2 = helpers.sh("timeout 10 openssl s_client -connect 127.0.0.1:" .. proxy.port
      .. " -servername a.test </dev/null")
    assert.equal(0, rc2, fine)
    proxy:assert_alive()
  end)
end)
