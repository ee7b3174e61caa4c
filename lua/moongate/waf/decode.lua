-- moongate.waf.decode: the transforms the WAF applies to a value before it looks
-- at it, undoing what attackers use to hide a payload (issue 14, "waf";
-- docs/notes-i14-waf.md, "Decode"). Each function takes a string and returns
-- the decoded string (the same string when there was nothing to decode), so a
-- caller can compare to see whether a step changed anything. Every step first
-- looks for its trigger byte with a plain find: most values are plain words and
-- numbers and cost one scan.
local string_char, string_byte, string_find, string_gsub, tonumber =
      string.char, string.byte, string.find, string.gsub, tonumber
local table_concat = table.concat
local band, bor, rshift, lshift = bit.band, bit.bor, bit.rshift, bit.lshift

local _M = {}

--- The UTF-8 bytes of code point `cp` (0 .. 0x10FFFF); "" for anything else.
local function utf8(cp)
  if not cp or cp < 0 or cp > 0x10FFFF then return "" end
  if cp < 0x80 then return string_char(cp) end
  if cp < 0x800 then
    return string_char(bor(0xC0, rshift(cp, 6)), bor(0x80, band(cp, 0x3F)))
  end
  if cp < 0x10000 then
    return string_char(bor(0xE0, rshift(cp, 12)), bor(0x80, band(rshift(cp, 6), 0x3F)),
      bor(0x80, band(cp, 0x3F)))
  end
  return string_char(bor(0xF0, rshift(cp, 18)), bor(0x80, band(rshift(cp, 12), 0x3F)),
    bor(0x80, band(rshift(cp, 6), 0x3F)), bor(0x80, band(cp, 0x3F)))
end
_M.utf8 = utf8

local function hex_byte(h) return string_char(tonumber(h, 16)) end
local function hex_cp(h) return utf8(tonumber(h, 16)) end

--- URL decoding: %HH, IIS's %uHHHH (as UTF-8), and '+' as a space when `plus`
--- (form bodies and query strings). A '%' that starts no escape stays.
function _M.url(s, plus)
  if plus and string_find(s, "+", 1, true) then s = string_gsub(s, "%+", " ") end
  if not string_find(s, "%", 1, true) then return s end
  s = string_gsub(s, "%%[uU](%x%x%x%x)", hex_cp)
  return (string_gsub(s, "%%(%x%x)", hex_byte))
end

--- URL decoding repeated while it changes something, at most `max` times
--- (default 3): double and triple encodings (%252e -> %2e -> .).
function _M.url_repeat(s, plus, max)
  for _ = 1, max or 3 do
    local d = _M.url(s, plus)
    if d == s then return s end
    s, plus = d, false
  end
  return s
end

-- An overlong two-byte form (C0/C1 lead) or three-byte form (E0 80..9F) of an
-- ASCII character: the old "%c0%af" is "/" to decoders that accept them.
local function overlong2(a, b)
  return string_char(bor(lshift(band(string_byte(a), 0x1F), 6), band(string_byte(b), 0x3F)))
end
local function overlong3(b, c)
  return string_char(bor(lshift(band(string_byte(b), 0x3F), 6), band(string_byte(c), 0x3F)))
end

--- Overlong UTF-8 encodings of ASCII folded to ASCII.
function _M.overlong(s)
  if not (string_find(s, "\192", 1, true) or string_find(s, "\193", 1, true)
          or string_find(s, "\224", 1, true)) then
    return s
  end
  s = string_gsub(s, "([\192\193])([\128-\191])", overlong2)
  return (string_gsub(s, "\224([\128-\129])([\128-\191])", overlong3))
end

local entities = {
  lt = "<", gt = ">", amp = "&", quot = '"', apos = "'", nbsp = " ",
  colon = ":", semi = ";", sol = "/", bsol = "\\", lpar = "(", rpar = ")",
  tab = "\t", newline = "\n", equals = "=", excl = "!", num = "#", lsqb = "[",
  rsqb = "]", lcub = "{", rcub = "}", grave = "`", comma = ",", period = ".",
  percnt = "%", plus = "+", dollar = "$", vert = "|", ast = "*", quest = "?",
}

local function dec_cp(d) return utf8(tonumber(d, 10)) end
local function named(name, semi)
  local c = entities[name:lower()]
  if c then return c end
  return "&" .. name .. semi
