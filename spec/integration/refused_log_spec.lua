-- The log hook of a request moongate refused (400, 408, 413, 414, 431, 501, 505):
-- every req and res API a log hook can call gives the answer docs/hooks.md
-- ("The log hook of a refused request") promises, never a crash or a sanitizer
-- report, and the worker goes on serving. The hook records what each call gave
-- into a shared dict; the next (normal) request reads it back through /dump.
local helpers = require "spec.helpers"

local CONF = [[
local mg = require "moongate"
mg.config {
  workers = 1, access_log = false, shared = { rec = "1m" },
  timeouts = { client_header = 0.5, client_body = 0.5 },
  limits = { uri_size = 256, headers = 20, head_size = 4096, body_size = 1000 },
}
mg.listen { "127.0.0.1:${port}" }
local up = mg.upstream "up" { servers = { "${origin}" } }
local rec = mg.shared("rec")

-- Lua source for a value (sorted keys): the spec loads it back.
local function ser(v)
  local t = type(v)
  if t == "string" then return string.format("%q", v) end
  if t ~= "table" then return tostring(v) end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = "[" .. ser(k) .. "]=" .. ser(v[k]) end
  return "{" .. table.concat(parts, ",") .. "}"
end

-- { true, value } or { false, message without its file:line }
local function try(f, ...)
  local ok, v = pcall(f, ...)
  if ok then return { true, v } end
  return { false, (tostring(v):gsub("^[^:]*:%d+: ", "")) }
end

local function field(obj, k) return function() return obj[k] end end

mg.on("log", function(req, res)
  if req.path == "/dump" then return end
  local r = {
    method = try(field(req, "method")),
    path = try(field(req, "path")),
    query = try(field(req, "query")),
    host = try(field(req, "host")),
    scheme = try(field(req, "scheme")),
    client_ip = try(field(req, "client_ip")),
    id = try(field(req, "id")),
    http_version = try(field(req, "http_version")),
    tls = try(field(req, "tls")),
    ctx = try(function() req.ctx.n = (req.ctx.n or 0) + 1 return req.ctx end),
    tostring = try(function() return tostring(req):gsub("%x+$", "ID") end),
    header_host = try(req.header, req, "host"),
    header_missing = try(req.header, req, "x-missing"),
    headers = try(req.headers, req),
    arg = try(req.arg, req, "a"),
    upstream_addr = try(req.upstream_addr, req),
    servers = try(req.servers, req),
    set_header = try(req.set_header, req, "x-a", "1"),
    add_header = try(req.add_header, req, "x-a", "1"),
    del_header = try(req.del_header, req, "x-a"),
    set_path = try(req.set_path, req, "/p"),
    set_query = try(req.set_query, req, "q=1"),
    set_upstream = try(req.set_upstream, req, "up"),
    respond = try(req.respond, req, 200, "late"),
    set_server = try(req.set_server, req, 1),
    res_status = try(field(res, "status")),
    res_header = try(res.header, res, "content-type"),
    res_headers = try(res.headers, res),
    res_set_header = try(res.set_header, res, "x-a", "1"),
    res_add_header = try(res.add_header, res, "x-a", "1"),
    res_del_header = try(res.del_header, res, "x-a"),
    res_set_status = try(res.set_status, res, 201),
    same_res = try(function() return req.res == res end),
  }
  rec:set("last", ser(r))
  rec:incr("n", 1, 0)
end)

mg.route { path = "/dump", respond = function(req)
  return 200, "return " .. (rec:get("last") or "nil") .. ", " .. tostring(rec:get("n")),
         { ["content-type"] = "text/plain" }
end }
mg.route { path = "/ok", respond = { status = 200, body = "ok\n" } }
mg.route { path = "/up/", upstream = up }
]]

local H = "Host: x\r\n"

-- what a refused request gets in its log hook whatever the refusal
local NOT_ALLOWED = {
  set_header = { false, "req:set_header: not allowed in this hook" },
  add_header = { false, "req:add_header: not allowed in this hook" },
  del_header = { false, "req:del_header: not allowed in this hook" },
  set_path = { false, "req:set_path: not allowed in this hook" },
  set_query = { false, "req:set_query: not allowed in this hook" },
  set_upstream = { false, "req:set_upstream: not allowed in this hook" },
  respond = { false, "req:respond: not allowed in this hook" },
  set_server = { false, "req:set_server: not allowed in this hook" },
  res_set_header = { false, "res:set_header: not allowed in this hook" },
  res_add_header = { false, "res:add_header: not allowed in this hook" },
  res_del_header = { false, "res:del_header: not allowed in this hook" },
  res_set_status = { false, "res:set_status: not allowed in this hook" },
}

