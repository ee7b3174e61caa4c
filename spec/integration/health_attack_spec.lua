-- Health under attack (core/health.c, core/balance.c): hostile answers to the
-- active checks from a hand-driven origin (the spec accepts every check and
-- writes exactly the bytes it wants), checks that never end, reload storms and
-- shutdowns while checks are in flight, and ejection under concurrent errors.
local helpers = require "spec.helpers"
local raw = require "spec.support.raw"
local socket = require "socket"

local function conf(body, workers)
  return [[
local mg = require "moongate"
mg.config { workers = ]] .. (workers or 1) .. [[, access_log = false }
mg.listen { "127.0.0.1:${port}" }
]] .. body
end

describe("hostile answers to http checks", function()
  local o, proxy

  lazy_setup(function()
    o = raw.origin()
    -- rise = fall = 1: every check's verdict shows as a log line when it changes
    -- the state; a long interval so that the spec answers each check in turn
    proxy = helpers.proxy(conf([[
mg.route { upstream = mg.upstream "web" { servers = { "${o}" },
  health = { path = "/hz", interval = 0.2, timeout = 0.6, rise = 1, fall = 1 } } }
]]), { vars = { o = o.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
    o:close()
  end)

  -- The next check: accepted, its request read, then answered by fn(conn, req).
  local function check(fn)
    local c = assert(o:accept(3))
    local req = assert(c:read_request(2))
    fn(c, req)
    return req
  end

  local function answer(bytes)
    return function(c) c:send(bytes); c:close() end
  end

  -- `fn` answers a check; the log line after `mark` holding `needle` follows.
  local function expect_log(fn, needle)
    local mark = raw.log_mark(proxy)
    check(fn)
    local line, text = raw.find_log(proxy, mark, needle, 2)
    assert(line, "no log line with " .. needle .. " in: " .. tostring(text))
    return line
  end

  local function down(fn, cause)
    return expect_log(fn, "server " .. o.addr .. " up -> down (" .. cause .. ")")
  end

  local function up(fn, cause)
    return expect_log(fn, "server " .. o.addr .. " down -> up (" .. cause .. ")")
  end

  local ok = answer("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

  it("sends a plain GET with Host, Connection: close and nothing else", function()
    local req = check(ok)
    assert.equal("GET", req.method)
    assert.equal("/hz", req.target)
    assert.equal("HTTP/1.1", req.version)
    assert.equal(o.addr, req.h.host)
    assert.equal("close", req.h.connection)
    assert.equal("", req.body)
  end)

  it("a line that is no status line: down", function()
    down(answer("garbage\r\n\r\n"), "no HTTP status line")
    up(ok, "status 200")
  end)

  it("status 2000, a negative status, HTTP/2.0: down", function()
    down(answer("HTTP/1.1 2000 OK\r\n\r\n"), "no HTTP status line")
    up(ok, "status 200")
    down(answer("HTTP/1.1 -200 OK\r\n\r\n"), "no HTTP status line")
    up(ok, "status 200")
    down(answer("HTTP/1.1 20 OK\r\n\r\n"), "no HTTP status line")
    up(ok, "status 200")
  end)

  it("8 KiB and more without a line end: down at once (not by the timeout)", function()
    local t0 = helpers.now()
    down(function(c) c:send(string.rep("x", 9000)) end, "no HTTP status line")
    assert.is_true(helpers.now() - t0 < 0.5)
    o:close_conns()
    up(ok, "status 200")
  end)

  it("a status line split over many writes: up", function()
    down(answer("HTTP/1.1 500 Oops\r\n\r\n"), "status 500")
    up(function(c)
      for ch in ("HTTP/1.1 204 No Content\r\n\r\n"):gmatch(".") do
        c:send(ch)
        socket.sleep(0.005)
      end
      c:close()
    end, "status 204")
  end)

  it("HTTP/1.0 answers count", function()
    down(answer("HTTP/1.0 503 Busy\r\n\r\n"), "status 503")
    up(answer("HTTP/1.0 200 OK\r\n\r\n"), "status 200")
  end)

  it("accepts and never answers: down by the timeout", function()
    down(function() end, "timed out")
    o:close_conns()
    up(ok, "status 200")
  end)

  it("slow past the timeout (half a status line): down by the timeout", function()
    down(function(c) c:send("HTTP/1.1 2") end, "timed out")
    o:close_conns()
    up(ok, "status 200")
  end)

  it("closes before a status line, or resets: down", function()
    down(function(c) c:close() end, "closed before a status line")
    up(ok, "status 200")
    down(function(c)
      c.sock:setoption("linger", { on = true, timeout = 0 })
      c:close()
    end, "read failed: connection reset by peer")
    up(ok, "status 200")
  end)

  it("a 1xx interim answer, then the final 200: up (the 1xx is skipped)", function()
    down(answer("HTTP/1.1 500 Oops\r\n\r\n"), "status 500")
    up(answer("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"),
       "status 200")
    down(answer("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\n\r\n"), "status 503")
    up(answer("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"), "status 200")
  end)

  it("a 1xx and nothing after it: down", function()
    down(answer("HTTP/1.1 100 Continue\r\n\r\n"), "closed before a status line")
    up(ok, "status 200")
  end)
end)
