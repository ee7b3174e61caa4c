-- Attacks on mg.policy.waf itself (issue 14): parser differentials (the origin
-- parses a value the WAF did not see), what the WAF cannot inspect (a body over
-- its bounds, too many values, an encoded body), and its detect-mode log. The
-- real binary and the real detectors over loopback; each case is a request an
-- attacker sends, the answer is the WAF's.
local helpers = require "spec.helpers"

local function urlencode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

local CONF = [[
local mg = require "moongate"
mg.config { workers = 1, access_log = "access.log", error_log = "error.log" }
mg.listen { "127.0.0.1:${port}" }
local o = mg.upstream "o" { servers = { "${origin}" } }
mg.route { path = "/buf/", upstream = o, buffer_body = "4k", use = { mg.policy.waf {} } }
mg.route { path = "/small/", upstream = o, use = { mg.policy.waf { body_limit = "1k" } } }
mg.route { path = "/pass/", upstream = o, buffer_body = "4k",
           use = { mg.policy.waf { body_limit = "1k", over_limit = "pass" } } }
mg.route { path = "/det/", upstream = o, use = { mg.policy.waf { mode = "detect" } } }
mg.route { path = "/ex/", upstream = o, use = { mg.policy.waf { exclude = { { var = "ARGS:note" },
  { var = "REQUEST_COOKIES:pref" }, { var = "ARGS:comment" } } } } }
mg.route { path = "/", upstream = o, use = { mg.policy.waf {} } }
]]

