-- moongate.waf.sqli: a tokenizing SQL injection detector (issue 14, "waf";
-- docs/notes-i14-waf.md, "SQLi tokenizer"). A first cut: it tokenizes a decoded
-- value three times, as it is (a number or name context), as if it continued a
-- single-quoted literal and as if it continued a double-quoted one, and looks at
-- the token sequence for what an injection needs and prose does not have: a
-- literal that is closed and continued as SQL, a tautology, UNION SELECT, a
-- stacked statement, a time or error function call. Regexes see "select" and
-- "drop" in "select your order from the menu; drop by"; the tokens there are
-- words, not a broken literal followed by SQL.
local unpack, select = unpack, select
local string_byte, string_sub, string_lower, string_find, string_gsub =
      string.byte, string.sub, string.lower, string.find, string.gsub

local _M = {}

-- token kinds
local NUM, STR, WORD, KEY, FUNC, OP, LOGIC, COMMENT, LPAR, RPAR, COMMA, SEMI, VAR, STAR =
  "n", "s", "w", "k", "f", "o", "&", "c", "(", ")", ",", ";", "v", "*"

-- keywords that start or shape a statement
local keywords = {}
for w in ([[select union insert update delete drop exec execute declare waitfor
  shutdown create alter truncate from where having group order by into values
  set table database limit offset procedure copy program outfile dumpfile
  case when then else end all distinct top null]]):gmatch("%a+") do keywords[w] = true end
-- word operators that combine conditions
local logic = { ["and"] = true, ["or"] = true, xor = true, ["not"] = true, ["&&"] = true, ["||"] = true }
local word_ops = { like = true, rlike = true, regexp = true, is = true, ["in"] = true,
  between = true, div = true, mod = true, sounds = true }
-- functions an injection calls to wait, to leak through errors, or to reach the OS
local bad_funcs = {}
for w in ([[sleep benchmark pg_sleep extractvalue updatexml load_file
  char chr concat concat_ws group_concat ascii substring substr mid ord
  hex unhex version database user current_user system_user session_user
  cast convert rand floor count if ifnull iif utl_inaddr dbms_pipe
  xp_cmdshell xp_dirtree receive_message get_host_address sys_eval
  json_keys name_const exp polygon multipoint]]):gmatch("[%w_]+") do bad_funcs[w] = true end
-- names that only a schema probe mentions
local schema = { information_schema = true, sqlite_master = true, sysobjects = true,
  all_users = true, ["v$version"] = true, pg_catalog = true, mysql = false,
  ["dual"] = true, ["master"] = true }

local function is_digit(b) return b >= 48 and b <= 57 end
local function is_word(b)
  return (b >= 97 and b <= 122) or (b >= 65 and b <= 90) or is_digit(b) or b == 95
    or b == 36 or b >= 128
end
local function is_space(b) return b == 32 or (b >= 9 and b <= 13) or b == 160 end

