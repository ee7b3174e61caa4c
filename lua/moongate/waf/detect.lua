-- moongate.waf.detect: the WAF's detection engine (issue 14, "waf";
-- docs/notes-i14-waf.md steps 2, 3 and 8; docs/waf.md lists the rules).
--
--   local engine, err = detect.new({ paranoia = 1 })  -- at config load
--   engine:value(v, var, where, hits)   -- per collected value (moongate.waf.collect)
--   engine:request(info, hits)          -- per request: method, version, scanners, ...
--   detect.rules                        -- id -> { id, class, severity, pl, msg }
--
-- A hit appended to `hits`: { id, severity, pl, msg, var, match } (match: at
-- most 64 bytes of the decoded value around what matched). Only rules with
-- pl <= the engine's paranoia fire.
--
-- Cost: a value of plain words and numbers stops at one string.find. Anything
-- else is decoded once (moongate.waf.decode), then looked at by the SQL and
-- XSS tokenizers and by one PCRE2-JIT pattern per rule class (an alternation
-- of the class's rules, one capture group per rule, so one scan tells which
-- rule matched), each class only when the value has a byte its rules need.
-- SSRF, RFI, NoSQL operator names and the protocol checks are Lua code.
local ffi = require "ffi"
local mgffi = require "moongate.ffi"
local decode = require "moongate.waf.decode"
local sqli = require "moongate.waf.sqli"
local xss = require "moongate.waf.xss"

local string_find, string_sub, string_lower, string_gsub, string_match, string_byte =
      string.find, string.sub, string.lower, string.gsub, string.match, string.byte
local tonumber, type, ipairs, setmetatable = tonumber, type, ipairs, setmetatable
local floor = math.floor

local _M = {}

---------------------------------------------------------------- the rules

-- severities: 5 critical, 4 error, 3 warning, 2 notice
local rules = {}
_M.rules = rules
local classes = {}   -- class -> list of { id, pattern } for the PCRE2 classes
_M.patterns = classes
local class_order = {}

