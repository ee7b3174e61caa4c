-- Logs: the JSON access log (every field of docs/config.md, exact values),
-- its "-" and false settings, and the error log line format.
local helpers = require "spec.helpers"

local FIELDS = { "time", "client", "method", "path", "host", "status", "bytes_in", "bytes_out",
                 "upstream", "upstream_time", "time_total", "request_id" }

-- Seconds since the epoch of a "YYYY-MM-DDTHH:MM:SS.mmmZ" time (UTC).
local function parse_time(s)
  local y, mo, d, h, mi, sec, ms = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)%.(%d%d%d)Z$")
  if not y then return nil end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  -- days from civil (Howard Hinnant's algorithm)
  if mo <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * (mo + (mo > 2 and -3 or 9)) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(sec) + tonumber(ms) / 1000
end

-- The access log's lines, waiting up to 2 s until there are at least n.
local function log_lines(path, n)
  local lines
  helpers.wait_until(function()
    lines = {}
    for l in helpers.lines(helpers.read_file(path)) do lines[#lines + 1] = l end
    return #lines >= n
  end, 2, 0.05)
  return lines
end

describe("access log", function()
  local origin, proxy, path

  lazy_setup(function()
    origin = helpers.origin({ name = "O" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = "access.log" }
mg.listen { "127.0.0.1:${port}" }
mg.route { host = "log.test", upstream = mg.upstream "o" { servers = { "${origin}" } } }
mg.route { host = "respond.test", respond = { status = 200, body = "hi" } }
]], { vars = { origin = origin.addr } })
    path = proxy.dir .. "/access.log"
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  local seen = 0
  -- The entries logged since the last call, waiting for `n` of them.
  local function new_entries(n)
    local lines = log_lines(path, seen + n)
    local out = {}
    for i = seen + 1, #lines do out[#out + 1] = helpers.decode_json(lines[i]) end
    seen = #lines
    return out
  end

  it("writes one JSON line with every field and exact values for a proxied request", function()
    local c = proxy:connect()
    local req = "POST /echo/log HTTP/1.1\r\nHost: log.test\r\nUser-Agent: spec\r\n"
      .. "Content-Length: 5\r\n\r\nhello"
    local t0 = os.time()
    local res = assert(c:request(req))
    local doc = helpers.echo(res)
    local id = helpers.echo_headers(doc, "x-request-id")[1]
    local entries = new_entries(1)
    assert.equal(1, #entries)
    local e = entries[1]
    for _, f in ipairs(FIELDS) do assert(e[f] ~= nil, "field " .. f .. " missing") end
    local t = parse_time(e.time)
    assert(t, "time is not ISO 8601 UTC with ms: " .. tostring(e.time))
    assert(math.abs(t - t0) < 5, "time " .. e.time .. " is not now")
    assert.equal(c:local_addr(), e.client)
    assert.equal("POST", e.method)
    assert.equal("/echo/log", e.path)
    assert.equal("log.test", e.host)
    assert.equal(200, e.status)
    assert.equal(#req, e.bytes_in)
    assert.equal(#res.raw, e.bytes_out)
    assert.equal(origin.addr, e.upstream)
    assert.equal("number", type(e.upstream_time))
    assert.equal("number", type(e.time_total))
    assert.is_true(e.upstream_time >= 0 and e.upstream_time <= e.time_total + 0.001)
    assert.is_true(e.time_total < 5)
    assert.equal(id, e.request_id)
    c:close()
  end)

  it("logs a 404 with null upstream and upstream_time and the response's request id", function()
    local res = assert(proxy:request({ path = "/nope", headers = { { "Host", "nothing.test" } } }))
    local id = helpers.assert_error(res, 404)
    local e = new_entries(1)[1]
    assert.equal(404, e.status)
    assert.equal(helpers.null, e.upstream)
    assert.equal(helpers.null, e.upstream_time)
    assert.equal(id, e.request_id)
    assert.equal(#res.raw, e.bytes_out)
    assert.equal("GET", e.method)
    assert.equal("/nope", e.path)
  end)

  it("logs a respond route with null upstream", function()
    local res = assert(proxy:request({ path = "/r", headers = { { "Host", "respond.test" } } }))
    assert.equal(200, res.status)
    local e = new_entries(1)[1]
    assert.equal(200, e.status)
    assert.equal(helpers.null, e.upstream)
    assert.equal("/r", e.path)
  end)

  it("writes one line per request on a keep-alive connection", function()
    local c = proxy:connect()
    local client = c:local_addr()
    for i = 1, 3 do
      assert.equal(200, assert(c:request({ path = "/echo/" .. i, headers = { { "Host", "log.test" } } })).status)
    end
    c:close()
    local entries = new_entries(3)
    assert.equal(3, #entries)
    for i = 1, 3 do
      assert.equal(client, entries[i].client)
      assert.equal("/echo/" .. i, entries[i].path)
    end
  end)
end)

describe("access log settings", function()
  after_each(function() helpers.cleanup() end)

  local function run_one(setting)
    local proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = ${setting} }
mg.listen { "127.0.0.1:${port}" }
mg.route { respond = { status = 200, body = "hi" } }
]], { vars = { setting = setting } })
    assert.equal(200, assert(proxy:request({ path = "/setting-check" })).status)
    return proxy
  end

  it("writes the access log to stderr with \"-\"", function()
    local proxy = run_one('"-"')
    local found = helpers.wait_until(function()
      for line in helpers.lines(proxy:stderr()) do
        if line:sub(1, 1) == "{" and line:find("/setting-check", 1, true) then return line end
      end
    end, 2, 0.05)
    assert(found, "no JSON line in stderr: " .. proxy:stderr())
    assert.equal("/setting-check", helpers.decode_json(found).path)
    proxy:stop()
  end)

  it("writes no access log with false", function()
    local proxy = run_one("false")
    helpers.sleep(0.3)
    assert.equal(0, proxy:stop())
    assert.is_nil(proxy:file("logs/access.log"))
    assert.is_nil(proxy:stderr():find("/setting-check", 1, true))
  end)

  it("writes to logs/access.log by default", function()
    local proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1 }
mg.listen { "127.0.0.1:${port}" }
mg.route { respond = { status = 200, body = "hi" } }
]])
    assert.equal(200, assert(proxy:request({ path = "/default-log" })).status)
    local lines = log_lines(proxy.dir .. "/logs/access.log", 1)
    assert.equal(1, #lines)
    assert.equal("/default-log", helpers.decode_json(lines[1]).path)
    proxy:stop()
  end)
