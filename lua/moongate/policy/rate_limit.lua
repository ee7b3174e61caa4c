-- mg.policy.rate_limit (issue 14): requests per key per window, counted in a
-- shared dictionary (mg.shared) every worker of the process sees, atomically.
--   fixed        one counter per key and window (aligned to the clock); exact: with
--                any number of workers and clients, a window lets `limit` through
--   sliding      (default) the current window's counter plus the previous one's,
--                weighted by how much of it still overlaps the last `window` seconds
--   token_bucket `burst` tokens (default `limit`), `limit / window` tokens a second
--                (GCRA in one entry, core/shdict.c mg_shdict_gcra)
-- With `redis = { ... }` the counters live in Redis, shared by every instance: one
-- atomic script per algorithm on Redis's clock (lua/moongate/private/rate_limit_redis.lua),
-- fail open or closed when Redis fails.
-- Phases: request (counts, refuses with `status`, default 429), response (adds the
-- RateLimit / RateLimit-Policy headers of draft-ietf-httpapi-ratelimit-headers to
-- the upstream's answer). docs/policies.md "rate_limit".
local ffi = require "ffi"
local abi = require "moongate.ffi"
local check = require "moongate.private.check"
local partition = require "moongate.private.partition"
local shdict = require "moongate.shdict"
local backend = require "moongate.private.rate_limit_redis"

local C = abi.C
local fail = check.fail
local type, tostring, tonumber, floor, ceil, max, min, pairs =
      type, tostring, tonumber, math.floor, math.ceil, math.max, math.min, pairs
local fmt, sub = string.format, string.sub

local keys = { limit = true, window = true, key = true, algorithm = true, burst = true,
               shared = true, status = true, name = true, body = true, headers = true, redis = true }
local algorithms = { fixed = true, sliding = true, token_bucket = true }

-- The dictionary used when `shared` is not given: declared here (16m) unless the
-- user's mg.config declared it first (then the user's size stands).
local DEFAULT_DICT, DEFAULT_DICT_SIZE = "rate_limit", 16 * 1024 * 1024

local wait_out, rem_out = ffi.new("double[1]"), ffi.new("double[1]")


local Policy = {}
Policy.__index = Policy



--- mg.policy.rate_limit { limit, window, key, algorithm, burst, shared | redis, status, name }
local function new(conf)
  local what = "mg.policy.rate_limit"
  if type(conf) ~= "table" then fail("%s: expects a table", what) end
  check.keys(conf, keys, what)
  if conf.limit == nil then fail("%s: 'limit' is required (requests per window)", what) end
  local limit = check.whole(conf.limit, what, "limit", 1, 1e9)
  local window = conf.window == nil and 1 or check.number(conf.window, what, "window", 0.001, 86400 * 366)
  local algorithm = conf.algorithm == nil and "sliding" or conf.algorithm
  if not algorithms[algorithm] then
    fail("%s: 'algorithm' must be \"fixed\", \"sliding\" or \"token_bucket\", got %s", what, tostring(algorithm))
  end
  local burst = limit
  if conf.burst ~= nil then
    if algorithm ~= "token_bucket" then fail("%s: 'burst' is for algorithm = \"token_bucket\"", what) end
    burst = check.whole(conf.burst, what, "burst", 1, 1e9)
  end
  local status = conf.status == nil and 429 or check.whole(conf.status, what, "status", 400, 599)
  local name = conf.name == nil and "default" or check.type(conf.name, "string", what, "name")
  if not name:match("^[%w%-_.:]+$") then fail("%s: 'name' may hold letters, digits and -_.: only", what) end
  local body = conf.body == nil and "Too Many Requests\n" or check.type(conf.body, "string", what, "body")
  local extra = {}
  if conf.headers ~= nil then
    check.type(conf.headers, "table", what, "headers")
    for k, v in pairs(conf.headers) do
      if not check.token(k) then fail("%s: headers: '%s' is not a header name", what, tostring(k)) end
      if type(v) ~= "string" or v:find("[%z\r\n]") then fail("%s: headers: '%s' must be a string without CR/LF", what, k) end
      extra[k] = v
    end
  end
  local dict_name, rc
  if conf.redis ~= nil then
    if conf.shared ~= nil then fail("%s: 'shared' and 'redis' exclude each other (the counters live in one of them)", what) end
    rc = backend.config(conf.redis, what)
    dict_name = nil
  else
    dict_name = partition.dict(conf.shared, what, DEFAULT_DICT, DEFAULT_DICT_SIZE)
  end
  local fn, key_desc = partition.fn(conf.key, what, "rate_limit")
  local self = setmetatable({
    name = "rate_limit",
    limit = limit, window = window, algorithm = algorithm, burst = burst, status = status,
    key_desc = key_desc, dict_name = dict_name, body = body, extra = extra,
    _key = fn, _dict = dict_name and shdict.get(dict_name),
    _redis = rc, _name = name,
    _redis_args = rc and backend.args(algorithm, window, limit, burst),
    _redis_next_log = 0, _redis_skipped = 0,
    -- counters are named by the config line: they survive a reload that keeps it
    _prefix = "rl|" .. partition.instance() .. "|",
    _policy_header = fmt('"%s";q=%d;w=%d', name, algorithm == "token_bucket" and burst or limit, max(1, ceil(window))),
    _item = '"' .. name .. '"',
  }, Policy)
  return self
