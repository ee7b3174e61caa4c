-- The req / res API of docs/hooks.md, call by call, through the real binary;
-- calls in the wrong hook, bad arguments and errors raised by hooks.
local helpers = require "spec.helpers"

-- Config lines are numbered in the spec (see line_of) so error logs can be
-- checked for file:line.
local CONF = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, shared = { s = "1m" } }
mg.listen { "127.0.0.1:${port}" }
local a = mg.upstream "a" { servers = { "${a}" } }
mg.upstream "b" { servers = { "${b}" } }
local s = mg.shared("s")

-- "k=v\n" lines, sorted; a list value is joined with "|"
local function dump(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do
    local v = t[k]
    if type(v) == "table" then v = "[" .. table.concat(v, "|") .. "]" end
    out[#out + 1] = k .. "=" .. tostring(v) .. "\n"
  end
  return table.concat(out)
end

mg.route { path = "/info", respond = function(req)
  return 200, dump {
    method = req.method, path = req.path, query = req.query, host = req.host,
    scheme = req.scheme, client_ip = req.client_ip, id = req.id,
    http_version = req.http_version, id_type = type(req.id),
  }, { ["content-type"] = "text/plain" }
end }

mg.route { path = "/header", respond = function(req)
  local v = req:header(req:arg("name"))
  return 200, type(v) .. ":" .. (type(v) == "table" and table.concat(v, "|") or tostring(v)), {}
end }

mg.route { path = "/headers", respond = function(req)
  return 200, dump(req:headers()), {}
end }

mg.route { path = "/args", respond = function(req)
  local out = {}
  for name in (req:header("x-names") or ""):gmatch("[^,]+") do
    local v = req:arg(name)
    out[name] = v == nil and "nil" or "'" .. v .. "'"
  end
  return 200, dump(out), {}
end }

mg.route { path = "/mg", respond = function(req)
  local t0 = mg.now()
  mg.log.info("info from lua", 1, nil, true)
  mg.log.warn("warn from lua")
  mg.log.err("err from lua")
  mg.log.debug("debug from lua")
  return 200, dump { now_type = type(t0), now_ok = t0 > 0 and mg.now() >= t0,
                     worker = mg.worker_id() }, {}
end }

mg.route { path = "/mg-now", respond = function(req) return 200, string.format("%.6f", mg.now()), {} end }

mg.route { path = "/id/", upstream = a, on = {
  request = function(req) req:set_header("X-Seen-Id", req.id) end,
  response = function(req, res) res:set_header("X-Lua-Id", req.id) end,
} }

mg.route { path = "/set/", upstream = a, on = { request = function(req)
  req:set_header("X-Replaced", "new")
  req:set_header("x-fresh", "fresh")
  req:add_header("X-Appended", "second")
  req:add_header("X-New-Add", "only")
  req:del_header("x-removed")
  req:set_header("X-Nil-Deletes", nil)
  req:set_header("X-List", { "l1", "l2" })
  req:set_header("X-Number", 42)
end } }

mg.route { path = "/path/", upstream = a, on = { request = function(req)
  local mode = req:arg("mode")
  if mode == "path" then req:set_path("/echo/new-path")
  elseif mode == "query" then req:set_query("k=v&x=%20y")
  elseif mode == "noquery" then req:set_query("")
  elseif mode == "both" then req:set_path("/echo/both") req:set_query("z=1") end
end } }

mg.route { path = "/ctx/", upstream = a, on = {
  request = function(req)
    req.ctx.fresh = next(req.ctx) == nil
    req.ctx.value = "set in request " .. req:arg("n")
    if req:arg("slow") then req:set_path("/slow-head/" .. req:arg("slow")) end
  end,
  upstream_request = function(req) req.ctx.upstream_request = "yes" end,
  response = function(req, res)
    res:set_header("X-Ctx", req.ctx.value .. "/" .. req.ctx.upstream_request .. "/" .. tostring(req.ctx.fresh))
  end,
  log = function(req, res)
    s:set("ctx:log", req.ctx.value .. "/" .. res.status)
  end,
} }

mg.route { path = "/res/", upstream = a, on = {
  response = function(req, res)
    res:add_header("X-Rep", "r1")
    res:add_header("X-Rep", "r2")
    local hs = res:headers()
    res:set_header("X-Status", tostring(res.status))
    res:set_header("X-Ct", tostring(res:header("CONTENT-TYPE")))
    res:set_header("X-Missing", tostring(res:header("x-not-there")))
    local rep = res:header("x-rep")
    res:set_header("X-Rep-Read", type(rep) == "table" and table.concat(rep, "|") or tostring(rep))
    res:set_header("X-Hs", tostring(hs["x-origin"]) .. "/" .. tostring(hs["content-type"])
      .. "/" .. (type(hs["x-rep"]) == "table" and table.concat(hs["x-rep"], "|") or tostring(hs["x-rep"])))
  end,
  log = function(req, res)
    s:set("res:log", res.status .. "/" .. tostring(res:header("x-origin")) .. "/" .. tostring(res:header("x-status")))
  end,
} }
mg.route { path = "/counter", respond = function(req)
  return 200, tostring(s:get(req:arg("k"))), {}
end }

-- wrong phase
mg.route { path = "/wrong/res-in-request", upstream = a, on = { request = function(req)
  req.res:set_header("X-No", "1") -- LINE:res-in-request
end } }
mg.route { path = "/wrong/respond-in-response", upstream = a, on = { response = function(req, res)
  req:respond(200, "too late") -- LINE:respond-in-response
end } }
mg.route { path = "/wrong/upstream-in-upstream-request", upstream = a, on = { upstream_request = function(req)
  req:set_upstream("b") -- LINE:set-upstream
end } }
mg.route { path = "/wrong/server-in-request", upstream = a, on = { request = function(req)
  req:set_server(1) -- LINE:set-server
end } }
mg.route { path = "/bytes/", upstream = a, on = { body = function(req, res, chunk)
  res:set_header("X-Too-Late", "1") -- LINE:res-in-body
end } }

-- bad arguments
mg.route { path = "/bad/req-header", upstream = a, on = { request = function(req)
  req:set_header("X-Evil", "a\r\nX-Injected: 1") -- LINE:crlf-req
end } }
mg.route { path = "/bad/res-header", upstream = a, on = { response = function(req, res)
  res:set_header("X-Evil", "a\r\nX-Injected: 1") -- LINE:crlf-res
end } }
mg.route { path = "/bad/path-crlf", upstream = a, on = { request = function(req)
  req:set_path("/echo\r\nX-Injected: 1\r\nX-Rest:") -- LINE:crlf-path
end } }
mg.route { path = "/bad/path-space", upstream = a, on = { request = function(req)
  req:set_path("/echo HTTP/1.0") -- LINE:space-path
end } }
mg.route { path = "/bad/query-crlf", upstream = a, on = { request = function(req)
  req:set_query("a=1 HTTP/1.1\r\nX-Injected: 2\r\nX-Rest: 1") -- LINE:crlf-query
end } }
mg.route { path = "/bad/header-name", upstream = a, on = { request = function(req)
  req:set_header("X Bad:", "v") -- LINE:bad-name
end } }
mg.route { path = "/bad/status", upstream = a, on = { response = function(req, res)
  res:set_status(700) -- LINE:bad-status
end } }
mg.route { path = "/bad/respond-status", respond = function(req)
  req:respond(99, "nope") -- LINE:bad-respond-status
end }
mg.route { path = "/bad/return-status", respond = function(req)
  return 99, "nope"
end }

-- errors raised by hooks
mg.route { path = "/boom/request", upstream = a, on = { request = function(req)
  local t = nil
  return t.field -- LINE:index-nil
end } }
mg.route { path = "/boom/error", upstream = a, on = { request = function(req)
  error("hook said no") -- LINE:error-call
end } }
mg.route { path = "/boom/response", upstream = a, on = { response = function(req, res)
  error("response hook said no") -- LINE:error-response
end } }
mg.route { path = "/boom/log", upstream = a, on = { log = function(req, res)
  error("log hook said no") -- LINE:error-log
end } }
mg.route { path = "/boom/yield", upstream = a, on = { request = function(req)
  coroutine.yield("nothing to wait for")
end } }
mg.route { path = "/boom/table", upstream = a, on = { request = function(req)
  error({ code = 1 })
end } }
mg.route { path = "/boom/respond", respond = function(req)
  error("respond function said no") -- LINE:error-respond
end }
]]

