-- mg.policy.ip_rules (issue 14): allow / deny lists of IPv4 and IPv6 prefixes,
-- matched in C (core/cidr.c: path-compressed tries, O(prefix length) whatever the
-- number of prefixes). deny wins over allow; with an allow list, every address
-- outside it is refused. An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is the IPv4
-- address a.b.c.d. Phase: request. docs/policies.md "ip_rules".
local ffi = require "ffi"
local abi = require "moongate.ffi"
local check = require "moongate.private.check"

local C = abi.C
local fail = check.fail
local type, tostring, ipairs, pairs = type, tostring, ipairs, pairs
local ffi_str = ffi.string

local keys = { allow = true, deny = true, source = true, status = true, body = true }
local sources = { connection = true, forwarded = true }
local peer_out = ffi.new("mg_str_t[1]")

local Policy = {}
Policy.__index = Policy

-- A prefix set owned by Lua: freed by the garbage collector (ffi.gc).
local function build(list, what, k)
  check.type(list, "table", what, k)
  for key in pairs(list) do
    if type(key) ~= "number" then fail("%s: '%s' must be a list of addresses or prefixes", what, k) end
  end
  local set = C.mg_api_cidr_new()
  if set == nil then fail("%s: out of memory", what) end
  set = ffi.gc(set, C.mg_api_cidr_free)
  for i, p in ipairs(list) do
    if type(p) ~= "string" then fail("%s: %s[%d] must be a string, got %s", what, k, i, type(p)) end
    local rc = C.mg_api_cidr_add(set, p, #p)
    if rc == abi.ENOMEM then fail("%s: out of memory at %s[%d]", what, k, i) end
    if rc ~= 0 then fail("%s: %s[%d] is not an IPv4 or IPv6 address or prefix: %s", what, k, i, p) end
  end
  return set, #list
end

--- mg.policy.ip_rules { allow = { cidrs }, deny = { cidrs }, source = "connection" | "forwarded", status = 403 }
local function new(conf)
  local what = "mg.policy.ip_rules"
  if type(conf) ~= "table" then fail("%s: expects a table", what) end
  check.keys(conf, keys, what)
  if conf.allow == nil and conf.deny == nil then fail("%s: needs 'allow', 'deny' or both", what) end
  local source = conf.source == nil and "connection" or conf.source
  if not sources[source] then
    fail("%s: 'source' must be \"connection\" or \"forwarded\", got %s", what, tostring(source))
  end
  local status = 403
  if conf.status ~= nil then
    status = check.number(conf.status, what, "status", 400, 599)
    if status % 1 ~= 0 then fail("%s: 'status' must be a whole number", what) end
  end
  local self = setmetatable({
    name = "ip_rules", source = source, status = status,
    body = conf.body == nil and "Forbidden\n" or check.type(conf.body, "string", what, "body"),
    n_allow = 0, n_deny = 0,
  }, Policy)
  if conf.allow ~= nil then
    self._allow, self.n_allow = build(conf.allow, what, "allow")
    if self.n_allow == 0 then fail("%s: 'allow' is empty: nobody would get through (leave it out to allow all)", what) end
  end
  if conf.deny ~= nil then self._deny, self.n_deny = build(conf.deny, what, "deny") end
  return self
end

function Policy:describe()
  return ("allow=%d deny=%d source=%s"):format(self.n_allow, self.n_deny, self.source)
end

--- The address the rules look at: the connection's peer, or the client after
--- trusted_proxies (X-Forwarded-For believed only from those proxies).
function Policy:address(req)
  if self.source == "forwarded" then return req.client_ip end
  if C.mg_req_peer_ip(req._r, peer_out) ~= 0 then return nil end
  return ffi_str(peer_out[0].p, peer_out[0].len)
end

--- true when the rules let `ip` (text) through.
function Policy:allows(ip)
  if ip == nil then return self._allow == nil end
  if self._deny and C.mg_api_cidr_match(self._deny, ip, #ip) == 1 then return false end
  if self._allow then return C.mg_api_cidr_match(self._allow, ip, #ip) == 1 end
  return true
end

--- Request phase: refuses (status, default 403) what the rules do not allow.
function Policy:request(req)
  if not self:allows(self:address(req)) then
    req:respond(self.status, self.body)
  end
end

return new
