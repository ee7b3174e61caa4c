-- core/api.h is the whole FFI ABI and lua/moongate/ffi.lua its one ffi.cdef
-- (docs/hooks.md): every mg_* function declared in the header must be declared
-- in the cdef with the same return type and parameter list, in the same order,
-- and the numbered constants must agree.
local root = debug.getinfo(1, "S").source:sub(2):match("^(.*)/spec/unit/[^/]*$") or "."

local function read(path)
  local f = assert(io.open(path:sub(1, 1) == "/" and path or root .. "/" .. path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local function strip_comments(s)
  s = s:gsub("/%*.-%*/", " ")
  s = s:gsub("//[^\n]*", " ")
  return s
end

-- Whitespace-insensitive form of a declaration: single spaces, none around
-- punctuation, "*" attached to nothing.
local function normalize(decl)
  decl = decl:gsub("%s+", " ")
  decl = decl:gsub("%s*([%(%),%*])%s*", "%1")
  return (decl:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- The function declarations in C text: list of { name =, decl = } in order.
local function functions(text)
  text = strip_comments(text)
  text = text:gsub("#[^\n]*", " ") -- preprocessor lines
  local out = {}
  -- a declaration: statement text ending in "mg_name(...)" and ";"
  for stmt in text:gmatch("[^;{}]+") do
    local name = stmt:match("(mg_[%w_]+)%s*%b()%s*$")
    if name and not stmt:find("typedef", 1, true) then
      out[#out + 1] = { name = name, decl = normalize(stmt) }
    end
  end
  return out
end

local header = read("core/api.h")
local ffi_lua = read("lua/moongate/ffi.lua")
local cdef = ffi_lua:match("ffi%.cdef%s*(%b[])")

describe("core/api.h and lua/moongate/ffi.lua", function()
  it("ffi.lua has one ffi.cdef", function()
    assert.is_truthy(cdef, "no ffi.cdef [[ ... ]] in ffi.lua")
    local code = ffi_lua:gsub("%-%-[^\n]*", "") -- not the mentions in comments
    local n = select(2, code:gsub("ffi%.cdef%s*[%[%(\"']", ""))
    assert.equal(1, n)
  end)

  local hfuns = functions(header)
  local lfuns = functions(cdef and cdef:sub(3, -3) or "")

  it("api.h declares the functions the hooks use", function()
    assert.is_true(#hfuns >= 25, "only " .. #hfuns .. " declarations parsed from api.h")
    local names = {}
    for _, f in ipairs(hfuns) do names[f.name] = true end
    for _, n in ipairs({ "mg_req_info", "mg_req_header", "mg_req_set_header", "mg_req_respond",
                         "mg_res_set_status", "mg_shdict_incr", "mg_api_worker_id" }) do
      assert.is_true(names[n], n .. " not found in api.h")
    end
  end)

  it("every mg_* function of api.h is in the cdef with the same return type and parameters", function()
    local by_name = {}
    for _, f in ipairs(lfuns) do by_name[f.name] = f.decl end
    for _, f in ipairs(hfuns) do
      assert.is_truthy(by_name[f.name], f.name .. " is declared in api.h but not in ffi.lua")
      assert.equal(f.decl, by_name[f.name], f.name .. " differs")
    end
  end)

  it("the cdef declares nothing api.h does not, and in the same order", function()
    local hn, ln = {}, {}
    for i, f in ipairs(hfuns) do hn[i] = f.name end
    for i, f in ipairs(lfuns) do ln[i] = f.name end
    assert.same(hn, ln)
  end)

  it("declarations are compared whitespace-insensitively, not by text", function()
    assert.equal("int mg_x(mg_req_t*r,const char*p,size_t len)",
      normalize("int  mg_x(mg_req_t *r,\n    const char * p, size_t   len)"))
    assert.are_not.equal(normalize("int mg_x(int a, int b)"), normalize("int mg_x(int a, long b)"))
  end)

  it("the MG_API_E*, MG_HDR_* and MG_HOOK_* numbers agree with ffi.lua's table", function()
    local ok, abi = pcall(require, "moongate.ffi")
    assert.is_true(ok, tostring(abi))
    local consts = {}
    for name, value in strip_comments(header):gmatch("(MG_[%u_]+)%s*=%s*(%-?%d+)") do
      consts[name] = tonumber(value)
    end
    assert.equal(consts.MG_API_ENOTFOUND, abi.ENOTFOUND)
    assert.equal(consts.MG_API_EPHASE, abi.EPHASE)
    assert.equal(consts.MG_API_EINVAL, abi.EINVAL)
    assert.equal(consts.MG_API_ENOMEM, abi.ENOMEM)
    assert.equal(consts.MG_API_EAGAIN, abi.EAGAIN)
    assert.equal(consts.MG_HDR_SET, abi.HDR_SET)
    assert.equal(consts.MG_HDR_ADD, abi.HDR_ADD)
    assert.equal(consts.MG_HDR_DEL, abi.HDR_DEL)
    -- hook numbers: C's come from the header CMake generates from moongate.hooks
    local bin = os.getenv("MOONGATE_BIN") or "build/moongate"
    local gen = read(bin:match("^(.*)/[^/]*$") .. "/gen/mg_hooks.h")
    local hconsts = {}
    for name, value in strip_comments(gen):gmatch("(MG_HOOK_[%u_]+)%s*=%s*(%d+)") do
      hconsts[name] = tonumber(value)
    end
    local list = require "moongate.hooks"
    for i, h in ipairs(list) do
      assert.equal(i - 1, hconsts["MG_HOOK_" .. h[1]:upper()], "hook " .. h[1] .. " in mg_hooks.h")
      assert.equal(i - 1, abi.hooks[h[1]], "hook " .. h[1] .. " in moongate.ffi")
    end
    assert.equal(#list, hconsts.MG_HOOK_MAX)
    assert.equal(hconsts.MG_HOOK_RESPOND, abi.HOOK_RESPOND)
    local names = {}
    for n in gen:match("#define MG_HOOK_NAMES([^\n]*)"):gmatch('"([a-z_]+)"') do names[#names + 1] = n end
    for i, h in ipairs(list) do assert.equal(h[1], names[i]) end
    assert.equal(#list, #names)
    -- and the cdef's own copies of the enums
    for _, name in ipairs({ "MG_API_ENOTFOUND", "MG_API_EPHASE", "MG_API_EINVAL", "MG_API_ENOMEM", "MG_API_EAGAIN",
                            "MG_HDR_SET", "MG_HDR_ADD", "MG_HDR_DEL" }) do
      local v = cdef:match(name .. "%s*=%s*(%-?%d+)")
      assert.equal(consts[name], tonumber(v), name .. " in the cdef")
    end
  end)

  it("the mg_req_info_t layout is the same in both", function()
    local function struct(text)
      local body = strip_comments(text):match("typedef%s+struct%s*(%b{})%s*mg_req_info_t%s*;")
      return body and normalize(body)
    end
    assert.is_truthy(struct(header))
    assert.equal(struct(header), struct(cdef))
  end)
end)
