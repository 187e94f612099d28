-- Run by spec/install_test.sh and spec/luarocks_test.sh under plain lua5.4:
-- requires every Lua module of the tree given as arg[1] (its share/lua/5.4),
-- except the command scripts (they run on load) and server worker scripts.
local dir = assert(arg[1], "usage: lua5.4 plain_lua_modules.lua SHARE_LUA_DIR")
local p = assert(io.popen("cd '" .. dir .. "' && find . -name '*.lua' | sort"))
local n = 0
for f in p:lines() do
  local m = f:gsub("^%./", ""):gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", ".")
  if not m:match("^oflua%.cli%.") and not m:match("worker$") then
    assert(require(m), m)
    n = n + 1
  end
end
p:close()
for _, m in ipairs({ "oflua.core", "oflua.crypto", "oflua.http", "oflua.server", "oflua.store" }) do
  assert(package.searchpath(m, package.cpath), m .. " not on package.cpath")
  require(m)
  n = n + 1
end
assert(n > 25, "only " .. n .. " modules")
print("plain lua5.4 loaded " .. n .. " modules")
