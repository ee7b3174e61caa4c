-- mg.http: HTTP/1.1 calls from hooks (docs/hooks.md "mg.http"), over the same
-- upstream client and keep-alive pools as the proxy path (core/lhttp.c). The
-- request head is built and checked here; C resolves, connects, sends, parses
-- and waits through the hook's coroutine.
local ffi = require "ffi"
local abi = require "moongate.ffi"

local type, tostring, tonumber, pairs, ipairs, error, setmetatable =
      type, tostring, tonumber, pairs, ipairs, error, setmetatable
local concat, lower, floor, gmatch = table.concat, string.lower, math.floor, string.gmatch
local ffi_string = ffi.string

local EAGAIN, EPHASE, ENOMEM = abi.EAGAIN, abi.EPHASE, abi.ENOMEM

local _M = {}

-- out-parameters, reused: C fills them and Lua copies at once (no wait between)
local opts_c = ffi.new("mg_http_opts_t")
local res_c = ffi.new("mg_http_res_t")
local slot_p, gen_p = ffi.new("uint32_t[1]"), ffi.new("uint32_t[1]")
local piece_p, err_p = ffi.new("mg_str_t[1]"), ffi.new("mg_str_t[1]")

local DEFAULT_TIMEOUT = 10
local DEFAULT_MAX_BODY = 10 * 1024 * 1024
local READ_DEFAULT = 64 * 1024

local IDEMPOTENT = { GET = true, HEAD = true, OPTIONS = true, TRACE = true, PUT = true, DELETE = true }
local WANTS_LENGTH = { POST = true, PUT = true, PATCH = true }
local REDIRECT = { [301] = true, [302] = true, [303] = true, [307] = true, [308] = true }
-- framing is moongate's: these are never taken from the caller
local FRAMING = { ["content-length"] = true, ["transfer-encoding"] = true }

local runtime -- required on first use (it requires moongate, which requires this)
local function rt()
  runtime = runtime or require "moongate.private.runtime"
  return runtime
end

local function now() return abi.C.mg_api_now() end

local is_token = require("moongate.private.check").token

