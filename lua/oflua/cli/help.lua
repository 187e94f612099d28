-- oflua help: list the commands, or show one command's help (oflua help CMD [SUB])
local cli = require("oflua.cliutil")
local core = require("oflua.core")

local help_cmd = cli.command({
  name = "help", summary = "list the commands, or show one command's help",
  args = "[command [subcommand]]", max_args = 2,
  description = "Lists the commands; with a command (and subcommand) name, prints that command's\n"
    .. "own usage: every flag and the environment variables it reads.",
})

local dir = core.lua_dir .. "/oflua/cli"

--- Every command: {name, summary, cmd (its cli.command description or nil)}.
local function commands()
  local list = {}
  for _, file in ipairs(core.listdir(dir) or {}) do
    local name = file:match("^(.-)%.lua$")
    if name then
      local entry = { name = name, summary = "" }
      local f = io.open(dir .. "/" .. file, "r")
      local text = f and f:read("a") or ""
      if f then f:close() end
      -- only files that describe themselves: any other would run
      local chunk = text:find("cli%.command%(") and loadfile(dir .. "/" .. file)
      if chunk then
        cli.describing = true
        local ok, e = pcall(chunk)
        cli.describing = false
        if not ok and cli.is_describe(e) then
          entry.cmd = e.describe
          entry.summary = e.describe.def.summary or ""
        end
      end
      if entry.summary == "" then
        local first = text:match("^[^\n]*")
        entry.summary = first:match("^%-%-%s*oflua [%w%-_]+:%s*(.*)$") or ""
      end
      list[#list + 1] = entry
    end
  end
  return list
end

local function names(list)
  local out = {}
  for i, c in ipairs(list) do out[i] = c.name end
  return out
end

local function global_help(list)
  local b = { [==[
oflua: Lua 5.4 with native HTTP, crypto and encrypted storage, and the ofauth library.

usage: oflua [options] [script [args]]   run a Lua script (like lua5.4)
       oflua <command> [args]            run a command

Commands:
]==] }
  local rows = {}
  for _, c in ipairs(list) do rows[#rows + 1] = "  " .. cli.pad(c.name, 10) .. " " .. c.summary end
  b[#b + 1] = table.concat(rows, "\n") .. "\n"
  b[#b + 1] = [==[

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
Run 'oflua help <command> [<subcommand>]' or 'oflua <command> --help' for a
command's options and the environment variables it reads; 'man oflua' for all.
]==]
  return table.concat(b)
end

local argv = { ... }
local first = argv[1]

if first == "--unknown" then -- from the binary: `oflua servee`
  local word = argv[2] or ""
  io.stderr:write(("oflua: unknown command or script '%s'%s\nRun 'oflua --help' for usage.\n"):format(word,
    cli.did_you_mean(word, names(commands()), "oflua ")))
  cli.exit(2)
end

if first == "--complete" then -- words for bash completion: oflua help --complete [CMD [SUB]]
  local list = commands()
  if not argv[2] then
    local out = names(list)
    out[#out + 1] = "--help"
    out[#out + 1] = "--version"
    print(table.concat(out, "\n"))
    return 0
  end
  for _, c in ipairs(list) do
    if c.name == argv[2] and c.cmd then
      print(table.concat(c.cmd:words(argv[3]), "\n"))
    end
  end
  return 0
end

if first == "--man" then -- the man page, from the same descriptions as --help
  io.write(require("oflua.manpage").render(commands(), global_help(commands())))
  return 0
end

if first == nil then
  io.write(global_help(commands()))
  return 0
end
if first == "--help" or first == "-h" then
  io.write(help_cmd:usage())
  return 0
end

-- oflua help CMD [SUB]: the command's own help.
local list = commands()
for _, c in ipairs(list) do
  if c.name == first then
    if #argv > 3 or (argv[3] and not c.cmd) then
      cli.usage_error(("unexpected argument '%s'"):format(argv[#argv]), "oflua help")
    end
    if c.cmd then
      local sub = argv[2]
      if sub and not c.cmd.by_name[sub] then
        local subs = {}
        for _, s in ipairs(c.cmd.def.subcommands or {}) do subs[#subs + 1] = s.name end
        cli.usage_error(("unknown command '%s' for 'oflua %s'%s"):format(sub, c.name,
          cli.did_you_mean(sub, subs)), "oflua " .. c.name)
      end
      io.write(c.cmd:usage(sub))
      return 0
    end
    -- a command without a description: ask it
    local chunk = assert(loadfile(dir .. "/" .. c.name .. ".lua"))
    return chunk(argv[2] or "--help", argv[2] and "--help" or nil)
  end
end
cli.usage_error(("unknown command '%s'%s"):format(first, cli.did_you_mean(first, names(list))),
  "oflua help")
