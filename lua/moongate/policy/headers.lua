-- mg.policy.headers (issue 14): request and response header transforms (remove,
-- rename, set, add, in that order), a path rewrite with a PCRE2 regular expression
-- and its captures (compiled once at config load in C, core/rx.c, JIT), and the
-- "security" preset of response headers. Phases: request (request headers and the
-- rewrite), response (response headers). docs/policies.md "headers".
local ffi = require "ffi"
local abi = require "moongate.ffi"
local check = require "moongate.private.check"

local C = abi.C
local fail = check.fail
local type, tostring, pairs, ipairs, setmetatable, tonumber =
      type, tostring, pairs, ipairs, setmetatable, tonumber
local lower, find, sub, concat, sort = string.lower, string.find, string.sub, table.concat, table.sort
local ffi_gc, ffi_new, ffi_str = ffi.gc, ffi.new, ffi.string

local keys = { request = true, response = true, rewrite = true, preset = true }
local op_keys = { set = true, add = true, remove = true, rename = true }

-- the "security" preset: added to a response that has no such header of its own
local SECURITY = {
  { "Strict-Transport-Security", "max-age=31536000; includeSubDomains" },
  { "X-Content-Type-Options", "nosniff" },
  { "Referrer-Policy", "strict-origin-when-cross-origin" },
  { "X-Frame-Options", "DENY" },
}

local MAX_GROUPS = 32
local ovec = ffi_new("size_t[?]", 2 * (MAX_GROUPS + 1))
local errbuf = ffi_new("char[256]")
local UNSET = ffi.cast("size_t", -1)
local erroff = ffi_new("size_t[1]")

local Policy = {}
Policy.__index = Policy

local function value(v, what, where)
  if type(v) == "number" then v = tostring(v) end
  if type(v) ~= "string" then fail("%s: %s must be a string, got a %s", what, where, type(v)) end
  if find(v, "[%z\r\n]") then fail("%s: %s has CR, LF or NUL", what, where) end
  return v
end

local function name(n, what, where)
  if not check.token(n) then fail("%s: %s: '%s' is not a header name", what, where, tostring(n)) end
  return n
end

