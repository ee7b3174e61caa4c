-- The Redis backend of mg.policy.rate_limit (issue 14): cluster-wide counters, one
-- atomic Lua script per algorithm, run with EVALSHA (EVAL + SCRIPT LOAD the first
-- time a worker runs it, and again after a NOSCRIPT). Every script reads the clock
-- with redis.call('TIME'), so the moongate instances' clocks never matter: all of
-- them count in the same windows. Times are whole microseconds inside the scripts
-- (exact in a double until year 2255). Each returns
--   { allowed (1|0), remaining, reset_us [, retry_us] }
-- which the policy turns into the same headers as the local mode's.
-- docs/policies.md "rate_limit" (Redis).
local abi = require "moongate.ffi"
local check = require "moongate.private.check"
local redis = require "moongate.redis"

local C = abi.C
local fail = check.fail
local type, tostring, floor, ceil, require, unpack = type, tostring, math.floor, math.ceil, require, unpack
local fmt = string.format

local _M = {}

-- Redis before 5 refuses writes after TIME unless the script replicates its
-- effects; 7 does that always (and keeps the call as a no-op).
local PROLOGUE = [[
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
]]

-- fixed: KEYS[1] base; ARGV window_us, limit, ttl_ms. One counter per window
-- (floor(now / window) on Redis's clock); INCR counts every request, refused
-- ones included, so a window lets exactly `limit` through.
local FIXED = PROLOGUE .. [[
local w, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local idx = math.floor(now / w)
local k = KEYS[1] .. ':' .. idx
local c = redis.call('INCR', k)
if c == 1 then redis.call('PEXPIRE', k, ARGV[3]) end
local reset = (idx + 1) * w - now
if c <= limit then return { 1, limit - c, reset } end
return { 0, 0, reset, reset }
]]

-- sliding: KEYS[1] base; ARGV window_us, limit, ttl_ms. This window's counter
-- plus the previous one's weighted by its overlap with the last `window`; a
-- request is counted only when it is let through (checked and counted in one
-- step: nothing to take back).
local SLIDING = PROLOGUE .. [[
local w, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local idx = math.floor(now / w)
local elapsed = now - idx * w
local ck = KEYS[1] .. ':' .. idx
local c = tonumber(redis.call('GET', ck) or 0)
local p = tonumber(redis.call('GET', KEYS[1] .. ':' .. (idx - 1)) or 0)
local est = p * (w - elapsed) / w + c + 1
local reset = w - elapsed
if est <= limit then
  redis.call('INCR', ck)
  if c == 0 then redis.call('PEXPIRE', ck, ARGV[3]) end
  return { 1, math.floor(limit - est), reset }
end
local wait
if p > 0 and c + 1 <= limit then
  wait = w * (1 - (limit - c - 1) / p) - elapsed
else
  wait = reset + (c > 0 and w * math.max(0, 1 - (limit - 1) / c) or 0)
end
return { 0, 0, reset, math.max(0, math.ceil(wait)) }
]]

-- token bucket as GCRA: KEYS[1] holds the theoretical arrival time (µs on
-- Redis's clock); ARGV interval_us (window / limit), burst.
local BUCKET = PROLOGUE .. [[
local T, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then tat = now end
local nxt = tat + T
local allow_at = nxt - burst * T
if now < allow_at then
  local wait = math.ceil(allow_at - now)
  return { 0, 0, wait, wait }
end
redis.call('SET', KEYS[1], string.format('%.17g', nxt), 'PX', math.ceil((nxt - now) / 1000) + 1000)
return { 1, math.floor((now - allow_at) / T + 1e-9), math.ceil(nxt - now) }
]]

local SCRIPTS = { fixed = FIXED, sliding = SLIDING, token_bucket = BUCKET }
local LETTER = { fixed = "f", sliding = "s", token_bucket = "b" }
_M.scripts = SCRIPTS

-- SHA1 of each script as SCRIPT LOAD returned it, per worker (nil: not loaded yet)
local shas = {}

local keys = { host = true, port = true, password = true, db = true, timeout = true, prefix = true,
               fail = true, fail_status = true, pool_size = true }

-- pools: one per server, database and password (a pooled connection keeps its
-- AUTH and SELECT); passwords are told apart by a number, not written in the name
local password_ids, npasswords = {}, 0

--- Checks `conf.redis` (what: "mg.policy.rate_limit"); returns the backend's settings.
function _M.config(r, what)
  local w = what .. ": redis"
  if type(r) ~= "table" then fail("%s: 'redis' must be a table { host = , port = , ... }", what) end
  check.keys(r, keys, w)
  local host = r.host == nil and "127.0.0.1" or check.type(r.host, "string", w, "host")
  if host == "" or host:find("[%s/]") then fail("%s: 'host' must be a host name or an address, got \"%s\"", w, host) end
  local port = r.port == nil and 6379 or check.number(r.port, w, "port", 1, 65535)
  if port % 1 ~= 0 then fail("%s: 'port' must be a whole number, got %s", w, tostring(port)) end
  local password = r.password
  if password ~= nil then
    check.type(password, "string", w, "password")
    if password == "" then fail("%s: 'password' must not be empty", w) end
  end
  local db = r.db == nil and 0 or check.number(r.db, w, "db", 0, 1e6)
  if db % 1 ~= 0 then fail("%s: 'db' must be a whole number, got %s", w, tostring(db)) end
  local timeout = r.timeout == nil and 0.05 or check.number(r.timeout, w, "timeout", 0.001, 60)
  local prefix = r.prefix == nil and "mg:rl:" or check.type(r.prefix, "string", w, "prefix")
  local mode = r.fail == nil and "open" or r.fail
  if mode ~= "open" and mode ~= "closed" then
    fail("%s: 'fail' must be \"open\" or \"closed\", got %s", w, tostring(mode))
  end
  local fail_status = 500
  if r.fail_status ~= nil then
    if mode ~= "closed" then fail("%s: 'fail_status' is for fail = \"closed\"", w) end
    fail_status = check.number(r.fail_status, w, "fail_status", 500, 599)
    if fail_status % 1 ~= 0 then fail("%s: 'fail_status' must be a whole number", w) end
  end
  local pool_size = r.pool_size == nil and 64 or check.number(r.pool_size, w, "pool_size", 1, 100000)
  if pool_size % 1 ~= 0 then fail("%s: 'pool_size' must be a whole number", w) end
  local pw = ""
  if password then
    local id = password_ids[password]
    if not id then
      npasswords = npasswords + 1
      id = npasswords
      password_ids[password] = id
    end
    pw = "|p" .. id
  end
  local addr = host:find(":", 1, true) and ("[" .. host .. "]:" .. port) or (host .. ":" .. port)
  return {
    host = host, port = port, password = password, db = db, timeout = timeout, prefix = prefix,
    fail = mode, fail_status = fail_status, pool_size = pool_size, addr = addr,
    ms = timeout * 1000,
    connect_opts = { pool = "mg.rate_limit|" .. addr .. "|" .. db .. pw, pool_size = pool_size },
  }
end

--- The arguments of a policy's script: (algorithm, window s, limit, burst) -> a list.
function _M.args(algorithm, window, limit, burst)
  local w_us = floor(window * 1e6 + 0.5)
  if algorithm == "fixed" then return { w_us, limit, ceil(w_us / 1000) + 1000 } end
  if algorithm == "sliding" then return { w_us, limit, 2 * ceil(w_us / 1000) + 1000 } end
  -- the interval as text of 17 digits: tostring keeps 14 only
  return { fmt("%.17g", window * 1e6 / limit), burst }
end

--- The Redis key a policy counts `key` under (the windows add ":<index>"). The
--- {...} is a Redis Cluster hash tag: every key of one counter is in one slot.
function _M.key(rc, name, algorithm, key)
  return rc.prefix .. "{" .. name .. ":" .. key .. "}:" .. LETTER[algorithm]
end

-- Queues the script (EVALSHA, or EVAL then SCRIPT LOAD when this worker has no
-- SHA1 for it yet). Returns whether SCRIPT LOAD was queued.
local function queue(red, algorithm, rkey, a)
  local sha = shas[algorithm]
  if sha then
    red:evalsha(sha, 1, rkey, unpack(a))
    return false
  end
  red:eval(SCRIPTS[algorithm], 1, rkey, unpack(a))
  red:script("LOAD", SCRIPTS[algorithm])
  return true
end

-- The reply of a script, checked: allowed, remaining, reset (s), retry (s); or
-- nil, err.
local function decode(v)
  if type(v) ~= "table" or (v[1] ~= 0 and v[1] ~= 1) or type(v[2]) ~= "number"
     or type(v[3]) ~= "number" or (v[1] == 0 and type(v[4]) ~= "number") then
    return nil, "unexpected reply from the script"
  end
  if v[1] == 1 then return true, v[2], v[3] / 1e6 end
  return false, 0, v[3] / 1e6, v[4] / 1e6
end

-- One attempt. Returns allowed, remaining, reset, retry; or nil, err, reused
-- (whether the connection came from the pool).
local function attempt(rc, algorithm, rkey, a)
  local red = redis.new()
  red:set_timeouts(rc.ms, rc.ms, rc.ms)
  local ok, err = red:connect(rc.host, rc.port, rc.connect_opts)
  if not ok then return nil, err, false end
  -- a new connection: AUTH and SELECT go in the same write as the script
  local fresh = red:get_reused_times() == 0
  red:init_pipeline()
  local n = 0
  if fresh then
    if rc.password then red:auth(rc.password); n = n + 1 end
    if rc.db ~= 0 then red:select(rc.db); n = n + 1 end
  end
  local loading = queue(red, algorithm, rkey, a)
  local res, perr = red:commit_pipeline()
  if not res then return nil, perr, not fresh end
  for i = 1, n do
    local r = res[i]
    if type(r) == "table" and r[1] == false then
      red:close()
      return nil, (i == 1 and rc.password and "AUTH: " or "SELECT: ") .. tostring(r[2])
    end
  end
  local v = res[n + 1]
  if loading and type(res[n + 2]) == "string" then shas[algorithm] = res[n + 2] end
  if type(v) == "table" and v[1] == false and tostring(v[2]):find("^NOSCRIPT") then
    -- the server lost its scripts (restarted, SCRIPT FLUSH): load it again
    shas[algorithm] = nil
    red:init_pipeline()
    queue(red, algorithm, rkey, a)
    res, perr = red:commit_pipeline()
    if not res then return nil, perr end
    v = res[1]
    if type(res[2]) == "string" then shas[algorithm] = res[2] end
  end
  if type(v) == "table" and v[1] == false then
    red:close()
    return nil, tostring(v[2])
  end
  local allowed, remaining, reset, retry = decode(v)
  if allowed == nil then
    red:close()
    return nil, remaining
  end
  red:set_keepalive(60000, rc.pool_size)
  return allowed, remaining, reset, retry
end

--- Runs the algorithm's script for `rkey`: one round trip on a pooled
--- connection. Returns allowed, remaining, reset (s), retry (s); or nil, err.
--- A pooled connection found closed (redis restarted, or closed it idle) is
--- replaced by a new one once; a timeout is not retried (the budget is spent).
function _M.run(rc, algorithm, rkey, a)
  local allowed, remaining, reset, retry = attempt(rc, algorithm, rkey, a)
  if allowed == nil and retry == true and remaining ~= "timeout" then
    allowed, remaining, reset, retry = attempt(rc, algorithm, rkey, a)
  end
  return allowed, remaining, reset, retry
end

--- Logs a Redis failure of policy `p` at most once a second per worker (the
--- lines skipped in between are counted in the next one).
function _M.log_failure(p, rc, err)
  local now = C.mg_api_now()
  if now < p._redis_next_log then
    p._redis_skipped = p._redis_skipped + 1
    return
  end
  local more = p._redis_skipped > 0 and fmt(" (%d more since the last line)", p._redis_skipped) or ""
  p._redis_next_log = now + 1
  p._redis_skipped = 0
  local what = rc.fail == "open" and "request let through"
    or ("request refused with " .. rc.fail_status)
  require("moongate").log.err(fmt("rate_limit \"%s\": redis %s: %s (%s)%s", p._name, rc.addr, tostring(err), what, more))
end

_M._shas = shas
return _M