describe("mg.policy.waf under attack", function()
  local origin, proxy
  local n = 0

  lazy_setup(function()
    origin = helpers.origin({ name = "o" })
    proxy = helpers.proxy(CONF, { vars = { origin = origin.addr } })
  end)
  lazy_teardown(function() helpers.teardown(proxy) end)

  -- one request to a fresh path under prefix: the response, the path
  local function send(prefix, opts)
    n = n + 1
    local path = prefix .. "r" .. n
    local headers = opts.headers or {}
    if opts.ctype then headers["Content-Type"] = opts.ctype end
    local c = helpers.connect(proxy.port)
    local res = assert(c:request({ method = opts.method or "POST", path = path .. (opts.query or ""),
                                   headers = headers, body = opts.body }))
    c:close()
    return res, path
  end

  local function refused(res, path, status)
    assert.equal(status or 403, res.status, res.body)
    assert.equal(0, origin:count_path(path))
  end

  local function log_has(file, s)
    return helpers.wait_until(function() return (proxy:file(file) or ""):find(s, 1, true) end, 3)
  end

  local SQLI = "1' OR 1=1 --"

  ------------------------------------------------------------ what the WAF cannot inspect

  it("a body announced over the route's buffer_body is refused 413 in block mode, not streamed uninspected", function()
    local body = "q=" .. urlencode(SQLI) .. "&pad=" .. string.rep("x", 8000)
    local res, path = send("/buf/", { ctype = "application/x-www-form-urlencoded", body = body })
    refused(res, path, 413)
    assert.truthy(log_has("error.log", "over the route's buffer_body (4096): not inspected, refused"))
  end)

  it("a body past body_limit with the attack after the limit is refused 413 in block mode", function()
    local body = "pad=" .. string.rep("x", 2000) .. "&q=" .. urlencode(SQLI)
    local res, path = send("/small/", { ctype = "application/x-www-form-urlencoded", body = body })
    refused(res, path, 413)
    assert.truthy(log_has("error.log", "inspected the first 1024 (body_limit), refused"))
  end)

  it("a body over body_limit is refused before its values are scanned (130 KiB of '<a' costs no detector time)", function()
    local socket = require "socket"
    local t0 = socket.gettime()
    local res, path = send("/", { ctype = "application/x-www-form-urlencoded", body = "q=" .. string.rep("<a", 66560) })
    refused(res, path, 413)
    assert.is_true(socket.gettime() - t0 < 2, "took " .. (socket.gettime() - t0) .. " s")
  end)

  it("over_limit = \"pass\": the first body_limit bytes are inspected, the rest passes (logged)", function()
    local res, path = send("/pass/", { ctype = "application/x-www-form-urlencoded",
                                       body = "pad=" .. string.rep("x", 2000) .. "&q=ok" })
    assert.equal(200, res.status, res.body)
    assert.equal(1, origin:count_path(path))
    res, path = send("/pass/", { ctype = "application/x-www-form-urlencoded",
                                 body = "q=" .. urlencode(SQLI) .. "&pad=" .. string.rep("x", 2000) })
    refused(res, path)
  end)

  it("a multipart upload past body_limit in a binary file part is not refused: its text fields are inspected", function()
    local png = "\137PNG\r\n\26\n\0\0\0\rIHDR" .. string.rep("\0\1\2", 1000)
    local mp = "--BB\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n"
      .. png .. "\r\n--BB\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nholiday\r\n--BB--\r\n"
    local res, path = send("/small/", { ctype = "multipart/form-data; boundary=BB", body = mp })
    assert.equal(200, res.status, res.body)
    assert.equal(1, origin:count_path(path))
    mp = mp:gsub("holiday", SQLI)
    res, path = send("/small/", { ctype = "multipart/form-data; boundary=BB", body = mp })
    refused(res, path)
  end)

  it("more values than the WAF collects (1100 form fields), then the attack: refused, not passed with 920190 alone", function()
    local t = {}
    for k = 1, 1100 do t[k] = "a" .. k .. "=1" end
    local res, path = send("/", { ctype = "application/x-www-form-urlencoded",
                                  body = table.concat(t, "&") .. "&q=" .. urlencode("<script>alert(1)</script>") })
    refused(res, path)
  end)

  it("a gzip-encoded body (the origin may inflate it) is refused 415 in block mode", function()
    local dir = helpers.tmpdir()
    helpers.write_file(dir .. "/b.json", '{"q":"' .. SQLI .. '"}')
    local f = assert(io.popen("gzip -n -c " .. dir .. "/b.json"))
    local gz = f:read("*a")
    f:close()
    assert.equal("\31\139", gz:sub(1, 2))
    local res, path = send("/", { ctype = "application/json", headers = { ["Content-Encoding"] = "gzip" }, body = gz })
    refused(res, path, 415)
    -- identity is no encoding
    res, path = send("/", { ctype = "application/json", headers = { ["Content-Encoding"] = "identity" },
                            body = '{"a":"b"}' })
    assert.equal(200, res.status, res.body)
  end)

  local function raw(s)
    local c = helpers.connect(proxy.port)
    c:send(s)
    local res = assert(c:response())
    c:close()
    return res
  end

  it("two Content-Type fields that differ (the origin may read the second): refused 400, not skipped as image/png", function()
    n = n + 1
    local path = "/r" .. n
    local b = '{"q":"' .. SQLI .. '"}'
    local res = raw("POST " .. path .. " HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
      .. "Content-Type: application/json\r\nContent-Length: " .. #b .. "\r\n\r\n" .. b)
    refused(res, path, 400)
  end)

  it("a second Content-Encoding field counts: identity then gzip is refused 415", function()
    n = n + 1
    local path = "/r" .. n
    local res = raw("POST " .. path .. " HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
      .. "Content-Encoding: identity\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n{}")
    refused(res, path, 415)
  end)

  ------------------------------------------------------------ exclusions

  it("an exclusion of one argument does not silence what the whole query string holds elsewhere", function()
    -- '&&id' is found in the whole query string (QUERY_STRING); ARGS:note is excluded
    local res, path = send("/ex/", { method = "GET", query = "?q=x&&id&note=1" })
    refused(res, path)
    -- the excluded field's own text is still excluded
    res, path = send("/ex/", { method = "GET", query = "?q=x&note=a%26%26id" })
    assert.equal(200, res.status, res.body)
    -- and the same for the Cookie header: '&&id' and '|id' in another cookie than pref
    res, path = send("/ex/", { method = "GET", headers = { Cookie = "pref=1; s=x&&id; t=2" } })
    refused(res, path)
  end)

  ------------------------------------------------------------ multipart differentials

  local function mp(head, content, ctype)
    return { ctype = ctype or "multipart/form-data; boundary=BB",
             body = "--BB\r\n" .. head .. "\r\n\r\n" .. content .. "\r\n--BB--\r\n" }
  end

  it("multipart: a quoted name holding '; filename=' is a field (the origin sees it), not a file", function()
    local res, path = send("/", mp('Content-Disposition: form-data; name="x; filename=a.png"\r\nContent-Type: image/png', SQLI))
    refused(res, path)
  end)

  it("multipart: a second name parameter (PHP takes the last) is not hidden by an exclusion of the first", function()
    local res, path = send("/ex/", mp('Content-Disposition: form-data; name="comment"; name="q"', SQLI))
    refused(res, path)
    res, path = send("/ex/", mp('Content-Disposition: form-data; name="comment"', SQLI))
    assert.equal(200, res.status, res.body) -- the exclusion itself still works
  end)

  it("multipart: filename*= (RFC 5987) and FILENAME= name the file too", function()
    local res, path = send("/", mp("Content-Disposition: form-data; name=\"f\"; filename*=UTF-8''shell%2Ephp", "x"))
    refused(res, path)
    res, path = send("/", mp('Content-Disposition: form-data; name="f"; FILENAME="shell.php"', "x"))
    refused(res, path)
  end)

  it("multipart: a quoted-printable part is decoded as the origin decodes it", function()
    local res, path = send("/", mp('Content-Disposition: form-data; name="q"\r\nContent-Transfer-Encoding: quoted-printable',
                                   "=3Cscript=3Ealert(1)=3C/script=3E"))
    refused(res, path)
  end)

  it("multipart: a file declared image/png whose content is text (a script) is looked at", function()
    local res, path = send("/", mp('Content-Disposition: form-data; name="f"; filename="a.gif"\r\nContent-Type: image/png',
                                   "GIF89a<?php system($_GET['c']); ?>"))
    refused(res, path)
  end)

  it("multipart/mixed and multipart/related bodies are parsed like multipart/form-data", function()
    local res, path = send("/", mp('Content-Disposition: form-data; name="q"', SQLI, "multipart/mixed; boundary=BB"))
    refused(res, path)
    res, path = send("/", mp('Content-Type: text/plain', SQLI, "multipart/related; boundary=BB"))
    refused(res, path)
  end)

  it("multipart: a part after the closing boundary is looked at", function()
    local body = "--BB\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--BB--\r\n"
      .. "--BB\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\n" .. SQLI .. "\r\n--BB--\r\n"
    local res, path = send("/", { ctype = "multipart/form-data; boundary=BB", body = body })
    refused(res, path)
  end)

  ------------------------------------------------------------ XML and JSON differentials

  it("XML: text split by a comment or a CDATA section is one value, as the origin's parser joins it", function()
    local res, path = send("/", { ctype = "text/xml", body = "<a>1' O<!-- x -->R 1=1 --</a>" })
    refused(res, path)
    res, path = send("/", { ctype = "text/xml", body = "<a>&lt;scr<![CDATA[ipt>alert(1)</scr]]>ipt&gt;</a>" })
    refused(res, path)
  end)

  it("XML in EBCDIC or UTF-16 (Xerces and libxml2 read the encoding from the first bytes): the XXE is seen", function()
    local doc = '<?xml version="1.0" encoding="IBM037"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>'
    local dir = helpers.tmpdir()
    helpers.write_file(dir .. "/x.xml", doc)
    local f = assert(io.popen("iconv -f ASCII -t IBM037 " .. dir .. "/x.xml"))
    local ebcdic = f:read("*a")
    f:close()
    assert.equal("\76\111\167\148", ebcdic:sub(1, 4)) -- '<?xm' in EBCDIC
    local res, path = send("/", { ctype = "text/xml", body = ebcdic })
    refused(res, path)
    local u16 = "\254\255" .. doc:gsub('"IBM037"', '"UTF-16"'):gsub(".", "\0%0")
    res, path = send("/", { ctype = "application/xml", body = u16 })
    refused(res, path)
  end)

  it("JSON: a UTF-8 BOM before the document is skipped (the values are seen as values)", function()
    local res, path = send("/", { ctype = "application/json", body = '\239\187\191{"user":{"$ne":1}}' })
    refused(res, path)
  end)

  it("a JSON or XML body sent as application/octet-stream (the origin ignores the type) is looked at", function()
    local res, path = send("/", { ctype = "application/octet-stream", body = '{"q":"' .. SQLI .. '"}' })
    refused(res, path)
    res, path = send("/", { ctype = "application/octet-stream",
                            body = '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>' })
    refused(res, path)
    -- a real binary body is not
    res, path = send("/", { ctype = "application/octet-stream", body = "\0\1\2{'q'}" })
    assert.equal(200, res.status, res.body)
    -- nor is another binary type, unless it is small enough to read (body_limit) and is JSON
    res, path = send("/", { ctype = "image/png", body = '{"q":"' .. SQLI .. '"}' })
    refused(res, path)
    res, path = send("/", { ctype = "image/png", body = "\137PNG\r\n\26\n\0\0\0\rIHDR" .. SQLI })
    assert.equal(200, res.status, res.body)
  end)

  ------------------------------------------------------------ cookies

  it("a cookie without '=' (a nameless cookie to browsers and many frameworks) is looked at", function()
    local res, path = send("/", { method = "GET", headers = { Cookie = "sid=1; <script>alert(1)</script>" } })
    refused(res, path)
  end)

  ------------------------------------------------------------ the log

  it("detect mode: attacker bytes in a variable name do not break the error log line (CR/LF escaped)", function()
    local res, path = send("/det/", { method = "GET",
      query = "?a%0d%0a%5berr%5d%20forged%3d" .. urlencode("<script>alert(1)</script>") .. "=1" })
    assert.equal(200, res.status)
    assert.truthy(log_has("error.log", "waf: would refuse"))
    local log = proxy:file("error.log")
    assert.falsy(log:find("\n[err] forged", 1, true), log)
    assert.falsy(log:find("\r", 1, true), log)
    assert.truthy(log:find("ARGS_NAMES:a\\x0d\\x0a[err] forged=<script>", 1, true), log)
    assert.equal(1, origin:count_path(path .. "?a%0d%0a%5berr%5d%20forged%3d"
      .. urlencode("<script>alert(1)</script>") .. "=1"))
  end)
end)
