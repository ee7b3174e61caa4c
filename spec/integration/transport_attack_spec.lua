-- Hostile or odd traffic around the transport (core/transport.c) and splicing:
-- each case is a defect found by attacking the binary over loopback, or a path
-- no other spec drives, and checks the exact bytes and log lines that follow.
local helpers = require "spec.helpers"

describe("transport under attack", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, error_log = "error.log", log_level = "debug" }
mg.listen { "127.0.0.1:${port}" }
local sp = mg.upstream "sp" { servers = { "${origin}" }, splice = true, keepalive = 4 }
mg.route { upstream = sp }
]], { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy, origin)
  end)

  local function errlog() return helpers.read_file(proxy.dir .. "/error.log") or "" end

  -- Waits for `needle` (plain text) in the error log written since `before`.
  local function logged_since(before, needle)
    return helpers.wait_until(function()
      return errlog():sub(before + 1):find(needle, 1, true) ~= nil
    end, 3, 0.05)
  end

  it("does not reuse an upstream connection whose server sent bytes after a spliced body", function()
    -- The splice takes exactly the Content-Length: bytes the server sent after
    -- the body stay in the socket. The connection must not go back to the pool,
    -- where the next request (here pipelined behind, so it is sent at once)
    -- would read them as the start of its response and get a 502.
    local before = #errlog()
    local n = 300000
    local c = proxy:connect()
    assert(c:send("GET /extra/" .. n .. " HTTP/1.1\r\nHost: x\r\n\r\nGET /echo HTTP/1.1\r\nHost: x\r\n\r\n"))
    local first = assert(c:response())
    assert.equal(200, first.status)
    assert.equal(n, #first.body)
    assert.equal(helpers.sha256(helpers.pattern(n)), helpers.sha256(first.body))
    local second = assert(c:response())
    c:close()
    local doc = helpers.echo(second)
    assert.equal(1, doc.conn_request) -- a new upstream connection answered it
    assert(logged_since(before, "body bytes spliced"), "the body was not spliced")
    assert(logged_since(before, "bytes after the end of the response: connection not reused"),
      errlog():sub(before + 1))
  end)
end)
