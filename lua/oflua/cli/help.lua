-- oflua help: list the subcommands and the interpreter options.
local core = require("oflua.core")

local dir = core.lua_dir .. "/oflua/cli"
local names = core.listdir(dir) or {}
local summaries = {}
for _, file in ipairs(names) do
  local name = file:match("^(.-)%.lua$")
  if name then
    local f = io.open(dir .. "/" .. file, "r")
    local first = f and f:read("l") or ""
    if f then f:close() end
    summaries[#summaries + 1] = { name, first:match("^%-%-%s*oflua [%w%-_]+:%s*(.*)$") or "" }
  end
end

io.write([==[
oflua: Lua 5.4 with native HTTP, crypto and encrypted storage, and the ofauth library.

usage: oflua [options] [script [args]]   run a Lua script (like lua5.4)
       oflua <command> [args]            run a command (each takes --help)

Commands:
]==])
for _, s in ipairs(summaries) do io.write(("  %-10s %s\n"):format(s[1], s[2])) end
io.write([==[

Interpreter options:
  -e stat   execute string 'stat'
  -i        enter interactive mode after executing 'script'
  -l mod    require library 'mod' into global 'mod' (-l g=mod: into global 'g')
  -v        show version information
  -E        ignore environment variables
  -W        turn warnings on
  --        stop handling options
  -         stop handling options and execute stdin

A first argument containing '/' or ending in '.lua' is always a script.
]==])
return 0
