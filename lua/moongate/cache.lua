-- mg.cache: the response cache from Lua (docs/cache.md "Purge and statistics").
-- The store is the process's, shared by every worker: these work from any hook
-- and any timer, on any worker, and see what every worker stored. Errors come
-- back as nil, message (no cache configured, an argument of the wrong type, a
-- URL that does not parse).
local ffi = require "ffi"
local abi = require "moongate.ffi"

local C = abi.C
local type, tonumber = type, tonumber

local stats_out = ffi.new("mg_cache_api_stats_t")
local stats_fields = { "objects", "bytes", "cap", "lookups", "hits", "misses", "stores", "replaced",
                       "rejected", "evictions", "too_big", "disk_objects", "disk_bytes", "disk_cap",
                       "disk_hits", "disk_writes", "disk_write_errors", "disk_evictions", "disk_corrupt" }

local _M = {}

local function result(fname, rc)
  if rc == abi.ENOTFOUND then return nil, fname .. ": no cache is configured" end
  if rc == abi.EINVAL then return nil, fname .. ": not a URL moongate can make a key of" end
  if rc < 0 then return nil, fname .. ": out of memory" end
  return rc
end

--- mg.cache.purge(key_or_url): removes every variant stored under a key. A string
--- starting with http:// or https:// is a URL: the key a GET of it is stored
--- under ("GET http://host/path?q", host lower-cased, default port dropped, path
--- normalized as routing does) is removed, and so is the string itself taken as a
--- raw key. Anything else is a raw key, as a cache_key hook returns it. Returns
--- how many stored responses were removed (0: none), or nil, err.
function _M.purge(key)
  if type(key) ~= "string" then return nil, "mg.cache.purge: the key must be a string" end
  return result("mg.cache.purge", C.mg_api_cache_purge(key, #key))
end

--- mg.cache.purge_prefix(prefix): removes every stored response whose key starts
--- with prefix. A URL prefix ("http://Host/static/") is made a key prefix
--- ("GET http://host/static/"; its path taken as it is); "" removes everything.
--- Walks the whole store: for purges, not for every request. Returns the count,
--- or nil, err.
function _M.purge_prefix(prefix)
  if type(prefix) ~= "string" then return nil, "mg.cache.purge_prefix: the prefix must be a string" end
  return result("mg.cache.purge_prefix", C.mg_api_cache_purge_prefix(prefix, #prefix))
end

--- mg.cache.stats(): { objects, bytes, cap (now), lookups, hits, misses, stores,
--- replaced, rejected, evictions, too_big (since the process started) }, or nil,
--- err. misses = lookups - hits (a hit is any stored response found, fresh or
--- not, in memory or on disk: disk_hits counts the latter); stores counts responses stored (a replacement too), replaced those a
--- newer one took the place of, rejected those admission refused, too_big those
--- over max_object; with a disk store (else 0): disk_objects, disk_bytes, disk_cap,
--- disk_hits, disk_writes, disk_write_errors, disk_evictions, disk_corrupt.
function _M.stats()
  local rc = C.mg_api_cache_stats(stats_out)
  if rc ~= 0 then return result("mg.cache.stats", rc) end
  local t = {}
  for i = 1, #stats_fields do
    local k = stats_fields[i]
    t[k] = tonumber(stats_out[k])
  end
  return t
end

return _M
