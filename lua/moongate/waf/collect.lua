-- moongate.waf.collect: the WAF's variables (issue 14, "waf"; docs/waf.md).
-- One call per request turns the method, the request-target, the headers and
-- the (bounded) body into a flat list of values, each with the name a rule or
-- an exclusion uses for it (`ARGS:q`, `JSON:$.a.b[0]`, `REQUEST_HEADERS:User-Agent`)
-- and the place it came from (`where`, which tells the detectors how to look).
--
--   local values, info = collect.request(method, target, headers, body, opts)
--
-- headers: array of { lowercase name, value } in arrival order.
-- body: nil or a string the caller already cut to its body limit
-- (opts.truncated = true when it did). opts.version is the HTTP version
-- ("1.1"), opts.max_values the value bound (default 1024).
--
-- Nothing here raises on hostile input: a body of a declared type that does not
-- parse sets info.body_error (and the body is handed on whole as "body_raw"),
-- more than max_values values sets info.too_many and stops collecting.
-- Pure Lua byte loops; no table per byte or token.
local string_byte, string_find, string_sub, string_char, string_lower, string_gsub, string_match =
      string.byte, string.find, string.sub, string.char, string.lower, string.gsub, string.match
local tonumber, type = tonumber, type
local band, bor, rshift = bit.band, bit.bor, bit.rshift
local ffi = require "ffi"
local ffi_string, ffi_cast = ffi.string, ffi.cast

local _M = {}

local MAX_VALUES = 1024
local MAX_DEPTH = 64
local MAX_PARTS = 128
local MAX_VAR = 200          -- a variable name longer than this is cut (hostile keys)

_M.MAX_VALUES, _M.MAX_DEPTH, _M.MAX_PARTS = MAX_VALUES, MAX_DEPTH, MAX_PARTS

-- Percent-decoding, once: %HH only (the detectors undo %uHHHH, double
-- encodings and the rest themselves). `plus`: '+' is a space (query, form).
-- A byte loop into a reused buffer (LuaJIT compiles it; gsub with a function
-- is not compiled).
local buf, buf_size = nil, 0
local HEX = ffi.new("int8_t[256]")
for c = 0, 255 do HEX[c] = -1 end
for c = 48, 57 do HEX[c] = c - 48 end
for c = 65, 70 do HEX[c] = c - 55 end
for c = 97, 102 do HEX[c] = c - 87 end

-- byte -> byte, with '+' -> ' ' (PLUS) or not (SAME)
local SAME, PLUS = ffi.new("uint8_t[256]"), ffi.new("uint8_t[256]")
for c = 0, 255 do SAME[c] = c; PLUS[c] = c end
PLUS[43] = 32

local function unescape(s, plus)
  if not string_find(s, "%", 1, true) and not (plus and string_find(s, "+", 1, true)) then return s end
  local n = #s
  if n > buf_size then
    buf_size = n < 256 and 256 or n
    buf = ffi.new("uint8_t[?]", buf_size)
  end
  local map = plus and PLUS or SAME
  local p = ffi_cast("const uint8_t *", s)
  local o, i = 0, 0
  while i < n do
    local b = p[i]
    if b ~= 37 then
      buf[o] = map[b]
      i = i + 1
    elseif i + 2 < n and HEX[p[i + 1]] >= 0 and HEX[p[i + 2]] >= 0 then
      buf[o] = HEX[p[i + 1]] * 16 + HEX[p[i + 2]]
      i = i + 3
    else
      buf[o] = 37
      i = i + 1
    end
    o = o + 1
  end
  return ffi_string(buf, o)
end
_M.unescape = unescape

-- "user-agent" -> "User-Agent", as ModSecurity users write them.
local function canonical(name)
  return (string_gsub(name, "%f[%w]%l", string.upper))
end
_M.canonical = canonical

-- The collector's state for one request: the values array, its count, the
-- bound, and info (for too_many).
local function add(st, v, var, where)
  local n = st.n
  if n >= st.max then st.info.too_many = true; return false end
  if #var > MAX_VAR then var = string_sub(var, 1, MAX_VAR) end
  n = n + 1
  st.n = n
  st.values[n] = { v = v, var = var, where = where }
  return true
end

-- name=value&name=value (query string or form body): every occurrence of a
-- repeated name, names with brackets kept as written. Empty values are counted
-- but not collected (nothing to look at).
local function split_args(st, s, prefix)
  local info = st.info
  local pos, len = 1, #s
  while pos <= len do
    local amp = string_find(s, "&", pos, true) or len + 1
    if amp > pos then
      info.arg_count = info.arg_count + 1
      if info.too_many then
        -- only count what is left (cheap), collect nothing more
      else
        local eq = string_find(string_sub(s, pos, amp - 1), "=", 1, true)
        if eq then eq = pos + eq - 1 end
        local name, value
        if eq then
          name, value = string_sub(s, pos, eq - 1), string_sub(s, eq + 1, amp - 1)
        else
          name, value = string_sub(s, pos, amp - 1), ""
        end
        name = unescape(name, true)
        if name ~= "" then add(st, name, "ARGS_NAMES:" .. name, "arg_name") end
        if value ~= "" then add(st, unescape(value, true), prefix .. name, "arg") end
      end
    end
    pos = amp + 1
  end
