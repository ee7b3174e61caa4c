-- Splicing (`splice = true` on an upstream): a response body that passes as it
-- is, between two plain sockets, moves from the upstream's socket to the
-- client's through a pipe, inside the kernel. Each case checks the bytes the
-- client gets, and the debug line that says how many were spliced (or that none
-- were, where splicing must not happen).
local helpers = require "spec.helpers"

local MiB = 1024 * 1024
local MIN = 16 * 1024 -- MG_SPLICE_MIN: the first read of a response

describe("splice", function()
  local origin, proxy, dir

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    dir = helpers.tmpdir()
    helpers.self_signed(dir)
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = "access.log", error_log = "error.log", log_level = "debug" }
mg.listen { "127.0.0.1:${port}" }
mg.listen { "127.0.0.1:${tls}", tls = { cert = "${dir}/cert.pem", key = "${dir}/key.pem" } }
local sp = mg.upstream "sp" { servers = { "${origin}" }, splice = true, keepalive = 4 }
local plain = mg.upstream "plain" { servers = { "${origin}" } }
local strip = function(n) return function(req) req:set_path(req.path:sub(n)) end end
mg.route { path = "/nosplice/", upstream = plain, on = { request = strip(10) } }
mg.route { path = "/hooked/", upstream = sp, on = { request = strip(8),
  body = function(req, res, chunk) return chunk end } }
mg.route { upstream = sp }
]], { vars = { origin = origin.addr, dir = dir }, ports = { "tls" } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy, origin)
  end)

  local function errlog() return helpers.read_file(proxy.dir .. "/error.log") or "" end

  -- The spliced counts of the debug lines written since `before` (a length of the log).
  local function spliced_since(before)
    local counts = {}
    for n in errlog():sub(before + 1):gmatch("(%d+) body bytes spliced") do counts[#counts + 1] = tonumber(n) end
    return counts
  end

  -- Waits for the debug line of one more splice after `before`.
  local function one_splice(before)
    local counts = helpers.wait_until(function()
      local c = spliced_since(before)
      return #c > 0 and c or nil
    end, 3, 0.05)
    assert(counts, "no 'body bytes spliced' line in the error log")
    assert.equal(1, #counts)
    return counts[1]
  end

  it("passes a 1 MiB body on intact, all but the first read of it spliced", function()
    local before = #errlog()
    local res = assert(proxy:request({ path = "/bytes/" .. MiB }))
    assert.equal(200, res.status)
    assert.equal(tostring(MiB), res.h["content-length"])
    assert.equal(helpers.sha256(helpers.pattern(MiB)), helpers.sha256(res.body))
    local n = one_splice(before)
    assert(n >= MiB - MIN and n <= MiB, "spliced " .. n .. " of " .. MiB)
  end)

  it("keeps the upstream connection for the next request after a spliced body", function()
    local c = proxy:connect()
    local first = helpers.echo(assert(c:request("GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")))
    local res = assert(c:request("GET /bytes/300000 HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert.equal(helpers.sha256(helpers.pattern(300000)), helpers.sha256(res.body))
    local doc = helpers.echo(assert(c:request("GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")))
    c:close()
    -- the same upstream connection answered all three: the body ended where it should
    assert.same({ first.conn, first.conn_request + 2 }, { doc.conn, doc.conn_request })
  end)

  it("gets every byte to a client that reads late (what it does not take goes through its queue)", function()
    local before = #errlog()
    local n = 4 * MiB
    local c = proxy:connect()
    c.sock:setoption("recv-buffer-size", 16 * 1024)
    assert(c:send("GET /bytes/" .. n .. " HTTP/1.1\r\nHost: x\r\n\r\n"))
    helpers.sleep(0.5) -- the client's socket and moongate's queue for it fill up
    local res = assert(c:response({ timeout = 20 }))
    c:close()
    assert.equal(200, res.status)
    assert.equal(n, #res.body)
    assert.equal(helpers.sha256(helpers.pattern(n)), helpers.sha256(res.body))
    local spliced = one_splice(before)
    assert(spliced >= n - MIN and spliced <= n, "spliced " .. spliced .. " of " .. n)
  end)

  it("cuts the client short when the upstream closes inside a spliced body, and serves the next", function()
    local n = 1000000
    local c = proxy:connect()
    assert(c:send("GET /short/" .. n .. " HTTP/1.1\r\nHost: x\r\n\r\n"))
    local data = c:read_until_close(5) or ""
    c:close()
    local head_end = assert(data:find("\r\n\r\n", 1, true), "no head")
    assert.equal(200, tonumber(data:match("^HTTP/1%.1 (%d+)")))
    local body = data:sub(head_end + 4)
    assert.equal(math.floor(n / 2), #body) -- what the upstream sent, then the close
    assert.equal(helpers.pattern(math.floor(n / 2)), body)
    assert.equal(200, assert(proxy:request({ path = "/bytes/1000" })).status)
  end)

  it("does not splice for a body hook, HEAD, a body under 16 KiB, an upstream without splice, or a TLS client", function()
    local before = #errlog()
    local body = helpers.pattern(200000)
    local res = assert(proxy:request({ path = "/hooked/bytes/200000" }))
    assert.equal(body, res.body)
    res = assert(proxy:request({ path = "/nosplice/bytes/200000" }))
    assert.equal(body, res.body)
    local c = proxy:connect()
    assert(c:send("HEAD /bytes/200000 HTTP/1.1\r\nHost: x\r\n\r\n"))
    res = assert(c:response({ head = true }))
    assert.equal("200000", res.h["content-length"])
    assert.equal("", res.body)
    res = assert(c:request("GET /bytes/" .. (MIN - 100) .. " HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert.equal(helpers.pattern(MIN - 100), res.body)
    c:close()
    res = assert(helpers.curl({ "-k", "https://127.0.0.1:" .. proxy.ports.tls .. "/bytes/200000" }))
    assert.equal(200, res.status)
    assert.equal(helpers.sha256(body), helpers.sha256(res.body))
    -- and a spliced one after them, to be sure the log is being written
    assert.equal(body, assert(proxy:request({ path = "/bytes/200000" })).body)
    local counts = assert(helpers.wait_until(function()
      local got = spliced_since(before)
      return #got > 0 and got or nil
    end, 3, 0.05))
    assert.same(1, #counts, errlog():sub(before + 1))
  end)

  it("logs the whole answer's size in bytes_out for a spliced body", function()
    local res = assert(proxy:request({ path = "/bytes/500001" }))
    assert.equal(200, res.status)
    local e = helpers.wait_until(function()
      for line in helpers.lines(helpers.read_file(proxy.dir .. "/access.log") or "") do
        local doc = helpers.decode_json(line)
        if doc and doc.path == "/bytes/500001" then return doc end
      end
    end, 3, 0.05)
    assert(e, "no access log line")
    assert(e.bytes_out > 500001 and e.bytes_out < 500001 + 1000, "bytes_out " .. tostring(e.bytes_out))
  end)
end)
