-- mg.policy.key_auth (issue 14): an API key from a header (default `apikey`) or a
-- query argument names a consumer. The keys are kept as their SHA-256 digests only
-- (the plain keys are not kept past the constructor); a presented key is hashed,
-- found by its digest and compared in constant time. The consumer goes to
-- req.ctx.consumer and the access log's `consumer` field; the key is removed
-- before the request goes upstream (hide_credentials). Missing or unknown key: 401
-- with `WWW-Authenticate: ApiKey realm="..."`. Phase: request.
-- docs/policies.md "key_auth".
local check = require "moongate.private.check"
local auth = require "moongate.private.auth"

local fail = check.fail
local type, pairs, tostring = type, pairs, tostring
local sha256, equal = auth.sha256, auth.equal

local conf_keys = { keys = true, header = true, query = true, hide_credentials = true, realm = true,
                    status = true, anonymous = true }

local Policy = {}
Policy.__index = Policy

--- mg.policy.key_auth { keys = { [key] = "consumer" }, header = "apikey", query = false, ... }
local function new(conf)
  local what = "mg.policy.key_auth"
  check.keys(conf, conf_keys, what)
  check.type(conf.keys, "table", what, "keys")
  local header = conf.header == nil and "apikey" or conf.header
  if header ~= false and not check.token(header) then
    fail("%s: 'header' must be a header name or false, got %s", what, tostring(header))
  end
  local query = conf.query
  if query == nil then query = false end
  if query ~= false and (type(query) ~= "string" or query == "") then
    fail("%s: 'query' must be a query argument name or false, got %s", what, tostring(query))
  end
  if header == false and query == false then fail("%s: 'header' and 'query' are both false: no key can be found", what) end
  local by_digest, n = {}, 0
  for k, name in pairs(conf.keys) do
    if type(k) ~= "string" or k == "" then
      fail("%s: keys: every key must be a non-empty string, got %s", what, type(k) == "string" and '""' or type(k))
    end
    auth.consumer_name(name, what, "keys[...]")
    local d = sha256(k)
    by_digest[d] = { digest = d, name = name }
    n = n + 1
  end
  if n == 0 then fail("%s: 'keys' is empty", what) end
  local anonymous = conf.anonymous
  if anonymous ~= nil then anonymous = auth.consumer_name(anonymous, what, "anonymous") end
  local realm = auth.realm(conf.realm, what)
  return setmetatable({
    name = "key_auth", n = n, by_digest = by_digest,
    header = header and header:lower() or false, query = query,
    hide = auth.bool(conf.hide_credentials, true, what, "hide_credentials"),
    status = auth.status(conf.status, 401, what), anonymous = anonymous,
    challenge = { ["WWW-Authenticate"] = ('ApiKey realm="%s"'):format(realm),
                  ["Content-Type"] = "text/plain" },
  }, Policy)
end

function Policy:describe()
  local from = {}
  if self.header then from[#from + 1] = "header=" .. self.header end
  if self.query then from[#from + 1] = "query=" .. self.query end
  return table.concat(from, " ") .. " keys=" .. self.n .. " hide_credentials=" .. tostring(self.hide)
end

--- The key the request carries (header first, then the query argument), or nil.
function Policy:key(req)
  local v
  if self.header then
    v = req:header(self.header)
    if type(v) == "table" then v = v[1] end
  end
  if (v == nil or v == "") and self.query then v = req:arg(self.query) end
  if v == "" then return nil end
  return v
end

--- Request phase: finds the consumer or refuses with 401.
function Policy:request(req)
  local key = self:key(req)
  local e
  if key then
    local d = sha256(key)
    e = self.by_digest[d]
    if e and not equal(e.digest, d) then e = nil end
  end
  if not e then
    if key == nil and self.anonymous then
      auth.set_consumer(req, self.anonymous, "key_auth")
      return
    end
    return req:respond(self.status, key and "Invalid API key\n" or "No API key found in request\n",
                       self.challenge)
  end
  auth.set_consumer(req, e.name, "key_auth")
  if self.hide then
    if self.header then req:del_header(self.header) end
    if self.query and req:arg(self.query) ~= nil then
      req:set_query(auth.query_without(req.query or "", self.query))
    end
  end
end

return new
