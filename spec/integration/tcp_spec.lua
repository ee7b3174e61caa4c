-- mg.tcp() (docs/hooks.md "mg.tcp"): sockets for hooks, against a line-command
-- peer on loopback (spec/support/tcp_peer.py, plain and TLS). Each route below
-- runs one scenario in a respond function and answers what the socket calls
-- returned, "|"-joined.
local helpers = require "spec.helpers"

local PEER = helpers.spec_dir .. "/support/tcp_peer.py"

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
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -subj "/CN=mg.tcp Test CA" -days 30 -config ca.cnf -extensions ca -out ca.pem
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out peer.key 2>/dev/null
openssl req -new -key peer.key -subj "/CN=peer.test" -config ca.cnf -out peer.csr
printf 'basicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\nsubjectAltName = DNS:peer.test\n' > peer.ext
openssl x509 -req -in peer.csr -CA ca.pem -CAkey ca.key -set_serial 7 -days 30 -extfile peer.ext -out peer.pem 2>/dev/null
]=]

local CONFIG = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, error_log = "error.log", shared = { d = "1m" },
  timeouts = { hook = 5 } }
mg.listen { "127.0.0.1:${port}" }
local PEER, TLS, CLOSED, CA = ${peer}, ${tlsport}, ${closed}, "${dir}/ca.pem"
local d = function() return mg.shared("d") end
local function show(...)
  local t = {}
  for i = 1, select("#", ...) do t[i] = tostring((select(i, ...))) end
  return table.concat(t, "|")
end
local function open(port, opts)
  local s = mg.tcp()
  s:settimeouts(2000, 2000, 3000)
  assert(s:connect("127.0.0.1", port or PEER, opts))
  return s
