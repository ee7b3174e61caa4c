-- Issue 14 (i14-auth): the authentication policies key_auth, basic_auth and
-- mtls_consumer against the real binary: their answers (401 / 403 with
-- WWW-Authenticate and a body), the consumer they find (req.ctx.consumer seen by a
-- later policy, the access log's `consumer` field), credentials hidden from the
-- origin (hide_credentials), htpasswd files with bcrypt and SHA-512 crypt entries,
-- the verification cache, config errors with file:line, and the client
-- certificate mapped to a consumer on a TLS listener with verify_client.
local helpers = require "spec.helpers"
local q = helpers.shell_quote
local socket = require "socket"
local mime = require "mime"

local function b64(s) return (mime.b64(s)) end

-- bcrypt hashes made by python3's crypt (libxcrypt) when it has one, else fixed
-- ones made the same way (password in the comment)
local function bcrypt(pw, cost, fixed)
  local out, rc = helpers.sh("python3 -W ignore -c " .. q(
    "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=2**" .. cost .. ")))")
    .. " " .. q(pw) .. " 2>/dev/null")
  local h = rc == 0 and out:match("^(%$2b%$%d%d%$[./%w]+)")
  return h or fixed
end

local function sha512crypt(pw)
  local out, rc = helpers.sh("openssl passwd -6 " .. q(pw))
  assert(rc == 0, out)
  return (assert(out:match("^(%$6%$[^\n]+)")))
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
X
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
mkca() { ec "$1.key"; openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days 30 -config ca.cnf -extensions ca -out "$1.pem"; }
serial=100
leaf() { # file CN ca extendedKeyUsage subjectAltName
  serial=$((serial + 1))
  ec "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$2" -config ca.cnf -out "$1.csr"
  { echo "basicConstraints = CA:FALSE"
    echo "keyUsage = critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage = $4"
    if [ -n "$5" ]; then echo "subjectAltName = $5"; fi; } > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -set_serial $serial -days 30 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
}
mkca ca "Auth Test CA"
leaf srv srv.test ca serverAuth "DNS:srv.test"
leaf c1 client-one ca clientAuth "DNS:c1.clients.test,DNS:Alt.Clients.Test"
leaf c2 client-two ca clientAuth "DNS:c2.clients.test"
openssl x509 -in c2.pem -outform DER | sha256sum | cut -d' ' -f1 > c2.sha256
]=]

local CONF = [=[
local mg = require "moongate"
mg.config { workers = 1, access_log = "access.log" }
mg.listen { "127.0.0.1:${port}" }
mg.listen { "127.0.0.1:${tls}", tls = { cert = "srv.pem", key = "srv.key", verify_client = "optional",
                                        client_ca = "ca.pem" } }
local o = mg.upstream "o" { servers = { "${origin}" } }
-- a later policy: what the authentication policy left in req.ctx.consumer
local show = mg.policy.new { name = "show_consumer", request = function(self, req)
  local c = req.ctx.consumer
  req:set_header("x-consumer", c and (c.name .. "/" .. c.source) or "none")
end }
mg.route { path = "/k/", upstream = o, use = {
  mg.policy.key_auth { header = "apikey", keys = { ["k-123"] = "alice" } }, show } }
mg.route { path = "/kq/", upstream = o, use = {
  mg.policy.key_auth { query = "api_key", keys = { ["k-123"] = "alice", ["k-456"] = "bob" } }, show } }
mg.route { path = "/kshow/", upstream = o, use = {
  mg.policy.key_auth { header = "X-Key", query = "api_key", keys = { ["k-789"] = "carol" }, hide_credentials = false,
                       realm = "the api" }, show } }
mg.route { path = "/kanon/", upstream = o, use = {
  mg.policy.key_auth { keys = { ["k-123"] = "alice" }, anonymous = "guest" }, show } }
mg.route { path = "/b/", upstream = o, use = { mg.policy.basic_auth { file = "htpasswd", realm = "files" }, show } }
mg.route { path = "/bi/", upstream = o, use = {
  mg.policy.basic_auth { users = { dave = "${dave_hash}" }, hide_credentials = false }, show } }
mg.route { path = "/bslow/", upstream = o, use = { mg.policy.basic_auth { users = { slow = "${slow_hash}" } } } }
mg.route { path = "/bnocache/", upstream = o, use = {
  mg.policy.basic_auth { users = { slow = "${slow_hash}" }, cache_ttl = 0 } } }
mg.route { path = "/bdrop/", upstream = o, timeouts = { hook = 0.05 }, use = {
  mg.policy.basic_auth { users = { slow = "${slow_hash}" }, cache_ttl = 0 } } }
mg.route { path = "/m/cn/", upstream = o, use = {
  mg.policy.mtls_consumer { by = "subject_cn", consumers = { ["client-one"] = "svc-one" } }, show } }
mg.route { path = "/m/san/", upstream = o, use = {
  mg.policy.mtls_consumer { by = "san_dns", consumers = { ["alt.clients.test"] = "svc-alt" } }, show } }
mg.route { path = "/m/fp/", upstream = o, use = {
  mg.policy.mtls_consumer { by = "fingerprint", consumers = { ["${c2_fp}"] = "svc-two" } }, show } }
mg.route { path = "/m/opt/", upstream = o, use = {
  mg.policy.mtls_consumer { consumers = { ["client-one"] = "svc-one" }, required = false }, show } }
mg.route { path = "/", upstream = o }
]=]

