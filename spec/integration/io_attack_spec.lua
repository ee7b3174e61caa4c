-- Attacks on the hooks' I/O (mg.tcp, mg.http, request bodies): hostile peers,
-- hostile servers and Lua misuse, each against the real binary over loopback.
-- One `it` per defect found; each asserts the exact correct behaviour.
local helpers = require "spec.helpers"
local raw = require "spec.support.raw"

local PEER = helpers.spec_dir .. "/support/tcp_peer.py"

local CONFIG = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, error_log = "error.log", timeouts = { hook = 5 } }
mg.listen { "127.0.0.1:${port}" }
local PEER, ORIGIN, HOSTILE = ${peer}, "${origin}", "${hostile}"
local function show(...)
  local t = {}
  for i = 1, select("#", ...) do t[i] = tostring((select(i, ...))) end
  return table.concat(t, "|")
end
local function line(cmd)
  local s = mg.tcp()
  s:settimeouts(2000, 2000, 2000)
  assert(s:connect("127.0.0.1", PEER))
  assert(s:send(cmd .. "\n"))
  return s:receive("*l")
end
-- waits inside coroutines of the user's own: a coroutine.wrap, a generator that
-- also yields values of its own between waits, and a coroutine nested in another
mg.route { path = "/co", respond = function(req)
  local out = {}
  out[#out + 1] = show(coroutine.wrap(function() return line("LINE wrapped") end)())
  out[#out + 1] = show(coroutine.wrap(function()
    local res, err = mg.http.request { url = "http://" .. ORIGIN .. "/x", timeout = 3 }
    return res and res.status, err
  end)())
  local gen = coroutine.wrap(function()
    for i = 1, 2 do
      mg.sleep(0.01)
      coroutine.yield(i)
    end
    coroutine.yield(line("LINE from-generator"))
    return "end"
  end)
  out[#out + 1] = show(gen(), gen(), gen(), gen())
  local outer = coroutine.create(function()
    return coroutine.wrap(function() return line("LINE nested") end)()
  end)
  out[#out + 1] = show(coroutine.resume(outer))
  out[#out + 1] = show(coroutine.status(outer))
  return 200, table.concat(out, "\n") .. "\n"
end }
mg.route { path = "/bad", respond = function(req)
  local res, err = mg.http.request { url = "http://" .. HOSTILE .. "/", timeout = 3 }
  return 200, show(res and res.status, err) .. "\n"
end }
]]

describe("hooks' I/O under attack", function()
  local proxy, origin, hostile

  lazy_setup(function()
    local dir = helpers.tmpdir()
    local port = helpers.free_port()
    helpers.spawn({ helpers.python, PEER, "--port", tostring(port) },
      { stderr = dir .. "/peer.stderr", label = "tcp_peer" })
    assert(helpers.wait_until(function() return helpers.port_open(port) end, 10, 0.05),
      "the TCP peer did not start: " .. tostring(helpers.read_file(dir .. "/peer.stderr")))
    origin = helpers.origin({ name = "o" })
    hostile = raw.origin()
    proxy = helpers.proxy(CONFIG, { dir = dir, vars = { peer = port, origin = origin.addr,
      hostile = hostile.addr } })
  end)

  lazy_teardown(function()
    if hostile then hostile:close() end
    helpers.teardown(proxy)
    if origin then origin:stop() end
  end)

  it("mg.tcp, mg.http and mg.sleep inside the user's own coroutines wait in the hook's place", function()
    -- before: the wait's yield was caught by the user's coroutine, whose
    -- resume returned "io" (or "sleep") as if it were the call's result
    local res = assert(proxy:request({ path = "/co" }))
    assert.equal(200, res.status)
    assert.equal(table.concat({
      "wrapped",
      "200|nil",
      "1|2|from-generator|end",
      "true|nested",
      "dead",
    }, "\n") .. "\n", res.body)
    proxy:assert_alive()
  end)

  it("mg.http names a malformed response's cause in its error, not a close", function()
    -- before: "closed before a response (connection closed or reset)"
    local cases = {
      { "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "nil|bad response: Content-Length can't be present with Transfer-Encoding" },
      { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        "nil|bad response: Invalid character in chunk size" },
      { "HTTP/1.1 200 OK\r\nX-Big: " .. string.rep("a", 70000) .. "\r\n\r\n",
        "nil|bad response: response head too large" },
      { "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
        "nil|bad response: 101 Switching Protocols to a request that did not ask to upgrade" },
    }
    for _, case in ipairs(cases) do
      local c = helpers.connect(proxy.port)
      assert(c:send("GET /bad HTTP/1.1\r\nHost: x\r\n\r\n"))
      local o = assert(hostile:accept(3), "mg.http did not connect")
      assert(raw.read_request(o, 3), "no request reached the server")
      o:send(case[1])
      local r = assert(c:response({ timeout = 5 }))
      assert.equal(200, r.status)
      assert.equal(case[2] .. "\n", r.body)
      c:close()
      hostile:close_conns()
    end
    proxy:assert_alive()
  end)
end)