local function rule(id, class, severity, pl, msg, pattern)
  rules[id] = { id = id, class = class, severity = severity, pl = pl, msg = msg }
  if pattern then
    if not classes[class] then classes[class] = {}; class_order[#class_order + 1] = class end
    local list = classes[class]
    list[#list + 1] = { id = id, pattern = pattern }
  end
end

-- 913 scanners
rule(913100, "scanner", 5, 1, "Scanner or attack tool User-Agent")
rule(913110, "scanner", 5, 1, "Header sent only by a scanner")
rule(913120, "scanner", 5, 2, "Probe for a file scanners look for")

-- 920/921 protocol
rule(920100, "protocol", 5, 1, "Method not allowed")
rule(920110, "protocol", 5, 1, "HTTP version not allowed")
rule(920120, "protocol", 5, 1, "Absolute-form request-target to another host")
rule(920130, "protocol", 5, 1, "Range header with too many parts")
rule(920140, "protocol", 3, 1, "Host header is a numeric IP address")
rule(920150, "protocol", 5, 1, "Missing Host header (HTTP/1.1)")
rule(920160, "protocol", 5, 1, "Content-Type charset not allowed (UTF-7 and others)")
rule(920170, "protocol", 5, 1, "Request body Content-Type not allowed")
rule(920180, "protocol", 3, 1, "Request body does not parse as its declared type")
rule(920190, "protocol", 3, 1, "Too many arguments or values")
rule(920200, "protocol", 5, 1, "NUL or control character in a header")
rule(920210, "protocol", 5, 1, "Invalid Content-Length")
rule(920220, "protocol", 5, 1, "Both Content-Length and Transfer-Encoding, or several Content-Length")
rule(920230, "protocol", 5, 1, "Transfer-Encoding other than chunked")
rule(920240, "protocol", 5, 1, "NUL byte in an argument or the path")
rule(920250, "protocol", 2, 2, "Missing or empty User-Agent")
rule(920260, "protocol", 5, 1, "GET or HEAD request with a body")
rule(921100, "protocol", 3, 1, "HTTP parameter pollution: one argument repeated many times")

-- 930 traversal / LFI
rule(930100, "lfi", 5, 1, "Path traversal (../)",
  [=[(?:^|[\\/]|\xe2\x88\x96)\.{2,};?(?:[\\/]|\xe2\x88\x96)|[\\/]\.{2,}$]=])
rule(930110, "lfi", 5, 1, "PHP and other stream wrappers",
  [=[\b(?:php|phar|zip|expect|glob|zlib|compress\.zlib|compress\.bzip2|rar|ogg|ssh2(?:\.\w+)?|jar|netdoc)://|\bfile:/|\bdata://]=])
rule(930120, "lfi", 5, 1, "OS file access",
  -- each name its own alternative, so each starts with a literal (see compile_class)
  (function()
    local names = { [=[etc[\\/](?:passwd|shadow|group|hosts|issue|hostname|crontab|sudoers|gshadow|master\.passwd|resolv\.conf|motd|fstab|mtab)\b]=],
      [=[proc[\\/](?:self|\d+)[\\/]]=], [=[windows[\\/](?:win\.ini|system\.ini|system32[\\/])]=], [=[boot\.ini\b]=],
      [=[winnt[\\/]]=], [=[\.ssh[\\/]]=], [=[var[\\/]log[\\/]]=], [=[web-inf[\\/]]=], [=[meta-inf[\\/]]=], [=[\.aws[\\/]]=],
      [=[\.git[\\/]]=], [=[\.htpasswd\b]=], [=[\.htaccess\b]=], [=[wp-config\.php]=], [=[\.env$]=], [=[\.bash_history]=] }
    -- at the start or after a separator, a space, a quote, '=', ':' or '('
    local after = [=[(?<![^\\/\s"'=:(])]=]
    return after .. table.concat(names, "|" .. after)
  end)())

-- 931 RFI (Lua: needs the argument's name and the URL's parts)
rule(931100, "rfi", 5, 1, "Remote URL in an include-like parameter")
rule(931110, "rfi", 5, 1, "Remote URL ending in '?' or a script name after '?' (include trick)")
rule(931120, "rfi", 5, 1, "UNC path (\\\\host\\share)")

-- 932 command injection
local CMD = [=[(?:id|whoami|uname|w|wget|curl|nc|ncat|netcat|socat|telnet|tftp|powershell|pwsh|cmd(?:\.exe)?|nslookup|ifconfig|ipconfig|netstat|systeminfo|tasklist|taskkill|certutil|bitsadmin|wmic|mkfifo|xterm|hostname|printenv|env|passwd|useradd|chmod|chown|base64)(?=[\s;&|`)<>,$]|$)]=]
local CMD_ARGS = [=[(?:cat|more|less|head|tail|nl|tac|ls|rm|cp|mv|touch|find|dir|type)(?:\s+(?:-\w+\s+)*['"]?(?:[/~\\]|[a-z]:\\|\.\.?/|\$)|\s*<\s*/)|ls(?:\s+-\w+)*\s*(?:$|[;&|`)])|sleep\s+\d|ping\s+(?:-\w|\d|[\w-]+\.[\w.-]+)|ps\s+-?aux|kill\s+-\d|echo\s+\S+\s*>|(?:perl|ruby|node|lua)\s+-e\b|python[23]?\s+-c\b|php\s+-r\b|awk\s+['"]?\w*\s*\{|net\s+(?:user|localgroup|group|share|view|use)\b|reg\s+(?:add|query|delete)\b|crontab\s+-|(?:ba|z|k|da|c|tc)?sh(?=\s*(?:$|[;&|)`<>]|-\w))]=]
rule(932100, "cmdi", 5, 1, "OS command after a shell separator",
  [=[(?:[;&|\n\r`]|\$\()\s*(?:\{\s*)?(?:[\w.-]*/)*(?:]=] .. CMD .. "|" .. CMD_ARGS .. ")")
rule(932110, "cmdi", 5, 1, "Shell path or reverse shell (/bin/sh, /dev/tcp)",
  [=[(?<!#!)(?<![^\s;&|`'"(=])/(?:usr/)?bin/(?:ba|z|k|da|c|tc)?sh\b|/dev/(?:tcp|udp)/|\bpowershell(?:\.exe)?\s+-(?:e|enc|encodedcommand|nop|noprofile|w|windowstyle|c|command|exec)\b|\bcmd(?:\.exe)?\s+/c\b]=])
rule(932120, "cmdi", 5, 1, "Shell evasion (${IFS}, brace expansion, globbed paths)",
  [=[\$\{?IFS\}?|\$\{\w+:\d+:\d+\}|\{\s*(?:cat|ls|id|wget|curl|nc|bash|sh|rm|echo)\s*,|/[\w?*]*[?*][\w?*]*/[\w?*]*[?*]]=])
rule(932130, "cmdi", 5, 1, "Shellshock function definition",
  [=[^\s*\(\s*\)\s*\{]=])

-- 933 PHP
rule(933100, "php", 5, 1, "PHP open tag",
  [=[<\?(?:php\b|=)]=])
rule(933110, "php", 5, 1, "PHP high-risk function call",
  -- one alternative per function (each starts with a literal: see compile_class)
  (function()
    local names = { "system", "exec", "shell_exec", "passthru", "popen", "proc_open", "pcntl_exec",
      "eval", "assert", "base64_decode", "gzinflate", "str_rot13", "call_user_func(?:_array)?",
      "create_function", "preg_replace", "file_put_contents", "file_get_contents", "unserialize",
      "highlight_file", "show_source", "fsockopen" }
    -- with an argument ("exec()" in prose about code is not a call that does
    -- anything); phpinfo() needs none
    return [=[\b]=] .. table.concat(names, [=[\s*\((?!\s*\))|\b]=]) .. [=[\s*\((?!\s*\))|\bphpinfo\s*\(]=]
  end)())
rule(933120, "php", 5, 1, "PHP superglobal",
  [=[\$_(?:GET|POST|REQUEST|COOKIE|SERVER|FILES|ENV|SESSION)\b|\$GLOBALS\b]=])
rule(933130, "php", 5, 1, "PHP serialized object",
  [=[\b[OC]:\d+:"[\w\\]+":\d+:\{|\ba:\d+:\{[sidbO]:]=])
rule(933140, "php", 5, 1, "Upload of a server-side script (file name)")

-- 934 code: node, python, templates, JNDI, deserialisation, prototype pollution
rule(934100, "code", 5, 1, "Node.js code injection",
  [=[\bchild_process\b|process\.mainModule|process\.binding\s*\(|require\s*\(\s*['"](?:child_process|fs|net|vm|os)['"]\s*\)|\bconstructor\s*\.\s*constructor\s*\(|\bFunction\s*\(\s*['"`]\s*return\b]=])
rule(934110, "code", 5, 1, "Python code injection",
  [=[\.__(?:class|mro|subclasses|globals|builtins|init|base|bases|dict)__\s*[.\[(]|__import__\s*\(|__(?:subclasses|globals|builtins|mro)__|\bos\.(?:system|popen|exec\w*|spawn\w*)\s*\(|\bsubprocess\.\w+\s*\(|\beval\s*\(\s*compile\s*\(]=])
rule(934120, "code", 5, 1, "Server-side template injection",
  [=[\{\{[^{}]{0,160}?(?:__|\bconfig\b|\brequest\b|\bself\b|\bconstructor\b|\bcycler\b|\blipsum\b|\bjoiner\b|\d\s*[*+]\s*['"]?\d|popen|\bimport\b|\[['"])|\{%[^{}%]{0,160}?(?:\bimport\b|\bexec\b|\bsystem\b|popen|__)|[$#*@]\{\s*\d+\s*[*+/-]\s*\d+\s*\}|\$\{\s*T\s*\(|#\{[^{}]{0,160}?(?:getClass|Runtime|\bexec\b|\bT\s*\(|classLoader)|\b_self\.env\b|registerUndefinedFilterCallback|\{\$smarty\b|\{php\}|\{\{#with\b|<#(?:assign|import|include)\b|freemarker\.template|\?new\s*\(\s*\)|<%=?\s*(?:`|system\b|exec\b|eval\b|IO\.|File\.|%x|require\b|Runtime|\d+\s*[*+]\s*\d)|#set\s*\(\s*\$]=])
rule(934130, "code", 5, 1, "JNDI lookup (Log4Shell)",
  [=[\$\{\s*jndi\s*:|\$\{\s*(?:ldaps?|rmi|dns|iiop|corba|nds|nis)\s*:]=])
rule(934140, "code", 5, 1, "Prototype pollution",
  [=[__proto__|\bconstructor\s*(?:\.|\[\s*['"]?)\s*prototype\b]=])
rule(934150, "code", 5, 1, "Java deserialisation or expression language gadget",
  [=[\brO0AB|\baced0005|java\.lang\.(?:Runtime|ProcessBuilder|System\b)|getRuntime\s*\(|org\.apache\.commons\.collections|ysoserial|#_memberAccess|#context\s*\[|@ognl\.|\bognl\.OgnlContext|\bProcessBuilder\s*\(|@java\.lang|\bnew\s+java\.|\.getClass\s*\(\s*\)\s*\.|getClassLoader\s*\(|\bc(?:os|posix|subprocess|builtins|__builtin__|nt)\n(?:system|popen|check_output|call|eval|exec)\n]=])

-- 935 NoSQL
rule(935100, "nosqli", 5, 1, "NoSQL operator in an argument name or JSON key")
rule(935110, "nosqli", 5, 1, "NoSQL operator object in a value",
  [=[\[\s*\$(?:ne|eq|gt|gte|lt|lte|in|nin|regex|exists|where|expr|or|and|nor|not|elemMatch)\s*\]|\{\s*["']?\$(?:ne|eq|gt|gte|lt|lte|in|nin|regex|exists|where|expr|or|and|nor|not|all|size|type|mod|elemMatch|function|accumulator|text|jsonSchema)["']?\s*:|\$where\b]=])
rule(935120, "nosqli", 5, 1, "JavaScript injection into a NoSQL query",
  [=[^\s*['"]\s*;\s*(?:while\s*\(|var\s+\w+\s*=|return\b|sleep\s*\(|if\s*\(|function\b)|['"]\s*(?:\|\||&&)\s*['"]?\w*['"]?\s*===?\s*['"]?\w*|\bthis\.\w+\.match\s*\(|\bthis\.\w+\.length\s*[<>=]|\bthis\.\w+\s*==\s*['"]]=])

-- 936 SSRF (Lua: host analysis)
rule(936100, "ssrf", 5, 1, "SSRF: URL to a loopback address (any spelling)")
rule(936110, "ssrf", 5, 1, "SSRF: URL to a cloud metadata address")
rule(936120, "ssrf", 5, 1, "SSRF: URL with a scheme used against internal services (gopher, dict, ...)")
rule(936130, "ssrf", 5, 1, "SSRF: URL to a cluster-internal name")
rule(936140, "ssrf", 5, 2, "SSRF: URL to a private address or name")

-- 937 LDAP
rule(937100, "ldap", 5, 1, "LDAP filter injection",
  [=[\*\)\s*\(\s*[|&!]?\s*\(?\s*[\w-]+\s*[~<>]?=|\)\s*\(+\s*[|&!]|^\s*\(\s*[|&!]\s*\(\s*[\w-]+\s*[~<>]?=|\w\)\s*\(\s*[&|]\s*\)]=])

-- 938 XXE
rule(938100, "xxe", 5, 1, "XML external entity or DTD",
  [=[<!ENTITY\b|<!DOCTYPE[^>\[]{0,200}?(?:\[|\bSYSTEM\b|\bPUBLIC\s+(?:"[^"]*"|'[^']*')\s+["'](?!https?://www\.w3\.org/))|\bxi:include\b|XInclude\b]=])

-- 939 CRLF and mail headers
rule(939100, "crlf", 5, 1, "CRLF injection: a header after a line break",
  [=[[\r\n]\s*(?:set-cookie|location|content-(?:length|type|disposition|security-policy|encoding|transfer-encoding)|transfer-encoding|refresh|x-[\w-]+|access-control-[\w-]+|bcc|cc|reply-to|x-mailer|mime-version)\s*:|[\r\n]\s*http/\d\.\d\s+\d{3}]=])
rule(939110, "crlf", 5, 1, "Mail address header after a line break (To, From, Sender)",
  [=[[\r\n]\s*(?:to|from|sender)\s*:[^\r\n]*@]=])
rule(939120, "crlf", 5, 2, "Mail header after a line break (To, From, Subject)",
  [=[[\r\n]\s*(?:to|from|subject|sender)\s*:]=])

-- 941 XSS (moongate.waf.xss)
rule(941100, "xss", 5, 1, "XSS: tag that runs or loads script")
rule(941110, "xss", 5, 1, "XSS: event handler attribute in a tag")
rule(941120, "xss", 5, 1, "XSS: quote, then an event handler attribute")
rule(941130, "xss", 5, 1, "XSS: javascript:, vbscript: or data:text/html URL")
rule(941140, "xss", 5, 1, "XSS: quote that leaves a JS string to call a function")
local xss_ids = { tag = 941100, handler = 941110, ["break"] = 941120, scheme = 941130, js = 941140 }

-- 942 SQLi (moongate.waf.sqli)
rule(942100, "sqli", 5, 1, "SQL injection (tokenizer)")

-- One pass over a value's bytes (a compiled LuaJIT loop over a lookup
-- table) says which of the bytes the rules care about it has, as a bit mask;
-- every "is this class worth running" question is then a bit test.
local band, bor = bit.band, bit.bor
local SQ, DQ, BT, LT, GT, LP, RP, SEMI, AMP, PIPE, DOL, BRACE, SL, BS, NL, EQ, COL, HASH, AT, BRK,
      PCT, STAR, HI, CTL, UND, DOT =
  0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x80, 0x100, 0x200, 0x400, 0x800, 0x1000, 0x2000, 0x4000,
  0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000, 0x800000, 0x1000000,
  0x2000000
-- bytes that carry nothing by themselves: letters, digits, space, . , - _ ? ! + ~ ^
-- and UTF-8 (but for overlong leads C0 C1 E0 and E2, which starts U+2216 "∖")
local NOT_PLAIN = bit.bnot(bor(UND, DOT))
local byte_bits = ffi.new("uint32_t[256]")
do
  local map = { ["'"] = SQ, ['"'] = DQ, ["`"] = BT, ["<"] = LT, [">"] = GT, ["("] = LP, [")"] = RP,
    [";"] = SEMI, ["&"] = AMP, ["|"] = PIPE, ["$"] = DOL, ["{"] = BRACE, ["}"] = BRACE, ["/"] = SL,
    ["\\"] = BS, ["\r"] = NL, ["\n"] = NL, ["="] = EQ, [":"] = COL, ["#"] = HASH, ["@"] = AT,
    ["["] = BRK, ["]"] = BRK, ["%"] = PCT, ["*"] = STAR, ["_"] = UND, ["."] = DOT }
  for c = 0, 31 do byte_bits[c] = CTL end
  byte_bits[127] = CTL
  for k, v in pairs(map) do byte_bits[string_byte(k)] = v end
  for _, c in ipairs({ 0xC0, 0xC1, 0xE0, 0xE2, 0xE5, 0xEF }) do byte_bits[c] = HI end
end
local function scan(s)
  local p, m = ffi.cast("const uint8_t *", s), 0
  for i = 0, #s - 1 do m = bor(m, byte_bits[p[i]]) end
  return m
end
_M.scan = scan

-- what a value must have before a class's pattern is worth running
local function has(d, lit) return string_find(d, lit, 1, true) ~= nil end
local function any(m, bits) return band(m, bits) ~= 0 end
local triggers = {
  lfi = function(d, m)
    return any(m, SL + BS + HI) or (any(m, DOT) and (has(d, ".env") or has(d, ".ht") or has(d, "boot.ini")))
  end,
  cmdi = function(d, m)
    return any(m, SEMI + AMP + PIPE + NL + BT + BRACE + SL + DOL) or band(m, LP + RP) == LP + RP
  end,
  php = function(d, m) return any(m, LT + DOL + LP + COL) end,
  code = function(d, m)
    return any(m, BRACE + HASH + UND + LT + AT + DOL + BRK + LP) or has(d, "java.") or has(d, "prototype")
  end,
  nosqli = function(d, m) return any(m, DOL + SEMI) or has(d, "this.") end,
  ldap = function(d, m) return any(m, LP) and any(m, RP + PIPE + AMP) end,
  xxe = function(d, m) return any(m, LT) and has(d, "<!") or has(d, "nclude") end,
  crlf = function(d, m) return any(m, NL) end,
}
local SQL_BYTES = SQ + DQ + BT + SEMI + LP + RP + EQ + LT + GT + PIPE + AMP + HASH + AT + STAR + SL
local XSS_BYTES = LT + GT + SQ + DQ + BT + COL + EQ

-- classes looked at for each kind of value (collect's `where`)
local ALL = { lfi = true, cmdi = true, php = true, code = true, nosqli = true, ldap = true, xxe = true, crlf = true }
local where_classes = {
  path = { lfi = true, cmdi = false, php = true, code = true, xxe = true, crlf = true },
  arg = ALL, body = ALL, body_raw = ALL, cookie = ALL, filename = ALL,
  arg_name = { php = true, code = true, nosqli = true, ldap = false, lfi = true, cmdi = true },
  header = { cmdi = true, php = true, code = true, lfi = true, xxe = true, ldap = false },
  xml = { xxe = true },
}
local tokenizers = {  -- sqli / xss / ssrf+rfi per where
  path = { sqli = true, xss = true }, arg = { sqli = true, xss = true, url = true },
  body = { sqli = true, xss = true, url = true }, body_raw = { sqli = true, xss = true, url = true },
  cookie = { sqli = true, xss = true, url = true }, filename = { xss = true },
  arg_name = { sqli = true, xss = true }, header = { sqli = true, xss = true },
  xml = {},
}

---------------------------------------------------------------- PCRE2

local ovec = ffi.new("size_t[?]", 2 * 32)
local UNSET = 0xffffffffffffffffULL  -- core/rx.h: an unset group (SIZE_MAX)
local errbuf = ffi.new("char[256]")
local erroff = ffi.new("size_t[1]")

-- one alternation per class: (?:(p1)|(p2)|...), group i = the class's rule i
-- The top-level alternatives of a pattern (split at '|' outside groups,
-- classes and escapes).
local function alternatives(p)
  local out, depth, i, start, n = {}, 0, 1, 1, #p
  while i <= n do
    local c = string_sub(p, i, i)
    if c == "\\" then
      i = i + 1
    elseif c == "[" then
      -- a class: ']' right after '[' or '[^' is a member
      local j = i + 1
      if string_sub(p, j, j) == "^" then j = j + 1 end
      if string_sub(p, j, j) == "]" then j = j + 1 end
      while j <= n and string_sub(p, j, j) ~= "]" do
        if string_sub(p, j, j) == "\\" then j = j + 1 end
        j = j + 1
      end
      i = j
    elseif c == "(" then depth = depth + 1
    elseif c == ")" then depth = depth - 1
    elseif c == "|" and depth == 0 then
      out[#out + 1] = string_sub(p, start, i - 1)
      start = i + 1
    end
    i = i + 1
  end
  out[#out + 1] = string_sub(p, start)
  return out
end
_M.alternatives = alternatives

local function compile(C, pat, id)
  local rx = C.mg_rx_new(pat, #pat, 1, errbuf, 256, erroff)
  if rx == nil then
    return nil, string.format("pattern for %s: %s at offset %d", id, ffi.string(errbuf), tonumber(erroff[0]))
  end
  return ffi.gc(rx, C.mg_rx_free)
end

-- A class compiled twice: one alternation of its rules (one capture group per
-- rule: one scan of a short value says which rule matched), and each
-- top-level alternative of each rule on its own: PCRE2 finds a literal first
-- byte with memchr, so on a long value a dozen single patterns cost less than
-- one alternation that must try every branch at every byte.
local function compile_class(C, list, paranoia)
  local parts, ids, singles = {}, {}, {}
  for _, r in ipairs(list) do
    if rules[r.id].pl <= paranoia then
      parts[#parts + 1] = "(" .. r.pattern .. ")"
      ids[#ids + 1] = r.id
      for _, alt in ipairs(alternatives(r.pattern)) do
        local rx, err = compile(C, alt, r.id)
        if not rx then return nil, nil, nil, err end
        singles[#singles + 1] = { rx = rx, id = r.id }
      end
    end
  end
  if #parts == 0 then return nil end
  local pat = table.concat(parts, "|")
  local rx, err = compile(C, pat, list[1].id)
  if not rx then return nil, nil, nil, err end
  return rx, ids, singles
end
local LONG = 256   -- bytes: from here on a value is matched with the single patterns

---------------------------------------------------------------- helpers

local Engine = {}
Engine.__index = Engine

local function excerpt(s, a, b)
  a, b = a or 1, b or #s
  if b - a >= 64 then b = a + 63 end
  if a > 1 and b - a < 63 then
    -- some context before the match, within 64 bytes
    local extra = 63 - (b - a)
    a = a - floor(extra / 2)
    if a < 1 then a = 1 end
    if b - a >= 64 then b = a + 63 end
  end
  return string_sub(s, a, b)
end

local function hit(self, hits, id, var, s, a, b)
  local r = rules[id]
  if r.pl > self.paranoia then return end
  hits[#hits + 1] = { id = id, severity = r.severity, pl = r.pl, msg = r.msg, var = var,
    match = s and excerpt(s, a, b) or "" }
end

local function run_classes(self, d, var, which, hits, m)
  local len = #d
  m = m or scan(d)
  for i = 1, #self.rx do
    local c = self.rx[i]
    if which[c.class] and c.trigger(d, m) then
      if len >= LONG then
        local singles = c.singles
        for k = 1, #singles do
          local sg = singles[k]
          if self.C.mg_rx_match(sg.rx, d, len, ovec, 1) > 0 then
            hit(self, hits, sg.id, var, d, tonumber(ovec[0]) + 1, tonumber(ovec[1]))
            break
          end
        end
      elseif self.C.mg_rx_match(c.rx, d, len, ovec, 32) > 0 then
        -- the first group that is set is the rule that matched
        for g = 1, #c.ids do
          if ovec[2 * g] ~= UNSET then
            hit(self, hits, c.ids[g], var, d, tonumber(ovec[2 * g]) + 1, tonumber(ovec[2 * g + 1]))
            break
          end
        end
      end
    end
  end
end

---------------------------------------------------------------- SSRF / RFI

-- inet_aton's reading of a host: 1 to 4 parts, each decimal, octal (leading 0)
-- or hex (0x); the 32-bit address or nil
local function ipv4(h)
  if not string_find(h, "^[%dxXa-fA-F.]+$") or string_find(h, "^%.") or string_find(h, "%.%.")
      or string_find(h, "%.$") then
    return nil
  end
  local parts, n = {}, 0
  for p in string.gmatch(h, "[^.]+") do
    local v
    if string_find(p, "^0[xX]%x*$") then v = tonumber(#p > 2 and string_sub(p, 3) or "0", 16)
    elseif string_find(p, "^0[0-7]+$") then v = tonumber(p, 8)
    elseif string_find(p, "^%d+$") then v = tonumber(p, 10)
    else return nil end
    n = n + 1
    if n > 4 then return nil end
    parts[n] = v
  end
  if n == 1 then return parts[1] <= 0xFFFFFFFF and parts[1] or nil end
  for i = 1, n - 1 do if parts[i] > 255 then return nil end end
  local last = parts[n]
  local a = 0
  for i = 1, n - 1 do a = a * 256 + parts[i] end
  local rest = 4 - (n - 1)
  if last >= 256 ^ rest then return nil end
  return a * 256 ^ rest + last
end
_M.ipv4 = ipv4

-- the rule an IPv4 address (a number) lands on, or nil
local function classify4(n)
  local a = floor(n / 16777216)
  local b = floor(n / 65536) % 256
  if a == 127 or a == 0 then return 936100 end
  if a == 169 and b == 254 then return 936110 end
  if n == 1684301000 then return 936110 end -- 100.100.100.200 (Alibaba metadata)
  if a == 10 or (a == 172 and b >= 16 and b <= 31) or (a == 192 and b == 168)
      or (a == 100 and b >= 64 and b <= 127) then
    return 936140
  end
  return nil
end

local function classify6(h)
  h = string_lower(h)
  local z = string_gsub(h, "^[0:]+", "")
  if h == "::" or z == "1" or z == "" then return 936100 end
  -- IPv4-mapped or -compatible: ::ffff:a.b.c.d, ::ffff:7f00:1
  local tail = string_match(h, "^[0:]*ffff:(.+)$") or string_match(h, "^::(%d+%.%d+%.%d+%.%d+)$")
  if tail then
    local n = ipv4(tail)
    if not n then
      local hi, lo = string_match(tail, "^(%x+):(%x+)$")
      if hi then n = tonumber(hi, 16) * 65536 + tonumber(lo, 16) end
    end
    if n then return classify4(n) end
  end
  if string_find(h, "^fd00:ec2::") then return 936110 end
  if string_find(h, "^fe[89ab]%x:") then return 936110 end
  if string_find(h, "^f[cd]%x%x:") then return 936140 end
  return nil
end

local internal_suffix = { "%.svc$", "%.svc%.cluster%.local$", "%.cluster%.local$", "^kubernetes%.default" }
local private_suffix = { "%.internal$", "%.local$", "%.localdomain$", "%.lan$", "%.corp$", "%.intranet$", "%.home%.arpa$" }

-- the rule a URL host (lowercase, no port, no brackets) lands on, or nil
local function classify_host(h, bracketed)
  if bracketed or string_find(h, ":", 1, true) then return classify6(h) end
  h = string_gsub(h, "%.+$", "")
  if h == "" then return nil end
  local n = ipv4(h)
  if n then return classify4(n) end
  if h == "localhost" or string_find(h, "%.localhost$") or string_find(h, "^localhost%.")
      or h == "ip6-localhost" or h == "ip6-loopback" or h == "localtest.me"
      or string_find(h, "%.localtest%.me$") or h == "lvh.me" or string_find(h, "%.lvh%.me$") then
    return 936100
  end
  -- wildcard DNS that answers the address in the name: 127.0.0.1.nip.io, 10-0-0-1.sslip.io
  local inner = string_match(h, "^(.-)%.nip%.io$") or string_match(h, "^(.-)%.xip%.io$")
    or string_match(h, "^(.-)%.sslip%.io$")
  if inner then
    local a, b, c, d = string_match(inner, "(%d+)[.%-](%d+)[.%-](%d+)[.%-](%d+)$")
    local n = a and ipv4(a .. "." .. b .. "." .. c .. "." .. d)
    if n then return classify4(n) end
  end
  if h == "metadata.google.internal" or h == "metadata" or h == "instance-data"
      or string_find(h, "^instance%-data%.") or h == "metadata.azure.com" then
    return 936110
  end
  for _, p in ipairs(internal_suffix) do if string_find(h, p) then return 936130 end end
  for _, p in ipairs(private_suffix) do if string_find(h, p) then return 936140 end end
  return nil
end

local ssrf_schemes = { gopher = true, dict = true, ldap = true, ldaps = true, tftp = true,
  netdoc = true, jar = true, sftp = true, ["ldapi"] = true }
local remote_schemes = { http = true, https = true, ftp = true, ftps = true }

local include_names = {}
for w in ([=[page include inc incl file filename template tpl module mod load theme path
  require req doc document view layout skin lang language dir folder conf config site
  show content pg]=]):gmatch("%S+") do include_names[w] = true end

local function host_of(auth)
  local host = string_match(auth, "[^@]*$")
  local bracket = string_match(host, "^%[([^%]]*)%]")
  if bracket then return string_lower(bracket), true end
  host = string_gsub(host, ":%d*$", "")
  return string_lower(host), false
end

-- URLs in the value: scheme://authority...; looks at up to 4 of them
local function urls(self, d, var, where, hits)
  local pos, seen = 1, 0
  while seen < 4 do
    local a, b, scheme = string_find(d, "([%a][%w+.-]*):[/\\][/\\]", pos)
    if not a then break end
    seen = seen + 1
    scheme = string_lower(scheme)
    local rest = string_sub(d, b + 1)
    if ssrf_schemes[scheme] then
      hit(self, hits, 936120, var, d, a, b + 32)
    end
    -- the authority as a browser reads it (ends at / ? # \) and as a naive
    -- parser does (ends at /, so "127.0.0.1#@evil" is "evil" to one of them)
    local auth1 = string_match(rest, "^[^/?#\\%s]*")
    local auth2 = string_match(rest, "^[^/\\%s]*")
    local h1, br1 = host_of(auth1)
    local id = classify_host(h1, br1)
    if not id and auth2 ~= auth1 then
      local h2, br2 = host_of(auth2)
      id = classify_host(h2, br2)
    end
    if id then hit(self, hits, id, var, d, a, b + 40) end
    -- RFI: a remote URL where an include is likely
    if remote_schemes[scheme] and where ~= "header" then
      local name = var and string_lower(string_match(var, "([%w_%-]+)[%]%[%d]*$") or "")
      if a == 1 or string_find(string_sub(d, 1, a - 1), "^%s*$") then
        if include_names[name] then hit(self, hits, 931100, var, d, a, b + 40) end
      end
      local q = string_find(rest, "?", 1, true)
      if q then
        local tail = string_sub(rest, q + 1)
        if string_find(tail, "^%?*%s*$") or string_find(tail, "^[%w_%-/]*%.%a%a%a?%a?%s*$") then
          hit(self, hits, 931110, var, d, a, #d)
        end
      end
    end
    pos = b + 1
  end
end

---------------------------------------------------------------- per value

-- Log4Shell lookups nested to hide "jndi": ${lower:j}, ${::-j}, ${env:X:-j}
local function unlookup(inner)
  local l = string_lower(inner)
  if string_find(l, "^%s*jndi") then return nil end
  local d = string_match(inner, ":%-(.*)$")
  if d then return d end
  local v = string_match(l, "^%s*lower:(.*)$") or string_match(l, "^%s*upper:(.*)$")
  if v then return v end
  return nil
end
local function strip_lookups(s)
  for _ = 1, 4 do
    local t = string_gsub(s, "%${([^{}]*)}", function(inner)
      local r = unlookup(inner)
      if r then return r end
    end)
    if t == s then break end
    s = t
  end
  return s
end

-- shell quoting tricks: c''at, w"h"oami, c\at -> cat; ${IFS} -> a space
-- s without any byte c (plain finds and one concat: a gsub walks a long
-- value byte by byte in the interpreter)
local function strip(s, c)
  local at = string_find(s, c, 1, true)
  if not at then return s end
  local parts, n, p = {}, 0, 1
  while at do
    n = n + 1
    parts[n] = string_sub(s, p, at - 1)
    p = at + 1
    at = string_find(s, c, p, true)
  end
  parts[n + 1] = string_sub(s, p)
  return table.concat(parts)
end

local function unquote_shell(s)
  s = strip(strip(strip(s, "'"), '"'), "\\")
  if has(s, "IFS") then s = string_gsub(s, "%${?IFS}?", " ") end
  return s
end

local nosql_ops = {}
for w in ([=[ne eq gt gte lt lte in nin regex exists where expr or and nor not all size
  type mod elemmatch function accumulator text jsonschema options comment slice
  geowithin near]=]):gmatch("%S+") do nosql_ops[w] = true end

local script_ext = {}
for w in ([=[php php3 php4 php5 php7 phtml phar pht phps asp aspx ashx asmx jsp jspx cgi pl
  py rb sh shtml cfm htaccess]=]):gmatch("%S+") do script_ext[w] = true end

local function check(self, d, var, where, hits, m)
  local which = where_classes[where] or ALL
  local tok = tokenizers[where] or tokenizers.arg
  if tok.sqli and (any(m, SQL_BYTES) or has(d, "--")) then
    local r = sqli.detect(d)
    if r then hit(self, hits, 942100, var, d) end
  end
  if tok.xss and any(m, XSS_BYTES) then
    local k = xss.detect(d)
    if k then hit(self, hits, xss_ids[k], var, d) end
  end
  if tok.url and any(m, SL + BS) then
    if string_find(d, "^%s*//[%w%-]+%.[%w.%-]") and var
        and include_names[string_lower(string_match(var, "([%w_%-]+)[%]%[%d]*$") or "")] then
      hit(self, hits, 931100, var, d)
    end
    if string_find(d, "[/\\][/\\]") then urls(self, d, var, where, hits) end
    if string_find(d, "^%s*\\\\[%w.%-]+\\") then hit(self, hits, 931120, var, d) end
  end
  if any(m, DOL) and has(d, "${") then
    local t = strip_lookups(d)
    if t ~= d then run_classes(self, t, var, { code = true }, hits) end
  end
  run_classes(self, d, var, which, hits, m)
  if which.cmdi and (any(m, SQ + DQ + BS) or has(d, "IFS")) then
    local t = unquote_shell(d)
    if t ~= d then run_classes(self, t, var, { cmdi = true, lfi = true }, hits) end
  end
end

local function names(self, v, var, where, hits)
  -- user[$ne]=, filter[$or][0], a JSON key "$gt"
  local op = string_match(v, "^%$([%a]+)$") or string_match(v, "%[%s*%$([%a]+)%s*%]")
  if op and nosql_ops[string_lower(op)] then hit(self, hits, 935100, var, v) end
  if string_find(v, "__proto__", 1, true) or string_find(v, "prototype", 1, true) then
    run_classes(self, v, var, { code = true }, hits)
    -- a JSON key "prototype" under a key "constructor": {"constructor": {"prototype": ...}}
    if where == "json_key" and v == "prototype" and var and string_find(var, "constructor", 1, true) then
      hit(self, hits, 934140, var, var)
    end
  end
end

-- Header values repeat from request to request (a browser's User-Agent): the
-- ones that hit nothing are remembered (at most CACHE_MAX of them, up to
-- CACHE_LEN bytes each; the set starts over when full) and not looked at again.
local CACHE_MAX, CACHE_LEN = 512, 512

--- Looks at one collected value (moongate.waf.collect's `v`, `var`, `where`);
--- appends what matched to `hits`.
function Engine:value(v, var, where, hits)
  if type(v) ~= "string" or v == "" then return end
  if where == "header" and #v <= CACHE_LEN then
    local cache = self.clean
    if cache[v] then return end
    local before = #hits
    self:look(v, var, where, hits)
    if #hits == before then
      if self.ncached >= CACHE_MAX then self.clean, self.ncached = {}, 0; cache = self.clean end
      cache[v] = true
      self.ncached = self.ncached + 1
    end
    return
  end
  return self:look(v, var, where, hits)
end

function Engine:look(v, var, where, hits)
  if where == "path_raw" or where == "cookie_name" then return end
  if where == "json_key" then
    if string_find(v, "[%$_]") or v == "prototype" then names(self, v, var, where, hits) end
    return
  end
  if where == "arg_name" and (string_find(v, "[%$_]") or string_find(v, "prototype", 1, true)) then
    names(self, v, var, where, hits)
  end
  if where == "filename" then
    local ext = string_match(v, "%.([%w]+)[%s.]*$")
    if ext and script_ext[string_lower(ext)] then hit(self, hits, 933140, var, v) end
  end
  if where == "xml" then
    if string_find(v, "<!", 1, true) or string_find(v, "include", 1, true) then
      run_classes(self, v, var, where_classes.xml, hits)
    end
    return
  end
  -- base64 of something else (the whole value)
  local n = #v
  local m = scan(v)
  if n >= 16 and band(m, bit.bnot(UND + SL + EQ)) == 0 and not string_find(v, "[^%w%+/=_%-]") then
    local b = decode.base64(v)
    if b then
      local mb = scan(b)
      if band(mb, NOT_PLAIN) ~= 0 then check(self, b, var, where, hits, mb) end
    end
  end
  -- plain words and numbers: nothing any rule needs, but for SQL made of
  -- words alone ("1 union select name from users", "5 having 1") and a Java
  -- serialised object in base64
  if band(m, NOT_PLAIN) == 0 then
    local l = n > 8 and string_find(v, " ", 1, true) and string_lower(v)
    if l and (string_find(l, "select", 1, true) or string_find(l, "having", 1, true)
        or string_find(l, "waitfor", 1, true) or string_find(l, "union", 1, true)
        or string_find(l, " by ", 1, true) or string_find(l, "procedure", 1, true)) then
      if sqli.detect(v) then hit(self, hits, 942100, var, v) end
    end
    if n >= 16 and (has(v, "rO0AB") or has(v, "aced0005")) then run_classes(self, v, var, { code = true }, hits, m) end
    return
  end
  if where ~= "header" and (any(m, CTL) and has(v, "\0") or any(m, PCT) and has(v, "%00")) then
    hit(self, hits, 920240, var, v)
  end
  local d = decode.normalize(v, false)
  if d ~= v then m = scan(d) end
  check(self, d, var, where, hits, m)
end

---------------------------------------------------------------- per request

local whole_classes = { cmdi = true, ldap = true }
-- header names every client sends (their bytes need no check)
local good_names = {}
for n in ([[host user-agent accept accept-language accept-encoding connection cookie referer
  content-type content-length cache-control pragma origin authorization upgrade-insecure-requests
  sec-fetch-dest sec-fetch-mode sec-fetch-site sec-fetch-user dnt te if-none-match
  if-modified-since x-requested-with x-forwarded-for x-forwarded-proto x-real-ip
  sec-ch-ua sec-ch-ua-mobile sec-ch-ua-platform priority]]):gmatch("%S+") do good_names[n] = true end
local WHOLE_BYTES = SEMI + PIPE + BT + LP + RP + LT + GT + DOL + NL + SQ + DQ + BS + BRACE
local allowed_methods = { GET = true, HEAD = true, POST = true, PUT = true, PATCH = true,
  DELETE = true, OPTIONS = true }
local allowed_versions = { ["1.0"] = true, ["1.1"] = true, ["2"] = true, ["2.0"] = true, ["3"] = true }
local allowed_charsets = { ["utf-8"] = true, utf8 = true, ["us-ascii"] = true, ascii = true,
  ["iso-8859-1"] = true, ["iso-8859-15"] = true, latin1 = true, ["windows-1252"] = true }
local allowed_types = {}
for t in ([=[application/x-www-form-urlencoded multipart/form-data multipart/related
  multipart/mixed text/xml application/xml application/soap+xml application/json
  text/json text/plain text/csv application/octet-stream application/x-ndjson
  application/graphql application/pdf application/zip application/gzip
  application/x-protobuf application/grpc application/cbor application/msgpack
  application/csp-report application/reports+json application/jose
  application/x-amz-json-1.1 application/x-amz-json-1.0]=]):gmatch("%S+") do allowed_types[t] = true end

local function type_allowed(t)
  if allowed_types[t] then return true end
  if string_find(t, "%+json$") or string_find(t, "%+xml$") or string_find(t, "^image/")
      or string_find(t, "^audio/") or string_find(t, "^video/") or string_find(t, "^font/") then
    return true
  end
  return false
end

local scanner_ua = {}
for w in ([=[sqlmap nikto nmap masscan nuclei dirbuster gobuster ffuf wfuzz acunetix
  w3af arachni openvas nessus zmeu morfeus havij commix zgrab netsparker wpscan
  jaeles sqlninja bsqlbf pangolin webinspect appscan brutus nessus whatweb
  skipfish grabber paros webshag dirb feroxbuster httpx fimap joomscan
  xsstrike dotdotpwn zaproxy jorgee zmap l9explore l9tcpid qualys nimbostratus]=]):gmatch("%S+") do scanner_ua[#scanner_ua + 1] = w end
scanner_ua[#scanner_ua + 1] = "fuzz faster u fool"
scanner_ua[#scanner_ua + 1] = "nmap scripting engine"

local scanner_headers = { ["x-scanner"] = true, ["acunetix-product"] = true,
  ["acunetix-scanning-agreement"] = true, ["acunetix-user-agreement"] = true,
  ["x-wipp"] = true, ["x-requested-with-sqlmap"] = true, ["x-scan-memo"] = true }

local probe_paths = { "^/wp%-admin/install%.php", "^/wp%-admin/setup%-config%.php", "^/cgi%-bin/",
  "^/server%-status", "^/server%-info", "^/hnap1", "^/boaform/", "^/phpmyadmin",
  "^/pma/", "^/%.ds_store", "^/actuator/", "^/manager/html", "^/solr/admin",
  "^/%.git/", "^/%.svn/", "^/vendor/phpunit/", "^/owa/auth", "^/console/login",
  "^/jmx%-console", "^/xmlrpc%.php", "^/shell%.php", "^/%.vscode/", "^/config%.json$" }

--- Looks at the request as a whole (moongate.waf.collect's info).
function Engine:request(info, hits)
  local method = info.method
  if method and not allowed_methods[method] then hit(self, hits, 920100, "REQUEST_METHOD", method) end
  local version = info.version
  if version and not allowed_versions[version] then hit(self, hits, 920110, "REQUEST_PROTOCOL", version) end
  local target = info.target or ""
  local host = info.host
  local abs = string_match(target, "^%a[%w+.-]*://([^/?#]*)")
  if abs and host and string_lower(abs) ~= string_lower(host) then
    hit(self, hits, 920120, "REQUEST_URI", target)
  end
  if host then
    local h = string_gsub(host, ":%d*$", "")
    if ipv4(h) or string_find(h, "^%[") then hit(self, hits, 920140, "REQUEST_HEADERS:Host", host) end
  elseif version ~= "1.0" and version ~= "0.9" then
    hit(self, hits, 920150, "REQUEST_HEADERS:Host", "")
  end
  if info.body_error then hit(self, hits, 920180, "REQUEST_BODY", info.body_error) end
  if info.too_many then hit(self, hits, 920190, "ARGS", "") end

  local headers = info.headers or {}
  local ua, cl, te, cookie, body_len = nil, 0, nil, nil, 0
  local q = info.query
  for k = 1, #headers do
    local h = headers[k]
    local name, v = h[1], h[2] or ""
    if (band(scan(v), CTL) ~= 0 and string_find(v, "[%z\1-\8\11-\31\127]"))
        or (not good_names[name] and string_find(name, "[^%w!#%$%%&'*+%.%^_`|~%-]")) then
      hit(self, hits, 920200, "REQUEST_HEADERS:" .. name, v)
    end
    if name == "user-agent" then ua = v
    elseif name == "cookie" then cookie = v
    elseif name == "content-length" then
      cl = cl + 1
      body_len = tonumber(v) or 0
      if not string_find(v, "^%s*%d+%s*$") then hit(self, hits, 920210, "REQUEST_HEADERS:Content-Length", v) end
    elseif name == "transfer-encoding" then
      te = v
      if string_lower(v) ~= "chunked" then hit(self, hits, 920230, "REQUEST_HEADERS:Transfer-Encoding", v) end
    elseif name == "range" or name == "request-range" then
      local _, commas = string_gsub(v, ",", "")
      if commas >= 5 then hit(self, hits, 920130, "REQUEST_HEADERS:Range", v) end
    elseif name == "content-type" then
      local cs = string_match(string_lower(v), "charset%s*=%s*[\"']?([%w_%-:.]+)")
      if cs and not allowed_charsets[cs] then hit(self, hits, 920160, "REQUEST_HEADERS:Content-Type", v) end
      local t = string_lower(string_match(v, "^%s*([^;%s]*)") or "")
      if t ~= "" and not type_allowed(t) then hit(self, hits, 920170, "REQUEST_HEADERS:Content-Type", v) end
    elseif scanner_headers[name] then
      hit(self, hits, 913110, "REQUEST_HEADERS:" .. name, v)
    end
  end
  if cl > 1 or (cl > 0 and te) then hit(self, hits, 920220, "REQUEST_HEADERS", "") end
  if (method == "GET" or method == "HEAD") and (te or body_len > 0) then
    hit(self, hits, 920260, "REQUEST_METHOD", method)
  end
  -- the query string and the Cookie header whole: an application that splits
  -- them differently (or a shell that gets them) sees "&& id", "a)(&)",
  -- "; wget ..." where the split values do not
  if q and string_find(q, "[&;]") then
    local d, m = q, scan(q)
    if any(m, PCT) or has(q, "+") then d = decode.url_repeat(q, true); m = scan(d) end
    if has(d, "&#") then d = decode.normalize(d); m = scan(d) end
    if any(m, WHOLE_BYTES) or has(d, "&&") or string_find(d, "&[^=&]*%s[^=&]*&") or string_find(d, "&[^=&]*%s[^=&]*$") then
      run_classes(self, d, "QUERY_STRING", whole_classes, hits, m)
      if any(m, XSS_BYTES) then
        local k = xss.detect(d)
        if k then hit(self, hits, xss_ids[k], "QUERY_STRING", d) end
      end
    end
  end
  if cookie and string_find(cookie, ";", 1, true) then
    run_classes(self, decode.normalize(cookie, false), "REQUEST_HEADERS:Cookie", whole_classes, hits)
  end
  if ua and ua ~= "" and not self.ua_clean[ua] then
    local l = string_lower(ua)
    local found = false
    for i = 1, #scanner_ua do
      if string_find(l, scanner_ua[i], 1, true) then
        hit(self, hits, 913100, "REQUEST_HEADERS:User-Agent", ua)
        found = true
        break
      end
    end
    if not found and #ua <= CACHE_LEN then
      if self.nua >= CACHE_MAX then self.ua_clean, self.nua = {}, 0 end
      self.ua_clean[ua] = true
      self.nua = self.nua + 1
    end
  elseif not ua or ua == "" then
    hit(self, hits, 920250, "REQUEST_HEADERS:User-Agent", "")
  end
  local path = info.path and string_lower(info.path)
  if path and self.paranoia >= 2 then
    for i = 1, #probe_paths do
      if string_find(path, probe_paths[i]) then hit(self, hits, 913120, "REQUEST_PATH", info.path); break end
    end
  end
  -- one name repeated many times (HTTP parameter pollution)
  local amps, at = 0, 0
  if q and #q > 20 then
    repeat
      at = string_find(q, "&", at + 1, true)
      amps = amps + (at and 1 or 0)
    until not at or amps >= 7
  end
  if amps >= 7 then
    local counts, worst = {}, 0
    for name in string.gmatch(q, "([^&=]+)=?[^&]*") do
      local c = (counts[name] or 0) + 1
      counts[name] = c
      if c > worst then worst = c end
    end
    if worst >= 8 then hit(self, hits, 921100, "ARGS", q) end
  end
end

---------------------------------------------------------------- constructor

--- A detection engine at `opts.paranoia` (1..4, default 1): compiles the
--- PCRE2 rules once. Returns nil, err when a pattern does not compile.
function _M.new(opts)
  opts = opts or {}
  local paranoia = opts.paranoia or 1
  if type(paranoia) ~= "number" or paranoia < 1 or paranoia > 4 or paranoia % 1 ~= 0 then
    return nil, "paranoia must be an integer from 1 to 4"
  end
  local C = opts.lib or mgffi.C
  local self = setmetatable({ paranoia = paranoia, C = C, rx = {}, clean = {}, ncached = 0, ua_clean = {}, nua = 0 }, Engine)
  for _, class in ipairs(class_order) do
    local rx, ids, singles, err = compile_class(C, classes[class], paranoia)
    if err then return nil, err end
    if rx then
      self.rx[#self.rx + 1] = { class = class, rx = rx, ids = ids, singles = singles, trigger = triggers[class] }
    end
  end
  return self
end

return _M