describe("authentication policies", function()
  local origin, proxy, dir, hashes

  lazy_setup(function()
    dir = helpers.tmpdir()
    helpers.write_file(dir .. "/gen.sh", GEN)
    local out, rc = helpers.sh("cd " .. q(dir) .. " && timeout 30 sh gen.sh")
    assert(rc == 0, "making the test certificates failed:\n" .. tostring(out))
    hashes = {
      -- b-secret
      erin = bcrypt("b-secret", 4, "$2b$04$3ARMqkERPWQI4VNUm0Qc3Oeq8p2U0/4tTu1TE4UOCkGs91REzP8R."),
      frank = sha512crypt("s-secret"),
      -- d-secret
      dave = bcrypt("d-secret", 4, "$2b$04$cGUJ/q8MIPxVrnXjSxhFZu/yno.nkASwIxhm0IrmOFzfL7u5aZOqG"),
      -- slow-pw (cost 12: a quarter of a second or so)
      slow = bcrypt("slow-pw", 12, "$2b$12$tdf.FRKeV6yqWmXAa5S/UeC4BP4ZT/SZSAOI.yEVcITUotI9FBuri"),
    }
    -- $2y$ is the same algorithm as $2b$ for libxcrypt (PHP's and htpasswd -B's prefix)
    local grace = "$2y$" .. hashes.erin:sub(5)
    helpers.write_file(dir .. "/htpasswd", table.concat({
      "# users of /b/",
      "erin:" .. hashes.erin,
      "",
      "frank:" .. hashes.frank,
      "grace:" .. grace,
    }, "\n") .. "\n")
    origin = helpers.origin({ name = "o" })
    local fp = helpers.read_file(dir .. "/c2.sha256"):match("^(%x+)")
    -- the config gives it with colons and in capitals: normalized by the policy
    local fp_conf = fp:upper():gsub("(%x%x)", "%1:"):sub(1, -2)
    proxy = helpers.proxy(CONF, { dir = dir, ports = { "tls" }, wait_ports = { "port", "tls" },
      vars = { origin = origin.addr, dave_hash = hashes.dave, slow_hash = hashes.slow, c2_fp = fp_conf } })
  end)

  lazy_teardown(function() helpers.teardown(proxy) end)

  local function echo(res)
    assert.equal(200, res.status, res.body)
    return helpers.decode_json(res.body)
  end

  local function got(doc, name)
    for _, h in ipairs(doc.headers) do
      if h[1]:lower() == name then return h[2] end
    end
  end

  local function log_with(path)
    local found
    helpers.wait_until(function()
      for l in helpers.lines(helpers.read_file(dir .. "/access.log") or "") do
        if l:find('"path":"' .. path, 1, true) then found = helpers.decode_json(l) end
      end
      return found
    end, 3)
    return found
  end

  local function basic(user, pw) return "Basic " .. b64(user .. ":" .. pw) end

  describe("key_auth", function()
    it("the issue's minimal form: the key names the consumer, seen by the next policy and in the access log; the key header does not reach the origin", function()
      local doc = echo(assert(proxy:request({ path = "/k/ok", headers = { apikey = "k-123" } })))
      assert.equal("alice/key_auth", got(doc, "x-consumer"))
      assert.is_nil(got(doc, "apikey"))
      local l = log_with("/k/ok")
      assert.equal("alice", l.consumer)
      assert.is_nil(l.policy)
    end)

    it("no key: 401 with WWW-Authenticate ApiKey and a body, nothing upstream, policy key_auth in the log", function()
      local res = assert(proxy:request({ path = "/k/none" }))
      assert.equal(401, res.status)
      assert.equal('ApiKey realm="moongate"', res.h["www-authenticate"])
      assert.equal("No API key found in request\n", res.body)
      assert.equal(0, origin:count_path("/k/none"))
      local l = log_with("/k/none")
      assert.equal("key_auth", l.policy)
      assert.is_nil(l.consumer)
    end)

    it("a wrong key, or one differing in case or by a byte: 401 Invalid API key", function()
      for i, k in ipairs({ "k-124", "K-123", "k-1234", "k-12", "" }) do
        local res = assert(proxy:request({ path = "/k/bad" .. i, headers = { apikey = k } }))
        assert.equal(401, res.status, k)
        assert.equal(k == "" and "No API key found in request\n" or "Invalid API key\n", res.body)
        assert.equal(0, origin:count_path("/k/bad" .. i))
      end
    end)

    it("the header form does not take the key from the query (query is off by default)", function()
      local res = assert(proxy:request({ path = "/k/q?apikey=k-123" }))
      assert.equal(401, res.status)
    end)

    it("query = NAME: the key from the query argument, removed from the target sent upstream", function()
      local doc = echo(assert(proxy:request({ path = "/kq/x?a=1&api_key=k-456&b=2" })))
      assert.equal("bob/key_auth", got(doc, "x-consumer"))
      assert.equal("/kq/x?a=1&b=2", doc.path)
      local only = echo(assert(proxy:request({ path = "/kq/y?api_key=k-123" })))
      assert.equal("alice/key_auth", got(only, "x-consumer"))
      assert.equal("/kq/y", only.path)
      -- the default header still works with a query key set
      local h = echo(assert(proxy:request({ path = "/kq/z", headers = { apikey = "k-456" } })))
      assert.equal("bob/key_auth", got(h, "x-consumer"))
      assert.is_nil(got(h, "apikey"))
    end)

    it("hide_credentials = false: the key goes upstream, header and query; the realm is the configured one", function()
      local doc = echo(assert(proxy:request({ path = "/kshow/a?api_key=k-789", headers = { ["X-Key"] = "k-789" } })))
      assert.equal("carol/key_auth", got(doc, "x-consumer"))
      assert.equal("k-789", got(doc, "x-key"))
      assert.equal("/kshow/a?api_key=k-789", doc.path)
      local res = assert(proxy:request({ path = "/kshow/b" }))
      assert.equal(401, res.status)
      assert.equal('ApiKey realm="the api"', res.h["www-authenticate"])
    end)

    it("anonymous: a request without a key gets the anonymous consumer; a wrong key is still refused", function()
      assert.equal("guest/key_auth", got(echo(assert(proxy:request({ path = "/kanon/a" }))), "x-consumer"))
      assert.equal("guest", log_with("/kanon/a").consumer)
      local doc = echo(assert(proxy:request({ path = "/kanon/b", headers = { apikey = "k-123" } })))
      assert.equal("alice/key_auth", got(doc, "x-consumer"))
      local res = assert(proxy:request({ path = "/kanon/c", headers = { apikey = "nope" } }))
      assert.equal(401, res.status)
    end)
  end)

  it("moongate -T shows each policy's describe() line", function()
    local out, rc = helpers.moongate({ "-T", "-c", proxy.conf })
    assert.equal(0, rc, out)
    for _, want in ipairs({
      "policy 1: key_auth (route): header=apikey keys=1 hide_credentials=true\n",
      "policy 1: key_auth (route): header=apikey query=api_key keys=2 hide_credentials=true\n",
      "policy 1: key_auth (route): header=x-key query=api_key keys=1 hide_credentials=false\n",
      "policy 1: basic_auth (route): users=3 cache_ttl=30s hide_credentials=true\n",
      "policy 1: basic_auth (route): users=1 cache_ttl=0s hide_credentials=true\n",
      "policy 1: mtls_consumer (route): by=san_dns consumers=1 required=true\n",
      "policy 1: mtls_consumer (route): by=subject_cn consumers=1 required=false\n",
    }) do
      assert.truthy(out:find(want, 1, true), want .. "\n" .. out)
    end
  end)

  describe("basic_auth", function()
    it("htpasswd bcrypt ($2b$ and $2y$) and SHA-512 crypt entries let their users in as consumers, Authorization hidden", function()
      for _, c in ipairs({ { "erin", "b-secret" }, { "frank", "s-secret" }, { "grace", "b-secret" } }) do
        local path = "/b/" .. c[1]
        local doc = echo(assert(proxy:request({ path = path, headers = { Authorization = basic(c[1], c[2]) } })))
        assert.equal(c[1] .. "/basic_auth", got(doc, "x-consumer"))
        assert.is_nil(got(doc, "authorization"))
        assert.equal(c[1], log_with(path).consumer)
      end
    end)

    it("wrong password, unknown user, no or malformed Authorization: 401 with WWW-Authenticate Basic realm, nothing upstream", function()
      local cases = {
        basic("erin", "wrong"), basic("frank", "b-secret"), basic("nobody", "b-secret"), basic("erin", ""),
        "Bearer abc", "Basic !!!", "Basic " .. b64("erin-no-colon"), false,
      }
      for i, a in ipairs(cases) do
        local res = assert(proxy:request({ path = "/b/no" .. i, headers = { Authorization = a or nil } }))
        assert.equal(401, res.status, tostring(a))
        assert.equal('Basic realm="files", charset="UTF-8"', res.h["www-authenticate"])
        assert.equal("Unauthorized\n", res.body)
        assert.equal(0, origin:count_path("/b/no" .. i))
        assert.equal("basic_auth", log_with("/b/no" .. i).policy)
      end
    end)

    it("inline users with hide_credentials = false: the Authorization header goes upstream", function()
      local a = basic("dave", "d-secret")
      local doc = echo(assert(proxy:request({ path = "/bi/x", headers = { Authorization = a } })))
      assert.equal("dave/basic_auth", got(doc, "x-consumer"))
      assert.equal(a, got(doc, "authorization"))
      local res = assert(proxy:request({ path = "/bi/y", headers = { Authorization = basic("dave", "D-secret") } }))
      assert.equal(401, res.status)
      assert.equal('Basic realm="moongate", charset="UTF-8"', res.h["www-authenticate"])
    end)

    it("a verified password is remembered for cache_ttl: the next requests skip the slow bcrypt; a wrong password is never cached", function()
      local function timed(path, pw)
        local t0 = socket.gettime()
        local res = assert(proxy:request({ path = path, headers = { Authorization = basic("slow", pw) } }))
        return res.status, socket.gettime() - t0
      end
      local s1, first = timed("/bslow/1", "slow-pw")
      assert.equal(200, s1)
      local best = math.huge
      for i = 2, 4 do
        local s, t = timed("/bslow/" .. i, "slow-pw")
        assert.equal(200, s)
        best = math.min(best, t)
      end
      assert.truthy(first > 0.05, "cost-12 bcrypt took only " .. first .. " s")
      assert.truthy(best < first / 3, ("cached %.4f s vs first %.4f s"):format(best, first))
      -- cache_ttl = 0: every request pays for bcrypt
      local _, u1 = timed("/bnocache/1", "slow-pw")
      local _, u2 = timed("/bnocache/2", "slow-pw")
      assert.truthy(math.min(u1, u2) > first / 3, ("uncached %.4f %.4f vs %.4f"):format(u1, u2, first))
      local sw, tw = timed("/bslow/w1", "wrong")
      assert.equal(401, sw)
      local _, tw2 = timed("/bslow/w2", "wrong")
      assert.truthy(math.min(tw, tw2) > first / 3, ("wrong password %.4f %.4f"):format(tw, tw2))
    end)
    it("a bcrypt check runs off the worker's thread: the one worker answers other requests meanwhile", function()
      -- cost 12 and no cache: each check takes a good fraction of a second
      local function slow_request(path)
        local c = assert(socket.tcp())
        c:settimeout(10)
        assert(c:connect("127.0.0.1", proxy.port))
        assert(c:send("GET " .. path .. " HTTP/1.1\r\nHost: x\r\nAuthorization: " .. basic("slow", "slow-pw")
          .. "\r\nConnection: close\r\n\r\n"))
        return c
      end
      local t0 = socket.gettime()
      local c = slow_request("/bnocache/bg")
      socket.sleep(0.02) -- the check has started
      local t1 = socket.gettime()
      local res = assert(proxy:request({ path = "/k/during", headers = { apikey = "k-123" } }))
      local fast = socket.gettime() - t1
      assert.equal(200, res.status)
      local all = assert(c:receive("*a"))
      c:close()
      local slow = socket.gettime() - t0
      assert.truthy(all:find("^HTTP/1.1 200 "), all)
      assert.truthy(slow > 0.05, "the check took only " .. slow .. " s")
      assert.truthy(fast < slow / 3, ("the other request took %.4f s during a %.4f s check"):format(fast, slow))
    end)
    it("a request dropped while its check is on the thread pool (timeouts.hook, client gone) leaves the worker serving", function()
      local res = assert(proxy:request({ path = "/bdrop/a", headers = { Authorization = basic("slow", "slow-pw") } }))
      assert.equal(504, res.status)
      assert.equal(0, origin:count_path("/bdrop/a"))
      -- a client that leaves during its check
      local c = assert(socket.tcp())
      c:settimeout(5)
      assert(c:connect("127.0.0.1", proxy.port))
      assert(c:send("GET /bnocache/gone HTTP/1.1\r\nHost: x\r\nAuthorization: " .. basic("slow", "slow-pw") .. "\r\n\r\n"))
      socket.sleep(0.02)
      c:close()
      socket.sleep(0.5) -- the check ends after its request
      local ok = assert(proxy:request({ path = "/k/after", headers = { apikey = "k-123" } }))
      assert.equal(200, ok.status)
      assert.truthy(helpers.wait_until(function()
        return proxy:stderr():find("hook still waiting after timeouts.hook", 1, true)
      end, 3), proxy:stderr())
    end)
  end)

  describe("mtls_consumer", function()
    local function https(path, cert)
      local a = { "--cacert", dir .. "/ca.pem", "--resolve", "srv.test:" .. proxy.ports.tls .. ":127.0.0.1" }
      if cert then
        for _, x in ipairs({ "--cert", dir .. "/" .. cert .. ".pem", "--key", dir .. "/" .. cert .. ".key" }) do
          a[#a + 1] = x
        end
      end
      a[#a + 1] = "https://srv.test:" .. proxy.ports.tls .. path
      local res, out = helpers.curl(a, { max_time = 10 })
      return assert(res, out)
    end

    it("by subject_cn: the certificate's CN names the consumer, seen later and logged", function()
      local doc = echo(https("/m/cn/a", "c1"))
      assert.equal("svc-one/mtls_consumer", got(doc, "x-consumer"))
      assert.equal("svc-one", log_with("/m/cn/a").consumer)
    end)

    it("by san_dns: a subjectAltName DNS name, compared without case", function()
      local doc = echo(https("/m/san/a", "c1"))
      assert.equal("svc-alt/mtls_consumer", got(doc, "x-consumer"))
      local res = https("/m/san/b", "c2")
      assert.equal(403, res.status)
      assert.equal("client certificate not allowed\n", res.body)
    end)

    it("by fingerprint: the SHA-256 of the certificate (given with colons, in capitals)", function()
      local doc = echo(https("/m/fp/a", "c2"))
      assert.equal("svc-two/mtls_consumer", got(doc, "x-consumer"))
      local res = https("/m/fp/b", "c1")
      assert.equal(403, res.status)
    end)

    it("a certificate that maps to no consumer: 403, nothing upstream, policy in the log", function()
      local res = https("/m/cn/other", "c2")
      assert.equal(403, res.status)
      assert.equal("client certificate not allowed\n", res.body)
      assert.equal(0, origin:count_path("/m/cn/other"))
      assert.equal("mtls_consumer", log_with("/m/cn/other").policy)
    end)

    it("no client certificate (TLS without one, or plain HTTP): 403 certificate required", function()
      local res = https("/m/cn/nocert")
      assert.equal(403, res.status)
      assert.equal("client certificate required\n", res.body)
      local plain = assert(proxy:request({ path = "/m/cn/plain" }))
      assert.equal(403, plain.status)
      assert.equal(0, origin:count_path("/m/cn/nocert") + origin:count_path("/m/cn/plain"))
    end)

    it("required = false: no mapped certificate goes through without a consumer", function()
      assert.equal("none", got(echo(https("/m/opt/a")), "x-consumer"))
      assert.equal("none", got(echo(https("/m/opt/b", "c2")), "x-consumer"))
      assert.equal("svc-one/mtls_consumer", got(echo(https("/m/opt/c", "c1")), "x-consumer"))
    end)
  end)

  describe("config errors", function()
    local function check_conf(body, files)
      local d = helpers.tmpdir()
      for name, text in pairs(files or {}) do helpers.write_file(d .. "/" .. name, text) end
      local path = d .. "/proxy.lua"
      helpers.write_file(path, 'local mg = require "moongate"\nmg.listen { "127.0.0.1:1" }\n' .. body .. "\n")
      local out, rc = helpers.moongate({ "-t", "-c", path })
      assert.is_not.equal(0, rc, out)
      return out, path
    end

    it("name the user's file and line", function()
      local cases = {
        { 'mg.route { path = "/", respond = { status = 200 }, use = {\n  mg.policy.key_auth { keys = { k = "a" }, hedaer = "x" } } }',
          ":4: mg.policy.key_auth: unknown key 'hedaer'" },
        { 'mg.route { path = "/", respond = { status = 200 }, use = { mg.policy.key_auth { header = "apikey" } } }',
          ":3: mg.policy.key_auth: 'keys' must be a table" },
        { 'mg.route { path = "/", respond = { status = 200 }, use = { mg.policy.key_auth { keys = {} } } }',
          ":3: mg.policy.key_auth: 'keys' is empty" },
        { 'mg.route { path = "/", respond = { status = 200 }, use = { mg.policy.key_auth { keys = { k = 1 } } } }',
          ":3: mg.policy.key_auth: keys[...]: a consumer name must be a string" },
        { 'mg.route { path = "/", respond = { status = 200 }, use = { mg.policy.basic_auth { users = { a = "$1$gPT8bms7$qJexFlC2RJyvpOa5hsQPL0" } } } }',
          ":3: mg.policy.basic_auth: users['a']: unsupported or malformed password hash" },
        { 'mg.route { path = "/", respond = { status = 200 }, use = { mg.policy.basic_auth { users = { a = "$2b$04$short" } } } }',
          ":3: mg.policy.basic_auth: users['a']: unsupported or malformed password hash" },
        { 'mg.route { path = "/", respond = { status = 200 }, use = { mg.policy.basic_auth { } } }',
          ":3: mg.policy.basic_auth: needs one of 'file' and 'users'" },
        { 'mg.route { path = "/", respond = { status = 200 }, use = { mg.policy.basic_auth { file = "nope" } } }',
          ":3: mg.policy.basic_auth: cannot read htpasswd file: " },
        { 'mg.route { path = "/", respond = { status = 200 }, use = { mg.policy.mtls_consumer { by = "cn", consumers = { a = "b" } } } }',
          ":3: mg.policy.mtls_consumer: 'by' must be \"subject_cn\", \"san_dns\" or \"fingerprint\", got cn" },
        { 'mg.route { path = "/", respond = { status = 200 }, use = { mg.policy.mtls_consumer { by = "fingerprint", consumers = { ab = "b" } } } }',
          ":3: mg.policy.mtls_consumer: consumers: 'ab' is not a SHA-256 fingerprint" },
      }
      for _, c in ipairs(cases) do
        local out, path = check_conf(c[1])
        assert.truthy(out:find(path .. c[2], 1, true), "want " .. c[2] .. "\ngot " .. out)
      end
    end)

    it("a bad htpasswd entry names the htpasswd file and its line", function()
      local good = hashes.erin
      local cases = {
        { "a:" .. good .. "\n# comment\nb:$1$gPT8bms7$qJexFlC2RJyvpOa5hsQPL0\n",
          "htpasswd:3: user 'b': unsupported or malformed password hash" },
        { "a:" .. good .. "\nb:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n", "htpasswd:2: user 'b': unsupported" },
        { "a:" .. good .. "\nplain-line\n", "htpasswd:2: not a 'user:hash' line" },
        { "a:" .. good .. "\n\na:" .. good .. "\n", "htpasswd:3: user 'a' appears twice" },
        { "a:" .. good:sub(1, -3) .. "\n", "htpasswd:1: user 'a': unsupported or malformed" },
      }
      for _, c in ipairs(cases) do
        local out, path = check_conf('mg.route { path = "/", respond = { status = 200 }, use = {\n'
          .. '  mg.policy.basic_auth { file = "htpasswd" } } }', { htpasswd = c[1] })
        local want = path .. ":4: mg.policy.basic_auth: " .. path:gsub("proxy%.lua$", "") .. c[2]
        assert.truthy(out:find(want, 1, true), "want " .. want .. "\ngot " .. out)
      end
    end)
  end)
end)
