-- The request object handed to hooks: fields read through the FFI on access,
-- methods that change the request before it goes upstream.
local ffi = require "ffi"
local abi = require "moongate.ffi"
local hdr = require "moongate.private.headers"

local C = ffi.C
local ffi_str, ffi_cast = ffi.string, ffi.cast
local type, tostring, error, pairs, ipairs, rawset, setmetatable, tonumber =
      type, tostring, error, pairs, ipairs, rawset, setmetatable, tonumber
local concat, sort = table.concat, table.sort
local char, gsub, find, sub = string.char, string.gsub, string.find, string.sub

local info = ffi.new("mg_req_info_t")
local tls_info = ffi.new("mg_tls_info_t")
local out = ffi.new("mg_str_t[1]")
local weight_out = ffi.new("int[1]")
local active_out, ewma_out, fails_out = ffi.new("int[1]"), ffi.new("unsigned[1]"), ffi.new("int[1]")

local _M = {}
local methods = {}

local fields = {
  method = true, path = true, query = true, host = true, client_ip = true, id = true, scheme = true,
}

local mt = {
  __index = function(self, k)
    local m = methods[k]
    if m then return m end
    if fields[k] then
      if C.mg_req_info(self._r, info) ~= 0 then error("req." .. k .. ": not allowed in this hook", 2) end
      local s = info[k]
      if s.p == nil then return nil end -- not read: a request refused mid-head (docs/hooks.md)
      return ffi_str(s.p, s.len)
    end
    if k == "upstream" then -- i12-split: the chosen upstream's name (nil before the choice)
      if C.mg_req_upstream_name(self._r, out) ~= 0 then return nil end
      return ffi_str(out[0].p, out[0].len)
    end
    if k == "ctx" then
      local ctx = {}
      rawset(self, "ctx", ctx)
      return ctx
    end
    if k == "tls" then -- nil over plain HTTP; computed once per request
      local rc = C.mg_req_tls(self._r, tls_info)
      if rc == abi.EPHASE then error("req.tls: not allowed in this hook", 2) end
      if rc ~= 0 then return nil end
      local t = {
        version = ffi_str(tls_info.version.p, tls_info.version.len),
        cipher = ffi_str(tls_info.cipher.p, tls_info.cipher.len),
        sni = ffi_str(tls_info.sni.p, tls_info.sni.len),
        alpn = ffi_str(tls_info.alpn.p, tls_info.alpn.len),
        client_subject = ffi_str(tls_info.client_subject.p, tls_info.client_subject.len),
        client_issuer = ffi_str(tls_info.client_issuer.p, tls_info.client_issuer.len),
        client_fingerprint = ffi_str(tls_info.client_fingerprint.p, tls_info.client_fingerprint.len),
        client_verified = tls_info.client_verified ~= 0,
      }
      rawset(self, "tls", t)
      return t
    end
    if k == "http_version" then
      if C.mg_req_info(self._r, info) ~= 0 then error("req.http_version: not allowed in this hook", 2) end
      if info.http_minor < 0 then return nil end -- the head was refused before it was complete
      return info.http_minor == 1 and 1.1 or 1.0
    end
    return nil
  end,
  __tostring = function(self) return "moongate request " .. self.id end,
}

--- Wraps a request pointer. The methods are copied into the object (objects are
--- pooled, so once per coroutine slot): `req:header()` is then a plain field hit
--- and only the computed fields go through __index.
function _M.new(ptr)
  local obj = { _r = ffi_cast("mg_req_t *", ptr) }
  for k, f in pairs(methods) do obj[k] = f end
  return setmetatable(obj, mt)
end

--- Detaches an object from its request (see runtime.req_for), and attaches it again.
function _M.detach(req) req._r = nil end
function _M.attach(req, ptr) req._r = ffi_cast("mg_req_t *", ptr) end

--- Points a pooled request object at another request, forgetting the old one.
function _M.reset(req, ptr)
  req._r = ffi_cast("mg_req_t *", ptr)
  req.ctx = nil
  req.tls = nil
  req._answered = nil
  req._own = nil