end

--- HTML character references: &#NN; &#xHH; (the ';' optional, as browsers
--- allow) and the named ones that matter for markup and URLs (&lt; &colon; ...).
function _M.html(s)
  if not string_find(s, "&", 1, true) then return s end
  s = string_gsub(s, "&#[xX]0*(%x%x?%x?%x?%x?%x?);?", hex_cp)
  s = string_gsub(s, "&#0*(%d%d?%d?%d?%d?%d?%d?);?", dec_cp)
  return (string_gsub(s, "&(%a+)(;?)", named))
end

--- JavaScript and CSS escapes: \xHH, \uHHHH, \u{H...}, and CSS's \HH..HHHHHH
--- followed by an optional space are left alone (rare in attacks on apps).
function _M.js(s)
  if not string_find(s, "\\", 1, true) then return s end
  s = string_gsub(s, "\\[uU]{(%x%x?%x?%x?%x?%x?)}", hex_cp)
  s = string_gsub(s, "\\[uU](%x%x%x%x)", hex_cp)
  return (string_gsub(s, "\\[xX](%x%x)", hex_byte))
end

local function versioned(body) return " " .. body .. " " end

--- SQL comments out of the way: MySQL's versioned /*!50000 x*/ keeps x, any
--- other /* ... */ (closed or running to the end) becomes one space.
function _M.sql_comments(s)
  if not string_find(s, "/*", 1, true) then return s end
  s = string_gsub(s, "/%*!%d*(.-)%*/", versioned)
  s = string_gsub(s, "/%*.-%*/", " ")
  return (string_gsub(s, "/%*.*$", " "))
end

--- Base64 in a value: the decoded bytes when the whole value (16 bytes or
--- more, standard or URL alphabet, optional padding) decodes to mostly
--- printable text; nil otherwise (a random token does not decode to text).
local b64 = {}
do
  local a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  for i = 1, 64 do b64[string_byte(a, i)] = i - 1 end
  b64[string_byte("-")] = 62
  b64[string_byte("_")] = 63
end

function _M.base64(s)
  local n = #s
  if n < 16 or string_find(s, "[^%w%+/%-_=]") then return nil end
  s = string_gsub(s, "=+$", "")
  n = #s
  if n % 4 == 1 or string_find(s, "=", 1, true) then return nil end
  local out, acc, bits, printable = {}, 0, 0, 0
  for i = 1, n do
    local v = b64[string_byte(s, i)]
    if not v then return nil end
    acc = bor(lshift(band(acc, 0xFFFF), 6), v)
    bits = bits + 6
    if bits >= 8 then
      bits = bits - 8
      local c = band(rshift(acc, bits), 0xFF)
      out[#out + 1] = string_char(c)
      if (c >= 32 and c < 127) or c == 9 or c == 10 or c == 13 then printable = printable + 1 end
    end
  end
  if printable < #out * 0.9 then return nil end
  return table_concat(out)
end

--- The text the detectors look at: URL decoding (repeated; '+' too when
--- `plus`), overlong UTF-8, fullwidth folding, HTML references, JS escapes,
--- NUL bytes removed.
--- SQL comments are the SQL detector's own step (they mean nothing elsewhere).
--- Fullwidth forms IIS and some frameworks fold to ASCII: U+FF0E "．",
--- U+FF0F "／", U+FF3C "＼"; and U+560A / U+560D, whose low bytes are LF and
--- CR to servers that cut code points to a byte (a known header injection).
local fold = { ["\239\188\142"] = ".", ["\239\188\143"] = "/", ["\239\188\188"] = "\\",
  ["\229\152\138"] = "\n", ["\229\152\141"] = "\r" }
function _M.fullwidth(s)
  if not (string_find(s, "\239", 1, true) or string_find(s, "\229", 1, true)) then return s end
  return (string_gsub(s, "[\239\229][\152\188][\138\141\142\143\188]", fold))
end

function _M.normalize(s, plus)
  s = _M.url_repeat(s, plus)
  s = _M.overlong(s)
  s = _M.fullwidth(s)
  s = _M.html(s)
  s = _M.js(s)
  if string_find(s, "\0", 1, true) then s = string_gsub(s, "%z", "") end
  return s
end

return _M
