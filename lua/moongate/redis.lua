-- moongate.redis: a small RESP2 client for hooks (docs/redis.md).
--
--   local redis = require "moongate.redis"
--   local red = redis.new()
--   red:set_timeout(1000)
--   local ok, err = red:connect("127.0.0.1", 6379)
--   local n = red:incr("hits")             -- any command: red:call("INCR", "hits")
--   red:set_keepalive(10000, 64)           -- back to the worker's pool
--
-- It runs on a cosocket: mg.tcp() in moongate, or whatever `redis.new { socket =
-- factory }` returns (spec/unit/redis_spec.lua runs it over luasocket). It uses only
-- the cosocket methods connect, send (one array table of strings per request: the
-- arguments are never concatenated into one string), receive("*l") and receive(n),
-- settimeouts, setkeepalive, getreusedtimes and close.
--
-- Replies: status -> string, integer -> number, bulk -> string, nil bulk or nil
-- array -> redis.null, array -> table, error reply -> false, "ERR ..." (inside an
-- array or a pipeline: { false, "ERR ..." }). A transport failure (timeout, closed)
-- or a reply that breaks the protocol or the size bounds -> nil, err, and the
-- connection is closed: what is left of the stream cannot be trusted to line up
-- with the next request.

local type, tostring, tonumber, setmetatable, error, select, pairs, pcall =
      type, tostring, tonumber, setmetatable, error, select, pairs, pcall
local byte, sub, find, fmt, upper = string.byte, string.sub, string.find, string.format, string.upper

local ok_new, new_tab = pcall(require, "table.new")
if not ok_new then new_tab = function() return {} end end
local ok_clear, clear_tab = pcall(require, "table.clear")
if not ok_clear then
  clear_tab = function(t) for k in pairs(t) do t[k] = nil end end
end

local _M = { _VERSION = "0.1.0" }

--- The value of a nil bulk string or nil array ($-1 / *-1): a unique sentinel,
--- distinct from every string (nil cannot sit in a table).
_M.null = setmetatable({}, { __tostring = function() return "redis.null" end })
local null = _M.null

-- Bounds on what a server may make us hold. Redis itself refuses a bulk over
-- 512 MiB (proto-max-bulk-len); the item bound counts every element of one
-- reply, nested arrays included, so a hostile "*1000000" header cannot make us
-- build millions of tables. Depth bounds the recursion of nested arrays.
local MAX_BULK = 512 * 1024 * 1024
local MAX_ITEMS = 1000000
local MAX_DEPTH = 64

local DEFAULT_TIMEOUT = 60000 -- ms, the cosocket default

-- Request framing: "*<argc>\r\n" then per argument "$<len>\r\n" <arg> "\r\n".
-- The pieces around the arguments are interned strings from these caches for
-- the usual lengths, so a request costs one table of references, not a copy.
local CRLF = "\r\n"
local argc_head = {} -- n -> "*n\r\n"
local first_len = {} -- n -> "$n\r\n"
local next_len = {}  -- n -> "\r\n$n\r\n"
local CACHED = 1024

local function argc_str(n)
  local s = argc_head[n]
  if s then return s end
  s = "*" .. n .. CRLF
  if n < CACHED then argc_head[n] = s end
  return s
end

local function len_str(n, first)
  local cache = first and first_len or next_len
  local s = cache[n]
  if s then return s end
  s = (first and "$" or "\r\n$") .. n .. CRLF
  if n < CACHED then cache[n] = s end
  return s
end