--- Tokens of `s` (after `quote` when the value continues a literal): a list of
--- { kind, text } with at most `max` tokens (an injection shows early).
local function tokenize(s, quote, max)
  local toks, n, i, len = {}, 0, 1, #s
  if quote then
    -- the value continues a literal: it is a string up to its first `quote`
    local j = string_find(s, quote, 1, true)
    if not j then return toks end -- never leaves the literal: plain data
    n = n + 1; toks[n] = { STR, string_sub(s, 1, j - 1) }
    i = j + 1
  end
  while i <= len and n < max do
    local b = string_byte(s, i)
    if is_space(b) then
      i = i + 1
    elseif b == 39 or b == 34 or b == 96 then -- ' " `
      local j = string_find(s, string.char(b), i + 1, true)
      n = n + 1; toks[n] = { STR, string_sub(s, i + 1, (j or len + 1) - 1) }
      i = (j or len) + 1
    elseif is_digit(b) or (b == 46 and i < len and is_digit(string_byte(s, i + 1))) then
      local j = i
      if b == 48 and (string_byte(s, i + 1) == 120 or string_byte(s, i + 1) == 88) then j = i + 2 end
      while j <= len and (is_word(string_byte(s, j)) or string_byte(s, j) == 46) do j = j + 1 end
      n = n + 1; toks[n] = { NUM, string_sub(s, i, j - 1) }
      i = j
    elseif b == 64 then -- @var, @@version
      local j = i + 1
      while j <= len and (is_word(string_byte(s, j)) or string_byte(s, j) == 64) do j = j + 1 end
      n = n + 1; toks[n] = { VAR, string_lower(string_sub(s, i, j - 1)) }
      i = j
    elseif is_word(b) then
      local j = i
      while j <= len and (is_word(string_byte(s, j)) or string_byte(s, j) == 46) do j = j + 1 end
      local w = string_lower(string_sub(s, i, j - 1))
      local k = j
      while k <= len and is_space(string_byte(s, k)) do k = k + 1 end
      local base = w:match("([%w_$]+)$") or w
      if logic[w] then n = n + 1; toks[n] = { LOGIC, w }
      elseif word_ops[w] then n = n + 1; toks[n] = { OP, w }
      elseif string_byte(s, k) == 40 and not keywords[w] then n = n + 1; toks[n] = { FUNC, base }
      elseif keywords[w] then n = n + 1; toks[n] = { KEY, w }
      else n = n + 1; toks[n] = { WORD, w } end
      i = j
    elseif b == 45 and string_byte(s, i + 1) == 45 then
      n = n + 1; toks[n] = { COMMENT, "--" }; break
    elseif b == 35 then
      n = n + 1; toks[n] = { COMMENT, "#" }; break
    elseif b == 47 and string_byte(s, i + 1) == 42 then
      local j = string_find(s, "*/", i + 2, true)
      if not j then n = n + 1; toks[n] = { COMMENT, "/*" }; break end
      i = j + 2
    elseif b == 40 then n = n + 1; toks[n] = { LPAR, "(" }; i = i + 1
    elseif b == 41 then n = n + 1; toks[n] = { RPAR, ")" }; i = i + 1
    elseif b == 44 then n = n + 1; toks[n] = { COMMA, "," }; i = i + 1
    elseif b == 59 then n = n + 1; toks[n] = { SEMI, ";" }; i = i + 1
    elseif b == 42 then n = n + 1; toks[n] = { STAR, "*" }; i = i + 1
    elseif (b == 124 and string_byte(s, i + 1) == 124) or (b == 38 and string_byte(s, i + 1) == 38) then
      n = n + 1; toks[n] = { LOGIC, string_sub(s, i, i + 1) }; i = i + 2
    elseif b == 61 or b == 60 or b == 62 or b == 33 or b == 43 or b == 45 or b == 47
        or b == 37 or b == 94 or b == 124 or b == 38 or b == 126 then
      local j = i + 1
      while j <= len and string_find("=<>!|&", string_sub(s, j, j), 1, true) do j = j + 1 end
      n = n + 1; toks[n] = { OP, string_sub(s, i, j - 1) }
      i = j
    else
      n = n + 1; toks[n] = { "x", string_sub(s, i, i) }; i = i + 1
    end
  end
  return toks
end
_M.tokenize = tokenize

local operand = { [NUM] = true, [STR] = true, [WORD] = true, [FUNC] = true, [LPAR] = true, [VAR] = true }

-- starts of a stacked statement that must be followed by SQL to count
local stacked = {
  drop = { table = true, database = true, user = true, view = true, procedure = true },
  delete = { from = true },
  insert = { into = true },
  truncate = { table = true },
  shutdown = true, waitfor = true, declare = true, exec = true, execute = true,
  update = "set", select = "select", create = { table = true, user = true, ["function"] = true },
  alter = { table = true, user = true }, copy = true,
}

