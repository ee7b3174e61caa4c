-- A stand-in for mg.tcp() over luasocket, for unit specs of Lua modules written
-- against the cosocket contract (moongate.redis). Same method shapes: timeouts in
-- milliseconds, send of a string or an array table of strings, receive("*l") /
-- receive(n), setkeepalive into a per-factory pool keyed by host:port (or
-- opts.pool), getreusedtimes. It records every send so a spec can see how a
-- request was written.
local socket = require "socket"

local type, concat, setmetatable = type, table.concat, setmetatable

local _M = {}

--- cosock.factory() -> factory, state. factory() returns a new socket.
--- state.sends: list of { kind = "table" | "string", n = entries, bytes = len }
--- state.pool: key -> list of idle luasocket connections.
function _M.factory()
  local state = { sends = {}, pool = {}, created = 0 }
  local S = {}
  S.__index = S

  local function apply(self)
    if self.raw then self.raw:settimeout(self.read_ms / 1000) end
  end

  function S:settimeouts(c, s, r)
    self.connect_ms, self.send_ms, self.read_ms = c, s, r
    apply(self)
  end
  function S:settimeout(ms) self:settimeouts(ms, ms, ms) end

  function S:connect(host, port, opts)
    self.key = (opts and opts.pool) or (host .. ":" .. port)
    local idle = state.pool[self.key]
    if idle and #idle > 0 then
      local e = table.remove(idle)
      self.raw, self.reused = e.raw, e.reused + 1
      apply(self)
      return true
    end
    local raw = socket.tcp()
    raw:settimeout(self.connect_ms / 1000)
    local ok, err = raw:connect(host, port)
    if not ok then
      raw:close()
      return nil, err
    end
    raw:setoption("tcp-nodelay", true)
    self.raw, self.reused = raw, 0
    apply(self)
    return true
  end

  function S:getreusedtimes()
    if not self.raw then return nil, "closed" end
    return self.reused
  end

  function S:send(data)
    if not self.raw then return nil, "closed" end
    local rec = { kind = type(data) }
    if type(data) == "table" then
      rec.n = #data
      data = concat(data)
    end
    rec.bytes = #data
    state.sends[#state.sends + 1] = rec
    local n, err = self.raw:send(data)
    if not n then return nil, err end
    return n
  end

  function S:receive(pat)
    if not self.raw then return nil, "closed" end
    return self.raw:receive(pat)
  end

  function S:setkeepalive()
    if not self.raw then return nil, "closed" end
    local idle = state.pool[self.key] or {}
    state.pool[self.key] = idle
    idle[#idle + 1] = { raw = self.raw, reused = self.reused }
    self.raw = nil
    return true
  end

  function S:close()
    if not self.raw then return nil, "closed" end
    self.raw:close()
    self.raw = nil
    return true
  end

  local function factory()
    state.created = state.created + 1
    return setmetatable({ connect_ms = 60000, send_ms = 60000, read_ms = 60000 }, S)
  end
  return factory, state
end

return _M
