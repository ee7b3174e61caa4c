-- The TLS policy of listeners: the default profile (Mozilla "intermediate":
-- TLS 1.2 with ECDHE and AEAD suites only, the server's order, TLS 1.3),
-- tls.profile "modern" and "compatible", an explicit tls.ciphers, session and
-- ticket lifetimes, the hsts option, and what scanners (sslscan always,
-- testssl.sh when MG_TESTSSL=1: it takes 20-60 s) find on a listener with
-- default settings.
--
-- Two self-signed certificates made with the openssl CLI: rsa.test (RSA 2048)
-- and ec.test (ECDSA P-256), both on every TLS listener, picked by SNI. The
-- clients are openssl s_client, curl, sslscan and testssl.sh, over loopback,
-- each bounded by `timeout`.
local helpers = require "spec.helpers"
local signal = require "posix.signal"

local q = helpers.shell_quote
local sh = helpers.sh
local count = helpers.count

local function u16(n) return string.char(math.floor(n / 256) % 256, n % 256) end
local function u24(n) return string.char(math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256) end

--- Sends a TLS 1.2 ClientHello offering exactly `suites` (IANA numbers) to
-- 127.0.0.1:port, built here byte by byte: the openssl CLI cannot offer 3DES
-- any more, whatever it is told. Returns "hello" and the suite the
-- ServerHello chose, or "alert" and the alert's description (40: handshake
-- failure), or nil and what happened.
local function client_hello(port, sni, suites)
  local cs = {}
  for i, n in ipairs(suites) do cs[i] = u16(n) end
  cs = table.concat(cs)
  local function ext(t, data) return u16(t) .. u16(#data) .. data end
  local name = u16(#sni + 3) .. "\0" .. u16(#sni) .. sni
  local exts = ext(0, name)
    .. ext(10, u16(6) .. u16(0x001d) .. u16(0x0017) .. u16(0x0018))       -- groups: x25519, P-256, P-384
    .. ext(11, "\1\0")                                                    -- point formats: uncompressed
    .. ext(13, u16(8) .. u16(0x0401) .. u16(0x0804) .. u16(0x0403) .. u16(0x0501)) -- signature algorithms
  local random = string.rep("\42", 32)
  local body = "\3\3" .. random .. "\0" .. u16(#cs) .. cs .. "\1\0" .. u16(#exts) .. exts
  local hs = "\1" .. u24(#body) .. body
  local c = helpers.connect(port)
  c:send("\22\3\1" .. u16(#hs) .. hs)
  local deadline = helpers.now() + 10
  local head, err = c:take(5, deadline)
  if not head then c:close() return nil, "no answer: " .. tostring(err) end
  local len = head:byte(4) * 256 + head:byte(5)
  local rec = c:take(len, deadline)
  c:close()
  if not rec then return nil, "short record" end
  if head:byte(1) == 21 then return "alert", rec:byte(2) end
  if head:byte(1) == 22 and rec:byte(1) == 2 then
    local sid = rec:byte(39)
    return "hello", rec:byte(40 + sid) * 256 + rec:byte(41 + sid)
  end
  return nil, "record type " .. head:byte(1)
end

local GEN = [=[
set -e
openssl req -x509 -newkey rsa:2048 -nodes -keyout rsa.key -out rsa.pem -subj /CN=rsa.test \
  -addext subjectAltName=DNS:rsa.test -days 30 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ec.key -out ec.pem \
  -subj /CN=ec.test -addext subjectAltName=DNS:ec.test -days 30 2>/dev/null
]=]

local CONF = [=[
local mg = require "moongate"
mg.config { workers = 1, access_log = false }
local certs = { { cert = "rsa.pem", key = "rsa.key" }, { cert = "ec.pem", key = "ec.key" } }

mg.listen { "127.0.0.1:${port}", tls = { certs = certs } }                -- every default
mg.listen { "127.0.0.1:${modern}", tls = { certs = certs, profile = "modern" } }
mg.listen { "127.0.0.1:${compat}", tls = { certs = certs, profile = "compatible" } }
mg.listen { "127.0.0.1:${explicit}", tls = { certs = certs,
                                             ciphers = "ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES256-GCM-SHA384" } }
mg.listen { "127.0.0.1:${short}", tls = { certs = certs, session_timeout = 600 } }
mg.listen { "127.0.0.1:${hsts}", name = "hsts", tls = { certs = certs },
            hsts = { max_age = 31536000, subdomains = true, preload = true } }
mg.listen { "127.0.0.1:${hsts2}", name = "hsts2", tls = { certs = certs }, hsts = { max_age = 600 } }
mg.listen { "127.0.0.1:${plain}", name = "plain" }

-- the origin: moongate's own plain listener, answering with an HSTS header of its own
mg.route { listener = "plain", path = "/", respond = { status = 200, body = "origin\n",
           headers = { ["Strict-Transport-Security"] = "max-age=5" } } }
local origin = mg.upstream "origin" { servers = { "127.0.0.1:${plain}" } }

mg.route { path = "/proxied", upstream = origin }
mg.route { path = "/hooked", upstream = origin, on = { response = function(req, res)
  res:set_header("Strict-Transport-Security", "max-age=7")
end } }
mg.route { path = "/own", respond = { status = 200, body = "own\n",
           headers = { ["strict-transport-security"] = "max-age=1", ["x-own"] = "1" } } }
mg.route { path = "/lua", respond = function(req)
  return 200, "lua\n", { ["Strict-Transport-Security"] = "max-age=2", ["X-Lua"] = "1" }
end }
mg.route { path = "/", respond = { status = 200, body = "hello\n" } }
]=]

local PORTS = { "modern", "compat", "explicit", "short", "hsts", "hsts2", "plain" }

describe("TLS policy", function()
  local proxy, dir

  -- openssl s_client to 127.0.0.1:port with SNI `sni` and extra arguments;
  -- stdin is closed at once (just the handshake) unless `input` (a shell
  -- command) feeds it. Returns out, ok (handshake done), cipher, version.
  local function s_client(port, sni, args, input)
    local argv = { "timeout", "10", "openssl", "s_client", "-connect", "127.0.0.1:" .. port,
                   "-servername", sni }
    for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
    local t = {}
    for i, a in ipairs(argv) do t[i] = q(a) end
    local out, rc = sh((input or "true") .. " | " .. table.concat(t, " "))
    local version, cipher = out:match("\nNew, (TLSv[%d.]+), Cipher is ([%w%-_]+)")
    return { out = out, ok = rc == 0 and version ~= nil, version = version, cipher = cipher }
  end

  local function https(port, path)
    return assert(helpers.curl({ "--insecure", "--resolve", "rsa.test:" .. port .. ":127.0.0.1",
                                 "https://rsa.test:" .. port .. path }, { max_time = 10 }))
  end

  -- every value of a response header, in order
  local function values(res, name)
    local t = {}
    for _, h in ipairs(res.headers) do
      if h[1]:lower() == name then t[#t + 1] = h[2] end
    end
    return t
  end

  lazy_setup(function()
    dir = helpers.tmpdir()
    helpers.write_file(dir .. "/gen.sh", GEN)
    local out, rc = sh("cd " .. q(dir) .. " && timeout 30 sh gen.sh")
    assert(rc == 0, "making the test certificates failed:\n" .. tostring(out))
    local wait = { "port" }
    for _, n in ipairs(PORTS) do wait[#wait + 1] = n end
    proxy = helpers.proxy(CONF, { dir = dir, ports = PORTS, wait_ports = wait })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  describe("default profile (intermediate)", function()
    it("refuses 3DES, CBC-SHA and RSA key exchange suites over TLS 1.2", function()
      -- TLS_RSA_WITH_3DES_EDE_CBC_SHA and TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA, alone
      for _, suite in ipairs({ 0x000a, 0xc012 }) do
        local how, what = client_hello(proxy.port, "rsa.test", { suite })
        assert.equal("alert", how, string.format("suite 0x%04x: %s %s", suite, tostring(how), tostring(what)))
        assert.equal(40, what) -- handshake_failure
      end
      -- the same hello with an AEAD suite next to it: that one is chosen
      local how, what = client_hello(proxy.port, "rsa.test", { 0x000a, 0xc02f })
      assert.equal("hello", how, tostring(what))
      assert.equal(0xc02f, what) -- TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
      for _, c in ipairs({ "ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA",
                           "AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-SHA" }) do
        local r = s_client(proxy.port, "rsa.test", { "-tls1_2", "-cipher", c })
        assert.is_false(r.ok, c .. " was accepted:\n" .. r.out)
        assert.truthy(r.out:find("handshake failure", 1, true), c .. ": " .. r.out)
      end
      local e = s_client(proxy.port, "ec.test", { "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA" })
      assert.is_false(e.ok, e.out)
    end)

    it("accepts ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA AES-GCM and ChaCha20 over TLS 1.2", function()
      local e = s_client(proxy.port, "ec.test", { "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256" })
      assert.is_true(e.ok, e.out)
      assert.equal("ECDHE-ECDSA-AES128-GCM-SHA256", e.cipher)
      for _, c in ipairs({ "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
                           "ECDHE-RSA-CHACHA20-POLY1305" }) do
        local r = s_client(proxy.port, "rsa.test", { "-tls1_2", "-cipher", c })
        assert.is_true(r.ok, c .. ": " .. r.out)
        assert.equal(c, r.cipher)
      end
    end)

    it("chooses by its own order, not the client's", function()
      -- the client lists AES-256 and ChaCha20 before AES-128: the server's first wins
      local r = s_client(proxy.port, "rsa.test", { "-tls1_2", "-cipher",
        "ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256" })
      assert.is_true(r.ok, r.out)
      assert.equal("ECDHE-RSA-AES128-GCM-SHA256", r.cipher)
      local e = s_client(proxy.port, "ec.test", { "-tls1_2", "-cipher",
        "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256" })
      assert.is_true(e.ok, e.out)
      assert.equal("ECDHE-ECDSA-AES128-GCM-SHA256", e.cipher)
    end)

    it("speaks TLS 1.3, and refuses TLS 1.1 and 1.0", function()
      local r = s_client(proxy.port, "rsa.test", { "-tls1_3" })
      assert.is_true(r.ok, r.out)
      assert.equal("TLSv1.3", r.version)
      for _, flag in ipairs({ "-tls1_1", "-tls1" }) do
        local old = s_client(proxy.port, "rsa.test", { flag, "-cipher", "DEFAULT@SECLEVEL=0" })
        assert.is_false(old.ok, flag .. ": " .. old.out)
      end
    end)

    -- openssl sess_id prints the lifetime the server announced in its
    -- NewSessionTicket (TLS 1.2) or the first of its tickets (TLS 1.3)
    local function ticket_hint(port, version)
      local sess = helpers.tmpdir() .. "/session.pem"
      local r = s_client(port, "rsa.test", { version, "-sess_out", sess }, "sleep 0.5")
      assert.is_true(r.ok, r.out)
      local out = sh("openssl sess_id -in " .. q(sess) .. " -noout -text")
      return tonumber(out:match("ticket lifetime hint: (%d+)")), out
    end

    -- BoringSSL announces what is left of the session's life, in whole seconds:
    -- a handshake that straddles a second boundary announces one second less
    local function assert_hint(want, got, out)
      assert(got == want or got == want - 1, "ticket lifetime hint " .. tostring(got) .. ", expected "
        .. want .. " (or " .. (want - 1) .. "):\n" .. tostring(out))
    end

    it("announces session tickets for at most a day: 2 h with TLS 1.2, 24 h with TLS 1.3", function()
      local h12, out12 = ticket_hint(proxy.port, "-tls1_2")
      assert_hint(7200, h12, out12)
      local h13, out13 = ticket_hint(proxy.port, "-tls1_3")
      assert_hint(86400, h13, out13)
    end)

    it("takes session_timeout for both versions", function()
      local h12, out12 = ticket_hint(proxy.ports.short, "-tls1_2")
      assert_hint(600, h12, out12)
      local h13, out13 = ticket_hint(proxy.ports.short, "-tls1_3")
      assert_hint(600, h13, out13)
    end)
  end)

  describe("profiles and ciphers", function()
    it("modern refuses TLS 1.2 and speaks TLS 1.3", function()
      local r = s_client(proxy.ports.modern, "rsa.test", { "-tls1_2" })
      assert.is_false(r.ok, r.out)
      assert.truthy(r.out:find("alert protocol version", 1, true), r.out)
      local v13 = s_client(proxy.ports.modern, "ec.test", { "-tls1_3" })
      assert.is_true(v13.ok, v13.out)
      assert.equal("TLSv1.3", v13.version)
    end)

    it("compatible also accepts ECDHE CBC suites, still prefers AEAD, and never 3DES or RSA key exchange", function()
      for _, c in ipairs({ "ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA" }) do
        local r = s_client(proxy.ports.compat, "rsa.test", { "-tls1_2", "-cipher", c })
        assert.is_true(r.ok, c .. ": " .. r.out)
        assert.equal(c, r.cipher)
      end
      local e = s_client(proxy.ports.compat, "ec.test", { "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA" })
      assert.is_true(e.ok, e.out)
      assert.equal("ECDHE-ECDSA-AES128-SHA", e.cipher)
      local pref = s_client(proxy.ports.compat, "rsa.test", { "-tls1_2", "-cipher",
                                                              "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES128-GCM-SHA256" })
      assert.equal("ECDHE-RSA-AES128-GCM-SHA256", pref.cipher, pref.out)
      for _, c in ipairs({ "AES128-SHA", "AES128-GCM-SHA256" }) do
        local r = s_client(proxy.ports.compat, "rsa.test", { "-tls1_2", "-cipher", c })
        assert.is_false(r.ok, c .. " was accepted:\n" .. r.out)
      end
      local how, what = client_hello(proxy.ports.compat, "rsa.test", { 0x000a })
      assert.equal("alert", how, tostring(what))
    end)

    it("explicit ciphers are exactly the suites offered, in their order", function()
      local off = s_client(proxy.ports.explicit, "rsa.test", { "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256" })
      assert.is_false(off.ok, off.out)
      local r = s_client(proxy.ports.explicit, "rsa.test", { "-tls1_2", "-cipher",
                                                             "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305" })
      assert.is_true(r.ok, r.out)
      assert.equal("ECDHE-RSA-CHACHA20-POLY1305", r.cipher)
      local v13 = s_client(proxy.ports.explicit, "rsa.test", { "-tls1_3" })
      assert.is_true(v13.ok, v13.out)
    end)
  end)

  describe("hsts", function()
    local VALUE = "max-age=31536000; includeSubDomains; preload"

    it("adds Strict-Transport-Security to proxied responses, ours replacing the origin's", function()
      local res = https(proxy.ports.hsts, "/proxied")
      assert.equal(200, res.status)
      assert.equal("origin\n", res.body)
      assert.same({ VALUE }, values(res, "strict-transport-security"))
      local other = https(proxy.ports.hsts2, "/proxied")
      assert.same({ "max-age=600" }, values(other, "strict-transport-security"))
    end)

    it("replaces one a response hook set", function()
      local res = https(proxy.ports.hsts, "/hooked")
      assert.equal(200, res.status)
      assert.same({ VALUE }, values(res, "strict-transport-security"))
    end)

    it("adds it to moongate's own answers: respond routes, Lua answers, error pages", function()
      local own = https(proxy.ports.hsts, "/own")
      assert.equal("own\n", own.body)
      assert.same({ VALUE }, values(own, "strict-transport-security"))
      assert.equal("1", own.h["x-own"])
      local lua = https(proxy.ports.hsts, "/lua")
      assert.equal("lua\n", lua.body)
      assert.same({ VALUE }, values(lua, "strict-transport-security"))
      assert.equal("1", lua.h["x-lua"])
      local err = assert(helpers.curl({ "--insecure", "-X", "BREW", "https://127.0.0.1:" .. proxy.ports.hsts .. "/x",
                                        "-H", "Content-Length: abc" }, { max_time = 10 }))
      assert.equal(400, err.status)
      assert.same({ VALUE }, values(err, "strict-transport-security"))
    end)

    it("takes a changed hsts on reload, for new connections", function()
      local text = 'local mg = require "moongate"\n'
        .. 'mg.config { workers = 1, access_log = false }\n'
        .. 'mg.listen { "127.0.0.1:${port}", tls = { cert = "${certs}/rsa.pem", key = "${certs}/rsa.key" },'
        .. ' hsts = { max_age = ${age} } }\n'
        .. 'mg.route { path = "/", respond = { status = 200 } }\n'
      local p = helpers.proxy(text, { vars = { certs = dir, age = 600 } })
      finally(function() p:stop() end)
      assert.same({ "max-age=600" }, values(https(p.port, "/"), "strict-transport-security"))
      helpers.write_file(p.conf, helpers.expand(text, { port = p.port, certs = dir, age = 1200 }))
      p:signal(signal.SIGHUP)
      assert.truthy(helpers.wait_until(function()
        return values(https(p.port, "/"), "strict-transport-security")[1] == "max-age=1200"
      end, 10), p:stderr())
    end)

    it("leaves listeners without hsts alone", function()
      local res = https(proxy.port, "/proxied")
      assert.same({ "max-age=5" }, values(res, "strict-transport-security")) -- the origin's, as sent
      local own = https(proxy.port, "/")
      assert.same({}, values(own, "strict-transport-security"))
    end)
  end)

  describe("config errors", function()
    local function check(lines, want_line, ...)
      local d = helpers.tmpdir()
      sh("cp " .. q(dir .. "/rsa.pem") .. " " .. q(dir .. "/rsa.key") .. " " .. q(d))
      local conf = helpers.write_config(d, table.concat(lines, "\n") .. "\n", { port = helpers.free_port() })
      local out, rc = helpers.moongate({ "-t", "-c", conf })
      assert.equal(1, rc, out)
      assert.truthy(out:find(conf .. ":" .. want_line .. ": ", 1, true), "no " .. conf .. ":" .. want_line .. " in: " .. out)
      for i = 1, select("#", ...) do
        local frag = select(i, ...)
        assert.truthy(out:find(frag, 1, true), "'" .. frag .. "' not in: " .. out)
      end
      return out
    end

    it("-t names the file and line of a cipher string BoringSSL does not know", function()
      check({ 'local mg = require "moongate"',
              'mg.route { path = "/", respond = { status = 200 } }',
              'mg.listen { "127.0.0.1:${port}", tls = { cert = "rsa.pem", key = "rsa.key",',
              '                                         ciphers = "ECDHE-RSA-AES128-GCM-SHA256:NOPE-CIPHER" } }' },
            3, "invalid 'ciphers'", "NOPE-CIPHER")
    end)

    it("-t refuses hsts on a plain listener", function()
      check({ 'local mg = require "moongate"',
              'mg.listen { "127.0.0.1:${port}", hsts = { max_age = 600 } }',
              'mg.route { path = "/", respond = { status = 200 } }' },
            2, "'hsts' needs 'tls'")
    end)

    it("-t refuses an empty upstream sni", function()
      check({ 'local mg = require "moongate"',
              'mg.listen { "127.0.0.1:${port}" }',
              'mg.upstream "u" { servers = { "127.0.0.1:1" }, tls = { verify = false, sni = "" } }',
              'mg.route { path = "/", respond = { status = 200 } }' },
            3, "'sni' must not be empty")
    end)

    it("-t accepts the profiles, ciphers, session_timeout and hsts it documents", function()
      local d = helpers.tmpdir()
      sh("cp " .. q(dir .. "/rsa.pem") .. " " .. q(dir .. "/rsa.key") .. " " .. q(d))
      local conf = helpers.write_config(d, table.concat({
        'local mg = require "moongate"',
        'local c = { cert = "rsa.pem", key = "rsa.key" }',
        'mg.listen { "127.0.0.1:${p1}", tls = { certs = { c }, profile = "modern" }, hsts = {} }',
        'mg.listen { "127.0.0.1:${p2}", tls = { certs = { c }, profile = "compatible", session_timeout = 3600 } }',
        'mg.listen { "127.0.0.1:${p3}", tls = { certs = { c }, ciphers = "ECDHE+AESGCM:!kRSA" } }',
        'mg.route { path = "/", respond = { status = 200 } }',
      }, "\n") .. "\n", { p1 = helpers.free_port(), p2 = helpers.free_port(), p3 = helpers.free_port() })
      local out, rc = helpers.moongate({ "-t", "-c", conf })
      assert.equal(0, rc, out)
      assert.truthy(out:find("config ok", 1, true), out)
    end)

    it("-t warns, naming them, when explicit ciphers enable 3DES or RSA key exchange", function()
      local d = helpers.tmpdir()
      sh("cp " .. q(dir .. "/rsa.pem") .. " " .. q(dir .. "/rsa.key") .. " " .. q(d))
      local conf = helpers.write_config(d, 'local mg = require "moongate"\n'
        .. 'mg.listen { "127.0.0.1:${port}", tls = { cert = "rsa.pem", key = "rsa.key",'
        .. ' ciphers = "ECDHE-RSA-AES128-GCM-SHA256:AES128-SHA:DES-CBC3-SHA" } }\n'
        .. 'mg.route { path = "/", respond = { status = 200 } }\n', { port = helpers.free_port() })
      local out, rc = helpers.moongate({ "-t", "-c", conf })
      assert.equal(0, rc, out)
      assert.truthy(out:find("[warn] main mg.listen tls: ciphers", 1, true), out)
      assert.truthy(out:find("weak suites (no forward secrecy or 3DES): AES128-SHA, DES-CBC3-SHA", 1, true), out)
    end)
  end)

  describe("scanners against the default listener", function()
    it("sslscan finds TLS 1.2 and 1.3 only, ECDHE with AEAD only, nothing vulnerable", function()
      if not sh("command -v sslscan"):find("sslscan", 1, true) then
        pending("sslscan is not installed (scripts/setup --scanners)")
        return
      end
      for _, sni in ipairs({ "rsa.test", "ec.test" }) do
        local out, rc = sh("timeout 60 sslscan --no-colour --sni-name=" .. sni .. " 127.0.0.1:" .. proxy.port)
        assert.equal(0, rc, out)
        for _, v in ipairs({ "SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1" }) do
          assert.truthy(out:find("\n" .. v .. "%s+disabled"), v .. ": " .. out)
        end
        assert.truthy(out:find("\nTLSv1.2%s+enabled"), out)
        assert.truthy(out:find("\nTLSv1.3%s+enabled"), out)
        assert.is_nil(out:find("\nTLSv1%.%d vulnerable to heartbleed"), out)
        assert.is_nil(out:find("Insecure session renegotiation supported", 1, true), out)
        assert.is_nil(out:find("Compression enabled", 1, true), out)
        local n = 0
        for how, version, bits, name in out:gmatch("\n(%a+)%s+(TLSv1%.%d)%s+(%d+) bits%s+(%S+)") do
          if how == "Accepted" or how == "Preferred" then
            n = n + 1
            assert.is_true(tonumber(bits) >= 128, name)
            if version == "TLSv1.2" then
              assert.truthy(name:match("^ECDHE%-") and (name:match("GCM") or name:match("CHACHA20")),
                            "offered over TLS 1.2: " .. name)
            end
          end
        end
        assert.equal(6, n, out) -- three TLS 1.3 suites, three TLS 1.2 suites per key type
        local preferred = out:match("\nPreferred%s+TLSv1%.2%s+%d+ bits%s+(%S+)")
        assert.equal(sni == "ec.test" and "ECDHE-ECDSA-AES128-GCM-SHA256" or "ECDHE-RSA-AES128-GCM-SHA256", preferred)
      end
    end)

    -- about 20-60 s: run only when asked (MG_TESTSSL=1). The protocol, cipher,
    -- server-preference, server-defaults and vulnerability checks; findings
    -- about the self-signed test certificate (cert_*, and the DNS CAA record of
    -- its name) are expected and left out. The HTTP header checks are not run:
    -- X-Frame-Options, CSP and the like are the application's headers.
    it("testssl.sh finds nothing MEDIUM or worse except about the self-signed certificate", function()
      if os.getenv("MG_TESTSSL") ~= "1" then
        pending("testssl.sh runs when MG_TESTSSL=1 (scripts/test sets it for the normal build's run)")
        return
      end
      if not sh("command -v testssl"):find("testssl", 1, true) then
        pending("testssl.sh is not installed (scripts/setup --scanners)")
        return
      end
      local json = helpers.tmpdir() .. "/testssl.json"
      local out = sh("timeout 180 testssl --quiet --color 0 --warnings off -p -s -P -S -U --jsonfile "
                     .. q(json) .. " 127.0.0.1:" .. proxy.port)
      local doc = helpers.decode_json(helpers.read_file(json) or "")
      assert.is_table(doc, "no testssl.sh JSON:\n" .. tostring(out))
      local bad = {}
      local severe = { MEDIUM = true, HIGH = true, CRITICAL = true }
      local seen = 0
      for _, f in ipairs(doc) do
        seen = seen + 1
        if severe[f.severity] and not f.id:match("^cert") and f.id ~= "DNS_CAArecord" then
          bad[#bad + 1] = f.severity .. " " .. f.id .. ": " .. tostring(f.finding)
        end
      end
      assert.is_true(seen > 50, "testssl.sh reported too little:\n" .. tostring(out))
      assert.same({}, bad)
      assert.equal(0, count(out, "Fatal error"), out)
    end)
  end)
end)
