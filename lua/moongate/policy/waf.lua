-- mg.policy.waf (issue 14): a web application firewall with anomaly scoring.
-- Request phase: the method, the target as received, the headers and the body
-- (read when announced and of a type the WAF looks at, docs/waf.md) are turned
-- into variables (moongate.waf.collect), each value goes through the detectors
-- (moongate.waf.detect, built once per policy object), plus the user's rules;
-- the request's score is the sum of the severities of the distinct rule ids that
-- matched at or below `paranoia`, minus the exclusions. At `threshold` or above:
-- block mode answers `status` (403), detect mode logs and passes. Both put
-- { score =, hits = {...} } in req.ctx.waf and the rule ids in the access log's
-- `waf` field. docs/policies.md "waf", docs/waf.md.
local ffi = require "ffi"
local abi = require "moongate.ffi"
local check = require "moongate.private.check"
local collect = require "moongate.waf.collect"
local detect = require "moongate.waf.detect"

local C = abi.C
local fail = check.fail
local type, tostring, tonumber, pairs, ipairs, setmetatable, error, pcall =
      type, tostring, tonumber, pairs, ipairs, setmetatable, error, pcall
local fmt, sub, lower, find, match, concat, sort =
      string.format, string.sub, string.lower, string.find, string.match, table.concat, table.sort
local ffi_str = ffi.string

local keys = { paranoia = true, threshold = true, mode = true, status = true, body_limit = true,
               over_limit = true, exclude = true, rules = true }
local rule_keys = { id = true, severity = true, pl = true, vars = true, match = true, pattern = true,
                    msg = true }
local SEVERITY = { critical = 5, error = 4, warning = 3, notice = 2 }

local name_out, value_out = ffi.new("mg_str_t[1]"), ffi.new("mg_str_t[1]")
local target_out = ffi.new("mg_str_t[1]")
local rx_ovec = ffi.new("size_t[2]")
local rx_err, rx_erroff = ffi.new("char[256]"), ffi.new("size_t[1]")

local Policy = {}
Policy.__index = Policy

local function log_err(s) require("moongate").log.err(s) end

-- A variable selector as users write it: "ARGS" (the collection: ARGS:*),
-- "ARGS:q" (exact), "REQUEST_COOKIES:*" or "ARGS:user*" (a prefix). Header names
-- are compared as they are written in the variable (REQUEST_HEADERS:User-Agent);
-- the selector's header name is put in that form.
local function var_selector(v, what, where)
  if type(v) ~= "string" or v == "" or find(v, "[%z\r\n]") then
    fail("%s: %s: a variable like \"ARGS:q\", \"ARGS\" or \"REQUEST_COOKIES:*\", got %s", what, where, tostring(v))
  end
  local coll, name = match(v, "^([%u_]+):(.+)$")
  if not coll then
    if not find(v, "^[%u_]+$") then
      fail("%s: %s: '%s' is not a variable (COLLECTION or COLLECTION:NAME, like ARGS:q)", what, where, v)
    end
    return { exact = v, prefix = v .. ":" }
  end
  if coll == "REQUEST_HEADERS" then name = collect.canonical(lower(name)) end
  if sub(name, -1) == "*" then return { prefix = coll .. ":" .. sub(name, 1, -2) } end
  return { exact = coll .. ":" .. name }
end

