-- A bounded random mutation run (issue 9, "Adversarial specs"): requests made
-- by mutating valid ones (flipped bits; CR, LF, NUL, space inserted; cuts;
-- duplicated headers; huge Content-Lengths and chunk sizes; long values;
-- random methods and versions), some pipelined, each batch on its own
-- connection, against MOONGATE_BIN with a proxied route (the test origin) and
-- a respond route. Then a few hundred valid requests answered by a hand-driven
-- origin (spec/support/raw.lua) with mutated responses.
--
-- Every answer must be a well-formed HTTP/1.1 response (status line, headers,
-- framing consistent) or a close; at the end moongate is alive, has no
-- sanitizer report in its stderr, and answers a normal request. The seed is
-- fixed (MG_MUTATION_SEED overrides it), the run bounded in count and time.
local helpers = require "spec.helpers"
local raw = require "spec.support.raw"
local socket = require "socket"
local bit = require "bit"

local SEED = tonumber(os.getenv("MG_MUTATION_SEED") or "") or 20261206
local MAX_REQUESTS = 10000     -- client-side mutations (connections)
local MAX_ORIGIN = 2000        -- mutated origin responses
local CLIENT_SECONDS = 26      -- wall-time bounds of the two phases
local ORIGIN_SECONDS = 8
local INFLIGHT = 12            -- connections open at once
local CONN_DEADLINE = 5        -- seconds a connection may take to end

local CONF = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = false, log_level = "error",
  timeouts = { client_header = 2, client_body = 2, upstream_read = 1 } }
mg.listen { "127.0.0.1:${port}" }
mg.route { path = "/r", respond = { status = 200, body = "made here\n",
  headers = { ["content-type"] = "text/plain" } } }
mg.route { path = "/m/", upstream = mg.upstream "raw" { servers = { "${raw}" }, keepalive = 0 } }
mg.route { upstream = mg.upstream "o" { servers = { "${origin}" } } }
]]

---------------------------------------------------------------------------
-- valid requests, and how to mutate them
---------------------------------------------------------------------------

local BASE = {
  "GET /echo HTTP/1.1\r\nHost: a.test\r\nUser-Agent: m/1\r\nAccept: */*\r\n\r\n",
  "GET /r HTTP/1.1\r\nHost: a.test\r\n\r\n",
  "HEAD /echo HTTP/1.1\r\nHost: a.test\r\n\r\n",
  "HEAD /r HTTP/1.1\r\nHost: a.test\r\n\r\n",
  "POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world",
  "POST /echo HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
  "PUT /echo?a=1&b=%20 HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
  "GET /bytes/300 HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive\r\n\r\n",
  "GET /chunked/500 HTTP/1.1\r\nHost: a.test\r\n\r\n",
  "GET /echo HTTP/1.0\r\nHost: a.test\r\nConnection: keep-alive\r\n\r\n",
  "GET http://a.test/echo HTTP/1.1\r\nHost: a.test\r\n\r\n",
  "OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n",
  "DELETE /echo HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\nCookie: a=b; c=d\r\n\r\n",
  "GET /status/204 HTTP/1.1\r\nHost: a.test\r\n\r\n",
  "GET /status/103 HTTP/1.1\r\nHost: a.test\r\n\r\n",
}

local INSERTS = { "\r", "\n", "\0", " ", "\t", "\r\n", ":", "\r\n\r\n", "\127", "\255", ";", "," }
local HUGE_CL = { "18446744073709551616", "18446744073709551615", "99999999999999999999999", "-1",
                  "4294967296", "0x10", "1e3", " 5", "5, 5", "5 5", "+5", "", "00000000000000000000005" }
local HUGE_CHUNK = { "fffffffffffffffff1", "ffffffffffffffff", "8000000000000000", "7fffffffffffffff",
                     "0x5", "-5", "5 ", " 5", "100000000", "5;" .. ("e"):rep(5000) }
local METHODS = { "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "CONNECT", "PRI",
                  "get", "G\0T", "GE T", "", ("A"):rep(300), "M-SEARCH", "BREW" }
