-- mg.tcp(): TCP sockets for hooks, in OpenResty's cosocket shape (core/cosock.h).
-- Every method that waits (connect, sslhandshake, send, receive, receiveany)
-- suspends only its own hook: the worker serves others meanwhile. Failures
-- are `nil, err` (err a string: "timeout", "closed", "connection refused",
-- "too large", ...); calling one from where no hook may wait raises an error.
local ffi = require "ffi"
local abi = require "moongate.ffi"

local C = abi.C
local EAGAIN, EPHASE = abi.EAGAIN, abi.EPHASE
local ffi_gc, ffi_str = ffi.gc, ffi.string
local error, setmetatable, tonumber, tostring, type = error, setmetatable, tonumber, tostring, type
local floor = math.floor

local err_out = ffi.new("const char *[1]")
local str_out = ffi.new("mg_str_t[1]")

-- runtime requires moongate (init.lua), which requires this module lazily
local runtime
local function rt()
  runtime = runtime or require "moongate.private.runtime"
  return runtime
end

local RX_N, RX_LINE, RX_ALL, RX_ANY = 0, 1, 2, 3

local _M = {}
local sock_mt = {}
sock_mt.__index = sock_mt

local function phase_error(what)
  error("mg.tcp: sock:" .. what .. ": only a hook that may wait can use a socket "
    .. "(every hook but request_body, and timer callbacks)", 3)
end

local function errstr()
  local e = err_out[0]
  return e ~= nil and ffi_str(e) or "unknown error"
end

-- rc of a call that may wait: waits while it says EAGAIN, asking again with
-- mg_tcp_result. true, or nil, err.
local function finish(self, rc, what)
  while rc == EAGAIN do
    runtime.wait("io")
    rc = C.mg_tcp_result(self._s, err_out)
  end
  if rc == 0 then return true end
  if rc == EPHASE then phase_error(what) end
  return nil, errstr()
end

--- mg.tcp(): a new, unconnected socket (timeouts 60 s each).
function _M.new()
  local s = C.mg_tcp_new()
  if s == nil then return nil, "no memory" end
  return setmetatable({ _s = ffi_gc(s, C.mg_tcp_free) }, sock_mt)
end

local function check_ms(ms, what)
  if type(ms) ~= "number" or ms ~= ms or ms < 0 then
    error("mg.tcp: sock:" .. what .. ": timeout must be a number of milliseconds >= 0, got "
      .. tostring(ms), 3)
  end
  return ms
end

--- sock:settimeout(ms): the connect, send and read timeouts at once (0: none).
function sock_mt:settimeout(ms)
  ms = check_ms(ms, "settimeout")
  C.mg_tcp_settimeouts(self._s, ms, ms, ms)
end

--- sock:settimeouts(connect_ms, send_ms, read_ms)
function sock_mt:settimeouts(c, s, r)
  C.mg_tcp_settimeouts(self._s, check_ms(c, "settimeouts"), check_ms(s, "settimeouts"),
    check_ms(r, "settimeouts"))
end