-- The default socket: mg.tcp() of the running moongate. Looked up on first use,
-- so that this module loads anywhere (plain busted, the config's main thread).
local mg_tcp
local function default_socket()
  if not mg_tcp then mg_tcp = require("moongate").tcp end
  if not mg_tcp then return nil, "mg.tcp is not available" end
  return mg_tcp()
end

local mt = {}
mt.__index = mt

--- redis.new(opts): a client, not connected. opts (all optional):
---   socket = function() return cosocket end   (default mg.tcp)
---   max_bulk = bytes (512 MiB), max_items = elements per reply (1e6)
function _M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then error("redis.new: opts must be a table", 2) end
  opts = opts or {}
  local factory = opts.socket or default_socket
  if type(factory) ~= "function" then error("redis.new: opts.socket must be a function", 2) end
  local max_bulk, max_items = opts.max_bulk or MAX_BULK, opts.max_items or MAX_ITEMS
  if type(max_bulk) ~= "number" or max_bulk < 0 then error("redis.new: max_bulk must be a number >= 0", 2) end
  if type(max_items) ~= "number" or max_items < 0 then error("redis.new: max_items must be a number >= 0", 2) end
  return setmetatable({
    factory = factory,
    -- fields that may be "unset" hold false, never nil: a nil field would fall
    -- through to the command methods below
    sock = false,
    connect_ms = DEFAULT_TIMEOUT, send_ms = DEFAULT_TIMEOUT, read_ms = DEFAULT_TIMEOUT,
    max_bulk = max_bulk, max_items = max_items,
    parts = new_tab(16, 0), nparts = 0, -- the request being built (reused)
    pipeline = false,                   -- count of queued commands while pipelining
    budget = 0,                         -- items left for the reply being read
  }, mt)
end

local function check_ms(v, what)
  if v == nil then return DEFAULT_TIMEOUT end
  if type(v) ~= "number" or v ~= v or v < 0 then
    error("redis: " .. what .. " must be a number of milliseconds >= 0", 3)
  end
  return v
end

--- red:set_timeout(ms): the connect, send and read timeouts at once.
function mt.set_timeout(self, ms)
  ms = check_ms(ms, "timeout")
  return self:set_timeouts(ms, ms, ms)
end

--- red:set_timeouts(connect_ms, send_ms, read_ms). Kept for later connections too.
function mt.set_timeouts(self, c, s, r)
  c, s, r = check_ms(c, "connect timeout"), check_ms(s, "send timeout"), check_ms(r, "read timeout")
  self.connect_ms, self.send_ms, self.read_ms = c, s, r
  local sock = self.sock
  if sock then sock:settimeouts(c, s, r) end
  return true
end

-- Forgets a queued pipeline and whatever request was being built.
local function drop_queue(self)
  if self.nparts > 0 then clear_tab(self.parts) end
  self.nparts = 0
  self.pipeline = false
end

-- Drops the connection after a failure: the stream may be mid-reply.
local function fail(self, err)
  local sock = self.sock
  if sock then
    self.sock = false
    sock:close()
  end
  drop_queue(self)
  return nil, err
end

--- ok, err = red:connect(host, port, opts): opts go to the socket's connect
--- ({ pool = "name", pool_size = n } with mg.tcp). A pooled connection may be
--- handed back (red:get_reused_times() > 0): it keeps the database SELECTed and
--- the AUTH done by whoever used it before.
function mt.connect(self, host, port, opts)
  if type(host) ~= "string" then error("redis: connect: host must be a string", 2) end
  if self.sock then
    local old = self.sock
    self.sock = false
    old:close()
  end
  drop_queue(self)
  local sock, err = self.factory()
  if not sock then return nil, err or "cannot create a socket" end
  sock:settimeouts(self.connect_ms, self.send_ms, self.read_ms)
  local ok, cerr
  if opts ~= nil then ok, cerr = sock:connect(host, port, opts)
  else ok, cerr = sock:connect(host, port) end
  if not ok then
    sock:close()
    return nil, cerr
  end
  self.sock = sock
  return true
end

--- ok, err = red:set_keepalive(idle_ms, pool_size): the connection goes back to
--- the worker's pool; the client may connect again afterwards. Refused while a
--- pipeline is being queued (its replies would be read by the next user).
function mt.set_keepalive(self, idle_ms, pool_size)
  local sock = self.sock
  if not sock then return nil, "closed" end
  if self.pipeline then
    return nil, "a pipeline is queued: commit or cancel it first"
  end
  self.sock = false
  return sock:setkeepalive(idle_ms, pool_size)
end

--- ok, err = red:close()
function mt.close(self)
  local sock = self.sock
  if not sock then return nil, "closed" end
  self.sock = false
  drop_queue(self)
  return sock:close()
end

--- n, err = red:get_reused_times(): how often the connection came from the pool.
function mt.get_reused_times(self)
  local sock = self.sock
  if not sock then return nil, "closed" end
  return sock:getreusedtimes()
end

-- Appends one command to self.parts. Arguments are strings or numbers.
-- Few arguments are read with select (no table); many from one table, since
-- select(k, ...) in a loop costs n^2.
local function add_command(self, name, ...)
  local n = select("#", ...)
  local args = n > 8 and { ... } or nil
  local parts, i = self.parts, self.nparts
  parts[i + 1] = argc_str(n + 1)
  parts[i + 2] = len_str(#name, true)
  parts[i + 3] = name
  i = i + 3
  for k = 1, n do
    local a
    if args then a = args[k] else a = select(k, ...) end
    local ta = type(a)
    if ta == "number" then
      a = tostring(a)
    elseif ta ~= "string" then
      -- undo the partial command before raising
      for j = self.nparts + 1, i do parts[j] = nil end
      error(fmt("redis: %s: argument %d must be a string or a number, got %s", name, k, ta), 3)
    end
    parts[i + 1] = len_str(#a, false)
    parts[i + 2] = a
    i = i + 2
  end
  parts[i + 1] = CRLF
  self.nparts = i + 1
end

local function bad(self, what)
  return fail(self, "redis protocol error: " .. what)
end

-- A decimal integer: digits with an optional minus, nothing else ("+5", " 5",
-- "0x5", "5e3" are refused: tonumber alone would take them).
local function int_at2(line)
  if not find(line, "^%-?%d+$", 2) or #line > 21 then return nil end
  return tonumber(sub(line, 2))
end

-- One reply. Returns value; or false, msg for an error reply; or nil, err after
-- failing (the connection is then closed).
local read_reply
read_reply = function(self, sock, depth)
  local line, err = sock:receive("*l")
  if not line then return fail(self, err) end
  local t = byte(line)
  if t == 43 then -- '+' status
    return sub(line, 2)
  elseif t == 36 then -- '$' bulk
    local n = int_at2(line)
    if not n or n < -1 then return bad(self, "bad bulk length " .. fmt("%q", sub(line, 1, 32))) end
    if n == -1 then return null end
    if n > self.max_bulk then
      return bad(self, fmt("bulk of %d bytes is over the limit (%d)", n, self.max_bulk))
    end
    local data, rerr = sock:receive(n + 2)
    if not data then return fail(self, rerr) end
    if byte(data, n + 1) ~= 13 or byte(data, n + 2) ~= 10 then
      return bad(self, "bulk string not followed by CRLF")
    end
    return sub(data, 1, n)
  elseif t == 58 then -- ':' integer
    local n = int_at2(line)
    if not n then return bad(self, "bad integer " .. fmt("%q", sub(line, 1, 32))) end
    return n
  elseif t == 45 then -- '-' error
    return false, sub(line, 2)
  elseif t == 42 then -- '*' array
    local n = int_at2(line)
    if not n or n < -1 then return bad(self, "bad array length " .. fmt("%q", sub(line, 1, 32))) end
    if n == -1 then return null end
    local budget = self.budget - n
    if budget < 0 then
      return bad(self, fmt("reply of more than %d items", self.max_items))
    end
    self.budget = budget
    if depth >= MAX_DEPTH then return bad(self, fmt("arrays nested deeper than %d", MAX_DEPTH)) end
    local vals = new_tab(n, 0)
    for i = 1, n do
      local v, verr = read_reply(self, sock, depth + 1)
      if v == nil then return nil, verr end
      if v == false then v = { false, verr } end
      vals[i] = v
    end
    return vals
  end
  if line == "" then return bad(self, "empty line") end
  return bad(self, fmt("unknown reply type byte 0x%02x", t))
end

local function read_one(self, sock)
  self.budget = self.max_items
  return read_reply(self, sock, 0)
end

local function send_parts(self, sock)
  local parts = self.parts
  local bytes, err = sock:send(parts)
  clear_tab(parts)
  self.nparts = 0
  if not bytes then return fail(self, err) end
  return true
end

--- res, err = red:call(name, ...): one command; in a pipeline, queued (true).
function mt.call(self, name, ...)
  if type(name) ~= "string" or name == "" then error("redis: call: command name must be a string", 2) end
  local sock = self.sock
  if self.pipeline then
    add_command(self, name, ...)
    self.pipeline = self.pipeline + 1
    return true
  end
  if not sock then return nil, "closed" end
  add_command(self, name, ...)
  local ok, err = send_parts(self, sock)
  if not ok then return nil, err end
  return read_one(self, sock)
end
local call = mt.call

--- red:eval(script, nkeys, keys..., args...) / red:evalsha(sha1, nkeys, ...)
function mt.eval(self, ...) return call(self, "EVAL", ...) end
function mt.evalsha(self, ...) return call(self, "EVALSHA", ...) end
--- red:auth(password) or red:auth(user, password)
function mt.auth(self, ...) return call(self, "AUTH", ...) end
--- red:select(db)
function mt.select(self, db) return call(self, "SELECT", db) end

--- red:init_pipeline(): the following commands are queued (each returns true)
--- until commit_pipeline sends them in one write and reads every reply.
function mt.init_pipeline(self)
  drop_queue(self)
  self.pipeline = 0
  return true
end

--- red:cancel_pipeline(): forgets the queued commands.
function mt.cancel_pipeline(self)
  drop_queue(self)
  return true
end

--- results, err = red:commit_pipeline(): one reply per queued command, in order;
--- an error reply is { false, "ERR ..." } in its slot. nil, err when the
--- transport or the protocol fails (the connection is then closed).
function mt.commit_pipeline(self)
  local n = self.pipeline
  if not n then return nil, "no pipeline" end
  self.pipeline = false
  if n == 0 then return nil, "no commands in the pipeline" end
  local sock = self.sock
  if not sock then
    self:cancel_pipeline()
    return nil, "closed"
  end
  local ok, err = send_parts(self, sock)
  if not ok then return nil, err end
  local results = new_tab(n, 0)
  for i = 1, n do
    local v, verr = read_one(self, sock)
    if v == nil then return nil, verr end
    if v == false then v = { false, verr } end
    results[i] = v
  end
  return results
end

-- Any other command as a method: red:incr("k") is red:call("incr", "k"). The
-- function is made once per name and kept in the method table. Names starting
-- with "_" are not commands (and stay nil).
setmetatable(mt, {
  __index = function(t, name)
    if type(name) ~= "string" or not find(name, "^%a[%w]*$") then return nil end
    local cmd = upper(name)
    local f = function(self, ...) return call(self, cmd, ...) end
    t[name] = f
    return f
  end,
})

return _M