-- The record of a request whose head was refused before it was complete:
-- `method` is the method when the request line got that far (else nil).
local function unparsed(status, method)
  local t = {
    method = { true, method }, path = { true }, query = { true }, host = { true },
    scheme = { true, "http" }, client_ip = { true, "127.0.0.1" }, http_version = { true },
    tls = { true }, ctx = { true, { n = 1 } }, tostring = { true, "moongate request ID" },
    header_host = { true }, header_missing = { true }, headers = { true, {} }, arg = { true },
    upstream_addr = { true }, servers = { true, {} },
    res_status = { true, status }, res_header = { true }, res_headers = { true, {} },
    same_res = { true, true },
  }
  for k, v in pairs(NOT_ALLOWED) do t[k] = v end
  return t
end

-- The record of a request refused after its head was complete (413, 501): the
-- head reads as sent; no route, no upstream.
local function parsed(status, method, path, query, headers, arg)
  local t = unparsed(status, method)
  t.path, t.query, t.host = { true, path }, { true, query }, { true, headers.host or "" }
  t.http_version = { true, 1.1 }
  t.header_host = { true, headers.host }
  t.headers = { true, headers }
  t.arg = { true, arg }
  return t
end

describe("the log hook of a refused request", function()
  local origin, proxy

  lazy_setup(function()
    origin = helpers.origin()
    proxy = helpers.proxy(CONF, { vars = { origin = origin.addr } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
    if origin then origin:stop() end
  end)

  -- The last record and the number of log hooks run so far, read by a normal
  -- request on a new connection (which proves the worker still serves).
  local function dump()
    local res = assert(proxy:request({ path = "/dump" }))
    assert.equal(200, res.status)
    local rec, n = assert(loadstring(res.body))()
    return rec, n
  end

  local function check_record(rec, want)
    local id = rec.id
    assert.equal("table", type(id))
    assert.is_true(id[1])
    assert.is_truthy(tostring(id[2]):match("^%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x$"), tostring(id[2]))
    rec.id = nil
    assert.same(want, rec)
  end

  -- Sends `raw` on a fresh connection, expects `status` and a close, then
  -- checks the hook's record.
  local function refused(raw, status, want, opts)
    opts = opts or {}
    local _, before = dump()
    local c = proxy:connect()
    if opts.first then assert(c:request(opts.first)) end
    assert(c:send(raw))
    local res = assert(c:response({ timeout = 5 }))
    assert.equal(status, res.status)
    helpers.assert_error(res, status)
    assert.equal("close", res.h.connection)
    c:close()
    local rec, n = dump()
    assert.equal((before or 0) + (opts.first and 2 or 1), n)
    check_record(rec, want)
    assert.is_nil(helpers.sanitizer_report(proxy:stderr()))
  end

  it("records every API on a normal request (the recorder itself works)", function()
    local res = assert(proxy:request({ path = "/ok?a=b%20c", headers = { { "Host", "x" }, { "X-T", "1" } } }))
    assert.equal(200, res.status)
    local rec = dump()
    local want = parsed(200, "GET", "/ok", "a=b%20c", { host = "x", ["x-t"] = "1" }, "b c")
    check_record(rec, want)
  end)

  it("400 for a malformed request line (no method read): method nil, headers empty", function()
    refused("G@T /x?a=1 HTTP/1.1\r\n" .. H .. "\r\n", 400, unparsed(400, nil))
  end)

  it("400 for a header line without a colon: method read, the rest nil or empty", function()
    refused("GET /x?a=1 HTTP/1.1\r\n" .. H .. "X-No-Colon\r\n\r\n", 400, unparsed(400, "GET"))
  end)

  -- line framing (obs-fold, bare LF, CR without LF) is checked on the raw bytes
  -- before llhttp takes them; llhttp parses what comes before the faulty byte
  -- (the first fault in the stream decides, however reads cut it), so the
  -- method is known, and nothing of the head is
  it("400 for obs-fold: the method read, the head not", function()
    refused("GET /x?a=1 HTTP/1.1\r\n" .. H .. "X-Fold: a\r\n b\r\n\r\n", 400, unparsed(400, "GET"))
  end)

  it("400 for a bare LF: the method read, the head not", function()
    refused("GET /x?a=1 HTTP/1.1\n" .. H .. "\r\n", 400, unparsed(400, "GET"))
  end)

  it("400 after a keep-alive request on the same connection: nothing of the first shows", function()
    refused("GET /x?a=1 HTTP/1.1\r\n" .. H .. "X-Fold: a\r\n b\r\n\r\n", 400, unparsed(400, "GET"),
      { first = { path = "/ok?a=1", headers = { { "Host", "x" }, { "X-Secret", "s" } } } })
  end)

  it("400 for two Host headers: the head was complete and reads as sent", function()
    local want = parsed(400, "GET", "/x", "a=1", { host = { "x", "y" } }, "1")
    want.host = { true, "x" }
    refused("GET /x?a=1 HTTP/1.1\r\n" .. H .. "Host: y\r\n\r\n", 400, want)
  end)

  it("505 for an unsupported HTTP version", function()
    refused("GET /x?a=1 HTTP/1.2\r\n" .. H .. "\r\n", 505, unparsed(505, "GET"))
  end)

  it("414 for a target over limits.uri_size", function()
    refused("GET /" .. string.rep("u", 300) .. " HTTP/1.1\r\n" .. H .. "\r\n", 414, unparsed(414, "GET"))
  end)

  it("431 for more headers than limits.headers", function()
    local hs = {}
    for i = 1, 30 do hs[i] = "X-H" .. i .. ": v\r\n" end
    refused("GET /x HTTP/1.1\r\n" .. H .. table.concat(hs) .. "\r\n", 431, unparsed(431, "GET"))
  end)

  it("431 for a head over limits.head_size", function()
    refused("GET /x HTTP/1.1\r\n" .. H .. "X-Big: " .. string.rep("b", 5000) .. "\r\n\r\n", 431,
      unparsed(431, "GET"))
  end)

  it("408 for a head not complete within timeouts.client_header", function()
    refused("GET /x?a=1 HTTP/1.1\r\n" .. H .. "X-Half: v", 408, unparsed(408, "GET"))
  end)

  it("413 for a Content-Length over limits.body_size: the head reads as sent", function()
    refused("POST /x?a=1 HTTP/1.1\r\n" .. H .. "Content-Length: 5000\r\n\r\n", 413,
      parsed(413, "POST", "/x", "a=1", { host = "x", ["content-length"] = "5000" }, "1"))
  end)

  it("501 for a Transfer-Encoding moongate cannot decode", function()
    refused("POST /x HTTP/1.1\r\n" .. H .. "Transfer-Encoding: gzip, chunked\r\n\r\n", 501,
      parsed(501, "POST", "/x", "", { host = "x", ["transfer-encoding"] = "gzip, chunked" }))
  end)

  it("501 for CONNECT", function()
    local want = unparsed(501, "CONNECT")
    want.http_version = { true, 1.1 }
    want.host = { true, "" } -- the head is complete, but a CONNECT target is not parsed
    want.header_host = { true, "x" }
    want.headers = { true, { host = "x" } }
    refused("CONNECT x:443 HTTP/1.1\r\n" .. H .. "\r\n", 501, want)
  end)

  it("408 for a body not coming within timeouts.client_body: route, upstream and head known", function()
    local want = parsed(408, "POST", "/up/x", "a=1", { host = "x", ["content-length"] = "10" }, "1")
    want.upstream_addr = { true, origin.addr }
    -- (the body never came: nothing went upstream, so the server saw no attempt)
    want.servers = { true, { { addr = origin.addr, weight = 1, active = 0, response_time = 0, fails = 0,
                               healthy = true, ejected = false } } }
    refused("POST /up/x?a=1 HTTP/1.1\r\n" .. H .. "Content-Length: 10\r\n\r\nabc", 408, want)
  end)

  it("runs no log hook for a request the client cut mid-head (nothing was answered)", function()
    local _, before = dump()
    local c = proxy:connect()
    assert(c:send("GET /x?a=1 HTTP/1.1\r\n" .. H .. "X-Half: v"))
    helpers.sleep(0.1)
    c:close()
    helpers.sleep(0.2)
    local _, n = dump()
    assert.equal(before, n)
    assert.is_nil(helpers.sanitizer_report(proxy:stderr()))
  end)
end)