-- The reason `toks` (one context) reads as an injection, or nil.
local function judge(toks, ctx)
  local n = #toks
  if n == 0 then return nil end
  local seen_logic_or_op = false
  for i = 1, n do
    local k, t = toks[i][1], toks[i][2]
    local nk, nt = toks[i + 1] and toks[i + 1][1], toks[i + 1] and toks[i + 1][2]
    -- UNION [ALL|DISTINCT] SELECT, anywhere
    if k == KEY and t == "union" then
      local j = i + 1
      if toks[j] and (toks[j][2] == "all" or toks[j][2] == "distinct") then j = j + 1 end
      if toks[j] and toks[j][2] == "select" then return "union select" end
    end
    -- a call that waits, leaks or runs something, inside SQL-looking text
    -- (after an operator: "count(*) of items" alone is not SQL)
    if k == FUNC and bad_funcs[t] and seen_logic_or_op then return "function " .. t end
    -- a subquery: ( SELECT followed by what a select list starts with
    if k == LPAR and nk == KEY and nt == "select" and toks[i + 2] then
      local a, b = toks[i + 2], toks[i + 3]
      if a[1] == FUNC or a[1] == LPAR or a[1] == NUM or a[1] == STAR or a[1] == VAR or a[1] == STR
          or (a[1] == KEY and (a[2] == "case" or a[2] == "top" or a[2] == "distinct"))
          or (a[1] == WORD and b and (b[2] == "from" or b[1] == COMMA))
          or (a[1] == WORD and b and b[1] == RPAR and toks[i - 1]
              and (toks[i - 1][1] == LOGIC or toks[i - 1][1] == OP)) then
        return "subquery"
      end
    end
    if (k == WORD or k == VAR) and (schema[t] or t:match("^@@")) then
      if seen_logic_or_op or ctx ~= "as is" or (toks[i - 1] and toks[i - 1][2] == "from") then
        return "schema " .. t
      end
    end
    if k == KEY and t == "waitfor" and nt == "delay" then return "waitfor delay" end
    -- a stacked statement: ; KEYWORD with what that statement needs after it
    if k == SEMI and nk == KEY then
      local need = stacked[nt]
      local after = toks[i + 2]
      if need == true and (nt == "shutdown" or after) then
        if nt ~= "exec" and nt ~= "execute" or (after and (after[1] == WORD or after[1] == FUNC)) then
          return "stacked " .. nt
        end
      elseif type(need) == "table" and after and need[after[2]] then
        return "stacked " .. nt .. " " .. after[2]
      elseif need == "set" then
        for j = i + 2, math.min(n, i + 4) do if toks[j][2] == "set" then return "stacked update" end end
      elseif need == "select" and after and (after[1] == NUM or after[1] == FUNC or after[1] == STAR or after[1] == VAR) then
        return "stacked select"
      end
    end
    if k == LOGIC or k == OP then seen_logic_or_op = true end
  end
  local k1, k2, k3 = toks[1][1], toks[2] and toks[2][1], toks[3] and toks[3][1]
  local t2 = toks[2] and toks[2][2]
  -- CASE WHEN ... THEN ... ELSE|END: an expression only SQL writes
  for i = 1, n - 3 do
    if toks[i][1] == KEY and toks[i][2] == "case" and toks[i + 1][2] == "when" then
      local then_at
      for j = i + 2, n do
        local t = toks[j][2]
        if t == "then" then then_at = j
        elseif then_at and (t == "else" or t == "end") then return "case when" end
      end
    end
  end
  if ctx ~= "as is" then
    -- a literal closed, then SQL: ' OR ..., ' AND ..., '-- , '; , ') OR
    local j = 2
    while toks[j] and toks[j][1] == RPAR do j = j + 1 end
    local a, b = toks[j], toks[j + 1]
    if a and a[1] == COMMENT and j == n then return "literal closed, then a comment" end
    if a and a[1] == LOGIC and b and operand[b[1]] then
      if toks[j + 2] and (toks[j + 2][1] == OP or toks[j + 2][1] == COMMENT) or toks[j + 2] == nil then
        return "literal closed, then " .. a[2]
      end
      if b[1] == LPAR and toks[j + 2] and (toks[j + 2][1] == STR or toks[j + 2][1] == NUM) then
        return "literal closed, then " .. a[2]
      end
    end
    if a and a[1] == OP and b and (b[1] == STR or b[1] == LPAR or b[1] == FUNC) and toks[j + 2] and toks[j + 2][1] ~= WORD then
      return "literal closed, then " .. a[2]
    end
    if a and a[1] == KEY and (a[2] == "having" or a[2] == "order" or a[2] == "group" or a[2] == "into") and b then
      return "literal closed, then " .. a[2]
    end
    if a and a[1] == OP and b and (b[1] == STR or b[1] == NUM) and j + 1 == n then
      return "literal closed, then " .. a[2]  -- '='
    end
  else
    -- a number or name (closing parentheses after it skipped: "1) OR (1=1"),
    -- then a logical operator and a comparison: 7 OR 1=1
    if n > 2 and toks[2][1] == RPAR and k1 == NUM then
      local j = 2
      while toks[j] and toks[j][1] == RPAR do j = j + 1 end
      if toks[j] and toks[j][1] == LOGIC then
        toks = { toks[1], select(j, unpack(toks)) }
        k2, k3 = toks[2] and toks[2][1], toks[3] and toks[3][1]
        t2 = toks[2] and toks[2][2]
      end
    end
    if (k1 == NUM or k1 == WORD) and k2 == LOGIC and t2 ~= "not" and toks[3] and operand[k3] then
      local c = toks[4]
      if c and (c[1] == OP or c[1] == LOGIC) and toks[5] and operand[toks[5][1]] then
        return "tautology after a value"
      end
      -- "1 or (1=1", "1 and (select ...": a parenthesis that opens a condition
      local cond = k3 == LPAR and c and ((operand[c[1]] and toks[5] and toks[5][1] == OP) or c[2] == "select")
      if k1 == NUM and (k3 == FUNC or cond or (k3 == NUM and c and (c[1] == COMMENT or c[1] == LOGIC))) then
        return "condition after a number"
      end
    end
    if k1 == NUM and k2 == KEY and (t2 == "having" or t2 == "procedure" or t2 == "into" or t2 == "order" or t2 == "group") then
      return "clause after a number"
    end
    if k1 == NUM and k2 == OP and (t2 == "rlike" or t2 == "like" or t2 == "in" or t2 == "regexp") and toks[3] and (k3 == LPAR or k3 == FUNC) then
      return "subquery after a number"
    end
    if k1 == NUM and k2 == COMMENT then return "number, then a comment" end
  end
  return nil
end

--- Whether the decoded value `s` reads as SQL injection: the reason (a short
--- string for the log) or nil.
function _M.detect(s)
  if #s < 2 then return nil end
  if not string_find(s, "[%s'\"`;()=<>|&#%-/*@,]") then return nil end
  if string_find(s, "/*", 1, true) then
    -- closed comments out of the way (versioned ones keep their text); an open
    -- one at the end stays for the tokenizer: it ends an injection ("admin'/*")
    s = string_gsub(string_gsub(s, "/%*!%d*(.-)%*/", " %1 "), "/%*.-%*/", " ")
  end
  local max = 24
  local r = judge(tokenize(s, nil, max), "as is")
  if r then return r end
  if string_find(s, "'", 1, true) then
    r = judge(tokenize(s, "'", max), "after '")
    if r then return r end
  end
  if string_find(s, '"', 1, true) then
    r = judge(tokenize(s, '"', max), 'after "')
    if r then return r end
  end
  return nil
end

return _M
