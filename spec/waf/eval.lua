#!/usr/bin/env luajit
-- Offline measure of the WAF's detection engine on the corpus, without a proxy:
--
--   luajit spec/waf/eval.lua [--dir DIR] [--pl N] [--show passed|refused|hits] [CLASS]
--   luajit spec/waf/eval.lua --cost
--   luajit spec/waf/eval.lua --module sqli [CLASS]     (one tokenizer on the payload alone)
--
-- Each entry's request (spec/waf/corpus.lua's build) is parsed back into its
-- method, target, headers and body, handed to moongate.waf.collect.request as
-- the proxy does, and every collected value goes through moongate.waf.detect
-- (PCRE2 through core/rx.c built as build/waf-rx.so: spec/waf/rxlib.lua); the
-- request is refused when the rules that hit (each id once) add up to the
-- threshold 5. Prints per class how many were refused for the training part
-- (DIR/attacks, DIR/benign; DIR defaults to spec/waf) and the held-out part
-- (DIR/holdout), then the totals. `--dir` measures one directory only.
--
-- Not seen here: what moongate's HTTP parser refuses before the WAF runs
-- (request smuggling, bad framing, NUL in the request line: 22 of the 30
-- protocol attacks); the figure of record is scripts/waf-corpus through the
-- proxy. `--cost` prints the engine's CPU per value and per request.
local root = arg[0]:match("^(.*)/spec/waf/[^/]*$") or "."
package.path = root .. "/lua/?.lua;" .. root .. "/spec/?.lua;" .. package.path
require "waf.rxlib"
local corpus = require "waf.corpus"
local collect = require "moongate.waf.collect"
local detect = require "moongate.waf.detect"
local decode = require "moongate.waf.decode"

local dir, pl, show, only, cost, module = nil, 1, nil, nil, false, nil
do
  local i = 1
  while arg[i] do
    local a = arg[i]
    if a == "--dir" then dir = arg[i + 1]; i = i + 1
    elseif a == "--pl" then pl = tonumber(arg[i + 1]); i = i + 1
    elseif a == "--show" then show = arg[i + 1]; i = i + 1
    elseif a == "--cost" then cost = true
    elseif a == "--module" then module = arg[i + 1]; i = i + 1
    else only = a end
    i = i + 1
  end
end

local engine = assert(detect.new({ paranoia = pl }))
local THRESHOLD = 5

