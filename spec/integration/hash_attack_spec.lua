-- Hostile input against balance = "hash" and sticky sessions, over loopback:
-- odd and huge Cookie headers, repeated keys, odd query encodings, hash_key
-- functions that fail or wait, retries, moongate's own errors, other
-- Set-Cookie headers, HEAD / 304 / 101, IPv6 clients, 1 and 10,000 servers.
local helpers = require "spec.helpers"
local socket = require "socket"

local function conf(body, workers)
  return [[
local mg = require "moongate"
mg.config { workers = ]] .. (workers or 1) .. [[, access_log = false }
mg.listen { "127.0.0.1:${port}" }
]] .. body
end

local function origins(names)
  local os_, vars = {}, {}
  for _, n in ipairs(names) do
    os_[n] = helpers.origin({ name = n })
    vars[n] = os_[n].addr
  end
  return os_, vars
end

local function stop_all(o)
  for _, x in pairs(o) do x:stop() end
end

local function name_of(c, req)
  local res = assert(c:request(req))
  assert.equal(200, res.status, res.raw_head)
  return helpers.echo(res).name
end

-- every Set-Cookie line of a response
local function set_cookies(res)
  local t = {}
  for _, h in ipairs(res.headers) do
    if h[1]:lower() == "set-cookie" then t[#t + 1] = h[2] end
  end
  return t
end

local function sticky_tok(res, name)
  for _, v in ipairs(set_cookies(res)) do
    local tok = v:match("^" .. (name or "mg_sticky") .. "=(%x+);")
    if tok then return tok end
  end
end

describe("sticky cookie torture", function()
  local o, vars, proxy
  local toks = {}

  lazy_setup(function()
    o, vars = origins({ "A", "B", "C" })
    proxy = helpers.proxy(conf([[
mg.route { upstream = mg.upstream "s" { sticky = true, servers = { "${A}", "${B}", "${C}" } } }
]]), { vars = vars })
    local c = helpers.connect(proxy.port, 5)
    for _ = 1, 3 do
      local res = assert(c:request({ path = "/" }))
      toks[helpers.echo(res).name] = sticky_tok(res)
    end
    c:close()
    assert.truthy(toks.A and toks.B and toks.C)
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
    stop_all(o)
  end)

  local function get(headers)
    local c = helpers.connect(proxy.port, 5)
    local res = assert(c:request({ path = "/", headers = headers }))
    c:close()
    return res
  end

  it("finds the token past empty pieces, nameless and valueless cookies", function()
    for _, cookie in ipairs({
      ";;; =; mg_sticky; =x; \"mg_sticky\"=0000000000000000; mg_sticky=" .. toks.B,
      "mg_sticky =  " .. toks.B .. " ; a=1",
      "a=\"b;c\"; mg_sticky=" .. toks.B,
    }) do
      local res = get({ Cookie = cookie })
      assert.equal("B", helpers.echo(res).name, cookie)
      assert.same({}, set_cookies(res), cookie)
    end
  end)

  it("takes the first of repeated tokens, in one Cookie header or several", function()
    local res = get({ Cookie = "mg_sticky=" .. toks.C .. "; mg_sticky=" .. toks.A })
    assert.equal("C", helpers.echo(res).name)
    assert.same({}, set_cookies(res))
    local c = helpers.connect(proxy.port, 5)
    assert(c:send("GET / HTTP/1.1\r\nHost: x\r\nCookie: a=1\r\nCookie: mg_sticky=" .. toks.A
      .. "\r\nCookie: mg_sticky=" .. toks.C .. "\r\n\r\n"))
    res = assert(c:response())
    c:close()
    assert.equal("A", helpers.echo(res).name)
  end)

  it("treats a token that is not 16 hex digits as none: a fresh pick and cookie", function()
    for _, bad in ipairs({ "zzzzzzzzzzzzzzzz", "\"" .. toks.A .. "\"", toks.A:sub(1, 15), toks.A .. "0",
                           " 0x" .. toks.A:sub(3), string.rep("f", 16) }) do
      local res = get({ Cookie = "mg_sticky=" .. bad })
      local name = helpers.echo(res).name
      assert.equal(toks[name], sticky_tok(res), bad)
      assert.equal(1, #set_cookies(res))
    end
    -- uppercase hex is the same number: the same server, nothing to reset
    local res = get({ Cookie = "mg_sticky=" .. toks.A:upper() })
    assert.equal("A", helpers.echo(res).name)
  end)

  it("survives 99 Cookie headers and one of 30 KB with the token last", function()
    local c = helpers.connect(proxy.port, 5)
    local lines = {}
    for i = 1, 98 do lines[#lines + 1] = "Cookie: c" .. i .. "=" .. string.rep("v", 50) .. "\r\n" end
    lines[#lines + 1] = "Cookie: mg_sticky=" .. toks.C .. "\r\n"
    assert(c:send("GET / HTTP/1.1\r\nHost: x\r\n" .. table.concat(lines) .. "\r\n"))
    local res = assert(c:response())
    assert.equal(200, res.status)
    assert.equal("C", helpers.echo(res).name)
    local pieces = {}
    for i = 1, 3000 do pieces[i] = "k" .. i .. "=v" end
    assert(c:send("GET / HTTP/1.1\r\nHost: x\r\nCookie: " .. table.concat(pieces, "; ") .. "; mg_sticky="
      .. toks.B .. "\r\n\r\n"))
    res = assert(c:response())
    c:close()
    assert.truthy(res.status == 200 or res.status == 431, res.status_line)
    if res.status == 200 then assert.equal("B", helpers.echo(res).name) end
    proxy:assert_alive()
  end)
end)

describe("hash keys from hostile requests", function()
  local o, vars, proxy

  lazy_setup(function()
    o, vars = origins({ "A", "B", "C", "D", "E" })
    proxy = helpers.proxy(conf([[
local servers = { "${A}", "${B}", "${C}", "${D}", "${E}" }
mg.route { path = "/h", upstream = mg.upstream "h" { balance = "hash", hash_key = "header:X-User", hash_bound = false, servers = servers } }
mg.route { path = "/c", upstream = mg.upstream "c" { balance = "hash", hash_key = "cookie:sid", hash_bound = false, servers = servers } }
mg.route { path = "/a", upstream = mg.upstream "a" { balance = "hash", hash_key = "arg:uid", hash_bound = false, servers = servers } }
mg.route { path = "/i", upstream = mg.upstream "i" { balance = "hash", hash_bound = false, servers = servers } }
]]), { vars = vars })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
    stop_all(o)
  end)

  -- the server of a key, by a header (the reference every other form must match)
  local function by_header(c, v)
    return name_of(c, { path = "/h", headers = { ["X-User"] = v } })
  end

  it("hashes a repeated header by its first value, and a 7 KB one whole", function()
    local c = helpers.connect(proxy.port, 5)
    for k = 1, 20 do
      local want = by_header(c, "u" .. k)
      assert(c:send("GET /h HTTP/1.1\r\nHost: x\r\nX-User: u" .. k .. "\r\nx-user: other" .. k .. "\r\n\r\n"))
      assert.equal(want, helpers.echo(assert(c:response())).name)
    end
    local big = string.rep("z", 7000)
    local first = by_header(c, big)
    for _ = 1, 3 do assert.equal(first, by_header(c, big)) end
    c:close()
  end)

  it("reads a cookie key the way the sticky lookup does, past odd syntax", function()
    local c = helpers.connect(proxy.port, 5)
    for k = 1, 15 do
      local want = name_of(c, { path = "/c", headers = { Cookie = "sid=s" .. k } })
      for _, cookie in ipairs({ ";;sid=s" .. k .. ";;", "x; =; sid = s" .. k, "sid=s" .. k .. "; sid=zz" }) do
        assert.equal(want, name_of(c, { path = "/c", headers = { Cookie = cookie } }), cookie)
      end
    end
    c:close()
  end)

  it("takes a query argument raw: its first occurrence, case-sensitive, not decoded", function()
    local c = helpers.connect(proxy.port, 5)
    local diff = 0
    for k = 1, 20 do
      local want = by_header(c, "u" .. k)
      assert.equal(want, name_of(c, { path = "/a?uid=u" .. k }))
      assert.equal(want, name_of(c, { path = "/a?&&x=1&uid=u" .. k .. "&uid=zz" }))
      -- %-escapes are bytes of the key as sent: "%75" is not "u"
      local enc = name_of(c, { path = "/a?uid=%75" .. k })
      assert.equal(by_header(c, "%75" .. k), enc)
      if enc ~= want then diff = diff + 1 end
    end
    assert.truthy(diff > 0)
    c:close()
  end)

  it("falls back to the client's address for an empty or valueless argument", function()
    local c = helpers.connect(proxy.port, 5, nil, "127.0.3.7")
    local ip = name_of(c, { path = "/i" })
    for _, q in ipairs({ "/a", "/a?", "/a?uid", "/a?uid=", "/a?UID=x", "/a?uid&uid=y" }) do
      assert.equal(ip, name_of(c, { path = q }), q)
    end
    c:close()
  end)
end)

describe("hash_key functions", function()
  local o, vars, proxy

  lazy_setup(function()
    o, vars = origins({ "A", "B", "C" })
    vars.DEAD1 = "127.0.0.1:" .. helpers.free_port()
    vars.DEAD2 = "127.0.0.1:" .. helpers.free_port()
    proxy = helpers.proxy(conf([[
local servers = { "${A}", "${B}", "${C}" }
local calls = 0
local function up(name, fn, list)
  return mg.upstream(name) { balance = "hash", hash_bound = false, hash_key = fn, servers = list or servers }
end
mg.route { path = "/calls", respond = function() return 200, tostring(calls) end }
mg.route { path = "/h", upstream = mg.upstream "h" { balance = "hash", hash_key = "header:X-User", hash_bound = false, servers = servers } }
mg.route { path = "/i", upstream = mg.upstream "i" { balance = "hash", hash_bound = false, servers = servers } }
mg.route { path = "/err", upstream = up("err", function(req) error("boom in key") end) }
mg.route { path = "/tbl", upstream = up("tbl", function(req) return { 1 } end) }
mg.route { path = "/false", upstream = up("false", function(req) return false end) }
mg.route { path = "/num", upstream = up("num", function(req) return tonumber(req:header("x-n")) end) }
mg.route { path = "/big", upstream = up("big", function(req) return string.rep("k", tonumber(req:header("x-len"))) end) }
mg.route { path = "/sleep", upstream = up("sleep", function(req) mg.sleep(0.05) return req:header("x-user") end) }
mg.route { path = "/pin", upstream = up("pin", function(req) req:set_server(3) return req:header("x-user") end) }
mg.route { path = "/pinwait", upstream = up("pinwait", function(req) mg.sleep(0.02) req:set_server(3) return req:header("x-user") end) }
mg.route { path = "/slowkey", upstream = up("slowkey", function(req) mg.sleep(0.4) return req:header("x-user") end) }
mg.route { path = "/empty", upstream = up("empty", function(req) return "" end) }
mg.route { path = "/count", upstream = up("count", function(req) calls = calls + 1 end, { "${DEAD1}", "${DEAD2}" }) }
]]), { vars = vars })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
    stop_all(o)
  end)

  it("answers 500 with a log line when the function fails or returns a non-string", function()
    local c = helpers.connect(proxy.port, 5)
    for _, p in ipairs({ "/err", "/tbl", "/false" }) do
      local res = assert(c:request({ path = p }))
      assert.equal(500, res.status, p)
    end
    c:close()
    local err = proxy:stderr()
    assert.truthy(err:find("boom in key", 1, true), err)
    assert.truthy(err:find("hash_key function must return a string or nil", 1, true), err)
    proxy:assert_alive()
  end)

  it("hashes a number as its text, takes a 4096-byte key and refuses a 5 KB one", function()
    local c = helpers.connect(proxy.port, 5)
    for k = 1, 10 do
      assert.equal(name_of(c, { path = "/h", headers = { ["X-User"] = tostring(k) } }),
        name_of(c, { path = "/num", headers = { ["x-n"] = tostring(k) } }))
    end
    assert.equal(name_of(c, { path = "/h", headers = { ["X-User"] = string.rep("k", 4096) } }),
      name_of(c, { path = "/big", headers = { ["x-len"] = "4096" } }))
    local res = assert(c:request({ path = "/big", headers = { ["x-len"] = "5000" } }))
    assert.equal(500, res.status)
    c:close()
    assert.truthy(proxy:stderr():find("longer than 4096 bytes", 1, true))
  end)

  it("may wait (mg.sleep), and may pick the server itself with req:set_server", function()
    local c = helpers.connect(proxy.port, 5)
    for k = 1, 8 do
      local want = name_of(c, { path = "/h", headers = { ["X-User"] = "w" .. k } })
      assert.equal(want, name_of(c, { path = "/sleep", headers = { ["X-User"] = "w" .. k } }))
      assert.equal("C", name_of(c, { path = "/pin", headers = { ["X-User"] = "w" .. k } }))
      -- and after a wait too
      assert.equal("C", name_of(c, { path = "/pinwait", headers = { ["X-User"] = "w" .. k } }))
    end
    c:close()
  end)

  it("drops a request whose client leaves while the key function waits", function()
    for i = 1, 6 do
      local c = helpers.connect(proxy.port, 5)
      assert(c:send("GET /slowkey HTTP/1.1\r\nHost: x\r\nX-User: gone" .. i .. "\r\n\r\n"))
      c:close()
    end
    helpers.sleep(0.6)
    local c = helpers.connect(proxy.port, 5)
    local res = assert(c:request({ path = "/slowkey", headers = { ["X-User"] = "w1" } }))
    assert.equal(200, res.status)
    assert.equal(name_of(c, { path = "/h", headers = { ["X-User"] = "w1" } }), helpers.echo(res).name)
    c:close()
    proxy:assert_alive()
  end)

  it("falls back to the client's address for an empty key, as for an empty header", function()
    local spread = {}
    for k = 1, 12 do
      local c = helpers.connect(proxy.port, 5, nil, "127.0.4." .. k)
      local ip = name_of(c, { path = "/i" })
      assert.equal(ip, name_of(c, { path = "/empty" }), "127.0.4." .. k)
      spread[ip] = true
      c:close()
    end
    assert.truthy(next(spread, next(spread)), "12 addresses on one server")
  end)

  it("runs once per request, not again for each retry", function()
    local c = helpers.connect(proxy.port, 5)
    local res = assert(c:request({ path = "/count" }))
    assert.equal(502, res.status)
    assert.equal("1", assert(c:request({ path = "/calls" })).body)
    c:close()
  end)
end)

describe("hash and sticky retries and moongate's own errors", function()
  local o, vars, proxy

  lazy_setup(function()
    o, vars = origins({ "A" })
    vars.DEAD = "127.0.0.1:" .. helpers.free_port()
    vars.DEAD2 = "127.0.0.1:" .. helpers.free_port()
    proxy = helpers.proxy(conf([[
mg.route { path = "/h", upstream = mg.upstream "h" { balance = "hash", hash_key = "header:X-User", hash_bound = false,
  sticky = true, servers = { "${DEAD}", "${A}" } } }
mg.route { path = "/dead", upstream = mg.upstream "d" { balance = "hash", sticky = true, servers = { "${DEAD}", "${DEAD2}" } } }
]]), { vars = vars })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
    stop_all(o)
  end)

  it("fails a POST over when its hashed server refuses the connection (nothing was sent), once", function()
    local c = helpers.connect(proxy.port, 5)
    o.A:reset_stats()
    for k = 1, 30 do
      local res = assert(c:request({ method = "POST", path = "/h", headers = { ["X-User"] = "p" .. k }, body = "x" }))
      assert.equal(200, res.status, res.status_line)
      assert.equal("A", name_of(c, { path = "/h", headers = { ["X-User"] = "p" .. k } }))
    end
    c:close()
    -- A saw each POST once, plus the 30 GETs
    assert.equal(60, o.A:stats().requests)
  end)

  it("sets no cookie on a 502 moongate answers, and a cookie for the server that answered", function()
    local c = helpers.connect(proxy.port, 5)
    local res = assert(c:request({ path = "/dead" }))
    assert.equal(502, res.status)
    assert.same({}, set_cookies(res))
    for k = 1, 10 do
      res = assert(c:request({ path = "/h", headers = { ["X-User"] = "g" .. k } }))
      assert.equal(200, res.status)
      assert.equal(1, #set_cookies(res))
      -- the token names A: with it a key that hashes to the dead server goes
      -- straight to A (no new cookie)
      local tok = sticky_tok(res)
      res = assert(c:request({ path = "/h", headers = { ["X-User"] = "g" .. k, Cookie = "mg_sticky=" .. tok } }))
      assert.equal("A", helpers.echo(res).name)
      assert.same({}, set_cookies(res))
    end
    c:close()
  end)
end)

describe("sticky responses", function()
  local o, vars, proxy, dir, ws_pid

  lazy_setup(function()
    o, vars = origins({ "A", "B" })
    dir = helpers.tmpdir()
    local port_file = dir .. "/ws-origin.port"
    ws_pid = helpers.spawn({ helpers.python, helpers.spec_dir .. "/support/ws_origin.py", "--port-file", port_file },
      { stderr = dir .. "/ws-origin.stderr", label = "ws origin" })
    local port = assert(helpers.wait_until(function() return helpers.read_file(port_file) end, 10))
    vars.WS = "127.0.0.1:" .. port:match("%d+")
    proxy = helpers.proxy(conf([[
local servers = { "${A}", "${B}" }
mg.route { path = "/hook", upstream = mg.upstream "hk" { balance = "hash", hash_key = "header:X-User", sticky = true, servers = servers },
  on = { response = function(req, res)
    res:add_header("Set-Cookie", "app=1; Path=/")
    res:add_header("Set-Cookie", "app2=2")
  end } }
mg.route { path = "/force", upstream = mg.upstream "f" { balance = "hash", hash_key = "header:X-User", sticky = true, servers = servers },
  on = { balance = function(req) if req:header("x-force") then req:set_server(tonumber(req:header("x-force"))) end end } }
mg.route { path = "/ws", upstream = mg.upstream "ws" { sticky = true, servers = { "${WS}" } } }
mg.route { upstream = mg.upstream "s" { balance = "hash", hash_key = "header:X-User", sticky = true, servers = servers } }
]], 2), { vars = vars })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
    stop_all(o)
    helpers.terminate(ws_pid, 5)
  end)

  it("keeps a response hook's own Set-Cookie headers beside the sticky one", function()
    local c = helpers.connect(proxy.port, 5)
    local res = assert(c:request({ path = "/hook", headers = { ["X-User"] = "u1" } }))
    c:close()
    local sc = set_cookies(res)
    assert.equal(3, #sc)
    assert.equal("app=1; Path=/", sc[1])
    assert.equal("app2=2", sc[2])
    assert.truthy(sticky_tok(res))
  end)

  it("lets a balance hook's req:set_server win over the cookie and the hash, with a new cookie", function()
    local c = helpers.connect(proxy.port, 5)
    local toks = {}
    for i = 1, 2 do
      local res = assert(c:request({ path = "/force", headers = { ["x-force"] = tostring(i) } }))
      toks[i] = sticky_tok(res)
      assert.equal(({ "A", "B" })[i], helpers.echo(res).name)
    end
    for k = 1, 6 do
      local res = assert(c:request({ path = "/force",
        headers = { ["X-User"] = "k" .. k, ["x-force"] = "2", Cookie = "mg_sticky=" .. toks[1] } }))
      assert.equal("B", helpers.echo(res).name)
      assert.equal(toks[2], sticky_tok(res))
      res = assert(c:request({ path = "/force", headers = { ["X-User"] = "k" .. k, Cookie = "mg_sticky=" .. toks[1] } }))
      assert.equal("A", helpers.echo(res).name)
      assert.same({}, set_cookies(res))
    end
    c:close()
  end)

  it("sets the cookie on HEAD and 304 answers, without a body", function()
    local c = helpers.connect(proxy.port, 5)
    assert(c:send("HEAD / HTTP/1.1\r\nHost: x\r\nX-User: h1\r\n\r\n"))
    local res = assert(c:response({ head = true }))
    assert.equal(200, res.status)
    assert.truthy(sticky_tok(res))
    res = assert(c:request({ path = "/status/304", headers = { ["X-User"] = "h1" } }))
    assert.equal(304, res.status)
    assert.equal("", res.body)
    assert.truthy(sticky_tok(res))
    -- the connection is still in step
    assert.equal(200, assert(c:request({ path = "/", headers = { ["X-User"] = "h1" } })).status)
    c:close()
  end)

  it("sets the cookie on a WebSocket's 101", function()
    local c = helpers.connect(proxy.port, 5)
    assert(c:send("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      .. "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"))
    local res = assert(c:response())
    c:close()
    assert.equal(101, res.status, res.raw_head)
    assert.equal(1, #set_cookies(res), res.raw_head)
    assert.truthy(sticky_tok(res), res.raw_head)
  end)
end)

describe("hash by ip from IPv6 clients", function()
  local o, vars, proxy

  local function v6()
    local s = socket.tcp6()
    local ok = s and s:bind("::1", 0)
    if s then s:close() end
    return ok
  end

  lazy_setup(function()
    o, vars = origins({ "A", "B", "C" })
    vars.p6 = helpers.free_port()
    proxy = helpers.proxy(conf((v6() and 'mg.listen { "[::1]:${p6}" }\n' or "") .. [[
mg.route { upstream = mg.upstream "i" { balance = "hash", servers = { "${A}", "${B}", "${C}" } } }
]], 2), { vars = vars })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
    stop_all(o)
  end)

  it("sends ::1 to one server from every connection", function()
    if not v6() then return pending("no IPv6 loopback") end
    local first
    for _ = 1, 10 do
      local c = helpers.connect(vars.p6, 5, "::1")
      local n = name_of(c, { path = "/" })
      c:close()
      first = first or n
      assert.equal(first, n)
    end
  end)
end)

describe("hash with 1 and 10,000 servers", function()
  local o, vars

  lazy_setup(function()
    o, vars = origins({ "A" })
  end)

  lazy_teardown(function()
    stop_all(o)
  end)

  it("sends every key to the one server", function()
    local proxy = helpers.proxy(conf([[
mg.route { upstream = mg.upstream "one" { balance = "hash", hash_key = "header:X-User", sticky = true, servers = { "${A}" } } }
]]), { vars = vars })
    local c = helpers.connect(proxy.port, 5)
    for k = 1, 10 do assert.equal("A", name_of(c, { path = "/", headers = { ["X-User"] = "k" .. k } })) end
    c:close()
    proxy:stop()
  end)

  it("loads 10,000 hashed sticky servers and finds the one live among them by its cookie", function()
    -- 9,999 names on ports nothing listens on (never connected to: a balance
    -- hook pins the first request, the cookie the rest) and the live origin last
    local list = {}
    for i = 1, 9999 do list[i] = '"127.0.0.2:' .. (10000 + i) .. '"' end
    list[10000] = '"${A}"'
    local t0 = socket.gettime()
    local proxy = helpers.proxy(conf([[
mg.route { upstream = mg.upstream "big" { balance = "hash", hash_key = function(req) return req:header("x-user") end,
  sticky = true, servers = { ]] .. table.concat(list, ",") .. [[ } },
  on = { balance = function(req) if req:header("x-pin") then req:set_server(10000) end end } }
]]), { vars = vars })
    local took = socket.gettime() - t0
    local c = helpers.connect(proxy.port, 5)
    local res = assert(c:request({ path = "/", headers = { ["x-pin"] = "1" } }))
    assert.equal("A", helpers.echo(res).name)
    local tok = assert(sticky_tok(res))
    for k = 1, 20 do
      res = assert(c:request({ path = "/", headers = { ["X-User"] = "k" .. k, Cookie = "mg_sticky=" .. tok } }))
      assert.equal("A", helpers.echo(res).name)
    end
    c:close()
    proxy:stop()
    assert.truthy(took < 20, "start took " .. took .. " s")
    print(string.format("\n10,000 hashed servers: moongate started in %.2f s", took))
  end)
end)

describe("a reload while hashed requests are in flight", function()
  local o, vars, proxy

  lazy_setup(function()
    o, vars = origins({ "A", "B", "C" })
    proxy = helpers.proxy(conf([[
mg.route { path = "/slowkey", upstream = mg.upstream "w" { balance = "hash", servers = { "${A}", "${B}", "${C}" },
  hash_key = function(req) mg.sleep(0.5) return req:header("x-user") end } }
mg.route { upstream = mg.upstream "h" { balance = "hash", hash_key = function(req) return req:header("x-user") end,
  sticky = true, servers = { "${A}", "${B}", "${C}" } } }
]], 2), { vars = vars })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
    stop_all(o)
  end)

  it("finishes the old generation's requests and hashes on the new one", function()
    local cs = {}
    for i = 1, 8 do
      cs[i] = helpers.connect(proxy.port, 5)
      assert(cs[i]:send("GET /slow-head/0.8 HTTP/1.1\r\nHost: x\r\nX-User: r" .. i .. "\r\n\r\n"))
    end
    -- and two whose key function is still waiting when the reload comes
    local ws = {}
    for i = 1, 2 do
      ws[i] = helpers.connect(proxy.port, 5)
      assert(ws[i]:send("GET /slowkey HTTP/1.1\r\nHost: x\r\nX-User: w" .. i .. "\r\n\r\n"))
    end
    helpers.sleep(0.2)
    local v = { port = proxy.port, A = vars.A, C = vars.C }
    proxy:reload(helpers.expand(conf([[
mg.route { path = "/gen2", respond = { status = 200, body = "2" } }
mg.route { upstream = mg.upstream "h" { balance = "hash", servers = { "${C}", "${A}" },
  hash_key = function(req) return req:header("x-user") end } }
]], 2), v), function()
      local r = proxy:request({ path = "/gen2" })
      return r and r.status == 200
    end)
    for i = 1, 8 do
      local res = assert(cs[i]:response())
      assert.equal(200, res.status)
      assert.truthy(sticky_tok(res)) -- the old generation's upstream was sticky
      cs[i]:close()
    end
    for i = 1, 2 do
      assert.equal(200, assert(ws[i]:response()).status)
      ws[i]:close()
    end
    local c = helpers.connect(proxy.port, 5)
    for k = 1, 10 do
      local res = assert(c:request({ path = "/", headers = { ["X-User"] = "n" .. k } }))
      local n = helpers.echo(res).name
      assert.truthy(n == "A" or n == "C")
      assert.same({}, set_cookies(res))
    end
    c:close()
    proxy:assert_alive()
  end)
end)
