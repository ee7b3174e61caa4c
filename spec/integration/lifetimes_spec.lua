-- Objects and sockets that outlive what they belong to: a request object kept by
-- a hook past its request, and listeners of a reload superseded before a worker
-- took it.
local helpers = require "spec.helpers"

describe("a request object kept past its request", function()
  local proxy

  lazy_setup(function()
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false }
mg.listen { "127.0.0.1:${port}" }
local kept
mg.route { path = "/keep", respond = function(req)
  kept = req.res   -- a response object: not reused by the next request's slot
  return 200, "kept\n"
end }
mg.route { path = "/use", respond = function(req)
  local ok, err = pcall(function() return kept:header("x") end)
  return 200, tostring(ok) .. " " .. tostring(err):gsub("^.-: ", "") .. "\n"
end }
]])
  end)

  lazy_teardown(function() helpers.teardown(proxy) end)

  it("refuses to touch the finished request instead of reading freed memory", function()
    assert.equal("kept\n", assert(proxy:request({ path = "/keep" })).body)
    local res = assert(proxy:request({ path = "/use" }))
    assert.equal(200, res.status)
    assert.equal("false header: not allowed in this hook\n", res.body)
  end)
end)

describe("a request object kept while its request is still going on", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false }
mg.listen { "127.0.0.1:${port}" }
local held
mg.route { path = "/slow-head/", upstream = mg.upstream "o" { servers = { "${origin}" } },
           on = { request = function(req) held = req end } }
mg.route { path = "/peek", respond = function(req)
  local ok, err = pcall(function() return held.path end)
  local ok2, err2 = pcall(function() return held:header("host") end)
  return 200, tostring(ok) .. " " .. tostring(err):gsub("^.-: ", "") .. "\n"
           .. tostring(ok2) .. " " .. tostring(err2):gsub("^.-: ", "") .. "\n"
end }
]], { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function() helpers.teardown(proxy) end)

  -- the other request is alive (waiting for its origin), so its memory is not
  -- reused: the object must still refuse, not answer with another request's data
  it("refuses to read another request from a hook of this one", function()
    local slow = proxy:connect()
    assert(slow:send("GET /slow-head/0.5 HTTP/1.1\r\nHost: held\r\n\r\n"))
    helpers.sleep(0.1)
    local res = assert(proxy:request({ path = "/peek" }))
    assert.equal("false req.path: not allowed in this hook\nfalse header: not allowed in this hook\n", res.body)
    assert.equal(200, assert(slow:response()).status)
    slow:close()
  end)
end)

describe("reloads that follow each other at once", function()
  local proxy, dir, extra

  lazy_setup(function()
    extra = helpers.free_port()
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 2, access_log = false }
mg.listen { "127.0.0.1:${port}" }
mg.route { respond = { status = 200, body = "one\n" } }
]])
    dir = proxy.dir
  end)

  lazy_teardown(function() helpers.teardown(proxy) end)

  -- whether the second SIGHUP arrives before a worker took the first reload is up
  -- to timing; either way every worker must end up serving the new address
  it("serves a listener added by two SIGHUPs sent back to back, on every worker", function()
    local conf = proxy.conf
    local text = helpers.read_file(conf)
    local two = text:gsub('body = "one\\n"', 'body = "two\\n"')
      .. 'mg.listen { "127.0.0.1:' .. extra .. '" }\n'
    helpers.write_file(conf, two)
    -- two SIGHUPs back to back: the first reload may still be waiting for the
    -- workers when the second comes
    proxy:signal(require("posix.signal").SIGHUP)
    proxy:signal(require("posix.signal").SIGHUP)
    assert.is_truthy(helpers.wait_until(function() return helpers.port_open(extra) end, 5))
    -- every connection to the new address is answered, whichever worker's socket
    -- the kernel picks (a leaked socket would leave some hanging)
    for i = 1, 40 do
      local res = assert(proxy:request({ path = "/n" .. i }, extra))
      assert.equal(200, res.status)
      assert.equal("two\n", res.body)
    end
  end)
end)