local VERSIONS = { "HTTP/1.0", "HTTP/1.1", "HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "HTTP/1.10", "HTTP/11",
                   "http/1.1", "", "HTTP/1.1 ", "HTTP/9.9", "HTTP/1" }

local R = math.random

local function pick(t) return t[R(#t)] end

local function flip_bits(s)
  if #s == 0 then return s end
  for _ = 1, R(3) do
    local i = R(#s)
    local b = bit.bxor(s:byte(i), bit.lshift(1, R(0, 7)))
    s = s:sub(1, i - 1) .. string.char(b) .. s:sub(i + 1)
  end
  return s
end

local function insert(s)
  local i = R(0, #s)
  return s:sub(1, i) .. pick(INSERTS) .. s:sub(i + 1)
end

local function truncate(s)
  return s:sub(1, R(0, math.max(0, #s - 1)))
end

local function delete_range(s)
  if #s < 2 then return s end
  local i = R(#s)
  local j = math.min(#s, i + R(0, 20))
  return s:sub(1, i - 1) .. s:sub(j + 1)
end

-- header lines of the head (between the first CRLF and the blank line)
local function head_lines(s)
  local hend = s:find("\r\n\r\n", 1, true)
  if not hend then return nil end
  local first = s:find("\r\n", 1, true)
  return first, hend
end

local function dup_header(s)
  local first, hend = head_lines(s)
  if not first or first >= hend then return insert(s) end
  local lines = {}
  for line in s:sub(first + 2, hend + 1):gmatch("([^\r\n]*)\r\n") do lines[#lines + 1] = line end
  if #lines == 0 then return insert(s) end
  local line = pick(lines)
  local extra = line
  if R(2) == 1 then extra = line:gsub(":%s*(.*)$", function(v) return ": " .. v .. "x" end) end
  return s:sub(1, hend + 1) .. extra .. "\r\n" .. s:sub(hend + 2)
end

local function huge_length(s)
  if s:find("Content%-Length: %d+") then
    return (s:gsub("Content%-Length: %d+", "Content-Length: " .. pick(HUGE_CL), 1))
  end
  local first = s:find("\r\n", 1, true)
  if not first then return s end
  return s:sub(1, first + 1) .. "Content-Length: " .. pick(HUGE_CL) .. "\r\n" .. s:sub(first + 2)
end

local function huge_chunk(s)
  local hend = s:find("\r\n\r\n", 1, true)
  if s:find("Transfer%-Encoding: chunked") and hend then
    local body = s:sub(hend + 4)
    body = body:gsub("^%x+", pick(HUGE_CHUNK), 1)
    return s:sub(1, hend + 3) .. body
  end
  local first = s:find("\r\n", 1, true)
  if not first or not hend then return s end
  return s:sub(1, first + 1) .. "Transfer-Encoding: chunked\r\n" .. s:sub(first + 2, hend + 3)
    .. pick(HUGE_CHUNK) .. "\r\nabcde\r\n0\r\n\r\n"
end

local function long_value(s)
  local first = s:find("\r\n", 1, true)
  if not first then return s end
  local n = pick({ 100, 4000, 9000, 33000, 70000 })
  return s:sub(1, first + 1) .. "X-Long: " .. ("v"):rep(n) .. "\r\n" .. s:sub(first + 2)
end

local function many_headers(s)
  local first = s:find("\r\n", 1, true)
  if not first then return s end
  local t = {}
  for i = 1, pick({ 50, 99, 101, 500 }) do t[i] = "X-M" .. i .. ": " .. i .. "\r\n" end
  return s:sub(1, first + 1) .. table.concat(t) .. s:sub(first + 2)
end

local function random_method(s)
  return (s:gsub("^%S*", pick(METHODS), 1))
end

local function random_version(s)
  local first = s:find("\r\n", 1, true)
  if not first then return s end
  local line = s:sub(1, first - 1):gsub("HTTP/%d%.%d$", pick(VERSIONS))
  return line .. s:sub(first)
end

local function bare_lf(s)
  local n = R(3)
  if n == 1 then return (s:gsub("\r\n", "\n")) end
  if n == 2 then return (s:gsub("\r\n", "\n", 1)) end
  return (s:gsub("\r\n", "\r", 1))
end

local function random_bytes(s)
  local i = R(0, #s)
  local t = {}
  for k = 1, R(1, 16) do t[k] = string.char(R(0, 255)) end
  return s:sub(1, i) .. table.concat(t) .. s:sub(i + 1)
end

local MUTATORS = {
  { "flip", flip_bits }, { "insert", insert }, { "truncate", truncate }, { "delete", delete_range },
  { "dup-header", dup_header }, { "huge-length", huge_length }, { "huge-chunk", huge_chunk },
  { "long-value", long_value }, { "many-headers", many_headers }, { "method", random_method },
  { "version", random_version }, { "bare-lf", bare_lf }, { "random-bytes", random_bytes },
}

local function mutate(s)
  local names = {}
  for _ = 1, (R(4) == 1 and R(2, 3) or 1) do
    local m = pick(MUTATORS)
    names[#names + 1] = m[1]
    s = m[2](s)
  end
  return s, table.concat(names, "+")
end

-- Inputs earlier runs found (sent first, every run): a request line whose
-- target is empty once the CR is seen (UBSan: memcpy from a NULL head buffer
-- in mg_head_append), a status code the origin writes as "4".
local CORPUS = {
  "CONNECT \r/echo HTTP/1.1\r\nHost: a\r\n\r\n",
  "GET \r/echo HTTP/1.1\r\nHost: a\r\n\r\n",
  "GET /status/004 HTTP/1.1\r\nHost: a.test\r\n\r\n",
  "GET /status/13 HTTP/1.1\r\nHost: a.test\r\n\r\n",
}
local corpus_next = 1

-- One connection's bytes: the corpus first, then usually one mutated
-- request; sometimes a few pipelined, valid ones mixed with mutated ones.
local function make_batch()
  if corpus_next <= #CORPUS then
    corpus_next = corpus_next + 1
    return CORPUS[corpus_next - 1], "corpus"
  end
  local n = R(5) == 1 and R(2, 4) or 1
  local parts, names = {}, {}
  for i = 1, n do
    local base = pick(BASE)
    if n > 1 and R(2) == 1 then
      parts[i], names[i] = base, "valid"
    else
      parts[i], names[i] = mutate(base)
    end
  end
  return table.concat(parts), table.concat(names, " | ")
end

---------------------------------------------------------------------------
-- checking what came back
---------------------------------------------------------------------------

-- Parse everything a connection received: a sequence of well-formed
-- responses. Returns the list of statuses, or nil and what is wrong.
-- `maybe_head`: the bytes sent held a HEAD request, so a response with a
-- Content-Length may come without its body (when what follows is the next
-- response or the end). `allow_cut`: the last response may end early at the
-- close (the origin cut it).
local function check_stream(bytes, maybe_head, allow_cut)
  local s = raw.bytes_stream(bytes)
  local statuses = {}
  local opts = { timeout = 0 }
  if maybe_head then
    opts.head = function(res, st)
      return res.h["content-length"] ~= nil and (st.buf == "" or st.buf:sub(1, 7) == "HTTP/1.")
        and res.h["content-length"] ~= "0"
    end
  end
  while s.buf ~= "" do
    local before = #s.buf
    local res, err, partial = raw.read_response(s, opts)
    if not res then
      return nil, "bytes that are not a response head (" .. tostring(err) .. "): " .. raw.show(partial, 300)
    end
    if not res.status or res.status < 100 or res.status > 599 then
      return nil, "bad status line: " .. raw.show(res.status_line)
    end
    if res.problem then return nil, res.problem .. " in " .. raw.show(res.raw_head, 600) end
    if not res.complete and not (allow_cut and s.buf == "") then
      return nil, "incomplete " .. res.framing .. " body (" .. tostring(res.err) .. "): "
        .. raw.show(res.raw, 600)
    end
    statuses[#statuses + 1] = res.status
    if #s.buf >= before then return nil, "the reader made no progress" end
  end
  return statuses
end

---------------------------------------------------------------------------

describe("mutation run", function()
  local origin, rawo, proxy

  lazy_setup(function()
    rawo = raw.origin()
    origin = helpers.origin({ name = "mut" })
    proxy = helpers.proxy(CONF, { vars = { origin = origin.addr, raw = rawo.addr } })
  end)

  lazy_teardown(function()
    if rawo then rawo:close() end
    helpers.teardown(proxy)
  end)

  -- moongate runs and its stderr holds no sanitizer report.
  local function assert_alive() proxy:assert_alive() end

  local function assert_healthy()
    assert_alive()
    local res = assert(proxy:request({ path = "/echo" }))
    assert.equal(200, res.status)
    res = assert(proxy:request({ path = "/r" }))
    assert.equal(200, res.status)
    assert.equal("made here\n", res.body)
  end

  local function histogram(h)
    local keys = {}
    for k in pairs(h) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    local t = {}
    for _, k in ipairs(keys) do t[#t + 1] = tostring(k) .. "=" .. h[k] end
    return table.concat(t, " ")
  end

  it("mutated requests: every answer well-formed or a close; moongate alive, no sanitizer report", function()
    math.randomseed(SEED)
    local hist, failures = {}, {}
    local sent, done, timeouts = 0, 0, 0
    local t0 = socket.gettime()
    local slots = {}
    local last = {} -- the last batches sent, for a crash report

    local function finish(slot, why)
      done = done + 1
      local data = table.concat(slot.parts)
      if why == "timeout" then
        timeouts = timeouts + 1
        failures[#failures + 1] = string.format("no close within %ds (%s): sent %s, got %s",
          CONN_DEADLINE, slot.names, raw.show(slot.bytes, 300), raw.show(data, 300))
        return
      end
      if data == "" then
        hist.close = (hist.close or 0) + 1
        return
      end
      local statuses, err = check_stream(data, slot.bytes:find("HEAD", 1, true) ~= nil, false)
      if not statuses and why == "reset" then
        -- a reset may drop the end of what was sent; what did arrive must
        -- still start like a response
        hist.reset = (hist.reset or 0) + 1
        if data:sub(1, 9):match("^HTTP/1%.[01] ") then return end
      end
      if not statuses then
        failures[#failures + 1] = string.format("%s (%s): sent %s", err, slot.names, raw.show(slot.bytes, 300))
        return
      end
      for _, st in ipairs(statuses) do hist[st] = (hist[st] or 0) + 1 end
    end

    local function open_one()
      local bytes, names = make_batch()
      local sock = socket.tcp()
      sock:settimeout(2)
      local ok, cerr = sock:connect("127.0.0.1", proxy.port)
      if not ok then
        helpers.sleep(0.2)
        local alive, why = pcall(assert_alive)
        assert(false, "connect to moongate failed after " .. sent .. " connections: " .. tostring(cerr)
          .. (alive and "" or ("\n" .. tostring(why))) .. "\nthe last batches sent:\n" .. table.concat(last, "\n"))
      end
      sock:setoption("tcp-nodelay", true)
      -- send all (moongate may close early: a failed send is fine), then
      -- half-close: moongate answers what it got and closes
      local i = 1
      while i <= #bytes do
        local n, err, partial = sock:send(bytes, i)
        if n then i = n + 1 else
          if err ~= "timeout" then break end
          i = (partial or i - 1) + 1
        end
      end
      sock:shutdown("send")
      sock:settimeout(0)
      sent = sent + 1
      last[#last + 1] = raw.show(bytes, 300)
      if #last > 2 * INFLIGHT then table.remove(last, 1) end
      slots[#slots + 1] = { sock = sock, bytes = bytes, names = names, parts = {},
                            deadline = socket.gettime() + CONN_DEADLINE }
    end

    while true do
      local elapsed = socket.gettime() - t0
      while #slots < INFLIGHT and sent < MAX_REQUESTS and elapsed < CLIENT_SECONDS do
        open_one()
      end
      if #slots == 0 then break end
      local socks = {}
      for k, sl in ipairs(slots) do socks[k] = sl.sock end
      local ready = socket.select(socks, nil, 0.2) or {}
      local now = socket.gettime()
      local keep = {}
      for _, sl in ipairs(slots) do
        local ended
        if ready[sl.sock] then
          local data, err, partial = sl.sock:receive(65536)
          local got = data or partial
          if got and #got > 0 then sl.parts[#sl.parts + 1] = got end
          if err == "closed" then ended = "closed"
          elseif err and err ~= "timeout" then ended = "reset" end
        end
        if not ended and now > sl.deadline then ended = "timeout" end
        if ended then
          sl.sock:close()
          finish(sl, ended)
        else
          keep[#keep + 1] = sl
        end
      end
      slots = keep
    end

    local took = socket.gettime() - t0
    local alive, why = pcall(assert_alive)
    if not alive then assert(false, tostring(why) .. "\nthe last batches sent:\n" .. table.concat(last, "\n")) end
    print(string.format("\nmutation run (seed %d, %s): %d connections in %.1f s; answers: %s",
      SEED, helpers.bin, sent, took, histogram(hist)))
    assert(#failures == 0, #failures .. " bad answers of " .. sent .. ", the first ones:\n"
      .. table.concat(failures, "\n", 1, math.min(#failures, 8)))
    assert.equal(sent, done)
    assert.is_true(sent >= 500, "only " .. sent .. " connections in the time bound")
    assert_healthy()
  end)

  -- valid responses an origin might send, to mutate
  local RESPONSES = {
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nX-A: 1\r\nX-B: 2\r\n\r\n",
    "HTTP/1.1 204 No Content\r\nETag: \"x\"\r\n\r\n",
    "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nnew",
    "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the close",
    "HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nold!",
  }

  -- origin answers earlier runs found: a 1xx with a chunked body, a 103
  -- with a body that looks like a response, a status line "HTTP/1.1 4 x"
  local ORIGIN_CORPUS = {
    "HTTP/1.1 100 Continue\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n",
    "HTTP/1.1 103 Early Hints\r\nContent-Length: 38\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "HTTP/1.1 4 Whatever\r\nContent-Length: 9\r\n\r\nstatus 4\n",
    "HTTP/1.1 20  OK\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
  }

  it("mutated origin responses: every answer well-formed (or cut by a close); moongate alive", function()
    math.randomseed(SEED + 1)
    local hist, failures = {}, {}
    local n = 0
    local t0 = socket.gettime()
    while n < MAX_ORIGIN and socket.gettime() - t0 < ORIGIN_SECONDS do
      n = n + 1
      local answer, names
      if n <= #ORIGIN_CORPUS then
        answer, names = ORIGIN_CORPUS[n], "corpus"
      else
        answer, names = mutate(pick(RESPONSES))
      end
      local ok, c = pcall(proxy.connect, proxy)
      if not ok then
        helpers.sleep(0.2)
        assert_alive()
        assert(false, "connect to moongate failed after " .. (n - 1) .. " exchanges: " .. tostring(c))
      end
      local request = "GET /m/" .. n .. " HTTP/1.1\r\nHost: m\r\n\r\n"
      assert(c:send(request))
      c.sock:shutdown("send")
      local o = rawo:accept(3)
      if o then
        o:read_request(2)
        o:send(answer, 2)
        o:close()
      end
      local data, why = c:read_until_close(4)
      c:close()
      if why ~= "closed" then
        failures[#failures + 1] = string.format("no close within 4s (%s): origin sent %s, client got %s",
          names, raw.show(answer, 300), raw.show(data, 300))
      elseif data == "" then
        hist.close = (hist.close or 0) + 1
      else
        local statuses, err = check_stream(data, false, true)
        if statuses then
          for _, st in ipairs(statuses) do hist[st] = (hist[st] or 0) + 1 end
        else
          failures[#failures + 1] = string.format("%s (%s): origin sent %s", err, names, raw.show(answer, 300))
        end
      end
    end
    assert_alive()
    print(string.format("\nmutated origin responses (seed %d): %d in %.1f s; answers: %s",
      SEED + 1, n, socket.gettime() - t0, histogram(hist)))
    assert(#failures == 0, #failures .. " bad answers of " .. n .. ", the first ones:\n"
      .. table.concat(failures, "\n", 1, math.min(#failures, 8)))
    assert_healthy()
  end)
end)
