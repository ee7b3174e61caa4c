-- Unit specs for moongate.waf.decode: each transform on the encodings the WAF
-- corpus uses (spec/waf/attacks), and plain text left as it is.
local decode = require "moongate.waf.decode"

describe("waf.decode", function()
  it("url: %HH, %uHHHH as UTF-8, '+' only when asked, a lone '%' kept", function()
    assert.equal("1' or '1'='1", decode.url("1%27%20or%20%271%27%3D%271"))
    assert.equal("' or 1", decode.url("%u0027 or 1"))
    assert.equal("\226\136\150", decode.url("%u2216"))
    assert.equal("a b", decode.url("a+b", true))
    assert.equal("a+b", decode.url("a+b"))
    assert.equal("100% sure %zz", decode.url("100% sure %zz"))
  end)

  it("url_repeat: double and triple encodings, at most max rounds", function()
    assert.equal("../etc", decode.url_repeat("..%252fetc"))
    assert.equal("<script>", decode.url_repeat("%25253Cscript%25253E"))
    assert.equal("%2e", decode.url_repeat("%25252e", false, 2))
    -- '+' is a space in the first round only: a decoded %2B stays a plus
    assert.equal("a b+c", decode.url_repeat("a+b%2Bc", true))
  end)

  it("overlong: C0/C1 and E0 80 forms of ASCII folded", function()
    assert.equal("../", decode.overlong("\192\174\192\174\192\175"))
    assert.equal("/", decode.overlong("\224\128\175"))
    assert.equal("Zoë", decode.overlong("Zoë"))
  end)

  it("html: numeric with and without ';', hex, the named ones", function()
    assert.equal("alert(1)", decode.html("&#97;&#108;&#101;&#114;&#116;(1)"))
    assert.equal("javascript:", decode.html("jav&#x61;script&colon;"))
    assert.equal("<script>", decode.html("&lt;script&gt;"))
    assert.equal("ab", decode.html("&#97&#98"))
    assert.equal("Tom &unknown; & Jerry", decode.html("Tom &unknown; &amp; Jerry"))
  end)

  it("js: \\xHH, \\uHHHH, \\u{...}", function()
    assert.equal("alert(1)", decode.js("\\u0061lert(1)"))
    assert.equal("<svg>", decode.js("\\x3csvg\\u{3e}"))
    assert.equal("C:\\Windows", decode.js("C:\\Windows"))
  end)

  it("sql_comments: versioned kept, others a space, an open one to the end", function()
    assert.equal("-1 UNION  SELECT 1", decode.sql_comments("-1/*!50000UNION*//*!50000SELECT*/1"))
    assert.equal("1 UNION SELECT", decode.sql_comments("1/**/UNION/*x*/SELECT"))
    assert.equal("admin' ", decode.sql_comments("admin'/*"))
    assert.equal("3 * 4", decode.sql_comments("3 * 4"))
  end)

  it("base64: text out of a whole-value base64, nil for tokens and short values", function()
    assert.equal("system(\"id\");", decode.base64("c3lzdGVtKCJpZCIpOw=="))
    assert.is_nil(decode.base64("YWJj"))
    assert.is_nil(decode.base64("hello world, this is text"))
    -- binary bytes (a token, an image) do not decode to text
    assert.is_nil(decode.base64("8J+YgPCfmIDwn5iA8J+YgA8Zx9Q1"))
    assert.is_nil(decode.base64("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"))
  end)

  it("fullwidth: ．／＼ to ASCII, U+560A / U+560D to LF / CR, other text unchanged", function()
    assert.equal("../..\\etc", decode.fullwidth("\239\188\142\239\188\142\239\188\143..\239\188\188etc"))
    assert.equal("a\n\rb", decode.fullwidth("a\229\152\138\229\152\141b"))
    local s = "Zoë 日本 ＡＢＣ ok"
    assert.equal(s, decode.fullwidth(s))
    assert.equal("../etc/passwd", decode.normalize("%uff0e%uff0e%uff0fetc/passwd"))
  end)

  it("normalize: the pipeline, and plain text unchanged (the same string)", function()
    assert.equal("<img src=x onerror=alert(1)>",
      decode.normalize("%3Cimg%20src%3Dx%20onerror%3D%26%2397%3Blert(1)%3E"))
    assert.equal("../../etc/passwd", decode.normalize("..%c0%af..%c0%afetc/passwd"))
    assert.equal("ab", decode.normalize("a%00b"))
    local s = "select your order from the menu; drop by"
    assert.equal(s, decode.normalize(s))
  end)
end)
