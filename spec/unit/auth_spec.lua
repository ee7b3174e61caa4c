-- lua/moongate/private/auth.lua: the pure-Lua parts the authentication policies
-- use on untrusted input (Basic credentials' base64, the query without the key).
local auth = require "moongate.private.auth"

describe("private.auth", function()
  it("unbase64 decodes RFC 4648 base64 with padding", function()
    assert.equal("alice:secret", auth.unbase64("YWxpY2U6c2VjcmV0"))
    assert.equal("a", auth.unbase64("YQ=="))
    assert.equal("ab", auth.unbase64("YWI="))
    assert.equal("abc", auth.unbase64("YWJj"))
    assert.equal("\255\254\253", auth.unbase64("//79"))
    assert.equal("é:ü", auth.unbase64("w6k6w7w="))
  end)

  it("unbase64 refuses what is not strict base64", function()
    for _, s in ipairs({ "", "YQ", "YQ=", "Y===", "YQ==YQ==", "YW=j", "!!!!", "YR==", "YWJ=", "YWI", " YWJj" }) do
      assert.is_nil(auth.unbase64(s), s)
    end
  end)

  it("query_without drops every argument of that name (compared decoded) and keeps the rest in order", function()
    assert.equal("a=1&b=2", auth.query_without("a=1&api_key=x&b=2", "api_key"))
    assert.equal("", auth.query_without("api_key=x", "api_key"))
    assert.equal("a=1", auth.query_without("api%5Fkey=x&a=1&api_key", "api_key"))
    assert.equal("a=1&api_keys=2", auth.query_without("a=1&&api_keys=2", "api_key"))
  end)
end)