local function line_of(tag)
  local n = 0
  for line in (CONF .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if line:find("-- LINE:" .. tag, 1, true) then return n end
  end
  error("no LINE:" .. tag)
end

describe("hook API", function()
  local A, B, proxy

  lazy_setup(function()
    A = helpers.origin({ name = "A" })
    B = helpers.origin({ name = "B" })
    proxy = helpers.proxy(CONF, { vars = { a = A.addr, b = B.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  local function get(path, headers)
    return assert(proxy:request({ path = path, headers = headers }))
  end

  local function lines(body)
    local t = {}
    for k, v in body:gmatch("([^=\n]+)=([^\n]*)\n") do t[k] = v end
    return t
  end

  describe("req fields", function()
    it("method, path, query, host, scheme, client_ip, http_version and id", function()
      local res = assert(proxy:request("POST /info/some/where?a=1&b=two HTTP/1.1\r\n"
        .. "Host: Front.Example:8081\r\nContent-Length: 0\r\n\r\n"))
      assert.equal(200, res.status)
      local t = lines(res.body)
      assert.equal("POST", t.method)
      assert.equal("/info/some/where", t.path)
      assert.equal("a=1&b=two", t.query)
      assert.equal("Front.Example:8081", t.host)
      assert.equal("http", t.scheme)
      assert.equal("127.0.0.1", t.client_ip)
      assert.equal("1.1", t.http_version)
      assert.equal("string", t.id_type)
      assert.is_true(#t.id > 0)
    end)

    it("query is \"\" without a query, and http_version 1.0 for HTTP/1.0", function()
      local res = assert(proxy:request("GET /info HTTP/1.0\r\nHost: h\r\n\r\n"))
      local t = lines(res.body)
      assert.equal("", t.query)
      assert.equal("/info", t.path)
      assert.equal("GET", t.method)
      assert.equal("1", t.http_version) -- tostring(1.0) in LuaJIT
    end)

    it("id differs per request", function()
      assert.are_not.equal(lines(get("/info").body).id, lines(get("/info").body).id)
    end)

    it("id is the X-Request-Id the origin sees", function()
      local res = get("/id/echo")
      local doc = helpers.echo(res)
      local sent = helpers.echo_headers(doc, "x-request-id")
      assert.equal(1, #sent)
      assert.same({ sent[1] }, helpers.echo_headers(doc, "x-seen-id"))
      assert.equal(sent[1], res.h["x-lua-id"])
    end)
  end)

  describe("mg.*", function()
    it("mg.log.* writes to the error log tagged with level and worker; mg.now() and mg.worker_id()", function()
      local res = get("/mg")
      assert.equal("now_ok=true\nnow_type=number\nworker=0\n", res.body)
      local log = helpers.wait_until(function()
        local e = proxy:stderr()
        return e:find("err from lua", 1, true) and e
      end, 3)
      assert.is_truthy(log, proxy:stderr())
      assert.matches("%[info%] w0 info from lua 1 nil true\n", log)
      assert.matches("%[warn%] w0 warn from lua\n", log)
      assert.matches("%[error%] w0 err from lua\n", log)
      assert.is_nil(log:find("debug from lua", 1, true)) -- log_level info
    end)

    it("mg.now() is the loop's time in seconds: it advances between requests", function()
      local function now() return tonumber(get("/mg-now").body) end
      local a = now()
      helpers.sleep(0.3)
      local b = now()
      assert.is_true(b - a >= 0.25 and b - a < 2, string.format("%.3f -> %.3f", a, b))
    end)
  end)

  describe("req headers", function()
    it("req:header returns a list for a repeated header, a string for a single one, nil when absent", function()
      local hs = { { "Host", "h" }, { "X-Multi", "one" }, { "x-multi", "two" }, { "X-MULTI", "three" },
                   { "X-Single", "only" } }
      assert.equal("table:one|two|three", get("/header?name=x-multi", hs).body)
      assert.equal("string:only", get("/header?name=X-SINGLE", hs).body)
      assert.equal("nil:nil", get("/header?name=x-absent", hs).body)
    end)

    it("req:headers() gives every header by lower-case name, lists for repeats", function()
      local res = get("/headers", { { "Host", "h.test" }, { "X-A", "1" }, { "x-b", "b1" }, { "X-B", "b2" },
                                    { "Accept", "*/*" } })
      assert.equal("accept=*/*\nhost=h.test\nx-a=1\nx-b=[b1|b2]\n", res.body)
    end)

    it("set_header replaces, add_header appends, del_header and a nil value delete, a table sets several", function()
      local doc = helpers.echo(get("/set/echo", {
        { "Host", "h" }, { "X-Replaced", "old1" }, { "X-Replaced", "old2" },
        { "X-Appended", "first" }, { "X-Removed", "r1" }, { "X-Removed", "r2" },
        { "X-Nil-Deletes", "x" }, { "X-List", "old" },
      }))
      local function v(n) return helpers.echo_headers(doc, n) end
      assert.same({ "new" }, v("x-replaced"))
      assert.same({ "fresh" }, v("x-fresh"))
      assert.same({ "first", "second" }, v("x-appended"))
      assert.same({ "only" }, v("x-new-add"))
      assert.same({}, v("x-removed"))
      assert.same({}, v("x-nil-deletes"))
      assert.same({ "l1", "l2" }, v("x-list"))
      assert.same({ "42" }, v("x-number"))
    end)
  end)

  describe("req:set_path / req:set_query", function()
    it("set_path keeps the query", function()
      assert.equal("/echo/new-path?mode=path", helpers.echo(get("/path/x?mode=path")).path)
    end)
    it("set_query keeps the path", function()
      assert.equal("/path/x?k=v&x=%20y", helpers.echo(get("/path/x?mode=query")).path)
    end)
    it("set_query(\"\") removes the query", function()
      assert.equal("/path/x", helpers.echo(get("/path/x?mode=noquery")).path)
    end)
    it("both", function()
      assert.equal("/echo/both?z=1", helpers.echo(get("/path/x?mode=both")).path)
    end)
    it("untouched request passes unchanged", function()
      assert.equal("/path/x?mode=none&b=%41", helpers.echo(get("/path/x?mode=none&b=%41")).path)
    end)
  end)

  describe("req:arg", function()
    it("decodes, returns the first of repeated args, \"\" for bare flags and nil when absent", function()
      local q = "a=1&b=hello%20world&c=x+y&flag&a=2&e=&n%41me=v%3D1&u=%E2%82%AC"
      local res = get("/args?" .. q, { Host = "h", ["X-Names"] = "a,b,c,flag,e,nAme,u,zz,a=1" })
      assert.equal(table.concat({
        "a='1'", "a=1=nil", "b='hello world'", "c='x y'", "e=''", "flag=''", "nAme='v=1'",
        "u='\226\130\172'", "zz=nil",
      }, "\n") .. "\n", res.body)
    end)

    it("returns nil without a query", function()
      assert.equal("a=nil\nflag=nil\n", get("/args", { Host = "h", ["X-Names"] = "a,flag" }).body)
    end)
  end)

  describe("req.ctx", function()
    it("lives from request through upstream_request and response to log, fresh per request", function()
      local c = proxy:connect()
      for n = 1, 2 do
        local res = assert(c:request({ path = "/ctx/echo?n=" .. n }))
        assert.equal(200, res.status)
        assert.equal("set in request " .. n .. "/yes/true", res.h["x-ctx"])
        local logged = helpers.wait_until(function()
          return get("/counter?k=ctx:log").body == "set in request " .. n .. "/200"
        end, 3)
        assert.is_true(logged, "log hook did not see ctx of request " .. n)
      end
      c:close()
    end)

    it("is per request when requests overlap in one worker", function()
      local conns = {}
      -- the slowest first: each response hook must still see its own ctx
      for n = 1, 3 do
        conns[n] = proxy:connect()
        assert(conns[n]:send(string.format("GET /ctx/x?n=%d&slow=%.1f HTTP/1.1\r\nHost: x\r\n\r\n",
          n, 0.9 - 0.3 * n)))
      end
      for n = 1, 3 do
        local res = assert(conns[n]:response({ timeout = 5 }))
        assert.equal(200, res.status)
        assert.equal("set in request " .. n .. "/yes/true", res.h["x-ctx"])
        conns[n]:close()
      end
    end)
  end)

  describe("res", function()
    it("res.status, res:header (case-insensitive, lists when repeated, nil) and res:headers()", function()
      local res = get("/res/echo")
      assert.equal(200, res.status)
      assert.equal("200", res.h["x-status"])
      assert.equal("application/json", res.h["x-ct"])
      assert.equal("nil", res.h["x-missing"])
      assert.equal("r1|r2", res.h["x-rep-read"])
      assert.equal("A/application/json/r1|r2", res.h["x-hs"])
    end)

    it("is readable in the log hook, with the changes made in the response hook", function()
      get("/res/echo")
      local v = helpers.wait_until(function()
        local b = get("/counter?k=res:log").body
        return b ~= "nil" and b
      end, 3)
      assert.equal("200/A/200", v)
    end)
  end)

  -- The error log must hold the message, proxy.lua:LINE and a traceback, and
  -- the request id of the 500.
  local function assert_logged(id, message, tag)
    local line = tag and line_of(tag)
    local log = helpers.wait_until(function()
      local e = proxy:stderr()
      return e:find(id, 1, true) and e:find(message, 1, true) and e
    end, 3)
    assert.is_truthy(log, "no error log line with " .. id .. " and '" .. message .. "' in:\n"
      .. proxy:stderr():sub(-3000))
    local from = log:find(id, 1, true)
    local entry = log:sub(from, from + 1500)
    assert.is_truthy(entry:find(message, 1, true), entry)
    -- the message itself names the user's line (not only the traceback)
    local first = entry:match("^[^\n]*")
    if line then
      assert.is_truthy(first:find("/proxy.lua:" .. line .. ": ", 1, true),
        "the message does not start at proxy.lua:" .. line .. ":\n" .. entry)
      assert.is_truthy(entry:find("stack traceback:\n.*/proxy%.lua:?%d*: in "),
        "no proxy.lua in the traceback:\n" .. entry)
    end
    assert.is_truthy(entry:find("\nstack traceback:\n", 1, true), "no traceback in:\n" .. entry)
  end

  -- A 500 with the request id on a keep-alive connection, then a 200 on it.
  local function assert_500_then_ok(path, message, tag)
    local c = proxy:connect()
    local res = assert(c:request({ path = path }))
    local id = helpers.assert_error(res, 500)
    assert_logged(id, message, tag)
    local again = assert(c:request({ path = "/info" }))
    assert.equal(200, again.status)
    c:close()
  end

  describe("wrong phase", function()
    it("res:set_header in the request hook: error logged, 500", function()
      assert_500_then_ok("/wrong/res-in-request", "res:set_header: not allowed in this hook", "res-in-request")
    end)

    it("req:respond in the response hook: error logged, 500", function()
      assert_500_then_ok("/wrong/respond-in-response", "req:respond: not allowed in this hook",
        "respond-in-response")
    end)

    it("req:set_upstream in upstream_request: error logged, 500, nothing reaches B", function()
      local before = #B:requests()
      assert_500_then_ok("/wrong/upstream-in-upstream-request", "req:set_upstream: not allowed in this hook",
        "set-upstream")
      assert.equal(before, #B:requests())
    end)

    it("req:set_server outside balance: error logged, 500", function()
      assert_500_then_ok("/wrong/server-in-request", "req:set_server: not allowed in this hook", "set-server")
    end)

    it("res:set_header in the body hook, after the head went out: the connection closes", function()
      local c = proxy:connect()
      assert(c:send("GET /bytes/100000 HTTP/1.1\r\nHost: x\r\n\r\n"))
      local data, why = c:read_until_close(5)
      c:close()
      assert.equal("closed", why)
      assert.matches("^HTTP/1.1 200 ", data)
      local head_end = data:find("\r\n\r\n", 1, true)
      assert.is_true(#data - head_end - 3 < 100000, "the whole body arrived")
      local id = helpers.wait_until(function()
        return proxy:stderr():match("req (%S+): body hook failed: [^\n]*res:set_header: not allowed in this hook")
      end, 3)
      assert.is_truthy(id, proxy:stderr():sub(-2000))
      assert_logged(id, "res:set_header: not allowed in this hook", "res-in-body")
    end)
  end)

  describe("bad arguments", function()
    it("a request header value with CR LF: 500 and nothing injected upstream", function()
      local before = #A:requests()
      assert_500_then_ok("/bad/req-header", "req:set_header", "crlf-req")
      assert.equal(before, #A:requests())
    end)

    for _, case in ipairs({
      { "a path with CR LF", "/bad/path-crlf", "req:set_path", "crlf-path" },
      { "a path with a space", "/bad/path-space", "req:set_path", "space-path" },
      { "a query with CR LF", "/bad/query-crlf", "req:set_query", "crlf-query" },
    }) do
      it(case[1] .. ": 500 and nothing goes upstream", function()
        local before = #A:requests()
        assert_500_then_ok(case[2], case[3], case[4])
        assert.equal(before, #A:requests())
      end)
    end

    it("a header name that is not a token: 500", function()
      local before = #A:requests()
      assert_500_then_ok("/bad/header-name", "req:set_header", nil)
      assert.equal(before, #A:requests())
    end)

    it("a response header value with CR LF: 500", function()
      assert_500_then_ok("/bad/res-header", "res:set_header", "crlf-res")
    end)

    it("res:set_status outside 200..599: 500", function()
      assert_500_then_ok("/bad/status", "res:set_status", "bad-status")
    end)

    it("req:respond(99) in a respond function: 500", function()
      assert_500_then_ok("/bad/respond-status", "req:respond", "bad-respond-status")
    end)

    it("a respond function returning status 99: 500 (moongate raises it, after the function returned)", function()
      assert_500_then_ok("/bad/return-status", "status must be 200..599", nil)
    end)
  end)

  describe("errors raised by hooks", function()
    it("indexing nil in a request hook: 500 with the request id, file:line and traceback logged, next request 200", function()
      assert_500_then_ok("/boom/request", "attempt to index", "index-nil")
    end)

    it("error() in a request hook: 500, the message logged, next request 200", function()
      assert_500_then_ok("/boom/error", "hook said no", "error-call")
    end)

    it("error() in a response hook: 500", function()
      assert_500_then_ok("/boom/response", "response hook said no", "error-response")
    end)

    it("error() in a respond function: 500", function()
      assert_500_then_ok("/boom/respond", "respond function said no", "error-respond")
    end)

    it("a hook that yields: 500, next request 200", function()
      assert_500_then_ok("/boom/yield", "request hook failed", nil)
      -- the yielded coroutine is not reused: the next hooks run normally
      for _ = 1, 3 do assert.equal(200, get("/ctx/echo?n=9").status) end
    end)

    it("an error object that is not a string: 500, next request 200", function()
      assert_500_then_ok("/boom/table", "request hook failed", nil)
    end)

    it("error() in the log hook: the response is already complete and the worker goes on", function()
      local c = proxy:connect()
      local res = assert(c:request({ path = "/boom/log" }))
      local doc = helpers.echo(res)
      local id = helpers.echo_headers(doc, "x-request-id")[1]
      assert_logged(id, "log hook said no", "error-log")
      assert.equal(200, assert(c:request({ path = "/info" })).status)
      c:close()
    end)

    it("a hook error does not disturb other connections of the worker", function()
      local idle = proxy:connect()
      assert.equal(200, assert(idle:request({ path = "/info" })).status)
      for _ = 1, 5 do helpers.assert_error(get("/boom/error"), 500) end
      assert.equal(200, assert(idle:request({ path = "/info" })).status)
      idle:close()
    end)
  end)
end)
