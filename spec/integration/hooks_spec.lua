-- Every hook of docs/hooks.md end to end through the real binary: init_worker,
-- connect, request, balance, upstream_request, response, body, log, a route's
-- `respond` function, and the order of global (mg.on) and route (`on =`) hooks.
-- What the origin received is read from its /echo document, what the client
-- received from the raw response.
local helpers = require "spec.helpers"
local socket = require "socket"

-- A tiny serialiser usable inside proxy.lua: "k=v;k=v" with sorted keys.
local CONF = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, shared = { s = "1m" } }
mg.listen { "127.0.0.1:${port}" }
mg.listen { "127.0.0.1:${side}", name = "side" }
local a = mg.upstream "a" { servers = { "${a}" } }
local b = mg.upstream "b" { servers = { "${b}" } }
local ab = mg.upstream "ab" { servers = { "${a} weight=3", "${b}" } }
local dead = mg.upstream "dead" { servers = { "${dead}" } }
local s = mg.shared("s")

local booted = "no"
mg.on("init_worker", function()
  booted = "yes w" .. mg.worker_id()
  s:set("init", "ran")
end)

local seen_conn = {}
mg.on("connect", function(conn)
  seen_conn[#seen_conn + 1] = conn.client_ip .. "/" .. tostring(conn.listener)
  if conn.client_ip == "127.0.0.2" then return false end
  if conn.client_ip == "127.0.0.4" then error("connect hook exploded") end -- LINE:connect-error
end)

-- global hooks: active on /order/ only (registration order: g1 then g2)
local function ordered(req) return req.path:sub(1, 7) == "/order/" end
mg.on("request", function(req)
  if not ordered(req) then return end
  req:add_header("X-Order", "g1")
  if req.path == "/order/answer" then req:respond(299, "answered by g1") end
end)
mg.on("request", function(req)
  if ordered(req) then req:add_header("X-Order", "g2") end
end)
mg.on("response", function(req, res)
  if ordered(req) then res:add_header("X-Order", "g1") end
end)
mg.on("response", function(req, res)
  if ordered(req) then res:add_header("X-Order", "g2") end
end)

mg.route { path = "/init", respond = function(req)
  return 200, booted .. " " .. tostring(s:get("init")), { ["content-type"] = "text/plain" }
end }
mg.route { path = "/conns", respond = function(req)
  return 200, table.concat(seen_conn, ","), {}
end }

mg.route { path = "/rewrite/", upstream = a, on = { request = function(req)
  req:set_path("/echo/rewritten")
  req:set_query("x=1&y=two")
  req:set_header("X-Set", "set-value")
  req:add_header("X-Add", "added")
  req:del_header("X-Drop")
end } }

mg.route { path = "/to-b-name/", upstream = a, on = { request = function(req)
  req:set_upstream("b")
end } }
mg.route { path = "/to-b-obj/", upstream = a, on = { request = function(req)
  req:set_upstream(b)
end } }
mg.route { path = "/answer/", upstream = a, on = { request = function(req)
  req:respond(403, "denied by lua\n", { ["x-why"] = "policy", ["content-type"] = "text/plain" })
end } }

mg.route { path = "/bal/", upstream = ab, on = {
  balance = function(req)
    local t = {}
    for i, srv in ipairs(req:servers()) do t[i] = i .. "=" .. srv.addr .. "*" .. srv.weight end
    req.ctx.servers = table.concat(t, ",")
    req.ctx.balanced = (req.ctx.balanced or 0) + 1
    req:set_server(2)
  end,
  response = function(req, res)
    res:set_header("X-Servers", req.ctx.servers)
    res:set_header("X-Balanced", tostring(req.ctx.balanced))
    res:set_header("X-Upstream-Addr", tostring(req:upstream_addr()))
  end,
} }

mg.route { path = "/late/", upstream = a, on = {
  request = function(req) req.ctx.step = "request" end,
  upstream_request = function(req)
    req:set_header("X-Late", "from upstream_request " .. req.ctx.step)
    req:set_path("/echo/late-path")
  end,
} }

mg.route { path = "/resp/", upstream = a, on = { response = function(req, res)
  res:set_header("X-Was", tostring(res.status))
  res:set_status(201)
  res:set_header("X-Set", "s1")
  res:add_header("X-Add", "a1")
  res:add_header("X-Add", "a2")
  res:del_header("X-Origin")
end } }

local function transform(chunk)
  chunk = chunk:gsub("%d", function(d) return string.char(65 + tonumber(d)) end)
  return (chunk:gsub("\n", "|\n"))
end
mg.route { path = "/bytes/", upstream = a, on = { body = function(req, res, chunk)
  req.ctx.chunks = (req.ctx.chunks or 0) + 1
  req.ctx.body_status = res.status
  return transform(chunk)
end, log = function(req, res)
  s:set("body:chunks", req.ctx.chunks)
  s:set("body:status", req.ctx.body_status)
end } }
mg.route { path = "/chunked/", upstream = a, on = { body = function(req, res, chunk)
  return transform(chunk)
end } }
mg.route { path = "/drop/", upstream = a, on = {
  request = function(req) req:set_path("/bytes/" .. req:arg("n")) req:set_query("") end,
  body = function(req, res, chunk) return "" end,
} }
mg.route { path = "/status/", upstream = a, on = { body = function(req, res, chunk)
  return nil -- unchanged
end } }

mg.route { path = "/logged/", upstream = a, on = { log = function(req, res)
  s:incr("log:" .. res.status, 1, 0)
  s:set("log:last", req.path .. " " .. res.status .. " " .. tostring(req:upstream_addr()))
end } }
mg.route { path = "/dead/", upstream = dead, on = { log = function(req, res)
  s:incr("log:" .. res.status, 1, 0)
  -- no upstream head: no response headers (nil and {}), not an earlier request's
  local ok, v = pcall(res.header, res, "content-type")
  local ok2, all = pcall(res.headers, res)
  s:set("log:dead_header", tostring(ok) .. " " .. tostring(v) .. " " .. tostring(ok2) .. " "
    .. (ok2 and tostring(next(all)) or tostring(all)))
end } }
mg.route { path = "/counter", respond = function(req)
  return 200, tostring(s:get(req:arg("k"))), {}
end }

mg.route { path = "/order/", upstream = a, on = {
  request = function(req)
    if req.path == "/order/answer" then error("must not run after g1 answered") end
    req:add_header("X-Order", "route")
  end,
  response = function(req, res) res:add_header("X-Order", "route") end,
} }

mg.route { path = "/fn", respond = function(req)
  return 202, "fn " .. req.method .. " " .. (req:arg("who") or "nobody") .. "\n",
         { ["content-type"] = "text/plain", ["x-fn"] = "yes" }
end }
mg.route { path = "/fn-respond", respond = function(req)
  req:respond(203, "via req:respond", { ["x-via"] = "respond" })
end }
mg.route { path = "/fn-status-only", respond = function(req) return 204 end }
mg.route { path = "/fn-return-respond", respond = function(req)
  return req:respond(200, "x", { ["x-via"] = "returned req:respond" })
end }
mg.route { path = "/fn-mixed", respond = function(req)
  req:respond(203, "first", { ["x-which"] = "first" })
  return 200, "second", { ["x-which"] = "second" }
end }
mg.route { path = "/fn-twice", respond = function(req)
  req:respond(203, "first")
  req:respond(200, "second") -- LINE:respond-twice
end }
mg.route { path = "/fn-304", respond = function(req) return 304, "a body a 304 cannot have", {} end }
mg.route { path = "/fn-204", respond = function(req) return 204, "a body a 204 cannot have", {} end }
mg.route { path = "/to204/", upstream = a, on = {
  request = function(req) req:set_path("/bytes/1000") end,
  response = function(req, res) res:set_status(204) end,
} }
mg.route { path = "/to304/", upstream = a, on = {
  request = function(req) req:set_path("/bytes/1000") end,
  response = function(req, res) res:set_status(304) end,
} }
]]

