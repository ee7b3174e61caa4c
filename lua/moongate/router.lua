-- Route ordering and matching. The order computed by `sort` is the contract the C
-- core follows too (core/proxy.c walks the sorted list and takes the first match),
-- so the two must stay in sync.
local lower, byte, sub = string.lower, string.byte, string.sub
local sort = table.sort
local ipairs = ipairs

local _M = {}

local function host_rank(host)
  if not host then return 0, 0 end
  if byte(host, 1) == 42 then return #host, 1 end -- "*.x": below an exact host of the same length
  return #host, 2
end

--- Sorts routes in place, most specific first: listener-bound, longest host (exact
--- before wildcard), longest path, with methods, then declaration order (`seq`).
function _M.sort(routes)
  for i, r in ipairs(routes) do r.seq = r.seq or i end
  sort(routes, function(a, b)
    local al, bl = a.listener and 1 or 0, b.listener and 1 or 0
    if al ~= bl then return al > bl end
    local ah, ak = host_rank(a.host)
    local bh, bk = host_rank(b.host)
    if ah ~= bh then return ah > bh end
    if ak ~= bk then return ak > bk end
    if #a.path ~= #b.path then return #a.path > #b.path end
    local am, bm = a.methods and 1 or 0, b.methods and 1 or 0
    if am ~= bm then return am > bm end
    return a.seq < b.seq
  end)
  return routes
end

--- True when `pattern` ("a.b" or "*.b") matches `host` (already lower-case, no port).
function _M.host_matches(pattern, host)
  if byte(pattern, 1) == 42 then
    local suffix = sub(pattern, 2) -- ".b"
    return #host > #suffix and sub(host, -#suffix) == suffix
  end
  return pattern == host
end

--- Strips the port and lower-cases a Host header value.
function _M.normalize_host(host)
  if not host then return "" end
  if byte(host, 1) == 91 then -- "[v6]:port"
    local close = host:find("]", 1, true)
    return lower(close and sub(host, 1, close) or host)
  end
  local colon = host:find(":", 1, true)
  return lower(colon and sub(host, 1, colon - 1) or host)
end

--- Returns the first matching route of a sorted list, or nil.
function _M.match(routes, listener, method, host, path)
  host = _M.normalize_host(host)
  for _, r in ipairs(routes) do
    if (not r.listener or r.listener == listener)
       and (not r.host or _M.host_matches(r.host, host))
       and sub(path, 1, #r.path) == r.path then
      local ok = not r.methods
      if not ok then
        for _, m in ipairs(r.methods) do
          if m == method then ok = true break end
        end
      end
      if ok then return r end
    end
  end
  return nil
end

return _M
