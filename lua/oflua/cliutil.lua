--- Shared helpers for `oflua <command>` scripts (lua/oflua/cli/*.lua).
--
-- A command file receives its arguments as `...`, returns an exit status
-- (nil or true = 0) and reports user errors with `cli.fail(msg)`, which the
-- binary prints as one line `oflua <command>: msg` with exit status 1 (no
-- traceback: tracebacks are for bugs).
local M = {}

local CliError = {}
CliError.__index = CliError
CliError.__tostring = function(e) return e.message end

--- Raise a user-facing error: one line on stderr, exit status `status` (1).
function M.fail(msg, status)
  error(setmetatable({ message = tostring(msg), status = status or 1 }, CliError), 0)
end

function M.is_error(e) return getmetatable(e) == CliError end

--- Parse `argv` against a spec:
--   spec = { flags = { json = true }, options = { port = "number", store = "string" },
--            aliases = { p = "port" } }
-- Accepts `--name value`, `--name=value`, `-p value`, `--flag`, `--` (end of
-- options). Returns opts (with `opts._` the positional arguments).
-- Unknown options and missing values fail with a clear message.
function M.parse(argv, spec)
  spec = spec or {}
  local flags, options, aliases = spec.flags or {}, spec.options or {}, spec.aliases or {}
  flags.help = true
  aliases.h = aliases.h or "help"
  local opts, pos = {}, {}
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if a == "--" then
      for j = i + 1, #argv do pos[#pos + 1] = argv[j] end
      break
    end
    local name, value = a:match("^%-%-([%w][%w%-_]*)=(.*)$")
    if not name then name = a:match("^%-%-([%w][%w%-_]*)$") or a:match("^%-(%a)$") end
    if name then
      name = aliases[name] or name
      local key = name:gsub("%-", "_")
      if flags[name] or flags[key] then
        if value ~= nil then M.fail(("option --%s takes no value"):format(name)) end
        opts[key] = true
      elseif options[name] or options[key] then
        if value == nil then
          i = i + 1
          value = argv[i]
          -- "--user --redirect-url x" is a forgotten value, not a user named
          -- "--redirect-url" (a value that starts with "--" goes as --opt=value)
          if value == nil or value:match("^%-%-%a") then
            M.fail(("option --%s needs a value"):format(name))
          end
        end
        local kind = options[name] or options[key]
        if kind == "number" then
          local n = tonumber(value)
          if not n then M.fail(("option --%s needs a number, got %q"):format(name, value)) end
          value = n
        elseif kind == "list" then
          local list = opts[key] or {}
          list[#list + 1] = value
          value = list
        end
        opts[key] = value
      else
        M.fail(("unknown option '%s' (see --help)"):format(a))
      end
    elseif a:sub(1, 1) == "-" and a ~= "-" then
      M.fail(("unknown option '%s' (see --help)"):format(a))
    else
      pos[#pos + 1] = a
    end
    i = i + 1
  end
  opts._ = pos
  return opts
end

--- For commands with sub-commands (`oflua webhook sign ...`): the
-- sub-command's name and its parsed options; or nil and the exit status once
-- the usage text was printed (none given: status 1; help or --help: 0).
function M.subcommand(argv, usage, spec)
  local args = { table.unpack(argv) }
  local command = table.remove(args, 1)
  if command == nil or command == "--help" or command == "-h" or command == "help" then
    io.write(usage)
    return nil, command and 0 or 1
  end
  local opts = M.parse(args, spec)
  if opts.help then
    io.write(usage)
    return nil, 0
  end
  return command, opts
end

--- First non-empty of the given values (flag, then environment variables).
function M.pick(...)
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if v ~= nil and v ~= "" then return v end
  end
  return nil
end

--- Value of an environment variable, nil when unset or empty.
function M.env(name)
  local v = os.getenv(name)
  if v == "" then return nil end
  return v
end

function M.printf(fmt, ...) io.stdout:write(fmt:format(...)) end
function M.eprintf(fmt, ...) io.stderr:write(fmt:format(...)) end

return M
