-- moongate.testing: test your own proxy.lua with busted (docs/testing.md).
--
--   local t = require "moongate.testing"
--   local origin = assert(t.origin { ["/"] = { status = 200, body = "hi" } })
--   local proxy  = assert(t.start { config = "proxy.lua",
--                                   upstreams = { ["10.0.0.5:80"] = origin } })
--   local res = assert(proxy:request { path = "/" })
--   t.stop_all()
--
-- How it works:
--  * t.start never edits the user's file. It writes a small wrapper config into a
--    temp folder; moongate loads the wrapper, which runs the user's proxy.lua (by
--    its own path, so errors name the user's file and line) and then rewrites the
--    recorded listen addresses and upstream servers according to a mapping
--    table (read from a "plan" file next to the wrapper), and points the pid
--    file, error log and access log into the temp folder. The addresses are found
--    by a first `moongate -t` pass over the same wrapper in "discover" mode; each
--    listen address then gets a free port on the same host, and each upstream
--    server that points at one of the config's own listeners follows it.
--  * t.origin forks the test process: the child serves HTTP/1.1 (keep-alive,
--    chunked or sized bodies) on a socket the parent bound, and calls the spec's
--    handler (a real Lua closure, copied into the child by fork) for every
--    request. The child appends every request it receives, one line each, to a
--    file the parent reads back (origin:requests()). The origin is a separate
--    process, so it answers whether or not the spec is waiting on it.
--
-- Runtime failures (binary missing, config error, port trouble, ...) return
-- nil, message; wrong arguments raise.

local socket = require "socket"
local unistd = require "posix.unistd"
local wait = require "posix.sys.wait"
local signal = require "posix.signal"
local fcntl = require "posix.fcntl"
local stdlib = require "posix.stdlib"
local stat = require "posix.sys.stat"
local dirent = require "posix.dirent"

local type, pairs, ipairs, tostring, tonumber, error, pcall, setmetatable =
      type, pairs, ipairs, tostring, tonumber, error, pcall, setmetatable
local fmt, concat, sort = string.format, table.concat, table.sort
local gettime, sleep = socket.gettime, socket.sleep
local loadstring, setfenv = loadstring or load, setfenv

local _M = { _VERSION = "0.1.0" }

---------------------------------------------------------------------------
-- where things are
---------------------------------------------------------------------------

-- This file is <root>/lua/moongate/testing.lua.
local LIB_FILE = debug.getinfo(1, "S").source:match("^@(.*)$") or "lua/moongate/testing.lua"
LIB_FILE = stdlib.realpath(LIB_FILE) or LIB_FILE
local LUA_DIR = LIB_FILE:match("^(.*)/moongate/[^/]*$") or "lua"
local ROOT = LUA_DIR:match("^(.*)/[^/]*$") or "."

local function file_exists(path)
  return path ~= nil and stat.stat(path) ~= nil
end

local function is_dir(path)
  local st = stat.stat(path)
  return st ~= nil and stat.S_ISDIR(st.st_mode) ~= 0
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function write_file(path, data)
  local f, err = io.open(path, "wb")
  if not f then return nil, err end
  f:write(data)
  f:close()
  return true
end

local function absolute(path)
  if path:sub(1, 1) == "/" then return path end
  return (unistd.getcwd() or ".") .. "/" .. path
end

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

local function escape_pattern(s)
  return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

local function executable(path)
  return file_exists(path) and not is_dir(path) and unistd.access(path, "x") == 0
end

--- The moongate binary: opts.bin, $MOONGATE_BIN, <repo>/build/moongate, or
--- `moongate` on the PATH.
local function find_binary(opts)
  local given = opts.bin or os.getenv("MOONGATE_BIN")
  if given and given ~= "" then
    if given:sub(1, 1) ~= "/" and not file_exists(given) and file_exists(ROOT .. "/" .. given) then
      given = ROOT .. "/" .. given
    end
    given = absolute(given)
    if executable(given) then return given end
    return nil, "moongate binary not found or not executable: " .. given
  end
  local built = ROOT .. "/build/moongate"
  if executable(built) then return built end
  for dir in (os.getenv("PATH") or ""):gmatch("[^:]+") do
    if executable(dir .. "/moongate") then return dir .. "/moongate" end
  end
  return nil, "moongate binary not found (tried " .. built .. " and the PATH; set MOONGATE_BIN)"
end

-- Environment for a spawned moongate: it must find the same lua/moongate as the
-- one this module belongs to.
local function moongate_env(extra)
  local env = {}
  if file_exists(LUA_DIR .. "/moongate/private/loader.lua") then
    env.MOONGATE_LUA_DIR = LUA_DIR
    env.LUA_PATH = LUA_DIR .. "/?.lua;" .. LUA_DIR .. "/?/init.lua;" .. (os.getenv("LUA_PATH") or ";")
  end
  for k, v in pairs(extra or {}) do env[k] = tostring(v) end
  return env
end

---------------------------------------------------------------------------
-- bookkeeping: everything started, so stop_all() can end it
---------------------------------------------------------------------------

local live = {}     -- object -> true (proxies and origins not stopped yet)
local tmpdirs = {}  -- path -> true

local function make_tmpdir(prefix)
  local d, err = stdlib.mkdtemp("/tmp/" .. prefix .. "-XXXXXX")
  if not d then return nil, "mkdtemp: " .. tostring(err) end
  tmpdirs[d] = true
  return d
end

local function remove_tree(path)
  local st = stat.lstat(path)
  if not st then return end
  if stat.S_ISDIR(st.st_mode) ~= 0 then
    for _, name in ipairs(dirent.dir(path) or {}) do
      if name ~= "." and name ~= ".." then remove_tree(path .. "/" .. name) end
    end
  end
  os.remove(path)
end

local function drop_tmpdir(d)
  if not tmpdirs[d] then return end
  tmpdirs[d] = nil
  if not os.getenv("MOONGATE_TEST_KEEP") and d:match("^/tmp/moongate%-test%-") then remove_tree(d) end
end

---------------------------------------------------------------------------
-- processes
---------------------------------------------------------------------------

local O_LOG = fcntl.O_WRONLY + fcntl.O_CREAT + fcntl.O_APPEND

-- In a freshly forked child: ask Linux to SIGTERM us when the test process
-- dies (survives exec), so a killed test run leaves no moongate or origin
-- behind. Exits at once if the parent is already gone. No-op elsewhere.
local function die_with_parent(parent)
  local ok, ffi = pcall(require, "ffi")
  if ok then
    pcall(ffi.cdef, "int prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5);")
    pcall(function() ffi.C.prctl(1 --[[PR_SET_PDEATHSIG]], signal.SIGTERM, 0, 0, 0) end)
  end
  if unistd.getppid() ~= parent then unistd._exit(1) end
end