--- ok, err = sock:connect(host, port [, { pool = name, pool_size = n, ssl_ca = path }])
--- An idle pooled connection with the same key ("host:port" or opts.pool) is
--- taken if there is one (sock:getreusedtimes() then counts it).
function sock_mt:connect(host, port, opts)
  if type(host) ~= "string" or host == "" then
    error("mg.tcp: sock:connect: host must be a non-empty string, got " .. tostring(host), 2)
  end
  port = tonumber(port)
  if not port or port ~= floor(port) or port < 1 or port > 65535 then
    error("mg.tcp: sock:connect: port must be an integer 1-65535, got " .. tostring(port), 2)
  end
  local pool, pool_size, ca = nil, 0, nil
  if opts ~= nil then
    if type(opts) ~= "table" then error("mg.tcp: sock:connect: options must be a table", 2) end
    pool, pool_size, ca = opts.pool, opts.pool_size or 0, opts.ssl_ca
    if pool ~= nil and (type(pool) ~= "string" or pool == "") then
      error("mg.tcp: sock:connect: opts.pool must be a non-empty string", 2)
    end
    if type(pool_size) ~= "number" or pool_size < 0 or pool_size ~= floor(pool_size) then
      error("mg.tcp: sock:connect: opts.pool_size must be an integer >= 1", 2)
    end
    if ca ~= nil and type(ca) ~= "string" then error("mg.tcp: sock:connect: opts.ssl_ca must be a path", 2) end
  end
  rt().io_begin()
  local rc = C.mg_tcp_connect(self._s, host, #host, port, pool, pool and #pool or 0, pool_size,
    ca, ca and #ca or 0, err_out)
  return finish(self, rc, "connect")
end

--- true, or nil, err: TLS on the connected socket. verify defaults to true (the
--- system CA bundle, or connect's opts.ssl_ca); server_name is sent as SNI and,
--- verifying, checked against the certificate. Sessions are not handed to Lua.
function sock_mt:sslhandshake(_reused_session, server_name, verify)
  if server_name ~= nil and type(server_name) ~= "string" then
    error("mg.tcp: sock:sslhandshake: server_name must be a string", 2)
  end
  rt().io_begin()
  local rc = C.mg_tcp_sslhandshake(self._s, server_name, server_name and #server_name or 0,
    verify == false and 0 or 1, err_out)
  return finish(self, rc, "sslhandshake")
end

--- bytes, err = sock:send(data): data a string, or an array of strings (sent
--- in one write, not joined first). Returns when the kernel has all of it.
function sock_mt:send(data)
  local s = self._s
  local n, rc = 0, nil
  if type(data) == "table" then
    for i = 1, #data do
      local p = data[i]
      if type(p) == "number" then p = tostring(p) end
      if type(p) ~= "string" then
        error("mg.tcp: sock:send: piece " .. i .. " is a " .. type(p) .. ", not a string", 2)
      end
    end
    rt().io_begin()
    for i = 1, #data do
      local p = tostring(data[i])
      rc = C.mg_tcp_send(s, p, #p, 1, err_out)
      if rc ~= 0 then break end
      n = n + #p
    end
    if rc == 0 or rc == nil then rc = C.mg_tcp_send(s, nil, 0, 0, err_out) end
  else
    if type(data) == "number" then data = tostring(data) end
    if type(data) ~= "string" then
      error("mg.tcp: sock:send: data must be a string or an array of strings, got " .. type(data), 2)
    end
    rt().io_begin()
    n = #data
    rc = C.mg_tcp_send(s, data, n, 0, err_out)
  end
  local ok, err = finish(self, rc, "send")
  if not ok then return nil, err end
  return n
end

local function receive(self, mode, n, what)
  local s = self._s
  rt().io_begin()
  local rc = C.mg_tcp_receive(s, mode, n, str_out, err_out)
  while rc == EAGAIN do
    runtime.wait("io")
    rc = C.mg_tcp_receive(s, mode, n, str_out, err_out)
  end
  local o = str_out[0]
  if rc == 0 then return ffi_str(o.p, o.len) end
  if rc == EPHASE then phase_error(what) end
  return nil, errstr(), ffi_str(o.p, o.len)
end

--- data, err, partial = sock:receive(n | "*l" | "*a"): n bytes; a line without
--- its CR LF or LF (default); everything until the peer closes.
function sock_mt:receive(pat)
  if pat == nil or pat == "*l" then return receive(self, RX_LINE, 0, "receive") end
  if pat == "*a" then return receive(self, RX_ALL, 0, "receive") end
  local n = tonumber(pat)
  if not n or n < 0 or n ~= floor(n) then
    error("mg.tcp: sock:receive: pattern must be \"*l\", \"*a\" or a byte count, got " .. tostring(pat), 2)
  end
  if n == 0 then return "" end
  return receive(self, RX_N, n, "receive")
end

--- data, err = sock:receiveany(max): whatever is there (at least one byte, at most max).
function sock_mt:receiveany(max)
  local n = tonumber(max)
  if not n or n < 1 or n ~= floor(n) then
    error("mg.tcp: sock:receiveany: max must be an integer >= 1, got " .. tostring(max), 2)
  end
  return receive(self, RX_ANY, n, "receiveany")
end

--- ok, err = sock:setkeepalive([idle_ms [, pool_size]]): the connection goes to
--- the worker's idle pool (closed after idle_ms, default 60 s; 0: kept; the
--- longest idle go when the pool holds more than pool_size, default 30). The
--- socket is closed after it either way.
function sock_mt:setkeepalive(idle_ms, pool_size)
  if idle_ms ~= nil then check_ms(idle_ms, "setkeepalive") end
  if pool_size ~= nil and (type(pool_size) ~= "number" or pool_size < 1) then
    error("mg.tcp: sock:setkeepalive: pool_size must be a number >= 1", 2)
  end
  local rc = C.mg_tcp_setkeepalive(self._s, idle_ms or -1, pool_size or 0, err_out)
  if rc == 0 then return 1 end
  return nil, errstr()
end

--- n = sock:getreusedtimes(): how many times its connection came from the pool.
function sock_mt:getreusedtimes()
  return C.mg_tcp_reused(self._s)
end

--- ok, err = sock:close()
function sock_mt:close()
  if C.mg_tcp_close(self._s) == 0 then return 1 end
  return nil, "closed"
end

return _M
