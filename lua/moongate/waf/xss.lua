-- moongate.waf.xss: a small HTML/JS tokenizer that says whether a decoded value
-- would run script if an application echoed it into a page (issue 14, "waf";
-- docs/notes-i14-waf.md, "XSS tokenizer"). It looks for what a browser needs to
-- run script, not for words: a tag that runs or loads script (script, iframe,
-- svg, ...), an event handler attribute (on...=) in a tag or after a quote that
-- would close an attribute, a javascript:/vbscript:/data:text/html URL where a
-- browser takes a URL, and a quote that leaves a JS string to call a sink
-- ('-alert(1)-'). Plain markup (<b>, <p>, <a href="https://...">), "<3" and
-- "2 < 5" are none of these.
local string_find, string_lower, string_sub, string_gsub, string_byte, string_match =
      string.find, string.lower, string.sub, string.gsub, string.byte, string.match

local _M = {}

-- tags that run script or load a document or code by themselves, or that
-- switch the parser into a mode where the next tag does (svg, math)
local bad_tags = {}
for t in ([[script iframe frame frameset object embed applet base meta style svg
  math isindex xss vmlframe bgsound layer ilayer import xml portal
  listing xmp noembed handler animate set]]):gmatch("%S+") do bad_tags[t] = true end

-- event handler names (without "on"): exact names, and prefixes of families
local events = {}
for e in ([[load error click dblclick focus blur change submit reset select input
  invalid toggle scroll resize abort show begin end repeat start finish message
  hashchange popstate pageshow pagehide unload beforeunload wheel copy cut paste
  search auxclick contextmenu readystatechange ended canplay canplaythrough
  progress loadstart loadeddata loadedmetadata play playing pause seeked seeking
  timeupdate volumechange waiting stalled suspend emptied ratechange durationchange
  afterprint beforeprint storage online offline cuechange close cancel
  securitypolicyviolation formdata slotchange visibilitychange activate
  beforeactivate beforecopy beforecut beforepaste filterchange help]]):gmatch("%S+") do
  events[e] = true
end
local event_prefixes = { "mouse", "key", "pointer", "touch", "drag", "drop", "animation",
  "transition", "focus", "load", "before", "after", "webkit", "moz", "gesture",
  "fullscreen", "bounce", "page", "popover" }

