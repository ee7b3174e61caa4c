-- Unit specs for moongate.waf.sqli: injections and look-alikes written for this
-- spec (not taken from spec/waf/, which the detector was tuned on).
local sqli = require "moongate.waf.sqli"

describe("waf.sqli", function()
  local attacks = {
    "99 or 5=5",
    "abc' or 'z'='z",
    "zz\" OR \"q\"=\"q",
    "root'#",
    "12 UNION ALL SELECT email,pw FROM acct",
    "3;drop table audit",
    "8; delete from carts",
    "1 and sleep(3)",
    "n' AND BENCHMARK(100,SHA1(1))--",
    "1 or (select count(*) from information_schema.tables)>0",
    "k'||(select user)||'",
    "5/**/union/**/select/**/1",
    "4 having 2>1",
    "'; exec xp_cmdshell 'dir'--",
  }
  local benign = {
    "select the blue one; drop it by tomorrow",
    "Pat O'Connor",
    "rock 'n' roll",
    "she said \"or else\" and left",
    "count(*) of items in the cart",
    "1 or 2 scoops?",
    "Use DELETE FROM t WHERE id = ? in the handler",
    "from 9 to 5; union rep on site",
    "I'd rather not -- thanks",
    "sleep well",
    "(select one)",
    "Ben & Jerry's -- chunky monkey",
  }
  for _, a in ipairs(attacks) do
    it("flags " .. a, function() assert.is_string(sqli.detect(a)) end)
  end
  for _, b in ipairs(benign) do
    it("passes " .. b, function() assert.is_nil(sqli.detect(b)) end)
  end
end)
