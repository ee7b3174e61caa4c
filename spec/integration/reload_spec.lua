-- Live reload (docs/hooks.md "Reload"): `moongate -s reload`, SIGHUP and
-- `watch = true`. New requests use the new config, requests in flight finish
-- on the old one, a config that does not load leaves the old one serving,
-- listeners open and close with the config while other connections stay.
local helpers = require "spec.helpers"
local signal = require "posix.signal"

-- ${listen}: mg.listen lines; ${body}: what / answers; ${extra}: more lines.
local TEMPLATE = [[
local mg = require "moongate"
mg.config { workers = 2, access_log = false, pid = "moongate.pid", shared = ${shared}${config} }
${listen}
mg.on("init_worker", function() mg.shared("s"):incr("init_worker", 1, 0) end)
local gen = "${body}"
mg.route { path = "/shared", respond = function(req)
  local s = mg.shared("s")
  if req:arg("set") then s:set("kept", req:arg("set")) end
  return 200, tostring(s:get(req:arg("k") or "kept")), {}
end }
mg.route { path = "/slow/", upstream = mg.upstream "o" { servers = { "${origin}" } }, on = {
  response = function(req, res) res:set_header("X-Gen", gen) end,
} }
${extra}
mg.route { path = "/", respond = { status = 200, body = "${body}",
                                   headers = { ["content-type"] = "text/plain" } } }
]]

local function conf(vars)
  local v = { config = "", extra = "", origin = "127.0.0.1:1", shared = '{ s = "1m" }' }
  for k, x in pairs(vars) do v[k] = x end
  v.listen = v.listen or 'mg.listen { "127.0.0.1:${port}" }'
  -- ${listen} brings ${port} placeholders: expanded later (helpers.proxy, text_for)
  return helpers.expand(TEMPLATE, v)
end