-- The line of proxy.lua holding a "LINE:tag" comment (for file:line in error logs).
local function line_of(tag)
  local n = 0
  for l in (CONF .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if l:find(tag, 1, true) then return n end
  end
  error("no " .. tag .. " in CONF")
end

describe("hooks", function()
  local A, B, proxy

  lazy_setup(function()
    A = helpers.origin({ name = "A" })
    B = helpers.origin({ name = "B" })
    proxy = helpers.proxy(CONF, { ports = { "side" }, wait_ports = { "port", "side" },
      vars = { a = A.addr, b = B.addr, dead = "127.0.0.1:" .. helpers.free_port() } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  local function get(path, headers)
    return assert(proxy:request({ path = path, headers = headers }))
  end

  local function echo(path, headers)
    return helpers.echo(get(path, headers))
  end

  -- A client connection from a given loopback source address.
  local function connect_from(ip, port)
    local s = socket.tcp()
    s:settimeout(5)
    assert(s:bind(ip, 0))
    assert(s:connect("127.0.0.1", port))
    s:settimeout(0)
    return s
  end

  -- Everything until close (or timeout): data, "closed" | "timeout".
  local function drain(s, timeout)
    local deadline = helpers.now() + timeout
    local got = {}
    while helpers.now() < deadline do
      local r = socket.select({ s }, nil, deadline - helpers.now())
      if r and r[1] then
        local data, err, partial = s:receive(65536)
        local chunk = data or partial
        if chunk and #chunk > 0 then got[#got + 1] = chunk end
        if err == "closed" then return table.concat(got), "closed" end
      end
    end
    return table.concat(got), "timeout"
  end

  describe("init_worker", function()
    it("runs in the worker before requests: a module local and a shared key it set are visible", function()
      local res = get("/init")
      assert.equal(200, res.status)
      assert.equal("yes w0 ran", res.body)
    end)
  end)

  describe("connect", function()
    it("returning false closes the client's connection without a response", function()
      local s = connect_from("127.0.0.2", proxy.port)
      s:send("GET /init HTTP/1.1\r\nHost: x\r\n\r\n")
      local data, why = drain(s, 3)
      s:close()
      assert.equal("closed", why)
      assert.equal("", data)
    end)

    it("an error in it closes that connection and is logged with file:line; others go on", function()
      local s = connect_from("127.0.0.4", proxy.port)
      s:send("GET /init HTTP/1.1\r\nHost: x\r\n\r\n")
      local data, why = drain(s, 3)
      s:close()
      assert.equal("closed", why)
      assert.equal("", data)
      local line
      local n = 0
      for l in (CONF .. "\n"):gmatch("([^\n]*)\n") do
        n = n + 1
        if l:find("LINE:connect-error", 1, true) then line = n end
      end
      local log = helpers.wait_until(function()
        local e = proxy:stderr()
        return e:find("connect hook exploded", 1, true) and e
      end, 3)
      assert.is_truthy(log, proxy:stderr())
      assert.is_truthy(log:find("proxy.lua:" .. line .. ": connect hook exploded", 1, true), log)
      assert.is_truthy(log:find("stack traceback", 1, true), log)
      assert.equal(200, get("/init").status)
    end)

    it("lets other clients through, on every listener, and sees client_ip and the listener name", function()
      local s = connect_from("127.0.0.3", proxy.port)
      s:send("GET /init HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      local data = drain(s, 3)
      s:close()
      assert.matches("^HTTP/1.1 200 ", data)
      assert.equal(200, get("/init").status)
      local res = assert(proxy:request({ path = "/conns" }, proxy.ports.side))
      assert.equal(200, res.status)
      local list = {}
      for item in res.body:gmatch("[^,]+") do list[#list + 1] = item end
      -- the last two: this /conns connection (on "side") and the /init one (unnamed)
      assert.equal("127.0.0.1/side", list[#list])
      assert.equal("127.0.0.1/nil", list[#list - 1])
      assert.equal("127.0.0.3/nil", list[#list - 2])
      assert.equal("127.0.0.1/nil", list[#list - 3]) -- the /init after the error
      assert.equal("127.0.0.4/nil", list[#list - 4])
      assert.equal("127.0.0.2/nil", list[#list - 5])
    end)
  end)

  describe("request", function()
    it("rewrites path, query and headers before the origin sees them", function()
      local doc = echo("/rewrite/x?orig=1", {
        { "Host", "h.test" }, { "X-Set", "client-1" }, { "X-Set", "client-2" },
        { "X-Add", "client" }, { "X-Drop", "gone" },
      })
      assert.equal("A", doc.name)
      assert.equal("/echo/rewritten?x=1&y=two", doc.path)
      assert.same({ "set-value" }, helpers.echo_headers(doc, "x-set"))
      assert.same({ "client", "added" }, helpers.echo_headers(doc, "x-add"))
      assert.same({}, helpers.echo_headers(doc, "x-drop"))
    end)

    it("set_upstream by name sends the request to the other upstream", function()
      local doc = echo("/to-b-name/p?q=1")
      assert.equal("B", doc.name)
      assert.equal("/to-b-name/p?q=1", doc.path)
    end)

    it("set_upstream with an upstream object sends the request to it", function()
      assert.equal("B", echo("/to-b-obj/p").name)
    end)

    it("req:respond answers with status, body and headers; nothing goes upstream", function()
      local before = #A:requests()
      local res = get("/answer/secret")
      assert.equal(403, res.status)
      assert.equal("denied by lua\n", res.body)
      assert.equal("policy", res.h["x-why"])
      assert.equal("text/plain", res.h["content-type"])
      assert.equal(tostring(#"denied by lua\n"), res.h["content-length"])
      assert.equal(before, #A:requests())
    end)
  end)

  describe("balance", function()
    it("sees req:servers() and set_server(2) always picks server 2", function()
      for _ = 1, 8 do
        local res = get("/bal/echo")
        assert.equal("B", helpers.echo(res).name)
        assert.equal("1=" .. A.addr .. "*3,2=" .. B.addr .. "*1", res.h["x-servers"])
        assert.equal("1", res.h["x-balanced"])
        assert.equal(B.addr, res.h["x-upstream-addr"])
      end
    end)
  end)

  describe("upstream_request", function()
    it("changes made there (header, path) reach the origin, and ctx from the request hook is there", function()
      local doc = echo("/late/x")
      assert.equal("/echo/late-path", doc.path)
      assert.same({ "from upstream_request request" }, helpers.echo_headers(doc, "x-late"))
    end)
  end)

  describe("response", function()
    it("set_status and set/add/del_header change what the client gets", function()
      local res = get("/resp/echo")
      assert.equal(201, res.status)
      assert.equal("200", res.h["x-was"])
      assert.equal("s1", res.h["x-set"])
      local adds = {}
      for _, kv in ipairs(res.headers) do
        if kv[1]:lower() == "x-add" then adds[#adds + 1] = kv[2] end
      end
      assert.same({ "a1", "a2" }, adds)
      assert.is_nil(res.h["x-origin"])
      assert.equal("A", helpers.decode_json(res.body).name)
    end)
  end)

  describe("response status without a body", function()
    -- A 204 or 304 ends at its head (RFC 9112 6.3): body bytes after it would be
    -- read as the next response.
    for _, case in ipairs({ { "set_status(204)", "/to204/", 204 }, { "set_status(304)", "/to304/", 304 } }) do
      it(case[1] .. " on a response with a body: no body bytes follow the head", function()
        local c = proxy:connect()
        local res = assert(c:request({ path = case[2] }))
        assert.equal(case[3], res.status)
        assert.is_nil(res.h["transfer-encoding"])
        assert.is_false(c:readable(0.3), "bytes after the " .. case[3] .. " head: "
          .. string.format("%q", ((c.buf ~= "" and c.buf) or tostring(c.sock:receive(40))):sub(1, 40)))
        local again = assert(c:request({ path = "/fn?who=next" }))
        assert.equal(202, again.status)
        assert.equal("fn GET next\n", again.body)
        c:close()
      end)
    end
  end)

  describe("body", function()
    local function expected(n)
      return (helpers.pattern(n):gsub("%d", function(d) return string.char(65 + tonumber(d)) end)
        :gsub("\n", "|\n"))
    end

    it("replaces each chunk; Content-Length gives way to chunked framing; the body is exactly transformed", function()
      local c = proxy:connect()
      local res = assert(c:request({ path = "/bytes/1000" }))
      assert.equal(200, res.status)
      assert.is_nil(res.h["content-length"])
      assert.equal("chunked", res.h["transfer-encoding"])
      assert.is_true(res.chunked)
      assert.equal(expected(1000), res.body)
      -- the connection stays usable after the re-chunked body
      local again = assert(c:request({ path = "/bytes/16" }))
      assert.equal(expected(16), again.body)
      c:close()
    end)

    it("transforms a large body that arrives in many chunks, and sees res.status", function()
      local n = 300000
      local res = get("/bytes/" .. n)
      assert.equal(200, res.status)
      assert.is_nil(res.h["content-length"])
      assert.equal(#expected(n), #res.body)
      assert.is_true(res.body == expected(n), "body differs from the transformed pattern")
      local chunks = tonumber(helpers.wait_until(function()
        return assert(proxy:request({ path = "/counter?k=body:chunks" })).body:match("^%d+")
      end, 3))
      assert.is_true(chunks >= 2, "body hook ran " .. tostring(chunks) .. " times for 300000 bytes")
      assert.equal("200", get("/counter?k=body:status").body)
    end)

    it("transforms an upstream chunked body", function()
      local res = get("/chunked/70000")
      assert.equal(200, res.status)
      assert.is_true(res.body == expected(70000), "body differs from the transformed pattern")
    end)

    it("an empty replacement for every chunk gives an empty, well-framed body", function()
      local c = proxy:connect()
      local res = assert(c:request({ path = "/drop/?n=200000" }))
      assert.equal(200, res.status)
      assert.equal("", res.body)
      -- nothing of the dropped body (nor an early terminator) is left on the connection
      local again = assert(c:request({ path = "/bytes/16" }))
      assert.equal(200, again.status)
      assert.equal(expected(16), again.body)
      c:close()
    end)

    it("to an HTTP/1.0 client: no chunked framing, the transformed body ends with the close", function()
      local c = proxy:connect()
      assert(c:send("GET /bytes/5000 HTTP/1.0\r\nHost: x\r\n\r\n"))
      local data, why = c:read_until_close(5)
      c:close()
      assert.equal("closed", why)
      local head, body = data:match("^(.-\r\n\r\n)(.*)$")
      assert.is_truthy(head, data:sub(1, 300))
      assert.matches("^HTTP/1%.[01] 200 ", head)
      assert.is_nil(head:lower():find("transfer%-encoding"), head)
      assert.is_true(body == expected(5000), "body differs from the transformed pattern:\n" .. body:sub(1, 200))
    end)

    it("answers HEAD without running into a body; the connection stays usable", function()
      local c = proxy:connect()
      local res = assert(c:request({ method = "HEAD", path = "/bytes/1000" }))
      assert.equal(200, res.status)
      assert.equal("", res.body)
      local again = assert(c:request({ path = "/bytes/16" }))
      assert.equal(expected(16), again.body)
      c:close()
    end)

    it("leaves the body alone when the hook returns nil", function()
      local res = get("/status/200")
      assert.equal(200, res.status)
      assert.equal("status 200\n", res.body)
    end)
  end)

  describe("log", function()
    it("runs after the response, sees res.status, and its counter is readable by a later request", function()
      local before = tonumber(get("/counter?k=log:200").body) or 0
      for _ = 1, 3 do assert.equal(200, get("/logged/echo").status) end
      local n = helpers.wait_until(function()
        local v = tonumber(get("/counter?k=log:200").body)
        return v == before + 3 and v
      end, 3)
      assert.equal(before + 3, n)
      assert.equal("/logged/echo 200 " .. A.addr, get("/counter?k=log:last").body)
    end)

    it("runs for errors moongate answered itself (502 from a dead upstream)", function()
      helpers.assert_error(get("/dead/x"), 502)
      local n = helpers.wait_until(function() return get("/counter?k=log:502").body == "1" end, 3)
      assert.is_true(n)
    end)

    -- A finished request's memory serves the next one: the headers of an earlier
    -- upstream response must not pass for this request's.
    it("reads no response header when no upstream head came, even right after a request that had one", function()
      assert.equal(200, get("/logged/echo").status)
      helpers.assert_error(get("/dead/y"), 502)
      local v
      assert.is_true(helpers.wait_until(function()
        v = get("/counter?k=log:dead_header").body
        return v ~= "nil"
      end, 3))
      assert.equal("true nil true nil", v)
    end)
  end)

  describe("order", function()
    it("runs global request and response hooks first, in registration order, then the route's", function()
      local res = get("/order/echo")
      assert.equal(200, res.status)
      local doc = helpers.decode_json(res.body)
      assert.same({ "g1", "g2", "route" }, helpers.echo_headers(doc, "x-order"))
      local order = {}
      for _, kv in ipairs(res.headers) do
        if kv[1]:lower() == "x-order" then order[#order + 1] = kv[2] end
      end
      assert.same({ "g1", "g2", "route" }, order)
    end)

    it("skips later request hooks (global and route) once one answered", function()
      local before = #A:requests()
      local res = get("/order/answer")
      assert.equal(299, res.status)
      assert.equal("answered by g1", res.body)
      assert.equal(before, #A:requests())
      assert.is_nil(proxy:stderr():find("must not run", 1, true))
    end)
  end)

  describe("respond function", function()
    it("answers with the (status, body, headers) it returns", function()
      local res = get("/fn?who=me")
      assert.equal(202, res.status)
      assert.equal("fn GET me\n", res.body)
      assert.equal("text/plain", res.h["content-type"])
      assert.equal("yes", res.h["x-fn"])
      assert.equal("10", res.h["content-length"])
    end)

    it("answers through req:respond", function()
      local res = get("/fn-respond")
      assert.equal(203, res.status)
      assert.equal("via req:respond", res.body)
      assert.equal("respond", res.h["x-via"])
    end)

    it("answers through `return req:respond(...)` (its result, true, is not a second answer)", function()
      local c = proxy:connect()
      local res = assert(c:request({ path = "/fn-return-respond" }))
      assert.equal(200, res.status)
      assert.equal("x", res.body)
      assert.equal("returned req:respond", res.h["x-via"])
      assert.equal(202, assert(c:request({ path = "/fn" })).status) -- keep-alive intact
      c:close()
      assert.is_nil(proxy:stderr():find("/fn-return-respond", 1, true))
    end)

    it("sends the first answer when it calls req:respond and also returns one (warning logged)", function()
      local c = proxy:connect()
      local res = assert(c:request({ path = "/fn-mixed" }))
      assert.equal(203, res.status)
      assert.equal("first", res.body)
      assert.equal("first", res.h["x-which"])
      assert.equal(202, assert(c:request({ path = "/fn" })).status)
      c:close()
      local log = helpers.wait_until(function()
        local e = proxy:stderr()
        return e:find("returned status 200 after calling req:respond", 1, true) and e
      end, 3)
      assert.is_truthy(log, proxy:stderr())
      assert.is_truthy(log:find("%[warn%] w0 req %x+: the route's respond function returned status 200 "
        .. "after calling req:respond: the first answer was sent, the returned one ignored"), log)
    end)

    it("keeps the first answer when req:respond is called again (that call raises, logged)", function()
      local c = proxy:connect()
      local res = assert(c:request({ path = "/fn-twice" }))
      assert.equal(203, res.status)
      assert.equal("first", res.body)
      assert.equal(202, assert(c:request({ path = "/fn" })).status)
      c:close()
      local log = helpers.wait_until(function()
        local e = proxy:stderr()
        return e:find("req:respond: the request was already answered", 1, true) and e
      end, 3)
      assert.is_truthy(log, proxy:stderr())
      assert.is_truthy(log:find("proxy.lua:" .. line_of("LINE:respond-twice")
        .. ": req:respond: the request was already answered", 1, true), log)
    end)

    it("answers a status alone with an empty body", function()
      local c = proxy:connect()
      local res = assert(c:request({ path = "/fn-status-only" }))
      assert.equal(204, res.status)
      assert.equal("", res.body)
      assert.equal(202, assert(c:request({ path = "/fn" })).status) -- keep-alive intact
      c:close()
    end)

    for _, code in ipairs({ 204, 304 }) do
      it("sends no body with a " .. code .. " even when the function returned one", function()
        local c = proxy:connect()
        local res = assert(c:request({ path = "/fn-" .. code }))
        assert.equal(code, res.status)
        assert.is_false(c:readable(0.3), "bytes after the " .. code .. " head: "
          .. string.format("%q", ((c.buf ~= "" and c.buf) or tostring(c.sock:receive(40))):sub(1, 40)))
        local again = assert(c:request({ path = "/fn?who=next" }))
        assert.equal(202, again.status)
        assert.equal("fn GET next\n", again.body)
        c:close()
      end)
    end

    it("answers pipelined requests in order", function()
      local c = proxy:connect()
      assert(c:send("GET /fn?who=one HTTP/1.1\r\nHost: x\r\n\r\nGET /fn-respond HTTP/1.1\r\nHost: x\r\n\r\n"
        .. "GET /fn?who=three HTTP/1.1\r\nHost: x\r\n\r\n"))
      assert.equal("fn GET one\n", assert(c:response()).body)
      assert.equal("via req:respond", assert(c:response()).body)
      assert.equal("fn GET three\n", assert(c:response()).body)
      c:close()
    end)

    it("answers HEAD without a body but with the body's length", function()
      local c = proxy:connect()
      local res = assert(c:request({ method = "HEAD", path = "/fn?who=x" }))
      assert.equal(202, res.status)
      assert.equal("", res.body)
      assert.equal(tostring(#"fn HEAD x\n"), res.h["content-length"])
      assert.equal(202, assert(c:request({ path = "/fn" })).status)
      c:close()
    end)
  end)
end)
