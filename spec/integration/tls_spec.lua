-- TLS end to end: listeners (certificates chosen by SNI, versions, ALPN,
-- session resumption, client certificates, the tls_hello hook, req.tls,
-- X-Forwarded-Proto), redirect_https listeners, TLS to upstreams (verification,
-- pooling), broken and stalled handshakes, and config errors.
--
-- Certificates are made with the openssl CLI in lazy_setup: a CA ("Moongate
-- Test CA", EC P-256) signing an RSA leaf a.test, ECDSA leaves b.test, *.w.test
-- and backend.test (served by a TLS origin), and a client certificate client1;
-- a second CA ("Other Test CA") signing client2. The main proxy's config lives
-- in the same folder and names the files relatively; the second one uses
-- absolute paths. The clients are openssl s_client and curl, every call bounded
-- by `timeout` or --max-time.
local helpers = require "spec.helpers"
local socket = require "socket"

local q = helpers.shell_quote

local sh = helpers.sh

local function argv_line(argv)
  local t = {}
  for i, a in ipairs(argv) do t[i] = q(a) end
  return table.concat(t, " ")
end

local GEN = [=[
set -e
cat > ca.cnf <<'X'
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
X
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
rsa() { openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null; }
mkca() { # file CN
  ec "$1.key"
  openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days 30 -config ca.cnf -extensions ca -out "$1.pem"
}
serial=100
leaf() { # file keytype CN ca extendedKeyUsage subjectAltName
  serial=$((serial + 1))
  $2 "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$3" -config ca.cnf -out "$1.csr"
  { echo "basicConstraints = CA:FALSE"
    echo "keyUsage = critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage = $5"
    if [ -n "$6" ]; then echo "subjectAltName = $6"; fi; } > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$4.pem" -CAkey "$4.key" -set_serial $serial -days 30 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
}
mkca ca "Moongate Test CA"
mkca ca2 "Other Test CA"
leaf a rsa a.test ca serverAuth "DNS:a.test"
leaf b ec b.test ca serverAuth "DNS:b.test"
leaf w ec '*.w.test' ca serverAuth "DNS:*.w.test"
leaf backend ec backend.test ca serverAuth "DNS:backend.test"
leaf client1 ec client1 ca clientAuth ""
leaf client2 ec client2 ca2 clientAuth ""
echo "this is not a PEM file" > garbage.pem
# expired in 2020 (openssl x509 cannot backdate; openssl ca can)
mkdir -p expca && touch expca/index.txt && echo 01 > expca/serial
printf '[ca]\ndefault_ca = d\n[d]\ndatabase = expca/index.txt\nnew_certs_dir = expca\nserial = expca/serial\ndefault_md = sha256\npolicy = p\n[p]\ncommonName = supplied\n' > expca.cnf
ec expired.key
openssl req -new -key expired.key -subj "/CN=expired.test" -config ca.cnf -out expired.csr
openssl ca -batch -config expca.cnf -cert ca.pem -keyfile ca.key -in expired.csr -out expired.pem \
  -startdate 20200101000000Z -enddate 20200102000000Z -notext 2>/dev/null
openssl x509 -in client1.pem -outform DER | sha256sum | cut -d' ' -f1 > client1.sha256
]=]

local CERTS -- the folder with the generated files (also the main proxy's folder)

local function gen_certs(dir)
  helpers.write_file(dir .. "/gen.sh", GEN)
  local out, rc = sh("cd " .. q(dir) .. " && timeout 30 sh gen.sh")
  assert(rc == 0, "making the test certificates failed:\n" .. tostring(out))
end

--- openssl s_client to 127.0.0.1:port. opts: sni (nil: no SNI at all), args
-- (more s_client arguments), send (bytes written once connected; stdin then
-- stays open `linger` seconds so the answer and TLS 1.3 tickets arrive),
-- input (a shell command whose output is s_client's stdin, instead of send).
-- Without either, stdin is closed at once: just the handshake. Returns a table:
-- out, rc, ok (handshake done and a certificate received), cn (subject CN of
-- the server certificate), new / reused (the protocol of a full / resumed
-- handshake), body (what followed the first response head).
local function s_client(port, opts)
  opts = opts or {}
  local argv = { "timeout", "10", "openssl", "s_client", "-connect", "127.0.0.1:" .. port,
                 "-CAfile", CERTS .. "/ca.pem" }
  if opts.sni then
    argv[#argv + 1] = "-servername"
    argv[#argv + 1] = opts.sni
  else
    argv[#argv + 1] = "-noservername"
  end
  for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
  local input = "true"
  if opts.send then
    input = "(printf '%s' " .. q(opts.send) .. "; sleep " .. (opts.linger or 0.3) .. ")"
  end
  if opts.input then input = opts.input end
  local out, rc = sh(input .. " | " .. argv_line(argv))
  return {
    out = out, rc = rc,
    ok = rc == 0 and out:find("\nsubject=", 1, true) ~= nil,
    cn = out:match("\nsubject=[^\n]-CN ?= ?([^,/\n]+)"),
    new = out:match("\nNew, (TLSv[%d.]+),"),
    reused = out:match("\nReused, (TLSv[%d.]+),"),
    body = out:match("HTTP/1%.1 %d%d%d[^\n]*\n.-\r\n\r\n(.*)$"),
  }
end

--- curl https://host:port/path with the test CA, host resolved to 127.0.0.1.
-- Returns helpers.curl's result (nil, output, rc when curl fails).
local function https(port, host, path, args)
  local a = { "--cacert", CERTS .. "/ca.pem", "--resolve", host .. ":" .. port .. ":127.0.0.1" }
  for _, x in ipairs(args or {}) do a[#a + 1] = x end
  a[#a + 1] = "https://" .. host .. ":" .. port .. path
  return helpers.curl(a, { max_time = 10 })
end

-- "k=v" lines (the /tlsinfo answer) -> table
local function kv(body)
  local t = {}
  for k, v in tostring(body):gmatch("([%w_]+)=([^\n]*)\n") do t[k] = v end
  return t
end

local count = helpers.count

-- The main proxy. Relative file names: the certificates sit next to proxy.lua.
local CONF = [=[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, log_level = "info", timeouts = { handshake = 1 } }

local three = {
  { cert = "a.pem", key = "a.key", name = "a" },
  { cert = "b.pem", key = "b.key", name = "b" },
  { cert = "w.pem", key = "w.key", name = "w" },
}
mg.listen { "127.0.0.1:${port}", tls = { certs = three } }
mg.listen { "127.0.0.1:${plain}" }
mg.listen { "127.0.0.1:${tls13}", tls = { cert = "a.pem", key = "a.key", min_version = "1.3" } }
mg.listen { "127.0.0.1:${mreq}", tls = { cert = "a.pem", key = "a.key", verify_client = "required",
                                          client_ca = "ca.pem" } }
mg.listen { "127.0.0.1:${mopt}", tls = { cert = "a.pem", key = "a.key", verify_client = "optional",
                                          client_ca = "ca.pem" } }
mg.listen { "127.0.0.1:${hello}", name = "hello", tls = { certs = three } }
mg.listen { "127.0.0.1:${redir}", redirect_https = 8443 }
mg.listen { "127.0.0.1:${redir443}", redirect_https = true }

local seen = {}
mg.on("tls_hello", function(hello)
  seen[#seen + 1] = tostring(hello.sni) .. "@" .. tostring(hello.listener)
  if hello.listener ~= "hello" then return nil end
  if hello.sni == nil then return "b" end
  if hello.sni == "pick-b.test" then return "b" end
  if hello.sni == "pick-3.test" then return 3 end
  if hello.sni == "refuse.test" then return false end
  if hello.sni == "wait.test" then mg.sleep(0.05) return "b" end -- waits, then picks
  return nil
end)

local o = mg.upstream "o" { servers = { "${origin}" } }
local up = mg.upstream "up" { servers = { "${backend}" }, tls = { ca = "ca.pem", sni = "backend.test" } }
local reuse = mg.upstream "reuse" { servers = { "${reuse}" }, tls = { ca = "ca.pem", sni = "backend.test" } }
local wrongca = mg.upstream "wrongca" { servers = { "${backend}" },
                                        tls = { ca = "ca2.pem", sni = "backend.test" } }
local wrongname = mg.upstream "wrongname" { servers = { "${backend}" },
                                            tls = { ca = "ca.pem", sni = "wrong.test" } }
local sysca = mg.upstream "sysca" { servers = { "${backend}" }, tls = { sni = "backend.test" } }
local fresh = mg.upstream "fresh" { servers = { "${backend}" }, keepalive = 0,
                                    tls = { ca = "ca.pem", sni = "backend.test" } }
local fresh12 = mg.upstream "fresh12" { servers = { "${backend12}" }, keepalive = 0,
                                        tls = { ca = "ca.pem", sni = "backend.test" } }
local noverify = mg.upstream "noverify" { servers = { "${backend}" }, tls = { verify = false, ca = "ca2.pem" } }
-- client certificates: ${mtls} asks for one (TLS 1.3), ${mtls12} requires one (TLS 1.2)
local function mtls(addr, cert)
  return { servers = { addr }, keepalive = 0, tls = { ca = "ca.pem", sni = "backend.test",
           cert = cert and cert .. ".pem", key = cert and cert .. ".key" } }
end
local c1 = mg.upstream "c1" (mtls("${mtls}", "client1"))
local c0 = mg.upstream "c0" (mtls("${mtls}"))
local c2 = mg.upstream "c2" (mtls("${mtls}", "client2"))
local c1req = mg.upstream "c1req" (mtls("${mtls12}", "client1"))
local c0req = mg.upstream "c0req" (mtls("${mtls12}"))

mg.route { path = "/tlsinfo", respond = function(req)
  if req.tls == nil then return 200, "no tls\n", { ["content-type"] = "text/plain" } end
  local t = {}
  for k, v in pairs(req.tls) do t[#t + 1] = k .. "=" .. tostring(v) .. "\n" end
  table.sort(t)
  t[#t + 1] = "types=" .. type(req.tls.version) .. type(req.tls.client_verified) .. "\n"
  return 200, table.concat(t), { ["content-type"] = "text/plain" }
end }
mg.route { path = "/hello-seen", respond = function(req)
  return 200, table.concat(seen, "\n") .. "\n", { ["content-type"] = "text/plain" }
end }
-- /up/X goes to the TLS origin as /X (the origin dispatches on the first segment)
mg.route { path = "/up/", upstream = up, on = { request = function(req)
  req:set_path(req.path:sub(4))
end } }
mg.route { path = "/reuse/", upstream = reuse }
mg.route { path = "/wrongca/", upstream = wrongca }
mg.route { path = "/wrongname/", upstream = wrongname }
mg.route { path = "/sysca/", upstream = sysca }
mg.route { path = "/noverify/", upstream = noverify }
mg.route { path = "/c1/", upstream = c1 }
mg.route { path = "/c0/", upstream = c0 }
mg.route { path = "/c2/", upstream = c2 }
mg.route { path = "/c1req/", upstream = c1req }
mg.route { path = "/c0req/", upstream = c0req }
mg.route { path = "/fresh/", upstream = fresh }
mg.route { path = "/fresh12/", upstream = fresh12 }
mg.route { path = "/", upstream = o }
]=]

-- Two workers, absolute file names: resumption across workers.
local CONF2 = [=[
local mg = require "moongate"
mg.config { workers = 2, access_log = false }
mg.listen { "127.0.0.1:${port}", tls = { cert = "${certs}/a.pem", key = "${certs}/a.key" } }
mg.route { path = "/worker", respond = function(req)
  return 200, tostring(mg.worker_id()), { ["content-type"] = "text/plain" }
end }
]=]

describe("TLS", function()
  local proxy, origin, backend, reuse_origin, backend12, mtls, mtls12

  lazy_setup(function()
    CERTS = helpers.tmpdir()
    gen_certs(CERTS)
    origin = helpers.origin({ name = "O" })
    backend = helpers.origin({ name = "B", tls = { cert = CERTS .. "/backend.pem", key = CERTS .. "/backend.key" } })
    reuse_origin = helpers.origin({ name = "R", tls = { cert = CERTS .. "/backend.pem", key = CERTS .. "/backend.key" } })
    backend12 = helpers.origin({ name = "B12", tls = { cert = CERTS .. "/backend.pem",
                                                      key = CERTS .. "/backend.key", max_version = "1.2" } })
    mtls = helpers.origin({ name = "M", tls = { cert = CERTS .. "/backend.pem", key = CERTS .. "/backend.key",
                                                client_ca = CERTS .. "/ca.pem" } })
    mtls12 = helpers.origin({ name = "M12", tls = { cert = CERTS .. "/backend.pem", key = CERTS .. "/backend.key",
                                                    client_ca = CERTS .. "/ca.pem", client = "required",
                                                    max_version = "1.2" } })
    local names = { "plain", "tls13", "mreq", "mopt", "hello", "redir", "redir443" }
    local wait = { "port" }
    for _, n in ipairs(names) do wait[#wait + 1] = n end
    proxy = helpers.proxy(CONF, { dir = CERTS, ports = names, wait_ports = wait,
      vars = { origin = origin.addr, backend = backend.addr, reuse = reuse_origin.addr,
               backend12 = backend12.addr, mtls = mtls.addr, mtls12 = mtls12.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  local function plain_get(path, headers)
    return assert(proxy:request({ path = path, headers = headers }, proxy.ports.plain))
  end

  describe("certificate choice", function()
    -- the CN of the certificate served for `sni` (nil: no SNI sent)
    local function served(sni)
      local r = s_client(proxy.port, { sni = sni })
      assert.is_true(r.ok, r.out)
      return r.cn
    end

    it("serves the certificate whose subjectAltName matches the SNI, case-insensitively", function()
      assert.equal("a.test", served("a.test"))
      assert.equal("b.test", served("b.test"))
      assert.equal("b.test", served("B.Test"))
    end)

    it("takes a fully qualified SNI (trailing dot) as the same name", function()
      assert.equal("b.test", served("b.test."))
      assert.equal("*.w.test", served("x.w.test."))
    end)

    it("matches a wildcard for exactly one label, else falls back to the first certificate", function()
      assert.equal("*.w.test", served("x.w.test"))
      assert.equal("a.test", served("a.b.w.test"))
      assert.equal("a.test", served("w.test"))
    end)

    it("serves the first certificate without SNI and for an unknown name", function()
      assert.equal("a.test", served(nil))
      assert.equal("a.test", served("nope.test"))
    end)

    it("serves an RSA and an ECDSA certificate, each verified against the CA", function()
      local a = s_client(proxy.port, { sni = "a.test", args = { "-verify_return_error" } })
      assert.is_true(a.ok, a.out)
      assert.truthy(a.out:find("Server public key is 2048 bit", 1, true), a.out)
      assert.truthy(a.out:find("Verify return code: 0 (ok)", 1, true), a.out)
      local b = s_client(proxy.port, { sni = "b.test", args = { "-verify_return_error",
                                                                "-sigalgs", "ECDSA+SHA256" } })
      assert.is_true(b.ok, b.out)
      assert.truthy(b.out:find("Server public key is 256 bit", 1, true), b.out)
      assert.truthy(b.out:find("Peer signature type: ECDSA", 1, true), b.out)
      assert.truthy(b.out:find("Verify return code: 0 (ok)", 1, true), b.out)
    end)
  end)

  describe("versions and ALPN", function()
    it("speaks TLS 1.2 and 1.3", function()
      local v12 = s_client(proxy.port, { sni = "a.test", args = { "-tls1_2" } })
      assert.is_true(v12.ok, v12.out)
      assert.equal("TLSv1.2", v12.new)
      local v13 = s_client(proxy.port, { sni = "a.test", args = { "-tls1_3" } })
      assert.is_true(v13.ok, v13.out)
      assert.equal("TLSv1.3", v13.new)
    end)

    it("refuses TLS 1.1 and 1.0 with a protocol_version alert and logs the failure", function()
      local before = count(proxy:stderr(), "TLS handshake failed")
      for _, flag in ipairs({ "-tls1_1", "-tls1" }) do
        local r = s_client(proxy.port, { sni = "a.test", args = { flag, "-cipher", "DEFAULT@SECLEVEL=0" } })
        assert.is_false(r.ok, r.out)
        assert.is_not.equal(0, r.rc)
        assert.truthy(r.out:find("alert protocol version", 1, true), flag .. ": " .. r.out)
      end
      assert.truthy(helpers.wait_until(function()
        return count(proxy:stderr(), "TLS handshake failed") >= before + 2
      end, 3), proxy:stderr())
    end)

    it("with min_version = \"1.3\" refuses 1.2 and accepts 1.3", function()
      local v12 = s_client(proxy.ports.tls13, { sni = "a.test", args = { "-tls1_2" } })
      assert.is_false(v12.ok, v12.out)
      assert.truthy(v12.out:find("alert protocol version", 1, true), v12.out)
      local v13 = s_client(proxy.ports.tls13, { sni = "a.test", args = { "-tls1_3" } })
      assert.is_true(v13.ok, v13.out)
      assert.equal("TLSv1.3", v13.new)
    end)

    it("selects http/1.1 by ALPN when offered, and nothing for h2 alone", function()
      local r = s_client(proxy.port, { sni = "a.test", args = { "-alpn", "h2,http/1.1" } })
      assert.is_true(r.ok, r.out)
      assert.truthy(r.out:find("ALPN protocol: http/1.1", 1, true), r.out)
      local h2 = s_client(proxy.port, { sni = "a.test", args = { "-alpn", "h2" } })
      assert.is_true(h2.ok, h2.out)
      assert.truthy(h2.out:find("No ALPN negotiated", 1, true), h2.out)
    end)
  end)

  describe("session resumption", function()
    -- BoringSSL holds TLS 1.3 tickets until the server's first write; moongate
    -- sends them when the handshake ends, so a client that has not sent its
    -- request yet gets them (and the ACK of its Finished rides on them: a
    -- client without TCP_NODELAY is not held by a delayed ACK)
    it("sends the TLS 1.3 session tickets as soon as the handshake ends, before any request", function()
      local r = s_client(proxy.port, { sni = "a.test", args = { "-tls1_3", "-msg" }, input = "sleep 1" })
      assert.equal(2, count(r.out, "NewSessionTicket"), r.out)
      assert.equal("TLSv1.3", r.new, r.out)
      assert.is_nil(r.out:find("HTTP/1.1", 1, true), r.out)
    end)

    local function resumes(extra)
      local sess = helpers.tmpdir() .. "/session.pem"
      local req = "GET /tlsinfo HTTP/1.1\r\nHost: a.test\r\n\r\n"
      local args = { "-sess_out", sess }
      for _, a in ipairs(extra) do args[#args + 1] = a end
      local first = s_client(proxy.port, { sni = "a.test", args = args, send = req })
      assert.truthy(first.new, first.out)
      assert.truthy(helpers.file_exists(sess), "no session saved:\n" .. first.out)
      args = { "-sess_in", sess }
      for _, a in ipairs(extra) do args[#args + 1] = a end
      local second = s_client(proxy.port, { sni = "a.test", args = args, send = req })
      return first, second
    end

    it("resumes a TLS 1.2 session by ticket", function()
      local first, second = resumes({ "-tls1_2" })
      assert.equal("TLSv1.2", first.new)
      assert.equal("TLSv1.2", second.reused, second.out)
      assert.equal("TLSv1.2", kv(second.body).version)
    end)

    it("resumes a TLS 1.2 session by session id (no tickets)", function()
      local first, second = resumes({ "-tls1_2", "-no_ticket" })
      assert.equal("TLSv1.2", first.new)
      assert.equal("TLSv1.2", second.reused, second.out)
    end)

    it("resumes a TLS 1.3 session by ticket", function()
      local first, second = resumes({ "-tls1_3" })
      assert.equal("TLSv1.3", first.new)
      assert.equal("TLSv1.3", second.reused, second.out)
      assert.equal("TLSv1.3", kv(second.body).version)
    end)
  end)

  describe("requests over TLS", function()
    it("sends X-Forwarded-Proto: https upstream for TLS clients (replacing a client's own), http otherwise", function()
      local res = assert(https(proxy.port, "a.test", "/echo", { "-H", "X-Forwarded-Proto: http" }))
      assert.equal(200, res.status)
      local doc = helpers.echo(res)
      assert.equal("O", doc.name)
      assert.same({ "https" }, helpers.echo_headers(doc, "X-Forwarded-Proto"))
      local plain = helpers.echo(plain_get("/echo", { ["X-Forwarded-Proto"] = "https" }))
      assert.same({ "http" }, helpers.echo_headers(plain, "X-Forwarded-Proto"))
    end)

    it("gives req.tls over TLS 1.3 with version, cipher, sni, alpn and empty client fields", function()
      local res = assert(https(proxy.port, "a.test", "/tlsinfo",
        { "--tlsv1.3", "--tls13-ciphers", "TLS_CHACHA20_POLY1305_SHA256" }))
      assert.equal(200, res.status)
      assert.same({
        version = "TLSv1.3", cipher = "TLS_CHACHA20_POLY1305_SHA256", sni = "a.test", alpn = "http/1.1",
        client_subject = "", client_issuer = "", client_fingerprint = "", client_verified = "false",
        types = "stringboolean",
      }, kv(res.body))
    end)

    it("gives req.tls over TLS 1.2 without ALPN, and an empty sni without SNI", function()
      local res = assert(https(proxy.port, "b.test", "/tlsinfo",
        { "--tlsv1.2", "--tls-max", "1.2", "--ciphers", "ECDHE-ECDSA-AES128-GCM-SHA256", "--no-alpn" }))
      assert.equal(200, res.status)
      local t = kv(res.body)
      assert.equal("TLSv1.2", t.version)
      assert.equal("ECDHE-ECDSA-AES128-GCM-SHA256", t.cipher)
      assert.equal("b.test", t.sni)
      assert.equal("", t.alpn)
      -- an IP address sends no SNI
      local ip = assert(helpers.curl({ "--insecure", "https://127.0.0.1:" .. proxy.port .. "/tlsinfo" },
                                     { max_time = 10 }))
      assert.equal(200, ip.status)
      assert.equal("", kv(ip.body).sni)
    end)

    it("has no req.tls over plain HTTP", function()
      local res = plain_get("/tlsinfo")
      assert.equal(200, res.status)
      assert.equal("no tls\n", res.body)
    end)

    it("answers a request with Connection: close (respond function)", function()
      local res, out = https(proxy.port, "a.test", "/tlsinfo", { "-H", "Connection: close" })
      assert.truthy(res, out)
      assert.equal(200, res.status)
      assert.equal("TLSv1.3", kv(res.body).version)
    end)

    it("answers a request with Connection: close (upstream)", function()
      local res, out = https(proxy.port, "a.test", "/echo?close", { "-H", "Connection: close" })
      assert.truthy(res, out)
      assert.equal("/echo?close", helpers.echo(res).path)
    end)

    it("answers an HTTP/1.0 request (respond function)", function()
      local res, out = https(proxy.port, "a.test", "/tlsinfo", { "--http1.0" })
      assert.truthy(res, out)
      assert.equal(200, res.status)
      assert.equal("a.test", kv(res.body).sni)
    end)

    it("carries a 2 MB response and a 1 MB request body intact", function()
      local res = assert(https(proxy.port, "a.test", "/bytes/2000000"))
      assert.equal(200, res.status)
      assert.equal(2000000, #res.body)
      assert.equal(helpers.sha256(helpers.pattern(2000000)), helpers.sha256(res.body))
      local file = helpers.tmpdir() .. "/upload"
      helpers.write_file(file, helpers.pattern(1000000))
      local up = assert(https(proxy.port, "a.test", "/echo", { "--data-binary", "@" .. file }))
      local doc = helpers.echo(up)
      assert.equal(1000000, doc.body_len)
      assert.equal(helpers.sha256(helpers.pattern(1000000)), doc.body_sha256)
    end)

    it("answers pipelined requests on one TLS connection over one upstream connection", function()
      local r = s_client(proxy.port, { sni = "a.test", send =
        "GET /echo?p1 HTTP/1.1\r\nHost: a.test\r\n\r\nGET /echo?p2 HTTP/1.1\r\nHost: a.test\r\n\r\n"
        .. "GET /echo?p3 HTTP/1.1\r\nHost: a.test\r\n\r\n" })
      local paths, conns = {}, {}
      for doc in r.out:gmatch("\r\n\r\n(%b{})") do
        local d = helpers.decode_json(doc)
        paths[#paths + 1] = d.path
        conns[#conns + 1] = d.conn
      end
      assert.same({ "/echo?p1", "/echo?p2", "/echo?p3" }, paths, r.out)
      assert.equal(conns[1], conns[2])
      assert.equal(conns[1], conns[3])
    end)
  end)

  describe("client certificates", function()
    local function with_cert(name)
      return { "--cert", CERTS .. "/" .. name .. ".pem", "--key", CERTS .. "/" .. name .. ".key" }
    end

    -- a session made where no certificate was asked for must not resume where
    -- one is required (same certificate a.pem on both listeners)
    for _, v in ipairs({ { "1.2", "-tls1_2" }, { "1.3", "-tls1_3" } }) do
      it("does not resume a TLS " .. v[1] .. " session from a listener without client certificates on one that requires them", function()
        local sess = helpers.tmpdir() .. "/sess.pem"
        local req = "GET /tlsinfo HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
        local first = s_client(proxy.port, { sni = "a.test", send = req, args = { v[2], "-ign_eof", "-sess_out", sess } })
        assert.is_true(first.ok, first.out)
        local again = s_client(proxy.port, { sni = "a.test", send = req, args = { v[2], "-ign_eof", "-sess_in", sess } })
        assert.equal("TLSv" .. v[1], again.reused, again.out) -- the ticket is good where it came from
        local cross = s_client(proxy.ports.mreq, { sni = "a.test", send = req,
                                                   args = { v[2], "-ign_eof", "-sess_in", sess } })
        assert.is_nil(cross.reused, cross.out)
        assert.is_nil((cross.out:find("HTTP/1.1 200", 1, true)), cross.out)
      end)
    end

    it("verify_client = \"required\" refuses a client without a certificate", function()
      local before = count(proxy:stderr(), "TLS handshake failed")
      local res, out, rc = https(proxy.ports.mreq, "a.test", "/tlsinfo")
      assert.is_nil(res, "answered without a client certificate: " .. tostring(res and res.body))
      assert.is_not.equal(0, rc, out)
      assert.truthy(helpers.wait_until(function()
        return count(proxy:stderr(), "TLS handshake failed") > before
      end, 3), "no handshake failure logged:\n" .. proxy:stderr():sub(-2000))
    end)

    it("verify_client = \"required\" refuses a certificate from another CA", function()
      local res, out = https(proxy.ports.mreq, "a.test", "/tlsinfo", with_cert("client2"))
      assert.is_nil(res, "answered a client2 certificate: " .. tostring(res and res.body))
      assert.truthy(out)
    end)

    it("verify_client = \"required\" accepts a certificate signed by client_ca and shows it in req.tls", function()
      local res, out = https(proxy.ports.mreq, "a.test", "/tlsinfo", with_cert("client1"))
      assert.truthy(res, out)
      assert.equal(200, res.status)
      local t = kv(res.body)
      assert.equal("CN=client1", t.client_subject)
      assert.equal("CN=Moongate Test CA", t.client_issuer)
      assert.equal("true", t.client_verified)
      local fp = helpers.read_file(CERTS .. "/client1.sha256"):match("^(%x+)")
      assert.equal(64, #fp)
      assert.equal(fp, t.client_fingerprint)
    end)

    it("verify_client = \"required\" with TLS 1.2 as well", function()
      local args = with_cert("client1")
      for _, a in ipairs({ "--tlsv1.2", "--tls-max", "1.2" }) do args[#args + 1] = a end
      local res, out = https(proxy.ports.mreq, "a.test", "/tlsinfo", args)
      assert.truthy(res, out)
      local t = kv(res.body)
      assert.equal("TLSv1.2", t.version)
      assert.equal("CN=client1", t.client_subject)
      assert.equal("true", t.client_verified)
      local none = https(proxy.ports.mreq, "a.test", "/tlsinfo", { "--tlsv1.2", "--tls-max", "1.2" })
      assert.is_nil(none)
    end)

    it("verify_client = \"optional\" accepts a client without a certificate", function()
      local res, out = https(proxy.ports.mopt, "a.test", "/tlsinfo")
      assert.truthy(res, out)
      assert.equal(200, res.status)
      local t = kv(res.body)
      assert.equal("false", t.client_verified)
      assert.equal("", t.client_subject)
      assert.equal("", t.client_issuer)
      assert.equal("", t.client_fingerprint)
    end)

    it("verify_client = \"optional\" verifies a certificate signed by client_ca", function()
      local res, out = https(proxy.ports.mopt, "a.test", "/tlsinfo", with_cert("client1"))
      assert.truthy(res, out)
      local t = kv(res.body)
      assert.equal("true", t.client_verified)
      assert.equal("CN=client1", t.client_subject)
    end)
  end)

  describe("tls_hello hook", function()
    it("picks a certificate by name or by index", function()
      local b = s_client(proxy.ports.hello, { sni = "pick-b.test" })
      assert.is_true(b.ok, b.out)
      assert.equal("b.test", b.cn)
      local third = s_client(proxy.ports.hello, { sni = "pick-3.test" })
      assert.is_true(third.ok, third.out)
      assert.equal("*.w.test", third.cn)
      local none = s_client(proxy.ports.hello, {})
      assert.is_true(none.ok, none.out)
      assert.equal("b.test", none.cn)
    end)

    it("leaves the choice to SNI when it returns nil", function()
      local a = s_client(proxy.ports.hello, { sni = "a.test" })
      assert.is_true(a.ok, a.out)
      assert.equal("a.test", a.cn)
      local x = s_client(proxy.ports.hello, { sni = "x.w.test" })
      assert.is_true(x.ok, x.out)
      assert.equal("*.w.test", x.cn)
    end)

    it("refuses the handshake when it returns false", function()
      local r = s_client(proxy.ports.hello, { sni = "refuse.test" })
      assert.is_false(r.ok, r.out)
      assert.is_not.equal(0, r.rc)
      assert.truthy(r.out:find("no peer certificate available", 1, true), r.out)
      -- a refused client got nothing, and the next one is fine
      local res, out = https(proxy.ports.hello, "a.test", "/tlsinfo")
      assert.truthy(res, out)
      assert.equal(200, res.status)
    end)

    it("completes the handshake of a hook that waits with its pick (tls_hello_wait_spec: more)", function()
      local r = s_client(proxy.ports.hello, { sni = "wait.test" })
      assert.is_true(r.ok, r.out)
      assert.equal("b.test", r.cn)
      assert.is_nil(proxy:stderr():find("tls_hello hook failed", 1, true))
      local b = s_client(proxy.ports.hello, { sni = "pick-b.test" }) -- the worker goes on
      assert.is_true(b.ok, b.out)
      assert.equal("b.test", b.cn)
    end)

    it("sees hello.sni and hello.listener (nil for an unnamed listener)", function()
      -- on the unnamed listener the hook returns nil: refuse.test gets the default
      local r = s_client(proxy.port, { sni = "refuse.test" })
      assert.is_true(r.ok, r.out)
      assert.equal("a.test", r.cn)
      s_client(proxy.ports.hello, { sni = "seen.test" })
      s_client(proxy.ports.hello, {})
      local seen = plain_get("/hello-seen").body
      assert.truthy(seen:find("\nrefuse.test@nil\nseen.test@hello\nnil@hello\n", 1, true), seen)
    end)
  end)

  describe("redirect_https", function()
    it("redirects GET and HEAD with 301 to https://HOST:PORT/path?query", function()
      local before = origin:stats().requests
      local res = assert(proxy:request({ path = "/a/b?x=1&y=%20", headers = { Host = "example.test" } },
                                       proxy.ports.redir))
      assert.equal(301, res.status)
      assert.equal("https://example.test:8443/a/b?x=1&y=%20", res.h.location)
      local head = assert(proxy:request({ method = "HEAD", path = "/h", headers = { Host = "example.test" } },
                                        proxy.ports.redir))
      assert.equal(301, head.status)
      assert.equal("https://example.test:8443/h", head.h.location)
      assert.equal(before, origin:stats().requests)
    end)

    it("redirects other methods with 308", function()
      local res = assert(proxy:request({ method = "POST", path = "/form?z", body = "a=1",
                                         headers = { Host = "example.test" } }, proxy.ports.redir))
      assert.equal(308, res.status)
      assert.equal("https://example.test:8443/form?z", res.h.location)
      local del = assert(proxy:request({ method = "DELETE", path = "/thing",
                                         headers = { Host = "example.test" } }, proxy.ports.redir))
      assert.equal(308, del.status)
    end)

    it("drops the port of the Host header, and omits :443", function()
      local res = assert(proxy:request({ path = "/p", headers = { Host = "example.test:8080" } },
                                       proxy.ports.redir))
      assert.equal(301, res.status)
      assert.equal("https://example.test:8443/p", res.h.location)
      local std = assert(proxy:request({ path = "/p?q=1", headers = { Host = "example.test:8080" } },
                                       proxy.ports.redir443))
      assert.equal(301, std.status)
      assert.equal("https://example.test/p?q=1", std.h.location)
    end)

    it("redirects every request on a keep-alive connection", function()
      local c = proxy:connect(proxy.ports.redir)
      for i = 1, 3 do
        local res = assert(c:request({ path = "/k" .. i, headers = { Host = "example.test" } }))
        assert.equal(301, res.status)
        assert.equal("https://example.test:8443/k" .. i, res.h.location)
      end
      c:close()
    end)
  end)

  describe("upstream TLS", function()
    it("verifies the upstream against ca with the sni name, and sends SNI and ALPN", function()
      local doc = helpers.echo(plain_get("/up/echo?v=1"))
      assert.equal("B", doc.name)
      assert.equal("/echo?v=1", doc.path)
      assert.equal("backend.test", doc.tls.sni)
      assert.equal("http/1.1", doc.tls.alpn)
    end)

    it("answers 502 when the upstream's certificate is not from ca", function()
      helpers.assert_error(plain_get("/wrongca/echo"), 502)
    end)

    it("answers 502 when the upstream's certificate does not name sni", function()
      helpers.assert_error(plain_get("/wrongname/echo"), 502)
    end)

    it("answers 502 when the system CAs do not know the upstream's CA", function()
      helpers.assert_error(plain_get("/sysca/echo"), 502)
    end)

    it("works against an untrusted certificate with verify = false", function()
      local doc = helpers.echo(plain_get("/noverify/echo"))
      assert.equal("B", doc.name)
      assert.equal("/noverify/echo", doc.path)
      assert.is_string(doc.tls.version)
    end)

    it("reuses a pooled TLS upstream connection", function()
      for i = 1, 5 do
        local c = proxy:connect(proxy.ports.plain)
        local doc = helpers.echo(assert(c:request({ path = "/reuse/echo?" .. i })))
        c:close()
        assert.equal("R", doc.name)
        assert.equal(1, doc.conn)
        assert.equal(i, doc.conn_request)
      end
      local st = reuse_origin:stats()
      assert.equal(1, st.connections)
      assert.equal(5, st.requests)
    end)

    it("still reuses it after a pause (post-handshake messages read while idle)", function()
      helpers.sleep(0.5)
      local doc = helpers.echo(plain_get("/reuse/echo?after-pause"))
      assert.equal(1, doc.conn)
      assert.equal(1, reuse_origin:stats().connections)
    end)

    -- keepalive = 0: a new upstream connection for every request
    it("resumes the last session on a new upstream connection (TLS 1.2)", function()
      local first = helpers.echo(plain_get("/fresh12/echo?1"))
      local second = helpers.echo(plain_get("/fresh12/echo?2"))
      assert.equal("TLSv1.2", first.tls.version)
      assert.is_not.equal(first.conn, second.conn)
      assert.is_false(first.tls.reused)
      assert.is_true(second.tls.reused)
    end)

    it("resumes the last session on a new upstream connection (TLS 1.3)", function()
      local first = helpers.echo(plain_get("/fresh/echo?1"))
      local second = helpers.echo(plain_get("/fresh/echo?2"))
      assert.equal("TLSv1.3", first.tls.version)
      assert.is_not.equal(first.conn, second.conn)
      assert.is_true(second.tls.reused)
    end)

    it("presents the upstream's cert and key as a client certificate", function()
      local doc = helpers.echo(plain_get("/c1/echo"))
      assert.equal("M", doc.name)
      assert.equal("TLSv1.3", doc.tls.version)
      assert.equal("client1", doc.tls.client)
    end)

    it("presents no client certificate without cert and key", function()
      local doc = helpers.echo(plain_get("/c0/echo"))
      assert.equal("M", doc.name)
      assert.equal(helpers.null, doc.tls.client)
    end)

    it("answers 502 when the upstream refuses the client certificate (TLS 1.3: alert after the handshake)", function()
      local before = mtls:stats().requests
      helpers.assert_error(plain_get("/c2/echo"), 502)
      assert.equal(before, mtls:stats().requests)
    end)

    it("presents the client certificate over TLS 1.2 to an upstream that requires one", function()
      local doc = helpers.echo(plain_get("/c1req/echo"))
      assert.equal("M12", doc.name)
      assert.equal("TLSv1.2", doc.tls.version)
      assert.equal("client1", doc.tls.client)
    end)

    it("answers 502 and logs the handshake failure when an upstream requires a certificate and none is set", function()
      local line = "upstream " .. mtls12.addr .. ": TLS handshake failed"
      local before, reqs = count(proxy:stderr(), line), mtls12:stats().requests
      helpers.assert_error(plain_get("/c0req/echo"), 502)
      assert.truthy(helpers.wait_until(function()
        return count(proxy:stderr(), line) > before
      end, 3), "no handshake failure logged:\n" .. proxy:stderr():sub(-2000))
      assert.equal(reqs, mtls12:stats().requests)
    end)

    it("carries a 2 MB response from a TLS upstream intact", function()
      local res = plain_get("/up/bytes/2000000")
      assert.equal(200, res.status)
      assert.equal(2000000, #res.body)
      assert.equal(helpers.sha256(helpers.pattern(2000000)), helpers.sha256(res.body))
    end)
  end)

  describe("broken handshakes", function()
    it("closes a connection that sends plain HTTP to a TLS port and logs it; others are unaffected", function()
      local c = proxy:connect()
      local addr = c:local_addr()
      assert(c:send("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"))
      local data, why = c:read_until_close(3)
      c:close()
      assert.equal("closed", why)
      -- nothing, a TLS alert record, or (like nginx) a plain-text 400 saying why
      if data:sub(1, 5) == "HTTP/" then
        local status, head = data:match("^HTTP/1%.1 (%d+) [^\r]*\r\n(.-\r\n)\r\n")
        assert.equal("400", status, data)
        assert.truthy(head:lower():find("connection: close\r\n", 1, true), data)
        assert.truthy(head:find("\r\nDate: %a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT\r\n"), data)
      else
        assert.is_true(data == "" or data:byte(1) == 0x15, string.format("%q", data))
      end
      assert.truthy(helpers.wait_until(function()
        return proxy:stderr():find(addr .. ": TLS handshake failed", 1, true)
      end, 3), "no log line for " .. addr .. ":\n" .. proxy:stderr():sub(-2000))
      local res, out = https(proxy.port, "a.test", "/tlsinfo")
      assert.truthy(res, out)
      assert.equal(200, res.status)
    end)

    it("closes a connection that sends a garbage handshake record and logs it", function()
      local c = proxy:connect()
      local addr = c:local_addr()
      assert(c:send("\22\3\1\0\16" .. string.rep("\255", 16)))
      local data, why = c:read_until_close(3)
      c:close()
      assert.equal("closed", why)
      assert.is_true(data == "" or data:byte(1) == 0x15, string.format("%q", data))
      assert.truthy(helpers.wait_until(function()
        return proxy:stderr():find(addr .. ": TLS handshake failed", 1, true)
      end, 3), "no log line for " .. addr .. ":\n" .. proxy:stderr():sub(-2000))
    end)

    it("closes stalled handshakes after timeouts.handshake and logs it, serving others meanwhile", function()
      local started = socket.gettime()
      local partial = proxy:connect()   -- half a ClientHello: a record header promising 512 bytes
      assert(partial:send("\22\3\1\2\0\1\0\1\252\3\3"))
      local silent = proxy:connect()    -- nothing at all
      local addrs = { partial:local_addr(), silent:local_addr() }
      helpers.sleep(0.3)
      local res, out = https(proxy.port, "a.test", "/tlsinfo")
      assert.truthy(res, out)
      assert.equal(200, res.status)
      for _, c in ipairs({ partial, silent }) do
        local data, why = c:read_until_close(4)
        assert.equal("closed", why)
        assert.is_true(data == "" or data:byte(1) == 0x15, string.format("%q", data))
        c:close()
      end
      local took = socket.gettime() - started
      assert.is_true(took > 0.8 and took < 3, "closed after " .. took .. " s")
      for _, addr in ipairs(addrs) do
        assert.truthy(helpers.wait_until(function()
          return proxy:stderr():find(addr .. ": TLS handshake timeout", 1, true)
        end, 3), "no timeout line for " .. addr .. ":\n" .. proxy:stderr():sub(-2000))
      end
      local after, out2 = https(proxy.port, "b.test", "/tlsinfo")
      assert.truthy(after, out2)
      assert.equal(200, after.status)
    end)

    -- The server's first flight used to re-arm the connection's timer with the
    -- keep-alive timeout (60 s): a client that got it and stalled was kept.
    it("closes a client that stalls after the server's first flight within timeouts.handshake", function()
      local script = [[
import socket, ssl, sys, time
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(inc, out, server_hostname="a.test")
try:
    tls.do_handshake()
except ssl.SSLWantReadError:
    pass
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(out.read())            # the ClientHello, and then nothing more
s.settimeout(10)
t0 = time.time()
got = 0
while True:
    d = s.recv(65536)
    if not d:
        break
    got += len(d)
print("flight=%d closed_after=%.2f" % (got, time.time() - t0))
]]
      local f = helpers.tmpdir() .. "/stall.py"
      helpers.write_file(f, script)
      local out = sh("timeout 15 python3 " .. q(f) .. " " .. proxy.port)
      local flight, after = out:match("flight=(%d+) closed_after=([%d.]+)")
      assert.truthy(flight, out)
      assert.is_true(tonumber(flight) > 100, "no server flight: " .. out) -- ServerHello .. Finished
      assert.is_true(tonumber(after) > 0.7 and tonumber(after) < 3, "closed after " .. after .. " s")
    end)

    it("does not apply the handshake timeout once the handshake is done", function()
      -- a request, 1.6 s of idling (past the 1 s handshake timeout), another
      -- request on the same connection: both answered
      local req = "GET /tlsinfo HTTP/1.1\r\nHost: a.test\r\n\r\n"
      local r = s_client(proxy.port, { sni = "a.test",
        input = "(printf '%s' " .. q(req) .. "; sleep 1.6; printf '%s' " .. q(req) .. "; sleep 0.3)" })
      assert.equal(2, count(r.out, "HTTP/1.1 200 OK"), r.out)
      assert.equal(2, count(r.out, "version=TLSv1.3"), r.out)
    end)
  end)

  describe("across workers", function()
    local p2

    lazy_setup(function()
      p2 = helpers.proxy(CONF2, { vars = { certs = CERTS } })
    end)

    lazy_teardown(function()
      local p = p2
      p2 = nil
      if p then p:stop() end
    end)

    -- One full handshake saves a session; then rounds of 10 parallel resumed
    -- connections (at most 40) until both workers have answered resumed ones.
    local function across(version_flag)
      local dir = helpers.tmpdir()
      local req = "GET /worker HTTP/1.1\r\nHost: a.test\r\n\r\n"
      local first = s_client(p2.port, { sni = "a.test", send = req,
                                        args = { version_flag, "-sess_out", dir .. "/s.pem" } })
      assert.truthy(first.new, first.out)
      local base = argv_line({ "timeout", "10", "openssl", "s_client", "-connect", "127.0.0.1:" .. p2.port,
                               "-servername", "a.test", "-CAfile", CERTS .. "/ca.pem", version_flag,
                               "-sess_in", dir .. "/s.pem" })
      local workers, resumed, tries = {}, 0, 0
      for round = 1, 4 do
        local script = {}
        for i = 1, 10 do
          script[#script + 1] = "((printf '%s' " .. q(req) .. "; sleep 0.3) | " .. base .. " > "
            .. q(dir .. "/out." .. round .. "." .. i) .. " 2>&1) &"
        end
        script[#script + 1] = "wait"
        sh(table.concat(script, "\n"))
        for i = 1, 10 do
          tries = tries + 1
          local out = helpers.read_file(dir .. "/out." .. round .. "." .. i) or ""
          local w = out:match("HTTP/1%.1 200[^\n]*\n.-\r\n\r\n(%d)")
          if out:find("\nReused, " .. (version_flag == "-tls1_3" and "TLSv1.3" or "TLSv1.2"), 1, true) and w then
            resumed = resumed + 1
            workers[w] = true
          end
        end
        if workers["0"] and workers["1"] then break end
      end
      return workers, resumed, tries
    end

    it("resumes TLS 1.3 tickets issued by one worker on the other", function()
      local workers, resumed, tries = across("-tls1_3")
      assert.equal(tries, resumed)
      assert.is_true(workers["0"] and workers["1"] or false,
        "resumed connections were answered only by worker(s) " .. table.concat((function()
          local t = {} for k in pairs(workers) do t[#t + 1] = k end return t end)(), ","))
    end)

    it("resumes TLS 1.2 tickets issued by one worker on the other", function()
      local workers, resumed, tries = across("-tls1_2")
      assert.equal(tries, resumed)
      assert.is_true(workers["0"] and workers["1"] or false)
    end)
  end)

  describe("config errors", function()
    local function check(listen_or_upstream, needle_file)
      local dir = helpers.tmpdir()
      local out, rc = sh("cp " .. argv_line({ CERTS .. "/a.pem", CERTS .. "/a.key", CERTS .. "/b.key",
                                              CERTS .. "/b.pem", CERTS .. "/w.key",
                                              CERTS .. "/ca.pem", CERTS .. "/garbage.pem" }) .. " " .. q(dir))
      assert.equal(0, rc, out)
      local conf = helpers.write_config(dir, table.concat({
        'local mg = require "moongate"',
        listen_or_upstream,
        'mg.route { path = "/", respond = { status = 200 } }',
      }, "\n") .. "\n", { port = helpers.free_port() })
      out, rc = helpers.moongate({ "-t", "-c", conf })
      assert.equal(1, rc, out)
      assert.is_nil(out:find("config ok", 1, true), out)
      assert.truthy(out:find(dir .. "/" .. needle_file, 1, true), "no " .. needle_file .. " in: " .. out)
      return out
    end

    it("-t accepts the files when they are fine (relative and absolute names)", function()
      local dir = helpers.tmpdir()
      sh("cp " .. argv_line({ CERTS .. "/a.pem", CERTS .. "/a.key" }) .. " " .. q(dir))
      local conf = helpers.write_config(dir, table.concat({
        'local mg = require "moongate"',
        'mg.listen { "127.0.0.1:${p1}", tls = { cert = "a.pem", key = "a.key" } }',
        'mg.listen { "127.0.0.1:${p2}", tls = { cert = "${abs}/b.pem", key = "${abs}/b.key" } }',
        'mg.route { path = "/", respond = { status = 200 } }',
      }, "\n") .. "\n", { p1 = helpers.free_port(), p2 = helpers.free_port(), abs = CERTS })
      local out, rc = helpers.moongate({ "-t", "-c", conf }, { cwd = "/" })
      assert.equal(0, rc, out)
      assert.truthy(out:find("config ok", 1, true), out)
    end)

    it("-t exits 1 naming a missing certificate file", function()
      check('mg.listen { "127.0.0.1:${port}", tls = { cert = "missing.pem", key = "a.key" } }', "missing.pem")
    end)

    it("-t exits 1 naming a missing key file", function()
      check('mg.listen { "127.0.0.1:${port}", tls = { certs = { { cert = "a.pem", key = "a.key" },'
            .. ' { cert = "a.pem", key = "nokey.key" } } } }', "nokey.key")
    end)

    it("-t exits 1 naming a key that does not match its certificate (same key type)", function()
      local out = check('mg.listen { "127.0.0.1:${port}", tls = { cert = "b.pem", key = "w.key" } }', "w.key")
      assert.truthy(out:find("w.key' does not match certificate '", 1, true), out)
      assert.truthy(out:find("/b.pem'", 1, true), out)
    end)

    it("-t exits 1 naming a key of another type than its certificate", function()
      local out = check('mg.listen { "127.0.0.1:${port}", tls = { cert = "a.pem", key = "b.key" } }', "b.key")
      assert.truthy(out:find("b.key' does not match certificate '", 1, true), out)
    end)

    it("-t accepts an expired certificate with a warning naming it", function()
      local dir = helpers.tmpdir()
      local conf = helpers.write_config(dir, 'local mg = require "moongate"\n'
        .. 'mg.listen { "127.0.0.1:${port}", tls = { cert = "' .. CERTS .. '/expired.pem", key = "'
        .. CERTS .. '/expired.key" } }\nmg.route { path = "/", respond = { status = 200 } }\n',
        { port = helpers.free_port() })
      local out, rc = helpers.moongate({ "-t", "-c", conf })
      assert.equal(0, rc, out)
      assert.truthy(out:find("[warn] main certificate '" .. CERTS .. "/expired.pem' has expired", 1, true), out)
    end)

    it("-t exits 1 naming a certificate file that is not PEM", function()
      check('mg.listen { "127.0.0.1:${port}", tls = { cert = "garbage.pem", key = "a.key" } }', "garbage.pem")
    end)

    it("-t exits 1 naming a key file that is not PEM", function()
      check('mg.listen { "127.0.0.1:${port}", tls = { cert = "a.pem", key = "garbage.pem" } }', "garbage.pem")
    end)

    it("-t exits 1 naming a missing client_ca", function()
      check('mg.listen { "127.0.0.1:${port}", tls = { cert = "a.pem", key = "a.key",'
            .. ' verify_client = "required", client_ca = "noca.pem" } }', "noca.pem")
    end)

    it("-t exits 1 naming a missing upstream ca", function()
      check('mg.listen { "127.0.0.1:${port}" }\n'
            .. 'mg.upstream "u" { servers = { "127.0.0.1:1" }, tls = { ca = "noca.pem", sni = "x.test" } }',
            "noca.pem")
    end)

    it("-t exits 1 naming an upstream client key that does not match", function()
      check('mg.listen { "127.0.0.1:${port}" }\n'
            .. 'mg.upstream "u" { servers = { "127.0.0.1:1" }, tls = { ca = "ca.pem", sni = "x.test",'
            .. ' cert = "a.pem", key = "b.key" } }', "b.key")
    end)
  end)

  -- Certificates are read again at every reload; the session ticket keys belong
  -- to the process, so a ticket issued before the reload still resumes after it.
  -- the main thread's watchdog reports a hook that has not returned for 5 s,
  -- checking every 5 s: a tls_hello hook that spins 11-12 s of wall time (not
  -- CPU time: a busy machine must not stretch it) is reported at least once
  describe("a tls_hello hook that does not return", function()
    it("is reported by the watchdog, naming the worker and the hook", function()
      local proxy = helpers.proxy('local mg = require "moongate"\n'
        .. 'mg.config { workers = 1, access_log = false, timeouts = { handshake = 30 } }\n'
        .. 'mg.listen { "127.0.0.1:${port}", tls = { cert = "' .. CERTS .. '/a.pem", key = "'
        .. CERTS .. '/a.key" } }\n'
        .. 'mg.on("tls_hello", function(hello)\n'
        .. '  if hello.sni == "slow.test" then local t = os.time() + 12 while os.time() < t do end end\n'
        .. 'end)\n'
        .. 'mg.route { respond = { status = 200, body = "ok" } }\n')
      local res, out = helpers.curl({ "-k", "--resolve", "slow.test:" .. proxy.port .. ":127.0.0.1",
                                      "https://slow.test:" .. proxy.port .. "/" }, { max_time = 20 })
      assert.truthy(res, "curl: " .. tostring(out)) -- it returned in the end, and the handshake went on
      assert.equal("ok", res.body)
      local log = proxy:stderr()
      assert.truthy(log:find("worker 0 has been stuck in a tls_hello hook for", 1, true), log)
      proxy:stop()
    end)
  end)

  describe("TLS and reload", function()
    local proxy

    local function conf(cert)
      return 'local mg = require "moongate"\n'
        .. 'mg.config { workers = 1, access_log = false, log_level = "info" }\n'
        .. 'mg.listen { "127.0.0.1:${port}", tls = { cert = "' .. CERTS .. '/' .. cert .. '.pem", key = "'
        .. CERTS .. '/' .. cert .. '.key" } }\n'
        .. 'mg.route { path = "/", respond = { status = 200, body = "ok" } }\n'
    end

    lazy_setup(function()
      proxy = helpers.proxy(conf("b"))
    end)

    lazy_teardown(function()
      proxy:stop() -- not helpers.teardown: that would clean up the outer describe's processes too
    end)

    it("serves the new certificate after a reload, and resumes a ticket issued before it", function()
      local sess = helpers.tmpdir() .. "/sess.pem"
      local first = s_client(proxy.port, { sni = "b.test", send = "GET / HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
                                           args = { "-ign_eof", "-sess_out", sess } })
      assert.is_true(first.ok, first.out)
      assert.equal("b.test", first.cn)
      -- the same name, another certificate (a.test's, RSA): what a renewal looks like to a client
      helpers.write_file(proxy.conf .. ".new", helpers.expand(conf("a"), { port = proxy.port }))
      assert(os.rename(proxy.conf .. ".new", proxy.conf))
      local out, rc = helpers.moongate({ "-s", "reload", "-c", proxy.conf })
      assert.equal(0, rc, out)
      local now
      assert.is_true(helpers.wait_until(function()
        now = s_client(proxy.port, { sni = "b.test" })
        return now.cn == "a.test"
      end, 5, 0.1), "still serving " .. tostring(now and now.cn))
      local again = s_client(proxy.port, { sni = "b.test", send = "GET / HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
                                           args = { "-ign_eof", "-sess_in", sess } })
      assert.equal("TLSv1.3", again.reused, again.out)
    end)
  end)
end)
