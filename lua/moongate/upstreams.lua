-- mg.upstreams: an upstream's servers changed at run time (core/dyn.c). A change
-- is seen by every worker at once (the balancer is shared) and needs no reload;
-- usable from any hook and from timers. Errors come back as nil, message.
local ffi = require "ffi"
local abi = require "moongate.ffi"

local C = abi.C
local ffi_str = ffi.string
local type, tostring, ipairs, pairs, tonumber, floor = type, tostring, ipairs, pairs, tonumber, math.floor

local str_out = ffi.new("mg_str_t[1]")
local err_out = ffi.new("mg_str_t[1]")
local srv_out = ffi.new("mg_ups_server_t[1]")

-- mg_peer_t.flags bits (core/balance.h): the health checks' and ejection's, then ours
local DOWN, EJECTED, DRAINING, REMOVED, EJECTING = 1, 2, 4, 8, 16
local band = require("bit").band

local _M = {}

-- The upstream's index, or nil and a message.
local function find(fname, name)
  if type(name) ~= "string" then return nil, fname .. ": upstream name must be a string" end
  local u = C.mg_ups_find(name, #name)
  if u == abi.EPHASE then return nil, fname .. ": only in a worker (hooks and timers)" end
  if u < 0 then return nil, fname .. ": unknown upstream '" .. name .. "'" end
  return u
end

-- An address as an error message shows it: at most 64 bytes of it.
local function shown(addr)
  if #addr > 64 then return addr:sub(1, 64) .. "..." end
  return addr
end

local function fail(fname, rc)
  if rc == abi.ENOTFOUND and err_out[0].len == 0 then return nil, fname .. ": not found" end
  return nil, fname .. ": " .. ffi_str(err_out[0].p, err_out[0].len)
end

local function weight_of(fname, opts)
  if opts == nil then return 1 end
  if type(opts) ~= "table" then return nil, fname .. ": options must be a table" end
  for k in pairs(opts) do
    if k ~= "weight" then return nil, fname .. ": unknown option '" .. tostring(k) .. "'" end
  end
  local w = opts.weight
  if w == nil then return 1 end
  if type(w) ~= "number" or w ~= floor(w) or w < 1 or w > 1000 then
    return nil, fname .. ": weight must be an integer 1..1000, got " .. tostring(w)
  end
  return w
end

--- mg.upstreams.add(name, "ip:port" | { "ip:port", ... } [, { weight = n }]): adds
--- servers (a list: published together, one rebuild). true, or nil and a message
--- (unknown upstream, bad address, bad weight, already a server). A drained or
--- removed address comes back with its old id and this weight.
function _M.add(name, addr, opts)
  local u, err = find("mg.upstreams.add", name)
  if not u then return nil, err end
  local w, werr = weight_of("mg.upstreams.add", opts)
  if not w then return nil, werr end
  if type(addr) == "string" then
    err_out[0].len = 0
    local rc = C.mg_ups_add(u, addr, #addr, w, 1, err_out)
    if rc < 0 then return fail("mg.upstreams.add " .. shown(addr), rc) end
    return true
  end
  if type(addr) ~= "table" then return nil, "mg.upstreams.add: address must be a string or a list" end
  for i, a in ipairs(addr) do
    if type(a) ~= "string" then return nil, "mg.upstreams.add: address " .. i .. " must be a string" end
  end
  for _, a in ipairs(addr) do
    err_out[0].len = 0
    local rc = C.mg_ups_add(u, a, #a, w, 0, err_out)
    if rc < 0 then
      C.mg_ups_publish(u) -- the ones before it are in
      return fail("mg.upstreams.add " .. shown(a), rc)
    end
  end
  if C.mg_ups_publish(u) < 0 then return nil, "mg.upstreams.add: out of memory" end
  return true
end

local function change(fname, op, name, addr, weight)
  local u, err = find(fname, name)
  if not u then return nil, err end
  if type(addr) ~= "string" then return nil, fname .. ": address must be a string" end
  err_out[0].len = 0
  local rc = C.mg_ups_change(u, addr, #addr, op, weight or 0, err_out)
  if rc < 0 then return fail(fname .. " " .. shown(addr), rc) end
  return true
end

--- mg.upstreams.remove(name, addr): no new requests; those in flight finish; gone
--- from servers().
function _M.remove(name, addr) return change("mg.upstreams.remove", 0, name, addr) end
--- mg.upstreams.drain(name, addr): no new requests; those in flight finish; listed
--- as "draining" (add brings it back).
function _M.drain(name, addr) return change("mg.upstreams.drain", 1, name, addr) end
--- mg.upstreams.set_weight(name, addr, w): 1..1000, for every policy at once.
function _M.set_weight(name, addr, w)
  if w == nil then return nil, "mg.upstreams.set_weight: weight must be an integer 1..1000, got nil" end
  local ok, err = weight_of("mg.upstreams.set_weight", { weight = w })
  if not ok then return nil, err end
  return change("mg.upstreams.set_weight", 2, name, addr, w)
end

local function state_of(flags)
  if flags == 0 then return "up" end
  if band(flags, REMOVED) ~= 0 then return "removed" end
  if band(flags, DRAINING) ~= 0 then return "draining" end
  if band(flags, DOWN) ~= 0 then return "down" end
  if band(flags, EJECTED + EJECTING) ~= 0 then return "ejected" end
  return "down"
end

--- mg.upstreams.servers(name): { { id, addr, weight, active, response_time (s,
--- nil before a sample), fails, state = "up" | "draining" | "down" | "ejected" }, ... } in id
--- order (removed servers are left out), or nil and a message.
function _M.servers(name)
  local u, err = find("mg.upstreams.servers", name)
  if not u then return nil, err end
  local out = {}
  for id = 0, C.mg_ups_nservers(u) - 1 do
    if C.mg_ups_server(u, id, srv_out) == 0 then
      local s = srv_out[0]
      local flags = tonumber(s.flags)
      if band(flags, REMOVED) == 0 then
        out[#out + 1] = {
          id = id, addr = ffi_str(s.addr.p, s.addr.len), weight = s.weight, active = s.active,
          fails = s.fails, response_time = s.ewma_us > 0 and tonumber(s.ewma_us) / 1e6 or nil,
          state = state_of(flags),
        }
      end
    end
  end
  return out
end

--- mg.upstreams.list(): the upstream names, in config order.
function _M.list()
  local out = {}
  for i = 0, C.mg_ups_count() - 1 do
    if C.mg_ups_name(i, str_out) == 0 then out[#out + 1] = ffi_str(str_out[0].p, str_out[0].len) end
  end
  return out
end

return _M
