-- The WAF corpus (spec/waf/README.md): loads spec/waf/attacks/*.txt and
-- spec/waf/benign/*.txt and turns each entry into the bytes of one HTTP/1.1
-- request. Used by scripts/waf-corpus (and by specs that want the same requests).
local M = {}

local HOST = "shop.example"
-- What a browser sends besides the entry's own part (CRS counts a missing
-- Accept or User-Agent against a request at higher paranoia levels).
local BASE_HEADERS = {
  { "Host", HOST },
  { "User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0" },
  { "Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8" },
  { "Accept-Language", "en-GB,en;q=0.7" },
}

-- \xHH is the only escape in a payload (a CR LF is \x0d\x0a).
local function unescape(s)
  return (s:gsub("\\x(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end
M.unescape = unescape

-- What a browser leaves alone in a URL: RFC 3986's unreserved and sub-delims,
-- ':', '@', '/', '?', '%' when it starts an escape. Everything else (space,
-- quotes, angle brackets, controls, bytes >= 0x80, '#') becomes %HH.
local function url_escape(s)
  local out = s:gsub("()([^%w%-%._~!$&'()*+,;=:@/?])", function(pos, c)
    if c == "%" and s:sub(pos + 1, pos + 2):match("^%x%x$") then return "%" end
    return string.format("%%%02X", c:byte())
  end)
  return out
end
M.url_escape = url_escape

-- application/x-www-form-urlencoded value: everything but unreserved escaped.
local function form_escape(s)
  return (s:gsub("[^%w%-%._~]", function(c)
    if c == " " then return "+" end
    return string.format("%%%02X", c:byte())
  end))
end
M.form_escape = form_escape

local function request(method, target, headers, body)
  local lines = { method .. " " .. target .. " HTTP/1.1" }
  local replaced = {}
  for _, h in ipairs(headers) do replaced[h[1]:lower()] = true end
  for _, h in ipairs(BASE_HEADERS) do
    if not replaced[h[1]:lower()] then lines[#lines + 1] = h[1] .. ": " .. h[2] end
  end
  for _, h in ipairs(headers) do lines[#lines + 1] = h[1] .. ": " .. h[2] end
  if body then lines[#lines + 1] = "Content-Length: " .. #body end
  lines[#lines + 1] = "Connection: close"
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")
end

local BOUNDARY = "----mgwaf7c1e0d2b9a"

-- The request for one entry: where = query, query:NAME, args, path,
-- header:NAME, cookie, form, json, xml, multipart, raw.
function M.build(e)
  local w, p = e.where, e.payload
  local name = w:match("^query:(.+)$")
  if w == "query" or name then
    return request("GET", "/search?" .. (name or "q") .. "=" .. url_escape(p), {})
  elseif w == "args" then
    return request("GET", "/search?" .. url_escape(p), {})
  elseif w == "path" then
    return request("GET", "/" .. url_escape(p), {})
  elseif w:match("^header:") then
    return request("GET", "/account", { { w:sub(8), p } })
  elseif w == "cookie" then
    return request("GET", "/account", { { "Cookie", "sid=4f1c9a7e2b; pref=" .. p } })
  elseif w == "form" then
    return request("POST", "/comment", { { "Content-Type", "application/x-www-form-urlencoded" } },
      "name=sam&comment=" .. form_escape(p))
  elseif w == "json" then
    return request("POST", "/api/items", { { "Content-Type", "application/json" } }, p)
  elseif w == "xml" then
    return request("POST", "/api/import", { { "Content-Type", "application/xml" } }, p)
  elseif w == "multipart" then
    local body = "--" .. BOUNDARY .. "\r\n"
      .. 'Content-Disposition: form-data; name="title"\r\n\r\nnotes\r\n'
      .. "--" .. BOUNDARY .. "\r\n"
      .. 'Content-Disposition: form-data; name="text"\r\n\r\n' .. p .. "\r\n"
      .. "--" .. BOUNDARY .. "--\r\n"
    return request("POST", "/upload", { { "Content-Type", "multipart/form-data; boundary=" .. BOUNDARY } }, body)
  elseif w == "raw" then
    return p
  end
  error("unknown place " .. w)
end

local PLACES = { query = true, args = true, path = true, cookie = true, form = true,
  json = true, xml = true, multipart = true, raw = true }

-- Every entry of every *.txt under DIR/attacks and DIR/benign:
-- { kind = "attack"|"benign", class = file name, where, payload, file, line }.
function M.load(dir)
  local entries, errs = {}, {}
  for _, kind in ipairs({ "attacks", "benign" }) do
    local ls = io.popen("ls " .. dir .. "/" .. kind .. "/*.txt 2>/dev/null")
    for file in ls:lines() do
      local class = file:match("([^/]+)%.txt$")
      local n = 0
      for line in io.lines(file) do
        n = n + 1
        if line:match("%S") and not line:match("^#") then
          local where, payload = line:match("^(%S+) (.*)$")
          if not where or not (PLACES[where] or where:match("^query:.") or where:match("^header:.")) then
            errs[#errs + 1] = string.format("%s:%d: want 'PLACE PAYLOAD', PLACE one of query query:NAME args path header:NAME cookie form json xml multipart raw", file, n)
          else
            entries[#entries + 1] = { kind = kind == "attacks" and "attack" or "benign", class = class,
              where = where, payload = unescape(payload), file = file, line = n }
          end
        end
      end
    end
    ls:close()
  end
  return entries, errs
end

M.HOST = HOST
return M
