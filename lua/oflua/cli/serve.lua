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
  --host H                  address to listen on (default 127.0.0.1)
  -p, --port N              port (default 8080; 0 picks a free one)
  -w, --workers N           worker threads, each with its own Lua VM (default 2)
  --io-threads N            threads doing the network I/O (default 2)
  --max-body BYTES          largest request body accepted (default 1048576)
  --max-header BYTES        largest request target + headers (default 16384)
  --max-connections N       open connections in all (default 1024)
  --per-ip-connections N    open connections per client address (default 128)
  --head-timeout S          seconds for a whole request head (default 10)
  --body-timeout S          seconds for a whole body after its head (default 30)
  --handler-timeout S       seconds a request may wait and run before it is
                            answered 503 (default 30)
  --body-budget BYTES       request bodies buffered at once, whole process
                            (default 67108864); beyond it: 503
  --idle-timeout S          close a connection idle this long (default 10)
  --grace S                 on SIGINT/SIGTERM, seconds to finish requests in
                            flight before handlers are cut (default 5)
  --inline-slice S          an I/O thread may run a handler itself for this
                            long before handing it to a worker (default
                            0.002; 0: always hand over)
  -h, --help                this help

Prints "listening on http://HOST:PORT" once ready.
]]

local opts = cli.parse({ ... }, {
  options = {
    host = "string", port = "number", workers = "number", ["io-threads"] = "number",
    ["max-body"] = "number", ["max-header"] = "number", ["max-connections"] = "number",
    ["per-ip-connections"] = "number", ["head-timeout"] = "number", ["body-timeout"] = "number",
    ["handler-timeout"] = "number", ["body-budget"] = "number", ["idle-timeout"] = "number",
    grace = "number", ["inline-slice"] = "number",
  },
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

local function num_opt(name, value, lo, hi)
  if value == nil then return nil end
  if value < lo or value > hi then
    cli.fail(("--%s must be a number of seconds within [%g, %g]"):format(name, lo, hi))
  end
  return value
end

local args = {}
for i = 2, #opts._ do args[#args + 1] = opts._[i] end

local server = require("oflua.server")
local srv, err = server.listen({
  host = opts.host,
  port = int_opt("port", opts.port, 0, 65535) or 8080,
  workers = int_opt("workers", opts.workers, 1, 256),
  io_threads = int_opt("io-threads", opts.io_threads, 1, 64),
  max_body = int_opt("max-body", opts.max_body, 0, 1 << 40),
  max_header = int_opt("max-header", opts.max_header, 1024, 1 << 20),
  max_connections = int_opt("max-connections", opts.max_connections, 1, 1 << 20),
  per_ip_connections = int_opt("per-ip-connections", opts.per_ip_connections, 1, 1 << 20),
  body_budget = int_opt("body-budget", opts.body_budget, 0, 1 << 44),
  head_timeout = num_opt("head-timeout", opts.head_timeout, 0.05, 86400),
  body_timeout = num_opt("body-timeout", opts.body_timeout, 0.05, 86400),
  handler_timeout = num_opt("handler-timeout", opts.handler_timeout, 0.01, 86400),
  timeout_s = num_opt("idle-timeout", opts.idle_timeout, 0.001, 86400),
  grace_s = num_opt("grace", opts.grace, 0, 3600),
  inline_slice = num_opt("inline-slice", opts.inline_slice, 0, 1),
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
