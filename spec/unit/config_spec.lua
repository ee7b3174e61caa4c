-- Unit specs for the config side: moongate.private.loader (proxy.lua -> normalised
-- table) and the DSL in moongate/init.lua. docs/config.md is the contract.
--
-- Each test writes its proxy.lua into a fresh temp folder (os.tmpname based) that is
-- removed again in after_each. Config sources are given as a list of lines so the
-- line number an error must name is obvious from the test.
local loader = require "moongate.private.loader"
local mg = require "moongate"

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function run(cmd)
  local r = os.execute(cmd)
  return r == 0 or r == true
end

local function mktempdir()
  local p = os.tmpname()
  os.remove(p)
  assert(run("mkdir " .. shell_quote(p)), "mkdir " .. p)
  return p
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local HEADER = 'local mg = require "moongate"'
local LISTEN = 'mg.listen { "127.0.0.1:8080" }'

local DEFAULT_TIMEOUTS = {
  client_header = 10, client_body = 30, keepalive = 60, send = 60,
  upstream_connect = 5, upstream_read = 60, upstream_write = 60, drain = 30, handshake = 10,
  request = 60, upstream_paused = 60, tunnel = 300, hook = 30,
}
local DEFAULT_LIMITS = { head_size = 32768, headers = 100, uri_size = 8192, body_size = 1048576,
                         body_rate = 1024, connections = "auto", connections_per_ip = 0 }

local function copy(t)
  local o = {}
  for k, v in pairs(t) do o[k] = v end
  return o
end

