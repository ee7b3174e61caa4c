-- Integration helpers: start the real moongate binary and the test origin
-- (spec/support/origin.py) in throwaway folders, talk to them with raw sockets
-- or curl, and clean every process up again.
--
-- Everything a helper starts is recorded in `live`; `helpers.cleanup()` (called
-- from teardowns, and at the end of the busted run) kills what is still
-- running. When a test fails, the stderr of every running moongate and
-- origin is printed, since that is where the reason usually is.

local socket = require "socket"
local unistd = require "posix.unistd"
local wait = require "posix.sys.wait"
local signal = require "posix.signal"
local fcntl = require "posix.fcntl"
local stdlib = require "posix.stdlib"
local json = require "dkjson"

local helpers = {}

-- Repo root: this file is <root>/spec/helpers.lua.
local function this_dir()
  local src = debug.getinfo(1, "S").source:sub(2)
  local dir = src:match("^(.*)/[^/]*$") or "."
  return stdlib.realpath(dir) or dir
end
helpers.spec_dir = this_dir()
helpers.root = helpers.spec_dir:match("^(.*)/[^/]*$")

local function absolute(p)
  if p:sub(1, 1) == "/" then return p end
  return helpers.root .. "/" .. p
end

helpers.bin = absolute(os.getenv("MOONGATE_BIN") or "build/moongate")

-- moongate runs in its own temp folder, so the relative LUA_PATH of the test
-- runner would not find lua/moongate there: hand it absolute paths.
helpers.env = {
  LUA_PATH = helpers.root .. "/lua/?.lua;" .. helpers.root .. "/lua/?/init.lua;"
    .. (os.getenv("LUA_PATH") or ";"),
}
helpers.python = "/usr/bin/python3"
helpers.origin_script = helpers.spec_dir .. "/support/origin.py"
helpers.json = json
helpers.null = json.null

-- Processes and folders still to clean up: pid -> record, path -> true.
local live = {}
local tmpdirs = {}

---------------------------------------------------------------------------
-- small utilities
---------------------------------------------------------------------------

helpers.now = socket.gettime
helpers.sleep = socket.sleep

--- Poll `fn` every `interval` seconds until it returns a truthy value or
-- `timeout` seconds pass; returns the value or nil.
function helpers.wait_until(fn, timeout, interval)
  local deadline = socket.gettime() + (timeout or 5)
  repeat
    local v = fn()
    if v then return v end
    socket.sleep(interval or 0.02)
  until socket.gettime() > deadline
  return fn()
end

function helpers.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

function helpers.write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

function helpers.file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
helpers.shell_quote = shell_quote