end

-- req:header, req:headers, req:set_header, req:add_header, req:del_header
hdr.install(methods, "req", C.mg_req_header, C.mg_req_header_count, C.mg_req_header_at,
            C.mg_req_set_header)

function methods.set_path(self, p)
  if type(p) ~= "string" then error("req:set_path: string expected", 2) end
  hdr.check(C.mg_req_set_path(self._r, p, #p), "req:set_path")
  return true
end

function methods.set_query(self, q)
  if q == nil then q = "" end
  if type(q) ~= "string" then error("req:set_query: string expected", 2) end
  hdr.check(C.mg_req_set_query(self._r, q, #q), "req:set_query")
  return true
end

local function unescape(s)
  s = gsub(s, "+", " ")
  return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

--- req:arg(name): the first value of a query argument (URL-decoded), "" for a bare
--- flag, nil when absent (or when the request was refused before its target was read).
function methods.arg(self, name)
  if type(name) ~= "string" then error("req:arg: name expected", 2) end
  local q = self.query
  if q == nil then return nil end
  local pos = 1
  while pos <= #q do
    local amp = find(q, "&", pos, true) or #q + 1
    local pair = sub(q, pos, amp - 1)
    local eq = find(pair, "=", 1, true)
    local k = eq and sub(pair, 1, eq - 1) or pair
    if unescape(k) == name then return eq and unescape(sub(pair, eq + 1)) or "" end
    pos = amp + 1
  end
  return nil
end

--- req:set_upstream(up): an upstream object or its name.
function methods.set_upstream(self, up)
  local name = type(up) == "table" and up.name or up
  if type(name) ~= "string" then error("req:set_upstream: upstream or name expected", 2) end
  local rc = C.mg_req_set_upstream(self._r, name, #name)
  if rc == abi.ENOTFOUND then error("req:set_upstream: no upstream '" .. name .. "'", 2) end
  hdr.check(rc, "req:set_upstream")
  return true
end

local token = require("moongate.private.check").token

local response = require "moongate.response"
local runtime -- required on first use (it requires this module)

--- req:respond(status, body?, headers?): answers directly; nothing goes upstream.
--- While the request phase runs a route's policy chain (or its respond function,
--- or its own request hook), the response phases of the policies the request went
--- through run on this answer first (runtime.own_answer, docs/policies.md).
function methods.respond(self, status, body, headers)
  if rawget(self, "_answered") then error("req:respond: the request was already answered", 2) end
  if type(status) ~= "number" or status % 1 ~= 0 then error("req:respond: status must be an integer", 2) end
  body = body == nil and "" or body
  if type(body) ~= "string" then error("req:respond: body must be a string", 2) end
  local fields = {}
  if headers ~= nil then
    if type(headers) ~= "table" then error("req:respond: headers must be a table", 2) end
    local names = {}
    for k in pairs(headers) do names[#names + 1] = k end
    sort(names, function(a, b) return tostring(a) < tostring(b) end)
    for _, k in ipairs(names) do
      local v = headers[k]
      local list = type(v) == "table" and v or { v }
      if not token(k) then error("req:respond: bad header name " .. tostring(k), 2) end
      for _, one in ipairs(list) do
        fields[#fields + 1] = { k, response.check_field(k, tostring(one), "req:respond", 2) }
      end
    end
  end
  local own = rawget(self, "_own")
  if own then
    if status < 200 or status > 599 then error("req:respond: status must be 200..599", 2) end
    runtime = runtime or require "moongate.private.runtime"
    rawset(self, "_answered", true) -- a phase answering again raises (and is logged)
    local res = response.own(status, fields)
    runtime.own_answer(self, own, res)
    status, fields = res.status, response.own_fields(res)
  end
  local lines = {}
  for i = 1, #fields do lines[i] = fields[i][1] .. ": " .. fields[i][2] .. "\r\n" end
  local h = concat(lines)
  local rc = C.mg_req_respond(self._r, status, h, #h, body, #body)
  if rc < 0 then rawset(self, "_answered", nil) end
  if rc == abi.EINVAL then error("req:respond: status must be 200..599", 2) end
  hdr.check(rc, "req:respond")
  rawset(self, "_answered", true)
  return true
end

--- Balance hook: the servers of the chosen upstream (1-based) as { addr, weight,
-- active (attempts in flight, all workers), response_time (seconds, moving
-- average; 0 before the first response), fails (failures in a row) }.
function methods.servers(self)
  local t = {}
  local r = self._r
  for i = 0, C.mg_req_server_count(r) - 1 do
    if C.mg_req_server_at(r, i, out, weight_out) == 0 and
       C.mg_req_server_state(r, i, active_out, ewma_out, fails_out) == 0 then
      t[i + 1] = { addr = ffi_str(out[0].p, out[0].len), weight = weight_out[0], active = active_out[0],
                   response_time = tonumber(ewma_out[0]) / 1e6, fails = fails_out[0] }
      local f = C.mg_req_server_flags(r, i) -- i12-health
      t[i + 1].healthy = f >= 0 and f % 2 == 0
      t[i + 1].ejected = f >= 0 and f % 4 >= 2
    end
  end
  return t
end

--- Balance hook: use server i (1-based, as in req:servers()).
function methods.set_server(self, i)
  if type(i) ~= "number" then error("req:set_server: index expected", 2) end
  hdr.check(C.mg_req_set_server(self._r, i - 1), "req:set_server")
  return true
end

-- request bodies (core/proxy.c): read_body waits on I/O, so it goes through
-- the runtime (declared above, required on first use: it requires this module)
local err_out = ffi.new("mg_str_t[1]")
local body_out = ffi.new("mg_str_t[1]")

--- req:read_body(): waits until the whole request body is in (other requests
--- are served meanwhile), bounded by the route's buffer_body and
--- limits.body_size. true, or nil and "body too large", "timeout", "bad request
--- body", ... Request hooks and respond functions only.
function methods.read_body(self)
  runtime = runtime or require "moongate.private.runtime"
  runtime.io_begin()
  local rc = C.mg_req_read_body(self._r, err_out)
  while rc == abi.EAGAIN do
    runtime.wait("io")
    rc = C.mg_req_read_body(self._r, err_out)
  end
  if rc == 0 then return true end
  if rc == abi.EPHASE then error("req:read_body: not allowed in this hook", 2) end
  if rc == abi.EINVAL then return nil, ffi_str(err_out[0].p, err_out[0].len) end
  return nil, "failed (" .. tostring(rc) .. ")"
end

--- req:body(): the body req:read_body read (or req:set_body set), nil when none was.
function methods.body(self)
  local rc = C.mg_req_body(self._r, body_out)
  if rc == abi.EPHASE then error("req:body: not allowed in this hook", 2) end
  if rc ~= 0 then return nil end
  return ffi_str(body_out[0].p, body_out[0].len)
end

--- req:set_body(s): the upstream gets s (with its Content-Length; the client's
--- body is read and dropped). request and upstream_request hooks.
function methods.set_body(self, b)
  if type(b) ~= "string" then error("req:set_body: string expected", 2) end
  hdr.check(C.mg_req_set_body(self._r, b, #b), "req:set_body")
  return true
end

--- req:set_method(m): the method that goes upstream ("POST"...: one HTTP knows,
--- upper case, not CONNECT). request and upstream_request hooks.
function methods.set_method(self, m)
  if not token(m) then error("req:set_method: method expected", 2) end
  local rc = C.mg_req_set_method(self._r, m, #m)
  if rc == abi.EINVAL then error("req:set_method: unknown method '" .. m .. "'", 2) end
  hdr.check(rc, "req:set_method")
  return true
end

--- The upstream server used ("ip:port"), or nil.
function methods.upstream_addr(self)
  if C.mg_req_upstream_addr(self._r, out) ~= 0 then return nil end
  return ffi_str(out[0].p, out[0].len)
end

return _M
