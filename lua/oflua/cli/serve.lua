-- oflua serve: run an HTTP app (a Lua handler script) on oflua.server
local cli = require("oflua.cliutil")

local cmd = cli.command({
  name = "serve", summary = "run an HTTP app (a Lua handler script) on oflua.server",
  args = "APP.lua [-- args...]",
  description = [[
Serves HTTP with APP.lua in every worker: the script returns a handler
function(req) -> status, body, headers, a router (oflua.router), or
{handler = ..., shutdown = fn}. Arguments after the script are passed to it
as an array (its `...`). Stops gracefully on SIGINT/SIGTERM (requests in
flight are finished for --grace seconds, then handlers still running are cut
and it exits). Prints "listening on http://HOST:PORT" on stdout once ready.
The limits' defaults are safe for a server on the internet (docs/operations.md).]],
  flags = {
    { "host", "H", "address to listen on (default 127.0.0.1)" },
    { "port", "N", "port (default 8080; 0 picks a free one)", short = "p", type = "number",
      min = 0, max = 65535, integer = true },
    { "workers", "N", "worker threads, each with its own Lua VM (default 2)", short = "w",
      type = "number", min = 1, max = 256, integer = true },
    { "io-threads", "N", "threads doing the network I/O (default 2)", type = "number",
      min = 1, max = 64, integer = true },
    { "max-body", "BYTES", "largest request body accepted (default 1048576)", type = "number",
      min = 0, max = 1 << 40, integer = true },
    { "max-header", "BYTES", "largest request target + headers (default 16384)", type = "number",
      min = 1024, max = 1 << 20, integer = true },
    { "max-connections", "N", "open connections in all (default 1024)", type = "number",
      min = 1, max = 1 << 20, integer = true },
    { "per-ip-connections", "N", "open connections per client address (default 128)",
      type = "number", min = 1, max = 1 << 20, integer = true },
    { "head-timeout", "S", "seconds for a whole request head (default 10)", type = "number",
      min = 0.05, max = 86400 },
    { "body-timeout", "S", "seconds for a whole body after its head (default 30)",
      type = "number", min = 0.05, max = 86400 },
    { "handler-timeout", "S", "seconds to answer a request, else 503 (default 30)",
      type = "number", min = 0.01, max = 86400 },
    { "body-budget", "BYTES", "bodies buffered at once in all, else 503 (default 64 MiB)",
      type = "number", min = 0, max = 1 << 44, integer = true },
    { "idle-timeout", "S", "close a connection idle this long (default 10)", type = "number",
      min = 0.001, max = 86400 },
    { "grace", "S", "on SIGINT/SIGTERM, seconds to finish requests in flight (default 5)",
      type = "number", min = 0, max = 3600 },
    { "inline-slice", "S", "Lua time an I/O thread may run a handler (default 0.002)",
      type = "number", min = 0, max = 1 },
    { "ready-file", "FILE", "write the base URL to FILE once listening (for scripts to wait on)" },
  },
  env = { "OFAUTH_API_KEY", "OFAUTH_BASE_URL", "OFAUTH_WEBHOOK_SECRET", "OFLUA_STORE",
    "OFLUA_STORE_KEY_FILE", "OFLUA_STORE_KEY", "OFAUTH_LOG" },
  footer = "The environment variables are read by the app (ofauth.config), not by serve itself.",
})
local ok, opts = cmd:parse({ ... })
if not ok then return opts end

local script = opts._[1]
if not script then cli.usage_error("missing the app script", "oflua serve") end
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
  io_threads = opts.io_threads,
  max_body = int_opt("max-body", opts.max_body, 0, 1 << 40),
  max_header = opts.max_header,
  max_connections = opts.max_connections,
  per_ip_connections = opts.per_ip_connections,
  head_timeout = opts.head_timeout,
  body_timeout = opts.body_timeout,
  handler_timeout = opts.handler_timeout,
  body_budget = opts.body_budget,
  timeout_s = opts.idle_timeout,
  grace_s = opts.grace,
  inline_slice = opts.inline_slice,
  script = script,
  args = args,
  handle_signals = true,
})
if not srv then cli.fail(err) end

io.stdout:write("listening on ", srv:url(), "\n")
io.stdout:flush()
if opts.ready_file then
  local wok, werr = cli.write_atomic(opts.ready_file, srv:url() .. "\n")
  if not wok then
    srv:stop()
    srv:close()
    cli.fail("cannot write the ready file: " .. tostring(werr))
  end
end
srv:wait()
srv:close()
return 0