local function var_matches(sel, var)
  if sel.exact and var == sel.exact then return true end
  local p = sel.prefix
  return p ~= nil and sub(var, 1, #p) == p
end

-- rule = 942100, "942*" (a prefix of the id's digits) or nil (every rule)
local function rule_selector(r, what, where)
  if r == nil then return nil end
  if type(r) == "number" and r % 1 == 0 and r > 0 then return { id = r } end
  if type(r) == "string" then
    if find(r, "^%d+$") then return { id = tonumber(r) } end
    local p = match(r, "^(%d+)%*$")
    if p then return { prefix = p } end
  end
  fail("%s: %s: 'rule' must be a rule id (942100) or a prefix like \"942*\", got %s", what, where, tostring(r))
end

local function rule_matches(sel, id)
  if sel.id then return id == sel.id end
  local s = tostring(id)
  return sub(s, 1, #sel.prefix) == sel.prefix
end

local function excludes(list, what)
  if list == nil then return {} end
  check.type(list, "table", what, "exclude")
  local out = {}
  for i, e in ipairs(list) do
    local where = "exclude[" .. i .. "]"
    if type(e) ~= "table" then fail("%s: %s must be a table like { rule = 942100, var = \"ARGS:q\" }", what, where) end
    for k in pairs(e) do
      if k ~= "rule" and k ~= "var" then fail("%s: %s: unknown key '%s' (rule, var)", what, where, tostring(k)) end
    end
    if e.rule == nil and e.var == nil then fail("%s: %s: give 'rule', 'var' or both", what, where) end
    out[i] = { rule = rule_selector(e.rule, what, where),
               var = e.var ~= nil and var_selector(e.var, what, where) or nil }
  end
  for k in pairs(list) do
    if type(k) ~= "number" then fail("%s: 'exclude' is a list of { rule =, var = } tables", what) end
  end
  return out
end

local function user_rules(list, paranoia, what)
  if list == nil then return {} end
  check.type(list, "table", what, "rules")
  local out, seen = {}, {}
  for i, r in ipairs(list) do
    local where = "rules[" .. i .. "]"
    if type(r) ~= "table" then fail("%s: %s must be a table like { id = 100001, match = fn }", what, where) end
    for k in pairs(r) do
      if not rule_keys[k] then
        fail("%s: %s: unknown key '%s' (id, severity, pl, vars, match, pattern, msg)", what, where, tostring(k))
      end
    end
    local id = r.id
    if type(id) ~= "number" or id % 1 ~= 0 or id < 1 or id > 999999999 then
      fail("%s: %s: 'id' must be a whole number (1 to 999999999), got %s", what, where, tostring(id))
    end
    if detect.rules[id] then fail("%s: %s: id %d is a built-in rule's", what, where, id) end
    if seen[id] then fail("%s: %s: id %d is used twice", what, where, id) end
    seen[id] = true
    local sev = r.severity == nil and "critical" or r.severity
    if type(sev) == "string" then sev = SEVERITY[sev] end
    if type(sev) ~= "number" or sev % 1 ~= 0 or sev < 0 or sev > 100 then
      fail("%s: %s: 'severity' must be critical, error, warning, notice or a whole number, got %s",
           what, where, tostring(r.severity))
    end
    local pl = r.pl == nil and 1 or r.pl
    if type(pl) ~= "number" or pl % 1 ~= 0 or pl < 1 or pl > 4 then
      fail("%s: %s: 'pl' must be 1, 2, 3 or 4, got %s", what, where, tostring(r.pl))
    end
    if (r.match == nil) == (r.pattern == nil) then
      fail("%s: %s: give one of 'match' (a function) or 'pattern' (a PCRE2 regular expression)", what, where)
    end
    local rule = { id = id, severity = sev, pl = pl,
                   msg = r.msg == nil and ("user rule " .. id) or check.type(r.msg, "string", what, where .. ".msg") }
    if r.match ~= nil then
      if type(r.match) ~= "function" then fail("%s: %s: 'match' must be a function (v, var, req)", what, where) end
      rule.fn = r.match
    else
      if type(r.pattern) ~= "string" or r.pattern == "" then
        fail("%s: %s: 'pattern' must be a non-empty string", what, where)
      end
      local rx = C.mg_rx_new(r.pattern, #r.pattern, 0, rx_err, 256, rx_erroff)
      if rx == nil then
        fail("%s: %s: bad regular expression '%s': %s at offset %d", what, where, r.pattern,
             ffi_str(rx_err), tonumber(rx_erroff[0]))
      end
      rule.rx = ffi.gc(rx, C.mg_rx_free)
      rule.pattern = r.pattern
    end
    if r.vars ~= nil then
      check.type(r.vars, "table", what, where .. ".vars")
      local sels = {}
      for j, v in ipairs(r.vars) do sels[j] = var_selector(v, what, where .. ".vars[" .. j .. "]") end
      if #sels == 0 then fail("%s: %s: 'vars' is empty", what, where) end
      rule.vars = sels
    end
    if pl <= paranoia then out[#out + 1] = rule end
  end
  for k in pairs(list) do
    if type(k) ~= "number" then fail("%s: 'rules' is a list of rule tables", what) end
  end
  return out
end

--- mg.policy.waf { paranoia, threshold, mode, status, body_limit, exclude, rules }
local function new(conf)
  local what = "mg.policy.waf"
  if conf == nil then conf = {} end
  if type(conf) ~= "table" then fail("%s: expects a table", what) end
  check.keys(conf, keys, what)
  local paranoia = conf.paranoia == nil and 1 or check.whole(conf.paranoia, what, "paranoia", 1, 4)
  local threshold = conf.threshold == nil and 5 or check.whole(conf.threshold, what, "threshold", 1, 10000)
  local mode = conf.mode == nil and "block" or conf.mode
  if mode ~= "block" and mode ~= "detect" then
    fail("%s: 'mode' must be \"block\" or \"detect\", got %s", what, tostring(conf.mode))
  end
  local status = conf.status == nil and 403 or check.whole(conf.status, what, "status", 400, 599)
  local body_limit = conf.body_limit == nil and 128 * 1024 or check.size(conf.body_limit, what, "body_limit", 1)
  -- what block mode does with a request it cannot inspect whole (a body over
  -- body_limit or buffer_body, more values than collected, an encoded body)
  local over_limit = conf.over_limit == nil and "refuse" or conf.over_limit
  if over_limit ~= "refuse" and over_limit ~= "pass" then
    fail("%s: 'over_limit' must be \"refuse\" or \"pass\", got %s", what, tostring(conf.over_limit))
  end
  local excl = excludes(conf.exclude, what)
  local rules = user_rules(conf.rules, paranoia, what)
  local engine, err = detect.new({ paranoia = paranoia })
  if not engine then fail("%s: the detectors: %s", what, tostring(err)) end
  -- the target as the client sent it (before path normalization) for every request
  require("moongate")._state().config.keep_target = true
  -- exclusions of a whole variable (no rule): the value is not looked at at all
  local skip_vars = {}
  for _, e in ipairs(excl) do
    if not e.rule then skip_vars[#skip_vars + 1] = e.var end
  end
  return setmetatable({
    name = "waf",
    paranoia = paranoia, threshold = threshold, mode = mode, status = status, body_limit = body_limit,
    over_limit = over_limit, exclude = excl, rules = rules,
    _engine = engine, _skip_vars = skip_vars,
    _block = mode == "block",
    _refuse = mode == "block" and over_limit == "refuse",
  }, Policy)
end

function Policy:describe()
  local s = fmt("paranoia=%d threshold=%d mode=%s status=%d body_limit=%d", self.paranoia,
                self.threshold, self.mode, self.status, self.body_limit)
  if self.over_limit ~= "refuse" then s = s .. " over_limit=" .. self.over_limit end
  if #self.exclude > 0 then s = s .. " exclude=" .. #self.exclude end
  if #self.rules > 0 then s = s .. " rules=" .. #self.rules end
  return s
end

local function skipped(self, var)
  local sv = self._skip_vars
  for i = 1, #sv do if var_matches(sv[i], var) then return true end end
  return false
end

-- Hits the detectors find in a whole string rather than in one value: the
-- query string (ARGS:* of the query) and the Cookie header (REQUEST_COOKIES:*).
-- An exclusion covers such a hit when the string without the pieces the
-- exclusion covers no longer has it (the excluded field's text was what
-- matched); an exclusion for one field does not silence what the rest of the
-- string holds.
local WHOLE = { QUERY_STRING = "ARGS:", ["REQUEST_HEADERS:Cookie"] = "REQUEST_COOKIES:" }

-- s split at sep without the pieces whose variable sel covers; nil when no
-- piece is covered
local function without(sel, s, sep, prefix)
  local kept, n, dropped = {}, 0, false
  local pos, len = 1, #s
  while pos <= len do
    local e = find(s, sep, pos, true) or len + 1
    local piece = sub(s, pos, e - 1)
    local eq = find(piece, "=", 1, true)
    local name
    if prefix == "ARGS:" then name = collect.unescape(eq and sub(piece, 1, eq - 1) or piece, true)
    else name = eq and match(sub(piece, 1, eq - 1), "^%s*(.-)%s*$") or "" end
    if piece ~= "" and var_matches(sel, prefix .. name) then dropped = true
    else n = n + 1; kept[n] = piece end
    pos = e + 1
  end
  if not dropped then return nil end
  return concat(kept, sep, 1, n)
end

local function covers(self, sel, id, var, info)
  if var_matches(sel, var) then return true end
  local prefix = WHOLE[var]
  if not prefix or not info then return false end
  local again = { method = info.method, version = info.version, host = info.host, path = info.path,
                  target = "", headers = {} }
  if prefix == "ARGS:" then
    again.query = info.query and without(sel, info.query, "&", prefix)
    if not again.query then return false end
  else
    local cookie
    for _, h in ipairs(info.headers or {}) do if h[1] == "cookie" then cookie = h[2] break end end
    local rest = cookie and without(sel, cookie, ";", prefix)
    if not rest then return false end
    again.headers = { { "cookie", rest } }
  end
  local hits = {}
  self._engine:request(again, hits)
  for i = 1, #hits do
    if hits[i].id == id and hits[i].var == var then return false end
  end
  return true
end

local function excluded(self, id, var, info)
  local ex = self.exclude
  for i = 1, #ex do
    local e = ex[i]
    if (not e.rule or rule_matches(e.rule, id)) and (not e.var or covers(self, e.var, id, var, info)) then return true end
  end
  return false
end

-- The request's headers in arrival order: { lower-case name, value }.
local function head(r)
  local n = tonumber(C.mg_req_header_count(r))
  local out = {}
  for i = 0, n - 1 do
    if C.mg_req_header_at(r, i, name_out, value_out) == 0 then
      out[#out + 1] = { lower(ffi_str(name_out[0].p, name_out[0].len)),
                        ffi_str(value_out[0].p, value_out[0].len) }
    end
  end
  return out
end

local function header_of(headers, name)
  for i = 1, #headers do if headers[i][1] == name then return headers[i][2] end end
  return nil
end

-- Attacker bytes (a variable name, a rule's error) in a log line: control
-- bytes, quotes and backslashes as \xHH, so one request is one line.
local function esc(s)
  return (tostring(s or ""):gsub("[%c\"\\\127]", function(c) return fmt("\\x%02x", c:byte()) end))
end

-- The body when one is announced and of a type the WAF looks at: body, or nil
-- and the answer to give (status, log line) when it cannot be inspected, or
-- nil, nil, err when the read failed. Over the route's read bound
-- (buffer_body, limits.body_size) or with a Content-Encoding the WAF does not
-- undo, it is not read: refused (over_limit = "refuse", block mode) or let
-- through as it streams, logged.
local function read_body(self, req, headers)
  local cl = header_of(headers, "content-length")
  local te = header_of(headers, "transfer-encoding")
  if not te and (not cl or tonumber(cl) == 0) then return nil end
  -- Content-Type and Content-Encoding as the origin may read them: another
  -- Content-Type than the first (the last wins in some frameworks, others join
  -- them), any coding in any Content-Encoding field
  local ctype, ce
  for i = 1, #headers do
    local h = headers[i]
    if h[1] == "content-type" then
      if ctype and h[2] ~= ctype then
        return nil, 400, fmt("waf: request %s: several Content-Type header fields (the origin may read another): the body is not inspected", req.id)
      end
      ctype = h[2]
    elseif h[1] == "content-encoding" and not match(lower(h[2]), "^[%s,]*identity[%s,]*$") and find(h[2], "%S") then
      ce = ce or h[2]
    end
  end
  local kind = collect.kind(ctype)
  local n = cl and tonumber(cl)
  local bound = tonumber(C.mg_req_body_bound(req._r))
  if not kind then
    -- another binary type: a small one is read all the same, for the JSON or
    -- XML an origin that ignores the type would parse
    if not n or n > self.body_limit then return nil end
    kind = "sniff"
  end
  if kind == "sniff" then
    -- declared binary: looked at (for JSON or XML) only when it fits
    if not n or (bound and bound >= 0 and n > bound) then return nil end
  else
    if ce then
      return nil, 415, fmt("waf: request %s: a body with Content-Encoding: %s (the origin may decode it) is not inspected",
                           req.id, esc(sub(ce, 1, 64)))
    end
    if n and bound and bound >= 0 and n > bound then
      return nil, 413, fmt("waf: request %s: a body of %d bytes is over the route's buffer_body (%d): not inspected",
                           req.id, n, bound)
    end
  end
  local ok, err = req:read_body()
  if not ok then return nil, nil, err end
  return req:body() or ""
end
local function user_rule_hits(self, v, var, req, hits)
  local rules = self.rules
  for i = 1, #rules do
    local r = rules[i]
    local want = true
    if r.vars then
      want = false
      for j = 1, #r.vars do if var_matches(r.vars[j], var) then want = true; break end end
    end
    if want then
      local hit
      if r.fn then
        local ok, res = pcall(r.fn, v, var, req)
        if not ok then
          log_err(fmt("waf: rule %d: %s", r.id, esc(res)))
        else
          hit = res and true or false
        end
      else
        local rc = C.mg_rx_match(r.rx, v, #v, rx_ovec, 1)
        hit = rc > 0
        if rc < 0 then log_err(fmt("waf: rule %d: pattern match failed (%d) on %s", r.id, rc, esc(var))) end
      end
      if hit then
        hits[#hits + 1] = { id = r.id, severity = r.severity, pl = r.pl, msg = r.msg, var = var,
                            match = sub(v, 1, 64) }
      end
    end
  end
end

local function excerpt(s) return esc(sub(tostring(s or ""), 1, 64)) end

-- a request that scored under the threshold but was not inspected whole
local MESSAGES = { [400] = "Bad Request\n", [413] = "Request Entity Too Large\n", [415] = "Unsupported Media Type\n" }
function Policy:uninspected(req, status, why)
  if not status then return end
  if self._refuse then
    log_err(why .. ", refused")
    return req:respond(status, MESSAGES[status] or "Forbidden\n")
  end
  log_err(why)
end

function Policy:request(req)
  local r = req._r
  local headers = head(r)
  local target
  if C.mg_req_orig_target(r, target_out) == 0 then
    target = ffi_str(target_out[0].p, target_out[0].len)
  else
    local q = req.query
    target = (req.path or "/") .. ((q and q ~= "") and ("?" .. q) or "")
  end
  local body, status, why = read_body(self, req, headers)
  if not body and not status and why then return end -- the read failed: moongate answers it (413, 408, 400)
  local values, info = collect.request(req.method, target, headers, body,
    { body_limit = self.body_limit, sniff = true, version = req.http_version == 1.0 and "1.0" or "1.1" })
  -- what was not inspected: refused in block mode (over_limit = "refuse"), as
  -- ModSecurity's SecRequestBodyLimitAction Reject; logged either way
  if not status then
    if info.over_limit then
      status = 413
      why = fmt("waf: request %s: a body of %d bytes, inspected the first %d (body_limit)", req.id, #body, self.body_limit)
    elseif info.too_many then
      status = self.status
      why = fmt("waf: request %s: more than %d values, the rest not inspected", req.id, info.count)
    end
  end
  local engine, threshold, block, paranoia = self._engine, self.threshold, self._block, self.paranoia
  local hits = {}
  local seen, counted, score, done = {}, {}, 0, 0
  local nex = #self.exclude
  -- folds the hits appended since the last call into the score
  local function tally()
    for i = done + 1, #hits do
      local h = hits[i]
      local id = h.id
      if not seen[id] and (h.pl or 1) <= paranoia and (nex == 0 or not excluded(self, id, h.var or "", info)) then
        seen[id] = true
        score = score + (h.severity or 0)
        counted[#counted + 1] = h
      end
    end
    done = #hits
    return block and score >= threshold
  end

  engine:request(info, hits)
  local over = tally()
  -- a request refused as not inspectable is not scanned further: the values
  -- of a body over body_limit would only cost time
  if not over and not (status and self._refuse) then
    local nrules = #self.rules
    for i = 1, #values do
      local x = values[i]
      local var = x.var
      if #self._skip_vars == 0 or not skipped(self, var) then
        engine:value(x.v, var, x.where, hits)
        if nrules > 0 then user_rule_hits(self, x.v, var, req, hits) end
        if #hits > done and tally() then over = true; break end
      end
    end
  end

  if #counted == 0 then return self:uninspected(req, status, why) end
  local ids, vars = {}, {}
  for i = 1, #counted do
    ids[i] = tostring(counted[i].id)
    vars[i] = esc(counted[i].var or "-")
  end
  req.ctx.waf = { score = score, hits = counted }
  local idlist = concat(ids, ",")
  C.mg_req_set_waf(r, idlist, #idlist <= 512 and #idlist or 512)
  if score < threshold then return self:uninspected(req, status, why) end
  if block then
    return req:respond(self.status, "Forbidden\n")
  end
  if why then log_err(why) end
  local parts = {}
  for i = 1, #counted do
    parts[i] = fmt('%s %s "%s"', ids[i], vars[i], excerpt(counted[i].match))
  end
  require("moongate").log.warn(fmt("waf: would refuse (score %d): %s (request %s)", score, concat(parts, "; "), req.id))
end

return new
