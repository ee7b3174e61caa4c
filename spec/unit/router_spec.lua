-- Unit specs for moongate.router: the route order (docs/config.md, mg.route: "the
-- most specific route wins") and request matching. The C core follows the same order,
-- so these specs pin it down exactly.
local router = require "moongate.router"

-- A route as the DSL produces it (path defaults to "/"); `id` names it in assertions.
local function R(t)
  t.path = t.path or "/"
  return t
end

local function ids(routes)
  local out = {}
  for i, r in ipairs(routes) do out[i] = r.id end
  return out
end

local function reversed(list)
  local out = {}
  for i = #list, 1, -1 do out[#out + 1] = list[i] end
  return out
end

-- Sorts `routes` (given in declaration order) and returns the ids in sorted order.
local function sorted_ids(routes)
  return ids(router.sort(routes))
end

describe("moongate.router", function()
  describe("sort", function()
    it("returns the same table, sorted in place", function()
      local routes = { R { id = "a" }, R { id = "b", host = "x.test" } }
      assert.equal(routes, router.sort(routes))
      assert.same({ "b", "a" }, ids(routes))
    end)

    it("assigns seq in declaration order", function()
      local routes = { R { id = "a" }, R { id = "b" }, R { id = "c" } }
      router.sort(routes)
      assert.same({ 1, 2, 3 }, { routes[1].seq, routes[2].seq, routes[3].seq })
    end)

    it("puts listener-bound routes first, even before a longer host and path", function()
      assert.same({ "bound", "unbound" }, sorted_ids {
        R { id = "unbound", host = "a.very.long.host.example.com", path = "/a/long/path/", methods = { "GET" } },
        R { id = "bound", listener = "admin" },
      })
    end)

    it("puts a longer host first", function()
      assert.same({ "long", "short", "none" }, sorted_ids {
        R { id = "none" },
        R { id = "short", host = "a.test" },
        R { id = "long", host = "api.a.test" },
      })
    end)

    it("puts any host before no host, even with a longer path", function()
      assert.same({ "host", "path" }, sorted_ids {
        R { id = "path", path = "/a/very/long/prefix/" },
        R { id = "host", host = "h.test" },
      })
    end)

    it("puts an exact host before a wildcard of the same length", function()
      -- "*.example.com" and "a.example.com" are both 13 characters
      assert.same({ "exact", "wild" }, sorted_ids {
        R { id = "wild", host = "*.example.com" },
        R { id = "exact", host = "a.example.com" },
      })
    end)

    it("puts a longer wildcard before a shorter exact host", function()
      assert.same({ "wild", "exact" }, sorted_ids {
        R { id = "exact", host = "a.example.com" },
        R { id = "wild", host = "*.api.example.com" },
      })
    end)

    it("puts a longer path first", function()
      assert.same({ "long", "mid", "root" }, sorted_ids {
        R { id = "root", host = "h.test" },
        R { id = "mid", host = "h.test", path = "/p/" },
        R { id = "long", host = "h.test", path = "/p/long/" },
      })
    end)

    it("puts a longer path before methods", function()
      assert.same({ "path", "methods" }, sorted_ids {
        R { id = "methods", path = "/a", methods = { "POST" } },
        R { id = "path", path = "/ab" },
      })
    end)

    it("puts routes with methods before routes without", function()
      assert.same({ "post", "any" }, sorted_ids {
        R { id = "any", host = "h.test", path = "/m/" },
        R { id = "post", host = "h.test", path = "/m/", methods = { "POST" } },
      })
    end)

    it("keeps declaration order between equally specific routes", function()
      assert.same({ "first", "second", "third" }, sorted_ids {
        R { id = "first", host = "h.test", path = "/dup/" },
        R { id = "second", host = "h.test", path = "/dup/" },
        R { id = "third", host = "h.test", path = "/dup/" },
      })
    end)

    it("keeps declaration order for many equal routes (table.sort is not stable)", function()
      local routes, want = {}, {}
      for i = 1, 200 do
        routes[i] = R { id = i, path = "/x" }
        want[i] = i
      end
      assert.same(want, sorted_ids(routes))
    end)

    it("keeps the declaration order of routes with equally many methods", function()
      assert.same({ "get", "post" }, sorted_ids {
        R { id = "get", methods = { "GET" } },
        R { id = "post", methods = { "POST", "PUT" } },
      })
    end)

    it("respects a seq already set (sorting again keeps the first order)", function()
      local routes = {
        R { id = "first", path = "/x" },
        R { id = "second", path = "/x" },
      }
      router.sort(routes)
      -- Swap them: the seq each got on the first sort still decides.
      routes[1], routes[2] = routes[2], routes[1]
      assert.same({ "first", "second" }, ids(router.sort(routes)))
    end)

    it("applies every rule in order on a mixed list, whatever the input order", function()
      local want = {
        "bound-host", "bound", -- listener first, then by host within the bound ones
        "exact-long", "wild-long",
        "exact-path-methods", "exact-path", "exact-path-dup", "exact-root",
        "wild-short",
        "nohost-path", "nohost-methods", "nohost-1", "nohost-2",
      }
      local function make()
        return {
          R { id = "nohost-1" },
          R { id = "exact-root", host = "a.example.com" },
          R { id = "wild-short", host = "*.example.com" },
          R { id = "exact-path", host = "a.example.com", path = "/api/" },
          R { id = "bound", listener = "admin" },
          R { id = "exact-path-methods", host = "a.example.com", path = "/api/", methods = { "GET" } },
          R { id = "wild-long", host = "*.api.example.com" },
          R { id = "nohost-methods", methods = { "GET" } },
          R { id = "exact-long", host = "x.api.example.com" },
          R { id = "nohost-2" },
          R { id = "exact-path-dup", host = "a.example.com", path = "/api/" },
          R { id = "bound-host", listener = "admin", host = "h.test" },
          R { id = "nohost-path", path = "/static/" },
        }
      end
      assert.same(want, sorted_ids(make()))
      -- Declaration order is the only input-dependent tiebreak: reversing the input
      -- swaps exactly the equal pairs.
      local rev = sorted_ids(reversed(make()))
      assert.same({
        "bound-host", "bound", "exact-long", "wild-long",
        "exact-path-methods", "exact-path-dup", "exact-path", "exact-root",
        "wild-short", "nohost-path", "nohost-methods", "nohost-2", "nohost-1",
      }, rev)
    end)
  end)

  describe("normalize_host", function()
    it("strips the port and lower-cases", function()
      assert.equal("api.example.com", router.normalize_host("API.Example.COM:8080"))
    end)

    it("lower-cases a host without a port", function()
      assert.equal("a.example.com", router.normalize_host("A.example.com"))
    end)

    it("keeps the brackets and strips the port of an IPv6 literal", function()
      assert.equal("[::1]", router.normalize_host("[::1]:80"))
      assert.equal("[::1]", router.normalize_host("[::1]"))
      assert.equal("[2001:db8::1]", router.normalize_host("[2001:DB8::1]:443"))
    end)

    it("turns a missing host into ''", function()
      assert.equal("", router.normalize_host(nil))
    end)

    it("strips an empty port", function()
      assert.equal("a.test", router.normalize_host("a.test:"))
    end)
  end)

  describe("host_matches", function()
    it("matches an exact host only exactly", function()
      assert.is_true(router.host_matches("example.com", "example.com"))
      assert.is_false(router.host_matches("example.com", "a.example.com"))
      assert.is_false(router.host_matches("example.com", "example.co"))
      assert.is_false(router.host_matches("example.com", "xexample.com"))
    end)

    it("matches one level of subdomain with a wildcard", function()
      assert.is_true(router.host_matches("*.example.com", "a.example.com"))
    end)

    it("matches several levels of subdomain with a wildcard", function()
      assert.is_true(router.host_matches("*.example.com", "a.b.example.com"))
    end)

    it("does not match the bare domain with a wildcard", function()
      assert.is_false(router.host_matches("*.example.com", "example.com"))
    end)

    it("does not match a mere suffix of the name with a wildcard", function()
      assert.is_false(router.host_matches("*.example.com", "badexample.com"))
      assert.is_false(router.host_matches("*.example.com", "a.example.com.evil.test"))
      assert.is_false(router.host_matches("*.example.com", ".example.com"))
      assert.is_false(router.host_matches("*.example.com", ""))
    end)
  end)

  describe("match", function()
    local function m(routes, listener, method, host, path)
      local r = router.match(router.sort(routes), listener, method, host, path)
      return r and r.id
    end

    it("strips the port from the Host", function()
      assert.equal("api", m({ R { id = "api", host = "api.example.com" } }, nil, "GET", "api.example.com:8080", "/"))
    end)

    it("compares hosts case-insensitively", function()
      assert.equal("api", m({ R { id = "api", host = "api.example.com" } }, nil, "GET", "API.Example.Com", "/"))
    end)

    it("matches an IPv6 Host with a port", function()
      local routes = { R { id = "v6", host = "[::1]" }, R { id = "v4", host = "127.0.0.1" } }
      assert.equal("v6", m(routes, nil, "GET", "[::1]:80", "/"))
      assert.equal("v4", m(routes, nil, "GET", "127.0.0.1:80", "/"))
    end)

    it("sends an IPv6 Host to a host-less route when no host matches", function()
      assert.equal("any", m({ R { id = "ex", host = "example.com" }, R { id = "any" } }, nil, "GET", "[::1]:80", "/"))
    end)

    it("matches a wildcard against one or more subdomain levels but not the bare domain", function()
      local routes = { R { id = "wild", host = "*.example.com" } }
      assert.equal("wild", m(routes, nil, "GET", "a.example.com", "/"))
      assert.equal("wild", m(routes, nil, "GET", "a.b.example.com:443", "/"))
      assert.equal("wild", m(routes, nil, "GET", "A.Example.COM", "/"))
      assert.is_nil(m(routes, nil, "GET", "example.com", "/"))
    end)

    it("prefers the exact host over the wildcard, whatever the declaration order", function()
      local routes = { R { id = "wild", host = "*.example.com" }, R { id = "exact", host = "a.example.com" } }
      assert.equal("exact", m(routes, nil, "GET", "a.example.com", "/"))
      assert.equal("wild", m(routes, nil, "GET", "b.example.com", "/"))
    end)

    it("prefers the longer wildcard", function()
      local routes = { R { id = "short", host = "*.example.com" }, R { id = "long", host = "*.b.example.com" } }
      assert.equal("long", m(routes, nil, "GET", "a.b.example.com", "/"))
      assert.equal("short", m(routes, nil, "GET", "a.c.example.com", "/"))
    end)

    it("matches the path as a prefix, preferring the longest", function()
      local routes = {
        R { id = "root" },
        R { id = "p", path = "/p/" },
        R { id = "plong", path = "/p/long/" },
      }
      assert.equal("plong", m(routes, nil, "GET", "h", "/p/long/x"))
      assert.equal("p", m(routes, nil, "GET", "h", "/p/longer"))
      assert.equal("p", m(routes, nil, "GET", "h", "/p/"))
      assert.equal("root", m(routes, nil, "GET", "h", "/p"))
      assert.equal("root", m(routes, nil, "GET", "h", "/"))
    end)

    it("compares paths case-sensitively", function()
      assert.is_nil(m({ R { id = "api", path = "/api/" } }, nil, "GET", "h", "/API/x"))
    end)

    it("filters by method", function()
      local routes = {
        R { id = "any", path = "/m/" },
        R { id = "post", path = "/m/", methods = { "POST", "PUT" } },
      }
      assert.equal("post", m(routes, nil, "POST", "h", "/m/x"))
      assert.equal("post", m(routes, nil, "PUT", "h", "/m/x"))
      assert.equal("any", m(routes, nil, "GET", "h", "/m/x"))
    end)

    it("gives nil when only a route with other methods matches", function()
      assert.is_nil(m({ R { id = "get", methods = { "GET", "HEAD" } } }, nil, "DELETE", "h", "/"))
    end)

    it("serves a listener-bound route only on that listener", function()
      local routes = {
        R { id = "open" },
        R { id = "admin", listener = "admin" },
      }
      assert.equal("admin", m(routes, "admin", "GET", "h", "/"))
      assert.equal("open", m(routes, "public", "GET", "h", "/"))
      assert.equal("open", m(routes, nil, "GET", "h", "/"))
    end)

    it("gives nil on another listener when only bound routes exist", function()
      assert.is_nil(m({ R { id = "admin", listener = "admin" } }, "public", "GET", "h", "/"))
      assert.is_nil(m({ R { id = "admin", listener = "admin" } }, nil, "GET", "h", "/"))
    end)

    it("lets a bound route beat a more specific unbound one", function()
      local routes = {
        R { id = "specific", host = "api.example.com", path = "/api/", methods = { "GET" } },
        R { id = "admin", listener = "admin" },
      }
      assert.equal("admin", m(routes, "admin", "GET", "api.example.com", "/api/x"))
      assert.equal("specific", m(routes, "public", "GET", "api.example.com", "/api/x"))
    end)

    it("does not let a host route match a request without Host", function()
      local routes = { R { id = "host", host = "h.test" }, R { id = "any" } }
      assert.equal("any", m(routes, nil, "GET", nil, "/"))
      assert.is_nil(m({ R { id = "host", host = "h.test" } }, nil, "GET", nil, "/"))
    end)

    it("gives nil when nothing matches", function()
      local routes = {
        R { id = "a", host = "a.test", path = "/a/" },
        R { id = "wild", host = "*.b.test" },
      }
      assert.is_nil(m(routes, nil, "GET", "c.test", "/"))
      assert.is_nil(m(routes, nil, "GET", "a.test", "/b/"))
      assert.is_nil(m(routes, nil, "GET", "b.test", "/"))
    end)

    it("gives nil for an empty route list", function()
      assert.is_nil(router.match({}, nil, "GET", "h", "/"))
    end)

    it("returns the route table itself", function()
      local r = R { id = "x" }
      assert.equal(r, router.match(router.sort { r }, nil, "GET", "h", "/"))
    end)

    it("takes the first declared of two equal routes", function()
      local routes = { R { id = "first", path = "/dup/" }, R { id = "second", path = "/dup/" } }
      assert.equal("first", m(routes, nil, "GET", "h", "/dup/x"))
    end)
  end)
end)
