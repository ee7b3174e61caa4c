-- Output bound for answers moongate writes itself (hardening item 8): pipelined
-- requests to a respond route are parsed only while the client takes the
-- answers; a client that sends thousands of requests and reads nothing holds
-- about one high-water mark of output, not one answer per request.
local helpers = require "spec.helpers"

local N, PAGE = 2500, 20000

describe("pipelined answers moongate writes itself", function()
  local proxy

  lazy_setup(function()
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false }
mg.listen { "127.0.0.1:${port}" }
mg.route { path = "/page", respond = { status = 200, body = string.rep("p", ${page}) } }
]], { vars = { page = PAGE } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  it("holds back the next requests while the output is full, then answers all of them in order", function()
    -- what moongate would hold if it answered everything at once: N * PAGE = 50 MB
    local out = helpers.run({ helpers.python, helpers.spec_dir .. "/support/pipeline_rss.py",
      tostring(proxy.port), tostring(proxy.pid), tostring(N), "/page", tostring(PAGE) })
    local grown, answers, extra = out:match("grown=(%-?%d+) answers=(%d+) extra=(%d+)")
    assert(grown, out)
    print(string.format("\n  RSS growth with %d pipelined requests unread: %s KiB", N, grown))
    -- about 0.5 MB in the normal build (a few MB under ASan, whose allocator keeps
    -- freed blocks in quarantine); 41 MB before the bound
    assert(tonumber(grown) < 16 * 1024, "moongate's RSS grew by " .. grown .. " KiB")
    assert.equal(N, tonumber(answers))
    assert.equal(0, tonumber(extra))
    -- and the worker goes on serving
    assert.equal(200, assert(proxy:request({ path = "/page", headers = { { "Host", "x" } } })).status)
  end)

  it("answers every held-back request of a client that half-closed after sending them", function()
    local out = helpers.run({ helpers.python, helpers.spec_dir .. "/support/pipeline_rss.py",
      tostring(proxy.port), tostring(proxy.pid), "300", "/page", tostring(PAGE), "half-close" })
    local answers, extra = out:match("answers=(%d+) extra=(%d+)")
    assert(answers, out)
    assert.equal(300, tonumber(answers))
    assert.equal(0, tonumber(extra))
  end)

end)

describe("pipelined answers held back on a TLS listener", function()
  local proxy

  lazy_setup(function()
    local dir = helpers.tmpdir()
    helpers.self_signed(dir)
    proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 1, access_log = false }
mg.listen { "127.0.0.1:${port}", tls = { cert = "${dir}/cert.pem", key = "${dir}/key.pem" } }
mg.route { path = "/r/", respond = function(req) return 200, req.path .. "\n" .. string.rep("p", ${page}) end }
]], { vars = { page = PAGE, dir = dir } })
  end)

  lazy_teardown(function()
    helpers.teardown(proxy)
  end)

  -- A read brings several TLS records; the requests of the records after the one
  -- that filled the output must wait behind the held-back ones, not jump ahead.
  it("answers every request in order when one read brings several records", function()
    local out = helpers.run({ helpers.python, helpers.spec_dir .. "/support/pipeline_order.py",
      tostring(proxy.port), tostring(proxy.pid), "600" })
    local answers, in_order, wrong = out:match("answers=(%d+) in_order=(%d+) first_wrong=(%-?%d+)")
    assert(answers, out)
    assert.equal(-1, tonumber(wrong), "the first answer out of order: #" .. tostring(wrong))
    assert.equal(600, tonumber(in_order))
    assert.equal(600, tonumber(answers))
  end)
end)
