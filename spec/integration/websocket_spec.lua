-- Upgrade tunnels, tested with a real WebSocket client and server (Debian's
-- python3-websockets: spec/support/ws_client.py and ws_origin.py). A request
-- with Upgrade passes its hooks and goes upstream with its upgrade headers; on a
-- 101 both connections become a tunnel: bytes both ways with backpressure, an
-- idle timeout (timeouts.tunnel), an access log line when it closes, TLS on
-- either side, and old tunnels live on across a reload.
local helpers = require "spec.helpers"

local WS_CLIENT = helpers.spec_dir .. "/support/ws_client.py"
local WS_ORIGIN = helpers.spec_dir .. "/support/ws_origin.py"
local CA -- the test certificate (self-signed, ws.test), set in lazy_setup

local function ws_origin(dir, tls)
  local port_file = dir .. "/ws-origin.port"
  local argv = { helpers.python, WS_ORIGIN, "--port-file", port_file }
  if tls then
    for _, a in ipairs({ "--tls-cert", tls.cert, "--tls-key", tls.key }) do argv[#argv + 1] = a end
  end
  local pid = helpers.spawn(argv, { stderr = dir .. "/ws-origin.stderr", label = "ws origin" })
  local port = helpers.wait_until(function() return helpers.read_file(port_file) end, 10)
  assert(port, "the WebSocket origin did not start: " .. tostring(helpers.read_file(dir .. "/ws-origin.stderr")))
  return { pid = pid, addr = "127.0.0.1:" .. port }
end

local function client(url, ...)
  local out, rc = helpers.run({ helpers.python, WS_CLIENT, url, ... }, { env = { WS_CA = CA or "", WS_SNI = "ws.test" } })
  assert.equal(0, rc, out)
  local last = out:match("([^\n]+)\n?$")
  return helpers.decode_json(last)
end

local function config(extra)
  return [[
local mg = require "moongate"
mg.config { workers = 1, access_log = "access.log", timeouts = { tunnel = ${tunnel} } }
mg.listen { "127.0.0.1:${port}" }
mg.listen { "127.0.0.1:${tls_port}", tls = { cert = "${dir}/cert.pem", key = "${dir}/key.pem" } }
local ws = mg.upstream "ws" { servers = { "${ws}" } }
local wss = mg.upstream "wss" { servers = { "${wss}" }, tls = { ca = "${dir}/cert.pem", sni = "ws.test" } }
mg.route { path = "/secure/", upstream = wss, on = { request = function(req) req:set_path(req.path:sub(8)) end } }
mg.route { path = "/plain-answer", respond = { status = 200, body = "no tunnel here\n" } }
mg.route { path = "/", upstream = ws, on = { request = function(req)
  if req:header("x-deny") then return req:respond(403, "denied\n") end
  req:set_header("X-Hooked", "yes")
end } }
]] .. (extra or "")
end

describe("WebSocket tunnels", function()
  local dir, origin, origin_tls, proxy

  lazy_setup(function()
    dir = helpers.tmpdir()
    helpers.self_signed(dir, "ws.test")
    CA = dir .. "/cert.pem"
    origin = ws_origin(dir)
    origin_tls = ws_origin(helpers.tmpdir(), { cert = dir .. "/cert.pem", key = dir .. "/key.pem" })
    proxy = helpers.proxy(config(), { dir = dir, ports = { "tls_port" },
      vars = { ws = origin.addr, wss = origin_tls.addr, tunnel = 3 } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
    if origin then helpers.terminate(origin.pid, 2) end
    if origin_tls then helpers.terminate(origin_tls.pid, 2) end
    CA = nil
  end)

  local function url(path, tls)
    if tls then return "wss://127.0.0.1:" .. proxy.ports.tls_port .. path end
    return "ws://127.0.0.1:" .. proxy.port .. path
  end

  it("echoes 1 MiB binary messages both ways", function()
    assert.same({ echoed = 8, close_code = 1000 }, client(url("/echo"), "echo", tostring(1024 * 1024), "8"))
  end)

  it("echoes text, and answers a ping with a pong", function()
    assert.same({ back = "héllo, tunnel" }, client(url("/echo"), "text"))
    assert.is_true(client(url("/echo"), "ping").pong)
  end)

  it("passes the server's close code and reason", function()
    assert.same({ code = 4001, reason = "bye" }, client(url("/close/4001"), "close"))
    assert.same({ code = 1011, reason = "bye" }, client(url("/close/1011"), "close"))
  end)

  it("runs the request hooks, and forwards the upgrade headers", function()
    local h = client(url("/headers"), "headers").headers
    assert.equal("yes", h["x-hooked"])
    assert.equal("websocket", h.upgrade:lower())
    assert.equal("upgrade", h.connection:lower())
    assert.truthy(h["sec-websocket-key"])
    assert.equal("13", h["sec-websocket-version"])
    assert.equal("127.0.0.1", h["x-forwarded-for"])
  end)

  it("answers an upgrade a hook refuses like any request, and closes", function()
    local c = proxy:connect()
    assert(c:send("GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
      .. "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Deny: 1\r\n\r\n"))
    local res = assert(c:response())
    assert.same({ 403, "denied\n" }, { res.status, res.body })
    assert.is_true((c:closed(2)))
    c:close()
    -- and a respond route gives its answer, not a tunnel
    c = proxy:connect()
    assert(c:send("GET /plain-answer HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"))
    res = assert(c:response())
    assert.same({ 200, "no tunnel here\n" }, { res.status, res.body })
    c:close()
  end)

  it("keeps 200 tunnels open at once", function()
    assert.same({ first = 200, second = 200, opened = 200 }, client(url("/echo"), "many", "200"))
  end)

  it("tunnels over TLS on both sides", function()
    assert.same({ echoed = 4, close_code = 1000 }, client(url("/secure/echo", true), "echo", "65536", "4"))
    assert.same({ back = "héllo, tunnel" }, client(url("/echo", true), "text"))
  end)

  it("logs a tunnel when it closes, with the bytes each way", function()
    local mark = #(proxy:file("access.log") or "")
    assert.same({ echoed = 2, close_code = 1000 }, client(url("/logged"), "echo", "100000", "2"))
    local e = helpers.wait_until(function()
      local text = (proxy:file("access.log") or ""):sub(mark + 1)
      for l in helpers.lines(text) do
        local d = helpers.decode_json(l)
        if d.path == "/logged" then return d end
      end
    end, 5)
    assert(e, "no access log line for the tunnel")
    assert.equal(101, e.status)
    -- two 100,000-byte messages each way, plus framing, handshake and close frames
    assert(e.bytes_in > 200000 and e.bytes_in < 201000, "bytes_in " .. tostring(e.bytes_in))
    assert(e.bytes_out > 200000 and e.bytes_out < 201000, "bytes_out " .. tostring(e.bytes_out))
  end)

  it("ends a tunnel idle for timeouts.tunnel, saying so", function()
    local c = proxy:connect()
    assert(c:send("GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
      .. "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"))
    local res = assert(c:response())
    assert.equal(101, res.status)
    local t0 = helpers.now()
    local closed = c:closed(9)
    local took = helpers.now() - t0
    c:close()
    assert.is_true(closed)
    assert(took > 2.5 and took < 7, "closed after " .. took .. " s, timeouts.tunnel = 3")
    assert.truthy(helpers.wait_until(function()
      return proxy:stderr():find("idle for timeouts.tunnel", 1, true)
    end, 3), proxy:stderr())
  end)

  it("keeps an open tunnel on the old config across a reload", function()
    -- a tunnel that waits 1.5 s between two echoes (timeouts.tunnel is 3 s); a reload lands in between
    local out_file = dir .. "/hold.out"
    local pid = helpers.spawn({ helpers.python, WS_CLIENT, url("/echo"), "hold", "1.5" },
      { stdout = out_file, stderr = out_file, label = "ws hold" })
    assert(helpers.wait_until(function() return (helpers.read_file(out_file) or ""):find("ready", 1, true) end, 10))
    helpers.write_config(dir, config([[
mg.route { path = "/after-reload", respond = { status = 200, body = "new config\n" } }
]]), { port = proxy.port, tls_port = proxy.ports.tls_port, ws = origin.addr, wss = origin_tls.addr, tunnel = 3,
       dir = dir })
    proxy:signal(require("posix.signal").SIGHUP)
    assert(helpers.wait_until(function()
      local res = proxy:request({ path = "/after-reload" })
      return res and res.status == 200
    end, 5), "the reload did not take")
    assert.equal("exited", (helpers.reap(pid, 10)))
    local last = (helpers.read_file(out_file) or ""):match("([^\n]+)\n?$")
    assert.same({ before = "before", after = "after" }, helpers.decode_json(last))
  end)
end)
