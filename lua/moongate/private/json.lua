-- A strict JSON decoder (RFC 8259) for tokens and key sets: objects, arrays,
-- strings (every escape, \u surrogate pairs to UTF-8), numbers, true, false,
-- null (json.null). Refuses what is not JSON: trailing bytes, duplicate object
-- keys (two parsers could read different values), nesting past 32, control
-- characters in strings. decode(s) -> value, or nil, "reason at byte N".
local byte, sub, find, char, tonumber = string.byte, string.sub, string.find, string.char, tonumber
local concat = table.concat
local floor = math.floor

local _M = {}
local null = setmetatable({}, { __tostring = function() return "null" end })
_M.null = null

local escapes = { [34] = '"', [92] = "\\", [47] = "/", [98] = "\b", [102] = "\f", [110] = "\n",
                  [114] = "\r", [116] = "\t" }

local function utf8(cp)
  if cp < 0x80 then return char(cp) end
  if cp < 0x800 then return char(0xC0 + floor(cp / 64), 0x80 + cp % 64) end
  if cp < 0x10000 then
    return char(0xE0 + floor(cp / 4096), 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  return char(0xF0 + floor(cp / 262144), 0x80 + floor(cp / 4096) % 64, 0x80 + floor(cp / 64) % 64,
              0x80 + cp % 64)
end

local function skip(s, i)
  local _, e = find(s, "^[ \t\r\n]*", i)
  return e + 1
end

local value

local function err(msg, i) error({ msg .. " at byte " .. i }, 0) end

local function str(s, i) -- s[i] == '"'
  local parts, n = {}, 0
  i = i + 1
  while true do
    local a, b = find(s, '^[^"\\%c]+', i)
    if a then
      n = n + 1; parts[n] = sub(s, a, b); i = b + 1
    end
    local c = byte(s, i)
    if c == 34 then return concat(parts), i + 1 end
    if c == nil then err("unterminated string", i) end
    if c ~= 92 then err("control character in a string", i) end
    local e = byte(s, i + 1)
    if escapes[e] then
      n = n + 1; parts[n] = escapes[e]; i = i + 2
    elseif e == 117 then
      local h = sub(s, i + 2, i + 5)
      if not find(h, "^%x%x%x%x$") then err("bad \\u escape", i) end
      local cp = tonumber(h, 16)
      i = i + 6
      if cp >= 0xD800 and cp <= 0xDBFF then
        local l = sub(s, i, i + 5)
        local lo = find(l, "^\\u%x%x%x%x$") and tonumber(sub(l, 3), 16)
        if not lo or lo < 0xDC00 or lo > 0xDFFF then err("lone surrogate", i) end
        cp = 0x10000 + (cp - 0xD800) * 1024 + (lo - 0xDC00)
        i = i + 6
      elseif cp >= 0xDC00 and cp <= 0xDFFF then
        err("lone surrogate", i)
      end
      n = n + 1; parts[n] = utf8(cp)
    else
      err("bad escape", i)
    end
  end
end

value = function(s, i, depth)
  if depth > 32 then err("nesting too deep", i) end
  i = skip(s, i)
  local c = byte(s, i)
  if c == 34 then return str(s, i) end
  if c == 123 then -- {
    local t = {}
    i = skip(s, i + 1)
    if byte(s, i) == 125 then return t, i + 1 end
    while true do
      if byte(s, i) ~= 34 then err("expected a key", i) end
      local k
      k, i = str(s, i)
      if t[k] ~= nil then err("duplicate key '" .. k .. "'", i) end
      i = skip(s, i)
      if byte(s, i) ~= 58 then err("expected ':'", i) end
      t[k], i = value(s, i + 1, depth + 1)
      i = skip(s, i)
      c = byte(s, i)
      if c == 125 then return t, i + 1 end
      if c ~= 44 then err("expected ',' or '}'", i) end
      i = skip(s, i + 1)
    end
  end
  if c == 91 then -- [
    local t, n = {}, 0
    i = skip(s, i + 1)
    if byte(s, i) == 93 then return t, i + 1 end
    while true do
      n = n + 1
      t[n], i = value(s, i, depth + 1)
      i = skip(s, i)
      c = byte(s, i)
      if c == 93 then return t, i + 1 end
      if c ~= 44 then err("expected ',' or ']'", i) end
      i = i + 1
    end
  end
  if find(s, "^true", i) then return true, i + 4 end
  if find(s, "^false", i) then return false, i + 5 end
  if find(s, "^null", i) then return null, i + 4 end
  local a, b = find(s, "^%-?%d+%.?%d*[eE]?[%+%-]?%d*", i)
  if a then
    local num = sub(s, a, b)
    if not find(num, "^%-?0$") and not find(num, "^%-?[1-9]%d*$") and
       not find(num, "^%-?0%.%d+$") and not find(num, "^%-?[1-9]%d*%.%d+$") and
       not find(num, "^%-?%d+%.?%d*[eE][%+%-]?%d+$") then
      err("bad number", i)
    end
    if find(num, "^%-?0%d") then err("bad number", i) end
    return tonumber(num), b + 1
  end
  err("unexpected " .. (c and ("'" .. char(c) .. "'") or "end"), i)
end

--- decode(s) -> value, or nil, err.
function _M.decode(s)
  if type(s) ~= "string" then return nil, "not a string" end
  local ok, v, i = pcall(value, s, 1, 0)
  if not ok then return nil, type(v) == "table" and v[1] or tostring(v) end
  i = skip(s, i)
  if i <= #s then return nil, "trailing bytes at byte " .. i end
  return v
end

return _M