end)

describe("error log", function()
  after_each(function() helpers.cleanup() end)

  it("writes TIME [level] wN msg lines to the configured file", function()
    local proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, error_log = "error.log", log_level = "debug" }
mg.listen { "127.0.0.1:${port}" }
mg.route { upstream = mg.upstream "down" { servers = { "127.0.0.1:${dead}" } } }
]], { vars = { dead = helpers.free_port() } })
    assert.equal(502, assert(proxy:request({ path = "/" })).status)
    proxy:stop()
    local text = proxy:file("error.log") or ""
    local n, worker_lines = 0, 0
    for line in helpers.lines(text) do
      n = n + 1
      -- Lines of the main thread (start, signals) have no worker: "main".
      local time, level, who = line:match("^(%S+) %[(%a+)%] (%S+) .")
      assert(time, "line does not follow TIME [level] wN msg: " .. line)
      assert(who == "main" or who:match("^w%d+$"), "no worker in: " .. line)
      assert(parse_time(time), "time is not ISO 8601 UTC with ms: " .. line)
      assert.is_truthy(({ debug = 1, info = 1, warn = 1, error = 1 })[level], line)
      if who ~= "main" then worker_lines = worker_lines + 1 end
    end
    assert.is_true(n > 0, "error.log is empty")
    assert.is_true(worker_lines > 0, "no worker line for the 502 in: " .. text)
  end)
end)