--- Run argv (a list) through the shell; returns combined stdout+stderr and the
-- exit code.
function helpers.run(argv, opts)
  opts = opts or {}
  local parts = {}
  for k, v in pairs(opts.env or {}) do parts[#parts + 1] = k .. "=" .. shell_quote(v) end
  for _, a in ipairs(argv) do parts[#parts + 1] = shell_quote(a) end
  local cmd = table.concat(parts, " ")
  if opts.cwd then cmd = "cd " .. shell_quote(opts.cwd) .. " && " .. cmd end
  return helpers.sh(cmd)
end

--- Run a shell command line; returns its combined output and exit code.
function helpers.sh(cmd)
  local p = assert(io.popen("(" .. cmd .. ") 2>&1; echo \"__rc=$?\""))
  local out = p:read("*a")
  p:close()
  local body, rc = out:match("^(.*)__rc=(%d+)\n?$")
  return body, tonumber(rc)
end

--- wrk with the given arguments: its output. wrk gives up a connection whose
--- socket's descriptor number is past its event loop's size (10 + 3 per
--- connection), and a child of this process inherits every descriptor busted
--- has open (sockets of earlier specs not yet collected among them): so the
--- garbage is collected first and wrk starts with descriptors 0-2 only.
function helpers.wrk(args)
  return helpers.sh_fds("exec wrk " .. args, true)
end

--- Runs the shell command `cmd` (bash) with descriptors 0-2 only (the busted
--- process's other open descriptors closed first: wrk gives up connections
--- whose descriptor is past its event-loop size); its stderr dropped when
--- `quiet`. Returns what helpers.sh does. For several wrk runs at once.
function helpers.sh_fds(cmd, quiet)
  collectgarbage("collect")
  collectgarbage("collect")
  return helpers.sh("bash -c 'for f in /proc/$$/fd/*; do n=${f##*/}; [ \"$n\" -gt 2 ] && eval \"exec $n>&-\"; done; "
    .. cmd:gsub("'", "'\\''") .. "'" .. (quiet and " 2>/dev/null" or ""))
end

--- How many times `needle` (plain text) occurs in `text`.
function helpers.count(text, needle)
  local n, from = 0, 1
  while true do
    local i, j = text:find(needle, from, true)
    if not i then return n end
    n, from = n + 1, j + 1
  end
end

--- Run the moongate binary with args (a list); returns its combined output
-- and exit code. opts.cwd: the folder to run it in.
function helpers.moongate(args, opts)
  opts = opts or {}
  local argv = { helpers.bin }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local out, rc = helpers.run(argv, { cwd = opts.cwd, env = helpers.env })
  local report = helpers.sanitizer_report(out)
  if report then error("sanitizer report from moongate " .. table.concat(args, " ") .. ":\n" .. report, 2) end
  return out, rc
end

--- A fresh folder under /tmp, removed by helpers.cleanup() (unless
-- MG_KEEP_TMP is set, for post-mortems).
function helpers.tmpdir()
  local d = assert(stdlib.mkdtemp("/tmp/moongate-spec-XXXXXX"))
  tmpdirs[d] = true
  return d
end

local scratch
--- A temp folder shared by the helpers until the next cleanup.
function helpers.scratch()
  if not scratch then scratch = helpers.tmpdir() end
  return scratch
end

function helpers.sha256(data)
  local path = os.tmpname()
  helpers.write_file(path, data)
  local out = helpers.run({ "sha256sum", path })
  os.remove(path)
  return out:match("^(%x+)")
end

function helpers.sha256_file(path)
  return (helpers.run({ "sha256sum", path })):match("^(%x+)")
end

local pattern_cache = ""
--- The first n bytes of origin.py's body pattern: lines "%015d\n" % i.
function helpers.pattern(n)
  if #pattern_cache < n then
    local t = {}
    for i = 0, math.ceil(n / 16) - 1 do t[#t + 1] = string.format("%015d\n", i) end
    pattern_cache = table.concat(t)
  end
  return pattern_cache:sub(1, n)
end

--- A port that was free a moment ago (bound to port 0, then closed).
function helpers.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

--- True when something accepts TCP connections on 127.0.0.1:port.
function helpers.port_open(port)
  local c = socket.tcp()
  c:settimeout(0.5)
  local ok = c:connect("127.0.0.1", port)
  c:close()
  return ok ~= nil
end

--- A self-signed ECDSA P-256 certificate for `cn` (also its subjectAltName)
--- written as dir/cert.pem and dir/key.pem; returns the two paths.
function helpers.self_signed(dir, cn)
  cn = cn or "localhost"
  local out, rc = helpers.sh("cd " .. helpers.shell_quote(dir) .. " && timeout 30 openssl req -x509 -newkey ec "
    .. "-pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem -out cert.pem -days 30 "
    .. "-subj /CN=" .. cn .. " -addext subjectAltName=DNS:" .. cn .. " 2>&1")
  assert(rc == 0, "making a test certificate failed: " .. tostring(out))
  return dir .. "/cert.pem", dir .. "/key.pem"
end

--- Iterate over the complete, non-empty lines of text: those ended by "\n". A file
--- another process is appending to can be read while its last line is half
--- written; that part is left for a later read.
function helpers.lines(text)
  return (text or ""):gmatch("([^\n]+)\n")
end

function helpers.decode_json(s)
  local v, _, err = json.decode(s, 1, json.null)
  assert(v ~= nil, "bad JSON (" .. tostring(err) .. "): " .. tostring(s))
  return v
end

---------------------------------------------------------------------------
-- processes
---------------------------------------------------------------------------

--- fork/exec argv with stdout/stderr sent to files (appended); returns the pid.
function helpers.spawn(argv, opts)
  opts = opts or {}
  local pid = assert(unistd.fork())
  if pid == 0 then
    local function redirect(path, fd)
      if path then
        local f = fcntl.open(path, fcntl.O_WRONLY + fcntl.O_CREAT + fcntl.O_APPEND, 420)
        if f then unistd.dup2(f, fd) unistd.close(f) end
      end
    end
    local devnull = fcntl.open("/dev/null", fcntl.O_RDONLY)
    if devnull then unistd.dup2(devnull, 0) end
    redirect(opts.stdout or "/dev/null", 1)
    redirect(opts.stderr or "/dev/null", 2)
    -- Sockets the test holds must not live on in the child: a client's
    -- close would not reach moongate while a copy stays open.
    for fd = 3, 1023 do unistd.close(fd) end
    if opts.cwd then unistd.chdir(opts.cwd) end
    for k, v in pairs(opts.env or {}) do stdlib.setenv(k, v) end
    local args = {}
    for i = 2, #argv do args[i - 1] = argv[i] end
    args[0] = argv[1]
    unistd.execp(argv[1], args)
    unistd._exit(127)
  end
  live[pid] = { argv = argv, stderr = opts.stderr, label = opts.label or argv[1] }
  return pid
end

--- Wait up to `timeout` seconds for pid to exit. Returns "exited", code or
-- "killed", signal; nil, "running" on timeout.
function helpers.reap(pid, timeout)
  local deadline = socket.gettime() + (timeout or 0)
  while true do
    local p, how, code = wait.wait(pid, wait.WNOHANG)
    if p == pid then
      live[pid] = nil
      return how, code
    elseif p == nil then
      live[pid] = nil
      return nil, how -- not our child any more
    end
    if socket.gettime() > deadline then return nil, "running" end
    socket.sleep(0.01)
  end
end

function helpers.kill(pid, sig)
  return signal.kill(pid, sig or signal.SIGTERM)
end

--- SIGTERM, wait up to `timeout`, then SIGKILL. Returns how, code.
function helpers.terminate(pid, timeout)
  if not live[pid] then return nil, "gone" end
  helpers.kill(pid, signal.SIGTERM)
  local how, code = helpers.reap(pid, timeout or 10)
  if not how and code == "running" then
    helpers.kill(pid, signal.SIGKILL)
    helpers.reap(pid, 5)
    return "timeout"
  end
  return how, code
end

helpers.SIGTERM = signal.SIGTERM
helpers.SIGINT = signal.SIGINT
helpers.SIGQUIT = signal.SIGQUIT
helpers.SIGKILL = signal.SIGKILL

--- Kill every process the helpers started and remove their folders.
function helpers.cleanup()
  for pid in pairs(live) do
    signal.kill(pid, signal.SIGKILL)
    wait.wait(pid)
    live[pid] = nil
  end
  scratch = nil
  if not os.getenv("MG_KEEP_TMP") then
    for d in pairs(tmpdirs) do
      if d:match("^/tmp/moongate%-spec%-") then os.execute("rm -rf " .. shell_quote(d)) end
      tmpdirs[d] = nil
    end
  end
end

local function tail(s, n)
  if not s then return "(none)" end
  if #s > n then return "...\n" .. s:sub(-n) end
  return s
end

--- Print the stderr of every running process (used when a test fails).
function helpers.dump_logs(title)
  local out = {}
  for pid, rec in pairs(live) do
    if rec.stderr then
      out[#out + 1] = string.format("---- %s (pid %d) %s ----\n%s",
        rec.label, pid, rec.stderr, tail(helpers.read_file(rec.stderr), 4000))
    end
  end
  if #out > 0 then
    io.stderr:write("\n==== logs after failure: ", title or "", " ====\n",
      table.concat(out, "\n"), "\n==== end of logs ====\n")
  end
end

do
  local ok, busted = pcall(require, "busted")
  if ok and type(busted) == "table" and busted.subscribe then
    busted.subscribe({ "test", "end" }, function(element, _, status)
      if status == "failure" or status == "error" then
        helpers.dump_logs(element and element.name)
      end
      return nil, true
    end)
    -- Last resort when a spec forgot its teardown. (Not a __gc finalizer:
    -- running this cleanup while LuaJIT closes the state made runs hang.)
    busted.subscribe({ "suite", "end" }, function()
      helpers.cleanup()
      return nil, true
    end)
  end
end

---------------------------------------------------------------------------
-- the test origin
---------------------------------------------------------------------------

local Origin = {}
Origin.__index = Origin

--- Start origin.py. opts: name (default "origin"), port (default: any),
-- blackhole (a listener whose connects hang), delay (seconds every answer
-- waits: a slow server), tls ({ cert = PEM file, key = PEM
-- file, max_version = "1.2" (optional), client_ca = PEM file (optional: verify
-- client certificates; the echo's tls.client is the CN), client = "required" |
-- "optional" (default) }: the main port speaks TLS; the control port stays plain),
-- proxy_protocol (true: every connection must begin with a PROXY protocol v1/v2
-- header, before TLS; /echo reports it as "proxy" and "proxy_headers"), host (the
-- main port's loopback address, default 127.0.0.1: origins on 127.0.0.2 etc. may
-- share a port),
-- status_file (true: Origin:force_status(n) makes it answer every request with n).
-- as_path (every request is answered as one for this path: "/status/503",
-- "/reset-rst", "/slow-head/2": a fault in one origin of several).
-- Returns an object with port, ctrl (control port), addr
-- ("127.0.0.1:port"), name, log (request lines), tls (true when it serves TLS).
function helpers.origin(opts)
  opts = opts or {}
  local dir = opts.dir or helpers.tmpdir()
  local name = opts.name or "origin"
  local o = setmetatable({ name = name, dir = dir }, Origin)
  o.port_file = dir .. "/origin-" .. name .. ".port"
  o.log = dir .. "/origin-" .. name .. ".requests"
  o.stderr_path = dir .. "/origin-" .. name .. ".stderr"
  os.remove(o.port_file)
  local argv = { helpers.python, helpers.origin_script, "--name", name,
                 "--port-file", o.port_file, "--log", o.log }
  if opts.port then argv[#argv + 1] = "--port" argv[#argv + 1] = tostring(opts.port) end
  if opts.host then argv[#argv + 1] = "--host" argv[#argv + 1] = opts.host end
  if opts.blackhole then argv[#argv + 1] = "--blackhole" end
  if opts.delay then argv[#argv + 1] = "--delay" argv[#argv + 1] = tostring(opts.delay) end
  if opts.proxy_protocol then argv[#argv + 1] = "--proxy-protocol" end
  if opts.status_file then
    o.status_file = dir .. "/origin-" .. name .. ".status"
    os.remove(o.status_file)
    argv[#argv + 1] = "--status-file"
    argv[#argv + 1] = o.status_file
  end
  if opts.as_path then argv[#argv + 1] = "--as-path" argv[#argv + 1] = opts.as_path end
  if opts.tls then
    assert(opts.tls.cert and opts.tls.key, "helpers.origin: tls needs cert and key")
    for _, a in ipairs({ "--tls-cert", opts.tls.cert, "--tls-key", opts.tls.key }) do argv[#argv + 1] = a end
    if opts.tls.max_version then
      argv[#argv + 1] = "--tls-max"
      argv[#argv + 1] = opts.tls.max_version
    end
    if opts.tls.client_ca then
      for _, x in ipairs({ "--tls-client-ca", opts.tls.client_ca,
                           "--tls-client", opts.tls.client or "optional" }) do argv[#argv + 1] = x end
    end
    o.tls = true
  end
  o.pid = helpers.spawn(argv, { stderr = o.stderr_path, label = "origin " .. name })
  local content = helpers.wait_until(function() return helpers.read_file(o.port_file) end, 10)
  if not content then
    local err = helpers.read_file(o.stderr_path)
    helpers.terminate(o.pid, 2)
    error("origin " .. name .. " did not start: " .. tostring(err))
  end
  local p, c = content:match("^(%d+) (%d+)")
  o.port, o.ctrl = tonumber(p), tonumber(c)
  o.addr = (opts.host or "127.0.0.1") .. ":" .. o.port
  return o
end

--- The origin's counters (this query is not counted): { name, connections,
-- requests, open, body_bytes_sent, body_bytes_read }.
function Origin:stats()
  local c = helpers.connect(self.ctrl)
  c:send("GET /stats HTTP/1.1\r\nHost: ctrl\r\n\r\n")
  local res = assert(c:response())
  c:close()
  return helpers.decode_json(res.body)
end

--- Zero the connection and request counters.
function Origin:reset_stats()
  local c = helpers.connect(self.ctrl)
  c:send("GET /reset HTTP/1.1\r\nHost: ctrl\r\n\r\n")
  assert(c:response())
  c:close()
end

--- With status_file: every request gets `status` from now on (nil: as usual again).
function Origin:force_status(status)
  assert(self.status_file, "Origin:force_status needs helpers.origin { status_file = true }")
  helpers.write_file(self.status_file, status and tostring(status) or "")
end

--- How many request lines the origin has seen for `path` (exact target).
function Origin:count_path(path)
  local n = 0
  for _, line in ipairs(self:requests()) do
    if line:match("^%S+ (%S+)") == path then n = n + 1 end
  end
  return n
end

--- Request lines the origin has seen, as a list.
function Origin:requests()
  local t = {}
  for line in helpers.lines(helpers.read_file(self.log)) do t[#t + 1] = line end
  return t
end

function Origin:stop()
  return helpers.terminate(self.pid, 5)
end

---------------------------------------------------------------------------
-- moongate
---------------------------------------------------------------------------

local Proxy = {}
Proxy.__index = Proxy

--- Replace ${name} placeholders from vars; an unknown name is an error.
function helpers.expand(text, vars)
  return (text:gsub("%${([%w_]+)}", function(k)
    local v = vars[k]
    if v == nil then error("config placeholder ${" .. k .. "} has no value", 3) end
    return tostring(v)
  end))
end

--- Write `text` (placeholders expanded) as <dir>/proxy.lua; returns the path.
function helpers.write_config(dir, text, vars)
  local path = dir .. "/proxy.lua"
  helpers.write_file(path, helpers.expand(text, vars or {}))
  return path
end

--- Start moongate on a config. `text` may use ${port} (a free port picked
-- here), any name in opts.ports (more free ports) and any key of opts.vars.
-- Waits until every port in opts.wait_ports (default { "port" }) accepts,
-- unless opts.wait == false. moongate runs in an empty folder (<dir>/cwd), so
-- a relative path resolved against the working directory instead of the
-- config's folder shows up as a missing file. Returns an object with port,
-- ports, dir, conf, pid and the methods below.
--
-- Free ports are only free when picked: if moongate dies before it listens
-- (say the port was taken in between), it is started again on new ports, up
-- to 3 times, unless opts.port fixed the port.
function helpers.proxy(text, opts)
  opts = opts or {}
  if not helpers.file_exists(helpers.bin) then
    error("moongate binary not found at " .. helpers.bin .. " (set MOONGATE_BIN)", 2)
  end
  local dir = opts.dir or helpers.tmpdir()
  os.execute("mkdir -p " .. shell_quote(dir .. "/logs") .. " " .. shell_quote(dir .. "/cwd"))
  local attempts = opts.port and 1 or 3
  local err
  for _ = 1, attempts do
    local vars = { dir = dir }
    for k, v in pairs(opts.vars or {}) do vars[k] = v end
    local ports = { port = opts.port or helpers.free_port() }
    for _, name in ipairs(opts.ports or {}) do ports[name] = helpers.free_port() end
    for k, v in pairs(ports) do vars[k] = v end
    local p = setmetatable({ dir = dir, port = ports.port, ports = ports }, Proxy)
    p.conf = helpers.write_config(dir, text, vars)
    p.stderr_path = dir .. "/moongate.stderr"
    p.stdout_path = dir .. "/moongate.stdout"
    p.pid = helpers.spawn({ helpers.bin, "-c", p.conf }, {
      cwd = dir .. "/cwd", stdout = p.stdout_path, stderr = p.stderr_path,
      label = "moongate", env = helpers.env,
    })
    if opts.wait == false then return p end
    local ok
    ok, err = p:wait_ready(opts.wait_ports)
    if ok then return p end
    if not p.exit_how then break end -- alive but not listening: no retry
  end
  error(err, 2)
end

--- Wait until every listed port (default: ${port}) accepts connections.
-- Returns true, or nil and a message with moongate's stderr (moongate is
-- stopped then).
function Proxy:wait_ready(names)
  for _, name in ipairs(names or { "port" }) do
    local port = self.ports[name]
    local up = helpers.wait_until(function()
      if self.exit_how then return "dead" end
      local how, code = helpers.reap(self.pid, 0)
      if how then self.exit_how, self.exit_code = how, code return "dead" end
      return helpers.port_open(port) and "up"
    end, 10, 0.02)
    if up ~= "up" then
      if not self.exit_how then helpers.terminate(self.pid, 2) end
      return nil, string.format("moongate did not listen on %d (%s %s):\n%s", port,
        tostring(self.exit_how or "running"), tostring(self.exit_code),
        helpers.read_file(self.stderr_path) or "")
    end
  end
  return true
end

-- Sanitizer reports (ASan, LSan, UBSan) in a text, or nil.
local SANITIZER = { "ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                    "UndefinedBehaviorSanitizer", "WARNING: ThreadSanitizer" }
function helpers.sanitizer_report(text)
  for _, needle in ipairs(SANITIZER) do
    local i = (text or ""):find(needle, 1, true)
    if i then return text:sub(math.max(1, i - 200), i + 3000) end
  end
end

--- moongate's stderr so far.
function Proxy:stderr()
  return helpers.read_file(self.stderr_path) or ""
end

--- Contents of a file in the proxy's folder.
function Proxy:file(rel)
  return helpers.read_file(self.dir .. "/" .. rel)
end

function Proxy:signal(sig)
  return helpers.kill(self.pid, sig)
end

--- Wait up to `timeout` for exit; returns how ("exited"/"killed"), code.
function Proxy:wait(timeout)
  if self.exit_how then return self.exit_how, self.exit_code end
  local how, code = helpers.reap(self.pid, timeout)
  if how then self.exit_how, self.exit_code = how, code end
  return how, code
end

--- SIGTERM and wait (SIGKILL after `timeout`); returns the exit code, or nil
-- and how it ended. Raises an error when moongate's stderr holds a sanitizer
-- report, or when it did not exit 0 on this SIGTERM: teardowns calling stop()
-- thereby fail the spec file for leaks and crashes found at exit.
--- Asserts that moongate still runs and its stderr holds no sanitizer report
--- (the hostile-input specs call it after each attack).
function Proxy:assert_alive()
  local report = helpers.sanitizer_report(self:stderr())
  assert(not report, "sanitizer report:\n" .. tostring(report))
  local how, code = self:wait(0)
  assert(not how, "moongate died (" .. tostring(how) .. " " .. tostring(code) .. ")")
end

function Proxy:stop(timeout)
  local signalled = false
  if not self.exit_how then
    signalled = true
    local how, code = helpers.terminate(self.pid, timeout or 10)
    self.exit_how, self.exit_code = how, code
  end
  local report = helpers.sanitizer_report(self:stderr())
  if report then error("sanitizer report from moongate:\n" .. report, 2) end
  if signalled and not (self.exit_how == "exited" and self.exit_code == 0) then
    error(string.format("moongate did not exit 0 on SIGTERM (%s %s):\n%s",
      tostring(self.exit_how), tostring(self.exit_code), self:stderr():sub(-3000)), 2)
  end
  if self.exit_how == "exited" then return self.exit_code end
  return nil, self.exit_how, self.exit_code
end

--- Stop the given proxies (see Proxy:stop) and clean everything up, even when
-- a stop fails; then raise the first failure. For teardowns.
function helpers.teardown(...)
  local first
  for i = 1, select("#", ...) do
    local p = select(i, ...)
    if p then
      local ok, err = pcall(p.stop, p)
      if not ok and not first then first = err end
    end
  end
  helpers.cleanup()
  if first then error(first, 2) end
end

--- Reloads: the config file becomes `text` (a string, or a function of the old
-- text), SIGHUP goes, and this waits (up to `timeout` s, default 5) until
-- ready() is truthy, i.e. the new generation answers; returns its value.
function Proxy:reload(text, ready, timeout)
  if type(text) == "function" then text = text(helpers.read_file(self.conf)) end
  helpers.write_file(self.conf, text)
  self:signal(require("posix.signal").SIGHUP)
  local v = helpers.wait_until(ready, timeout or 5, 0.05)
  assert(v, "the new generation never answered")
  return v
end

--- A config for this proxy's port that answers "new\n" to every request (one
-- worker): what a reload spec replaces a config with.
function Proxy:new_config()
  return 'local mg = require "moongate"\n'
    .. 'mg.config { workers = 1, access_log = false }\n'
    .. 'mg.listen { "127.0.0.1:' .. self.port .. '" }\n'
    .. 'mg.route { path = "/", respond = { status = 200, body = "new\\n" } }\n'
end

--- Whether a request to `path` gets the "new\n" of Proxy:new_config.
function Proxy:says_new(path)
  local res = self:request({ path = path or "/" })
  return res and res.body == "new\n"
end

--- moongate's resident memory in KiB (VmRSS), or nil once it has exited.
function Proxy:rss()
  local status = helpers.read_file("/proc/" .. self.pid .. "/status") or ""
  return tonumber(status:match("VmRSS:%s*(%d+)"))
end

--- Whether this moongate runs with AddressSanitizer (its maps hold libasan).
function Proxy:asan()
  return (helpers.read_file("/proc/" .. self.pid .. "/maps") or ""):find("libasan", 1, true) ~= nil
end

--- Asserts RSS grew by less than `kib` KiB since `rss0` (a Proxy:rss()). Not
--- under ASan: its quarantine keeps freed memory, so there only the absence of
--- a report counts (checked when moongate stops).
function Proxy:assert_rss_flat(rss0, kib)
  local grew = self:rss() - rss0
  if not self:asan() then assert(grew < kib, "RSS grew by " .. grew .. " KiB") end
  return grew
end

--- n clients, one after the other, each connect, send `raw` (a request the
--- route's hook waits in) and close `linger` s later (at once when nil).
function Proxy:leave_mid_request(n, raw, linger)
  for _ = 1, n do
    local c = self:connect()
    assert(c:send(raw))
    if linger then helpers.sleep(linger) end
    c:close()
  end
end

function Proxy:connect(port)
  return helpers.connect(port or self.port)
end

function Proxy:url(path, port)
  return "http://127.0.0.1:" .. (port or self.port) .. (path or "/")
end

--- One request on a fresh connection; see Client:request.
function Proxy:request(req, port)
  local c = self:connect(port)
  local res, err = c:request(req)
  c:close()
  return res, err
end

---------------------------------------------------------------------------
-- raw client
---------------------------------------------------------------------------

local Client = {}
Client.__index = Client

--- Connect to 127.0.0.1:port (or host, e.g. "::1"), from the local address `bind` when
-- given (any 127.x.y.z works on Linux loopback). The client buffers what it reads, so
-- responses, closes and leftovers can be checked byte for byte.
function helpers.connect(port, timeout, host, bind)
  host = host or "127.0.0.1"
  local s = host:find(":", 1, true) and socket.tcp6() or socket.tcp()
  s:settimeout(timeout or 5)
  if bind then assert(s:bind(bind, 0)) end
  assert(s:connect(host, port))
  s:setoption("tcp-nodelay", true)
  s:settimeout(0)
  return setmetatable({ sock = s, buf = "", eof = false, timeout = 10 }, Client)
end

--- A client over a socket that is already connected (one a spec accepted, say):
-- the same buffered reads and writes as helpers.connect's. `class` (optional) is
-- a table whose __index falls back to helpers.Client, for specs that add methods.
function helpers.wrap(sock, timeout, class)
  sock:settimeout(0)
  pcall(sock.setoption, sock, "tcp-nodelay", true)
  return setmetatable({ sock = sock, buf = "", eof = false, timeout = timeout or 10 }, class or Client)
end
helpers.Client = Client

function Client:local_addr()
  local ip, port = self.sock:getsockname()
  if ip:find(":", 1, true) then return "[" .. ip .. "]:" .. port end
  return ip .. ":" .. port
end

--- Send every byte within `timeout` seconds (default: the client's). Returns
-- true, or nil, the error ("timeout", "closed", ...) and the bytes sent.
function Client:send(data, timeout)
  local i = 1
  local deadline = socket.gettime() + (timeout or self.timeout)
  while i <= #data do
    local remaining = deadline - socket.gettime()
    if remaining <= 0 then return nil, "timeout", i - 1 end
    local _, w = socket.select(nil, { self.sock }, remaining)
    if not w or not w[1] then return nil, "timeout", i - 1 end
    local n, err, partial = self.sock:send(data, i)
    if n then
      i = n + 1
    elseif err == "timeout" then
      i = partial + 1
    else
      return nil, err, (partial or i - 1)
    end
  end
  return true
end

-- Read more bytes into self.buf. Returns true if some arrived, or nil and
-- "closed" / "timeout".
function Client:fill(deadline)
  if self.eof then return nil, "closed" end
  while true do
    local remaining = deadline - socket.gettime()
    if remaining <= 0 and not self.sock:dirty() then return nil, "timeout" end
    if not self.sock:dirty() then
      local r = socket.select({ self.sock }, nil, remaining)
      if not r or not r[1] then return nil, "timeout" end
    end
    local data, err, partial = self.sock:receive(65536)
    local got = data or partial
    if got and #got > 0 then self.buf = self.buf .. got end
    if err == "closed" or (err and err ~= "timeout") then
      self.eof = true
      self.err = err
      if got and #got > 0 then return true end
      return nil, "closed"
    end
    if got and #got > 0 then return true end
  end
end

-- Take exactly n bytes (large reads collected in a table to stay linear). On a
-- close or timeout: nil, the reason, and the bytes that did arrive (left in the
-- buffer).
function Client:take(n, deadline)
  if #self.buf < n then
    local parts, have = { self.buf }, #self.buf
    self.buf = ""
    while have < n do
      local ok, err = self:fill(deadline)
      if not ok then
        self.buf = table.concat(parts) .. self.buf
        return nil, err, self.buf
      end
      parts[#parts + 1] = self.buf
      have = have + #self.buf
      self.buf = ""
    end
    self.buf = table.concat(parts)
  end
  local out = self.buf:sub(1, n)
  self.buf = self.buf:sub(n + 1)
  return out
end

-- Take up to and including `delim`.
function Client:take_until(delim, deadline)
  local from = 1
  while true do
    local i, j = self.buf:find(delim, from, true)
    if i then
      local out = self.buf:sub(1, j)
      self.buf = self.buf:sub(j + 1)
      return out
    end
    from = math.max(1, #self.buf - #delim + 2)
    local ok, err = self:fill(deadline)
    if not ok then return nil, err end
  end
end

--- True if bytes (or a close) are waiting to be read within `timeout` seconds.
function Client:readable(timeout)
  if self.buf ~= "" or self.eof or self.sock:dirty() then return true end
  local r = socket.select({ self.sock }, nil, timeout or 0)
  return r ~= nil and r[1] ~= nil
end

--- Everything until the peer closes (or `timeout`); returns data, "closed" or
-- "timeout".
function Client:read_until_close(timeout)
  local deadline = socket.gettime() + (timeout or self.timeout)
  local parts = {}
  local why
  while true do
    parts[#parts + 1] = self.buf
    self.buf = ""
    local ok, err = self:fill(deadline)
    if not ok then why = err break end
  end
  parts[#parts + 1] = self.buf
  self.buf = ""
  return table.concat(parts), why
end

--- True if the peer closes within `timeout` seconds without sending anything
-- more; returns closed (boolean) and any bytes that arrived instead.
function Client:closed(timeout)
  local data, why = self:read_until_close(timeout or 2)
  return why == "closed" and data == "", data, why
end

local function parse_head(head)
  local res = { raw_head = head, headers = {}, h = {} }
  local first, rest = head:match("^([^\r\n]*)\r\n(.*)$")
  res.version, res.status, res.reason = first:match("^(HTTP/%d%.%d) (%d%d%d) ?(.*)$")
  res.status = tonumber(res.status)
  res.status_line = first
  for line in rest:gmatch("([^\r\n]*)\r\n") do
    if line ~= "" then
      local name, value = line:match("^([^:]+):[ \t]*(.-)[ \t]*$")
      if name then
        res.headers[#res.headers + 1] = { name, value }
        local k = name:lower()
        res.h[k] = res.h[k] and (res.h[k] .. ", " .. value) or value
      end
    end
  end
  return res
end

--- Read one response. opts.head: it answers a HEAD (no body). Interim 1xx
-- responses are returned on their own (status 1xx, empty body). Returns a
-- table: status, reason, version, headers (list of {name, value}), h (lower-
-- case name -> values joined by ", "), body, raw (all bytes), close_delimited;
-- or nil, err.
function Client:response(opts)
  opts = opts or {}
  local deadline = socket.gettime() + (opts.timeout or self.timeout)
  local head, err = self:take_until("\r\n\r\n", deadline)
  if not head then return nil, err, self.buf end
  local res = parse_head(head)
  if not res.status then return nil, "bad status line: " .. head end
  local s = res.status
  local te = (res.h["transfer-encoding"] or ""):lower()
  if opts.head or (s >= 100 and s < 200) or s == 204 or s == 304 then
    res.body = ""
  elseif te:match("chunked%s*$") then
    local parts, raw = {}, { head }
    while true do
      local line, e = self:take_until("\r\n", deadline)
      if not line then return nil, e end
      raw[#raw + 1] = line
      local size = tonumber(line:match("^(%x+)"), 16)
      if not size then return nil, "bad chunk size line: " .. line end
      if size == 0 then
        while true do
          local t, e2 = self:take_until("\r\n", deadline)
          if not t then return nil, e2 end
          raw[#raw + 1] = t
          if t == "\r\n" then break end
        end
        break
      end
      local data, e2 = self:take(size + 2, deadline)
      if not data then return nil, e2 end
      raw[#raw + 1] = data
      parts[#parts + 1] = data:sub(1, -3)
    end
    res.body = table.concat(parts)
    res.raw = table.concat(raw)
    res.chunked = true
    return res
  elseif res.h["content-length"] then
    local n = tonumber(res.h["content-length"])
    if not n then return nil, "bad content-length " .. res.h["content-length"] end
    local body, e = self:take(n, deadline)
    if not body then return nil, e end
    res.body = body
  else
    local body, why = self:read_until_close(math.max(0, deadline - socket.gettime()))
    if why ~= "closed" then return nil, "until-close body did not end: " .. tostring(why) end
    res.body = body
    res.close_delimited = true
  end
  res.raw = head .. res.body
  return res
end

--- Read responses until a final (non-1xx) one; returns it and the list of
-- interim responses seen before it.
function Client:final_response(opts)
  local interim = {}
  while true do
    local res, err = self:response(opts)
    if not res then return nil, err, interim end
    if res.status >= 200 then return res, interim end
    interim[#interim + 1] = res
  end
end

--- Build request bytes from a table { method, path, headers = {{n, v}} or
-- {n = v}, body, version }. Adds Host unless given and Content-Length for a
-- body unless a framing header is given.
function helpers.request_bytes(req)
  if type(req) == "string" then return req end
  local method = req.method or "GET"
  local lines = { string.format("%s %s %s", method, req.path or "/", req.version or "HTTP/1.1") }
  local has = {}
  local function add(n, v)
    has[n:lower()] = true
    lines[#lines + 1] = n .. ": " .. v
  end
  local hs = req.headers or {}
  if hs[1] then
    for _, kv in ipairs(hs) do add(kv[1], kv[2]) end
  else
    for n, v in pairs(hs) do add(n, v) end
  end
  if not has.host and req.version ~= "HTTP/1.0" then table.insert(lines, 2, "Host: test.local") end
  local body = req.body or ""
  if (body ~= "" or method == "POST" or method == "PUT")
     and not has["content-length"] and not has["transfer-encoding"] then
    lines[#lines + 1] = "Content-Length: " .. #body
  end
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. body
end

--- Send a request (table or raw string) and read its final response.
function Client:request(req)
  local ok, err = self:send(helpers.request_bytes(req))
  if not ok then return nil, err end
  return self:final_response({ head = type(req) == "table" and req.method == "HEAD" })
end

function Client:close()
  self.sock:close()
end

--- The JSON document of an /echo response.
function helpers.echo(res)
  assert(res, "no response")
  assert(res.status == 200, "echo status " .. tostring(res.status) .. ": " .. tostring(res.body))
  return helpers.decode_json(res.body)
end

--- All values of a header in an echo document's headers list.
function helpers.echo_headers(doc, name)
  local t = {}
  for _, kv in ipairs(doc.headers) do
    if kv[1]:lower() == name:lower() then t[#t + 1] = kv[2] end
  end
  return t
end

--- The error body contract of docs/config.md:
-- "<status> <reason>\nrequest id: <id>\n" plus an X-Request-Id header with the
-- same id. Returns the id.
function helpers.assert_error(res, status)
  assert(res, "no response")
  assert(res.status == status, string.format("expected status %d, got %s: %s",
    status, tostring(res.status), tostring(res.body)))
  assert(res.h["content-type"] and res.h["content-type"]:match("^text/plain"),
    "error content-type is " .. tostring(res.h["content-type"]))
  local code, reason, id = res.body:match("^(%d%d%d) ([^\n]+)\nrequest id: (%S+)\n$")
  assert(code, "error body does not follow the contract: " .. string.format("%q", res.body))
  assert(tonumber(code) == status, "status in body " .. code)
  assert(reason == res.reason, "reason in body '" .. reason .. "' vs status line '" .. res.reason .. "'")
  assert(res.h["x-request-id"] == id,
    "X-Request-Id " .. tostring(res.h["x-request-id"]) .. " vs body id " .. id)
  return id
end

---------------------------------------------------------------------------
-- curl
---------------------------------------------------------------------------

--- Run curl with extra args (a list; the URL among them). Returns { status,
-- headers, h, body, body_file, interim } of the final response, or nil and
-- curl's output.
function helpers.curl(args, opts)
  opts = opts or {}
  local dir = opts.dir or helpers.scratch()
  local n = (helpers._curl_n or 0) + 1
  helpers._curl_n = n
  local hfile = dir .. "/curl-" .. n .. ".headers"
  local bfile = dir .. "/curl-" .. n .. ".body"
  local argv = { "curl", "-sS", "--max-time", tostring(opts.max_time or 30),
                 "-D", hfile, "-o", bfile, "-w", "%{http_code}" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local out, rc = helpers.run(argv)
  if rc ~= 0 then return nil, out, rc end
  local heads = helpers.read_file(hfile) or ""
  local blocks = {}
  for block in heads:gmatch("(HTTP/.-\r\n\r\n)") do blocks[#blocks + 1] = parse_head(block) end
  local res = blocks[#blocks] or {}
  res.interim = {}
  for i = 1, #blocks - 1 do res.interim[i] = blocks[i] end
  res.body_file = bfile
  res.body = opts.keep_body_in_file and nil or (helpers.read_file(bfile) or "")
  return res
end

-- ---- balancing specs (issue 12): one config preamble, clients spread over the
-- workers, origins by name, tallies ----

--- A config for `workers` workers (default 2; `extra`: more mg.config fields,
-- default "access_log = false") listening on ${port}, then `body`.
function helpers.workers_conf(body, workers, extra)
  return 'local mg = require "moongate"\n'
    .. "mg.config { workers = " .. (workers or 2) .. ", " .. (extra or "access_log = false") .. " }\n"
    .. 'mg.listen { "127.0.0.1:${port}" }\n' .. body
end

--- `n` connections to `port` from different loopback addresses (127.0.0.<first+i>,
-- first defaulting to 1), so that SO_REUSEPORT spreads them over the workers.
function helpers.clients(port, n, first)
  local cs = {}
  for i = 1, n do cs[i] = helpers.connect(port, 5, nil, "127.0.0." .. ((first or 1) + i)) end
  return cs
end

--- At least `n` connections to `port` among which every one of `workers`
-- workers (default 2) is: SO_REUSEPORT hashes each connection's address and
-- port, so a handful may all land on one worker. Each new connection asks
-- `path` (a route whose body is mg.worker_id()) which worker holds it; at
-- most 64 connections, then an error.
function helpers.spread_clients(port, n, path, workers)
  workers = workers or 2
  local cs, seen, count = {}, {}, 0
  for i = 1, 64 do
    local c = helpers.connect(port, 5, nil, "127.0.0." .. (1 + i))
    local res = assert(c:request({ path = path }))
    if not seen[res.body] then seen[res.body], count = true, count + 1 end
    cs[#cs + 1] = c
    if #cs >= n and count >= workers then return cs end
  end
  helpers.close_all(cs)
  error("64 connections reached only " .. count .. " of " .. workers .. " workers")
end

--- `moongate -t` of a config whose third line is `mg.use(<line>)`: its output,
--- exit code and the config's path (for the "FILE:3:" of the error).
function helpers.use_check(line)
  local path = helpers.write_config(helpers.tmpdir(), 'local mg = require "moongate"\n'
    .. 'mg.listen { "127.0.0.1:1" }\n' .. 'mg.use(' .. line .. ')\n')
  local out, rc = helpers.moongate({ "-t", "-c", path })
  return out, rc, path
end

--- One busted case per { line, message } of `cases` (`it`: busted's, passed in):
--- `mg.use(line)` is a config error at FILE:3, its text starting with `prefix`
--- (default none) and holding `message`.
function helpers.use_error_cases(it, cases, prefix)
  for _, c in ipairs(cases) do
    it(c[1] .. " -> " .. c[2], function()
      local out, rc, path = helpers.use_check(c[1])
      assert(rc == 1, "exit code " .. tostring(rc) .. ", want 1: " .. out)
      assert(out:find("moongate: config error: " .. path .. ":3: " .. (prefix or ""), 1, true), out)
      assert(out:find(c[2], 1, true), "want '" .. c[2] .. "' in: " .. out)
    end)
  end
end

function helpers.close_all(cs)
  for _, c in pairs(cs) do c:close() end
end

--- The name of the origin that answered `req` (a path or a request table) on c.
function helpers.name_of(c, req)
  if type(req) ~= "table" then req = { path = req or "/echo" } end
  return helpers.echo(assert(c:request(req))).name
end

--- { value = how many times it appears } over a list (or any table's values).
function helpers.tally(list)
  local t = {}
  for _, v in pairs(list) do t[v] = (t[v] or 0) + 1 end
  return t
end

--- Origins named `names` (each with `opts`): { name = origin }, { name = addr }.
function helpers.origins(names, opts)
  local os_, vars = {}, {}
  for _, n in ipairs(names) do
    local o = {}
    for k, v in pairs(opts or {}) do o[k] = v end
    o.name = n
    os_[n] = helpers.origin(o)
    vars[n] = os_[n].addr
  end
  return os_, vars
end

--- `moongate -t` on a config of `body` after a listener: its output and exit code.
function helpers.check_config(body)
  local path = helpers.write_config(helpers.tmpdir(), 'local mg = require "moongate"\n'
    .. 'mg.listen { "127.0.0.1:1" }\n' .. body)
  return helpers.moongate({ "-t", "-c", path })
end

--- helpers.check_config of one route to an upstream of `servers` (default one)
-- with `fields` (proxy.lua text) added to the upstream's table.
function helpers.check_upstream(fields, servers)
  return helpers.check_config('mg.route { upstream = mg.upstream "u" { servers = { '
    .. (servers or '"127.0.0.1:2"') .. ' }, ' .. fields .. ' } }\n')
end

--- proxy.lua text of a route for host "stats.test" answering mg.upstream_stats
-- of the upstream named by ?u= as "key=value" pairs in a stable order (404 and
-- the error for an unknown one).
helpers.STATS_ROUTE = [[
mg.route { host = "stats.test", respond = function(req)
  local s, err = mg.upstream_stats(req:arg("u"))
  if not s then return 404, err end
  local keys = {}
  for k in pairs(s) do keys[#keys + 1] = k end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do out[#out + 1] = k .. "=" .. s[k] end
  return 200, table.concat(out, " ")
end }
]]

-- data decoded with the coding's command-line tool (gzip, br, zstd: the
-- reference decoders, not moongate's own): the bytes, or an error
local DECODER = { gzip = "gzip -dc", br = "brotli -dc", zstd = "zstd -dcq" }
function helpers.decode(coding, data)
  assert(DECODER[coding], "no decoder for " .. tostring(coding))
  local f = helpers.scratch() .. "/enc-" .. coding
  helpers.write_file(f, data)
  local out, rc = helpers.sh(DECODER[coding] .. " < " .. f .. " > " .. f .. ".out")
  assert(rc == 0, coding .. " decoder failed: " .. tostring(out))
  return helpers.read_file(f .. ".out")
end

return helpers
