-- For the offline WAF tools and unit specs, which run under plain LuaJIT
-- (not inside the moongate executable, which exports core/rx.h's mg_rx_*):
-- builds core/rx.c into a small shared object (build/waf-rx.so, rebuilt when
-- core/rx.c is newer) and puts it in place of moongate.ffi's C namespace, so
-- moongate.waf.detect compiles its PCRE2 rules through the same C code the
-- proxy runs. Returns the loaded library.
local ffi = require "ffi"
local root = (debug.getinfo(1, "S").source:match("^@(.*)/spec/waf/[^/]*$")) or "."
local so, src = root .. "/build/waf-rx.so", root .. "/core/rx.c"

local function mtime(p)
  local f = io.popen("stat -c %Y '" .. p .. "' 2>/dev/null")
  local t = tonumber(f:read("*l") or "")
  f:close()
  return t
end

local st, ss = mtime(so), mtime(src)
if not st or (ss and ss > st) then
  os.execute("mkdir -p '" .. root .. "/build'")
  local cmd = string.format("cc -std=c11 -O2 -fPIC -shared -Wall -Wextra -Werror -o '%s' '%s' -lpcre2-8", so, src)
  assert(os.execute(cmd) == 0 or os.execute(cmd) == true, "rxlib: could not build " .. so .. " (" .. cmd .. ")")
end
local mgffi = require "moongate.ffi"
local lib = ffi.load(so)
mgffi.C = lib
return lib
