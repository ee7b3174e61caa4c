-- Byte-exact pieces for adversarial specs: a hand-driven origin (a listening
-- socket in the spec's own process: the spec accepts, reads the request and
-- writes exactly the bytes it wants), a strict HTTP/1.1 response reader that
-- reports every header as sent, the framing, truncation and closes, and
-- helpers to find lines in moongate's stderr.
--
-- Everything here is single-threaded: moongate runs in its own process, so
-- the spec can send a request, accept moongate's upstream connection, answer
-- on it and then read what the client got, in that order. Every wait is
-- bounded (a few seconds at most).
local socket = require "socket"
local helpers = require "spec.helpers"

local raw = {}

local DEFAULT_TIMEOUT = 3

---------------------------------------------------------------------------
-- a buffered stream over a connected luasocket (same shape as the clients of
-- spec/helpers.lua: buf, eof, fill(deadline), so the readers below take either)
---------------------------------------------------------------------------

-- Accepted connections are helpers clients (spec/helpers.lua: buffered reads,
-- take, take_until, read_until_close, closed, readable, send) with read_request.
local Stream = setmetatable({}, { __index = helpers.Client })
Stream.__index = Stream

function raw.wrap(sock)
  return helpers.wrap(sock, DEFAULT_TIMEOUT, Stream)
end

local function deadline_of(timeout)
  return socket.gettime() + (timeout or DEFAULT_TIMEOUT)
end

--- Exactly n bytes, or nil, err, and what arrived (consumed: the stream is
-- broken past it).
local function take(s, n, deadline)
  local data, err, got = s:take(n, deadline)
  if not data then s.buf = "" end
  return data, err, got
end

---------------------------------------------------------------------------
-- the hand-driven origin
---------------------------------------------------------------------------

local Origin = {}
Origin.__index = Origin

--- Listen on 127.0.0.1 (any port). Returns { port, addr = "127.0.0.1:port" }.
function raw.origin()
  local srv = assert(socket.bind("127.0.0.1", 0))
  srv:settimeout(0)
  local _, port = srv:getsockname()
  return setmetatable({ srv = srv, port = tonumber(port), addr = "127.0.0.1:" .. port, conns = {} }, Origin)
end

--- True if a connection waits to be accepted within `timeout` seconds.
function Origin:pending(timeout)
  local r = socket.select({ self.srv }, nil, timeout or 0)
  return r ~= nil and r[1] ~= nil
end

