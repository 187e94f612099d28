--- The command-line framework of `oflua <command>` (lua/oflua/cli/*.lua).
--
-- A command file describes itself once with `cli.command{...}` (name,
-- summary, flags with their help text, environment variables, subcommands)
-- and gets its parsed options from `cmd:parse({...})`. From that one
-- description come: `oflua help CMD [SUB]` and `CMD [SUB] --help`, the man
-- page and bash completion (scripts/lib/manpage.lua, `oflua help --complete`),
-- did-you-mean for commands and flags, and usage errors (exit status 2,
-- before any request) for unknown flags, missing or extra arguments and
-- numbers out of range. The conventions are gh's and git's:
--   * help goes to stdout with status 0; usage errors to stderr with status 2;
--   * a user error is one line `oflua CMD: message` with status 1 (no
--     traceback: tracebacks are for bugs); with --json it is a JSON object
--     {"error": {...}} on stdout instead;
--   * progress only on stderr, only when stderr is a terminal, erased before
--     anything else is written; colour only on a terminal, never with
--     NO_COLOR or --no-color; --quiet silences the library's log lines.
-- A command file returns its exit status (nil or true = 0).
local M = {}

local CliError = {}
CliError.__index = CliError
CliError.__tostring = function(e) return e.message end

--- Raise a user-facing error: one line on stderr, exit status `status` (1).
-- In --json mode the error is printed as JSON on stdout and nothing on stderr.
function M.fail(msg, status)
  msg = tostring(msg)
  if M.json_errors then
    local ok, cjson = pcall(require, "cjson")
    if ok then
      io.stdout:write(cjson.encode({ error = { message = msg, status = status or 1 } }), "\n")
      io.stdout:flush()
      error(setmetatable({ message = msg, status = status or 1, silent = true }, CliError), 0)
    end
  end
  error(setmetatable({ message = msg, status = status or 1 }, CliError), 0)
end

--- A usage error: exit status 2, with a pointer to the right --help.
function M.usage_error(msg, help_cmd)
  if help_cmd then msg = msg .. ("\nRun '%s --help' for usage."):format(help_cmd) end
  M.fail(msg, 2)
end

--- Leave with exit status `status` once the command printed its own result.
function M.exit(status)
  error(setmetatable({ message = "", status = status, silent = true }, CliError), 0)
end

function M.is_error(e) return getmetatable(e) == CliError end

-- ---- did you mean ---------------------------------------------------------

local function distance(a, b)
  local prev, cur = {}, {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    cur[0] = i
    for j = 1, #b do
      local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev, cur = cur, prev
  end
  return prev[#b]
end

--- The candidates close to `word` (edit distance <= 2, or a prefix), best first.
function M.suggest(word, candidates)
  local scored = {}
  for _, c in ipairs(candidates) do
    local d = distance(word, c)
    if c:sub(1, #word) == word and #word >= 2 then d = math.min(d, 1) end
    if d <= math.max(1, math.min(2, #word // 3)) then scored[#scored + 1] = { c, d } end
  end
  table.sort(scored, function(x, y) return x[2] < y[2] or (x[2] == y[2] and x[1] < y[1]) end)
  local out = {}
  for i, s in ipairs(scored) do out[i] = s[1] end
  return out
end

local function did_you_mean(word, candidates, prefix)
  local s = M.suggest(word, candidates)
  if #s == 0 then return "" end
  return ("\n\nDid you mean this?\n\t%s%s"):format(prefix or "", table.concat(s, "\n\t" .. (prefix or "")))
end
M.did_you_mean = did_you_mean

-- ---- terminal: colour, display width, progress ----------------------------

local function isatty(fd)
  local ok, core = pcall(require, "oflua.core")
  return ok and core.isatty(fd) or false
end

M.no_color = false

--- Whether to colour what goes to file descriptor `fd` (1 or 2).
function M.color(fd)
  if M.no_color then return false end
  local nc = os.getenv("NO_COLOR")
  if nc ~= nil and nc ~= "" then return false end
  if os.getenv("TERM") == "dumb" then return false end
  return isatty(fd or 1)
end

local SGR = { bold = "1", dim = "2", red = "31", green = "32", yellow = "33", cyan = "36" }
--- `s` in colour `name` (bold, dim, red, green, yellow, cyan) when fd is a terminal.
function M.paint(s, name, fd)
  if not M.color(fd or 1) then return s end
  return "\27[" .. SGR[name] .. "m" .. s .. "\27[0m"
end

-- East Asian wide and emoji ranges take two columns; combining marks none.
local WIDE = { { 0x1100, 0x115F }, { 0x2E80, 0xA4CF }, { 0xAC00, 0xD7A3 }, { 0xF900, 0xFAFF },
  { 0xFE30, 0xFE4F }, { 0xFF00, 0xFF60 }, { 0xFFE0, 0xFFE6 }, { 0x1F300, 0x1FAFF },
  { 0x20000, 0x3FFFD } }
local function cp_width(c)
  if c < 32 or (c >= 0x7F and c < 0xA0) then return 0 end
  if (c >= 0x300 and c <= 0x36F) or c == 0x200B or (c >= 0xFE00 and c <= 0xFE0F) then return 0 end
  for _, r in ipairs(WIDE) do
    if c >= r[1] and c <= r[2] then return 2 end
  end
  return 1
end

--- Display width of `s` in terminal columns (UTF-8; bytes when not UTF-8).
function M.width(s)
  s = tostring(s)
  if not utf8.len(s) then return #s end
  local w = 0
  for _, c in utf8.codes(s) do w = w + cp_width(c) end
  return w
end

--- `s` cut to at most `w` columns (ending in "…" when cut).
function M.truncate(s, w)
  s = tostring(s)
  if M.width(s) <= w then return s end
  if not utf8.len(s) then return s:sub(1, w - 1) .. "~" end
  local out, used = {}, 0
  for _, c in utf8.codes(s) do
    local cw = cp_width(c)
    if used + cw > w - 1 then break end
    out[#out + 1] = utf8.char(c)
    used = used + cw
  end
  return table.concat(out) .. "…"
end

--- `s` padded with spaces to `w` columns (never cut).
function M.pad(s, w)
  s = tostring(s)
  local n = w - M.width(s)
  return n > 0 and s .. (" "):rep(n) or s
end

--- A progress line on stderr: drawn only when stderr is a terminal (and not
-- quiet), redrawn at most every 0.1 s, erased by :clear() (call it before
-- writing anything else) and at :done().
function M.progress(quiet)
  local ok, core = pcall(require, "oflua.core")
  local p = { on = not quiet and isatty(2), shown = false, last = -1 }
  local clock = ok and core.monotonic or os.clock
  function p:update(text)
    if not self.on then return end
    local t = clock()
    if t - self.last < 0.1 then return end
    self.last = t
    io.stderr:write("\r\27[K", text)
    io.stderr:flush()
    self.shown = true
  end
  function p:clear()
    if self.shown then
      io.stderr:write("\r\27[K")
      io.stderr:flush()
      self.shown = false
      self.last = -1
    end
  end
  p.done = p.clear
  return p
end

-- ---- parsing ---------------------------------------------------------------

local function in_range(name, n, r)
  if r.integer and math.type(n) ~= "integer" and n ~= math.floor(n) then
    return ("option --%s needs a whole number, got %s"):format(name, n)
  end
  if (r.min and n < r.min) or (r.max and n > r.max) then
    if r.min and r.max then
      return ("option --%s must be between %s and %s, got %s"):format(name, r.min, r.max, n)
    elseif r.min then
      return ("option --%s must be at least %s, got %s"):format(name, r.min, n)
    end
    return ("option --%s must be at most %s, got %s"):format(name, r.max, n)
  end
end

--- Parse `argv` against a spec:
--   spec = { flags = { json = true }, options = { port = "number", store = "string" },
--            aliases = { p = "port" }, ranges = { port = {min = 0, max = 65535, integer = true} },
--            choices = { scheme = {"svix", "checklist"} }, max_args = 1, min_args = 0,
--            help_cmd = "oflua serve" }
-- Accepts `--name value`, `--name=value`, `-p value`, `--flag`, `--` (end of
-- options). Returns opts (with `opts._` the positional arguments). Unknown
-- options (with a suggestion), missing values, bad numbers and extra
-- arguments are usage errors (exit status 2).
function M.parse(argv, spec)
  spec = spec or {}
  local flags, options, aliases = spec.flags or {}, spec.options or {}, spec.aliases or {}
  flags.help = true
  flags.no_color = true
  aliases.h = aliases.h or "help"
  local hc = spec.help_cmd
  local opts, pos = {}, {}
  local function known()
    local names = {}
    for k in pairs(flags) do names[#names + 1] = "--" .. k:gsub("_", "-") end
    for k in pairs(options) do names[#names + 1] = "--" .. k:gsub("_", "-") end
    table.sort(names)
    return names
  end
  local function unknown(a)
    local word = a:match("^(%-%-?[^=]*)") or a
    M.usage_error(("unknown option '%s'%s"):format(word, did_you_mean(word, known())), hc)
  end
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
        if value ~= nil then M.usage_error(("option --%s takes no value"):format(name), hc) end
        opts[key] = true
      elseif options[name] or options[key] then
        if value == nil then
          i = i + 1
          value = argv[i]
          -- "--user --redirect-url x" is a forgotten value, not a user named
          -- "--redirect-url" (a value that starts with "--" goes as --opt=value)
          if value == nil or value:match("^%-%-%a") then
            M.usage_error(("option --%s needs a value"):format(name), hc)
          end
        end
        local kind = options[name] or options[key]
        if kind == "number" then
          local n = tonumber(value)
          if not n or n ~= n or n == math.huge or n == -math.huge then
            M.usage_error(("option --%s needs a number, got %q"):format(name, value), hc)
          end
          local r = spec.ranges and spec.ranges[key]
          local why = r and in_range(name, n, r)
          if why then M.usage_error(why, hc) end
          value = r and r.integer and math.tointeger(n) or n
        elseif kind == "list" then
          local list = opts[key] or {}
          list[#list + 1] = value
          value = list
        end
        local choices = spec.choices and spec.choices[key]
        if choices then
          local okc = false
          for _, c in ipairs(choices) do okc = okc or c == value end
          if not okc then
            M.usage_error(("option --%s must be one of: %s (got %q)"):format(name, table.concat(choices, ", "),
              tostring(value)) .. did_you_mean(tostring(value), choices), hc)
          end
        end
        opts[key] = value
      else
        unknown(a)
      end
    elseif a:sub(1, 1) == "-" and a ~= "-" and not tonumber(a) then
      unknown(a)
    else
      pos[#pos + 1] = a
    end
    i = i + 1
  end
  opts._ = pos
  if not opts.help then
    if spec.max_args and #pos > spec.max_args then
      M.usage_error(("unexpected argument '%s'"):format(pos[spec.max_args + 1]), hc)
    end
    if spec.min_args and #pos < spec.min_args then
      M.usage_error("missing argument" .. (spec.args_text and (" " .. spec.args_text) or ""), hc)
    end
  end
  if opts.no_color then M.no_color = true end
  return opts
end

-- ---- command descriptions --------------------------------------------------

-- Flags every command takes.
M.GLOBAL_FLAGS = {
  { "no-color", false, "no colour in the output (also when NO_COLOR is set or not a terminal)" },
  { "help", false, "show this help", short = "h" },
}
-- What the common flags mean, so a command lists them with one word.
M.COMMON = {
  json = { "json", false, "machine-readable JSON output, errors included" },
  quiet = { "quiet", false, "no progress line and no log lines (retries, requests) on stderr" },
}
-- Environment variables and what they mean, shared by every help text.
M.ENV = {
  OFAUTH_API_KEY = "the API key (a Sandbox key for every test)",
  OFAUTH_BASE_URL = "API base URL (default https://api.ofauth.com)",
  OFAUTH_WEBHOOK_SECRET = "the webhook signing secret (whsec_<base64> for svix)",
  OFLUA_STORE = "the encrypted store: a SQLite file path or a postgresql:// URL",
  OFLUA_STORE_KEY_FILE = "file holding the store's master key (mode 0600)",
  OFLUA_STORE_KEY = "the store's master key, when no key file is given",
  OFAUTH_LOG = "log level of the library's JSON lines: off, error, warn, info (default), debug",
  OFAUTH_REDIRECT_URL = "a Link redirect URI registered in the dashboard",
  OFAUTH_WEBHOOK_URL = "your webhook endpoint",
  NO_COLOR = "no colour when set (https://no-color.org)",
}

local Command = {}
Command.__index = Command

local function flag_entry(f)
  if type(f) == "string" then
    local c = M.COMMON[f]
    assert(c, "unknown common flag " .. f)
    return c
  end
  return f
end

local function flag_list(def, sub)
  local out = {}
  for _, f in ipairs(sub and sub.flags or {}) do out[#out + 1] = flag_entry(f) end
  for _, f in ipairs(def.flags or {}) do out[#out + 1] = flag_entry(f) end
  for _, f in ipairs(M.GLOBAL_FLAGS) do out[#out + 1] = f end
  return out
end

local function env_list(def, sub)
  local seen, out = {}, {}
  for _, list in ipairs({ sub and sub.env or {}, def.env or {} }) do
    for _, e in ipairs(list) do
      local name = type(e) == "table" and e[1] or e
      if not seen[name] then
        seen[name] = true
        out[#out + 1] = { name, type(e) == "table" and e[2] or M.ENV[name] or "" }
      end
    end
  end
  return out
end

local function to_spec(def, sub)
  local spec = { flags = {}, options = {}, aliases = {}, ranges = {}, choices = {} }
  for _, f in ipairs(flag_list(def, sub)) do
    local key = f[1]:gsub("%-", "_")
    if f[2] then
      spec.options[key] = f.type or "string"
      if f.min or f.max or f.integer then
        spec.ranges[key] = { min = f.min, max = f.max, integer = f.integer }
      end
      if f.choices then spec.choices[key] = f.choices end
    else
      spec.flags[key] = true
    end
    if f.short then spec.aliases[f.short] = f[1] end
  end
  local holder = sub or def
  spec.max_args = holder.max_args
  spec.min_args = holder.min_args
  spec.args_text = holder.args
  spec.help_cmd = "oflua " .. def.name .. (sub and (" " .. sub.name) or "")
  return spec
end

--- Describe a command: see the file comment. def = {name, summary, args,
-- description, flags, env, subcommands = {{name, summary, args, description,
-- flags, env, max_args, min_args}, ...}, max_args, min_args, footer}.
-- A flag is {long, ARG or false, help, short = "p", type = "number"|"list",
-- min =, max =, integer = true, choices = {...}}, or the name of a common
-- flag ("json", "quiet").
function M.command(def)
  local self = setmetatable({ def = def, by_name = {} }, Command)
  for _, s in ipairs(def.subcommands or {}) do self.by_name[s.name] = s end
  if M.describing then error(setmetatable({ describe = self }, CliError), 0) end
  return self
end

function M.is_describe(e) return getmetatable(e) == CliError and e.describe ~= nil end

local function wrap_rows(rows, indent)
  local w = 0
  for _, r in ipairs(rows) do
    local rw = M.width(r[1])
    if rw <= 28 and rw > w then w = rw end
  end
  local out = {}
  for _, r in ipairs(rows) do
    if M.width(r[1]) > w then
      out[#out + 1] = indent .. r[1]
      out[#out + 1] = indent .. (" "):rep(w + 2) .. r[2]
    else
      out[#out + 1] = indent .. M.pad(r[1], w) .. "  " .. r[2]
    end
  end
  return table.concat(out, "\n")
end

local function flag_rows(flags)
  local rows = {}
  for _, f in ipairs(flags) do
    local left = (f.short and ("-" .. f.short .. ", ") or "") .. "--" .. f[1]
    if f[2] then left = left .. " " .. f[2] end
    local help = f[3] or ""
    if f.type == "list" then help = help .. " (repeatable)" end
    rows[#rows + 1] = { left, help }
  end
  return rows
end

--- The usage text of the command (sub = nil) or of one subcommand.
function Command:usage(subname)
  local def = self.def
  local sub = subname and self.by_name[subname] or nil
  local b = {}
  if sub then
    b[#b + 1] = ("usage: oflua %s %s [options]%s"):format(def.name, sub.name,
      sub.args and (" " .. sub.args) or "")
    b[#b + 1] = ""
    b[#b + 1] = sub.description or sub.summary or ""
  else
    local args = def.args or (def.subcommands and "<command>" or "")
    if def.subcommands then
      b[#b + 1] = ("usage: oflua %s <command> [options] [args]"):format(def.name)
    else
      b[#b + 1] = ("usage: oflua %s [options]%s"):format(def.name, args ~= "" and (" " .. args) or "")
    end
    b[#b + 1] = ""
    b[#b + 1] = def.description or def.summary or ""
    if def.subcommands then
      b[#b + 1] = ""
      b[#b + 1] = "Commands:"
      local rows = {}
      for _, s in ipairs(def.subcommands) do
        rows[#rows + 1] = { s.name .. (s.args and (" " .. s.args) or ""), s.summary or "" }
      end
      b[#b + 1] = wrap_rows(rows, "  ")
    end
  end
  b[#b + 1] = ""
  b[#b + 1] = "Options:"
  b[#b + 1] = wrap_rows(flag_rows(flag_list(def, sub)), "  ")
  local env = env_list(def, sub)
  if #env > 0 then
    b[#b + 1] = ""
    b[#b + 1] = "Environment:"
    local rows = {}
    for _, e in ipairs(env) do rows[#rows + 1] = { e[1], e[2] } end
    b[#b + 1] = wrap_rows(rows, "  ")
  end
  local footer = sub and sub.footer or (not sub and def.footer)
  if footer then
    b[#b + 1] = ""
    b[#b + 1] = footer
  end
  if def.subcommands and not sub then
    b[#b + 1] = ""
    b[#b + 1] = ("Run 'oflua %s <command> --help' for a command's options."):format(def.name)
  end
  return (table.concat(b, "\n"):gsub("\n\n\n+", "\n\n")) .. "\n"
end

--- Names of the subcommands and flags, for completion.
function Command:words(subname)
  local words = {}
  local sub = subname and self.by_name[subname]
  if self.def.subcommands and not sub then
    for _, s in ipairs(self.def.subcommands) do words[#words + 1] = s.name end
  end
  for _, f in ipairs(flag_list(self.def, sub)) do words[#words + 1] = "--" .. f[1] end
  return words
end

--- Parse the command's arguments. Returns (subcommand name or true, opts),
-- or (nil, exit status) once help was printed. Usage errors raise.
function Command:parse(argv)
  local def = self.def
  argv = { table.unpack(argv) }
  local sub
  if def.subcommands then
    local name = argv[1]
    if name == nil then
      io.stderr:write(self:usage())
      return nil, 2
    end
    if name == "--help" or name == "-h" or name == "help" then
      if name == "help" and argv[2] and self.by_name[argv[2]] then
        io.write(self:usage(argv[2]))
      else
        io.write(self:usage())
      end
      return nil, 0
    end
    sub = self.by_name[name]
    if not sub then
      local names = {}
      for _, s in ipairs(def.subcommands) do names[#names + 1] = s.name end
      M.usage_error(("unknown command '%s' for 'oflua %s'%s"):format(name, def.name,
        did_you_mean(name, names)), "oflua " .. def.name)
    end
    table.remove(argv, 1)
  end
  local opts = M.parse(argv, to_spec(def, sub))
  if opts.help then
    io.write(self:usage(sub and sub.name))
    return nil, 0
  end
  if opts.json then M.json_errors = true end
  if opts.quiet then
    local ok, log = pcall(require, "ofauth.log")
    if ok then log.level = "error" end
  end
  return sub and sub.name or true, opts
end

-- ---- small helpers ---------------------------------------------------------

--- For commands with sub-commands that do not use cli.command yet: the
-- sub-command's name and its parsed options; or nil and the exit status once
-- the usage text was printed (none given: status 2; help or --help: 0).
function M.subcommand(argv, usage, spec)
  local args = { table.unpack(argv) }
  local command = table.remove(args, 1)
  if command == nil or command == "--help" or command == "-h" or command == "help" then
    if command == nil then io.stderr:write(usage) else io.write(usage) end
    return nil, command and 0 or 2
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

--- Write `text` to `path` atomically (temporary file, then rename): for
-- --ready-file, which scripts poll for.
function M.write_atomic(path, text)
  local tmp = path .. ".tmp"
  local f, err = io.open(tmp, "w")
  if not f then return nil, err end
  local ok, werr = f:write(text)
  if not ok then
    f:close()
    os.remove(tmp)
    return nil, werr
  end
  f:close()
  local rok, rerr = os.rename(tmp, path)
  if not rok then
    os.remove(tmp)
    return nil, rerr
  end
  return true
end

return M