-- Replace the config file atomically (an editor's rename).
local function install(proxy, text)
  helpers.write_file(proxy.conf .. ".new", text)
  assert(os.rename(proxy.conf .. ".new", proxy.conf))
end

-- `moongate -s reload -c proxy.lua`: returns output, exit code.
local function reload(proxy)
  return helpers.moongate({ "-s", "reload", "-c", proxy.conf })
end

-- The body of GET / on a fresh connection (to port, default the proxy's).
local function body_of(proxy, port)
  local res, err = proxy:request({ path = "/" }, port)
  if not res then return nil, err end
  assert.equal(200, res.status)
  return res.body
end

-- Wait until `n` fresh connections in a row (landing on either worker) get `want`.
local function wait_body(proxy, want, port, timeout)
  local streak = 0
  local last
  local ok = helpers.wait_until(function()
    last = body_of(proxy, port)
    if last == want then streak = streak + 1 else streak = 0 end
    return streak >= 10
  end, timeout or 5, 0.01)
  assert.is_true(ok == true, "still answering " .. tostring(last) .. " instead of " .. want)
end

local count = helpers.count

describe("reload", function()
  local proxy, origin

  after_each(function()
    local p = proxy
    proxy = nil
    helpers.teardown(p)
  end)

  local function start(vars, opts)
    opts = opts or {}
    origin = helpers.origin()
    vars.origin = origin.addr
    local text = conf(vars)
    proxy = helpers.proxy(text, opts)
    assert(helpers.wait_until(function() return proxy:file("moongate.pid") end, 3), "no pid file")
    return proxy
  end

  -- the config text for this proxy's ports
  local function text_for(vars)
    vars.origin = origin.addr
    local v = {}
    for k, x in pairs(vars) do v[k] = x end
    local ports = {}
    for k, x in pairs(proxy.ports) do ports[k] = x end
    return helpers.expand(conf(v), ports)
  end

  it("20 reloads between two configs while 4 keep-alive connections send requests: every answer 200 A or B", function()
    start({ body = "A" })
    local dir = proxy.dir
    helpers.write_file(dir .. "/A.lua", text_for({ body = "A" }))
    helpers.write_file(dir .. "/B.lua", text_for({ body = "B" }))
    local script = [[
i=1
while [ $i -le 20 ]; do
  if [ $((i % 2)) -eq 1 ]; then src=B.lua; else src=A.lua; fi
  cp "$src" proxy.lua.tmp && mv proxy.lua.tmp proxy.lua
  "$MG_BIN" -s reload -c proxy.lua || echo "reload $i failed: rc=$?"
  echo "reload $i sent"
  sleep 0.1
  i=$((i + 1))
done
echo finished
]]
    local env = { MG_BIN = helpers.bin }
    for k, v in pairs(helpers.env) do env[k] = v end
    local out_path = dir .. "/reloader.out"
    local clients = {}
    for i = 1, 4 do
      clients[i] = proxy:connect()
      assert.equal("A", assert(clients[i]:request({ path = "/" })).body)
    end
    assert.equal("A", assert(clients[3]:request({ path = "/slow/echo" })).h["x-gen"])
    local pid = helpers.spawn({ "/bin/sh", "-c", script }, { cwd = dir, env = env, stdout = out_path,
                                                            stderr = out_path, label = "reloader" })
    -- clients 1, 2 ask the respond route; 3, 4 go through the upstream, whose
    -- response hook tags the answer with the config's X-Gen
    local paths = { "/", "/", "/slow/echo", "/slow/echo" }
    local seen, failures, total = { A = 0, B = 0 }, {}, 0
    local seen_up = { A = 0, B = 0 }
    local deadline = helpers.now() + 90
    local done, rounds_after = false, 0
    while helpers.now() < deadline and #failures == 0 do
      for i = 1, 4 do
        local ok, err = clients[i]:send("GET " .. paths[i] .. " HTTP/1.1\r\nHost: x\r\n\r\n")
        if not ok then failures[#failures + 1] = "client " .. i .. " send: " .. tostring(err) end
      end
      for i = 1, 4 do
        local res, err = clients[i]:response({ timeout = 5 })
        total = total + 1
        if not res then
          failures[#failures + 1] = "client " .. i .. " request " .. total .. ": " .. tostring(err)
        elseif i <= 2 then
          if res.status ~= 200 or (res.body ~= "A" and res.body ~= "B") then
            failures[#failures + 1] = "client " .. i .. ": " .. tostring(res.status) .. " " .. tostring(res.body)
          else
            seen[res.body] = seen[res.body] + 1
          end
        else
          local gen = res.h["x-gen"]
          if res.status ~= 200 or (gen ~= "A" and gen ~= "B") then
            failures[#failures + 1] = "client " .. i .. ": " .. tostring(res.status) .. " X-Gen "
              .. tostring(gen) .. " " .. tostring(res.body):sub(1, 200)
          else
            seen_up[gen] = seen_up[gen] + 1
          end
        end
      end
      if not done then
        done = helpers.reap(pid, 0) ~= nil
      else
        rounds_after = rounds_after + 1
        if rounds_after >= 20 then break end
      end
    end
    if not done then helpers.terminate(pid, 1) end
    for i = 1, 4 do clients[i]:close() end
    local out = helpers.read_file(out_path) or ""
    assert.is_nil(helpers.sanitizer_report(out), out)
    assert.is_true(done, "the reload script did not finish in time:\n" .. out)
    assert.same({}, failures)
    assert.equal(20, count(out, " sent\n"), out)
    assert.equal(0, count(out, "failed"), out)
    assert.is_true(out:find("finished", 1, true) ~= nil, out)
    assert.is_true(seen.A > 0 and seen.B > 0, string.format("A %d, B %d", seen.A, seen.B))
    assert.is_true(seen_up.A > 0 and seen_up.B > 0, string.format("upstream: A %d, B %d", seen_up.A, seen_up.B))
    assert.is_true(total >= 80, "only " .. total .. " requests during 20 reloads")
    -- the last reload (20, even) installed A
    wait_body(proxy, "A")
    local log = proxy:stderr()
    assert.equal(0, count(log, "reload failed") + count(log, ") failed"), log:sub(-3000))
    assert.equal(20, count(log, "reloaded (SIGHUP)"), log:sub(-3000))
  end)

  it("runs init_worker again in every worker after a reload; shared dict values are kept", function()
    start({ body = "one" })
    assert.equal("2", assert(proxy:request({ path = "/shared?k=init_worker" })).body)
    assert.equal("before", assert(proxy:request({ path = "/shared?set=before" })).body)
    install(proxy, text_for({ body = "two" }))
    local out, rc = reload(proxy)
    assert.equal(0, rc, out)
    wait_body(proxy, "two")
    assert.is_truthy(helpers.wait_until(function()
      return assert(proxy:request({ path = "/shared?k=init_worker" })).body == "4"
    end, 3), "init_worker count: " .. assert(proxy:request({ path = "/shared?k=init_worker" })).body)
    assert.equal("before", assert(proxy:request({ path = "/shared" })).body)
  end)

  it("a dictionary declared by a reload is usable after it", function()
    start({ body = "one" })
    install(proxy, text_for({ body = "two", shared = '{ s = "1m", added = "64k" }' }))
    local out, rc = reload(proxy)
    assert.equal(0, rc, out)
    wait_body(proxy, "two")
    install(proxy, text_for({ body = "three", shared = '{ s = "1m", added = "64k" }',
      extra = [==[mg.route { path = "/added", respond = function(req)
  local d = mg.shared("added")
  return 200, tostring(d:incr("n", 1, 0)), {}
end }]==] }))
    out, rc = reload(proxy)
    assert.equal(0, rc, out)
    wait_body(proxy, "three")
    for i = 1, 5 do
      local res = assert(proxy:request({ path = "/added" }))
      assert.equal(200, res.status)
      assert.equal(tostring(i), res.body)
    end
  end)

  it("a request in flight finishes on the old config, the next one uses the new", function()
    start({ body = "old" })
    local c = proxy:connect()
    assert(c:send("GET /slow/slow-head/1 HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert(helpers.wait_until(function() return origin:stats().requests == 1 end, 3))
    install(proxy, text_for({ body = "new" }))
    local out, rc = reload(proxy)
    assert.equal(0, rc, out)
    wait_body(proxy, "new")
    local res = assert(c:response({ timeout = 5 }))
    assert.equal(200, res.status)
    assert.equal("old", res.h["x-gen"])
    assert.equal("/slow/slow-head/1", helpers.echo(res).path)
    local again = assert(c:request({ path = "/slow/echo" }))
    assert.equal("new", again.h["x-gen"])
    c:close()
  end)

  describe("a config that does not load", function()
    -- Each breaks line 5 of the config.
    local BROKEN = {
      { "a syntax error", [[mg.route { path = "/x" respond = { status = 200 } }]] },
      { "a runtime error", [[error("broken on purpose")]] },
      { "an unknown key", [[mg.config { wrokers = 1 }]] },
    }
    local function broken(line)
      return table.concat({
        'local mg = require "moongate"',
        'mg.config { workers = 2, access_log = false, pid = "moongate.pid" }',
        'mg.listen { "127.0.0.1:' .. proxy.port .. '" }',
        'mg.route { respond = { status = 200, body = "broken" } }',
        line,
      }, "\n") .. "\n"
    end

    for _, case in ipairs(BROKEN) do
      it("-s reload with " .. case[1] .. " exits non-zero naming file:line; the old config keeps serving", function()
        start({ body = "old" })
        local c = proxy:connect()
        assert.equal("old", assert(c:request({ path = "/" })).body)
        install(proxy, broken(case[2]))
        local out, rc = reload(proxy)
        assert.are_not.equal(0, rc)
        assert.is_truthy(out:find(proxy.conf .. ":5", 1, true), "no " .. proxy.conf .. ":5 in: " .. out)
        helpers.sleep(0.3)
        for _ = 1, 10 do assert.equal("old", body_of(proxy)) end
        assert.equal("old", assert(c:request({ path = "/" })).body)
        c:close()
        assert.equal(0, count(proxy:stderr(), "reloaded"))
      end)
    end

    it("SIGHUP with a syntax error logs the error with file:line; the old config keeps serving", function()
      start({ body = "old" })
      install(proxy, broken(BROKEN[1][2]))
      proxy:signal(signal.SIGHUP)
      local log = helpers.wait_until(function()
        local e = proxy:stderr()
        return e:find("failed, the old config keeps serving", 1, true) and e
      end, 3)
      assert.is_truthy(log, proxy:stderr())
      assert.is_truthy(log:find(proxy.conf .. ":5", 1, true), log)
      for _ = 1, 10 do assert.equal("old", body_of(proxy)) end
      -- and a good config afterwards is taken
      install(proxy, text_for({ body = "fixed" }))
      proxy:signal(signal.SIGHUP)
      wait_body(proxy, "fixed")
    end)

    it("a config that fails only in the workers' states leaves the old one serving", function()
      start({ body = "old" })
      install(proxy, text_for({ body = "new",
        extra = 'if mg.worker_id() >= 0 then error("only in workers") end' }))
      local out, rc = reload(proxy) -- the check runs outside a worker: passes
      assert.equal(0, rc, out)
      local log = helpers.wait_until(function()
        local e = proxy:stderr()
        return e:find("only in workers", 1, true) and e
      end, 3)
      assert.is_truthy(log, proxy:stderr())
      assert.is_truthy(log:find("old config keeps serving", 1, true), log)
      helpers.sleep(0.3)
      for _ = 1, 10 do assert.equal("old", body_of(proxy)) end
      assert.equal(0, count(proxy:stderr(), "reloaded"))
    end)
  end)

  it("a listener added by reload answers; removed by the next, it refuses; connections survive both", function()
    start({ body = "one" }, { ports = { "port2" } })
    local c = proxy:connect()
    assert.equal("one", assert(c:request({ path = "/" })).body)
    assert.is_false(helpers.port_open(proxy.ports.port2))

    install(proxy, text_for({ body = "two",
      listen = 'mg.listen { "127.0.0.1:${port}" }\nmg.listen { "127.0.0.1:${port2}" }' }))
    local out, rc = reload(proxy)
    assert.equal(0, rc, out)
    wait_body(proxy, "two")
    wait_body(proxy, "two", proxy.ports.port2)
    assert.equal("two", assert(c:request({ path = "/" })).body)
    local d = proxy:connect(proxy.ports.port2) -- accepted by the listener about to go
    assert.equal("two", assert(d:request({ path = "/" })).body)

    install(proxy, text_for({ body = "three" }))
    out, rc = reload(proxy)
    assert.equal(0, rc, out)
    wait_body(proxy, "three")
    local refused = helpers.wait_until(function() return not helpers.port_open(proxy.ports.port2) end, 3)
    assert.is_true(refused, "the removed listener still accepts")
    for _ = 1, 10 do
      assert.is_false(helpers.port_open(proxy.ports.port2), "a worker still accepts on the removed listener")
    end
    assert.equal("three", assert(c:request({ path = "/" })).body)
    c:close()
    -- "other connections are untouched": also one that came in through the removed listener
    assert.equal("three", assert(d:request({ path = "/" })).body)
    d:close()
  end)

  it("SIGHUP reloads like -s reload, also for existing keep-alive connections", function()
    start({ body = "before-hup" })
    local c = proxy:connect()
    assert.equal("before-hup", assert(c:request({ path = "/" })).body)
    install(proxy, text_for({ body = "after-hup" }))
    proxy:signal(signal.SIGHUP)
    wait_body(proxy, "after-hup")
    assert.equal("after-hup", assert(c:request({ path = "/" })).body)
    c:close()
    assert.is_truthy(proxy:stderr():find("reloaded (SIGHUP)", 1, true))
  end)

  describe("watch = true", function()
    it("editing proxy.lua changes the answers within 2 s", function()
      start({ body = "first", config = ", watch = true" })
      helpers.sleep(0.6) -- let a poll see the first version
      install(proxy, text_for({ body = "second-version", config = ", watch = true" }))
      local t0 = helpers.now()
      wait_body(proxy, "second-version", nil, 3)
      assert.is_true(helpers.now() - t0 < 2.5, string.format("took %.2f s", helpers.now() - t0))
    end)

    it("editing a module proxy.lua required from its folder reloads too", function()
      origin = helpers.origin()
      local dir = helpers.tmpdir()
      helpers.write_file(dir .. "/answer.lua", 'return "from module v1"\n')
      proxy = helpers.proxy([[
local mg = require "moongate"
mg.config { workers = 2, access_log = false, watch = true }
mg.listen { "127.0.0.1:${port}" }
local answer = require "answer"
mg.route { path = "/", respond = function(req) return 200, answer, {} end }
]], { dir = dir })
      wait_body(proxy, "from module v1")
      helpers.sleep(0.6)
      helpers.write_file(dir .. "/answer.lua.new", 'return "from module v2!"\n')
      assert(os.rename(dir .. "/answer.lua.new", dir .. "/answer.lua"))
      wait_body(proxy, "from module v2!", nil, 3)
    end)

    it("a broken edit keeps the old config; fixing it is picked up", function()
      start({ body = "good", config = ", watch = true" })
      helpers.sleep(0.6)
      install(proxy, "local mg = require 'moongate'\nmg.route {\n")
      assert.is_truthy(helpers.wait_until(function()
        return proxy:stderr():find("old config keeps serving", 1, true)
      end, 3), proxy:stderr())
      for _ = 1, 10 do assert.equal("good", body_of(proxy)) end
      install(proxy, text_for({ body = "good again", config = ", watch = true" }))
      wait_body(proxy, "good again", nil, 3)
    end)
  end)
end)
