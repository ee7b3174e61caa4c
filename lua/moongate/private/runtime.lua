-- The worker side of the config: runs proxy.lua in the worker's Lua state, keeps
-- its hooks, and is the one entry point C calls for them (core/luavm.c).
local loader = require "moongate.private.loader"
local mg = require "moongate"
local abi = require "moongate.ffi"
local request = require "moongate.request"
local response = require "moongate.response"

local error, ipairs, pairs, type, rawget = error, ipairs, pairs, type, rawget
local HOOKS = abi.hooks
local RESPOND = abi.HOOK_RESPOND
local BODY = HOOKS.body

local _M = {}

local global = {} -- hook number -> list of functions
local routes = {} -- route index (1-based, C's order) -> { [hook number] = fn, respond = fn }

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
  for i, r in ipairs(conf.routes) do
    local t = {}
    if r.on then
      for name, fn in pairs(r.on) do t[HOOKS[name]] = fn end
    end
    t.respond = r.respond_fn
    routes[i] = t
  end
end

function _M.init_worker()
  local list = global[HOOKS.init_worker]
  if list then
    for i = 1, #list do list[i]() end
  end
end

--- connect hooks: any that returns false closes the connection.
function _M.connect(client_ip, listener)
  local list = global[HOOKS.connect]
  if not list then return true end
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
-- the same memory.
local current

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

--- A hook waits (mg.sleep): the request's coroutine yields to C, which resumes it
--- when what it waits for is there; other requests' hooks run meanwhile. Back
--- here, this request's object is attached again and the others detached.
function _M.wait(kind, arg)
  local req = current
  local ok, err = coroutine.yield(kind, arg)
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

--- The entry point: runs hook `hook` for the request at `ptr` (number `seq`),
--- global functions first, then the route's. Returns the request object and, for
--- the body hook, the replacement chunk.
function _M.dispatch(hook, ptr, seq, slot, route, chunk)
  local req = req_for(ptr, seq, slot)
  local rt = routes[route]
  if hook == RESPOND then
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
  if hook == BODY then
    local changed = false
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
    return req, changed and chunk or nil
  end
  if list then
    for i = 1, #list do
      list[i](req, res)
      if rawget(req, "_answered") then return req end -- answered: later request hooks are moot
    end
  end
  if fn then fn(req, res) end
  return req
end

return _M
