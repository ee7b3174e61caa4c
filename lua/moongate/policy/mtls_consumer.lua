-- mg.policy.mtls_consumer (issue 14): the client certificate of a TLS listener with
-- verify_client names the consumer. `by` picks what is looked up in `consumers`:
-- the subject's common name ("subject_cn"), a subjectAltName DNS name ("san_dns",
-- case-insensitive) or the certificate's SHA-256 fingerprint ("fingerprint", hex,
-- colons allowed in the config). Only a certificate the listener verified counts.
-- required (default true): a request without a mapped certificate is refused
-- (status, default 403); false lets it through without a consumer.
-- Phase: request. docs/policies.md "mtls_consumer".
local ffi = require "ffi"
local abi = require "moongate.ffi"
local check = require "moongate.private.check"
local auth = require "moongate.private.auth"

local C = abi.C
local fail = check.fail
local type, pairs, tostring = type, pairs, tostring
local lower, gsub, find = string.lower, string.gsub, string.find
local ffi_str = ffi.string

local conf_keys = { by = true, consumers = true, required = true, status = true }
local bys = { subject_cn = true, san_dns = true, fingerprint = true }
local name_out = ffi.new("mg_str_t[1]")

local Policy = {}
Policy.__index = Policy

local function normalize(by, v)
  if by == "fingerprint" then return lower((gsub(v, ":", ""))) end
  if by == "san_dns" then return lower(v) end
  return v
end

--- mg.policy.mtls_consumer { by = "subject_cn", consumers = { ["client1"] = "alice" }, required = true }
local function new(conf)
  local what = "mg.policy.mtls_consumer"
  check.keys(conf, conf_keys, what)
  local by = conf.by == nil and "subject_cn" or conf.by
  if not bys[by] then
    fail("%s: 'by' must be \"subject_cn\", \"san_dns\" or \"fingerprint\", got %s", what, tostring(by))
  end
  check.type(conf.consumers, "table", what, "consumers")
  local map, n = {}, 0
  for v, name in pairs(conf.consumers) do
    if type(v) ~= "string" or v == "" then
      fail("%s: consumers: every key must be a non-empty string, got %s", what, type(v))
    end
    local k = normalize(by, v)
    if by == "fingerprint" and not find(k, "^%x+$") or by == "fingerprint" and #k ~= 64 then
      fail("%s: consumers: '%s' is not a SHA-256 fingerprint (64 hex digits, colons allowed)", what, v)
    end
    auth.consumer_name(name, what, "consumers['" .. v .. "']")
    map[k] = name
    n = n + 1
  end
  if n == 0 then fail("%s: 'consumers' is empty", what) end
  return setmetatable({
    name = "mtls_consumer", by = by, map = map, n = n,
    required = auth.bool(conf.required, true, what, "required"),
    status = auth.status(conf.status, 403, what),
  }, Policy)
end

function Policy:describe()
  return ("by=%s consumers=%d required=%s"):format(self.by, self.n, tostring(self.required))
end

--- The consumer the request's verified client certificate maps to, or nil.
function Policy:consumer(req)
  local tls = req.tls
  if not tls or not tls.client_verified then return nil end
  if self.by == "fingerprint" then return self.map[tls.client_fingerprint] end
  local kind = self.by == "subject_cn" and 0 or 1
  local i = 0
  while true do
    local rc = C.mg_req_tls_client_name(req._r, kind, i, name_out)
    if rc <= 0 then return nil end
    local v = normalize(self.by, ffi_str(name_out[0].p, name_out[0].len))
    local name = self.map[v]
    if name then return name end
    i = i + 1
  end
end

--- Request phase: sets the consumer, or refuses when required.
function Policy:request(req)
  local name = self:consumer(req)
  if name then return auth.set_consumer(req, name, "mtls_consumer") end
  if self.required then
    local tls = req.tls
    local why = (tls and tls.client_verified) and "client certificate not allowed\n" or "client certificate required\n"
    return req:respond(self.status, why, { ["Content-Type"] = "text/plain" })
  end
end

return new
