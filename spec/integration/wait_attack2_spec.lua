-- Attacks on hooks that wait, second round: what a hostile client or unlucky
-- timing does to waiting response, body and log hooks.
local helpers = require "spec.helpers"

local CONFIG = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, error_log = "error.log",
  timeouts = { hook = 5 }, limits = { connections = 20 }, shared = { d = "64k" } }
mg.listen { "127.0.0.1:${port}" }
local d = function() return mg.shared("d") end
mg.route { path = "/get", respond = function(req) return 200, tostring(d():get(req:arg("k"))) end }
mg.route { path = "/logwait", respond = { status = 200, body = "l\n" }, on = { log = function(req)
  d():incr("log_began", 1, 0)
  mg.sleep(0.3)
  d():incr("log_ended", 1, 0)
end } }
]]

describe("hooks that wait under attack (2)", function()
  local proxy

  lazy_setup(function() proxy = helpers.proxy(CONFIG) end)
  lazy_teardown(function() helpers.teardown(proxy) end)

  local function get(k) return assert(proxy:request({ path = "/get?k=" .. k })).body end
  local function errlog() return helpers.read_file(proxy.dir .. "/error.log") or "" end

  it("a pipelining client cannot make more log hooks wait than limits.connections: the rest are dropped, logged", function()
    local c = proxy:connect()
    local reqs = {}
    for i = 1, 100 do
      reqs[i] = "GET /logwait HTTP/1.1\r\nHost: x\r\n" .. (i == 100 and "Connection: close\r\n" or "") .. "\r\n"
    end
    assert(c:send(table.concat(reqs)))
    local all = c:read_until_close(5)
    c:close()
    assert.equal(100, helpers.count(all, "HTTP/1.1 200 OK"), "every request is answered")
    assert(helpers.wait_until(function() return get("log_ended") == "20" end, 3, 0.05), get("log_ended"))
    helpers.sleep(0.4)
    assert.equal("100", get("log_began"))
    assert.equal("20", get("log_ended"))
    local log = errlog()
    assert.truthy(log:find("log hook of route %d+ waits while 20 others do %(limits.connections%): dropped"), log)
    assert.equal(1, helpers.count(log, "(limits.connections): dropped"), "one line a second at most")
    -- the bound is of waits at one time: once they ended, log hooks wait again
    assert.equal(200, assert(proxy:request({ path = "/logwait" })).status)
    assert(helpers.wait_until(function() return get("log_ended") == "21" end, 2, 0.05), get("log_ended"))
    proxy:assert_alive()
  end)
end)