end

---------------------------------------------------------------- JSON
-- A walker over the bytes (no table built for the document): string and number
-- values as "body" under their path `JSON:$.a.b[0]`, object keys as "json_key"
-- under the path of their member. Errors return a message; the caller keeps
-- what was collected before the error.

local B_QUOTE, B_BSLASH, B_LBRACE, B_RBRACE, B_LBRACK, B_RBRACK, B_COMMA, B_COLON =
      34, 92, 123, 125, 91, 93, 44, 58

local ESC = { [34] = '"', [92] = "\\", [47] = "/", [98] = "\b", [102] = "\f",
              [110] = "\n", [114] = "\r", [116] = "\t" }

local function utf8(cp)
  if cp < 0x80 then return string_char(cp) end
  if cp < 0x800 then return string_char(bor(0xC0, rshift(cp, 6)), bor(0x80, band(cp, 0x3F))) end
  if cp < 0x10000 then
    return string_char(bor(0xE0, rshift(cp, 12)), bor(0x80, band(rshift(cp, 6), 0x3F)),
      bor(0x80, band(cp, 0x3F)))
  end
  return string_char(bor(0xF0, rshift(cp, 18)), bor(0x80, band(rshift(cp, 12), 0x3F)),
    bor(0x80, band(rshift(cp, 6), 0x3F)), bor(0x80, band(cp, 0x3F)))
end

local function skip_ws(s, i)
  local b = string_byte(s, i)
  while b == 32 or b == 9 or b == 10 or b == 13 do i = i + 1; b = string_byte(s, i) end
  return i, b
end

-- The string starting at s[i] == '"': returns the unescaped string and the
-- index after the closing quote, or nil, message.
local function json_string(s, i)
  local start = i + 1
  local q = string_find(s, '["\\]', start)
  if not q then return nil, "unterminated string" end
  if string_byte(s, q) == B_QUOTE then return string_sub(s, start, q - 1), q + 1 end
  local parts, np = {}, 0
  local from = start
  while true do
    q = string_find(s, '["\\]', from)
    if not q then return nil, "unterminated string" end
    if q > from then np = np + 1; parts[np] = string_sub(s, from, q - 1) end
    if string_byte(s, q) == B_QUOTE then
      return table.concat(parts, "", 1, np), q + 1
    end
    local e = string_byte(s, q + 1)
    if e == 117 then -- \uXXXX, a surrogate pair as one code point
      local h = string_sub(s, q + 2, q + 5)
      if not string_find(h, "^%x%x%x%x$") then return nil, "bad \\u escape at byte " .. q end
      local cp = tonumber(h, 16)
      from = q + 6
      if cp >= 0xD800 and cp <= 0xDBFF and string_sub(s, from, from + 1) == "\\u" then
        local l = string_sub(s, from + 2, from + 5)
        local lo = string_find(l, "^%x%x%x%x$") and tonumber(l, 16)
        if lo and lo >= 0xDC00 and lo <= 0xDFFF then
          cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
          from = from + 6
        end
      end
      np = np + 1; parts[np] = utf8(cp)
    else
      local c = e and ESC[e]
      if not c then return nil, "bad escape at byte " .. q end
      np = np + 1; parts[np] = c
      from = q + 2
    end
  end
end

local function key_path(path, key)
  if string_find(key, "^[%a_][%w_]*$") then return path .. "." .. key end
  return path .. '["' .. key .. '"]'
end

local json_value

local function json_object(st, s, i, path, depth)
  -- s[i] == '{'
  local b
  i, b = skip_ws(s, i + 1)
  if b == B_RBRACE then return i + 1 end
  while true do
    if b ~= B_QUOTE then return nil, "want a key at byte " .. i end
    local key, j = json_string(s, i)
    if not key then return nil, j end
    local p = key_path(path, key)
    add(st, key, "JSON:" .. p, "json_key")
    i, b = skip_ws(s, j)
    if b ~= B_COLON then return nil, "want ':' at byte " .. i end
    local err
    i, err = json_value(st, s, skip_ws(s, i + 1), p, depth)
    if not i then return nil, err end
    i, b = skip_ws(s, i)
    if b == B_RBRACE then return i + 1 end
    if b ~= B_COMMA then return nil, "want ',' or '}' at byte " .. i end
    i, b = skip_ws(s, i + 1)
    if st.info.too_many then return nil, "too many values" end
  end
end

local function json_array(st, s, i, path, depth)
  local b
  i, b = skip_ws(s, i + 1)
  if b == B_RBRACK then return i + 1 end
  local k = 0
  while true do
    local err
    i, err = json_value(st, s, i, path .. "[" .. k .. "]", depth)
    if not i then return nil, err end
    k = k + 1
    i, b = skip_ws(s, i)
    if b == B_RBRACK then return i + 1 end
    if b ~= B_COMMA then return nil, "want ',' or ']' at byte " .. i end
    i = skip_ws(s, i + 1)
    if st.info.too_many then return nil, "too many values" end
  end
end

