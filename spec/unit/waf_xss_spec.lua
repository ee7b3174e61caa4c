-- Unit specs for moongate.waf.xss: payloads and look-alikes written for this
-- spec (none is a line of spec/waf/, which the detector was tuned on).
local xss = require "moongate.waf.xss"
local decode = require "moongate.waf.decode"

local function verdict(s) return (xss.detect(decode.normalize(s))) end

describe("waf.xss", function()
  it("flags tags that run or load script, whatever their case", function()
    assert.equal("tag", verdict("<ScRipt src=//cdn.evil.test/a.js>"))
    assert.equal("tag", verdict("<embed src=//e.test/x.swf>"))
    assert.equal("tag", verdict("hello <object data=//e.test/>"))
    assert.equal("tag", verdict("<meta http-equiv=refresh content=0>"))
    assert.equal("tag", verdict("</textarea><iframe/src=//e.test>"))
  end)

  it("flags event handler attributes in any tag", function()
    assert.equal("handler", verdict("<body onpageshow=alert(1)>"))
    assert.equal("handler", verdict("<img src=1 oNeRrOr=prompt(1)>"))
    assert.equal("handler", verdict("<marquee onstart=confirm(9)>"))
    assert.equal("handler", verdict("<p/onmouseenter=alert(7)>hover"))
    assert.equal("handler", verdict("<div style=\"width:expression(alert(1))\">"))
  end)

  it("flags a quote that closes an attribute and adds a handler", function()
    assert.equal("break", verdict("x\" autofocus onfocus=\"alert(3)"))
    assert.equal("break", verdict("abc' onpointerover='go()"))
  end)

  it("flags script URLs after entities, URL escapes and whitespace are undone", function()
    assert.equal("scheme", verdict("<a href=\"java&#115;cript:alert(2)\">x</a>"))
    assert.equal("scheme", verdict("&#x6a;avascript:alert(1)"))
    assert.equal("scheme", verdict("javascript:/*x*/alert(1)"))
    assert.equal("scheme", verdict("%6A%61vascript%3Aalert(1)"))
    assert.equal("scheme", verdict("<a href=\"data:text/html,hi\">"))
    assert.equal("scheme", verdict("vb\tscript:msgbox(2)"))
  end)

  it("flags a quote that leaves a JS string to call a function", function()
    assert.equal("js", verdict("';alert(document.cookie);//"))
    assert.equal("js", verdict("\"+prompt(1)+\""))
    assert.equal("js", verdict("x\"-confirm`1`-\""))
  end)

  it("looks at many unclosed tags in time linear in the value (64 KiB of '<a ' well under a second)", function()
    local t0 = os.clock()
    assert.is_nil(xss.detect(string.rep("<a ", 21000) .. ">"))
    assert.equal("handler", xss.detect(string.rep("<a ", 21000) .. "<img src=x onerror=alert(1)>"))
    assert.is_true(os.clock() - t0 < 1, "took " .. (os.clock() - t0) .. " s")
  end)

  it("passes plain markup, comparisons and prose about script", function()
    for _, s in ipairs({
      "<b>bold</b> and <em>em</em>",
      "I <3 cats and 2 < 3 but 4 > 1",
      "<a href=\"https://example.org/x?y=1\">link</a>",
      "<img src=\"/logo.png\" alt=\"Logo\">",
      "javascript tutorial for beginners",
      "The onload event fires when the page is ready",
      "He said \"hello\" - then left",
      "Don't use alert() in production code",
      "data: text, numbers and dates",
      "email me: sam@example.com",
      "<ul><li>one</li><li>two</li></ul>",
      "Use <code>x = y</code> here",
      "Tom's 5' 11\" frame",
    }) do
      assert.is_nil(verdict(s), s)
    end
  end)
end)