--- fork + exec argv; stdin from /dev/null, stdout and stderr appended to
--- o.log. Returns the pid or nil, err.
local function spawn(argv, o)
  local parent = unistd.getpid()
  local pid, err = unistd.fork()
  if not pid then return nil, "fork: " .. tostring(err) end
  if pid == 0 then
    -- No Lua finalizer may run between fork and exec.
    collectgarbage("stop")
    die_with_parent(parent)
    local null = fcntl.open("/dev/null", fcntl.O_RDONLY)
    if null then unistd.dup2(null, 0) end
    local out = fcntl.open(o.log, O_LOG, 420)
    if out then
      unistd.dup2(out, 1)
      unistd.dup2(out, 2)
    end
    -- Sockets the test process holds must not live on in moongate (a client's
    -- close would never reach the peer while a copy stays open).
    for fd = 3, 1023 do unistd.close(fd) end
    if o.cwd then unistd.chdir(o.cwd) end
    for k, v in pairs(o.env or {}) do stdlib.setenv(k, v) end
    local args = { [0] = argv[1] }
    for i = 2, #argv do args[i - 1] = argv[i] end
    unistd.execp(argv[1], args)
    unistd._exit(127)
  end
  return pid
end

--- Wait up to `timeout` seconds for pid. Returns "exited", code or "killed",
--- signal; nil, "running" on timeout; nil, "gone" when it is not our child.
local function reap(pid, timeout)
  local deadline = gettime() + (timeout or 0)
  while true do
    local p, how, code = wait.wait(pid, wait.WNOHANG)
    if p == pid then return how, code end
    if p == nil then return nil, "gone" end
    if gettime() >= deadline then return nil, "running" end
    sleep(0.01)
  end
end

--- SIGTERM, wait up to `timeout`, then SIGKILL. Returns how, code; or
--- nil, "timeout" when it had to be killed.
local function terminate(pid, timeout)
  signal.kill(pid, signal.SIGTERM)
  local how, code = reap(pid, timeout)
  if how or code == "gone" then return how, code end
  signal.kill(pid, signal.SIGKILL)
  reap(pid, 5)
  return nil, "timeout"
end

---------------------------------------------------------------------------
-- addresses and ports
---------------------------------------------------------------------------

local function is_v6(host) return host:find(":", 1, true) ~= nil end

local function join_addr(host, port)
  if is_v6(host) then return "[" .. host .. "]:" .. port end
  return host .. ":" .. port
end

local function split_addr(s)
  local host, port = s:match("^%[([%x:%.]+)%]:(%d+)$")
  if not host then host, port = s:match("^([%w%.%-]+):(%d+)$") end
  return host, tonumber(port)
end

local WILDCARD = { ["0.0.0.0"] = "127.0.0.1", ["::"] = "::1" }

-- The host to connect to for a listen host.
local function connect_host(host)
  return WILDCARD[host] or host
end

local function is_local(host)
  return host == "localhost" or host == "::1" or WILDCARD[host] ~= nil or host:match("^127%.") ~= nil
end

--- A port on `host` that was free a moment ago.
local function free_port(host)
  local s = is_v6(host) and socket.tcp6() or socket.tcp()
  if not s then return nil, "cannot create a socket" end
  if is_v6(host) then s:setoption("ipv6-v6only", true) end
  local ok, err = s:bind(host, 0)
  if not ok then
    s:close()
    return nil, fmt("cannot bind %s: %s", host, tostring(err))
  end
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function port_open(host, port)
  local c = is_v6(host) and socket.tcp6() or socket.tcp()
  if not c then return false end
  c:settimeout(0.5)
  local ok = c:connect(host, port)
  c:close()
  return ok ~= nil
end

---------------------------------------------------------------------------
-- serialising plain data (plan files, origin records): one line per value
---------------------------------------------------------------------------

local function quote(s)
  return (fmt("%q", s):gsub("\\\n", "\\n"))
end

