--- Shared helpers for specs: run the built binary, temp files, free ports.
local M = {}

M.bin = os.getenv("OFLUA_BIN") or "build/oflua"
M.source_dir = os.getenv("OFLUA_SOURCE_DIR") or "."

--- Quote a string for /bin/sh.
function M.shq(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- A new empty temporary directory (mktemp -d); the caller removes it.
function M.tmpdir()
  local out, _, code = M.sh("mktemp -d")
  assert(code == 0, "mktemp -d failed")
  return (out:gsub("%s+$", ""))
end

function M.tmpname()
  local p = os.tmpname()
  return p
end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end
M.slurp = slurp

function M.write_file(path, data, mode)
  local f = assert(io.open(path, mode or "wb"))
  f:write(data)
  f:close()
  return path
end

--- Run a shell command line; returns stdout, stderr, exit code.
-- opts.stdin: string fed to the command; opts.env: table of VAR=value.
function M.sh(cmdline, opts)
  opts = opts or {}
  local out, err = os.tmpname(), os.tmpname()
  local prefix = ""
  for k, v in pairs(opts.env or {}) do prefix = prefix .. k .. "=" .. M.shq(v) .. " " end
  local input = "/dev/null"
  if opts.stdin then input = M.write_file(os.tmpname(), opts.stdin) end
  local full = ("%s%s <%s >%s 2>%s"):format(prefix, cmdline, input, out, err)
  local ok, how, code = os.execute(full)
  if opts.stdin then os.remove(input) end
  local o, e = slurp(out), slurp(err)
  os.remove(out)
  os.remove(err)
  if how == "signal" then code = 128 + code end
  return o, e, ok and 0 or code
end

--- Run the oflua binary with arguments (each quoted).
function M.oflua(args, opts)
  local parts = { M.shq(M.bin) }
  for _, a in ipairs(args) do parts[#parts + 1] = M.shq(a) end
  return M.sh(table.concat(parts, " "), opts)
end

--- True while process pid exists (kill -0).
function M.alive(pid) return os.execute("kill -0 " .. pid .. " 2>/dev/null") == true end

--- Polls pred() every `step` seconds (default 0.05) until it returns a true
-- value or `limit` seconds (default 20) pass; returns that value, else pred()'s
-- last answer.
function M.eventually(pred, limit, step)
  local core = require("oflua.core")
  local deadline = core.monotonic() + (limit or 20)
  repeat
    local v = pred()
    if v then return v end
    core.sleep(step or 0.05)
  until core.monotonic() > deadline
  return pred()
end

--- The non-empty lines of a file.
function M.lines(path)
  local out = {}
  for l in slurp(path):gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

return M