function json_value(st, s, i, path, depth)
  local b = string_byte(s, i)
  if b == B_QUOTE then
    local v, j = json_string(s, i)
    if not v then return nil, j end
    if v ~= "" then add(st, v, "JSON:" .. path, "body") end
    return j
  elseif b == B_LBRACE or b == B_LBRACK then
    if depth >= MAX_DEPTH then return nil, "nesting deeper than " .. MAX_DEPTH end
    if b == B_LBRACE then return json_object(st, s, i, path, depth + 1) end
    return json_array(st, s, i, path, depth + 1)
  elseif b == nil then
    return nil, "unexpected end"
  end
  local w = string_find(s, "^[%-%+%.%deE]+", i)
  if w then
    local _, e = string_find(s, "^[%-%+%.%deE]+", i)
    local num = string_sub(s, i, e)
    if not tonumber(num) then return nil, "bad number at byte " .. i end
    add(st, num, "JSON:" .. path, "body")
    return e + 1
  end
  if string_sub(s, i, i + 3) == "true" or string_sub(s, i, i + 3) == "null" then return i + 4 end
  if string_sub(s, i, i + 4) == "false" then return i + 5 end
  return nil, "unexpected '" .. string_char(b) .. "' at byte " .. i
end

local function collect_json(st, body)
  -- a UTF-8 byte order mark: JSON parsers that read bytes skip it
  local i = skip_ws(body, string_sub(body, 1, 3) == "\239\187\191" and 4 or 1)
  local j, err = json_value(st, body, i, "$", 0)
  if j then
    j = skip_ws(body, j)
    if j <= #body then err = "trailing bytes at byte " .. j end
  end
  return err
end

---------------------------------------------------------------- XML
-- Not a validating parser: the whole document goes to the detectors as "xml"
-- (DOCTYPE, ENTITY, XInclude are found there); text nodes, CDATA sections and
-- attribute values are "body" under `XML:/a/b` and `XML:/a/b@attr`.

local function xml_attrs(st, s, i, j, path)
  -- the attributes inside s[i..j] (after the element name)
  while i <= j do
    local a, ae, name = string_find(s, "^%s*([^%s=/>]+)%s*=%s*", i)
    if not a or ae > j then return end
    local q = string_byte(s, ae + 1)
    if q ~= 34 and q ~= 39 then return end
    local close = string_find(s, string_char(q), ae + 2, true)
    if not close or close > j then return end
    local v = string_sub(s, ae + 2, close - 1)
    if v ~= "" then add(st, v, "XML:" .. path .. "@" .. name, "body") end
    i = close + 1
  end
end