end

function Policy:describe()
  local s = fmt("limit=%d window=%gs key=%s algorithm=%s", self.limit, self.window, self.key_desc, self.algorithm)
  if self.algorithm == "token_bucket" then s = s .. " burst=" .. self.burst end
  if self._redis then
    s = s .. " redis=" .. self._redis.addr .. " fail=" .. self._redis.fail
  elseif self.dict_name ~= DEFAULT_DICT then
    s = s .. " shared=" .. self.dict_name
  end
  return s
end

local function failed(self, err)
  -- the dictionary failed (full of strings under our keys, out of memory): let the
  -- request through and say so; a limit must not take the site down
  require("moongate").log.err("rate_limit: shared dictionary '" .. self.dict_name .. "': " .. tostring(err) .. " (request let through)")
  return nil
end

-- Each returns allowed (boolean), remaining, reset (seconds), retry_after (seconds, refused only)

local function fixed(self, key, now)
  local w = self.window
  local idx = floor(now / w)
  local c, err = self._dict:incr(self._prefix .. key .. "|" .. idx, 1, 0, w + 1)
  if not c then return failed(self, err) end
  local reset = (idx + 1) * w - now
  if c <= self.limit then return true, self.limit - c, reset end
  return false, 0, reset, reset
end

local function sliding(self, key, now)
  local w, limit, d = self.window, self.limit, self._dict
  local idx = floor(now / w)
  local elapsed = now - idx * w
  local base = self._prefix .. key .. "|"
  local ckey = base .. idx
  local c, err = d:incr(ckey, 1, 0, 2 * w + 1)
  if not c then return failed(self, err) end
  local p = d:get(base .. (idx - 1))
  p = type(p) == "number" and p or 0
  local weight = (w - elapsed) / w
  local est = p * weight + c
  if est <= limit then return true, max(0, floor(limit - est)), w - elapsed end
  d:incr(ckey, -1) -- a refused request does not count
  c = c - 1
  -- when does one more fit? within this window, once the previous one's weight has
  -- dropped enough; else in the next, once this one's has
  local wait
  if p > 0 and c + 1 <= limit then
    wait = w * (1 - (limit - c - 1) / p) - elapsed
  else
    wait = (w - elapsed) + (c > 0 and w * max(0, 1 - (limit - 1) / c) or 0)
  end
  return false, 0, w - elapsed, max(wait, 0)
end

local gcra_errors = { [-20003] = "not a number", [-20004] = "no memory", [-20005] = "too big",
                      [-20006] = "bad argument" }

local function bucket(self, key)
  local rc = C.mg_shdict_gcra(self._dict:_handle(), self._prefix .. key, #self._prefix + #key,
                              self.window / self.limit, self.burst, wait_out, rem_out)
  if rc < 0 then return failed(self, gcra_errors[rc] or ("error " .. tostring(rc))) end
  local wait = tonumber(wait_out[0])
  if rc == 0 then return true, tonumber(rem_out[0]), wait end
  return false, 0, wait, wait
end

local run = { fixed = fixed, sliding = sliding, token_bucket = bucket }

--- Request phase: counts the request; over the limit, answers `status` with
--- Retry-After, RateLimit-Policy and RateLimit.
function Policy:request(req)
  local key = self._key(req)
  if key == nil then return end
  local allowed, remaining, reset, retry
  local rc = self._redis
  if rc then
    allowed, remaining, reset, retry = backend.run(rc, self.algorithm,
      backend.key(rc, self._name, self.algorithm, key), self._redis_args)
    if allowed == nil then
      backend.log_failure(self, rc, remaining)
      if rc.fail == "open" then return end
      return req:respond(rc.fail_status, "Rate limit unavailable\n")
    end
  else
    allowed, remaining, reset, retry = run[self.algorithm](self, key, C.mg_api_now())
    if allowed == nil then return end -- the dictionary failed: logged, let through
  end
  if allowed then
    local ctx = req.ctx
    local mine = ctx._rate_limit
    if not mine then mine = {}; ctx._rate_limit = mine end
    mine[#mine + 1] = self._item .. ";r=" .. remaining .. ";t=" .. ceil(reset)
    local pol = ctx._rate_limit_policy
    if not pol then pol = {}; ctx._rate_limit_policy = pol end
    pol[#pol + 1] = self._policy_header
    return
  end
  local h = { ["Retry-After"] = tostring(max(1, ceil(retry))),
              ["RateLimit-Policy"] = self._policy_header,
              ["RateLimit"] = self._item .. ";r=0;t=" .. max(1, ceil(reset)) }
  for k, v in pairs(self.extra) do h[k] = v end
  req:respond(self.status, self.body, h)
end

--- Response phase: the RateLimit headers of every rate_limit policy that let the
--- request through, on the upstream's answer (one field line per policy).
function Policy:response(req, res)
  local ctx = req.ctx
  local mine = ctx._rate_limit
  if not mine or ctx._rate_limit_sent then return end
  -- the first rate_limit policy of the chain writes the lines of all of them
  ctx._rate_limit_sent = true
  for i = 1, #mine do
    res:add_header("RateLimit-Policy", ctx._rate_limit_policy[i])
    res:add_header("RateLimit", mine[i])
  end
end

return new