local function serialize(v, out)
  local tv = type(v)
  if tv == "string" then
    out[#out + 1] = quote(v)
  elseif tv == "number" then
    if v % 1 == 0 and v > -2^53 and v < 2^53 then out[#out + 1] = fmt("%d", v)
    else out[#out + 1] = fmt("%.17g", v) end
  elseif tv == "boolean" or tv == "nil" then
    out[#out + 1] = tostring(v)
  elseif tv == "table" then
    out[#out + 1] = "{"
    local n = #v
    for i = 1, n do
      serialize(v[i], out)
      out[#out + 1] = ","
    end
    for k, x in pairs(v) do
      if not (type(k) == "number" and k >= 1 and k <= n and k % 1 == 0) then
        out[#out + 1] = "["
        serialize(k, out)
        out[#out + 1] = "]="
        serialize(x, out)
        out[#out + 1] = ","
      end
    end
    out[#out + 1] = "}"
  else
    error("cannot serialise a " .. tv, 0)
  end
  return out
end

local function dump(v) return concat(serialize(v, {})) end

local function undump(text, name)
  local f, err = loadstring("return " .. text, "=" .. (name or "data"))
  if not f then return nil, err end
  setfenv(f, {})
  local ok, v = pcall(f)
  if not ok then return nil, v end
  return v
end

---------------------------------------------------------------------------
-- HTTP/1.1 client (what proxy:request uses)
---------------------------------------------------------------------------

-- Adds headers given as { name = value | {values} } or { {name, value}, ... }.
local function each_header(headers, fn)
  if not headers then return end
  if headers[1] ~= nil then
    for _, kv in ipairs(headers) do fn(kv[1], kv[2]) end
    return
  end
  local names = {}
  for k in pairs(headers) do names[#names + 1] = k end
  sort(names)
  for _, k in ipairs(names) do
    local v = headers[k]
    if type(v) == "table" then
      for _, x in ipairs(v) do fn(k, x) end
    else
      fn(k, v)
    end
  end
end

-- Header map: lower-case name -> value, repeated values joined by ", ".
local function add_to_map(map, name, value)
  local k = name:lower()
  map[k] = map[k] and (map[k] .. ", " .. value) or value
end

local BODY_METHODS = { POST = true, PUT = true, PATCH = true }

local function request_bytes(req, host_header)
  local method = (req.method or "GET"):upper()
  local lines = { fmt("%s %s HTTP/1.1", method, req.path or "/") }
  local has = {}
  each_header(req.headers, function(n, v)
    has[n:lower()] = true
    lines[#lines + 1] = n .. ": " .. tostring(v)
  end)
  if not has.host then table.insert(lines, 2, "Host: " .. host_header) end
  local body = req.body or ""
  if (body ~= "" or BODY_METHODS[method]) and not has["content-length"] and not has["transfer-encoding"] then
    lines[#lines + 1] = "Content-Length: " .. #body
  end
  return concat(lines, "\r\n") .. "\r\n\r\n" .. body, method
end

-- A reader over a blocking luasocket connection with one overall deadline.
local function reader(sock, deadline)
  local function arm()
    local left = deadline - gettime()
    if left <= 0 then return false end
    sock:settimeout(left)
    return true
  end
  local r = {}
  function r.line()
    if not arm() then return nil, "timeout" end
    return sock:receive("*l")
  end
  function r.bytes(n)
    if n == 0 then return "" end
    if not arm() then return nil, "timeout" end
    return sock:receive(n)
  end
  function r.rest()
    if not arm() then return nil, "timeout" end
    local data, err, partial = sock:receive("*a")
    if data then return data end
    return nil, err, partial
  end
  return r
end

local function read_head(r)
  local line, err = r.line()
  if not line then return nil, "reading the status line: " .. tostring(err) end
  local version, status, reason = line:match("^HTTP/(%d%.%d) (%d%d%d) ?(.*)$")
  if not version then return nil, "bad status line: " .. line end
  local res = { status = tonumber(status), reason = reason, version = version, headers = {}, header_list = {} }
  while true do
    local h, e = r.line()
    if not h then return nil, "reading the response head: " .. tostring(e) end
    if h == "" then break end
    local name, value = h:match("^([^:]+):[ \t]*(.-)[ \t]*$")
    if not name then return nil, "bad header line: " .. h end
    res.header_list[#res.header_list + 1] = { name, value }
    add_to_map(res.headers, name, value)
  end
  return res
end

local function read_chunked(r)
  local parts = {}
  while true do
    local line, err = r.line()
    if not line then return nil, "reading a chunk size: " .. tostring(err) end
    local size = tonumber(line:match("^%s*(%x+)"), 16)
    if not size then return nil, "bad chunk size line: " .. line end
    if size == 0 then
      repeat
        local t, e = r.line()
        if not t then return nil, "reading trailers: " .. tostring(e) end
      until t == ""
      return concat(parts)
    end
    local data, e = r.bytes(size)
    if not data then return nil, "reading a chunk: " .. tostring(e) end
    parts[#parts + 1] = data
    local crlf, e2 = r.line()
    if crlf ~= "" then return nil, "bad chunk end: " .. tostring(crlf or e2) end
  end
end

local function read_response(r, method)
  local res, err
  repeat
    res, err = read_head(r)
    if not res then return nil, err end
  until res.status >= 200 or res.status == 101
  local s = res.status
  local te = (res.headers["transfer-encoding"] or ""):lower()
  if method == "HEAD" or s < 200 or s == 204 or s == 304 then
    res.body = ""
  elseif te:match("chunked%s*$") then
    res.body, err = read_chunked(r)
    if not res.body then return nil, err end
  elseif res.headers["content-length"] then
    local n = tonumber(res.headers["content-length"])
    if not n then return nil, "bad content-length: " .. res.headers["content-length"] end
    res.body, err = r.bytes(n)
    if not res.body then return nil, "reading the body: " .. tostring(err) end
  else
    local partial
    res.body, err, partial = r.rest()
    if not res.body then return nil, "reading a body delimited by close: " .. tostring(err), partial end
  end
  return res
end

--- One request on a fresh connection to host:port. Returns the response or
--- nil, err.
local function http_request(host, port, req, timeout)
  local deadline = gettime() + (timeout or 10)
  local sock = is_v6(host) and socket.tcp6() or socket.tcp()
  sock:settimeout(timeout or 10)
  local ok, err = sock:connect(host, port)
  if not ok then
    sock:close()
    return nil, fmt("connect %s: %s", join_addr(host, port), tostring(err))
  end
  sock:setoption("tcp-nodelay", true)
  local bytes, method = request_bytes(req, join_addr(host, port))
  local sent, serr = sock:send(bytes)
  if not sent then
    sock:close()
    return nil, "sending the request: " .. tostring(serr)
  end
  local res, rerr = read_response(reader(sock, deadline), method)
  sock:close()
  return res, rerr
end

---------------------------------------------------------------------------
-- the wrapper config moongate loads instead of the user's file
---------------------------------------------------------------------------

-- Runs in moongate's own Lua state (main thread and every worker), so it may
-- only use what moongate's Lua has: the moongate library and the stdlib.
local WRAPPER = [==[
-- Written by moongate.testing: runs the config under test with the test's
-- ports and log paths. See lua/moongate/testing.lua.
local mg = require "moongate"
local plan = dofile(%s)
local config = plan.config
local dir = config:match("^(.*)/[^/]*$") or "."
-- relative paths in the user's config are relative to the user's folder
if mg._reset then mg._reset(dir) end
local own = dir .. "/?.lua;" .. dir .. "/?/init.lua;"
if package.path:sub(1, #own) ~= own then package.path = own .. package.path end

local chunk, err = loadfile(config)
if not chunk then error(err, 0) end
local ok, perr = pcall(chunk)
if not ok then
  perr = tostring(perr)
  local shown, rest = perr:match("^%%.%%.%%.(.-)(:%%d+:.*)$")
  if shown and config:sub(-#shown) == shown then perr = config .. rest end
  error(perr, 0)
end

local st = mg._state()
local function key(host, port)
  if host:find(":", 1, true) then return "[" .. host .. "]:" .. port end
  return host .. ":" .. port
end

if plan.mode == "discover" then
  local q = function(s) return string.format("%%q", s) end
  local out = { "return { access_log = ", st.config.access_log == false and "false" or "true",
                ", listeners = {" }
  for _, l in ipairs(st.listeners) do
    out[#out + 1] = string.format("{ addr = %%s, host = %%s, port = %%d, name = %%s },",
      q(key(l.host, l.port)), q(l.host), l.port, l.name and q(l.name) or "nil")
  end
  out[#out + 1] = "}, upstreams = {"
  for _, u in ipairs(st.upstreams) do
    out[#out + 1] = "{ name = " .. q(u.name) .. ", servers = {"
    for _, s in ipairs(u.servers) do
      out[#out + 1] = string.format("{ addr = %%s, host = %%s, port = %%d, weight = %%d },",
        q(key(s.host, s.port)), q(s.host), s.port, s.weight)
    end
    out[#out + 1] = "} },"
  end
  out[#out + 1] = "} }\n"
  local f = assert(io.open(plan.out, "w"))
  f:write(table.concat(out))
  f:close()
else
  for _, l in ipairs(st.listeners) do
    local to = plan.listen[key(l.host, l.port)]
    if to then l.host, l.port = to.host, to.port end
  end
  for _, u in ipairs(st.upstreams) do
    for _, s in ipairs(u.servers) do
      local to = plan.servers[key(s.host, s.port)]
      if to then s.host, s.port = to.host, to.port end
    end
  end
end
-- test overrides (opts.set), then the log and pid paths of the test folder
if plan.set then mg.config(plan.set) end
if plan.force then mg.config(plan.force) end
]==]

local function write_plan(dir, plan)
  return write_file(dir .. "/plan.lua", "return " .. dump(plan) .. "\n")
end

local function tail(s, n)
  s = s or ""
  if #s > n then return "...\n" .. s:sub(-n) end
  return s
end

---------------------------------------------------------------------------
-- moongate instances
---------------------------------------------------------------------------

local Proxy = {}
Proxy.__index = Proxy

local function resolve_upstream_target(v, what)
  if type(v) == "table" and v.host and v.port then return v.host, v.port end
  if type(v) == "string" then
    local h, p = split_addr(v)
    if h then return h, p end
  end
  error(what .. " must be an origin (t.origin) or \"host:port\", got " .. tostring(v), 3)
end

-- Builds the run plan from what discovery found: a free port for each listen
-- address, and where each upstream server goes.
local function build_mapping(found, opts)
  local listen, servers, listeners = {}, {}, {}
  for _, l in ipairs(found.listeners) do
    local port, err = free_port(l.host)
    if not port then return nil, "listen " .. l.addr .. ": " .. err end
    listen[l.addr] = { host = l.host, port = port }
    listeners[#listeners + 1] = { addr = l.addr, name = l.name, host = l.host, port = port,
                                  connect = connect_host(l.host) }
  end
  local known = {}
  for _, u in ipairs(found.upstreams) do
    for _, s in ipairs(u.servers) do known[s.addr] = true end
  end
  for addr, target in pairs(opts.upstreams or {}) do
    local h0, p0 = split_addr(addr)
    local norm = h0 and join_addr(h0, p0)
    if not norm or not known[norm] then
      return nil, fmt("opts.upstreams: no upstream server '%s' in the config", tostring(addr))
    end
    local h, p = resolve_upstream_target(target, "opts.upstreams['" .. addr .. "']")
    servers[norm] = { host = h, port = p }
  end
  local upstreams = {}
  for _, u in ipairs(found.upstreams) do
    local list = {}
    for _, s in ipairs(u.servers) do
      local to = servers[s.addr]
      if not to then
        -- a server that is one of the config's own listeners follows it
        to = listen[s.addr] and { host = s.host, port = listen[s.addr].port }
        if not to and is_local(s.host) then
          for _, l in ipairs(found.listeners) do
            if l.port == s.port and is_local(l.host) then
              to = { host = s.host, port = listen[l.addr].port }
              break
            end
          end
        end
        servers[s.addr] = to
      end
      list[#list + 1] = { addr = s.addr, weight = s.weight,
                          to = to and join_addr(to.host, to.port) or s.addr }
    end
    upstreams[u.name] = list
  end
  return { listen = listen, servers = servers, listeners = listeners, upstreams = upstreams }
end

--- Starts moongate on a config. opts:
---   config     path of the proxy.lua to test (required)
---   upstreams  { ["host:port as in the config"] = origin or "host:port" }
---   set        mg.config keys to override, e.g. { workers = 1 }
---   env        extra environment variables for moongate
---   cwd        moongate's working folder (default: the config's folder)
---   bin        the moongate binary (default $MOONGATE_BIN, build/moongate)
---   timeout    seconds to wait until every listener accepts (default 10)
--- Returns the instance or nil, err.
function _M.start(opts)
  if type(opts) == "string" then opts = { config = opts } end
  if type(opts) ~= "table" or type(opts.config) ~= "string" then
    error("moongate.testing.start: expects { config = \"path/to/proxy.lua\", ... }", 2)
  end
  if opts.set ~= nil and type(opts.set) ~= "table" then error("start: 'set' must be a table", 2) end
  if opts.upstreams ~= nil and type(opts.upstreams) ~= "table" then
    error("start: 'upstreams' must be a table", 2)
  end
  local bin, berr = find_binary(opts)
  if not bin then return nil, berr end
  local config = stdlib.realpath(opts.config)
  if not config then return nil, "config not found: " .. opts.config end
  local dir, derr = make_tmpdir("moongate-test")
  if not dir then return nil, derr end

  local function fail(msg)
    drop_tmpdir(dir)
    return nil, msg
  end

  local wrapper = dir .. "/wrapper.lua"
  -- moongate's messages name the wrapper: an error at one of its lines comes
  -- from opts.set; any other mention means the user's file
  local function unwrap(text)
    text = (text or ""):gsub(escape_pattern(wrapper) .. ":%d+:", "moongate.testing start { set = ... }:")
    return (text:gsub(escape_pattern(wrapper), config))
  end
  write_file(wrapper, fmt(WRAPPER, quote(dir .. "/plan.lua")))
  local env = moongate_env(opts.env)
  local log = dir .. "/error.log"

  -- 1. discovery: `moongate -t` over the wrapper records the listen addresses
  -- and upstream servers (and validates the config and opts.set).
  write_plan(dir, { mode = "discover", config = config, out = dir .. "/found.lua", set = opts.set })
  local check_log = dir .. "/check.log"
  local pid, serr = spawn({ bin, "-t", "-c", wrapper }, { log = check_log, env = env, cwd = dir })
  if not pid then return fail(serr) end
  local how, code = reap(pid, opts.timeout or 10)
  if how == nil then
    signal.kill(pid, signal.SIGKILL)
    reap(pid, 5)
    return fail("moongate -t did not finish: " .. unwrap(read_file(check_log)))
  end
  if how ~= "exited" or code ~= 0 then
    return fail(fmt("moongate -t %s (%s %s):\n%s", config, tostring(how), tostring(code),
      unwrap(read_file(check_log))))
  end
  local found, ferr = undump((read_file(dir .. "/found.lua") or ""):gsub("^return ", ""), "found")
  if type(found) ~= "table" then return fail("reading the discovered addresses: " .. tostring(ferr)) end

  local force = { error_log = "-", pid = dir .. "/moongate.pid" }
  if found.access_log then force.access_log = dir .. "/access.log" end
  if opts.set then
    for _, k in ipairs { "error_log", "pid", "access_log" } do
      if opts.set[k] ~= nil then force[k] = nil end
    end
  end

  -- where an access log given in opts.set ends up (relative: the temp folder)
  local set_log = opts.set and opts.set.access_log
  if set_log == "-" or type(set_log) ~= "string" then set_log = nil
  elseif set_log:sub(1, 1) ~= "/" then set_log = dir .. "/" .. set_log end

  -- 2. run it on fresh ports; again on new ones when a port was taken meanwhile
  local last_err
  for _ = 1, 3 do
    local map, merr = build_mapping(found, opts)
    if not map then return fail(merr) end
    write_plan(dir, { mode = "run", config = config, listen = map.listen, servers = map.servers,
                      set = opts.set, force = force })
    os.remove(log)
    local mpid, perr = spawn({ bin, "-c", wrapper }, { log = log, env = env, cwd = opts.cwd or dirname(config) })
    if not mpid then return fail(perr) end
    local p = setmetatable({
      pid = mpid, dir = dir, config = config, bin = bin, log = log,
      access_log = force.access_log or set_log,
      listeners = map.listeners, upstreams = map.upstreams,
      ports = {}, addrs = {},
    }, Proxy)
    for _, l in ipairs(map.listeners) do
      p.ports[l.addr] = l.port
      p.addrs[l.addr] = join_addr(l.connect, l.port)
    end
    live[p] = true
    local deadline = gettime() + (opts.timeout or 10)
    local ready, died = true, false
    for _, l in ipairs(map.listeners) do
      while not port_open(l.connect, l.port) do
        local h, c = reap(mpid, 0)
        if h then
          p.exit_how, p.exit_code, died = h, c, true
          break
        end
        if gettime() > deadline then break end
        sleep(0.02)
      end
      if died or not port_open(l.connect, l.port) then
        ready = false
        last_err = fmt("moongate did not listen on %s (for %s)", join_addr(l.connect, l.port), l.addr)
        break
      end
    end
    if ready then return p end
    live[p] = nil
    if not died then
      terminate(mpid, 5)
      return fail(last_err .. ":\n" .. tail(unwrap(read_file(log)), 4000))
    end
    local text = unwrap(read_file(log))
    last_err = fmt("%s; moongate %s %s:\n%s", last_err, tostring(p.exit_how), tostring(p.exit_code), tail(text, 4000))
    if not text:lower():find("in use", 1, true) then break end
  end
  return fail(last_err)
end

--- host, port to connect to for a listener: nil (the first), the address as
--- written in the config ("127.0.0.1:8080"), its name ("front"), or a port.
function Proxy:addr(listen)
  local ls = self.listeners
  if listen == nil then return ls[1].connect, ls[1].port end
  for _, l in ipairs(ls) do
    if l.addr == listen or l.name == listen then return l.connect, l.port end
  end
  if type(listen) == "string" then
    local h, p = split_addr(listen)
    if h then
      local k = join_addr(h, p)
      for _, l in ipairs(ls) do
        if l.addr == k then return l.connect, l.port end
      end
    end
  end
  local port = tonumber(listen)
  for _, l in ipairs(ls) do
    if tonumber(l.addr:match(":(%d+)$")) == port then return l.connect, l.port end
  end
  error("no listener " .. tostring(listen) .. " in " .. self.config, 2)
end

--- "http://127.0.0.1:PORT/path" for a listener (see Proxy:addr).
function Proxy:url(path, listen)
  local host, port = self:addr(listen)
  return "http://" .. join_addr(host, port) .. (path or "/")
end

--- Sends one request on a fresh connection. req: a path string, or
--- { method = "GET", path = "/", headers = {...}, body = "", listen = ..., timeout = 10 }.
--- Returns { status, reason, headers (lower-case names; repeated values joined
--- by ", "), header_list ({name, value} in order), body } or nil, err.
function Proxy:request(req)
  if type(req) == "string" then req = { path = req } end
  if type(req) ~= "table" then error("request: expects a path or a table", 2) end
  local host, port = self:addr(req.listen)
  return http_request(host, port, req, req.timeout)
end

--- The error log so far (moongate's stderr: error_log is sent there).
function Proxy:read_log()
  return read_file(self.log) or ""
end

--- The access log lines so far (JSON strings), or {} when the config has none.
function Proxy:access_lines()
  local t = {}
  for line in (self.access_log and read_file(self.access_log) or ""):gmatch("[^\n]+") do t[#t + 1] = line end
  return t
end

--- True while the process runs.
function Proxy:alive()
  if self.exit_how then return false end
  local how, code = reap(self.pid, 0)
  if how or code == "gone" then
    self.exit_how, self.exit_code = how or "gone", code
    return false
  end
  return true
end

--- SIGTERM (graceful drain) and wait up to `timeout` seconds (default 35),
--- then SIGKILL. Returns the exit code, or nil, "killed", signal / nil, "timeout".
--- The temp folder (logs) stays until stop_all().
function Proxy:stop(timeout)
  if not self.exit_how then
    local how, code = terminate(self.pid, timeout or 35)
    self.exit_how, self.exit_code = how or code, how and code or nil
  end
  live[self] = nil
  if self.exit_how == "exited" then return self.exit_code end
  return nil, self.exit_how, self.exit_code
end

---------------------------------------------------------------------------
-- stub origins
---------------------------------------------------------------------------

local REASONS = {
  [100] = "Continue", [200] = "OK", [201] = "Created", [202] = "Accepted", [204] = "No Content",
  [206] = "Partial Content", [301] = "Moved Permanently", [302] = "Found", [303] = "See Other",
  [304] = "Not Modified", [307] = "Temporary Redirect", [308] = "Permanent Redirect",
  [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden", [404] = "Not Found",
  [405] = "Method Not Allowed", [408] = "Request Timeout", [409] = "Conflict", [410] = "Gone",
  [413] = "Content Too Large", [429] = "Too Many Requests", [500] = "Internal Server Error",
  [501] = "Not Implemented", [502] = "Bad Gateway", [503] = "Service Unavailable",
  [504] = "Gateway Timeout",
}

local RESPONSE_KEYS = { status = true, body = true, headers = true, delay = true, close = true }

-- A handler from what t.origin was given.
local function make_handler(spec, name)
  if spec == nil then
    return function() return 200, name .. "\n", { ["content-type"] = "text/plain" } end
  end
  if type(spec) == "function" then return spec end
  if type(spec) ~= "table" then error("origin: expects a function, a table or nil", 3) end
  local paths, canned = {}, true
  for k in pairs(spec) do
    if type(k) == "string" and k:sub(1, 1) == "/" then
      paths[#paths + 1] = k
      canned = false
    elseif not RESPONSE_KEYS[k] then
      error("origin: table keys are paths (\"/...\") or one response (status, body, headers, delay, close); got "
        .. tostring(k), 3)
    end
  end
  if canned then return function() return spec end end
  for k in pairs(spec) do
    if RESPONSE_KEYS[k] then error("origin: do not mix paths and response keys in one table", 3) end
  end
  sort(paths, function(a, b) return #a > #b end)
  return function(req)
    for _, p in ipairs(paths) do
      if req.path:sub(1, #p) == p then
        local v = spec[p]
        if type(v) == "function" then return v(req) end
        return v
      end
    end
    return 404, "no stub response for " .. req.path .. "\n", { ["content-type"] = "text/plain" }
  end
end

local ReqMethods = {}
ReqMethods.__index = ReqMethods
--- A header of the received request (case-insensitive; repeats joined by ", ").
function ReqMethods:header(name) return self.headers[name:lower()] end

-- Everything below up to t.origin runs in the forked child only.

local child_now = gettime

-- I/O for one connection coroutine; the socket is non-blocking.
local function conn_io(c)
  local io_ = {}
  function io_.fill()
    while true do
      local data, err, partial = c.sock:receive(65536)
      local got = data or partial
      if got and #got > 0 then
        c.buf = c.buf .. got
        return true
      end
      if err ~= "timeout" then return false end
      coroutine.yield("r")
    end
  end
  function io_.until_(delim, limit)
    local from = 1
    while true do
      local i, j = c.buf:find(delim, from, true)
      if i then
        local out = c.buf:sub(1, i - 1)
        c.buf = c.buf:sub(j + 1)
        return out
      end
      if #c.buf > limit then return nil, "too long" end
      from = math.max(1, #c.buf - #delim + 2)
      if not io_.fill() then return nil, "closed" end
    end
  end
  function io_.take(n)
    local parts, have = { c.buf }, #c.buf
    c.buf = ""
    while have < n do
      if not io_.fill() then return nil, "closed" end
      parts[#parts + 1] = c.buf
      have = have + #c.buf
      c.buf = ""
    end
    local all = concat(parts)
    c.buf = all:sub(n + 1)
    return all:sub(1, n)
  end
  function io_.send(data)
    local i = 1
    while i <= #data do
      local n, err, partial = c.sock:send(data, i)
      if n then
        i = n + 1
      elseif err == "timeout" then
        i = (partial or (i - 1)) + 1
        coroutine.yield("w")
      else
        return false
      end
    end
    return true
  end
  return io_
end

local function response_bytes(method, r)
  local status = tonumber(r.status) or 200
  local body = r.body == nil and "" or tostring(r.body)
  local lines = { fmt("HTTP/1.1 %d %s", status, REASONS[status] or "Status") }
  local has = {}
  each_header(r.headers, function(n, v)
    has[n:lower()] = true
    lines[#lines + 1] = n .. ": " .. tostring(v)
  end)
  local no_body = method == "HEAD" or status < 200 or status == 204 or status == 304
  local chunked = (has["transfer-encoding"] and true) or false
  if not no_body and not chunked and not has["content-length"] then
    lines[#lines + 1] = "Content-Length: " .. #body
  end
  if r.close_after then lines[#lines + 1] = "Connection: close" end
  local head = concat(lines, "\r\n") .. "\r\n\r\n"
  if no_body then return head end
  if chunked then
    if body == "" then return head .. "0\r\n\r\n" end
    return head .. fmt("%x\r\n", #body) .. body .. "\r\n0\r\n\r\n"
  end
  return head .. body
end

local function serve_connection(c, state)
  local io_ = conn_io(c)
  while true do
    local head = io_.until_("\r\n\r\n", 65536)
    if not head then return end
    if head ~= "" then
      local first, rest = head:match("^([^\r\n]*)\r?\n?(.*)$")
      local method, target, version = first:match("^(%S+) (%S+) HTTP/(%d%.%d)$")
      if not method then
        io_.send("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        return
      end
      local req = setmetatable({ method = method, target = target, version = version,
                                 headers = {}, header_list = {}, conn = c.id }, ReqMethods)
      req.path, req.query = target:match("^([^?]*)%??(.*)$")
      for line in (rest .. "\r\n"):gmatch("([^\r\n]*)\r?\n") do
        local n, v = line:match("^([^:]+):[ \t]*(.-)[ \t]*$")
        if n then
          req.header_list[#req.header_list + 1] = { n, v }
          add_to_map(req.headers, n, v)
        end
      end
      local h = req.headers
      if (h.expect or ""):lower() == "100-continue" then io_.send("HTTP/1.1 100 Continue\r\n\r\n") end
      local body, berr = "", nil
      if (h["transfer-encoding"] or ""):lower():match("chunked") then
        local parts = {}
        while true do
          local line = io_.until_("\r\n", 4096)
          local size = line and tonumber(line:match("^%s*(%x+)"), 16)
          if not size then berr = "bad chunked body" break end
          if size == 0 then
            repeat local t = io_.until_("\r\n", 65536) until t == nil or t == ""
            break
          end
          local data = io_.take(size + 2)
          if not data then berr = "body cut short" break end
          parts[#parts + 1] = data:sub(1, -3)
        end
        body = concat(parts)
      elseif h["content-length"] then
        body, berr = io_.take(tonumber(h["content-length"]) or 0)
        body = body or ""
      end
      req.body = body
      state.seq = state.seq + 1
      req.seq = state.seq
      req.time = child_now()
      if berr then req.error = berr end
      state.record(req)
      if berr then return end

      local ok, a, b, hd = pcall(state.handler, req)
      local r
      if not ok then
        state.record({ seq = req.seq, error = tostring(a) })
        r = { status = 500, body = "stub origin handler error: " .. tostring(a) .. "\n",
              headers = { ["content-type"] = "text/plain" } }
      elseif type(a) == "table" then
        r = { status = a.status, body = a.body, headers = a.headers, delay = a.delay, close = a.close }
      elseif a == nil then
        r = { status = 200, body = "" }
      else
        r = { status = a, body = b, headers = hd }
      end
      if r.delay and r.delay > 0 then coroutine.yield("t", child_now() + r.delay) end
      if r.close then return end
      local conn_hdr = (h.connection or ""):lower()
      r.close_after = conn_hdr:find("close", 1, true) ~= nil
        or (version == "1.0" and not conn_hdr:find("keep-alive", 1, true))
      if not io_.send(response_bytes(method, r)) or r.close_after then return end
    end
  end
end

-- The child's loop: accept, pump every connection's coroutine, exit when the
-- parent is gone. Never returns.
local function run_origin(server, handler, records, parent)
  local rec = assert(io.open(records, "a"))
  local state = { seq = 0, handler = handler }
  function state.record(t)
    local copy = {}
    for k, v in pairs(t) do copy[k] = v end
    rec:write(dump(copy), "\n")
    rec:flush()
  end
  function ReqMethods.sleep(_, seconds)
    coroutine.yield("t", child_now() + seconds)
  end
  server:settimeout(0)
  local conns, next_id = {}, 0

  local function step(c)
    local ok, want, wake = coroutine.resume(c.co)
    if coroutine.status(c.co) == "dead" then
      if not ok then io.stderr:write("stub origin: ", tostring(want), "\n") end
      c.sock:close()
      conns[c.sock] = nil
    else
      c.want, c.wake = want, wake
    end
  end

  while true do
    local now = child_now()
    local rset, wset, timeout = { server }, {}, 0.5
    local due = {}
    for s, c in pairs(conns) do
      if c.want == "r" then rset[#rset + 1] = s
      elseif c.want == "w" then wset[#wset + 1] = s
      elseif c.want == "t" then
        if c.wake <= now then due[#due + 1] = c
        else timeout = math.min(timeout, c.wake - now) end
      end
    end
    if #due > 0 then timeout = 0 end
    local r, w = socket.select(rset, wset, timeout)
    for _, c in ipairs(due) do step(c) end
    for _, s in ipairs(r or {}) do
      if s == server then
        while true do
          local cs = server:accept()
          if not cs then break end
          cs:settimeout(0)
          cs:setoption("tcp-nodelay", true)
          next_id = next_id + 1
          local c = { sock = cs, buf = "", id = next_id }
          c.co = coroutine.create(function() serve_connection(c, state) end)
          conns[cs] = c
          step(c)
        end
      elseif conns[s] and conns[s].want == "r" then
        step(conns[s])
      end
    end
    for _, s in ipairs(w or {}) do
      if conns[s] and conns[s].want == "w" then step(conns[s]) end
    end
    if unistd.getppid() ~= parent then unistd._exit(0) end
  end
end

local Origin = {}
Origin.__index = Origin
local origin_count = 0

--- Starts a stub origin in a child process. `spec`:
---   nil                        answers 200 "<name>\n" to everything
---   function(req) ... end      returns status, body, headers or a table
---                              { status, body, headers, delay = s, close = true }
---   { status=, body=, ... }    that one response to every request
---   { ["/path"] = response or function, ... }   longest path prefix wins; else 404
--- opts: name, host (default "127.0.0.1"), port (default: any free one).
--- Returns the origin (fields addr, host, port, name, pid, log) or nil, err.
function _M.origin(spec, opts)
  opts = opts or {}
  origin_count = origin_count + 1
  local name = opts.name or ("origin" .. origin_count)
  local handler = make_handler(spec, name)
  local host = opts.host or "127.0.0.1"
  local server, err
  if is_v6(host) then
    server = socket.tcp6()
    server:setoption("ipv6-v6only", true)
    server:setoption("reuseaddr", true)
    local ok, e = server:bind(host, opts.port or 0)
    if ok then ok, e = server:listen(512) end
    if not ok then server:close() server, err = nil, e end
  else
    server, err = socket.bind(host, opts.port or 0, 512)
  end
  if not server then return nil, fmt("origin %s: cannot listen on %s: %s", name, host, tostring(err)) end
  local _, port = server:getsockname()
  port = tonumber(port)
  local dir, derr = make_tmpdir("moongate-test")
  if not dir then
    server:close()
    return nil, derr
  end
  local o = setmetatable({ name = name, host = host, port = port, addr = join_addr(host, port),
                           dir = dir, records = dir .. "/requests", log = dir .. "/origin.log" }, Origin)
  write_file(o.records, "")
  local parent = unistd.getpid()
  io.stdout:flush()
  io.stderr:flush()
  local pid, ferr = unistd.fork()
  if not pid then
    server:close()
    drop_tmpdir(dir)
    return nil, "fork: " .. tostring(ferr)
  end
  if pid == 0 then
    local ok, e = pcall(function()
      die_with_parent(parent)
      signal.signal(signal.SIGTERM, signal.SIG_DFL)
      signal.signal(signal.SIGINT, signal.SIG_DFL)
      signal.signal(signal.SIGPIPE, signal.SIG_IGN)
      -- Every descriptor inherited from the test process except the listening
      -- socket becomes /dev/null: copies of the test's sockets must not keep
      -- connections open, and the numbers stay taken, so a finalizer of an
      -- inherited Lua object closing "its" fd cannot hit one of ours.
      local keep = server:getfd()
      local null = fcntl.open("/dev/null", fcntl.O_RDWR)
      local out = fcntl.open(o.log, O_LOG, 420)
      for _, f in ipairs(dirent.dir("/proc/self/fd") or {}) do
        local fd = tonumber(f)
        if fd and fd > 2 and fd ~= keep and fd ~= null and fd ~= out then unistd.dup2(null, fd) end
      end
      unistd.dup2(null, 0)
      if out then
        unistd.dup2(out, 1)
        unistd.dup2(out, 2)
      end
      run_origin(server, handler, o.records, parent)
    end)
    if not ok then io.stderr:write("stub origin failed: ", tostring(e), "\n") end
    unistd._exit(ok and 0 or 1)
  end
  server:close()
  o.pid = pid
  live[o] = true
  return o
end

--- "http://host:port/path" of the origin itself.
function Origin:url(path)
  return "http://" .. self.addr .. (path or "/")
end

--- Every request received so far, oldest first: { method, target (as sent),
--- path, query, version, headers (lower-case names, repeats joined by ", "),
--- header_list, body, conn (connection number), seq, time, error (when the
--- handler raised one) }, with req:header(name).
function Origin:requests()
  local list, by_seq = {}, {}
  for line in (read_file(self.records) or ""):gmatch("([^\n]*)\n") do
    local t = undump(line, self.records)
    if type(t) == "table" then
      if t.method then
        setmetatable(t, ReqMethods)
        list[#list + 1] = t
        by_seq[t.seq] = t
      elseif t.seq and by_seq[t.seq] then
        by_seq[t.seq].error = t.error
      end
    end
  end
  return list
end

--- The last request received, or nil.
function Origin:last()
  local list = self:requests()
  return list[#list]
end

--- How many requests were received.
function Origin:count()
  return #self:requests()
end

--- Forgets the requests received so far.
function Origin:reset()
  write_file(self.records, "")
end

-- What a child process of ours (an origin, a redis-server) wrote to its log.
local function child_read_log(self)
  return read_file(self.log) or ""
end

-- Stops such a child (SIGTERM, then SIGKILL). Returns true.
local function child_stop(self)
  if not self.stopped then
    self.stopped = true
    terminate(self.pid, 5)
  end
  live[self] = nil
  return true
end

--- What the child wrote to stdout/stderr (handler prints, errors).
Origin.read_log = child_read_log

--- Stops the origin (SIGTERM, then SIGKILL). Returns true.
Origin.stop = child_stop

---------------------------------------------------------------------------
-- redis-server on a free port
---------------------------------------------------------------------------

local Redis = {}
Redis.__index = Redis

local function find_in_path(name)
  for dir in (os.getenv("PATH") or ""):gmatch("[^:]+") do
    if executable(dir .. "/" .. name) then return dir .. "/" .. name end
  end
end

-- A minimal RESP2 reader for Redis:command (independent of moongate.redis, so
-- that specs of that client assert through another parser). Returns value, or
-- nil, err; an error reply is nil, "ERR ...", a nil bulk is redis_null.
local redis_null = setmetatable({}, { __tostring = function() return "t.redis null" end })
local function resp_read(sock)
  local line, err = sock:receive("*l")
  if not line then return nil, err end
  local kind, rest = line:sub(1, 1), line:sub(2)
  if kind == "+" then return rest end
  if kind == "-" then return nil, rest end
  if kind == ":" then return tonumber(rest) end
  local n = tonumber(rest)
  if kind == "$" and n then
    if n < 0 then return redis_null end
    local data, derr = sock:receive(n + 2)
    if not data then return nil, derr end
    return data:sub(1, n)
  end
  if kind == "*" and n then
    if n < 0 then return redis_null end
    local list = {}
    for i = 1, n do
      local v, verr = resp_read(sock)
      if v == nil then
        if verr == "closed" or verr == "timeout" then return nil, verr end
        v = { false, verr }
      end
      list[i] = v
    end
    return list
  end
  return nil, "bad reply line: " .. line
end

local function resp_command(host, port, password, args, timeout)
  local sock = socket.tcp()
  sock:settimeout(timeout or 5)
  local ok, err = sock:connect(host, port)
  if not ok then
    sock:close()
    return nil, fmt("redis %s:%d: %s", host, port, tostring(err))
  end
  local function one(list)
    local parts = { "*" .. #list .. "\r\n" }
    for _, a in ipairs(list) do
      a = tostring(a)
      parts[#parts + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
    end
    local sent, serr = sock:send(concat(parts))
    if not sent then return nil, serr end
    return resp_read(sock)
  end
  if password then
    local r, aerr = one({ "AUTH", password })
    if not r then
      sock:close()
      return nil, "AUTH: " .. tostring(aerr)
    end
  end
  local v, verr = one(args)
  sock:close()
  return v, verr
end

--- Starts `redis-server` on a free loopback port, in a temp folder, with no
--- persistence. opts: password (requirepass), args (more "--name value"
--- arguments, a list of strings), bin (default $REDIS_SERVER or redis-server on
--- the PATH), timeout (seconds to wait for PONG, default 10).
--- Returns the server { host, port, addr, pid, dir, log, password } or
--- nil, err ("redis-server not installed (...)" when it is missing: a spec may
--- pending() with that).
function _M.redis(opts)
  if opts ~= nil and type(opts) ~= "table" then error("t.redis: opts must be a table", 2) end
  opts = opts or {}
  if opts.password ~= nil and type(opts.password) ~= "string" then error("t.redis: password must be a string", 2) end
  if opts.args ~= nil and type(opts.args) ~= "table" then error("t.redis: args must be a list of strings", 2) end
  local bin = opts.bin or os.getenv("REDIS_SERVER")
  if bin == nil or bin == "" then bin = find_in_path("redis-server") end
  if not bin or not executable(bin) then
    return nil, "redis-server not installed (apt-get install redis-server)"
  end
  local host = "127.0.0.1"
  local timeout = opts.timeout or 10
  local last_err
  for _ = 1, 3 do -- a port found free may be taken before redis binds it
    local port, perr = free_port(host)
    if not port then return nil, perr end
    local dir, derr = make_tmpdir("moongate-test")
    if not dir then return nil, derr end
    local r = setmetatable({ host = host, port = port, addr = join_addr(host, port), dir = dir,
                             log = dir .. "/redis.log", password = opts.password }, Redis)
    local argv = { bin, "--port", tostring(port), "--bind", host, "--save", "", "--appendonly", "no",
                   "--daemonize", "no", "--dir", dir, "--logfile", "" }
    if opts.password then
      argv[#argv + 1] = "--requirepass"
      argv[#argv + 1] = opts.password
    end
    for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = tostring(a) end
    local pid, serr = spawn(argv, { log = r.log, cwd = dir })
    if not pid then
      drop_tmpdir(dir)
      return nil, serr
    end
    r.pid = pid
    live[r] = true
    local deadline = gettime() + timeout
    local up = false
    while gettime() < deadline do
      if r:command("PING") == "PONG" then up = true break end
      local how = reap(pid, 0)
      if how then r.stopped = true break end -- it exited
      sleep(0.02)
    end
    if up then return r end
    local log = r:read_log()
    r:stop()
    drop_tmpdir(dir)
    last_err = fmt("redis-server did not come up on %s:%d; its log:\n%s", host, port, tail(log, 2000))
    if not log:find("Address already in use", 1, true) then break end
  end
  return nil, last_err
end

--- One command over a fresh connection (AUTH first when the server has a
--- password): status, integer, bulk, array as Lua values, a nil bulk as
--- t.redis_null; an error reply or a failure -> nil, message.
function Redis:command(...)
  local args = { ... }
  if #args == 0 then error("redis:command: give a command", 2) end
  return resp_command(self.host, self.port, self.password, args)
end

--- What redis-server wrote (its log goes to stdout, captured in the temp folder).
Redis.read_log = child_read_log

--- Stops the server (SIGTERM, then SIGKILL). Returns true.
Redis.stop = child_stop

_M.redis_null = redis_null

---------------------------------------------------------------------------
-- the rest of the API
---------------------------------------------------------------------------

--- Stops every moongate, origin and redis-server started here and removes their temp
--- folders (kept when MOONGATE_TEST_KEEP is set). Never raises; returns true.
function _M.stop_all()
  local procs = {}
  for obj in pairs(live) do procs[#procs + 1] = obj end
  for _, obj in ipairs(procs) do pcall(obj.stop, obj, 10) end
  for d in pairs(tmpdirs) do pcall(drop_tmpdir, d) end
  return true
end

--- Polls fn every `interval` seconds (default 0.02) until it returns a truthy
--- value or `timeout` seconds (default 5) pass; returns its last value.
function _M.wait_until(fn, timeout, interval)
  local deadline = gettime() + (timeout or 5)
  repeat
    local v = fn()
    if v then return v end
    sleep(interval or 0.02)
  until gettime() > deadline
  return fn()
end

_M.sleep = sleep

--- One request to any host:port (e.g. an origin directly): same result as
--- proxy:request. req.url may be "http://host:port/path".
function _M.request(req)
  if type(req) == "string" then req = { url = req } end
  local hostport, path = req.url:match("^http://([^/]+)(.*)$")
  local host, port = split_addr(hostport or "")
  if not host then error("request: url must be http://host:port/...", 2) end
  local r = {}
  for k, v in pairs(req) do r[k] = v end
  r.path = path ~= "" and path or "/"
  return http_request(host, port, r, req.timeout)
end

-- Last resort when a spec forgot its teardown: stop everything at the end of
-- the busted run (only when running under busted; nothing is loaded here).
do
  local busted = package.loaded.busted
  if type(busted) == "table" and type(busted.subscribe) == "function" then
    busted.subscribe({ "suite", "end" }, function()
      _M.stop_all()
      return nil, true
    end)
  end
end

return _M