local function is_event(name)
  if events[name] then return true end
  for i = 1, #event_prefixes do
    local p = event_prefixes[i]
    if string_sub(name, 1, #p) == p then return true end
  end
  return false
end

-- JS names an injection calls once it is out of a string
local sinks = {}
for s in ([[alert prompt confirm eval fetch document window location settimeout
  setinterval atob function constructor top self parent frames open import
  print xmlhttprequest navigator require]]):gmatch("%S+") do sinks[s] = true end

-- the byte before a URL scheme: the start, or what ends an attribute name, a
-- CSS url( or a quote
local function scheme_at(l, pos)
  if pos == 1 then return true end
  local b = string_byte(l, pos - 1)
  -- = ( " ' ` > , ; : (spaces were squeezed out before)
  return b == 61 or b == 40 or b == 34 or b == 39 or b == 96 or b == 62 or b == 44 or b == 59
    or b == 58
end

--- Whether the decoded value `s` reads as XSS: returns a rule key
--- ("tag", "handler", "scheme", "break", "js") and a short reason, or nil.
-- the first of the bytes of `set` in s (plain finds: memchr speed; a Lua
-- character class is matched byte by byte in the interpreter)
local function first(s, a, b, c, init)
  init = init or 1
  local x = string_find(s, a, init, true)
  local y = string_find(s, b, init, true)
  if y and (not x or y < x) then x = y end
  if c then
    y = string_find(s, c, init, true)
    if y and (not x or y < x) then x = y end
  end
  return x
end

function _M.detect(s)
  local lt, eq = string_find(s, "<", 1, true), string_find(s, "=", 1, true)
  local q1 = first(s, "'", '"', "`")
  if not (lt or eq or q1 or string_find(s, ":", 1, true)) then return nil end
  local l = string_lower(s)

  -- tags and their attributes
  local pos, len, gt = 1, #l, 0
  while lt do
    local a, b, name = string_find(l, "<%s*/?([%a][%w:%-]*)", pos)
    if not a then break end
    if bad_tags[name] then return "tag", "<" .. name end
    -- the tag's attributes run to its '>' (or, unclosed, to the next '<' or
    -- the end: an unclosed tag still works); every byte is looked at once or
    -- twice whatever the number of tags (no quadratic cost on "<a <a <a ...")
    if gt and gt <= b then gt = string_find(l, ">", b + 1, true) end
    local stop = gt or len + 1
    local nxt = string_find(l, "<", b + 1, true)
    if nxt and nxt < stop then stop = nxt end
    local attrs = string_sub(l, b + 1, stop - 1)
    local p = 1
    while true do
      local x, y, ev = string_find(attrs, "[%s/\"'`]on([a-z]+)%s*=", p)
      if not x then break end
      if is_event(ev) then return "handler", "<" .. name .. " on" .. ev .. "=" end
      p = y + 1
    end
    if string_find(attrs, "style%s*=", 1) and (string_find(attrs, "expression%s*%(") or string_find(attrs, "behavior%s*:")) then
      return "handler", "<" .. name .. " style=expression"
    end
    pos = b + 1
  end

  -- an event handler after a quote that would end the attribute it lands in:
  -- "onmouseover="..., ' autofocus onfocus='...
  if eq and q1 then
    local p = 1
    while true do
      local x, y, ev = string_find(l, "[%s/\"'`]on([a-z]+)%s*=", p)
      if not x then break end
      if is_event(ev) and q1 <= x then
        return "break", "quote, then on" .. ev .. "="
      end
      p = y + 1
    end
  end

  -- script URLs: javascript:, vbscript:, data:text/html, with the tabs, newlines
  -- and spaces browsers ignore inside the scheme taken out
  if string_find(l, "script", 1, true) or string_find(l, "data", 1, true) then
    local q = l
    if string_find(q, "[%z\1-\32]") then q = string_gsub(q, "[%z\1-\32]+", "") end
    for _, scheme in ipairs({ "javascript:", "vbscript:", "livescript:", "data:text/html",
        "data:image/svg+xml", "data:application/x-javascript", "data:text/javascript" }) do
      local x = string_find(q, scheme, 1, true)
      while x do
        if scheme_at(q, x) then return "scheme", scheme end
        x = string_find(q, scheme, x + 1, true)
      end
    end
  end

  -- leaving a JS string to call something: '-alert(1)-'  ";alert(1);//
  if q1 and first(l, "(", "`") then
    local x, y, id = string_find(l, "^%s*[\"'`][%s%)%]}]*[-+*/|&;,^%%?:]+%s*([%a_$][%w_$%.]*)%s*[(`]")
    if x then return "js", "string break, then " .. id end
    -- every quote (found with plain finds, each kind's next one kept: a search
    -- for a kind that is not there again would make a string of quotes
    -- quadratic), then the shape anchored there
    local n1, n2, n3 = string_find(l, "'", 1, true), string_find(l, '"', 1, true), string_find(l, "`", 1, true)
    while true do
      local qp = n1
      if n2 and (not qp or n2 < qp) then qp = n2 end
      if n3 and (not qp or n3 < qp) then qp = n3 end
      if not qp then break end
      x, y, id = string_find(l, "^[\"'`][%s%)%]}]*[-+*/|&;,^]+%s*([%a_$][%w_$]*)", qp)
      if x and sinks[id] and string_find(string_sub(l, y + 1, y + 64), "^[%s%.%w_$%[%]\"']*[(`=]") then
        return "js", "string break, then " .. id
      end
      if n1 == qp then n1 = string_find(l, "'", qp + 1, true) end
      if n2 == qp then n2 = string_find(l, '"', qp + 1, true) end
      if n3 == qp then n3 = string_find(l, "`", qp + 1, true) end
    end
  end
  return nil
end

return _M
