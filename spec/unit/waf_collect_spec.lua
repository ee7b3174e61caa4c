-- Unit specs for moongate.waf.collect: the WAF's variables from each place of a
-- request (docs/waf.md, "Variables"), and the bounds on hostile input.
local collect = require "moongate.waf.collect"

-- values as "where var = v" lines, for exact comparison
local function lines(values)
  local out = {}
  for i, x in ipairs(values) do out[i] = x.where .. " " .. x.var .. " = " .. x.v end
  return out
end

local function req(method, target, headers, body, opts)
  return collect.request(method, target, headers or { { "host", "shop.example" } }, body, opts)
end

local function body_req(ctype, body, opts)
  return req("POST", "/p", { { "host", "h" }, { "content-type", ctype } }, body, opts)
end

describe("waf.collect", function()
  it("query: every occurrence of a repeated name, names decoded, '+' is a space, bracket names kept", function()
    local v, info = req("GET", "/a%20b/c?x=1&y=%27+or+1&x=2&user%5B%24ne%5D=1&flag&&z=")
    assert.same({
      "path REQUEST_PATH = /a b/c",
      "path_raw REQUEST_PATH = /a%20b/c",
      "arg_name ARGS_NAMES:x = x", "arg ARGS:x = 1",
      "arg_name ARGS_NAMES:y = y", "arg ARGS:y = ' or 1",
      "arg_name ARGS_NAMES:x = x", "arg ARGS:x = 2",
      "arg_name ARGS_NAMES:user[$ne] = user[$ne]", "arg ARGS:user[$ne] = 1",
      "arg_name ARGS_NAMES:flag = flag",
      "arg_name ARGS_NAMES:z = z",
    }, lines(v))
    assert.equal(6, info.arg_count)
    assert.equal("/a b/c", info.path)
    assert.equal("/a%20b/c", info.path_raw)
    assert.equal("x=1&y=%27+or+1&x=2&user%5B%24ne%5D=1&flag&&z=", info.query)
    assert.equal("shop.example", info.host)
    assert.equal("GET", info.method)
    assert.is_nil(info.body_error)
    assert.is_false(info.truncated)
  end)

  it("query: decoded once only (the detectors undo double encodings)", function()
    local v = req("GET", "/s?q=%2527")
    assert.same({ "path REQUEST_PATH = /s", "arg_name ARGS_NAMES:q = q", "arg ARGS:q = %27" }, lines(v))
  end)

  it("unescape: %HH in either case, '+' only when asked, a '%' that starts no escape kept", function()
    local u = collect.unescape
    assert.equal("AB/z", u("%41%42%2fz"))
    assert.equal("100% %4 %zz %A", u("100% %4 %zz %%41"))
    assert.equal("%", u("%"))
    assert.equal("a b", u("a+b", true))
    assert.equal("a+b", u("a+b"))
    assert.equal("a+b c", u("a%2Bb+c", true))
    assert.equal("plain", u("plain", true))
    assert.equal(string.rep("\255", 3000), u(string.rep("%FF", 3000)))
  end)

  it("absolute-form target: the path after the authority", function()
    local v, info = req("GET", "http://other.example/x?a=1")
    assert.equal("/x", info.path)
    assert.equal("REQUEST_PATH", v[1].var)
    assert.equal("/x", v[1].v)
  end)

  it("headers: the fixed list, x-api-*, any value with '${' or '() {'; Host and Content-Type into info", function()
    local v, info = req("GET", "/", {
      { "host", "h.example" }, { "user-agent", "UA/1" }, { "accept", "*/*" },
      { "referer", "https://r/" }, { "x-api-version", "2" }, { "x-request-id", "${jndi:ldap://e/a}" },
      { "x-shell", "() { :; }; echo" }, { "accept-language", "en" }, { "x-forwarded-for", "1.2.3.4" },
      { "content-type", "text/plain" },
    })
    assert.same({
      "path REQUEST_PATH = /",
      "header REQUEST_HEADERS:User-Agent = UA/1",
      "header REQUEST_HEADERS:Referer = https://r/",
      "header REQUEST_HEADERS:X-Api-Version = 2",
      "header REQUEST_HEADERS:X-Request-Id = ${jndi:ldap://e/a}",
      "header REQUEST_HEADERS:X-Shell = () { :; }; echo",
      "header REQUEST_HEADERS:X-Forwarded-For = 1.2.3.4",
    }, lines(v))
    assert.equal("h.example", info.host)
    assert.equal("text/plain", info.content_type)
    assert.equal(10, #info.headers)
  end)

  it("cookies: each pair, names and values (values decoded once)", function()
    local v = req("GET", "/", { { "host", "h" }, { "cookie", "sid=4f1c; pref=%3Cb%3E ;  flag=" } })
    assert.same({
      "path REQUEST_PATH = /",
      "cookie_name REQUEST_COOKIES_NAMES:sid = sid", "cookie REQUEST_COOKIES:sid = 4f1c",
      "cookie_name REQUEST_COOKIES_NAMES:pref = pref", "cookie REQUEST_COOKIES:pref = <b>",
      "cookie_name REQUEST_COOKIES_NAMES:flag = flag",
    }, lines(v))
  end)

  it("form body: like a query string, under ARGS", function()
    local v, info = body_req("application/x-www-form-urlencoded; charset=utf-8", "name=sam&comment=a+%3Cb%3E")
    assert.same({
      "path REQUEST_PATH = /p",
      "arg_name ARGS_NAMES:name = name", "arg ARGS:name = sam",
      "arg_name ARGS_NAMES:comment = comment", "arg ARGS:comment = a <b>",
    }, lines(v))
    assert.equal(2, info.arg_count)
  end)

  it("JSON: nested paths, keys as json_key, string escapes and \\uXXXX (surrogate pairs), numbers", function()
    local v, info = body_req("application/json",
      '{"a":{"b":[1,"x\\u0027y\\ud83d\\ude00\\n\\"",true,null]},"$where":"f()","k y":-1.5e3,"e":""}')
    assert.same({
      "path REQUEST_PATH = /p",
      "json_key JSON:$.a = a",
      "json_key JSON:$.a.b = b",
      "body JSON:$.a.b[0] = 1",
      "body JSON:$.a.b[1] = x'y\240\159\152\128\n\"",
      "json_key JSON:$[\"$where\"] = $where", "body JSON:$[\"$where\"] = f()",
      "json_key JSON:$[\"k y\"] = k y", "body JSON:$[\"k y\"] = -1.5e3",
      "json_key JSON:$.e = e",
    }, lines(v))
    assert.is_nil(info.body_error)
  end)

  it("JSON: +json types, a top-level array and string", function()
    local v = body_req("application/vnd.api+json", '[{"q":"x"}, "y"]')
    assert.same({ "path REQUEST_PATH = /p", "json_key JSON:$[0].q = q", "body JSON:$[0].q = x",
      "body JSON:$[1] = y" }, lines(v))
  end)

  it("JSON that does not parse: body_error, what came before kept, the body whole as body_raw", function()
    local body = '{"a": "x", "b": [1,2 "c"]}'
    local v, info = body_req("application/json", body)
    assert.matches("^json: want ',' or ']' at byte %d+$", info.body_error)
    assert.same({ "path REQUEST_PATH = /p", "json_key JSON:$.a = a", "body JSON:$.a = x",
      "json_key JSON:$.b = b", "body JSON:$.b[0] = 1", "body JSON:$.b[1] = 2",
      "body_raw REQUEST_BODY = " .. body }, lines(v))
    for _, bad in ipairs({ "{'a':1}", '{"a":1', '{"a":"\\q"}', '{"a":"\\u12"}', "nope", '{"a":1} x', "" .. "\1" }) do
      local _, i = body_req("application/json", bad)
      assert.is_string(i.body_error, bad)
      assert.matches("^json: ", i.body_error)
    end
  end)

  it("JSON: depth bounded at 64", function()
    local ok = string.rep("[", 64) .. '"x"' .. string.rep("]", 64)
    local v, info = body_req("application/json", ok)
    assert.is_nil(info.body_error)
    assert.equal("x", v[2].v)
    local _, info2 = body_req("application/json", string.rep("[", 65) .. string.rep("]", 65))
    assert.equal("json: nesting deeper than 64", info2.body_error)
    local _, info3 = body_req("application/json", string.rep("[", 100000))
    assert.equal("json: nesting deeper than 64", info3.body_error)
  end)

  it("a truncated JSON body is not a parse error; what was there is collected", function()
    local v, info = body_req("application/json", '{"a": "x", "b": "long str', { truncated = true })
    assert.is_nil(info.body_error)
    assert.is_true(info.truncated)
    assert.same({ "path REQUEST_PATH = /p", "json_key JSON:$.a = a", "body JSON:$.a = x",
      "json_key JSON:$.b = b" }, lines(v))
    local _, info2 = body_req("application/json", '{"a": [1, 2', { truncated = true })
    assert.is_nil(info2.body_error)
  end)

  it("multipart: boundary (quoted too), part names, filename, text contents; binary files skipped", function()
    local b = "--XX\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nnotes\r\n"
      .. "--XX\r\ncontent-disposition: form-data; name=\"f\"; filename=\"a.php\"\r\nContent-Type: text/plain\r\n\r\n<?php x\r\nline2\r\n"
      .. "--XX\r\nContent-Disposition: form-data; name=\"img\"; filename=\"p.png\"\r\nContent-Type: image/png\r\n\r\n\137PNG\r\n\26\n\0\0\0\rIHDR\r\n"
      .. "--XX--\r\n"
    local v, info = body_req('multipart/form-data; boundary="XX"', b)
    assert.is_nil(info.body_error)
    assert.same({ "path REQUEST_PATH = /p",
      "arg_name ARGS_NAMES:title = title", "body ARGS:title = notes",
      "arg_name ARGS_NAMES:f = f", "filename FILES:f = a.php", "body FILES_CONTENT:f = <?php x\r\nline2",
      "arg_name ARGS_NAMES:img = img", "filename FILES:img = p.png",
    }, lines(v))
  end)

  it("multipart: no boundary, no closing boundary, more than 128 parts are body errors", function()
    local _, i1 = body_req("multipart/form-data", "x")
    assert.equal("multipart: no boundary", i1.body_error)
    local _, i2 = body_req("multipart/form-data; boundary=XX", "--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n")
    assert.equal("multipart: no closing boundary", i2.body_error)
    local _, i3 = body_req("multipart/form-data; boundary=XX",
      "--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n", { truncated = true })
    assert.is_nil(i3.body_error)
    local parts = {}
    for k = 1, 200 do parts[k] = "--XX\r\nContent-Disposition: form-data; name=\"p" .. k .. "\"\r\n\r\nv\r\n" end
    local v4, i4 = body_req("multipart/form-data; boundary=XX", table.concat(parts) .. "--XX--\r\n")
    assert.equal("multipart: more than 128 parts", i4.body_error)
    assert.is_true(#v4 <= 1 + 2 * 128 + 1)
  end)

  it("XML: the whole document as xml, text nodes, CDATA and attribute values as body", function()
    local doc = '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
      .. '<r a="1"><!-- c --><b c=\'z\'> hi &x; </b><![CDATA[<cd>]]><e k="v"/></r>'
    local v, info = body_req("application/xml", doc)
    assert.is_nil(info.body_error)
    assert.same({ "path REQUEST_PATH = /p", "xml XML = " .. doc,
      "body XML:/r@a = 1", "body XML:/r/b@c = z", "body XML:/r/b = hi &x; ",
      "body XML:/r/e@k = v", "body XML:/r = <cd>" }, lines(v)) -- an element's text when it ends
  end)

  it("XML that does not parse: body_error, the document still there as xml", function()
    local v, info = body_req("text/xml", "<a><b></a>")
    assert.equal("xml: mismatched </a>", info.body_error)
    assert.equal("xml", v[2].where)
    local _, i2 = body_req("application/soap+xml", "<a><b>text")
    assert.equal("xml: unclosed <b>", i2.body_error)
    local _, i3 = body_req("application/xml", "<a><b>text", { truncated = true })
    assert.is_nil(i3.body_error)
  end)

  it("other body types: text as body_raw, binary types not collected", function()
    local v = body_req("text/plain", "hello ' or 1=1")
    assert.same({ "path REQUEST_PATH = /p", "body_raw REQUEST_BODY = hello ' or 1=1" }, lines(v))
    local v2 = req("POST", "/p", { { "host", "h" } }, "no type")
    assert.equal("body_raw", v2[2].where)
    local v3 = body_req("image/png", "\137PNG")
    assert.equal(1, #v3)
    assert.equal("form", collect.kind("Application/X-WWW-Form-Urlencoded"))
    assert.equal("json", collect.kind("application/problem+json"))
    assert.equal("sniff", collect.kind("application/octet-stream")) -- JSON or XML in it is parsed
    assert.is_nil(collect.kind("application/zip"))
  end)

  it("hostile: 10,000 arguments are bounded at 1024 values, counted, too_many set", function()
    local t = {}
    for k = 1, 10000 do t[k] = "a" .. k .. "=v" end
    local q = table.concat(t, "&")
    local v, info = req("GET", "/?" .. q)
    assert.equal(1024, #v)
    assert.is_true(info.too_many)
    assert.equal(10000, info.arg_count)
    local v2, i2 = body_req("application/x-www-form-urlencoded", q)
    assert.equal(1024, #v2)
    assert.is_true(i2.too_many)
    local arr = "[" .. string.rep('"x",', 5000) .. '"x"]'
    local v3, i3 = body_req("application/json", arr)
    assert.equal(1024, #v3)
    assert.is_true(i3.too_many)
    assert.is_nil(i3.body_error)
  end)

  it("hostile: garbage never raises", function()
    local junk = { "", "%", "%%%", "=&=&", "?", "{", "[[[", "<", "<!", "<![CDATA[", "<a", "--", "\0\0\255",
      string.rep("%zz", 100), '"\\', '{"a":', "<a b='>", "--XX\r\n\r\n" }
    for _, j in ipairs(junk) do
      for _, t in ipairs({ "application/json", "application/xml", "multipart/form-data; boundary=XX",
                           "application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=" }) do
        assert.has_no.errors(function() body_req(t, j) end)
        assert.has_no.errors(function() body_req(t, j, { truncated = true }) end)
      end
      assert.has_no.errors(function() req("GET", j, { { "cookie", j }, { "user-agent", j } }) end)
    end
  end)
end)