--- The next connection from moongate (a Stream), or nil, "timeout".
function Origin:accept(timeout)
  if not self:pending(timeout or DEFAULT_TIMEOUT) then return nil, "timeout" end
  local c, err = self.srv:accept()
  if not c then return nil, err end
  local s = raw.wrap(c)
  self.conns[#self.conns + 1] = s
  return s
end

--- Close every connection accepted so far (between tests).
function Origin:close_conns()
  for _, s in ipairs(self.conns) do pcall(s.close, s) end
  self.conns = {}
end

function Origin:close()
  self:close_conns()
  self.srv:close()
end

local function parse_headers(lines_text)
  local headers, h = {}, {}
  for line in lines_text:gmatch("([^\r\n]*)\r\n") do
    if line ~= "" then
      local name, value = line:match("^([^:]+):[ \t]*(.-)[ \t]*$")
      if name then
        headers[#headers + 1] = { name, value }
        local k = name:lower()
        h[k] = h[k] and (h[k] .. ", " .. value) or value
      end
    end
  end
  return headers, h
end

--- Read one request (head, and a Content-Length or chunked body) from a
-- Stream. Returns { method, target, version, headers, h, head, body } or nil,
-- err.
function raw.read_request(s, timeout)
  local deadline = deadline_of(timeout)
  local head, err = s:take_until("\r\n\r\n", deadline)
  if not head then return nil, err end
  local eol = head:find("\r\n", 1, true)
  local first, rest = head:sub(1, eol - 1), head:sub(eol + 2)
  local req = { head = head }
  req.method, req.target, req.version = first:match("^(%S+) (%S+) (%S+)$")
  req.headers, req.h = parse_headers(rest)
  req.body = ""
  local te = (req.h["transfer-encoding"] or ""):lower()
  if te:find("chunked", 1, true) then
    local parts = {}
    while true do
      local line, e = s:take_until("\r\n", deadline)
      if not line then return nil, e end
      local size = tonumber(line:match("^(%x+)"), 16)
      if not size then return nil, "bad chunk line " .. line end
      if size == 0 then
        repeat
          local t, e2 = s:take_until("\r\n", deadline)
          if not t then return nil, e2 end
        until t == "\r\n"
        break
      end
      local data, e2 = take(s, size + 2, deadline)
      if not data then return nil, e2 end
      parts[#parts + 1] = data:sub(1, -3)
    end
    req.body = table.concat(parts)
  elseif req.h["content-length"] then
    local n = tonumber(req.h["content-length"])
    local body, e = take(s, n, deadline)
    if not body then return nil, e end
    req.body = body
  end
  return req
end

Stream.read_request = raw.read_request

---------------------------------------------------------------------------
-- the strict response reader
---------------------------------------------------------------------------

local TOKEN = "^[!#$%%&'*+%-.^_`|~%w]+$"

--- Problems of a response head as the HTTP/1.1 grammar sees them (RFC 9112
-- §4, §5): nil when well formed, else a message.
local function head_problem(res)
  if not res.version then return "bad status line " .. string.format("%q", res.status_line) end
  if res.reason:find("[%z\1-\8\10-\31\127]") then return "control byte in the reason phrase" end
  for _, line in ipairs(res.lines) do
    local name, value = line:match("^([^:]*):(.*)$")
    if not name then return "header line without a colon: " .. string.format("%q", line) end
    if not name:match(TOKEN) then return "header name is not a token: " .. string.format("%q", name) end
    if value:find("[%z\1-\8\10-\31\127]") then
      return "control byte in the value of " .. name
    end
  end
  local cl = res.h["content-length"]
  if cl and not cl:match("^%d+$") then return "bad Content-Length " .. string.format("%q", cl) end
  if cl and res.h["transfer-encoding"] then return "both Content-Length and Transfer-Encoding" end
  local te = res.h["transfer-encoding"]
  if te and not te:lower():match("chunked$") then return "Transfer-Encoding not ending in chunked: " .. te end
  return nil
end

--- Read one response from `s` (a helpers client or a raw Stream), strictly.
-- opts: timeout (whole read, default 3), head (the request was HEAD: no
-- body; or a function(res, s) deciding it once the head is read), close_wait (after the message, wait up to this many seconds for a
-- close and record it in `closed`; default 0: not checked).
--
-- Returns a table, or nil, err ("closed" | "timeout"), partial bytes when no
-- complete head arrived. The table: status, reason, version, status_line,
-- raw_head, lines (header lines as sent), headers ({name, value} as sent,
-- OWS trimmed), h (lower-case name -> values joined by ", "), problem (nil or
-- what is malformed in the head), body (the decoded body so far), raw (all
-- bytes of the message), framing ("none" | "length" | "chunked" | "close"),
-- complete (the framing said the message ended), chunks (sizes), trailers
-- (raw trailer lines of a chunked body), closed (the peer closed: during the
-- body, or within close_wait after it), err (why an incomplete body ended).
function raw.read_response(s, opts)
  opts = opts or {}
  local deadline = deadline_of(opts.timeout)
  local head, err = s:take_until("\r\n\r\n", deadline)
  if not head then
    local partial = s.buf
    return nil, err, partial
  end
  local res = { raw_head = head, lines = {} }
  -- the status line ends at the first CRLF; a bare CR or LF stays in it
  local eol = head:find("\r\n", 1, true)
  local first, rest = head:sub(1, eol - 1), head:sub(eol + 2)
  res.status_line = first
  local v, st, reason = first:match("^(HTTP/1%.[01]) (%d%d%d) (.*)$")
  if not v then v, st = first:match("^(HTTP/1%.[01]) (%d%d%d)$") reason = "" end
  res.version, res.status, res.reason = v, tonumber(st), reason or ""
  -- split on CRLF only; a bare LF or CR stays inside the line and is caught
  local pos = 1
  while pos <= #rest do
    local i = rest:find("\r\n", pos, true)
    if not i or i == pos then break end
    res.lines[#res.lines + 1] = rest:sub(pos, i - 1)
    pos = i + 2
  end
  res.headers, res.h = {}, {}
  for _, line in ipairs(res.lines) do
    local name, value = line:match("^([^:]*):[ \t]*(.-)[ \t]*$")
    if name then
      res.headers[#res.headers + 1] = { name, value }
      local k = name:lower()
      res.h[k] = res.h[k] and (res.h[k] .. ", " .. value) or value
    end
  end
  res.problem = head_problem(res)
  local s_ = res.status or 0
  local raw_parts = { head }
  res.chunks, res.trailers = {}, {}
  local head_only = opts.head
  if type(head_only) == "function" then head_only = head_only(res, s) end
  if head_only or (s_ >= 100 and s_ < 200) or s_ == 204 or s_ == 304 then
    res.framing, res.body, res.complete = "none", "", true
  elseif res.h["transfer-encoding"] then
    res.framing = "chunked"
    local parts = {}
    while true do
      local line, e = s:take_until("\r\n", deadline)
      if not line then
        local left = s.buf
        s.buf = ""
        raw_parts[#raw_parts + 1] = left
        res.err, res.closed = e, e == "closed"
        break
      end
      raw_parts[#raw_parts + 1] = line
      local hex = line:match("^(%x+)[ \t]*;?[^\r\n]*\r\n$")
      local size = hex and #hex <= 15 and tonumber(hex, 16)
      if not size then
        res.err = "bad chunk size line " .. string.format("%q", line)
        res.problem = res.problem or res.err
        break
      end
      if size == 0 then
        while true do
          local t, e2 = s:take_until("\r\n", deadline)
          if not t then res.err, res.closed = e2, e2 == "closed" break end
          raw_parts[#raw_parts + 1] = t
          if t == "\r\n" then res.complete = true break end
          res.trailers[#res.trailers + 1] = t:sub(1, -3)
        end
        break
      end
      res.chunks[#res.chunks + 1] = size
      local data, e2, got = take(s, size + 2, deadline)
      if not data then
        raw_parts[#raw_parts + 1] = got
        parts[#parts + 1] = got:sub(1, size)
        res.err, res.closed = e2, e2 == "closed"
        break
      end
      raw_parts[#raw_parts + 1] = data
      if data:sub(-2) ~= "\r\n" then
        res.err = "chunk data not followed by CRLF"
        res.problem = res.problem or res.err
        parts[#parts + 1] = data:sub(1, size)
        break
      end
      parts[#parts + 1] = data:sub(1, -3)
    end
    res.body = table.concat(parts)
  elseif res.h["content-length"] and res.h["content-length"]:match("^%d+$") then
    res.framing = "length"
    local n = tonumber(res.h["content-length"])
    local body, e, got = take(s, n, deadline)
    if body then
      res.body, res.complete = body, true
    else
      res.body, res.err, res.closed = got, e, e == "closed"
    end
    raw_parts[#raw_parts + 1] = res.body
  else
    res.framing = "close"
    local body, why = s:read_until_close(math.max(0, deadline - socket.gettime()))
    res.body = body
    res.closed = why == "closed"
    res.complete = res.closed
    if not res.closed then res.err = why end
    raw_parts[#raw_parts + 1] = body
  end
  res.raw = table.concat(raw_parts)
  if not res.closed and (opts.close_wait or 0) > 0 then
    local closed, extra = s:closed(opts.close_wait)
    res.closed = closed
    res.extra = extra ~= "" and extra or nil
  end
  return res
end

--- Responses until a final one: returns it and the list of interim (1xx)
-- responses before it; or nil, err, interim.
function raw.read_final(s, opts)
  local interim = {}
  while true do
    local res, err, partial = raw.read_response(s, opts)
    if not res then return nil, err, interim, partial end
    if not res.status or res.status >= 200 then return res, interim end
    interim[#interim + 1] = res
  end
end

--- A stream over bytes already received in full (the peer has closed):
-- read_response and read_final parse them like a live connection.
function raw.bytes_stream(bytes)
  return setmetatable({ buf = bytes, eof = true, timeout = DEFAULT_TIMEOUT,
                        sock = { dirty = function() return false end, close = function() end } }, Stream)
end

--- How many header lines named `name` (case-insensitive) a response has.
function raw.count_header(res, name)
  local n = 0
  for _, kv in ipairs(res.headers) do
    if kv[1]:lower() == name:lower() then n = n + 1 end
  end
  return n
end

---------------------------------------------------------------------------
-- dates
---------------------------------------------------------------------------

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8,
                 Sep = 9, Oct = 10, Nov = 11, Dec = 12 }
local DAYS = { Sun = 0, Mon = 1, Tue = 2, Wed = 3, Thu = 4, Fri = 5, Sat = 6 }

-- Days since 1970-01-01 of a civil date (proleptic Gregorian).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

--- Seconds since the epoch of an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37
-- GMT"), or nil and why it is not one (a weekday that does not match the date
-- counts as wrong).
function raw.imf_fixdate(s)
  if type(s) ~= "string" then return nil, "no value" end
  local wd, d, mon, y, hh, mm, ss = s:match("^(%a%a%a), (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  if not wd then return nil, "not IMF-fixdate: " .. string.format("%q", s) end
  local m = MONTHS[mon]
  if not m or DAYS[wd] == nil then return nil, "bad day or month name: " .. s end
  d, y, hh, mm, ss = tonumber(d), tonumber(y), tonumber(hh), tonumber(mm), tonumber(ss)
  if d < 1 or d > 31 or hh > 23 or mm > 59 or ss > 60 then return nil, "field out of range: " .. s end
  local days = days_from_civil(y, m, d)
  if (days + 4) % 7 ~= DAYS[wd] then return nil, "weekday does not match the date: " .. s end
  return days * 86400 + hh * 3600 + mm * 60 + ss
end

---------------------------------------------------------------------------
-- moongate's stderr
---------------------------------------------------------------------------

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end

--- A mark in a proxy's stderr: later searches only look after it.
function raw.log_mark(proxy)
  return #read_file(proxy.stderr_path)
end

--- stderr written since `mark`.
function raw.log_since(proxy, mark)
  return read_file(proxy.stderr_path):sub((mark or 0) + 1)
end

--- The first line after `mark` that contains every string of `needles`
-- (plain, case-sensitive), waiting up to `timeout` seconds (default 2) for it.
-- Returns the line, or nil and the text searched.
function raw.find_log(proxy, mark, needles, timeout)
  if type(needles) == "string" then needles = { needles } end
  local deadline = socket.gettime() + (timeout or 2)
  local text
  repeat
    text = raw.log_since(proxy, mark)
    for line in helpers.lines(text) do
      local all = true
      for _, n in ipairs(needles) do
        if not line:find(n, 1, true) then all = false break end
      end
      if all then return line end
    end
    socket.sleep(0.02)
  until socket.gettime() > deadline
  return nil, text
end

--- A short printable rendering of bytes for failure messages.
function raw.show(bytes, max)
  bytes = bytes or ""
  max = max or 400
  local s = string.format("%q", #bytes > max and (bytes:sub(1, max) .. "...") or bytes)
  return s:gsub("\\\n", "\\n")
end

--- Per-test bookkeeping for specs that drive a hostile origin: `connect(port)`
-- opens a client on the proxy `get_proxy()` returns (it may be restarted between
-- tests) and remembers it; `cleanup()` (for after_each) closes those clients, the
-- origin connections accepted (a pooled one included) and whatever still waits to
-- be accepted, so no test sees another's connections.
function raw.tracker(get_proxy, get_origin)
  local clients = {}
  local function connect(port)
    local c = get_proxy():connect(port)
    clients[#clients + 1] = c
    return c
  end
  local function cleanup()
    for _, c in ipairs(clients) do c:close() end
    clients = {}
    local hostile = get_origin()
    hostile:close_conns()
    while hostile:pending(0) do
      local o = hostile:accept(0)
      if o then o:close() end
    end
  end
  return connect, cleanup
end

return raw
