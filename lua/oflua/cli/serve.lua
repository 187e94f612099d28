-- oflua serve: run an HTTP app (a Lua handler script) on oflua.server
local cli = require("oflua.cliutil")

local USAGE = [[
usage: oflua serve APP.lua [options] [-- args...]

Serves HTTP with APP.lua in every worker: the script returns a handler
function(req) -> status, body, headers, a router (oflua.router), or
{handler = ..., shutdown = fn}. Arguments after the script are passed to it
as an array (its `...`). Stops gracefully on SIGINT/SIGTERM (requests in
flight are finished first).

Options:
  --host H          address to listen on (default 127.0.0.1)
  -p, --port N      port (default 8080; 0 picks a free one)
  -w, --workers N   worker threads, each with its own Lua VM (default 2)
  --max-body BYTES  largest request body accepted (default 1048576)
  -h, --help        this help

Prints "listening on http://HOST:PORT" once ready.
]]

local opts = cli.parse({ ... }, {
  options = { host = "string", port = "number", workers = "number", ["max-body"] = "number" },
  aliases = { p = "port", w = "workers" },
})
if opts.help then
  io.write(USAGE)
  return 0
end

local script = opts._[1]
if not script then cli.fail("missing the app script (see --help)") end
local f, ferr = io.open(script, "r")
if not f then cli.fail(ferr) end
f:close()

local function int_opt(name, value, lo, hi)
  if value == nil then return nil end
  local n = math.tointeger(value)
  if not n or n < lo or n > hi then
    cli.fail(("--%s must be an integer within [%d, %d]"):format(name, lo, hi))
  end
  return n
end

local args = {}
for i = 2, #opts._ do args[#args + 1] = opts._[i] end

local server = require("oflua.server")
local srv, err = server.listen({
  host = opts.host,
  port = int_opt("port", opts.port, 0, 65535) or 8080,
  workers = int_opt("workers", opts.workers, 1, 256),
  max_body = int_opt("max-body", opts.max_body, 0, 1 << 40),
  script = script,
  args = args,
  handle_signals = true,
})
if not srv then cli.fail(err) end

io.stdout:write("listening on ", srv:url(), "\n")
io.stdout:flush()
srv:wait()
srv:close()
return 0