describe("moongate.private.loader", function()
  local dir, saved_path

  before_each(function()
    saved_path = package.path
    dir = mktempdir()
  end)

  after_each(function()
    package.path = saved_path -- load() prepends the config folder
    if dir then run("rm -rf " .. shell_quote(dir)) end
    dir = nil
    mg._reset(".")
  end)

  -- Writes `lines` (a list, or a single string) to <dir>/<name or proxy.lua> and loads it.
  local function load_lines(lines, name)
    local path = dir .. "/" .. (name or "proxy.lua")
    local text = type(lines) == "table" and table.concat(lines, "\n") .. "\n" or lines
    write(path, text)
    local conf, err = loader.load(path)
    return conf, err, path
  end

  -- Loads `lines` and asserts it fails with "<path>:<line>: " and every fragment in it.
  local function assert_error(lines, line, ...)
    local conf, err, path = load_lines(lines)
    assert.is_nil(conf)
    assert.is_string(err)
    local prefix = path .. ":" .. line .. ": "
    assert.equal(prefix, err:sub(1, #prefix), "error does not start with " .. prefix .. ": " .. err)
    for i = 1, select("#", ...) do
      local frag = select(i, ...)
      assert.is_truthy(err:find(frag, 1, true), "'" .. frag .. "' not in: " .. err)
    end
    return err
  end

  -- Loads `lines` (which must be valid) and returns the config table.
  local function ok(lines)
    local conf, err = load_lines(lines)
    assert.is_nil(err)
    assert.is_table(conf)
    return conf
  end

  describe("defaults", function()
    it("fills every mg.config key from docs/config.md", function()
      local conf = ok { HEADER, LISTEN }
      assert.equal(0, conf.workers) -- 0 = auto (number of cores)
      assert.equal(dir .. "/logs/access.log", conf.access_log)
      assert.equal("-", conf.error_log)
      assert.equal("info", conf.log_level)
      assert.equal(dir .. "/logs/moongate.pid", conf.pid)
    end)

    it("resolves the default access_log and pid to absolute paths in the config's folder", function()
      local conf = ok { HEADER, LISTEN }
      assert.equal("/", conf.access_log:sub(1, 1))
      assert.equal("/", conf.pid:sub(1, 1))
      assert.equal(dir, conf.access_log:match("^(.*)/logs/access%.log$"))
      assert.equal(dir, conf.pid:match("^(.*)/logs/moongate%.pid$"))
    end)

    it("has every timeout default (seconds)", function()
      assert.same(DEFAULT_TIMEOUTS, ok({ HEADER, LISTEN }).timeouts)
    end)

    it("has every limit default (bytes)", function()
      assert.same(DEFAULT_LIMITS, ok({ HEADER, LISTEN }).limits)
    end)

    it("returns the listeners, no upstreams and no routes for a listen-only config", function()
      local conf = ok { HEADER, LISTEN }
      assert.same({ { host = "127.0.0.1", port = 8080, deferred = true } }, conf.listeners)
      assert.same({}, conf.upstreams)
      assert.same({}, conf.routes)
    end)

    it("gives an upstream keepalive 32, keepalive_timeout 60 and weight 1", function()
      local conf = ok { HEADER, LISTEN, 'mg.upstream "app" { servers = { "10.0.0.1:80", "10.0.0.2:81" } }' }
      assert.equal(1, #conf.upstreams)
      local u = conf.upstreams[1]
      assert.equal("app", u.name)
      assert.equal(32, u.keepalive)
      assert.equal(60, u.keepalive_timeout)
      assert.same({ { host = "10.0.0.1", port = 80, weight = 1, name = "10.0.0.1:80" },
                    { host = "10.0.0.2", port = 81, weight = 1, name = "10.0.0.2:81" } },
                  u.servers)
    end)

    it("gives a route path '/' and a respond status 200, empty body, no headers", function()
      local conf = ok { HEADER, LISTEN, "mg.route { respond = {} }" }
      local r = conf.routes[1]
      assert.equal("/", r.path)
      assert.is_nil(r.host)
      assert.is_nil(r.methods)
      assert.is_nil(r.listener)
      assert.is_nil(r.upstream)
      assert.same({ status = 200, body = "", headers = {} }, r.respond)
      assert.equal(0, r.upstream_index)
    end)
  end)

  describe("overrides", function()
    it("keeps access_log = false as false", function()
      local conf = ok { HEADER, LISTEN, "mg.config { access_log = false }" }
      assert.is_false(conf.access_log)
    end)

    it("keeps '-' (stderr) for access_log, error_log and pid untouched", function()
      local conf = ok { HEADER, LISTEN, 'mg.config { access_log = "-", error_log = "-", pid = "-" }' }
      assert.equal("-", conf.access_log)
      assert.equal("-", conf.error_log)
      assert.equal("-", conf.pid)
    end)

    it("resolves relative access_log, error_log and pid against the config's folder", function()
      local conf = ok { HEADER, LISTEN,
        'mg.config { access_log = "a/acc.log", error_log = "err.log", pid = "run/mg.pid" }' }
      assert.equal(dir .. "/a/acc.log", conf.access_log)
      assert.equal(dir .. "/err.log", conf.error_log)
      assert.equal(dir .. "/run/mg.pid", conf.pid)
    end)

    it("keeps absolute paths as given", function()
      local conf = ok { HEADER, LISTEN,
        'mg.config { access_log = "/var/log/a.log", error_log = "/var/log/e.log", pid = "/run/mg.pid" }' }
      assert.equal("/var/log/a.log", conf.access_log)
      assert.equal("/var/log/e.log", conf.error_log)
      assert.equal("/run/mg.pid", conf.pid)
    end)

    it("takes workers as a number", function()
      assert.equal(4, ok({ HEADER, LISTEN, "mg.config { workers = 4 }" }).workers)
    end)

    it("maps workers = 'auto' to 0", function()
      assert.equal(0, ok({ HEADER, LISTEN, 'mg.config { workers = "auto" }' }).workers)
    end)

    it("takes each log_level", function()
      for _, lvl in ipairs { "debug", "info", "warn", "error" } do
        assert.equal(lvl, ok({ HEADER, LISTEN, 'mg.config { log_level = "' .. lvl .. '" }' }).log_level)
      end
    end)

    it("overrides single timeouts (fractions allowed) and keeps the other defaults", function()
      local conf = ok { HEADER, LISTEN, "mg.config { timeouts = { client_header = 2.5, drain = 1 } }" }
      local want = copy(DEFAULT_TIMEOUTS)
      want.client_header = 2.5
      want.drain = 1
      assert.same(want, conf.timeouts)
    end)

    it("overrides every timeout", function()
      local conf = ok { HEADER, LISTEN, "mg.config { timeouts = { client_header = 1, client_body = 2, "
        .. "keepalive = 3, send = 4, upstream_connect = 0.25, upstream_read = 6, upstream_write = 7, drain = 8, handshake = 9, "
        .. "request = 10, upstream_paused = 11, tunnel = 12, hook = 13 } }" }
      assert.same({ client_header = 1, client_body = 2, keepalive = 3, send = 4, upstream_connect = 0.25,
                    upstream_read = 6, upstream_write = 7, drain = 8, handshake = 9,
                    request = 10, upstream_paused = 11, tunnel = 12, hook = 13 }, conf.timeouts)
    end)

    it("overrides limits and keeps body_size = 0 (unlimited) as 0", function()
      local conf = ok { HEADER, LISTEN, "mg.config { limits = { head_size = 4096, body_size = 0 } }" }
      local want = copy(DEFAULT_LIMITS)
      want.head_size = 4096
      want.body_size = 0
      assert.same(want, conf.limits)
    end)

    it("overrides every limit", function()
      local conf = ok { HEADER, LISTEN,
        "mg.config { limits = { head_size = 1000, headers = 10, uri_size = 200, body_size = 5, "
        .. "body_rate = 0, connections = 100, connections_per_ip = 8 } }" }
      assert.same({ head_size = 1000, headers = 10, uri_size = 200, body_size = 5,
                    body_rate = 0, connections = 100, connections_per_ip = 8 }, conf.limits)
    end)

    it("takes timeouts.request = 0 (off) and limits.connections = 'auto' or 0 (unlimited)", function()
      local conf = ok { HEADER, LISTEN, "mg.config { timeouts = { request = 0 }, limits = { connections = 0 } }" }
      assert.equal(0, conf.timeouts.request)
      assert.equal(0, conf.limits.connections)
      assert.equal("auto", ok({ HEADER, LISTEN, 'mg.config { limits = { connections = "auto" } }' }).limits.connections)
    end)

    it("overrides upstream keepalive (0 = no pooling) and keepalive_timeout", function()
      local conf = ok { HEADER, LISTEN,
        'mg.upstream "a" { servers = { "10.0.0.1:80" }, keepalive = 0, keepalive_timeout = 2.5 }' }
      assert.equal(0, conf.upstreams[1].keepalive)
      assert.equal(2.5, conf.upstreams[1].keepalive_timeout)
    end)

    it("gives an upstream proxy_protocol 0 (none), 1 for \"v1\", 2 for \"v2\", 0 for false", function()
      local function pp(v)
        local extra = v and (", proxy_protocol = " .. v) or ""
        return ok({ HEADER, LISTEN, 'mg.upstream "a" { servers = { "10.0.0.1:80" }' .. extra .. ' }' })
          .upstreams[1].proxy_protocol
      end
      assert.equal(0, pp(nil))
      assert.equal(1, pp('"v1"'))
      assert.equal(2, pp('"v2"'))
      assert.equal(0, pp("false"))
    end)
  end)

  describe("listeners", function()
    it("parses IPv4, host names and bracketed IPv6, with the listener name", function()
      local conf = ok { HEADER,
        'mg.listen { "0.0.0.0:80", "localhost:8080" }',
        'mg.listen { "[::1]:8443", name = "admin" }' }
      assert.same({
        { host = "0.0.0.0", port = 80, deferred = true },
        { host = "localhost", port = 8080, deferred = true },
        { host = "::1", port = 8443, name = "admin", deferred = true },
      }, conf.listeners)
    end)

    it("loads a file that starts with a #! line or a UTF-8 BOM, with the right line numbers", function()
      assert.equal(8080, ok({ "#!/usr/bin/env moongate", HEADER, LISTEN }).listeners[1].port)
      assert_error({ "#!/usr/bin/env moongate", HEADER, 'mg.listen { "localhost" }' }, 3, "'localhost'")
      assert.equal(8080, ok({ "\239\187\191" .. HEADER, LISTEN }).listeners[1].port)
      local conf = ok { HEADER, LISTEN }
      assert.equal(table.concat({ HEADER, LISTEN }, "\n") .. "\n", conf.source)
    end)

    it("takes deferred = false (accept before the first bytes) and refuses a non-boolean", function()
      local conf = ok { HEADER, 'mg.listen { "127.0.0.1:80", deferred = false }' }
      assert.is_false(conf.listeners[1].deferred)
      assert_error({ HEADER, 'mg.listen { "127.0.0.1:80", deferred = "yes" }' }, 2, "mg.listen", "deferred")
    end)

    it("refuses an address without a port ('localhost')", function()
      assert_error({ HEADER, 'mg.listen { "localhost" }' }, 2, "mg.listen", "'localhost'", "bad address")
    end)

    it("refuses a port above 65535 ('1.2.3.4:99999')", function()
      assert_error({ HEADER, 'mg.listen { "1.2.3.4:99999" }' }, 2, "mg.listen", "'1.2.3.4:99999'", "bad address")
    end)

    it("refuses port 0", function()
      assert_error({ HEADER, 'mg.listen { "1.2.3.4:0" }' }, 2, "mg.listen", "'1.2.3.4:0'")
    end)

    it("refuses an unbracketed IPv6 address", function()
      assert_error({ HEADER, 'mg.listen { "::1:80" }' }, 2, "mg.listen", "'::1:80'")
    end)

    it("refuses an address that is not a string", function()
      assert_error({ HEADER, "mg.listen { 8080 }" }, 2, "mg.listen", "must be a string", "number")
    end)

    it("refuses an empty mg.listen", function()
      assert_error({ HEADER, "mg.listen {}" }, 2, "mg.listen", "at least one address")
    end)

    it("refuses the same address twice", function()
      assert_error({ HEADER, LISTEN, 'mg.listen { "127.0.0.1:8080" }' }, 3, "mg.listen", "'127.0.0.1:8080'")
    end)

    it("refuses an unknown key", function()
      assert_error({ HEADER, 'mg.listen { "127.0.0.1:80", nmae = "x" }' }, 2, "mg.listen", "unknown key", "'nmae'")
    end)

    it("refuses a name that is not a string", function()
      assert_error({ HEADER, 'mg.listen { "127.0.0.1:80", name = 1 }' }, 2, "mg.listen", "'name'", "string")
    end)

    describe("tls policy and hsts", function()
      local TLS = 'cert = "c.pem", key = "k.pem"'
      local function listen(extra, outer)
        return 'mg.listen { "127.0.0.1:443", tls = { ' .. TLS .. (extra and ", " .. extra or "") .. " }"
               .. (outer and ", " .. outer or "") .. " }"
      end

      it("defaults to the intermediate profile, TLS 1.2 and up, no ciphers, timeout or hsts", function()
        local l = ok({ HEADER, listen() }).listeners[1]
        assert.equal("intermediate", l.tls.profile)
        assert.equal(0x0303, l.tls.min_version)
        assert.is_nil(l.tls.ciphers)
        assert.is_nil(l.tls.session_timeout)
        assert.is_nil(l.hsts)
        assert.equal(dir .. "/proxy.lua:2", l.tls.site)
      end)

      it("makes profile modern TLS 1.3 only, and keeps min_version 1.3 with the others", function()
        assert.equal(0x0304, ok({ HEADER, listen('profile = "modern"') }).listeners[1].tls.min_version)
        local l = ok({ HEADER, listen('profile = "compatible", min_version = "1.3"') }).listeners[1]
        assert.equal("compatible", l.tls.profile)
        assert.equal(0x0304, l.tls.min_version)
        assert.equal(0x0304, ok({ HEADER, listen('profile = "modern", min_version = "1.3"') }).listeners[1].tls.min_version)
      end)

      it("refuses an unknown profile, and min_version 1.2 with modern", function()
        assert_error({ HEADER, listen('profile = "old"') }, 2, "'profile' must be", "old")
        assert_error({ HEADER, listen('profile = "modern", min_version = "1.2"') }, 2, "contradicts profile")
      end)

      it("passes ciphers on, and refuses an empty or spaced string or one on a TLS 1.3-only listener", function()
        assert.equal("ECDHE+AESGCM", ok({ HEADER, listen('ciphers = "ECDHE+AESGCM"') }).listeners[1].tls.ciphers)
        assert_error({ HEADER, listen('ciphers = ""') }, 2, "'ciphers' must be")
        assert_error({ HEADER, listen('ciphers = "A B"') }, 2, "'ciphers' must be")
        assert_error({ HEADER, listen('ciphers = "A,B"') }, 2, "'ciphers' must be")
        assert_error({ HEADER, listen('ciphers = 1') }, 2, "'ciphers'", "string")
        assert_error({ HEADER, listen('profile = "modern", ciphers = "ECDHE+AESGCM"') }, 2, "TLS 1.3 only")
        assert_error({ HEADER, listen('min_version = "1.3", ciphers = "ECDHE+AESGCM"') }, 2, "TLS 1.3 only")
      end)

      it("takes session_timeout from 1 s to 24 h, whole seconds", function()
        assert.equal(3600, ok({ HEADER, listen("session_timeout = 3600") }).listeners[1].tls.session_timeout)
        assert_error({ HEADER, listen("session_timeout = 86401") }, 2, "'session_timeout'", "out of range")
        assert_error({ HEADER, listen("session_timeout = 0") }, 2, "'session_timeout'", "out of range")
        assert_error({ HEADER, listen("session_timeout = 1.5") }, 2, "'session_timeout'", "whole seconds")
      end)

      it("refuses a typo in the tls table", function()
        assert_error({ HEADER, listen('profil = "modern"') }, 2, "mg.listen tls", "unknown key 'profil'")
      end)

      it("builds the hsts value: two years by default, includeSubDomains and preload when asked", function()
        assert.equal("max-age=63072000", ok({ HEADER, listen(nil, "hsts = {}") }).listeners[1].hsts)
        assert.equal("max-age=600; includeSubDomains",
                     ok({ HEADER, listen(nil, "hsts = { max_age = 600, subdomains = true }") }).listeners[1].hsts)
        assert.equal("max-age=31536000; includeSubDomains; preload",
          ok({ HEADER, listen(nil, "hsts = { max_age = 31536000, subdomains = true, preload = true }") }).listeners[1].hsts)
        assert.equal("max-age=0", ok({ HEADER, listen(nil, "hsts = { max_age = 0 }") }).listeners[1].hsts)
      end)

      it("refuses hsts on a plain listener, a typo in it, bad values, and preload without its conditions", function()
        assert_error({ HEADER, 'mg.listen { "127.0.0.1:80", hsts = {} }' }, 2, "'hsts' needs 'tls'")
        assert_error({ HEADER, 'mg.listen { "127.0.0.1:80", redirect_https = true, hsts = {} }' }, 2, "'hsts' needs 'tls'")
        assert_error({ HEADER, listen(nil, "hsts = { maxage = 1 }") }, 2, "mg.listen hsts", "unknown key 'maxage'")
        assert_error({ HEADER, listen(nil, "hsts = true") }, 2, "'hsts' must be a table")
        assert_error({ HEADER, listen(nil, "hsts = { max_age = -1 }") }, 2, "'max_age'", "out of range")
        assert_error({ HEADER, listen(nil, "hsts = { max_age = 1.5 }") }, 2, "'max_age' must be whole seconds")
        assert_error({ HEADER, listen(nil, 'hsts = { subdomains = "yes" }') }, 2, "'subdomains'", "boolean")
        assert_error({ HEADER, listen(nil, "hsts = { preload = true }") }, 2, "'preload' needs subdomains")
        assert_error({ HEADER, listen(nil, "hsts = { preload = true, subdomains = true, max_age = 600 }") }, 2,
                     "'preload' needs")
      end)
    end)

    it("is required: a config without mg.listen is an error naming the file", function()
      local conf, err, path = load_lines { HEADER, 'mg.config { workers = 1 }' }
      assert.is_nil(conf)
      assert.equal(path .. ": no mg.listen { ... } address", err)
    end)
  end)

  describe("mg.config errors", function()
    it("names file, line and key for an unknown key", function()
      local err = assert_error({ HEADER, LISTEN, "mg.config { wokers = 4 }" }, 3, "mg.config", "unknown key", "'wokers'")
      assert.equal(dir .. "/proxy.lua:3: mg.config: unknown key 'wokers'", err)
    end)

    it("names the line of the call even when it is not the last line", function()
      assert_error({ HEADER, "", "-- comment", "mg.config { acess_log = false }", LISTEN, "" }, 4, "'acess_log'")
    end)

    it("names an unknown timeouts key", function()
      assert_error({ HEADER, LISTEN, "mg.config { timeouts = { client_heder = 1 } }" }, 3,
                   "timeouts", "unknown key", "'client_heder'")
    end)

    it("refuses 0 for a timeout other than request", function()
      assert_error({ HEADER, LISTEN, "mg.config { timeouts = { upstream_paused = 0 } }" }, 3,
                   "'upstream_paused'", "out of range")
    end)

    it("refuses sizes written as strings out of the number form's range (0, beyond 2^40)", function()
      assert_error({ HEADER, LISTEN, 'mg.route { path = "/", respond = { status = 200 }, buffer_body = "99999999999999999g" }' },
                   3, "'buffer_body'", "out of range")
      assert_error({ HEADER, LISTEN, 'mg.route { path = "/", respond = { status = 200 }, buffer_body = "0" }' },
                   3, "'buffer_body'", "out of range")
      assert_error({ HEADER, LISTEN, 'mg.config { shared = { d = "9999999999999g" } }' }, 3, "'d'", "out of range")
    end)

    it("refuses fractions and words for the counting limits", function()
      assert_error({ HEADER, LISTEN, "mg.config { limits = { connections_per_ip = 2.5 } }" }, 3,
                   "'connections_per_ip'", "whole number")
      assert_error({ HEADER, LISTEN, 'mg.config { limits = { connections = "many" } }' }, 3,
                   "'connections'", "number")
      assert_error({ HEADER, LISTEN, 'mg.config { limits = { body_rate = "auto" } }' }, 3, "'body_rate'", "number")
    end)

    it("names an unknown limits key", function()
      assert_error({ HEADER, LISTEN, "mg.config { limits = { body = 1 } }" }, 3, "limits", "unknown key", "'body'")
    end)

    it("refuses a positional value", function()
      assert_error({ HEADER, LISTEN, "mg.config { 4 }" }, 3, "mg.config", "positional")
    end)

    it("refuses a non-table argument", function()
      assert_error({ HEADER, LISTEN, 'mg.config "x"' }, 3, "mg.config", "table")
    end)

    it("refuses workers given as a string", function()
      assert_error({ HEADER, LISTEN, 'mg.config { workers = "4" }' }, 3, "'workers'", "number", "string")
    end)

    it("refuses a fractional workers", function()
      assert_error({ HEADER, LISTEN, "mg.config { workers = 2.5 }" }, 3, "'workers'", "integer")
    end)

    it("refuses a negative workers", function()
      assert_error({ HEADER, LISTEN, "mg.config { workers = -1 }" }, 3, "'workers'", "out of range")
    end)

    it("refuses access_log given as a number", function()
      assert_error({ HEADER, LISTEN, "mg.config { access_log = 5 }" }, 3, "'access_log'", "string", "number")
    end)

    it("refuses error_log = false (only access_log can be turned off)", function()
      assert_error({ HEADER, LISTEN, "mg.config { error_log = false }" }, 3, "'error_log'", "string", "boolean")
    end)

    it("refuses pid = true", function()
      assert_error({ HEADER, LISTEN, "mg.config { pid = true }" }, 3, "'pid'", "string", "boolean")
    end)

    it("refuses an empty path", function()
      assert_error({ HEADER, LISTEN, 'mg.config { access_log = "" }' }, 3, "'access_log'", "empty")
    end)

    it("refuses an unknown log_level", function()
      assert_error({ HEADER, LISTEN, 'mg.config { log_level = "verbose" }' }, 3, "'log_level'", "verbose")
    end)

    it("refuses timeouts that is not a table", function()
      assert_error({ HEADER, LISTEN, "mg.config { timeouts = 5 }" }, 3, "'timeouts'", "table", "number")
    end)

    it("refuses a timeout given as a string", function()
      assert_error({ HEADER, LISTEN, 'mg.config { timeouts = { send = "10" } }' }, 3, "'send'", "number", "string")
    end)

    it("refuses a negative timeout", function()
      assert_error({ HEADER, LISTEN, "mg.config { timeouts = { drain = -1 } }" }, 3, "'drain'", "out of range")
    end)

    it("refuses a negative limit", function()
      assert_error({ HEADER, LISTEN, "mg.config { limits = { head_size = -1 } }" }, 3, "'head_size'", "out of range")
    end)

    it("refuses a NaN limit", function()
      assert_error({ HEADER, LISTEN, "mg.config { limits = { uri_size = 0/0 } }" }, 3, "'uri_size'", "out of range")
    end)
  end)

  describe("upstreams", function()
    it("names a server listed again apart (the hash table's permutations need distinct names)", function()
      local conf = ok { HEADER, LISTEN,
        'mg.upstream "a" { balance = "hash", servers = { "10.0.0.1:80", "10.0.0.2:80", "10.0.0.1:80", "10.0.0.1:80" } }' }
      local names = {}
      for i, srv in ipairs(conf.upstreams[1].servers) do names[i] = srv.name end
      assert.same({ "10.0.0.1:80", "10.0.0.2:80", "10.0.0.1:80#2", "10.0.0.1:80#3" }, names)
    end)

    it("parses weight=N", function()
      local conf = ok { HEADER, LISTEN,
        'mg.upstream "a" { servers = { "10.0.0.1:80 weight=5", "10.0.0.2:80", "[::1]:81  weight=1000", "h:1 weight=1" } }' }
      assert.same({
        { host = "10.0.0.1", port = 80, weight = 5, name = "10.0.0.1:80" },
        { host = "10.0.0.2", port = 80, weight = 1, name = "10.0.0.2:80" },
        { host = "::1", port = 81, weight = 1000, name = "[::1]:81" },
        { host = "h", port = 1, weight = 1, name = "h:1" },
      }, conf.upstreams[1].servers)
    end)

    it("refuses weight=0", function()
      assert_error({ HEADER, LISTEN, 'mg.upstream "a" { servers = { "10.0.0.1:80 weight=0" } }' }, 3,
                   "'a'", "servers[1]", "1..1000")
    end)

    it("refuses weight=1001", function()
      assert_error({ HEADER, LISTEN, 'mg.upstream "a" { servers = { "10.0.0.1:80", "10.0.0.2:80 weight=1001" } }' }, 3,
                   "'a'", "servers[2]", "1..1000")
    end)

    it("refuses a non-numeric weight", function()
      assert_error({ HEADER, LISTEN, 'mg.upstream "a" { servers = { "10.0.0.1:80 weight=abc" } }' }, 3,
                   "servers[1]", "'weight=abc'")
    end)

    it("refuses a negative weight", function()
      assert_error({ HEADER, LISTEN, 'mg.upstream "a" { servers = { "10.0.0.1:80 weight=-2" } }' }, 3,
                   "servers[1]", "'weight=-2'")
    end)

    it("refuses an unknown server option", function()
      assert_error({ HEADER, LISTEN, 'mg.upstream "a" { servers = { "10.0.0.1:80 wieght=3" } }' }, 3,
                   "servers[1]", "unknown option", "'wieght=3'")
    end)

    it("refuses a bad server address", function()
      assert_error({ HEADER, LISTEN, 'mg.upstream "a" { servers = { "localhost" } }' }, 3, "'a'", "'localhost'")
    end)

    it("refuses a server port above 65535", function()
      assert_error({ HEADER, LISTEN, 'mg.upstream "a" { servers = { "1.2.3.4:99999" } }' }, 3, "'1.2.3.4:99999'")
    end)

    it("refuses a server that is not a string", function()
      assert_error({ HEADER, LISTEN, 'mg.upstream "a" { servers = { 80 } }' }, 3, "servers[1]", "string")
    end)

    it("refuses missing servers", function()
      assert_error({ HEADER, LISTEN, 'mg.upstream "a" { keepalive = 1 }' }, 3, "'servers'", "table", "nil")
    end)

    it("refuses empty servers", function()
      assert_error({ HEADER, LISTEN, 'mg.upstream "a" { servers = {} }' }, 3, "'servers'", "empty")
    end)

    it("names an unknown key", function()
      assert_error({ HEADER, LISTEN, 'mg.upstream "a" { servers = { "h:1" }, keeplive = 3 }' }, 3,
                   "mg.upstream 'a'", "unknown key", "'keeplive'")
    end)

    it("refuses a negative keepalive", function()
      assert_error({ HEADER, LISTEN, 'mg.upstream "a" { servers = { "h:1" }, keepalive = -1 }' }, 3,
                   "'keepalive'", "out of range")
    end)

    it("gives an upstream splice 0 by default, 1 for true, 0 for false", function()
      local function sp(v)
        local extra = v and (", splice = " .. v) or ""
        return ok({ HEADER, LISTEN, 'mg.upstream "a" { servers = { "10.0.0.1:80" }' .. extra .. ' }' })
          .upstreams[1].splice
      end
      assert.equal(0, sp(nil))
      assert.equal(1, sp("true"))
      assert.equal(0, sp("false"))
    end)

    it("refuses a splice that is not a boolean", function()
      for _, v in ipairs({ '"yes"', "1", "{}" }) do
        assert_error({ HEADER, LISTEN, 'mg.upstream "a" { servers = { "h:1" }, splice = ' .. v .. ' }' }, 3,
                     "mg.upstream 'a'", "'splice'")
      end
    end)

    it("refuses a proxy_protocol other than \"v1\", \"v2\" or false", function()
      for _, v in ipairs({ "true", '"v3"', '"V2"', "1", "{}" }) do
        assert_error({ HEADER, LISTEN, 'mg.upstream "a" { servers = { "h:1" }, proxy_protocol = ' .. v .. ' }' }, 3,
                     "mg.upstream 'a'", [['proxy_protocol' must be "v1", "v2" or false, got ]])
      end
    end)

    it("refuses keepalive_timeout given as a string", function()
      assert_error({ HEADER, LISTEN, 'mg.upstream "a" { servers = { "h:1" }, keepalive_timeout = "60" }' }, 3,
                   "'keepalive_timeout'", "number")
    end)

    it("refuses a name that is not a word", function()
      assert_error({ HEADER, LISTEN, 'mg.upstream "a b" { servers = { "h:1" } }' }, 3, "mg.upstream", "a b")
    end)

    it("refuses the same name twice", function()
      assert_error({ HEADER, LISTEN, 'mg.upstream "a" { servers = { "h:1" } }', 'mg.upstream "a" { servers = { "h:2" } }' },
                   4, "mg.upstream", "'a'", "twice")
    end)

    describe("tls.sni", function()
      local function up(sni)
        return 'mg.upstream "a" { servers = { "h:1" }, tls = { verify = false, sni = ' .. sni .. ' } }'
      end

      it("takes a DNS name (with '_' and digits in labels)", function()
        for _, name in ipairs({ "backend.internal", "a", "x-1.example.com", "_svc.example.com", "1a.b2" }) do
          assert.equal(name, ok({ HEADER, LISTEN, up(string.format("%q", name)) }).upstreams[1].tls.sni)
        end
      end)

      it("refuses an empty name", function()
        assert_error({ HEADER, LISTEN, up('""') }, 3, "mg.upstream 'a' tls", "'sni' must not be empty")
      end)

      it("refuses IP literals, spaces, control characters, ports and trailing dots", function()
        for _, bad in ipairs({ '"[::1]"', '"::1"', '"10.0.0.1"', '"a b"', '"a\\nb"', '"a\\0b"', '"a:443"',
                               '"a.example."', '"a..b"', '".a"', '"-a.b"', '"a-.b"', '"a/b"',
                               '"' .. string.rep("a", 64) .. '.b"', '"' .. string.rep("a.", 127) .. 'a"' }) do
          local conf, err = load_lines({ HEADER, LISTEN, up(bad) })
          assert.is_nil(conf, bad)
          assert.truthy(err:find(":3: mg.upstream 'a' tls: 'sni'", 1, true), bad .. ": " .. tostring(err))
        end
      end)

      it("refuses a non-string", function()
        assert_error({ HEADER, LISTEN, up("1") }, 3, "'sni'", "string")
      end)
    end)
  end)

  describe("routes", function()
    it("accepts an upstream object or its name", function()
      local conf = ok { HEADER, LISTEN,
        'local a = mg.upstream "a" { servers = { "h:1" } }',
        'mg.upstream "b" { servers = { "h:2" } }',
        'mg.route { host = "a.test", upstream = a }',
        'mg.route { host = "b.test", upstream = "b" }' }
      assert.equal("a", conf.routes[1].upstream)
      assert.equal(1, conf.routes[1].upstream_index)
      assert.equal("b", conf.routes[2].upstream)
      assert.equal(2, conf.routes[2].upstream_index)
    end)

    it("names an unknown upstream", function()
      assert_error({ HEADER, LISTEN, 'mg.route { upstream = "nope" }' }, 3, "mg.route", "unknown upstream", "'nope'")
    end)

    it("refuses an upstream that is neither an upstream object nor a name", function()
      assert_error({ HEADER, LISTEN, 'mg.route { upstream = { name = "a" } }' }, 3, "mg.route", "'upstream'")
    end)

    it("refuses both upstream and respond", function()
      assert_error({ HEADER, LISTEN, 'mg.upstream "a" { servers = { "h:1" } }',
                     'mg.route { upstream = "a", respond = { body = "x" } }' }, 4, "mg.route", "exactly one")
    end)

    it("refuses neither upstream nor respond", function()
      assert_error({ HEADER, LISTEN, 'mg.route { host = "x.test" }' }, 3, "mg.route", "exactly one")
    end)

    it("names an unknown listener with the line of the route", function()
      local err = assert_error({ HEADER, LISTEN, "", 'mg.route { listener = "admin", respond = {} }' }, 4,
                               "mg.route", "unknown listener", "'admin'")
      assert.equal(dir .. "/proxy.lua:4: mg.route: unknown listener 'admin'", err)
    end)

    it("accepts a listener named by an mg.listen that comes after the route", function()
      local conf = ok { HEADER, 'mg.route { listener = "admin", respond = {} }',
                        'mg.listen { "127.0.0.1:9000", name = "admin" }' }
      assert.equal("admin", conf.routes[1].listener)
    end)

    it("names an unknown route key", function()
      assert_error({ HEADER, LISTEN, 'mg.route { hots = "x", respond = {} }' }, 3, "mg.route", "unknown key", "'hots'")
    end)

    it("lower-cases the host and keeps wildcards", function()
      local conf = ok { HEADER, LISTEN, 'mg.route { host = "API.Example.COM", respond = {} }',
                        'mg.route { host = "*.Example.com", respond = {} }' }
      assert.equal("api.example.com", conf.routes[1].host)
      assert.equal("*.example.com", conf.routes[2].host)
    end)

    it("refuses a bad host", function()
      assert_error({ HEADER, LISTEN, 'mg.route { host = "a b.test", respond = {} }' }, 3, "mg.route", "bad host", "'a b.test'")
    end)

    it("refuses a wildcard that is not '*.suffix'", function()
      assert_error({ HEADER, LISTEN, 'mg.route { host = "*example.com", respond = {} }' }, 3, "*example.com")
    end)

    it("refuses a host given as a number", function()
      assert_error({ HEADER, LISTEN, "mg.route { host = 5, respond = {} }" }, 3, "'host'", "string")
    end)

    it("refuses a path not starting with '/'", function()
      assert_error({ HEADER, LISTEN, 'mg.route { path = "api", respond = {} }' }, 3, "'path'", "/")
    end)

    it("upper-cases methods", function()
      local conf = ok { HEADER, LISTEN, 'mg.route { methods = { "get", "Head", "POST" }, respond = {} }' }
      assert.same({ "GET", "HEAD", "POST" }, conf.routes[1].methods)
    end)

    it("refuses an unknown method", function()
      assert_error({ HEADER, LISTEN, 'mg.route { methods = { "GET", "FETCH" }, respond = {} }' }, 3,
                   "methods[2]", "FETCH")
    end)

    it("refuses methods given as a string", function()
      assert_error({ HEADER, LISTEN, 'mg.route { methods = "GET", respond = {} }' }, 3, "'methods'", "table")
    end)

    it("refuses a listener given as a number", function()
      assert_error({ HEADER, LISTEN, "mg.route { listener = 1, respond = {} }" }, 3, "'listener'", "string")
    end)
  end)

  describe("respond", function()
    it("keeps status and body and returns headers as sorted {name, value} pairs", function()
      local conf = ok { HEADER, LISTEN,
        'mg.route { respond = { status = 201, body = "made\\n", headers = { ["x-b"] = "2", ["Content-Type"] = "text/plain", ["x-a"] = 7 } } }' }
      assert.same({ status = 201, body = "made\n",
                    headers = { { "Content-Type", "text/plain" }, { "x-a", "7" }, { "x-b", "2" } } },
                  conf.routes[1].respond)
    end)

    it("refuses a CR in a header value", function()
      assert_error({ HEADER, LISTEN, 'mg.route { respond = { headers = { ["x-a"] = "a\\rb" } } }' }, 3,
                   "'x-a'", "CR")
    end)

    it("refuses a LF in a header value", function()
      assert_error({ HEADER, LISTEN, 'mg.route { respond = { headers = { ["x-a"] = "a\\nSet-Cookie: x=1" } } }' }, 3,
                   "'x-a'", "LF")
    end)

    it("refuses a NUL in a header value", function()
      assert_error({ HEADER, LISTEN, 'mg.route { respond = { headers = { ["x-a"] = "a\\0b" } } }' }, 3, "'x-a'", "NUL")
    end)

    it("refuses content-length in any case", function()
      assert_error({ HEADER, LISTEN, 'mg.route { respond = { headers = { ["Content-Length"] = "5" } } }' }, 3,
                   "'Content-Length'")
      assert_error({ HEADER, LISTEN, 'mg.route { respond = { headers = { ["content-length"] = 5 } } }' }, 3,
                   "'content-length'")
    end)

    it("refuses transfer-encoding and connection", function()
      assert_error({ HEADER, LISTEN, 'mg.route { respond = { headers = { ["Transfer-Encoding"] = "chunked" } } }' }, 3,
                   "'Transfer-Encoding'")
      assert_error({ HEADER, LISTEN, 'mg.route { respond = { headers = { connection = "close" } } }' }, 3,
                   "'connection'")
    end)

    it("refuses a header name that is not a token", function()
      assert_error({ HEADER, LISTEN, 'mg.route { respond = { headers = { ["x a"] = "1" } } }' }, 3, "'x a'", "token")
      assert_error({ HEADER, LISTEN, 'mg.route { respond = { headers = { ["x:a"] = "1" } } }' }, 3, "'x:a'", "token")
    end)

    it("refuses a header value that is a table", function()
      assert_error({ HEADER, LISTEN, 'mg.route { respond = { headers = { ["x-a"] = {} } } }' }, 3, "'x-a'", "string")
    end)

    it("refuses headers that is not a table", function()
      assert_error({ HEADER, LISTEN, 'mg.route { respond = { headers = "x" } }' }, 3, "'headers'", "table")
    end)

    it("refuses an unknown respond key", function()
      assert_error({ HEADER, LISTEN, 'mg.route { respond = { stauts = 200 } }' }, 3, "respond", "unknown key", "'stauts'")
    end)

    it("refuses a status out of range or fractional", function()
      assert_error({ HEADER, LISTEN, "mg.route { respond = { status = 600 } }" }, 3, "'status'", "out of range")
      assert_error({ HEADER, LISTEN, "mg.route { respond = { status = 99 } }" }, 3, "'status'", "out of range")
      assert_error({ HEADER, LISTEN, "mg.route { respond = { status = 200.5 } }" }, 3, "status", "integer")
    end)

    it("refuses a body that is not a string", function()
      assert_error({ HEADER, LISTEN, "mg.route { respond = { body = 5 } }" }, 3, "'body'", "string")
    end)

    it("refuses respond that is not a table", function()
      assert_error({ HEADER, LISTEN, 'mg.route { respond = "hi" }' }, 3, "'respond'", "table")
    end)
  end)

  describe("sorted routes", function()
    it("come back most specific first with upstream_index (1-based) or 0 for respond", function()
      local conf = ok { HEADER,
        LISTEN,
        'mg.listen { "127.0.0.1:9000", name = "admin" }',
        'local a = mg.upstream "a" { servers = { "10.0.0.1:80" } }',
        'local b = mg.upstream "b" { servers = { "10.0.0.2:80" } }',
        'mg.route { path = "/", upstream = a }',                                  -- seq 1
        'mg.route { host = "*.example.com", upstream = "b" }',                    -- seq 2
        'mg.route { host = "a.example.com", respond = { body = "exact" } }',      -- seq 3
        'mg.route { host = "a.example.com", path = "/api/", upstream = b }',      -- seq 4
        'mg.route { host = "a.example.com", path = "/api/", methods = { "post" }, upstream = a }', -- seq 5
        'mg.route { listener = "admin", respond = { status = 204 } }',            -- seq 6
        'mg.route { path = "/", upstream = "b" }',                                -- seq 7
      }
      local got = {}
      for i, r in ipairs(conf.routes) do
        got[i] = { r.listener or "", r.host or "", r.path, r.methods and table.concat(r.methods, ",") or "",
                   r.upstream or "", r.upstream_index, r.seq }
      end
      assert.same({
        { "admin", "", "/", "", "", 0, 6 },
        { "", "a.example.com", "/api/", "POST", "a", 1, 5 },
        { "", "a.example.com", "/api/", "", "b", 2, 4 },
        { "", "a.example.com", "/", "", "", 0, 3 },
        { "", "*.example.com", "/", "", "b", 2, 2 },
        { "", "", "/", "", "a", 1, 1 },
        { "", "", "/", "", "b", 2, 7 },
      }, got)
    end)

    it("match the way the router matches them", function()
      local router = require "moongate.router"
      local conf = ok { HEADER, LISTEN,
        'mg.route { host = "*.example.com", respond = { body = "wild" } }',
        'mg.route { host = "a.example.com", respond = { body = "exact" } }',
        'mg.route { respond = { body = "any", status = 404 } }' }
      assert.equal("exact", router.match(conf.routes, nil, "GET", "A.Example.com:80", "/").respond.body)
      assert.equal("wild", router.match(conf.routes, nil, "GET", "b.example.com", "/").respond.body)
      assert.equal("any", router.match(conf.routes, nil, "GET", "example.com", "/").respond.body)
    end)
  end)

  describe("file errors", function()
    it("gives nil and file:line for a syntax error", function()
      local conf, err, path = load_lines { HEADER, LISTEN, "mg.config { workers = 1", "" }
      assert.is_nil(conf)
      assert.is_string(err)
      assert.equal(path .. ":", err:sub(1, #path + 1))
      assert.matches("^:%d+: ", err:sub(#path + 1))
      -- The unclosed '{' is reported at end of file (line 4 or 5) or at its own line 3.
      local line = tonumber(err:sub(#path + 2):match("^(%d+):"))
      assert.is_true(line >= 3 and line <= 5, err)
    end)

    it("names the exact line of a syntax error in the middle of the file", function()
      local conf, err, path = load_lines { HEADER, LISTEN, "local x = = 1", "mg.config { workers = 1 }" }
      assert.is_nil(conf)
      assert.equal(path .. ":3:", err:sub(1, #path + 3))
    end)

    it("names file and line of a syntax error in a deeply nested folder", function()
      -- Lua shortens long chunk names in its own messages ("...folder/proxy.lua:3:"),
      -- so only the tail of the path is asserted here.
      local sub = "/some/deeply/nested/deployment/folder/for/production"
      assert(run("mkdir -p " .. shell_quote(dir .. sub)))
      local conf, err = load_lines({ HEADER, LISTEN, "local x = = 1" }, sub:sub(2) .. "/proxy.lua")
      assert.is_nil(conf)
      assert.is_truthy(err:find("/production/proxy.lua:3: ", 1, true), err)
    end)

    it("gives nil and file:line for a runtime error in proxy.lua", function()
      local conf, err, path = load_lines { HEADER, LISTEN, "local t = nil", "t.x = 1" }
      assert.is_nil(conf)
      assert.equal(path .. ":4:", err:sub(1, #path + 3))
    end)

    it("passes a plain error() from proxy.lua through", function()
      local conf, err, path = load_lines { HEADER, LISTEN, 'error("boom")' }
      assert.is_nil(conf)
      assert.equal(path .. ":3: boom", err)
    end)

    it("gives nil and a message naming the file when it does not exist", function()
      local path = dir .. "/missing.lua"
      local conf, err = loader.load(path)
      assert.is_nil(conf)
      assert.is_truthy(err:find(path, 1, true), err)
    end)

    it("names the proxy.lua line when the config folder is called 'moongate'", function()
      -- /etc/moongate/proxy.lua is a natural place for the config.
      assert(run("mkdir " .. shell_quote(dir .. "/moongate")))
      local conf, err, path = load_lines({ HEADER, LISTEN, "mg.config { wokers = 4 }" }, "moongate/proxy.lua")
      assert.is_nil(conf)
      assert.equal(path .. ":3: mg.config: unknown key 'wokers'", err)
    end)

    it("names the line of a required helper module in the config's folder", function()
      write(dir .. "/site_helpers.lua", table.concat({ HEADER, "return function()",
        "  mg.route { hots = 1, respond = {} }", "end", "" }, "\n"))
      local conf, err = load_lines { HEADER, LISTEN, 'local add = require "site_helpers"', "add()" }
      assert.is_nil(conf)
      assert.equal(dir .. "/site_helpers.lua:3: mg.route: unknown key 'hots'", err)
      package.loaded.site_helpers = nil
    end)
  end)

  describe("retry, circuit breakers and timeouts (i12-retry)", function()
    it("defaults to connect failures, each server once, no breakers, the global timeouts", function()
      local u = ok { HEADER, LISTEN, 'mg.upstream "a" { servers = { "h:1" } }' }.upstreams[1]
      assert.equal(0, u.retry_tries)
      assert.equal(1, u.retry_on) -- connect
      assert.same({}, u.retry_status)
      assert.equal(0, u.retry_per_try)
      assert.equal(0.025, u.retry_backoff_base)
      assert.equal(0.25, u.retry_backoff_max)
      assert.equal(0.2, u.retry_budget)
      assert.equal(65536, u.retry_buffer)
      for _, k in ipairs { "max_connections", "max_pending", "max_requests", "timeout_connect", "timeout_read",
                           "timeout_write" } do
        assert.equal(0, u[k], k)
      end
    end)

    it("flattens retry, the breakers and timeouts for the core", function()
      local conf = ok { HEADER, LISTEN,
        'local u = mg.upstream "a" { servers = { "h:1" }, max_connections = 10, max_pending = 2, max_requests = 7,',
        '  timeouts = { connect = 0.5, read = 3 },',
        '  retry = { tries = 4, on = { "reset", "timeout", 503, "502", "reset" }, per_try_timeout = 1.5,',
        '            backoff = { base = 0.1 }, budget = 0.5, buffer = "8k" } }',
        'mg.route { upstream = u, idempotent = true, timeouts = { write = 2, hook = 1 } }' }
      local u, r = conf.upstreams[1], conf.routes[1]
      assert.equal(4, u.retry_tries)
      assert.equal(2 + 4, u.retry_on) -- timeout + reset, each once
      assert.same({ 503, 502 }, u.retry_status)
      assert.equal(1.5, u.retry_per_try)
      assert.equal(0.1, u.retry_backoff_base)
      assert.equal(1, u.retry_backoff_max) -- 10 x base
      assert.equal(0.5, u.retry_budget)
      assert.equal(8192, u.retry_buffer)
      assert.same({ 10, 2, 7 }, { u.max_connections, u.max_pending, u.max_requests })
      assert.same({ 0.5, 3, 0 }, { u.timeout_connect, u.timeout_read, u.timeout_write })
      assert.is_true(r.idempotent)
      assert.equal(2, r.write_timeout)
      assert.equal(1, r.hook_timeout)
      assert.is_nil(r.read_timeout)
    end)

    it("names the key of a bad value", function()
      assert_error({ HEADER, LISTEN, 'mg.upstream "a" { servers = { "h:1" }, retry = { on = { "5xx" } } }' }, 3,
                   "retry: on[1]", "5xx")
      assert_error({ HEADER, LISTEN, 'mg.upstream "a" { servers = { "h:1" }, retry = { tries = 1.5 } }' }, 3,
                   "'tries' must be a whole number")
      assert_error({ HEADER, LISTEN, 'mg.upstream "a" { servers = { "h:1" }, retry = { on = "503" } }' }, 3, "on")
      assert_error({ HEADER, LISTEN, 'mg.upstream "a" { servers = { "h:1" }, max_requests = -1 }' }, 3,
                   "max_requests")
      assert_error({ HEADER, LISTEN, 'mg.route { upstream = mg.upstream "a" { servers = { "h:1" } },',
                     '  timeouts = { read = 0 } }' }, 3, "read")
    end)
  end)

  describe("repeated loads", function()
    it("start from a clean state each time", function()
      local conf1 = ok { HEADER, LISTEN, 'mg.upstream "a" { servers = { "h:1" } }', 'mg.route { upstream = "a" }',
                         "mg.config { workers = 3, timeouts = { send = 1 } }" }
      assert.equal(1, #conf1.upstreams)
      local conf2 = ok { HEADER, 'mg.listen { "127.0.0.1:9999" }' }
      assert.same({}, conf2.upstreams)
      assert.same({}, conf2.routes)
      assert.equal(0, conf2.workers)
      assert.same(DEFAULT_TIMEOUTS, conf2.timeouts)
      assert.same({ { host = "127.0.0.1", port = 9999, deferred = true } }, conf2.listeners)
      -- the same upstream name can be defined again in a new load
      local conf3 = ok { HEADER, LISTEN, 'mg.upstream "a" { servers = { "h:2" } }' }
      assert.equal(2, conf3.upstreams[1].servers[1].port)
    end)
  end)
end)

describe("moongate DSL (direct calls)", function()
  before_each(function() mg._reset("/conf") end)
  after_each(function() mg._reset(".") end)

  local function this_site(offset)
    local info = debug.getinfo(2, "Sl")
    return info.source:sub(2) .. ":" .. (info.currentline + (offset or 0))
  end

  it("records listeners, upstreams and routes into _state()", function()
    mg.listen { "127.0.0.1:80", name = "pub" }
    local u = mg.upstream "app" { servers = { "10.0.0.1:80 weight=3" } }
    mg.route { host = "X.test", path = "/a/", methods = { "get" }, listener = "pub", upstream = u }
    local st = mg._state()
    assert.equal("/conf", st.confdir)
    assert.same({ { host = "127.0.0.1", port = 80, name = "pub", deferred = true } }, st.listeners)
    assert.same({ pub = true }, st.listener_names)
    assert.equal(u, st.upstreams[1])
    assert.equal(u, st.upstream_by_name.app)
    assert.equal("upstream app", tostring(u))
    assert.same({ { host = "10.0.0.1", port = 80, weight = 3, name = "10.0.0.1:80" } }, u.servers)
    local r = st.routes[1]
    assert.equal("x.test", r.host)
    assert.equal("/a/", r.path)
    assert.same({ "GET" }, r.methods)
    assert.equal("pub", r.listener)
    assert.equal("app", r.upstream)
  end)

  it("records mg.config values, merging timeouts over several calls", function()
    mg.config { workers = 2, timeouts = { send = 5 } }
    mg.config { timeouts = { drain = 1 }, access_log = false }
    assert.same({ workers = 2, access_log = false, timeouts = { send = 5, drain = 1 } }, mg._state().config)
  end)

  it("_reset forgets everything", function()
    mg.listen { "127.0.0.1:80" }
    mg.upstream "a" { servers = { "h:1" } }
    mg._reset("/other")
    local st = mg._state()
    assert.equal("/other", st.confdir)
    assert.same({}, st.listeners)
    assert.same({}, st.upstreams)
    assert.is_nil(st.upstream_by_name.a)
    assert.same({}, st.routes)
    assert.same({}, st.config)
  end)

  it("raises errors prefixed with the caller's file:line", function()
    local ok, err = pcall(function()
      mg.config { wokers = 1 }
    end)
    local site = this_site(-2)
    assert.is_false(ok)
    assert.equal(site .. ": mg.config: unknown key 'wokers'", err)
  end)

  it("records the route's call site for later errors", function()
    mg.route { respond = {} }
    local site = this_site(-1)
    assert.equal(site, mg._state().routes[1].site)
  end)

  it("exposes the router as mg.router", function()
    assert.equal(require "moongate.router", mg.router)
  end)
end)

-- The defaults of timeouts and limits live in one place, moongate/init.lua: the
-- loader fills every one in, and core/config.c reads them as required fields
-- (need_num) with no fallback number of its own.
describe("config defaults have one source", function()
  local root = debug.getinfo(1, "S").source:sub(2):match("^(.*)/spec/unit/[^/]*$") or "."
  local f = assert(io.open(root .. "/core/config.c", "rb"))
  local config_c = f:read("*a")
  f:close()

  for _, group in ipairs({ "timeouts", "limits" }) do
    it("core/config.c keeps no default of its own for " .. group, function()
      for key in pairs(mg._defaults[group]) do
        assert.is_nil(config_c:match('field_num%([^)]*"' .. key .. '"%s*,%s*%d'),
          group .. "." .. key .. " has a default number in core/config.c")
        if key ~= "connections" then -- "auto" or a number: read apart
          assert.truthy(config_c:find('"' .. key .. '"', 1, true), group .. "." .. key .. " not read by core/config.c")
        end
      end
    end)
  end

  it("the loader hands C every default", function()
    local dir = mktempdir()
    local path = dir .. "/proxy.lua"
    local fh = assert(io.open(path, "w"))
    fh:write('local mg = require "moongate"\nmg.listen { "127.0.0.1:8080" }\nmg.route { respond = { status = 200 } }\n')
    fh:close()
    local conf = assert(loader.load(path))
    os.remove(path)
    os.remove(dir)
    for _, group in ipairs({ "timeouts", "limits" }) do
      for key, v in pairs(mg._defaults[group]) do assert.equal(v, conf[group][key], group .. "." .. key) end
    end
  end)
end)