end
mg.route { path = "/basic", respond = function(req)
  local s = open()
  local out = {}
  out[#out + 1] = show(s:send({ "LINE hello", " world", "\n" }))
  out[#out + 1] = show(s:receive("*l"))
  assert(s:send("BYTES 25\n"))
  out[#out + 1] = show(s:receive(10))
  out[#out + 1] = show(s:receive(15))
  assert(s:send("LF bare-lf\n"))
  out[#out + 1] = show(s:receive())
  assert(s:send("SPLIT ab cd\n"))
  out[#out + 1] = show(s:receive("*l"))
  assert(s:send("BYTES 5\n"))
  out[#out + 1] = show(s:receiveany(100))
  assert(s:send("CLOSE bye-bye\n"))
  out[#out + 1] = show(s:receive("*a"))
  out[#out + 1] = show(s:receive("*l"))
  out[#out + 1] = show(s:close())
  return 200, table.concat(out, "\n") .. "\n"
end }
mg.route { path = "/slow", respond = function(req)
  local s = open()
  assert(s:send("SLOW 1 late\n"))
  local line, err = s:receive("*l")
  s:close()
  return 200, show(line, err) .. "\n"
end }
mg.route { path = "/direct", respond = { status = 200, body = "direct\n" } }
mg.route { path = "/refused", respond = function(req)
  local s = mg.tcp()
  return 200, show(s:connect("127.0.0.1", CLOSED)) .. "\n"
end }
mg.route { path = "/read-timeout", respond = function(req)
  local s = open()
  s:settimeouts(2000, 2000, 300)
  assert(s:send("SILENT\n"))
  local t0 = mg.now()
  local a = show(s:receive("*l"))
  local took = mg.now() - t0
  assert(s:send("LINE still-usable\n"))
  local b = show(s:receive("*l"))
  return 200, a .. "\n" .. string.format("%.1f", took) .. "\n" .. b .. "\n"
end }
mg.route { path = "/reset", respond = function(req)
  local s = open()
  assert(s:send("RESET\n"))
  return 200, show(s:receive("*a")) .. "\n"
end }
mg.route { path = "/too-large", respond = function(req)
  local s = open()
  assert(s:send("BIG 70000\n"))
  local a = show(s:receive("*l"))
  return 200, a .. "\n" .. show(s:send("LINE x\n")) .. "\n"
end }
mg.route { path = "/ssl", respond = function(req)
  local s = mg.tcp()
  s:settimeouts(2000, 2000, 2000)
  local ok, err = s:connect("127.0.0.1", TLS, req:arg("ca") and { ssl_ca = CA } or nil)
  if not ok then return 200, "connect: " .. err .. "\n" end
  ok, err = s:sslhandshake(nil, req:arg("name"), req:arg("verify") == "1")
  if not ok then return 200, show(ok, err) .. "\n" end
  assert(s:send("LINE secure\n"))
  return 200, show(ok) .. "\n" .. show(s:receive("*l")) .. "\n"
end }
mg.route { path = "/pool", respond = function(req)
  local out = {}
  for i = 1, 2 do
    local s = open(PEER, { pool = req:arg("pool") })
    assert(s:send("CONN\n"))
    out[#out + 1] = show(s:receive("*l"), s:getreusedtimes())
    out[#out + 1] = show(s:setkeepalive(10000, 4))
    out[#out + 1] = show(s:send("CONN\n")) -- the socket itself is closed now
  end
  return 200, table.concat(out, "\n") .. "\n"
end }
mg.route { path = "/pool-unread", respond = function(req)
  local s = open(PEER, { pool = "unread" })
  assert(s:send("LINE left-unread\n"))
  mg.sleep(0.1)
  return 200, show(s:setkeepalive()) .. "\n"
end }
mg.route { path = "/cancel", respond = function(req)
  d():incr("started", 1, 0)
  local s = open()
  assert(s:send("SILENT\n"))
  d():incr("waiting", 1, 0)
  s:receive("*l")
  d():incr("after_wait", 1, 0)
  return 200, "waited\n"
end }
mg.route { path = "/count", respond = function(req)
  return 200, (d():get("waiting") or 0) .. " " .. (d():get("after_wait") or 0) .. " " .. (d():get("started") or 0)
end }
local kept = {}
mg.route { path = "/leave-open", respond = function(req)
  local s = open()
  assert(s:send("CONN\n"))
  local n = s:receive("*l")
  kept[1] = s -- still open when the request ends
  return 200, n .. "\n"
end }
mg.route { path = "/use-kept", respond = function(req)
  return 200, show(kept[1]:send("LINE again\n")) .. "\n" .. show(kept[1]:receive("*l")) .. "\n"
end }
mg.route { path = "/timer", respond = function(req)
  mg.timer.at(0, function()
    local s = open()
    assert(s:send("SLOW 0.2 from-timer\n"))
    d():set("timer", show(s:receive("*l")))
    s:close()
  end)
  return 200, "armed\n"
end }
mg.route { path = "/get", respond = function(req) return 200, tostring(d():get(req:arg("k"))) end }
mg.route { path = "/wrong-hook", upstream = mg.upstream "self" { servers = { "127.0.0.1:${port}" } },
  on = { request = function(req) req:set_path("/direct") end,
         request_body = function(req, chunk, eof) mg.tcp():connect("127.0.0.1", PEER) end } }
mg.route { path = "/bad-args", respond = function(req)
  local out = {}
  for i, f in ipairs {
    function() return mg.tcp():connect(nil, 80) end,
    function() return mg.tcp():connect("127.0.0.1", 70000) end,
    function() return mg.tcp():receive("*x") end,
    function() return mg.tcp():send(false) end,
    function() return mg.tcp():settimeout(-1) end,
  } do
    local ok, err = pcall(f)
    out[i] = ok and "accepted" or tostring(err):match("mg%.tcp: [^,]*")
  end
  return 200, table.concat(out, "\n") .. "\n"
end }
]]

-- The peer on two free ports (plain, TLS); plain only without a certificate.
local function start_peer(dir, plain_only)
  local port, tls = helpers.free_port(), helpers.free_port()
  local argv = { helpers.python, PEER, "--port", tostring(port) }
  if not plain_only then
    for _, a in ipairs { "--tls-port", tostring(tls), "--tls-cert", dir .. "/peer.pem", "--tls-key", dir .. "/peer.key" } do
      argv[#argv + 1] = a
    end
  end
  helpers.spawn(argv, { stderr = dir .. "/peer.stderr", label = "tcp_peer" })
  assert(helpers.wait_until(function()
    return helpers.port_open(port) and (plain_only or helpers.port_open(tls))
  end, 10, 0.05),
    "the TCP peer did not start: " .. tostring(helpers.read_file(dir .. "/peer.stderr")))
  return port, tls
end

local function certs()
  local dir = helpers.tmpdir()
  helpers.write_file(dir .. "/gen.sh", GEN)
  local out, rc = helpers.sh("cd " .. helpers.shell_quote(dir) .. " && timeout 30 sh gen.sh 2>&1")
  assert(rc == 0, "making the test certificates failed:\n" .. tostring(out))
  return dir
end

describe("mg.tcp", function()
  local proxy, peer, tls

  lazy_setup(function()
    local dir = certs()
    peer, tls = start_peer(dir)
    proxy = helpers.proxy(CONFIG, { dir = dir, vars = { peer = peer, tlsport = tls, closed = helpers.free_port() } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  local function get(path)
    local res = assert(proxy:request({ path = path }))
    assert.equal(200, res.status, res.body)
    return res.body
  end
  local function errlog() return helpers.read_file(proxy.dir .. "/error.log") or "" end

  it("connects, sends a string or an array of strings, and receives a line, n bytes, any, and all", function()
    assert.equal(table.concat({
      "17",                    -- send of { "LINE hello", " world", "\n" }: bytes sent
      "hello world",           -- "*l" without its CR LF
      "0123456789",            -- receive(10)
      "012345678901234",       -- receive(15)
      "bare-lf",               -- receive() is "*l": a line ended by LF alone
      "abcd",                  -- a line that came in two writes
      "01234",                 -- receiveany(100): what is there
      "bye-bye",               -- "*a": until the peer closed
      "nil|closed|",           -- after the close: nil, "closed", no partial data
      "1",                     -- close
    }, "\n") .. "\n", get("/basic"))
  end)

  it("serves other requests on the same worker while one waits 1 s on a slow peer", function()
    local a = proxy:connect()
    local t0 = helpers.now()
    assert(a:send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"))
    helpers.sleep(0.1)
    for i = 1, 5 do
      local t = helpers.now()
      assert.equal("direct\n", get("/direct"))
      assert(helpers.now() - t < 0.4, "request " .. i .. " waited behind the socket")
    end
    assert(helpers.now() - t0 < 0.8, "the others were not served while the socket waited")
    local res = assert(a:response({ timeout = 5 }))
    a:close()
    assert.equal("late|nil\n", res.body)
    assert(helpers.now() - t0 >= 0.95)
  end)

  it("says 'connection refused' for a port nobody listens on", function()
    assert.equal("nil|connection refused\n", get("/refused"))
  end)

  it("times a read out after the read timeout, and the socket goes on working", function()
    assert.equal("nil|timeout|\n0.3\nstill-usable\n", get("/read-timeout"))
  end)

  it("reports a reset by the peer", function()
    assert.equal("nil|connection reset by peer|\n", get("/reset"))
  end)

  it("refuses a line over 64 KiB with 'too large', and closes the socket", function()
    assert.equal("nil|too large|\nnil|closed\n", get("/too-large"))
  end)

  it("does a TLS handshake: verify=false", function()
    assert.equal("true\nsecure\n", get("/ssl?verify=0"))
  end)

  it("does a TLS handshake: verify=true with the test CA and the certificate's name", function()
    assert.equal("true\nsecure\n", get("/ssl?verify=1&ca=1&name=peer.test"))
  end)

  it("fails a TLS handshake: verify=true against the system CAs (an untrusted certificate)", function()
    local body = get("/ssl?verify=1&name=peer.test")
    assert.truthy(body:find("^nil|certificate verify failed: "), body)
  end)

  it("fails a TLS handshake: verify=true with the test CA, another name", function()
    local body = get("/ssl?verify=1&ca=1&name=other.test")
    assert.truthy(body:find("^nil|certificate verify failed: "), body)
  end)

  it("pools a connection with setkeepalive and reuses it: getreusedtimes 1, the peer sees one connection", function()
    local body = get("/pool?pool=p1")
    local first = body:match("^(%d+)|0\n")
    assert.truthy(first, body)
    assert.equal(first .. "|0\n1\nnil|closed\n" .. first .. "|1\n1\nnil|closed\n", body)
  end)

  it("does not pool a connection with unread data", function()
    assert.equal("nil|unread data in buffer\n", get("/pool-unread"))
  end)

  it("closes a socket its request left open: used later, it says 'closed'", function()
    assert.truthy(get("/leave-open"):match("^%d+\n$"))
    assert.equal("nil|closed\nnil|closed|\n", get("/use-kept"))
  end)

  it("works from a timer callback (mg.timer.at)", function()
    assert.equal("armed\n", get("/timer"))
    assert(helpers.wait_until(function() return get("/get?k=timer") == "from-timer" end, 3, 0.05),
      "the timer's socket never answered: " .. get("/get?k=timer"))
  end)

  it("raises an error when used in a hook that cannot wait (request_body): 500, logged", function()
    local res = assert(proxy:request({ method = "POST", path = "/wrong-hook", body = "abc" }))
    assert.equal(500, res.status)
    assert(helpers.wait_until(function()
      return errlog():find("only a hook that may wait can use a socket", 1, true)
    end, 2, 0.05), "no log line")
  end)

  it("refuses bad arguments with an error naming the call", function()
    assert.equal(table.concat({
      "mg.tcp: sock:connect: host must be a non-empty string",
      "mg.tcp: sock:connect: port must be an integer 1-65535",
      "mg.tcp: sock:receive: pattern must be \"*l\"",
      "mg.tcp: sock:send: data must be a string or an array of strings",
      "mg.tcp: sock:settimeout: timeout must be a number of milliseconds >= 0",
    }, "\n") .. "\n", get("/bad-args"))
  end)

  -- n clients each start a request whose socket waits on a silent peer, and
  -- close `linger` s later
  local function leave_mid_wait(n, linger)
    proxy:leave_mid_request(n, "GET /cancel HTTP/1.1\r\nHost: x\r\n\r\n", linger)
  end

  it("cancels a request whose client leaves while its socket waits: nothing after the wait runs", function()
    local waiting, after, started = get("/count"):match("^(%d+) (%d+) (%d+)$")
    leave_mid_wait(10, 0.1)
    helpers.sleep(0.3)
    -- all 10 reached the wait, none went past it
    assert.equal((waiting + 10) .. " " .. after .. " " .. (started + 10), get("/count"))
    proxy:assert_alive()
  end)

  it("does not grow while 1,000 clients leave in the middle of a socket wait", function()
    leave_mid_wait(50)
    helpers.sleep(0.5)
    local rss0 = proxy:rss()
    local function counts()
      local w, a, s = get("/count"):match("^(%d+) (%d+) (%d+)$")
      return tonumber(w), tonumber(a), tonumber(s)
    end
    local w0, a0, s0 = counts()
    leave_mid_wait(1000, 0.002)
    helpers.sleep(0.8)
    local w1, a1, s1 = counts()
    -- every hook began and was cancelled while it waited (in connect, or in
    -- receive); none went past the wait
    assert.equal(1000, s1 - s0)
    assert(w1 - w0 >= 500, "only " .. (w1 - w0) .. " of 1,000 reached the receive")
    assert.equal(a0, a1)
    proxy:assert_rss_flat(rss0, 4096)
    assert.equal("direct\n", get("/direct"))
    proxy:assert_alive()
  end)
end)

describe("mg.tcp across a reload", function()
  local proxy

  lazy_setup(function()
    local dir = helpers.tmpdir()
    local port = start_peer(dir, true)
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false }
mg.listen { "127.0.0.1:${port}" }
mg.route { path = "/", respond = function(req)
  local s = mg.tcp()
  assert(s:connect("127.0.0.1", ${peer}))
  assert(s:send("SLOW 0.8 late\n"))
  return 200, "old:" .. assert(s:receive("*l")) .. "\n"
end }
]], { dir = dir, vars = { peer = port } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("finishes a hook waiting on a socket on the old generation", function()
    local c = proxy:connect()
    assert(c:send("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
    helpers.sleep(0.2)
    proxy:reload(proxy:new_config(), function() return proxy:says_new("/") end)
    local res = assert(c:response({ timeout = 5 }))
    c:close()
    assert.equal(200, res.status)
    assert.equal("old:late\n", res.body)
  end)
end)