-- "http(s)://host[:port]/path?q" -> { scheme, host, port, target, host_header } or nil, err
local function parse_url(url)
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  scheme = scheme and lower(scheme)
  if scheme ~= "http" and scheme ~= "https" then
    return nil, "url must begin with http:// or https://: " .. url
  end
  local authority, target = rest:match("^([^/?#]*)(.*)$")
  if authority:find("@", 1, true) then return nil, "user info in a url is not supported: " .. url end
  local host, port, v6
  if authority:sub(1, 1) == "[" then
    host, port = authority:match("^%[([%x:.]+)%](.*)$")
    v6 = true
  else
    host, port = authority:match("^([^:]*)(.*)$")
  end
  if not host or host == "" then return nil, "no host in url: " .. url end
  if not v6 and (#host > 253 or host:find("[^%w.%-]")) then return nil, "bad host in url: " .. url end
  local default = scheme == "https" and 443 or 80
  if port == "" then
    port = default
  else
    port = tonumber(port:match("^:(%d+)$"))
    if not port or port < 1 or port > 65535 then return nil, "bad port in url: " .. url end
  end
  target = target:gsub("#.*$", "")
  if target == "" or target:sub(1, 1) == "?" then target = "/" .. target end
  if target:find("[%z\1-\32\127]") then return nil, "bad character in url path (control or space): " .. url end
  local hh = v6 and "[" .. host .. "]" or host
  if port ~= default then hh = hh .. ":" .. port end
  return { scheme = scheme, host = host, port = port, target = target, host_header = hh, v6 = v6,
           ip = v6 or host:find("^[%d.]+$") ~= nil, host_line = "Host: " .. hh .. "\r\n", lines = {} }
end

-- parse_url's answers by URL (immutable tables), so a hook calling the same
-- service on every request does not parse its URL every time. Bounded: emptied
-- when full.
local url_cache, url_count, URL_CACHE_MAX = {}, 0, 256
local function parse_url_cached(url)
  local u = url_cache[url]
  if u then return u end
  local err
  u, err = parse_url(url)
  if not u then return nil, err end
  if url_count >= URL_CACHE_MAX then url_cache, url_count = {}, 0 end
  url_cache[url], url_count = u, url_count + 1
  return u
end

-- A Location against the URL it came from.
local function resolve_location(u, loc)
  if loc:find("^%a[%w+.-]*://") then return loc end
  local base = u.scheme .. "://" .. u.host_header
  if loc:sub(1, 2) == "//" then return u.scheme .. ":" .. loc end
  if loc:sub(1, 1) == "/" then return base .. loc end
  local dir = u.target:gsub("[?#].*$", ""):match("^(.*/)") or "/"
  return base .. dir .. loc
end

-- Header names seen before, checked: name -> its lower-case form (bounded).
local names_ok, names_count, NAMES_MAX = {}, 0, 512
local function check_name(name)
  local lname = names_ok[name]
  if lname then return lname end
  if not is_token(name) then return nil end
  lname = lower(name)
  if names_count >= NAMES_MAX then names_ok, names_count = {}, 0 end
  names_ok[name], names_count = lname, names_count + 1
  return lname
end

-- The pieces of a head, reused (build_head never waits: no other call runs meanwhile).
local parts = {}

-- The request head, or nil, err. headers: name -> string (or an array of them).
local function build_head(method, u, headers, body)
  local lines = u.lines -- the request line per method, and the Host line, made once per URL
  local line = lines[method]
  if not line then
    line = method .. " " .. u.target .. " HTTP/1.1\r\n"
    lines[method] = line
  end
  local n = 1
  parts[1] = line
  local has_host, has_ua = false, false
  if headers ~= nil then
    for name, v in pairs(headers) do
      local lname = check_name(name)
      if not lname then
        for i = 1, n do parts[i] = nil end
        return nil, "bad header name: " .. tostring(name)
      end
      local bad
      if FRAMING[lname] then bad = "header " .. name .. " is set by mg.http (from the body)"
      elseif lname == "host" then has_host = true
      elseif lname == "user-agent" then has_ua = true end
      local tv = type(v)
      if not bad and (tv == "string" or tv == "number") then
        if tv == "number" then v = tostring(v) end
        if v:find("[%z\r\n]") then bad = "header " .. name .. ": value holds CR, LF or NUL" end
        parts[n + 1], parts[n + 2], parts[n + 3], parts[n + 4] = name, ": ", v, "\r\n"
        n = n + 4
      elseif not bad and tv == "table" then
        for _, x in ipairs(v) do
          if type(x) == "number" then x = tostring(x) end
          if type(x) ~= "string" then bad = "header " .. name .. ": value must be a string" break end
          if x:find("[%z\r\n]") then bad = "header " .. name .. ": value holds CR, LF or NUL" break end
          parts[n + 1], parts[n + 2], parts[n + 3], parts[n + 4] = name, ": ", x, "\r\n"
          n = n + 4
        end
      elseif not bad then
        bad = "header " .. name .. ": value must be a string"
      end
      if bad then
        for i = 1, n do parts[i] = nil end
        return nil, bad
      end
    end
  end
  if not has_host then n = n + 1 parts[n] = u.host_line end
  if not has_ua then n = n + 1 parts[n] = "User-Agent: moongate\r\n" end
  if body ~= nil then n = n + 1 parts[n] = "Content-Length: " .. #body .. "\r\n"
  elseif WANTS_LENGTH[method] then n = n + 1 parts[n] = "Content-Length: 0\r\n" end
  n = n + 1
  parts[n] = "\r\n"
  local head = concat(parts, "", 1, n)
  for i = 1, n do parts[i] = nil end
  return head
end

-- res.headers is made from the head's block when first looked at: a hook that
-- reads only res.status pays for no table (lib: one copy of the block).
local function split_headers(block)
  local h = {}
  for name, value in gmatch(block, "([^:\n]*):([^\n]*)\n") do
    local had = h[name]
    h[name] = had and had .. ", " .. value or value
  end
  return h
end

local Stream = {}
Stream.__index = function(res, k)
  if k == "headers" then
    local h = split_headers(rawget(res, "_hblock") or "")
    rawset(res, "headers", h)
    return h
  end
  return Stream[k]
end

--- res:read(n): the next piece of a streamed body (up to n bytes, default 64 KiB),
--- nil at the end, or nil, err. The hook waits while nothing has come.
function Stream:read(n)
  if n == nil then n = READ_DEFAULT end
  if type(n) ~= "number" or n < 1 then error("res:read: n must be a number >= 1", 2) end
  if self._done then return nil, self._err end
  local C = abi.C
  local slot, gen = self._slot, self._gen
  local rc = C.mg_http_read(slot, gen, floor(n), piece_p, err_p)
  while rc == EAGAIN do
    rt().wait("io")
    rc = C.mg_http_read(slot, gen, floor(n), piece_p, err_p)
  end
  if rc == EPHASE then error("res:read: only in the request (or timer callback) that made the call", 2) end
  if rc ~= 0 then
    self._done, self._err = true, "closed"
    return nil, "closed"
  end
  local p = piece_p[0]
  if p.len > 0 then return ffi_string(p.p, p.len) end
  local e = err_p[0]
  if e.len > 0 then self._err = ffi_string(e.p, e.len) end
  self:close()
  self._done = true
  return nil, self._err
end

--- res:close(): done with a streamed body (a connection still reading the body
--- is closed, not pooled). Also happens when the request ends.
function Stream:close()
  if self._slot then abi.C.mg_http_close(self._slot, self._gen) end
  self._slot, self._done = nil, true
end

-- One request/response exchange. Returns res or nil, err.
local function call(u, method, head, body, o, timeout)
  local C = abi.C
  rt().io_begin()
  local tls = u.scheme == "https"
  opts_c.host, opts_c.host_len, opts_c.port = u.host, #u.host, u.port
  opts_c.tls, opts_c.verify = tls and 1 or 0, (tls and o.verify) and 1 or 0
  opts_c.ca, opts_c.sni = tls and o.ca or nil, tls and (o.sni or (not u.ip and u.host)) or nil
  opts_c.head, opts_c.head_len = head, #head
  opts_c.body, opts_c.body_len = body, body and #body or 0
  opts_c.is_head = method == "HEAD" and 1 or 0
  opts_c.idempotent = IDEMPOTENT[method] and 1 or 0
  opts_c.stream = o.stream and 1 or 0
  opts_c.max_body = o.max_body
  opts_c.timeout = timeout
  local rc = C.mg_http_start(opts_c, slot_p, gen_p)
  opts_c.host, opts_c.ca, opts_c.sni, opts_c.head, opts_c.body = nil, nil, nil, nil, nil
  if rc == EPHASE then
    error("mg.http.request: only a hook that may wait (every hook but request_body, and timer callbacks)", 3)
  end
  if rc == ENOMEM then return nil, "no memory" end
  if rc ~= 0 and rc ~= EAGAIN then return nil, "bad request (" .. rc .. ")" end
  local slot, gen = slot_p[0], gen_p[0]
  if rc == EAGAIN then rt().wait("io") end
  rc = C.mg_http_result(slot, gen, res_c) -- (start said 0: the result is there)
  while rc == EAGAIN do
    rt().wait("io")
    rc = C.mg_http_result(slot, gen, res_c)
  end
  if rc ~= 0 then return nil, "closed" end
  if res_c.err.len > 0 then
    local err = ffi_string(res_c.err.p, res_c.err.len)
    C.mg_http_close(slot, gen)
    return nil, err
  end
  local res = setmetatable({ status = res_c.status, _hblock = ffi_string(res_c.headers.p, res_c.headers.len) },
                           Stream)
  if o.stream then
    res._slot, res._gen = slot, gen
    return res
  end
  res.body = ffi_string(res_c.body.p, res_c.body.len)
  res._done = true
  C.mg_http_close(slot, gen)
  return res
end

local opt_keys = { method = true, url = true, headers = true, body = true, timeout = true, tls = true,
                   max_body = true, follow = true, stream = true }
local tls_keys = { verify = true, ca = true, sni = true }

--- mg.http.request { method = "GET", url = "http(s)://host[:port]/path?q", headers = {...},
---   body = "...", timeout = 10 (s, the whole call), tls = { verify = true, ca = "file.pem",
---   sni = "name" }, max_body = 10 MiB, follow = 0 (redirects), stream = false }
--- -> res ({ status, headers (lower-case names, repeats joined with ", "), body }), or nil, err.
--- With stream = true the body is read with res:read(n). The hook waits meanwhile.
function _M.request(t)
  if type(t) ~= "table" then error("mg.http.request: expects a table of options", 2) end
  for k in pairs(t) do
    if not opt_keys[k] then error("mg.http.request: unknown option '" .. tostring(k) .. "'", 2) end
  end
  if type(t.url) ~= "string" then error("mg.http.request: 'url' must be a string", 2) end
  local method = t.method or "GET"
  if type(method) ~= "string" then error("mg.http.request: 'method' must be a string", 2) end
  if not is_token(method) then return nil, "bad method: " .. method end
  if t.headers ~= nil and type(t.headers) ~= "table" then error("mg.http.request: 'headers' must be a table", 2) end
  local body = t.body
  if body ~= nil and type(body) ~= "string" then error("mg.http.request: 'body' must be a string", 2) end
  local timeout = t.timeout == nil and DEFAULT_TIMEOUT or t.timeout
  if type(timeout) ~= "number" or not (timeout > 0) then
    error("mg.http.request: 'timeout' must be a number of seconds > 0", 2)
  end
  local follow = t.follow or 0
  if type(follow) ~= "number" or follow < 0 or follow ~= floor(follow) then
    error("mg.http.request: 'follow' must be a whole number >= 0", 2)
  end
  local o = { stream = t.stream == true, verify = true }
  if t.max_body ~= nil then
    if type(t.max_body) ~= "number" or not (t.max_body > 0) then
      error("mg.http.request: 'max_body' must be a number of bytes > 0", 2)
    end
    o.max_body = t.max_body
  else
    o.max_body = o.stream and 0 or DEFAULT_MAX_BODY -- a stream is bounded by its reader
  end
  if t.tls ~= nil then
    if type(t.tls) ~= "table" then error("mg.http.request: 'tls' must be a table", 2) end
    for k in pairs(t.tls) do
      if not tls_keys[k] then error("mg.http.request: unknown tls option '" .. tostring(k) .. "'", 2) end
    end
    if t.tls.verify ~= nil then o.verify = t.tls.verify and true or false end
    if t.tls.ca ~= nil then
      if type(t.tls.ca) ~= "string" then error("mg.http.request: 'tls.ca' must be a file name", 2) end
      o.ca = t.tls.ca
      if o.ca:sub(1, 1) ~= "/" then o.ca = require("moongate")._state().confdir .. "/" .. o.ca end
    end
    if t.tls.sni ~= nil then
      if type(t.tls.sni) ~= "string" or t.tls.sni:find("[^%w.%-]") then
        error("mg.http.request: 'tls.sni' must be a host name", 2)
      end
      o.sni = t.tls.sni
    end
  end
  local u, err = parse_url_cached(t.url)
  if not u then return nil, err end
  local deadline = now() + timeout
  local headers = t.headers
  for hop = 0, follow do
    if u.scheme == "https" and o.verify and u.ip and not o.sni then
      return nil, "https to an IP address: give tls.sni (the name to verify) or tls.verify = false"
    end
    local head
    head, err = build_head(method, u, headers, body)
    if not head then return nil, err end
    local left = deadline - now()
    if left <= 0 then return nil, "timeout" end
    local res
    res, err = call(u, method, head, body, o, left)
    if not res then return nil, err end
    if hop == follow or not REDIRECT[res.status] then return res end
    local loc = res.headers.location
    if not loc then return res end
    if o.stream then res:close() end
    local next_u
    next_u, err = parse_url_cached(resolve_location(u, loc))
    if not next_u then return nil, "redirect: " .. err end
    if res.status == 303 and method ~= "HEAD" then method, body = "GET", nil end
    if next_u.host ~= u.host or next_u.port ~= u.port or next_u.scheme ~= u.scheme then
      -- credentials are not handed to another server
      local kept = {}
      for k, v in pairs(headers or {}) do
        local lk = lower(k)
        if lk ~= "authorization" and lk ~= "cookie" and lk ~= "proxy-authorization" and lk ~= "host" then
          kept[k] = v
        end
      end
      headers = kept
    end
    u = next_u
  end
end

return _M
