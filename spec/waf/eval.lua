#!/usr/bin/env luajit
-- Offline check of one WAF detector module on the corpus, without a proxy:
--   luajit spec/waf/eval.lua sqli [--show passed|refused] [CLASS]
-- runs moongate.waf.NAME's detect() on every entry's payload after
-- moongate.waf.decode.normalize (for raw entries: the request line), and
-- prints per class how many it flags. For tuning a detector on its own; the
-- figure of record is scripts/waf-corpus through the real proxy.
local root = arg[0]:match("^(.*)/spec/waf/[^/]*$") or "."
package.path = root .. "/lua/?.lua;" .. root .. "/spec/?.lua;" .. package.path
local corpus = require "waf.corpus"
local decode = require "moongate.waf.decode"
local name, show, only = arg[1], nil, nil
local i = 2
while arg[i] do
  if arg[i] == "--show" then show = arg[i + 1]; i = i + 1 else only = arg[i] end
  i = i + 1
end
local det = require("moongate.waf." .. assert(name, "usage: eval.lua DETECTOR [--show passed|refused] [CLASS]"))
local entries = assert(corpus.load(root .. "/spec/waf"))
local stats, order = {}, {}
for _, e in ipairs(entries) do
  local key = e.kind .. "/" .. e.class
  if not stats[key] then stats[key] = { n = 0, hit = 0 }; order[#order + 1] = key end
  local v = e.payload
  if e.where == "raw" then v = v:match("^[^\r\n]*") end
  v = decode.normalize(v, e.where == "form" or e.where:match("^query") ~= nil)
  local r = det.detect(v)
  local s = stats[key]
  s.n = s.n + 1
  if r then s.hit = s.hit + 1 end
  if (not only or e.class == only) and ((show == "passed" and e.kind == "attack" and not r)
      or (show == "refused" and e.kind == "benign" and r)) then
    print(string.format("%s:%d [%s] %s", e.file:match("[^/]+/[^/]+$"), e.line, r or "-", v:gsub("%c", "."):sub(1, 100)))
  end
end
table.sort(order)
for _, k in ipairs(order) do print(string.format("%-24s %4d / %4d", k, stats[k].hit, stats[k].n)) end
