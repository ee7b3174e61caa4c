-- docs/waf.md's rule table is the built-in rules as moongate.waf.detect.rules
-- has them: every id with its class, severity, paranoia level and message, and
-- no id the engine does not have.
require "waf.rxlib"
local detect = require "moongate.waf.detect"

local here = debug.getinfo(1, "S").source:match("^@(.*)/spec/unit/[^/]*$") or "."

describe("docs/waf.md's rule table", function()
  it("lists exactly the engine's rules, each with its class, severity, PL and message", function()
    local f = assert(io.open(here .. "/docs/waf.md"))
    local doc = {}
    for line in f:lines() do
      local id, class, sev, pl, msg = line:match("^| (9%d%d%d%d%d) | ([%w_]+) | (%d) | (%d) | (.-) |$")
      if id then doc[tonumber(id)] = { class = class, severity = tonumber(sev), pl = tonumber(pl), msg = msg } end
    end
    f:close()
    local engine = {}
    for id, r in pairs(detect.rules) do
      engine[id] = { class = r.class, severity = r.severity, pl = r.pl, msg = r.msg }
    end
    assert.is_truthy(next(engine))
    assert.same(engine, doc)
  end)
end)
