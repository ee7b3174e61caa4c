-- moongate.redis over luasocket (spec/support/cosock.lua gives it mg.tcp's method
-- shapes) against a real redis-server started by moongate.testing, and against a
-- fake server that sends broken replies. Plain busted: no moongate binary.
local socket = require "socket"
local t = require "moongate.testing"
local redis = require "moongate.redis"
local cosock = require "support.cosock"

describe("moongate.redis", function()
  local srv, srv_err, factory, state

  local function client(opts)
    opts = opts or {}
    opts.socket = opts.socket or factory
    local red = redis.new(opts)
    red:set_timeout(2000)
    return red
  end

  local function connected(opts)
    local red = client(opts)
    assert(red:connect(srv.host, srv.port))
    return red
  end

  lazy_setup(function()
    srv, srv_err = t.redis()
    factory, state = cosock.factory()
  end)

  lazy_teardown(function()
    t.stop_all()
  end)

  before_each(function()
    if not srv then pending(srv_err) end
  end)

  describe("against redis-server", function()
    before_each(function()
      if srv then assert.equal("OK", srv:command("FLUSHALL")) end
    end)

    it("answers SET with the status string and GET with the bulk", function()
      local red = connected()
      assert.equal("OK", red:set("greeting", "hello"))
      assert.equal("hello", red:get("greeting"))
      assert.equal("hello", srv:command("GET", "greeting"))
      red:close()
    end)

    it("answers INCR, EXPIRE and TTL with numbers", function()
      local red = connected()
      assert.equal(1, red:incr("hits"))
      assert.equal(2, red:call("INCR", "hits"))
      assert.equal(1, red:expire("hits", 100))
      local ttl = red:ttl("hits")
      assert.is_number(ttl)
      assert.is_true(ttl > 90 and ttl <= 100)
      assert.equal(-2, red:ttl("nothing"))
      assert.equal("2", srv:command("GET", "hits"))
      red:close()
    end)

    it("turns number arguments into their decimal text", function()
      local red = connected()
      assert.equal("OK", red:set("n", 42))
      assert.equal(45, red:incrby("n", 3))
      assert.equal("45", srv:command("GET", "n"))
      red:close()
    end)

    it("gives redis.null for a missing key", function()
      local red = connected()
      local v, err = red:get("missing")
      assert.equal(redis.null, v)
      assert.is_nil(err)
      assert.equal("redis.null", tostring(redis.null))
      red:close()
    end)

    it("gives false and the message for an error reply, and the connection goes on", function()
      local red = connected()
      assert.equal("OK", red:set("s", "text"))
      local v, err = red:incr("s")
      assert.is_false(v)
      assert.equal("ERR value is not an integer or out of range", err)
      v, err = red:call("NOSUCHCOMMAND", "x")
      assert.is_false(v)
      assert.matches("^ERR unknown command", err)
      assert.equal("text", red:get("s"))
      assert.equal(0, red:get_reused_times())
      red:close()
    end)

    it("writes each request with one send of an array table of strings", function()
      local red = connected()
      local before = #state.sends
      assert.equal("OK", red:set("k", "v"))
      assert.equal(before + 1, #state.sends)
      local s = state.sends[#state.sends]
      assert.equal("table", s.kind)
      -- "*3\r\n", "$3\r\n", "set", "\r\n$1\r\n", "k", "\r\n$1\r\n", "v", "\r\n"
      assert.equal(8, s.n)
      assert.equal(#"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n", s.bytes)
      red:close()
    end)

    it("sends commands with many arguments whole (RPUSH of 50 values)", function()
      local red = connected()
      local values = {}
      for i = 1, 50 do values[i] = "v" .. i end
      assert.equal(50, red:rpush("many", unpack(values)))
      assert.same(values, red:lrange("many", 0, -1))
      values[30] = true
      assert.has_error(function() red:rpush("many", unpack(values)) end,
        "redis: RPUSH: argument 31 must be a string or a number, got boolean")
      assert.equal(50, red:llen("many"))
      red:close()
    end)

    it("reads arrays (LRANGE), with nil elements as redis.null", function()
      local red = connected()
      assert.equal(3, red:rpush("list", "a", "b", "c"))
      assert.same({ "a", "b", "c" }, red:lrange("list", 0, -1))
      assert.same({}, red:lrange("empty", 0, -1))
      assert.equal("OK", red:set("x", "1"))
      local got = red:mget("x", "nope")
      assert.equal("1", got[1])
      assert.equal(redis.null, got[2])
      red:close()
    end)

    it("reads nested arrays, integers and error elements from EVAL", function()
      local red = connected()
      local res = red:eval("return { 1, 'two', { 3, { 'four' } }, redis.error_reply('E5 bad') }", 0)
      assert.same({ 1, "two", { 3, { "four" } }, { false, "E5 bad" } }, res)
      assert.same({ "k1", "a1" }, red:eval("return { KEYS[1], ARGV[1] }", 1, "k1", "a1"))
      red:close()
    end)

    it("runs EVALSHA of a loaded script and reports NOSCRIPT for an unknown one", function()
      local red = connected()
      local script = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
      local sha = red:script("LOAD", script)
      assert.equal(40, #sha)
      assert.equal(5, red:evalsha(sha, 1, "counter", 5))
      assert.equal(7, red:evalsha(sha, 1, "counter", 2))
      local v, err = red:evalsha(string.rep("0", 40), 0)
      assert.is_false(v)
      assert.matches("^NOSCRIPT", err)
      red:close()
    end)

    it("pipelines 100 commands in one send and gives each reply, the error in its slot", function()
      local red = connected()
      assert.is_true(red:init_pipeline())
      for i = 1, 99 do
        assert.is_true(red:incr("p"))
        if i == 50 then assert.is_true(red:call("LPUSH", "p", "x")) end -- WRONGTYPE
      end
      local before = #state.sends
      local res, err = red:commit_pipeline()
      assert.is_nil(err)
      assert.equal(before + 1, #state.sends)
      assert.equal(100, #res)
      for i = 1, 50 do assert.equal(i, res[i]) end
      assert.same({ false, "WRONGTYPE Operation against a key holding the wrong kind of value" }, res[51])
      for i = 52, 100 do assert.equal(i - 1, res[i]) end
      assert.equal("99", srv:command("GET", "p"))
      -- out of the pipeline, commands run at once again
      assert.equal(100, red:incr("p"))
      red:close()
    end)

    it("sends nothing for a cancelled pipeline and refuses a commit without one", function()
      local red = connected()
      red:init_pipeline()
      red:set("c", "1")
      local before = #state.sends
      assert.is_true(red:cancel_pipeline())
      assert.equal(before, #state.sends)
      assert.same({ nil, "no pipeline" }, { red:commit_pipeline() })
      red:init_pipeline()
      assert.same({ nil, "no commands in the pipeline" }, { red:commit_pipeline() })
      assert.equal(redis.null, red:get("c"))
      red:close()
    end)

    it("drops a queued pipeline on connect and close: the next command goes alone", function()
      local red = connected()
      red:init_pipeline()
      red:set("dropped", "1")
      assert(red:connect(srv.host, srv.port))
      assert.equal("OK", red:set("kept", "2"))
      assert.equal("PONG", red:ping())
      red:init_pipeline()
      red:set("dropped", "3")
      red:close()
      assert(red:connect(srv.host, srv.port))
      assert.equal("PONG", red:ping())
      assert.equal(t.redis_null, srv:command("GET", "dropped"))
      red:close()
    end)

    it("refuses set_keepalive while a pipeline is queued", function()
      local red = connected()
      red:init_pipeline()
      red:ping()
      local ok, err = red:set_keepalive(1000, 10)
      assert.is_nil(ok)
      assert.matches("pipeline", err)
      red:cancel_pipeline()
      assert.is_true(red:set_keepalive(1000, 10))
    end)

    it("round-trips a 1 MB value", function()
      local red = connected()
      local big = string.rep("0123456789abcdef", 65536)
      assert.equal("OK", red:set("big", big))
      local got = red:get("big")
      assert.equal(#big, #got)
      assert.equal(big, got)
      assert.equal(#big, srv:command("STRLEN", "big"))
      red:close()
    end)

    it("SELECTs a database of its own", function()
      local red = connected()
      assert.equal("OK", red:select(3))
      assert.equal("OK", red:set("where", "three"))
      assert.equal(t.redis_null, srv:command("GET", "where"))
      assert.equal("OK", red:select(0))
      assert.equal(redis.null, red:get("where"))
      red:close()
    end)

    it("hands a kept-alive connection to the next connect", function()
      local red = connected()
      assert.equal(0, red:get_reused_times())
      assert.is_true(red:set_keepalive(10000, 10))
      assert.same({ nil, "closed" }, { red:get("k") })
      assert(red:connect(srv.host, srv.port))
      assert.equal(1, red:get_reused_times())
      assert.equal("PONG", red:ping())
      red:close()
    end)

    it("reports a refused connection as nil, err", function()
      local s = socket.bind("127.0.0.1", 0)
      local _, p = s:getsockname()
      s:close()
      local port = tonumber(p)
      local red = client()
      local ok, err = red:connect("127.0.0.1", port)
      assert.is_nil(ok)
      assert.equal("connection refused", err)
      assert.same({ nil, "closed" }, { red:ping() })
    end)

    it("raises for arguments that are not strings or numbers", function()
      local red = connected()
      assert.has_error(function() red:set("k", nil) end,
        "redis: SET: argument 2 must be a string or a number, got nil")
      assert.has_error(function() red:set("k", {}) end,
        "redis: SET: argument 2 must be a string or a number, got table")
      assert.has_error(function() red:call(nil) end, "redis: call: command name must be a string")
      assert.has_error(function() redis.new { socket = 1 } end, "redis.new: opts.socket must be a function")
      -- nothing half-built was left behind: the next request is whole
      assert.equal("PONG", red:ping())
      red:close()
    end)
  end)

  describe("with a password", function()
    local locked, locked_err
    lazy_setup(function()
      if srv then locked, locked_err = t.redis { password = "s3cret pass" } end
    end)
    lazy_teardown(function()
      if locked then locked:stop() end
    end)

    it("refuses commands before AUTH and serves them after", function()
      if not locked then pending(locked_err) end
      local red = client()
      assert(red:connect(locked.host, locked.port))
      local v, err = red:get("k")
      assert.is_false(v)
      assert.matches("^NOAUTH", err)
      v, err = red:auth("wrong")
      assert.is_false(v)
      assert.matches("WRONGPASS", err)
      assert.equal("OK", red:auth("s3cret pass"))
      assert.equal("OK", red:set("k", "v"))
      assert.equal("v", locked:command("GET", "k"))
      red:close()
    end)
  end)

  describe("against a broken server", function()
    -- A listening socket in this process: the client connects (the kernel
    -- completes it), we accept, write the reply before the request even comes,
    -- and the client reads it.
    local function fake(reply, opts)
      local lsock = assert(socket.bind("127.0.0.1", 0))
      local _, port = lsock:getsockname()
      local red = client(opts)
      red:set_timeout(300)
      assert(red:connect("127.0.0.1", tonumber(port)))
      local conn = assert(lsock:accept())
      lsock:close()
      if reply ~= "" then assert(conn:send(reply)) end
      return red, conn
    end

    -- true when the client closed its end (the fake sees EOF within a second)
    local function client_closed(conn)
      conn:settimeout(1)
      local data = conn:receive("*a")
      conn:close()
      return data ~= nil
    end

    local function refused(reply, pattern, opts)
      local red, conn = fake(reply, opts)
      local v, err = red:get("k")
      assert.is_nil(v)
      assert.matches(pattern, err)
      assert.is_true(client_closed(conn))
      assert.same({ nil, "closed" }, { red:get_reused_times() })
      assert.same({ nil, "closed" }, { red:get("k") })
    end

    it("closes on an unknown type byte", function()
      refused("!oops\r\n", "^redis protocol error: unknown reply type byte 0x21$")
    end)

    it("closes on an empty reply line", function()
      refused("\r\n", "^redis protocol error: empty line$")
    end)

    it("closes on a negative bulk length other than -1", function()
      refused("$-5\r\n", "^redis protocol error: bad bulk length")
    end)

    it("closes on a bulk length that is not a plain decimal", function()
      refused("$0x10\r\n0123456789abcdef\r\n", "^redis protocol error: bad bulk length")
      refused("$ 3\r\nabc\r\n", "^redis protocol error: bad bulk length")
      refused(":1e3\r\n", "^redis protocol error: bad integer")
    end)

    it("closes on a bulk over 512 MiB without reading it", function()
      refused("$536870913\r\n", "^redis protocol error: bulk of 536870913 bytes is over the limit %(536870912%)$")
    end)

    it("closes on a bulk over a smaller max_bulk", function()
      refused("$11\r\nhello world\r\n", "over the limit %(10%)", { max_bulk = 10 })
    end)

    it("closes on an array over a million items, and on nested arrays over the budget", function()
      refused("*1000001\r\n", "^redis protocol error: reply of more than 1000000 items$")
      refused("*2\r\n*2\r\n:1\r\n:2\r\n*2\r\n:3\r\n:4\r\n", "reply of more than 5 items", { max_items = 5 })
    end)

    it("closes on arrays nested too deep", function()
      refused(string.rep("*1\r\n", 100) .. ":1\r\n", "^redis protocol error: arrays nested deeper than 64$")
    end)

    it("closes on a bulk not followed by CRLF", function()
      refused("$3\r\nabcXY", "^redis protocol error: bulk string not followed by CRLF$")
    end)

    it("gives closed for a reply cut short by the server", function()
      local red, conn = fake("$10\r\nabc")
      conn:close()
      local v, err = red:get("k")
      assert.is_nil(v)
      assert.equal("closed", err)
      assert.same({ nil, "closed" }, { red:get_reused_times() })
    end)

    it("gives timeout for a reply that stops coming, and closes", function()
      local red, conn = fake("*2\r\n:1\r\n")
      local v, err = red:get("k")
      assert.is_nil(v)
      assert.equal("timeout", err)
      assert.is_true(client_closed(conn))
    end)

    it("fails a whole pipeline when one reply is broken", function()
      local red, conn = fake("+OK\r\n:1\r\n?\r\n")
      red:init_pipeline()
      red:set("a", "1")
      red:incr("b")
      red:get("c")
      local res, err = red:commit_pipeline()
      assert.is_nil(res)
      assert.matches("unknown reply type byte 0x3f", err)
      assert.is_true(client_closed(conn))
    end)
  end)
end)