local function collect_xml(st, s)
  add(st, s, "XML", "xml")
  local stack, depth = {}, 0
  local path = ""
  local i, len = 1, #s
  -- each open element's text: its text nodes and CDATA sections joined, around
  -- its children, comments and PIs (what a DOM's textContent or an XPath
  -- string() hands the application), given as one value when it ends
  local texts, nts = {}, {}
  local function push(v)
    if depth == 0 then return end
    local n = (nts[depth] or 0) + 1
    nts[depth] = n
    local t = texts[depth]
    if not t then t = {}; texts[depth] = t end
    t[n] = v
  end
  local function flush()
    local n = depth > 0 and nts[depth] or 0
    if n == 0 then return end
    nts[depth] = 0
    local v = n == 1 and texts[depth][1] or table.concat(texts[depth], "", 1, n)
    if string_find(v, "%S") then
      add(st, (string_gsub(v, "^%s+", "")), "XML:" .. path, "body")
    end
  end
  local function flush_all()
    while depth > 0 do
      flush()
      depth = depth - 1
      path = string_sub(path, 1, #path - #stack[depth + 1] - 1)
    end
  end
  while i <= len do
    local lt = string_find(s, "<", i, true)
    if (lt or len + 1) > i then push(string_sub(s, i, (lt or len + 1) - 1)) end
    if not lt then break end
    if st.info.too_many then return nil end
    local c = string_sub(s, lt + 1, lt + 1)
    if c == "?" then
      local e = string_find(s, "?>", lt + 2, true)
      if not e then flush_all() return "xml: unterminated <?" end
      i = e + 2
    elseif string_sub(s, lt + 1, lt + 3) == "!--" then
      local e = string_find(s, "-->", lt + 4, true)
      if not e then flush_all() return "xml: unterminated comment" end
      i = e + 3
    elseif string_sub(s, lt + 1, lt + 8) == "![CDATA[" then
      local e = string_find(s, "]]>", lt + 9, true)
      if not e then flush_all() return "xml: unterminated CDATA" end
      push(string_sub(s, lt + 9, e - 1))
      i = e + 3
    elseif c == "!" then
      -- <!DOCTYPE ... [ internal subset ]>: skip to the '>' after the subset
      local e = string_find(s, "[%[>]", lt + 2)
      if e and string_sub(s, e, e) == "[" then e = string_find(s, "]%s*>", e + 1) end
      if not e then flush_all() return "xml: unterminated <!" end
      i = string_find(s, ">", e, true) + 1
    elseif c == "/" then
      local e = string_find(s, ">", lt + 2, true)
      if not e then flush_all() return "xml: unterminated end tag" end
      local name = string.match(string_sub(s, lt + 2, e - 1), "^%s*([^%s]+)")
      if depth == 0 or stack[depth] ~= name then
        flush_all()
        return "xml: mismatched </" .. tostring(name) .. ">"
      end
      flush()
      stack[depth] = nil
      depth = depth - 1
      path = string_sub(path, 1, #path - #name - 1)
      i = e + 1
    else
      local e = string_find(s, ">", lt + 1, true)
      if not e then flush_all() return "xml: unterminated tag" end
      local _, ne, name = string_find(s, "^([^%s/>]+)", lt + 1)
      if not name then flush_all() return "xml: bad tag at byte " .. lt end
      local self_closing = string_byte(s, e - 1) == 47
      local elpath = path .. "/" .. name
      xml_attrs(st, s, ne + 1, self_closing and e - 2 or e - 1, elpath)
      if not self_closing then
        if depth >= MAX_DEPTH then flush_all() return "xml: nesting deeper than " .. MAX_DEPTH end
        depth = depth + 1
        stack[depth] = name
        path = elpath
      end
      i = e + 1
    end
  end
  if depth > 0 then
    local name = stack[depth]
    flush_all()
    return "xml: unclosed <" .. name .. ">"
  end
  return nil
end

-- s[i..j] without the spaces and tabs around it
local function trim(s, i, j)
  local b = string_byte(s, i)
  while i <= j and (b == 32 or b == 9) do i = i + 1; b = string_byte(s, i) end
  b = string_byte(s, j)
  while j >= i and (b == 32 or b == 9) do j = j - 1; b = string_byte(s, j) end
  return string_sub(s, i, j)
end

---------------------------------------------------------------- multipart
-- Parts split on delimiter lines (`--boundary` at the start of a line, then
-- optional blanks and a line end, or `--` for the last), as the origin's parser
-- splits them: a `--boundary` inside a line, or followed by other bytes, is
-- content. Each part's headers (folded lines joined, names in any case); its
-- name as "arg_name", its file names (`filename`, `filename*` of RFC 5987 and
-- RFC 2231 continuations, any case) as "filename"; its content, undone from
-- `Content-Transfer-Encoding: base64` or `quoted-printable`, as "body" under
-- `ARGS:name` (a field) or `FILES_CONTENT:name` (a file whose type is text-like
-- or whose first KiB holds no NUL byte: a script sent as image/png is text).
-- Bytes after the closing delimiter that hold another delimiter are an error
-- (the body is then looked at whole). Content bytes looked at count against
-- opts.body_limit (st.limit): binary files are free, so an upload is not "over".

-- a header value's parameters: { { key_lowercase, value }, ... } in order;
-- quoted strings with backslash escapes; `;` inside quotes is not a separator
local function params(v)
  local out, no = {}, 0
  local i, n = (string_find(v, ";", 1, true) or #v) + 1, #v
  while i <= n do
    local _, e, key = string_find(v, "^[ \t]*([^=; \t]+)[ \t]*", i)
    local val
    if e then
      i = e + 1
      if string_byte(v, i) == 61 then -- '='
        local _, e2 = string_find(v, "^=[ \t]*", i)
        i = e2 + 1
        if string_byte(v, i) == 34 then -- a quoted string
          local parts, np, j = {}, 0, i + 1
          while true do
            local q = string_find(v, '["\\]', j)
            if not q then np = np + 1; parts[np] = string_sub(v, j); i = n + 1; break end
            if q > j then np = np + 1; parts[np] = string_sub(v, j, q - 1) end
            if string_byte(v, q) == 34 then i = q + 1; break end
            np = np + 1; parts[np] = string_sub(v, q + 1, q + 1)
            j = q + 2
          end
          val = table.concat(parts, "", 1, np)
        else
          local _, e3, tok = string_find(v, "^([^;]*)", i)
          val = (string_gsub(tok, "[ \t]+$", ""))
          i = e3 + 1
        end
      end
      no = no + 1
      out[no] = { string_lower(key), val or "" }
    end
    local semi = string_find(v, ";", i, true)
    if not semi then break end
    i = semi + 1
  end
  return out
end
_M.params = params

local function first_param(list, key)
  for k = 1, #list do if list[k][1] == key then return list[k][2] end end
  return nil
end

-- filename*=UTF-8''a%20b.php (RFC 5987): the percent-decoded part after the
-- second quote
local function ext_value(v)
  local rest = string.match(v, "^[^']*'[^']*'(.*)$")
  return unescape(rest or v)
end

-- every file name a part gives: filename, filename*, filename*0 ... (joined)
local function filenames(list)
  local out, segs, nseg = {}, {}, 0
  for k = 1, #list do
    local key, val = list[k][1], list[k][2]
    if key == "filename" then out[#out + 1] = val
    elseif key == "filename*" then out[#out + 1] = ext_value(val)
    else
      local idx, star = string.match(key, "^filename%*(%d+)(%*?)$")
      if idx then
        idx = tonumber(idx)
        if idx and idx < 64 then
          segs[idx] = star == "*" and (idx == 0 and ext_value(val) or unescape(val)) or val
          if idx + 1 > nseg then nseg = idx + 1 end
        end
      end
    end
  end
  if nseg > 0 then
    local t = {}
    for k = 0, nseg - 1 do t[#t + 1] = segs[k] or "" end
    out[#out + 1] = table.concat(t)
  end
  return out
end

local function text_like(ptype)
  if not ptype then return true end
  ptype = string_lower(ptype)
  return string_find(ptype, "^%s*text/") or string_find(ptype, "json") or string_find(ptype, "xml")
end

local B64 = ffi.new("int8_t[256]")
do
  local a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  for c = 0, 255 do B64[c] = -1 end
  for k = 1, 64 do B64[string_byte(a, k)] = k - 1 end
  B64[45], B64[95] = 62, 63 -- the URL-safe alphabet too
end

-- base64 with any whitespace, padding optional; bytes outside the alphabet end it
local function unbase64(s)
  local n = #s
  if n + 3 > buf_size then buf_size = n + 3; buf = ffi.new("uint8_t[?]", buf_size) end
  local p = ffi_cast("const uint8_t *", s)
  local o, acc, bits = 0, 0, 0
  for i = 0, n - 1 do
    local b = p[i]
    local d = B64[b]
    if d >= 0 then
      acc = bor(band(acc * 64, 0xFFFFFF), d)
      bits = bits + 6
      if bits >= 8 then
        bits = bits - 8
        buf[o] = band(rshift(acc, bits), 0xFF)
        o = o + 1
      end
    elseif not (b == 32 or b == 9 or b == 10 or b == 13) then
      break -- '=' padding or the end
    end
  end
  return ffi_string(buf, o)
end
_M.unbase64 = unbase64

-- quoted-printable: =HH, soft line breaks (= at a line end) removed
local function unqp(s)
  s = string_gsub(s, "=[ \t]*\r?\n", "")
  if not string_find(s, "=", 1, true) then return s end
  local n = #s
  if n > buf_size then buf_size = n; buf = ffi.new("uint8_t[?]", buf_size) end
  local p = ffi_cast("const uint8_t *", s)
  local o, i = 0, 0
  while i < n do
    local b = p[i]
    if b == 61 and i + 2 < n and HEX[p[i + 1]] >= 0 and HEX[p[i + 2]] >= 0 then
      buf[o] = HEX[p[i + 1]] * 16 + HEX[p[i + 2]]
      i = i + 3
    else
      buf[o] = b
      i = i + 1
    end
    o = o + 1
  end
  return ffi_string(buf, o)
end
_M.unqp = unqp

-- the part's headers: disposition, content type, transfer encoding (the first
-- of each), folded lines joined
local function part_headers(head)
  head = string_gsub(head, "\r?\n[ \t]+", " ")
  local disp, ptype, cte, ndisp = nil, nil, nil, 0
  local pos, len = 1, #head
  while pos <= len do
    local nl = string_find(head, "\n", pos, true) or len + 1
    local colon = string_find(head, ":", pos, true)
    if colon and colon < nl then
      local name = string_lower(trim(head, pos, colon - 1))
      local value = trim(head, colon + 1, nl - 1)
      if string_byte(value, -1) == 13 then value = string_sub(value, 1, -2) end
      if name == "content-disposition" then
        ndisp = ndisp + 1
        disp = disp and (disp .. ";" .. value) or value
      elseif name == "content-type" then ptype = ptype or value
      elseif name == "content-transfer-encoding" then cte = cte or string_lower(value)
      end
    end
    pos = nl + 1
  end
  return disp, ptype, cte
end

-- the next delimiter line at or after `from`: its start, the index after its
-- line end, and whether it is the close delimiter (`--boundary--`)
local function find_delim(body, delim, from)
  local dl = #delim
  local a
  if from == 1 and string_sub(body, 1, dl) == delim then a = 1 end
  local ldelim = "\n" .. delim -- only line starts are candidates
  while true do
    if not a then
      local nl = string_find(body, ldelim, from > 1 and from - 1 or 1, true)
      if not nl then return nil end
      a = nl + 1
    end
    local e = a + dl
    if string_byte(body, e) == 45 and string_byte(body, e + 1) == 45 then return a, e + 2, true end
    local _, le = string_find(body, "^[ \t]*\r?\n", e)
    if le then return a, le + 1, false end
    from, a = a + 1, nil
  end
end

local function collect_multipart(st, body, ctype, truncated)
  local boundary = first_param(params(ctype), "boundary")
  if not boundary or boundary == "" then return "multipart: no boundary" end
  local delim = "--" .. boundary
  local a, pos, close = find_delim(body, delim, 1)
  if not a then return "multipart: no boundary in the body" end
  local parts = 0
  local limit = st.limit
  while true do
    if close then
      if find_delim(body, delim, pos) then return "multipart: a part after the closing boundary" end
      if parts == 0 and string_find(string_sub(body, 1, a - 1), "%S") then
        return "multipart: no part before the closing boundary"
      end
      return nil
    end
    local nxt, after, nclose = find_delim(body, delim, pos)
    if not nxt and not truncated then return "multipart: no closing boundary" end
    parts = parts + 1
    if parts > MAX_PARTS then return "multipart: more than " .. MAX_PARTS .. " parts" end
    -- the part: headers, a blank line, content (the line end before the next
    -- delimiter belongs to the delimiter)
    local stop = nxt and nxt - 1 or #body
    if nxt and string_byte(body, stop) == 10 then
      stop = stop - 1
      if string_byte(body, stop) == 13 then stop = stop - 1 end
    end
    local hs, he = string_find(body, "\r?\n\r?\n", pos)
    local _, blank = string_find(body, "^\r?\n", pos)
    local head, content
    if blank then -- no headers
      head, content = "", string_sub(body, blank + 1, stop)
    elseif hs and hs <= stop + 1 then
      head, content = string_sub(body, pos, hs - 1), string_sub(body, he + 1, stop)
    else
      if nxt then return "multipart: a part without a header end" end
      return nil
    end
    local disp, ptype, cte = part_headers(head)
    local plist = disp and params(disp) or {}
    -- the field's name: `name` (or `name*`); a second, different one is
    -- another name the origin may use (the last wins in PHP): the content is
    -- collected under each, so an exclusion of one does not hide it
    local names, nn = {}, 0
    for k = 1, #plist do
      local key, val = plist[k][1], plist[k][2]
      if key == "name*" then key, val = "name", ext_value(val) end
      if key == "name" then
        local dup = false
        for j = 1, nn do if names[j] == val then dup = true end end
        if not dup then nn = nn + 1; names[nn] = val end
      end
    end
    local name = names[1] or ""
    local files = filenames(plist)
    for k = 1, nn do
      if names[k] ~= "" then add(st, names[k], "ARGS_NAMES:" .. names[k], "arg_name") end
    end
    for k = 1, #files do
      if files[k] ~= "" then add(st, files[k], "FILES:" .. name, "filename") end
    end
    local is_file = #files > 0
    local decoder = cte and (string_find(cte, "^%s*base64") and unbase64
                             or string_find(cte, "^%s*quoted%-printable") and unqp)
    -- a file declared binary is looked at when its first KiB has no NUL byte
    -- (decoded from its first bytes only, so a big binary upload costs little)
    local look = content ~= "" and (not is_file or text_like(ptype))
    if content ~= "" and not look then
      local head1k = string_sub(content, 1, 1500)
      if decoder then head1k = decoder(head1k) end
      look = not string_find(string_sub(head1k, 1, 1024), "%z")
    end
    if look and decoder then content = decoder(content) end
    if look and content ~= "" then
      if limit then
        st.inspected = st.inspected + #content
        if st.inspected > limit then st.info.over_limit = true; return nil end
      end
      for k = 1, nn > 0 and nn or 1 do
        add(st, content, (is_file and "FILES_CONTENT:" or "ARGS:") .. (names[k] or ""), "body")
      end
    end
    if not nxt then return nil end -- truncated: what there was
    if st.info.too_many then return nil end
    a, pos, close = nxt, after, nclose
  end
end

---------------------------------------------------------------- XML encodings
-- XML in another encoding than an ASCII-compatible one: the origin's parser
-- reads the encoding from the first bytes or the declaration (XML 1.0 appendix
-- F) and parses UTF-16, UTF-32, EBCDIC (Java's Xerces), UTF-7 (libxml2 through
-- iconv) as well. The document is turned into UTF-8 (for the bytes the rules
-- look for: ASCII exactly, others as '?') before it is looked at.
local EBCDIC = ffi.new("uint8_t[256]")
do
  for c = 0, 255 do EBCDIC[c] = 63 end -- '?'
  local function run(from, chars)
    for k = 1, #chars do EBCDIC[from + k - 1] = string_byte(chars, k) end
  end
  run(0x81, "abcdefghi"); run(0x91, "jklmnopqr"); run(0xA2, "stuvwxyz")
  run(0xC1, "ABCDEFGHI"); run(0xD1, "JKLMNOPQR"); run(0xE2, "STUVWXYZ")
  run(0xF0, "0123456789")
  run(0x4A, "[.<(+|"); run(0x5A, "!$*);^"); run(0x60, "-/"); run(0x6A, "|,%_>?")
  run(0x79, "`:#@'=\"")
  EBCDIC[0x40], EBCDIC[0x50], EBCDIC[0xA1], EBCDIC[0xC0], EBCDIC[0xD0], EBCDIC[0xE0] =
    32, 38, 126, 123, 125, 92
  EBCDIC[0xBA], EBCDIC[0xBB], EBCDIC[0xAD], EBCDIC[0xBD], EBCDIC[0xB0] = 91, 93, 91, 93, 94
  EBCDIC[0x05], EBCDIC[0x25], EBCDIC[0x0D], EBCDIC[0x15] = 9, 10, 13, 10
end

local function from_ebcdic(s)
  local n = #s
  if n > buf_size then buf_size = n; buf = ffi.new("uint8_t[?]", buf_size) end
  local p = ffi_cast("const uint8_t *", s)
  for i = 0, n - 1 do buf[i] = EBCDIC[p[i]] end
  return ffi_string(buf, n)
end

-- UTF-16 (width 2) or UTF-32 (width 4), big or little endian: code points
-- under 0x80 as they are, others as '?' (surrogates included)
local function from_wide(s, width, big)
  local n = #s - #s % width
  local cap = n / width
  if cap > buf_size then buf_size = cap; buf = ffi.new("uint8_t[?]", buf_size) end
  local p = ffi_cast("const uint8_t *", s)
  local o = 0
  for i = 0, n - width, width do
    local cp
    if width == 2 then
      cp = big and p[i] * 256 + p[i + 1] or p[i + 1] * 256 + p[i]
    else
      cp = big and ((p[i] * 256 + p[i + 1]) * 256 + p[i + 2]) * 256 + p[i + 3]
               or ((p[i + 3] * 256 + p[i + 2]) * 256 + p[i + 1]) * 256 + p[i]
    end
    buf[o] = cp < 0x80 and cp or 63
    o = o + 1
  end
  return ffi_string(buf, o)
end

-- UTF-7: +base64(UTF-16BE)- runs
local function from_utf7(s)
  return (string_gsub(s, "%+([%w+/]*)%-?", function(b)
    if b == "" then return "+" end
    return from_wide(unbase64(b), 2, true)
  end))
end

-- the XML document as ASCII-compatible bytes, and the encoding it was in (nil:
-- it already was)
local function xml_text(s)
  local b1, b2, b3, b4 = string_byte(s, 1, 4)
  if b1 == 0xFE and b2 == 0xFF then return from_wide(string_sub(s, 3), 2, true), "UTF-16BE" end
  if b1 == 0xFF and b2 == 0xFE and not (b3 == 0 and b4 == 0) then return from_wide(string_sub(s, 3), 2, false), "UTF-16LE" end
  if b1 == 0 and b2 == 0 and b3 == 0xFE and b4 == 0xFF then return from_wide(string_sub(s, 5), 4, true), "UTF-32BE" end
  if b1 == 0xFF and b2 == 0xFE and b3 == 0 and b4 == 0 then return from_wide(string_sub(s, 5), 4, false), "UTF-32LE" end
  if b1 == 0 and b2 == 0 and b3 == 0 and b4 == 0x3C then return from_wide(s, 4, true), "UTF-32BE" end
  if b1 == 0x3C and b2 == 0 and b3 == 0 and b4 == 0 then return from_wide(s, 4, false), "UTF-32LE" end
  if b1 == 0 and b2 == 0x3C then return from_wide(s, 2, true), "UTF-16BE" end
  if b1 == 0x3C and b2 == 0 then return from_wide(s, 2, false), "UTF-16LE" end
  if b1 == 0x4C and b2 == 0x6F and b3 == 0xA7 and b4 == 0x94 then return from_ebcdic(s), "EBCDIC" end
  local enc = string_match(string_sub(s, 1, 200), "^[%s\239\187\191]*<%?xml[^>]-encoding%s*=%s*[\"']([%w%-_.:]+)")
  if enc and string_find(string_lower(enc), "^utf%-?7") then return from_utf7(s), "UTF-7" end
  return s, nil
end
_M.xml_text = xml_text

---------------------------------------------------------------- the request

--- What the WAF does with a body of this Content-Type: "form", "json", "xml",
--- "multipart", "raw" (looked at whole, first body_limit bytes) or nil (binary:
--- not read). `ct` is the header value or nil.
function _M.kind(ct)
  if not ct then return "raw" end
  local t = string_lower(string.match(ct, "^%s*([^;%s]*)") or "")
  if t == "application/x-www-form-urlencoded" then return "form" end
  if string_find(t, "^multipart/") then return "multipart" end -- form-data, mixed, related...
  if t == "application/json" or t == "text/json" or string_find(t, "%+json$") then return "json" end
  if t == "application/xml" or t == "text/xml" or string_find(t, "%+xml$") then return "xml" end
  -- declared binary, but an origin that ignores the type (Go's json.Decoder on
  -- the body, a servlet reading the stream) parses JSON or XML all the same
  if t == "application/octet-stream" then return "sniff" end
  if t == "" or string_find(t, "^text/") or string_find(t, "^application/") and
     not (t == "application/octet-stream" or string_find(t, "^application/zip")
          or string_find(t, "^application/pdf") or string_find(t, "^application/gzip")) then
    return "raw"
  end
  return nil
end

-- Headers collected at every paranoia level (docs/waf.md): the ones attackers
-- reach for; every other header only when its value has "${" or "() {".
local HEADERS = {
  ["user-agent"] = true, referer = true, ["x-forwarded-for"] = true, ["x-real-ip"] = true,
  ["x-client-ip"] = true, ["x-forwarded-host"] = true, ["x-original-url"] = true,
  ["x-rewrite-url"] = true, origin = true, ["x-http-method-override"] = true,
}
_M.HEADERS = HEADERS

local function wanted_header(name, value)
  if HEADERS[name] or string_sub(name, 1, 6) == "x-api-" then return true end
  return string_find(value, "${", 1, true) or string_find(value, "() {", 1, true)
end

-- name=value; name=value. A piece without '=' is a cookie with an empty name
-- and that value (browsers send `document.cookie = "x"` so; many frameworks
-- read it), collected as REQUEST_COOKIES: (empty name).
local function collect_cookies(st, value)
  local pos, len = 1, #value
  while pos <= len and not st.info.too_many do
    local semi = string_find(value, ";", pos, true) or len + 1
    local piece = string_sub(value, pos, semi - 1)
    local eq = string_find(piece, "=", 1, true)
    if eq then
      local name = trim(piece, 1, eq - 1)
      local v = trim(piece, eq + 1, #piece)
      if name ~= "" then add(st, name, "REQUEST_COOKIES_NAMES:" .. name, "cookie_name") end
      if v ~= "" then add(st, unescape(v), "REQUEST_COOKIES:" .. name, "cookie") end
    else
      local v = trim(piece, 1, #piece)
      if v ~= "" then add(st, unescape(v), "REQUEST_COOKIES:", "cookie") end
    end
    pos = semi + 1
  end
end

function _M.request(method, target, headers, body, opts)
  opts = opts or {}
  headers = headers or {}
  target = target or ""
  local info = { method = method, target = target, version = opts.version,
    headers = headers, truncated = opts.truncated and true or false, arg_count = 0 }
  local values = {}
  local st = { values = values, n = 0, max = opts.max_values or MAX_VALUES, info = info,
               limit = opts.body_limit, inspected = 0 }

  -- path and query; an absolute-form target's path starts after scheme://host
  local path_raw, query = target, nil
  local q = string_find(target, "?", 1, true)
  if q then path_raw, query = string_sub(target, 1, q - 1), string_sub(target, q + 1) end
  local authority = string_byte(path_raw, 1) ~= 47 and string.match(path_raw, "^%a[%w+.-]*://([^/]*)")
  if authority then
    path_raw = string_sub(path_raw, #string.match(path_raw, "^%a[%w+.-]*://") + #authority + 1)
    if path_raw == "" then path_raw = "/" end
  end
  local path = unescape(path_raw)
  info.path, info.path_raw, info.query = path, path_raw, query
  add(st, path, "REQUEST_PATH", "path")
  if path ~= path_raw then add(st, path_raw, "REQUEST_PATH", "path_raw") end
  if query and query ~= "" then split_args(st, query, "ARGS:") end

  for k = 1, #headers do
    local h = headers[k]
    local name, value = h[1], h[2] or ""
    if name == "host" then info.host = info.host or value
    elseif name == "content-type" then info.content_type = info.content_type or value
    elseif name == "cookie" then collect_cookies(st, value)
    elseif wanted_header(name, value) and value ~= "" then
      add(st, value, "REQUEST_HEADERS:" .. canonical(name), "header")
    end
  end

  if body and body ~= "" then
    local kind = _M.kind(info.content_type)
    if kind == nil and opts.sniff then kind = "sniff" end -- the caller read a binary body
    local sniffed = false
    if kind == "sniff" then
      local i = string_sub(body, 1, 3) == "\239\187\191" and 4 or 1
      local c = string_match(body, "^[ \t\r\n]*([%[{<])", i)
      kind = (c == "{" or c == "[") and "json" or c == "<" and "xml" or nil
      sniffed = true
    end
    -- opts.body_limit: the bytes looked at. A multipart body is walked whole
    -- (its binary files are not looked at, only its text counts); any other is
    -- cut there. Either way info.over_limit says that some was not looked at.
    local limit = opts.body_limit
    if limit and kind ~= "multipart" and #body > limit then
      body = string_sub(body, 1, limit)
      info.truncated, info.over_limit = true, true
    end
    local err
    if kind == "form" then split_args(st, body, "ARGS:")
    elseif kind == "json" then
      err = collect_json(st, body)
      if err then
        -- a cut body ends early: that is not the client's error
        local at = tonumber(string.match(err, "at byte (%d+)$"))
        if info.truncated and (err == "unexpected end" or string_find(err, "^unterminated")
                               or (at and at > #body)) then
          err = nil
        elseif err == "too many values" then err = nil
        else err = "json: " .. err end
      end
    elseif kind == "xml" then
      local text, enc = xml_text(body)
      info.xml_encoding = enc
      err = collect_xml(st, text)
      if err and info.truncated and (string_find(err, "unterminated") or string_find(err, "unclosed")) then
        err = nil
      end
    elseif kind == "multipart" then
      err = collect_multipart(st, body, info.content_type, info.truncated)
    elseif kind == "raw" then
      add(st, body, "REQUEST_BODY", "body_raw")
    end
    if err and sniffed then
      err = nil -- a binary body that began like JSON or XML: what parsed is kept
    end
    if err then
      info.body_error = err
      -- what did not parse is still looked at, whole (the first body_limit bytes)
      if kind ~= "xml" then
        if limit and #body > limit then
          body = string_sub(body, 1, limit)
          info.over_limit = true
        end
        add(st, body, "REQUEST_BODY", "body_raw")
      end
    end
  end
  info.count = st.n
  return values, info
end

return _M
