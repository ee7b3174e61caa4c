-- The worker side of the config: runs proxy.lua in the worker's Lua state, keeps
-- its hooks, and is the one entry point C calls for them (core/luavm.c).
local loader = require "moongate.private.loader"
local mg = require "moongate"
local abi = require "moongate.ffi"
local request = require "moongate.request"
local response = require "moongate.response"

local error, ipairs, pairs, type, rawget, rawset = error, ipairs, pairs, type, rawget, rawset
local pcall, select, setmetatable, tostring, unpack = pcall, select, setmetatable, tostring, unpack
local HOOKS = abi.hooks
local RESPOND = abi.HOOK_RESPOND
local BODY = HOOKS.body
local REQUEST_BODY = HOOKS.request_body
local REQUEST = HOOKS.request
local BALANCE = HOOKS.balance
local CACHE_KEY = HOOKS.cache_key

local _M = {}

local global = {} -- hook number -> list of functions
local routes = {} -- route index (1-based, C's order) -> { [hook number] = fn, respond = fn }
local hash_fns = {} -- upstream index (1-based, C's order) -> its hash_key function

-- issue 14: the chain's policies that have a response phase, in order, up to
-- chain position `upto` (all when nil); nil when none.
local function responders(chain, upto)
  local list = {}
  for i = 1, upto or #chain do
    if chain[i].response then list[#list + 1] = chain[i] end
  end
  return #list > 0 and list or nil
end

-- issue 14: a route's hook for `phase` that runs the chain's policies (global
-- ones first) in order, then the route's own function `own`. In the request
-- phase a policy that answers (req:respond) ends the chain: its name goes to the
-- access log's `policy` field; and while each policy runs, req._own holds the
-- response-phase policies up to it (itself included), which run on an answer it
-- gives (req:respond, own_answer below); all of them while `own` runs. nil when
-- no policy has that phase.
local function chained(chain, phase, own)
  local list, upto = {}, {}
  for i, p in ipairs(chain) do
    if p[phase] then
      list[#list + 1] = p
      upto[#list] = responders(chain, i) or false
    end
  end
  local n = #list
  if n == 0 then return nil end
  if phase == "request" then
    local all = responders(chain)
    return function(req, res)
      for i = 1, n do
        local p = list[i]
        rawset(req, "_own", upto[i])
        p:request(req)
        if rawget(req, "_answered") then
          abi.C.mg_req_set_policy(req._r, p.name, #p.name)
          return
        end
      end
      rawset(req, "_own", all)
      if own then return own(req, res) end
    end
  elseif phase == "response" then
    return function(req, res)
      for i = 1, n do list[i]:response(req, res) end
      if own then return own(req, res) end
    end
  end
  return function(req, res) -- log
    for i = 1, n do list[i]:log(req) end
    if own then return own(req, res) end
  end
end

--- issue 14: moongate's own answer `res` (response.own) to `req` is about to be
--- written (req:respond): the response phases of `list` run on it, in order. One
--- that raises is logged and the next runs; the answer goes out with its status
--- and what the phases changed (the failed one's changes before it raised too).
function _M.own_answer(req, list, res)
  for i = 1, #list do
    local p = list[i]
    local ok, err = pcall(p.response, p, req, res)
    if not ok then
      mg.log.err("req " .. tostring(req.id) .. ": policy " .. p.name .. ": response phase failed on moongate's own "
        .. tostring(res.status) .. " answer (sent all the same): " .. tostring(err))
    end
  end
end

--- Runs proxy.lua's text as the main thread read and validated it (`source`:
--- not the file again, which may have changed since) and indexes hooks.
function _M.start(path, worker_id, nroutes, source)
  local conf, err = loader.load(path, source)
  if not conf then error(err, 0) end
  if #conf.routes ~= nroutes then
    error(path .. ": proxy.lua declared " .. #conf.routes .. " routes in worker " .. worker_id
      .. " but " .. nroutes .. " in the main thread: the config must not depend on where it runs", 0)
  end
  for name, list in pairs(mg._state().hooks) do global[HOOKS[name]] = list end
  for i, u in ipairs(conf.upstreams) do hash_fns[i] = u.hash_key_fn end
  for i, r in ipairs(conf.routes) do
    local t = {}
    if r.on then
      for name, fn in pairs(r.on) do t[HOOKS[name]] = fn end
    end
    t.respond = r.respond_fn
    if r.chain then
      t.own = responders(r.chain) -- issue 14: what runs on the route's own answers
      if r.respond_own then
        -- a respond = { ... } route whose policies have a response phase: answered
        -- from Lua (loader.lua set the hook), so that they run on its answer
        local rs, hs = r.respond, {}
        for _, kv in ipairs(rs.headers) do hs[kv[1]] = kv[2] end
        t.respond = function() return rs.status, rs.body, hs end
      end
    end
    if r.cache_key then t[CACHE_KEY] = r.cache_key end -- i13-api: cache = { key = fn }
    if r.chain then -- issue 14: the policies run as part of the route's hooks
      for _, phase in ipairs { "request", "response", "log" } do
        local fn = chained(r.chain, phase, t[HOOKS[phase]])
        if fn then t[HOOKS[phase]] = fn end
      end
    end
    routes[i] = t
  end
end

local in_init = false -- init_worker runs: mg.timer.* may queue timers
local init_main = false -- init_worker runs on the main thread: a wait defers the rest to the worker

--- init_worker hooks, in a coroutine of their own (core/luavm.c). Before their
--- first wait they run on the main thread (an error fails the load); a wait
--- yields "defer" there, and the rest runs on the worker once it runs this
--- generation (an error then is logged).
function _M.init_worker()
  local list = global[HOOKS.init_worker]
  if list then
    in_init, init_main = true, true -- (an error here fails the whole state: no need to reset them then)
    for i = 1, #list do list[i]() end
    in_init, init_main = false, false
  end
end

local current
local function detach_current()
  if current then -- no request's object stays attached while other Lua runs
    request.detach(current)
    response.detach(current.res)
    current = nil
  end
end



--- connect hooks: any that returns false closes the connection.
function _M.connect(client_ip, listener)
  local list = global[HOOKS.connect]
  if not list then return true end
  detach_current()
  local conn = { client_ip = client_ip, listener = listener }
  for i = 1, #list do
    if list[i](conn) == false then return false end
  end
  return true
end

--- tls_hello hooks: the first that returns something decides: a certificate's
--- name or 1-based index, or false to refuse the handshake. nil: SNI decides.
function _M.tls_hello(sni, listener)
  local list = global[HOOKS.tls_hello]
  if not list then return nil end
  detach_current()
  local hello = { sni = sni, listener = listener }
  for i = 1, #list do
    local pick = list[i](hello)
    if pick ~= nil then return pick end
  end
  return nil
end

-- One request object per coroutine slot (C pools coroutines and passes the slot:
-- its registry ref), reset when the slot serves a new request, so no tables are
-- made per request. Slots are reused by the registry, hence the reset on `seq`.
local objects = {}
-- The object whose hook ran last. Only the request whose hook runs may be
-- touched: every other object is detached (its pointer cleared, so the API
-- refuses it) and attached again when its own request's next hook runs. A hook
-- that keeps `req` in a variable thus cannot reach another request that got
-- the same memory. (`current` is declared above, with detach_current.)

local function req_for(ptr, seq, slot)
  local req = objects[slot]
  if req == nil then
    req = request.new(ptr)
    req.res = response.new(ptr)
    req._seq = seq
    objects[slot] = req
  elseif req._seq ~= seq then
    request.reset(req, ptr)
    response.reset(req.res, ptr)
    req._seq = seq
  elseif rawget(req, "_r") == nil then
    request.attach(req, ptr)
    response.attach(req.res, ptr)
  end
  req._ptr = ptr
  if current ~= req then
    if current then
      request.detach(current)
      response.detach(current.res)
    end
    current = req
  end
  return req
end

-- Coroutines of the user's own (coroutine.create / wrap in proxy.lua): a wait
-- inside one yields WAIT first, and whoever resumed it (coroutine.resume and
-- wrap below) waits in its place, up to the hook's coroutine, which yields to C.
-- The user's coroutine then goes on where it waited, as in OpenResty: a
-- coroutine.wrap around mg.tcp / mg.http / mg.sleep works as without it.
local WAIT = {}
local co_create, co_resume, co_yield, co_running, co_status =
  coroutine.create, coroutine.resume, coroutine.yield, coroutine.running, coroutine.status
local user_co = setmetatable({}, { __mode = "k" })

--- A hook waits (mg.sleep): the request's coroutine yields to C, which resumes it
--- when what it waits for is there; other requests' hooks run meanwhile. Back
--- here, this request's object is attached again and the others detached.
local waits = 0 -- waits begun, ever: a body hook's run tells from it whether it waited

function _M.wait(kind, arg)
  waits = waits + 1
  local req = current
  local ok, err
  if user_co[co_running()] then ok, err = co_yield(WAIT, kind, arg)
  else ok, err = co_yield(kind, arg) end
  if req and current ~= req then
    if current then
      request.detach(current)
      response.detach(current.res)
    end
    request.attach(req, req._ptr)
    response.attach(req.res, req._ptr)
    current = req
  end
  return ok, err
end

-- What a resume of a user coroutine gave: a wait inside it is waited here, and
-- the coroutine resumed with the wait's result, until it yields or ends.
local function pass(co, ok, ...)
  if ok and (...) == WAIT and co_status(co) == "suspended" then
    return pass(co, co_resume(co, _M.wait(select(2, ...))))
  end
  return ok, ...
end

local function unwrap(ok, ...)
  if not ok then error((...), 0) end
  return ...
end

coroutine.create = function(fn)
  local co = co_create(fn)
  user_co[co] = true
  return co
end
coroutine.resume = function(co, ...) return pass(co, co_resume(co, ...)) end
coroutine.wrap = function(fn)
  local co = coroutine.create(fn)
  return function(...) return unwrap(pass(co, co_resume(co, ...))) end
end

--- Every API that waits on I/O (sockets, mg.http) calls this before it starts
--- anything in C: where the Lua running cannot start I/O yet, it waits until it
--- can (or raises). The wrapper then calls C, and on MG_API_EAGAIN waits with
--- _M.wait("io") and asks C again.
function _M.io_begin()
  if init_main then
    -- init_worker on the main thread: the rest of it goes on on the worker loop
    -- (C resumes this coroutine there once the generation is live)
    init_main = false
    coroutine.yield("defer")
  end
end

--- The entry point: runs hook `hook` for the request at `ptr` (number `seq`),
--- global functions first, then the route's. Returns the request object and, for
--- the body hook, the replacement chunk.
function _M.dispatch(hook, ptr, seq, slot, route, chunk)
  local req = req_for(ptr, seq, slot)
  local rt = routes[route]
  rawset(req, "_own", nil) -- issue 14: set below only where req:respond may answer
  if hook == RESPOND then
    rawset(req, "_own", rt.own)
    -- Two styles: return status, body, headers; or call req:respond (and maybe
    -- return its result, true). The first answer wins: once req:respond ran,
    -- what the function returns is not a second answer.
    local status, body, headers = rt.respond(req)
    if rawget(req, "_answered") then
      if type(status) == "number" then
        mg.log.warn("req " .. req.id .. ": the route's respond function returned status " .. status
          .. " after calling req:respond: the first answer was sent, the returned one ignored")
      end
      return req
    end
    if status ~= nil then req:respond(status, body, headers) end
    return req
  end
  local res = req.res
  local list = global[hook]
  local fn = rt and rt[hook]
  if hook == BALANCE then
    -- balance = "hash" with hash_key = function(req): its key first (nil: the
    -- client's address, as for a missing header)
    local ui = abi.C.mg_req_hash_want(req._r)
    if ui > 0 then
      local key = hash_fns[ui](req)
      if key ~= nil then
        if type(key) == "number" then key = tostring(key) end
        if type(key) ~= "string" then error("hash_key function must return a string or nil", 0) end
        if abi.C.mg_req_set_hash_key(req._r, key, #key) ~= 0 then
          error("hash_key function returned a key longer than 4096 bytes", 0)
        end
      end
    end
  end
  if hook == CACHE_KEY then
    -- i13-api: fn(req) -> the primary key (a string), or nil for the default one;
    -- the global functions first, then the route's: the last string given wins.
    -- Another type raises (C logs it and keeps the default key).
    local key
    if list then
      for i = 1, #list do
        local k = list[i](req)
        if k ~= nil then key = k end
      end
    end
    if fn then
      local k = fn(req)
      if k ~= nil then key = k end
    end
    if key ~= nil then
      if type(key) ~= "string" then error("cache_key hook must return a string or nil, got a " .. type(key), 0) end
      local rc = abi.C.mg_req_set_cache_key(req._r, key, #key)
      if rc ~= 0 then
        error("cache_key hook returned " .. (#key == 0 and "an empty key" or "a key longer than 16384 bytes"), 0)
      end
    end
    return req
  end
  if hook == REQUEST_BODY then
    -- a filter over the request body: (req, chunk, eof); the end comes as an
    -- empty chunk (C never passes an empty piece otherwise)
    local eof = #chunk == 0
    local changed = false
    if list then
      for i = 1, #list do
        local out = list[i](req, chunk, eof)
        if out ~= nil then
          if type(out) ~= "string" then error("request_body hook must return a string or nil", 0) end
          chunk, changed = out, true
        end
      end
    end
    if fn then
      local out = fn(req, chunk, eof)
      if out ~= nil then
        if type(out) ~= "string" then error("request_body hook must return a string or nil", 0) end
        chunk, changed = out, true
      end
    end
    return req, changed and chunk or nil
  end
  if hook == BODY then
    local changed, waits0 = false, waits
    if list then
      for i = 1, #list do
        local out = list[i](req, res, chunk)
        if out ~= nil then
          if type(out) ~= "string" then error("body hook must return a string or nil", 0) end
          chunk, changed = out, true
        end
      end
    end
    if fn then
      local out = fn(req, res, chunk)
      if out ~= nil then
        if type(out) ~= "string" then error("body hook must return a string or nil", 0) end
        chunk, changed = out, true
      end
    end
    -- after a wait C no longer has the piece it gave: it gets it back
    return req, (changed or waits ~= waits0) and chunk or nil
  end
  if list then
    for i = 1, #list do
      list[i](req, res)
      if rawget(req, "_answered") then return req end -- answered: later request hooks are moot
    end
  end
  if fn then
    -- issue 14: the route's request hook (its chain, then its own function)
    if hook == REQUEST and rt then rawset(req, "_own", rt.own) end
    fn(req, res)
  end
  return req
end

-- mg.timer.*: this state's timers by id. C arms and fires them (core/luavm.c);
-- the ones init_worker asks for wait in `pending` until the worker runs this
-- generation (timers_live).
local timers, pending = {}, {}
local next_id, live = 0, false

local function arm(id, delay)
  if abi.C.mg_api_timer(delay, id) ~= 0 then
    timers[id] = nil
    return false
  end
  return true
end

local handle_mt = { __index = {
  --- Stops the timer (its callback, if running, finishes). true, or false when it
  --- had already ended.
  cancel = function(h)
    local t = timers[h.id]
    if not t then return false end
    timers[h.id] = nil
    t.cancelled = true
    if live then abi.C.mg_api_timer_cancel(h.id) end -- its C timer goes now, not when due
    return true
  end,
} }

--- mg.timer.at / mg.timer.every.
function _M.timer_add(every, delay, fn, ...)
  local what = every and "mg.timer.every" or "mg.timer.at"
  if type(delay) ~= "number" or delay ~= delay or delay < 0 or delay > 1e7 then
    error(what .. ": the delay must be a number of seconds (0 to 1e7), got " .. tostring(delay), 3)
  end
  if every and delay < 0.001 then error(what .. ": the interval must be at least 0.001 s", 3) end
  if type(fn) ~= "function" then error(what .. ": the callback must be a function", 3) end
  if not live and not in_init then
    error(what .. ": only in init_worker, hooks and timer callbacks (not while proxy.lua is read)", 3)
  end
  next_id = next_id + 1
  local id = next_id
  timers[id] = { fn = fn, args = { n = select("#", ...), ... }, every = every, delay = delay }
  if live then
    if not arm(id, delay) then return nil, "timer not started (the configuration was replaced, or no memory)" end
  else
    pending[#pending + 1] = id
  end
  return setmetatable({ id = id }, handle_mt)
end

--- The worker runs this generation: the timers init_worker asked for start.
function _M.timers_live()
  live = true
  for i = 1, #pending do
    local t = timers[pending[i]]
    if t then arm(pending[i], t.delay) end
  end
  pending = {}
end

--- A timer is due: runs its callback (in a coroutine of its own: it may wait).
--- An error is logged; an `every` timer goes on after it, an `at` one ends.
function _M.timer_fire(id)
  local t = timers[id]
  if not t then return end -- cancelled
  detach_current() -- no request's object stays attached while a timer runs
  if not t.every then timers[id] = nil end
  local ok, err = pcall(t.fn, unpack(t.args, 1, t.args.n))
  if not ok then mg.log.err("timer callback failed: " .. tostring(err)) end
  if t.every and not t.cancelled and timers[id] == t then arm(id, t.delay) end
end

--- timeouts.hook dropped a run of timer `id` where it waited (C logged it): an
--- `every` timer goes on, as after an error.
function _M.timer_dropped(id)
  local t = timers[id]
  if t and t.every and not t.cancelled then arm(id, t.delay) end
end

return _M