-- raw request bytes -> method, target, version, headers { {lname, value} }, body
local function parse(raw)
  local head, body = raw:match("^(.-)\r?\n\r?\n(.*)$")
  if not head then head, body = raw, "" end
  local lines = {}
  for line in (head .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = line:gsub("\r$", "") end
  local method, target, version = lines[1]:match("^(%S+) (%S+) HTTP/(%S+)$")
  if not method then
    method, target = lines[1]:match("^(%S+) (%S+)$")
    version = "0.9"
  end
  local headers, te = {}, nil
  for k = 2, #lines do
    local n, v = lines[k]:match("^([^:]+):%s*(.-)%s*$")
    if n then
      headers[#headers + 1] = { n:lower(), v }
      if n:lower() == "transfer-encoding" then te = v:lower() end
    end
  end
  if te == "chunked" then
    local out, pos = {}, 1
    while true do
      local size, nxt = body:match("^(%x+)[^\n]*\n()", pos)
      size = size and tonumber(size, 16)
      if not size or size == 0 then break end
      out[#out + 1] = body:sub(nxt, nxt + size - 1)
      pos = nxt + size + 2
    end
    body = table.concat(out)
  end
  return method, target, version, headers, body ~= "" and body or nil
end

-- the hits of one entry, and whether they add up to a refusal
local function judge(e)
  local method, target, version, headers, body = parse(corpus.build(e))
  local hits = {}
  if not method then return true, { { id = 0, var = "request line", match = "" } } end
  local values, info = collect.request(method, target, headers, body, { version = version })
  for i = 1, #values do
    local v = values[i]
    engine:value(v.v, v.var, v.where, hits)
  end
  engine:request(info, hits)
  local seen, score = {}, 0
  for _, h in ipairs(hits) do
    if not seen[h.id] then seen[h.id] = true; score = score + h.severity end
  end
  return score >= THRESHOLD, hits
end

local function module_judge(e)
  local det = require("moongate.waf." .. module)
  local v = e.payload
  if e.where == "raw" then v = v:match("^[^\r\n]*") end
  v = decode.normalize(v, e.where == "form" or e.where:match("^query") ~= nil)
  local r = det.detect(v)
  return r and true or false, r and { { id = 0, var = module, match = tostring(r) } } or {}
end

local function run(d, label)
  local entries, errs = corpus.load(d)
  assert(#errs == 0, table.concat(errs, "\n"))
  local stats, order = {}, {}
  local tot = { attack = { n = 0, r = 0 }, benign = { n = 0, r = 0 } }
  for _, e in ipairs(entries) do
    local key = e.kind .. "/" .. e.class
    if not stats[key] then stats[key] = { n = 0, r = 0 }; order[#order + 1] = key end
    local refused, hits = (module and module_judge or judge)(e)
    local s = stats[key]
    s.n, tot[e.kind].n = s.n + 1, tot[e.kind].n + 1
    if refused then s.r, tot[e.kind].r = s.r + 1, tot[e.kind].r + 1 end
    if (not only or e.class == only) and ((show == "passed" and e.kind == "attack" and not refused)
        or (show == "refused" and e.kind == "benign" and refused) or show == "hits") then
      local ids = {}
      for _, h in ipairs(hits) do ids[#ids + 1] = string.format("%s %s %q", h.id, h.var, h.match) end
      print(string.format("%s:%d %s\n    %s", e.file:match("[^/]+/[^/]+$"), e.line,
        e.payload:gsub("%c", "."):sub(1, 110), table.concat(ids, "\n    ")))
    end
  end
  table.sort(order)
  print(string.format("== %s (%s), paranoia %d, threshold %d", label, d, pl, THRESHOLD))
  for _, k in ipairs(order) do
    print(string.format("  %-22s %4d / %4d refused", k, stats[k].r, stats[k].n))
  end
  print(string.format("  attacks refused %d / %d (%.1f %%), benign refused %d / %d (%.1f %%)",
    tot.attack.r, tot.attack.n, 100 * tot.attack.r / math.max(1, tot.attack.n),
    tot.benign.r, tot.benign.n, 100 * tot.benign.r / math.max(1, tot.benign.n)))
  return tot
end

local function measure()
  local clock = os.clock
  local function per(label, n, f)
    f() -- warm up (JIT)
    for _ = 1, 3 do f() end
    local t0 = clock()
    for _ = 1, n do f() end
    print(string.format("  %-46s %8.2f us", label, (clock() - t0) / n * 1e6))
  end
  local hits = {}
  local sentence = "Hi, the parcel for order 1234 arrived today but the box was crushed; can you send "
    .. "a new one? Thanks - Sam O'Brien."
  local fields = { "name=Sam+O%27Brien", "email=sam%40example.com", "phone=%2B44+20+7946+0958",
    "subject=Order+1234+arrived+damaged", "order=1234", "consent=yes" }
  local msg = "Hi, the parcel for order 1234 arrived today but the box was crushed and one of the two mugs is broken. "
    .. "Could you send a replacement or refund the mug? I can send photos if you need them. Thanks, Sam. "
  local post = table.concat(fields, "&") .. "&message="
  local filler = msg:gsub(" ", "+"):gsub(",", "%%2C"):gsub("%?", "%%3F")
  while #post < 2048 do post = post .. filler end
  post = post:sub(1, 2048)
  local long = collect.unescape(post:match("message=(.*)$"), true)
  while #long < 2048 do long = long .. " " .. msg end
  long = long:sub(1, 2048)
  local browser = {
    { "host", "shop.example" },
    { "user-agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0" },
    { "accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8" },
    { "accept-language", "en-GB,en;q=0.7" },
  }
  local post_headers = { browser[1], browser[2], browser[3], browser[4],
    { "content-type", "application/x-www-form-urlencoded" }, { "content-length", "2048" } }
  print(string.format("== cost (LuaJIT, one core, paranoia %d)", pl))
  per("value: 'red shoes'", 200000, function() engine:value("red shoes", "ARGS:q", "arg", hits) end)
  per("value: 'price_asc'", 200000, function() engine:value("price_asc", "ARGS:sort", "arg", hits) end)
  per("value: 120-byte sentence", 20000, function() engine:value(sentence, "ARGS:m", "arg", hits) end)
  per("value: 2 KiB form text", 2000, function() engine:value(long, "ARGS:message", "arg", hits) end)
  local punct = ("Hi, the parcel (order #1234) arrived today but the box was crushed; can't you send a new "
    .. "one? Thanks - Sam O'Brien: sam@example.com. "):rep(16):sub(1, 2048)
  per("value: 2 KiB prose with ' ( ) ; # @ :", 2000, function() engine:value(punct, "ARGS:message", "arg", hits) end)
  per("request: GET /search?q=red+shoes&... (collect+detect)", 20000, function()
    local values, info = collect.request("GET", "/search?q=red+shoes&color=black&size=9&page=3&sort=price_asc",
      browser, nil, { version = "1.1" })
    for i = 1, #values do local v = values[i]; engine:value(v.v, v.var, v.where, hits) end
    engine:request(info, hits)
  end)
  per("request: 2 KiB form POST (collect+detect)", 2000, function()
    local values, info = collect.request("POST", "/contact", post_headers, post, { version = "1.1" })
    for i = 1, #values do local v = values[i]; engine:value(v.v, v.var, v.where, hits) end
    engine:request(info, hits)
  end)
  do
    local gv, gi = collect.request("GET", "/search?q=red+shoes&color=black&size=9&page=3&sort=price_asc",
      browser, nil, { version = "1.1" })
    local pv, pi = collect.request("POST", "/contact", post_headers, post, { version = "1.1" })
    per("  GET: detect only (collect's values given)", 20000, function()
      for i = 1, #gv do local v = gv[i]; engine:value(v.v, v.var, v.where, hits) end
      engine:request(gi, hits)
    end)
    per("  POST: detect only (collect's values given)", 2000, function()
      for i = 1, #pv do local v = pv[i]; engine:value(v.v, v.var, v.where, hits) end
      engine:request(pi, hits)
    end)
  end
  assert(#hits == 0, "the cost inputs are benign, yet something hit: " .. tostring(hits[1] and hits[1].id))
end

if cost then
  measure()
elseif dir then
  run(dir, dir)
else
  local a = run(root .. "/spec/waf", "training")
  local b = run(root .. "/spec/waf/holdout", "held-out")
  print(string.format("== whole corpus: attacks refused %d / %d, benign refused %d / %d",
    a.attack.r + b.attack.r, a.attack.n + b.attack.n, a.benign.r + b.benign.r,
    a.benign.n + b.benign.n))
end