-- sorted pairs, so that the order of operations does not depend on table order
local function sorted(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  sort(ks, function(a, b) return tostring(a) < tostring(b) end)
  return ks
end

-- { set = {N = V}, add = {N = V | {V...}}, remove = {N...}, rename = {Old = New} } -> a
-- checked list of operations { op, name, value }
local function ops(t, what, side, allow_false)
  local list = {}
  if t == nil then return list end
  check.type(t, "table", what, side)
  for k in pairs(t) do
    if not op_keys[k] then fail("%s: %s: unknown key '%s' (set, add, remove, rename)", what, side, tostring(k)) end
  end
  local where = side .. "."
  if t.remove ~= nil then
    check.type(t.remove, "table", what, where .. "remove")
    for i, n in ipairs(t.remove) do list[#list + 1] = { "remove", name(n, what, where .. "remove[" .. i .. "]") } end
  end
  if t.rename ~= nil then
    check.type(t.rename, "table", what, where .. "rename")
    for _, old in ipairs(sorted(t.rename)) do
      local new = t.rename[old]
      name(old, what, where .. "rename")
      name(new, what, where .. "rename." .. tostring(old))
      list[#list + 1] = { "rename", old, new }
    end
  end
  if t.set ~= nil then
    check.type(t.set, "table", what, where .. "set")
    for _, n in ipairs(sorted(t.set)) do
      name(n, what, where .. "set")
      local v = t.set[n]
      if v == false and allow_false then
        list[#list + 1] = { "unset", n }
      else
        list[#list + 1] = { "set", n, value(v, what, where .. "set." .. n) }
      end
    end
  end
  if t.add ~= nil then
    check.type(t.add, "table", what, where .. "add")
    for _, n in ipairs(sorted(t.add)) do
      name(n, what, where .. "add")
      local v = t.add[n]
      local vs = type(v) == "table" and v or { v }
      for i, one in ipairs(vs) do
        list[#list + 1] = { "add", n, value(one, what, where .. "add." .. n .. (type(v) == "table" and "[" .. i .. "]" or "")) }
      end
    end
  end
  return list
end

-- a replacement template -> a list of pieces: strings, and numbers (group references)
local function template(rep, groups, what, where)
  value(rep, what, where)
  if find(rep, "[%s#]") then fail("%s: %s: a path has no spaces or '#'", what, where) end
  local pieces, i, lit = {}, 1, {}
  while i <= #rep do
    local c = sub(rep, i, i)
    if c ~= "$" then
      lit[#lit + 1] = c
      i = i + 1
    else
      local n, stop = rep:match("^{(%d+)}()", i + 1)
      if not n then n, stop = rep:match("^(%d)()", i + 1) end
      if n then
        n = tonumber(n)
        if n > groups then
          fail("%s: %s: $%d but the expression has %d capture group%s", what, where, n, groups, groups == 1 and "" or "s")
        end
        if #lit > 0 then pieces[#pieces + 1] = concat(lit); lit = {} end
        pieces[#pieces + 1] = n
        i = stop
      elseif sub(rep, i + 1, i + 1) == "$" then
        lit[#lit + 1] = "$"
        i = i + 2
      else
        fail("%s: %s: '$' must be followed by a group number ($1, ${12}) or '$' (a literal $)", what, where)
      end
    end
  end
  if #lit > 0 then pieces[#pieces + 1] = concat(lit) end
  return pieces
end

local function compile(pat, what, where)
  value(pat, what, where)
  local rx = C.mg_rx_new(pat, #pat, 0, errbuf, 256, erroff)
  if rx == nil then
    fail("%s: %s: bad regular expression '%s': %s at offset %d", what, where, pat, ffi_str(errbuf), tonumber(erroff[0]))
  end
  rx = ffi_gc(rx, C.mg_rx_free)
  local groups = C.mg_rx_groups(rx)
  if groups > MAX_GROUPS then
    fail("%s: %s: at most %d capture groups, '%s' has %d", what, where, MAX_GROUPS, pat, groups)
  end
  return rx, groups
end

-- rewrite = { PATTERN, REPLACEMENT } or a list of such pairs: the first that matches
local function rewrites(r, what)
  if r == nil then return nil end
  check.type(r, "table", what, "rewrite")
  local list = type(r[1]) == "table" and r or { r }
  local out = {}
  for i, pair in ipairs(list) do
    local where = #list == 1 and type(r[1]) ~= "table" and "rewrite" or ("rewrite[" .. i .. "]")
    if type(pair) ~= "table" or #pair ~= 2 then fail("%s: %s must be { PATTERN, REPLACEMENT }", what, where) end
    for k in pairs(pair) do if k ~= 1 and k ~= 2 then fail("%s: %s must be { PATTERN, REPLACEMENT }", what, where) end end
    local rx, groups = compile(pair[1], what, where)
    out[i] = { rx = rx, groups = groups, pieces = template(pair[2], groups, what, where), pattern = pair[1], rep = pair[2] }
  end
  if #out == 0 then fail("%s: 'rewrite' is empty", what) end
  return out
end

--- mg.policy.headers { request = {...}, response = {...}, rewrite = {...}, preset = "security" }
local function new(conf)
  local what = "mg.policy.headers"
  check.keys(conf, keys, what)
  local req_ops = ops(conf.request, what, "request", false)
  local res_ops = ops(conf.response, what, "response", conf.preset ~= nil)
  if conf.preset ~= nil and conf.preset ~= "security" then
    fail("%s: 'preset' must be \"security\", got %s", what, tostring(conf.preset))
  end
  local preset = {}
  if conf.preset == "security" then
    -- a name the user set (or set to false) in response.set is theirs
    local own = {}
    for _, op in ipairs(res_ops) do if op[1] == "set" or op[1] == "unset" then own[lower(op[2])] = true end end
    for _, h in ipairs(SECURITY) do
      if not own[lower(h[1])] then preset[#preset + 1] = h end
    end
  end
  local rw = rewrites(conf.rewrite, what)
  if #req_ops == 0 and #res_ops == 0 and #preset == 0 and not rw then
    fail("%s: nothing to do (request, response, rewrite or preset)", what)
  end
  local self = setmetatable({ name = "headers", req_ops = req_ops, res_ops = res_ops, preset = preset,
                              rewrite = rw, preset_name = conf.preset }, Policy)
  -- only the phases it has work in
  if #req_ops > 0 or rw then self.request = Policy._request end
  if #res_ops > 0 or #preset > 0 then self.response = Policy._response end
  return self
end

function Policy:describe()
  local s = {}
  if #self.req_ops > 0 then s[#s + 1] = "request=" .. #self.req_ops end
  if #self.res_ops > 0 then s[#s + 1] = "response=" .. #self.res_ops end
  if self.rewrite then
    local jit = C.mg_rx_jit(self.rewrite[1].rx) == 1 and " (jit)" or ""
    s[#s + 1] = "rewrite=" .. self.rewrite[1].pattern .. " -> " .. self.rewrite[1].rep .. jit
    if #self.rewrite > 1 then s[#s] = s[#s] .. " +" .. (#self.rewrite - 1) end
  end
  if self.preset_name then s[#s + 1] = "preset=" .. self.preset_name end
  return concat(s, " ")
end

local function apply(obj, list)
  for i = 1, #list do
    local op = list[i]
    local kind = op[1]
    if kind == "set" then obj:set_header(op[2], op[3])
    elseif kind == "add" then obj:add_header(op[2], op[3])
    elseif kind == "remove" or kind == "unset" then obj:del_header(op[2])
    elseif kind == "rename" then
      local v = obj:header(op[2])
      if v ~= nil then
        obj:del_header(op[2])
        obj:set_header(op[3], v)
      end
    end
  end
end

-- the first rewrite that matches `path` -> the new path, or nil
local function rewrite_path(list, path)
  for i = 1, #list do
    local r = list[i]
    local rc = C.mg_rx_match(r.rx, path, #path, ovec, r.groups + 1)
    if rc > 0 then
      local pieces, out = r.pieces, {}
      for j = 1, #pieces do
        local p = pieces[j]
        if type(p) == "number" then
          local s, e = ovec[2 * p], ovec[2 * p + 1]
          if s == UNSET then
            out[j] = ""
          else
            out[j] = sub(path, tonumber(s) + 1, tonumber(e))
          end
        else
          out[j] = p
        end
      end
      -- the whole match is replaced; what is around it stays
      local s0, e0 = tonumber(ovec[0]), tonumber(ovec[1])
      return sub(path, 1, s0) .. concat(out) .. sub(path, e0 + 1)
    elseif rc < 0 then
      error("headers: rewrite '" .. r.pattern .. "': PCRE2 error " .. rc, 0)
    end
  end
  return nil
end

-- limits.uri_size of the loaded config (the client's own target is held to it)
local function uri_max()
  local limits = require("moongate")._state().config.limits
  return limits and limits.uri_size or require("moongate")._defaults.limits.uri_size
end

local function request(self, req)
  if self.rewrite then
    local path = req.path
    if path then
      local new = rewrite_path(self.rewrite, path)
      if new and new ~= path and #new + #(req.query or "") + 1 > uri_max() then
        -- captures repeated in the replacement multiply the client's length
        require("moongate").log.warn(("headers: rewrite of %s: a target of %d bytes is over limits.uri_size (%d)")
          :format(sub(path, 1, 64), #new + #(req.query or "") + 1, uri_max()))
        return req:respond(414, "URI Too Long\n")
      end
      if new and new ~= path then
        -- "/posts/1?by=2": the rewrite's query first, then the client's (as nginx's rewrite)
        local q = find(new, "?", 1, true)
        if q then
          local old_q = req.query
          local nq = sub(new, q + 1)
          if old_q and old_q ~= "" then nq = nq == "" and old_q or (nq .. "&" .. old_q) end
          req:set_path(sub(new, 1, q - 1))
          req:set_query(nq)
        else
          req:set_path(new)
        end
      end
    end
  end
  apply(req, self.req_ops)
end

local function response(self, req, res)
  apply(res, self.res_ops)
  local p = self.preset
  for i = 1, #p do
    if res:header(p[i][1]) == nil then res:set_header(p[i][1], p[i][2]) end
  end
end

Policy._request = request
Policy._response = response

return new
