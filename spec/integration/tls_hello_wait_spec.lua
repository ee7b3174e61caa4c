-- A tls_hello hook that waits (mg.sleep, mg.http): the handshake pauses where
-- the certificate is chosen (BoringSSL's select_certificate_cb asks to be called
-- again) and goes on with the hook's pick once its wait is over; the worker
-- serves other connections meanwhile. timeouts.hook closes a connection whose
-- hook waits too long; a client that goes away while the hook waits cancels it.
--
-- Two self-signed certificates, a.test (the default) and b.test, named "a" and
-- "b"; the hook decides by SNI. The client is openssl s_client (every call
-- bounded by `timeout`) and curl.
local helpers = require "spec.helpers"
local socket = require "socket"

local q = helpers.shell_quote

local CONF = [=[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, log_level = "info",
            timeouts = { handshake = 5, hook = 2 } }
mg.listen { "127.0.0.1:${port}", tls = { certs = {
  { cert = "${a}/cert.pem", key = "${a}/key.pem", name = "a" },
  { cert = "${b}/cert.pem", key = "${b}/key.pem", name = "b" },
} } }
mg.listen { "127.0.0.1:${plain}" }

local after = {} -- SNI names whose hook got past its wait
mg.on("tls_hello", function(hello)
  local sni = hello.sni
  if sni == "sleep-b.test" then mg.sleep(0.2) after[#after + 1] = sni return "b" end
  if sni == "sleep-2.test" then mg.sleep(0.2) after[#after + 1] = sni return 2 end
  if sni == "sleep-refuse.test" then mg.sleep(0.2) after[#after + 1] = sni return false end
  if sni == "sleep-nil.test" then mg.sleep(0.2) after[#after + 1] = sni return nil end
  if sni == "twice.test" then mg.sleep(0.1) mg.sleep(0.1) after[#after + 1] = sni return "b" end
  if sni == "slow.test" then mg.sleep(1) after[#after + 1] = sni return "b" end
  if sni == "forever.test" then mg.sleep(10) after[#after + 1] = sni return "b" end
  if sni == "fails.test" then mg.sleep(0.1) error("the hook broke") end
  if sni == "http.test" then
    local res, err = mg.http.request { url = "http://127.0.0.1:${plain}/pick" }
    if not res then error("mg.http: " .. tostring(err)) end
    after[#after + 1] = sni
    return res.body
  end
  return nil
end)

mg.route { path = "/pick", respond = function() return 200, "b" end }
mg.route { path = "/after", respond = function()
  return 200, table.concat(after, "\n") .. "\n", { ["content-type"] = "text/plain" }
end }
mg.route { path = "/", respond = function() return 200, "hello\n" end }
]=]

describe("a tls_hello hook that waits", function()
  local proxy, dirs = nil, {}

  local function s_client(sni, secs)
    local cmd = "timeout " .. (secs or 10) .. " openssl s_client -connect 127.0.0.1:" .. proxy.port
      .. " -servername " .. q(sni) .. " </dev/null"
    local out, rc = helpers.sh(cmd)
    return {
      out = out, rc = rc,
      ok = rc == 0 and out:find("\nsubject=", 1, true) ~= nil,
      cn = out:match("\nsubject=[^\n]-CN ?= ?([^,/\n]+)"),
    }
  end

  local function https(host, path)
    return helpers.curl({ "-k", "--resolve", host .. ":" .. proxy.port .. ":127.0.0.1",
                          "https://" .. host .. ":" .. proxy.port .. path }, { max_time = 10 })
  end

  local function after()
    local res = assert(proxy:request({ path = "/after" }, proxy.ports.plain))
    return res.body
  end

  lazy_setup(function()
    dirs.a, dirs.b = helpers.tmpdir(), helpers.tmpdir()
    helpers.self_signed(dirs.a, "a.test")
    helpers.self_signed(dirs.b, "b.test")
    proxy = helpers.proxy(CONF, { ports = { "plain" }, wait_ports = { "port", "plain" },
                                  vars = { a = dirs.a, b = dirs.b } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("completes the handshake with the certificate it picks after mg.sleep (by name or index)", function()
    local t0 = socket.gettime()
    local r = s_client("sleep-b.test")
    assert.is_true(r.ok, r.out)
    assert.equal("b.test", r.cn)
    assert.is_true(socket.gettime() - t0 >= 0.2)
    local two = s_client("sleep-2.test")
    assert.is_true(two.ok, two.out)
    assert.equal("b.test", two.cn)
    local twice = s_client("twice.test") -- waits twice before it answers
    assert.is_true(twice.ok, twice.out)
    assert.equal("b.test", twice.cn)
    -- nil after the wait: SNI decides (no certificate names it: the default)
    local none = s_client("sleep-nil.test")
    assert.is_true(none.ok, none.out)
    assert.equal("a.test", none.cn)
  end)

  it("serves a request over the connection whose hook waited", function()
    local res, out = https("sleep-b.test", "/")
    assert.truthy(res, out)
    assert.equal(200, res.status)
    assert.equal("hello\n", res.body)
  end)

  it("refuses the handshake when it returns false after its wait", function()
    local r = s_client("sleep-refuse.test")
    assert.is_false(r.ok, r.out)
    assert.truthy(after():find("sleep-refuse.test", 1, true))
    assert(helpers.wait_until(function()
      return proxy:stderr():find("tls_hello hook refused the handshake (SNI sleep-refuse.test)", 1, true)
    end, 3), proxy:stderr())
  end)

  it("refuses the handshake when it fails after its wait", function()
    local r = s_client("fails.test")
    assert.is_false(r.ok, r.out)
    assert(helpers.wait_until(function()
      return proxy:stderr():find("tls_hello hook failed: [^\n]*the hook broke")
    end, 3), proxy:stderr())
  end)

  it("may call mg.http (the worker answers that request meanwhile)", function()
    local r = s_client("http.test")
    assert.is_true(r.ok, r.out)
    assert.equal("b.test", r.cn)
  end)

  it("lets the worker serve other connections while one hook sleeps 1 s", function()
    local dir = helpers.tmpdir()
    local t0 = socket.gettime()
    -- the slow handshake in the background; its output goes to a file
    helpers.sh("(timeout 10 openssl s_client -connect 127.0.0.1:" .. proxy.port
      .. " -servername slow.test </dev/null > " .. q(dir .. "/slow.out") .. " 2>&1; echo done >> "
      .. q(dir .. "/slow.out") .. ") >/dev/null 2>&1 &")
    socket.sleep(0.15)
    local res, out = https("a.test", "/")
    local fast = socket.gettime() - t0
    assert.truthy(res, out)
    assert.equal(200, res.status)
    assert.is_true(fast < 0.9, "the other connection took " .. fast .. " s")
    assert(helpers.wait_until(function()
      return (helpers.read_file(dir .. "/slow.out") or ""):find("\ndone\n", 1, true)
    end, 5))
    local slow = helpers.read_file(dir .. "/slow.out")
    assert.truthy(slow:match("\nsubject=[^\n]-CN ?= ?b%.test"), slow)
    assert.is_true(socket.gettime() - t0 >= 1.0)
  end)

  it("closes the connection when the hook waits longer than timeouts.hook, naming tls_hello", function()
    local t0 = socket.gettime()
    local r = s_client("forever.test")
    local took = socket.gettime() - t0
    assert.is_false(r.ok, r.out)
    assert.is_true(took >= 1.9 and took < 4.5, "closed after " .. took .. " s")
    assert(helpers.wait_until(function()
      return proxy:stderr():find("tls_hello hook still waiting after timeouts.hook", 1, true)
    end, 3), proxy:stderr())
    assert.is_nil(after():find("forever.test", 1, true)) -- dropped where it waited
    local b = s_client("sleep-b.test") -- the worker goes on
    assert.is_true(b.ok, b.out)
  end)

  it("cancels the hook of a client that closes while it waits; the next connection is fine", function()
    local before = helpers.count(after(), "slow.test")
    for _ = 1, 3 do
      -- s_client is killed after 0.3 s: its socket closes while the hook sleeps 1 s
      local r = s_client("slow.test", 0.3)
      assert.is_false(r.ok, r.out)
    end
    assert(helpers.wait_until(function()
      return helpers.count(proxy:stderr(), "the client closed while a tls_hello hook waited") >= 3
    end, 3), proxy:stderr())
    socket.sleep(1.2) -- past the hooks' sleep: none went on
    local b = s_client("sleep-b.test")
    assert.is_true(b.ok, b.out)
    assert.equal("b.test", b.cn)
    local res, out = https("a.test", "/")
    assert.truthy(res, out)
    assert.equal(200, res.status)
    socket.sleep(0.2)
    assert.equal(before, helpers.count(after(), "slow.test"))
    proxy:assert_alive()
  end)
end)

describe("a tls_hello hook that waits past timeouts.handshake", function()
  local proxy

  lazy_setup(function()
    local dir = helpers.tmpdir()
    helpers.self_signed(dir, "a.test")
    proxy = helpers.proxy([=[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, log_level = "info", timeouts = { handshake = 0.5, hook = 10 } }
mg.listen { "127.0.0.1:${port}", tls = { cert = "${dir}/cert.pem", key = "${dir}/key.pem" } }
mg.on("tls_hello", function(hello)
  if hello.sni == "slow.test" then mg.sleep(3) end
  return nil
end)
mg.route { path = "/", respond = function() return 200, "hello\n" end }
]=], { vars = { dir = dir } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("closes the connection at the handshake timeout, cancelling the hook", function()
    local socket = require "socket"
    local t0 = socket.gettime()
    local out, rc = helpers.sh("timeout 10 openssl s_client -connect 127.0.0.1:" .. proxy.port
      .. " -servername slow.test </dev/null")
    local took = socket.gettime() - t0
    assert.is_false(rc == 0 and out:find("\nsubject=", 1, true) ~= nil, out)
    assert.is_true(took >= 0.4 and took < 2.5, "closed after " .. took .. " s")
    assert(helpers.wait_until(function()
      return proxy:stderr():find("TLS handshake timeout (a tls_hello hook waited: cancelled)", 1, true)
    end, 3), proxy:stderr())
    local fine, rc2 = helpers.sh("timeout 10 openssl s_client -connect 127.0.0.1:" .. proxy.port
      .. " -servername a.test </dev/null")
    assert.equal(0, rc2, fine)
    proxy:assert_alive()
  end)
end)
