-- What the authentication policies share (key_auth, basic_auth, mtls_consumer;
-- issue 14, i14-auth): SHA-256 and constant-time comparison through the FFI
-- (core/auth.c), the consumer a policy found (req.ctx.consumer and the access
-- log's `consumer` field), strict base64, and the common config checks.
local ffi = require "ffi"
local abi = require "moongate.ffi"
local check = require "moongate.private.check"

local C = abi.C
local fail = check.fail
local type, tonumber = type, tonumber
local ffi_str = ffi.string
local byte, char, find, gsub, sub = string.byte, string.char, string.find, string.gsub, string.sub
local concat = table.concat
local band, bor, lshift, rshift = bit.band, bit.bor, bit.lshift, bit.rshift

local _M = {}

local digest = ffi.new("unsigned char[32]")

--- The SHA-256 of s, as a 32-byte string.
function _M.sha256(s)
  C.mg_api_sha256(s, #s, digest)
  return ffi_str(digest, 32)
end

--- true when the strings a and b (of the same length) are equal, in a time that
--- does not depend on their bytes.
function _M.equal(a, b)
  return #a == #b and C.mg_api_ct_equal(a, b, #a) == 1
end

--- Records the consumer: req.ctx.consumer for later policies and hooks, and the
--- access log line's `consumer` field.
function _M.set_consumer(req, name, source)
  req.ctx.consumer = { name = name, source = source }
  C.mg_req_set_consumer(req._r, name, #name)
end

--- A consumer name from the config: a string of 1 to 256 bytes without control characters.
function _M.consumer_name(v, what, where)
  if type(v) ~= "string" or v == "" or #v > 256 or find(v, "%c") then
    fail("%s: %s: a consumer name must be a string of 1 to 256 printable bytes, got %s", what, where,
         type(v) == "string" and ("%q"):format(v) or type(v))
  end
  return v
end

--- A realm for WWW-Authenticate: printable, no quote or backslash.
function _M.realm(v, what)
  if v == nil then return "moongate" end
  check.type(v, "string", what, "realm")
  if v == "" or #v > 128 or find(v, '[%c"\\]') then
    fail("%s: 'realm' must be 1 to 128 printable characters without \" or \\", what)
  end
  return v
end

--- A boolean option with a default.
function _M.bool(v, default, what, key)
  if v == nil then return default end
  return check.type(v, "boolean", what, key)
end

--- A refusal status (400 .. 599, whole).
function _M.status(v, default, what)
  if v == nil then return default end
  local s = check.number(v, what, "status", 400, 599)
  if s % 1 ~= 0 then fail("%s: 'status' must be a whole number", what) end
  return s
end

-- base64 (RFC 4648, with padding), strict: nil for anything else
local val = {}
do
  local a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  for i = 1, 64 do val[byte(a, i)] = i - 1 end
end

function _M.unbase64(s)
  local n = #s
  if n == 0 or n % 4 ~= 0 then return nil end
  local out, k = {}, 0
  for i = 1, n, 4 do
    local a, b, c, d = byte(s, i, i + 3)
    local last = i + 3 == n
    local va, vb = val[a], val[b]
    if not va or not vb then return nil end
    local vc, vd = val[c], val[d]
    if last and d == 61 then -- '='
      if c == 61 then
        if band(vb, 15) ~= 0 then return nil end
        k = k + 1; out[k] = char(bor(lshift(va, 2), rshift(vb, 4)))
        break
      end
      if not vc or band(vc, 3) ~= 0 then return nil end
      k = k + 1
      out[k] = char(bor(lshift(va, 2), rshift(vb, 4)), band(bor(lshift(vb, 4), rshift(vc, 2)), 255))
      break
    end
    if not vc or not vd then return nil end
    k = k + 1
    out[k] = char(bor(lshift(va, 2), rshift(vb, 4)), band(bor(lshift(vb, 4), rshift(vc, 2)), 255),
                  band(bor(lshift(vc, 6), vd), 255))
  end
  return concat(out)
end

--- The query string without the arguments named `name` (compared URL-decoded).
local function unescape(s)
  s = gsub(s, "+", " ")
  return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

function _M.query_without(q, name)
  local kept, n, pos = {}, 0, 1
  while pos <= #q do
    local amp = find(q, "&", pos, true) or #q + 1
    local pair = sub(q, pos, amp - 1)
    local eq = find(pair, "=", 1, true)
    local k = eq and sub(pair, 1, eq - 1) or pair
    if unescape(k) ~= name and pair ~= "" then n = n + 1; kept[n] = pair end
    pos = amp + 1
  end
  return concat(kept, "&")
end

return _M
