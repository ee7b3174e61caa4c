-- moongate.testing's t.redis(): a redis-server on a free loopback port, raw
-- commands for assertions, stopped by :stop() and t.stop_all().
local socket = require "socket"
local signal = require "posix.signal"
local stat = require "posix.sys.stat"
local t = require "moongate.testing"

local function can_bind(port)
  local s = socket.tcp()
  s:setoption("reuseaddr", true)
  local ok = s:bind("127.0.0.1", port)
  s:close()
  return ok ~= nil
end

local function alive(pid) return signal.kill(pid, 0) == 0 end

describe("t.redis", function()
  local have = t.redis()
  local missing
  if have then have:stop() else
    missing = "redis-server not installed (apt-get install redis-server)"
  end

  before_each(function()
    if missing then pending(missing) end
  end)

  after_each(function()
    t.stop_all()
  end)

  it("starts redis-server on a loopback port that answers commands", function()
    local r = assert(t.redis())
    assert.equal("127.0.0.1", r.host)
    assert.is_number(r.port)
    assert.equal("127.0.0.1:" .. r.port, r.addr)
    assert.equal("PONG", r:command("PING"))
    assert.equal("OK", r:command("SET", "k", "v w"))
    assert.equal("v w", r:command("GET", "k"))
    assert.equal(1, r:command("INCR", "n"))
    assert.equal(t.redis_null, r:command("GET", "missing"))
    assert.same({ "v w", t.redis_null }, r:command("MGET", "k", "missing"))
    local v, err = r:command("INCR", "k")
    assert.is_nil(v)
    assert.equal("ERR value is not an integer or out of range", err)
  end)

  it("runs without persistence in a temp folder", function()
    local r = assert(t.redis())
    assert.same({ "save", "" }, r:command("CONFIG", "GET", "save"))
    assert.same({ "appendonly", "no" }, r:command("CONFIG", "GET", "appendonly"))
    assert.same({ "dir", r.dir }, r:command("CONFIG", "GET", "dir"))
    assert.matches("^/tmp/moongate%-test%-", r.dir)
  end)

  it("gives each server its own port", function()
    local a = assert(t.redis())
    local b = assert(t.redis())
    assert.are_not.equal(a.port, b.port)
    assert.equal("OK", a:command("SET", "only", "a"))
    assert.equal(t.redis_null, b:command("GET", "only"))
  end)

  it("sets requirepass and AUTHs its own commands", function()
    local r = assert(t.redis { password = "pw" })
    assert.equal("PONG", r:command("PING"))
    local bare = setmetatable({ password = false }, { __index = r }) -- the same server, no AUTH
    local v, err = bare:command("GET", "k")
    assert.is_nil(v)
    assert.matches("^NOAUTH", err)
  end)

  it("stops: the process ends, the port and the temp folder are freed", function()
    local r = assert(t.redis())
    local pid, port, dir = r.pid, r.port, r.dir
    assert.is_false(can_bind(port))
    assert.is_true(r:stop())
    assert.is_false(alive(pid))
    assert.is_true(t.wait_until(function() return can_bind(port) end, 5))
    assert.is_nil(r:command("PING"))
    t.stop_all()
    assert.is_nil(stat.stat(dir))
  end)

  it("is stopped by t.stop_all", function()
    local r = assert(t.redis())
    t.stop_all()
    assert.is_false(alive(r.pid))
    assert.is_true(t.wait_until(function() return can_bind(r.port) end, 5))
  end)

  it("says redis-server is not installed when the binary is missing", function()
    local r, err = t.redis { bin = "/nonexistent/redis-server" }
    assert.is_nil(r)
    assert.equal("redis-server not installed (apt-get install redis-server)", err)
  end)

  it("reports a server that does not come up, with its log", function()
    local r, err = t.redis { args = { "--no-such-option", "1" } }
    assert.is_nil(r)
    assert.matches("redis%-server did not come up", err)
    assert.matches("no%-such%-option", err)
  end)
end)
