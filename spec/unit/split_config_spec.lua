-- Config of a route's traffic split (docs/config.md "Traffic split"): what the
-- loader hands core/config.c, and a clear error naming proxy.lua's line for each
-- bad list entry or header rule.
local loader = require "moongate.private.loader"
local mg = require "moongate"

local HEADER = 'local mg = require "moongate"'
local LISTEN = 'mg.listen { "127.0.0.1:8080" }'
local UPS = 'local v1 = mg.upstream "api_v1" { servers = { "127.0.0.1:9001" } }; '
  .. 'local v2 = mg.upstream "api_v2" { servers = { "127.0.0.1:9002" } }; '
  .. 'local v3 = mg.upstream "api_v3" { servers = { "127.0.0.1:9003" } }'

describe("route traffic split config", function()
  local dir

  before_each(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. dir))
  end)

  after_each(function()
    os.execute("rm -rf " .. dir)
    mg._reset(".")
  end)

  -- proxy.lua of the header, listener and upstreams, then `route` on line 4.
  local function load(route)
    local path = dir .. "/proxy.lua"
    local f = assert(io.open(path, "wb"))
    f:write(table.concat({ HEADER, LISTEN, UPS, route }, "\n") .. "\n")
    f:close()
    local conf, err = loader.load(path)
    return conf, err, path
  end

  local function ok(route)
    local conf, err = load(route)
    assert.is_nil(err)
    return conf.routes[1]
  end

  local function refused(route, ...)
    local conf, err, path = load(route)
    assert.is_nil(conf)
    local prefix = path .. ":4: "
    assert.equal(prefix, err:sub(1, #prefix), "error does not name line 4: " .. tostring(err))
    for i = 1, select("#", ...) do
      local frag = select(i, ...)
      assert.is_truthy(err:find(frag, 1, true), "'" .. frag .. "' not in: " .. err)
    end
  end

  it("hands C the weighted list as upstream indices, the first as the route's upstream", function()
    local r = ok 'mg.route { upstream = { { v1, weight = 90 }, { "api_v2", weight = 10 } } }'
    assert.equal(1, r.upstream_index)
    assert.same({ { upstream = "api_v1", weight = 90, index = 1 }, { upstream = "api_v2", weight = 10, index = 2 } },
                r.split_list)
    assert.is_nil(r.split)
  end)

  it("hands C a header rule: lower-case name, values sorted with indices, the any-value upstream", function()
    local r = ok 'mg.route { upstream = v1, split = { header = "X-Canary", values = { z = v3, ["1"] = "api_v2" }, upstream = v3 } }'
    assert.is_nil(r.split_list)
    assert.equal(1, r.upstream_index)
    assert.same({ header = "x-canary", present = "api_v3", present_index = 3,
                  values = { { value = "1", upstream = "api_v2", index = 2 },
                             { value = "z", upstream = "api_v3", index = 3 } } }, r.split)
  end)

  it("refuses weights that are 0, negative, fractions, strings, too big or missing", function()
    refused('mg.route { upstream = { { v1, weight = 0 }, { v2, weight = 1 } } }',
            "mg.route: upstream[1]: 'weight' must be an integer from 1 to 1000, got 0")
    refused('mg.route { upstream = { { v1, weight = 5 }, { v2, weight = -1 } } }', "upstream[2]: 'weight'", "got -1")
    refused('mg.route { upstream = { { v1, weight = 2.5 } } }', "'weight' must be an integer", "got 2.5")
    refused('mg.route { upstream = { { v1, weight = "90" } } }', "'weight' must be an integer", 'got "90"')
    refused('mg.route { upstream = { { v1, weight = 1001 } } }', "from 1 to 1000")
    refused('mg.route { upstream = { { v1, weight = 0/0 } } }', "'weight' must be an integer")
    refused('mg.route { upstream = { { v1 }, { v2, weight = 1 } } }',
            "upstream[1]: 'weight' is missing (want { api_v1, weight = N })")
  end)

  it("refuses entries that are not upstreams", function()
    refused('mg.route { upstream = { { nil, weight = 1 } } }',
            "upstream[1][1] must be an upstream (made by mg.upstream) or its name, got nil")
    refused('mg.route { upstream = { { 42, weight = 1 } } }', "upstream[1][1] must be an upstream", "got 42")
    refused('mg.route { upstream = { { {}, weight = 1 } } }', "got a table")
    refused('mg.route { upstream = { { "nope", weight = 1 } } }', "upstream[1][1]: unknown upstream 'nope'")
    refused('mg.route { upstream = { v1, v2 } }',
            "upstream[1] must be { upstream, weight = N }, got upstream api_v1")
    refused('mg.route { upstream = { { v1, weight = 1, wieght = 2 } } }', "upstream[1]: unknown key \"wieght\"")
    refused('mg.route { upstream = { { v1, weight = 1 }, { v1, weight = 2 } } }',
            "upstream[2]: upstream 'api_v1' is listed twice")
  end)

  it("refuses an empty list and a list with holes or names", function()
    refused('mg.route { upstream = {} }', "'upstream' is an empty list")
    refused('mg.route { upstream = { a = { v1, weight = 1 } } }', "a list of { upstream, weight = N }", 'got key "a"')
    refused('mg.route { upstream = { [2] = { v1, weight = 1 } } }', "got key 2")
  end)

  it("refuses a bad header rule", function()
    refused('mg.route { upstream = v1, split = "x-canary" }', "'split'")
    refused('mg.route { upstream = v1, split = { values = { ["1"] = v2 } } }', "split: 'header' is missing")
    refused('mg.route { upstream = v1, split = { header = "x canary", upstream = v2 } }',
            "split: 'header' is not a header name")
    refused('mg.route { upstream = v1, split = { header = "x-canary" } }', "needs 'values'")
    refused('mg.route { upstream = v1, split = { header = "x-canary", values = {} } }', "'values' is empty")
    refused('mg.route { upstream = v1, split = { header = "x-canary", values = { v2 } } }',
            "the keys of 'values' are header values (strings), got 1")
    refused('mg.route { upstream = v1, split = { header = "x-canary", values = { ["1"] = "nope" } } }',
            "split: values[\"1\"]: unknown upstream 'nope'")
    refused('mg.route { upstream = v1, split = { header = "x-canary", values = { ["1"] = 5 } } }',
            "values[\"1\"] must be an upstream", "got 5")
    refused('mg.route { upstream = v1, split = { header = "x-canary", values = { [" 1"] = v2 } } }',
            "cannot match a header value")
    refused('mg.route { upstream = v1, split = { header = "x-canary", upstream = {} } }',
            "split: 'upstream' must be an upstream")
    refused('mg.route { upstream = v1, split = { header = "x-canary", upsteam = v2 } }', "unknown key 'upsteam'")
    refused('mg.route { respond = { status = 200 }, split = { header = "x-canary", upstream = v2 } }',
            "'split' needs 'upstream'")
  end)
end)
