--- Connect a user's OnlyFans account through OFAuth Link, from the terminal.
--
--   OFAUTH_API_KEY=sk_test_... oflua examples/link_flow.lua USER_ID [--port N]
--       [--redirect-url URL] [--reconnect] [--timeout S]
--
-- 1. Starts a small callback server on 127.0.0.1:PORT (default 8765; 0 picks
--    a free port) serving GET /callback.
-- 2. Starts a Link session for USER_ID (sent as clientReferenceId, so the
--    connection.created webhook maps back to this user) with redirect URL
--    http://127.0.0.1:PORT/callback, or --redirect-url when the browser
--    reaches this machine another way (a tunnel). The redirect URL must be
--    registered in the OFAuth dashboard, exactly.
-- 3. Prints the Link URL: open it in a browser and log in (Sandbox accounts
--    only while developing).
-- 4. Handles the browser's return: ofauth.link.callback checks it belongs to
--    the session started here (a forged or stale callback gets 400 and the
--    wait goes on), then prints the outcome and exits: 0 on success, 1 when
--    the user cancelled, Link failed or --timeout (default 600 s) passed.
--
-- The callback is only a user-experience signal: the connection.created
-- webhook is what says a connection exists (see examples/webhook_receiver.lua,
-- which stores it). With --reconnect the stored connection of USER_ID is
-- reconnected (its connection id is sent to Link), which needs the store.
--
-- Pending sessions are kept in the encrypted store when OFLUA_STORE and
-- OFLUA_STORE_KEY[_FILE] are set (so `oflua serve examples/webhook_receiver.lua`
-- on the same store accepts the callback too), else in this process's memory.
--
-- This one file is also the callback server's script: oflua.server loads it
-- in its worker VM with a table argument, and then it returns the handler.
local cjson = require("cjson")
local ofauth = require("ofauth")
local config = require("ofauth.config")
local link = require("ofauth.link")
local server = require("oflua.server")

local SHARED = "example_link_flow" -- the dictionary the two VMs talk through

-- The pending-session store: the real encrypted one, or a tiny adapter with
-- the three calls ofauth.link uses, over a shared dictionary (both the main VM
-- and the callback worker see it; it lives only as long as this process).
local function open_store(kind)
  if kind == "file" then return assert(config.store({})) end
  local d = server.shared(SHARED .. "_sessions")
  return {
    put = function(_, k, v) return d:set(k, v) end,
    get = function(_, k) return d:get(k) end,
    delete = function(_, k) return d:delete(k) end,
  }
end

-- ---- the callback server's worker VM ------------------------------------------------
local worker_args = ...
if type(worker_args) == "table" then
  local st = open_store(worker_args.store)
  local shared = server.shared(SHARED)
  local function page(status, title, text)
    local esc = function(s) return (tostring(s):gsub("[<>&\"]", { ["<"] = "&lt;", [">"] = "&gt;",
      ["&"] = "&amp;", ['"'] = "&quot;" })) end
    return status, ("<!doctype html><meta charset=\"utf-8\"><title>%s</title><h1>%s</h1><p>%s</p>"):format(
      esc(title), esc(title), esc(text)), { ["content-type"] = "text/html; charset=utf-8",
      ["cache-control"] = "no-store" }
  end
  local router = require("oflua.router").new()
  router:get("/callback", function(req)
    -- This callback server waits for one user's session only.
    local cb, why = link.callback(req.query, { store = st, user_id = worker_args.user })
    if not cb then
      -- Not a session started here (forged, replayed, expired): refuse, keep waiting.
      shared:incr("refused", 1, 0)
      return page(400, "Link callback refused", "This link is not valid (" .. why .. "). Start again.")
    end
    shared:set("result", cjson.encode({ status = cb.status, user_id = cb.user_id, step = cb.step,
      error_code = cb.error_code, connection_id = cb.connection_id, reconnect = cb.reconnect }))
    if cb.status == "success" then
      return page(200, "Account connected", "You can close this window and go back to the terminal.")
    end
    return page(200, "Account not connected", "Link ended with status " .. cb.status .. ".")
  end)
  return router
end

-- ---- the command ----------------------------------------------------------------------
local USAGE = [[
usage: oflua examples/link_flow.lua USER_ID [--port N] [--redirect-url URL] [--reconnect] [--timeout S]
Environment: OFAUTH_API_KEY, OFAUTH_BASE_URL; optional OFLUA_STORE + OFLUA_STORE_KEY[_FILE].
]]

local opts = { port = 8765, timeout = 600 }
local argv = { ... }
local i = 1
while i <= #argv do
  local a = argv[i]
  local function value()
    i = i + 1
    if argv[i] == nil then
      io.stderr:write("link_flow: ", a, " needs a value\n", USAGE)
      os.exit(2, true)
    end
    return argv[i]
  end
  if a == "-h" or a == "--help" then
    io.write(USAGE)
    os.exit(0, true)
  elseif a == "--port" then
    opts.port = math.tointeger(tonumber(value()))
  elseif a == "--redirect-url" then
    opts.redirect_url = value()
  elseif a == "--timeout" then
    opts.timeout = tonumber(value())
  elseif a == "--reconnect" then
    opts.reconnect = true
  elseif a:sub(1, 1) == "-" or opts.user then
    io.stderr:write("link_flow: unexpected argument ", a, "\n", USAGE)
    os.exit(2, true)
  else
    opts.user = a
  end
  i = i + 1
end
if not opts.user or not opts.port or opts.port < 0 or opts.port > 65535 or not opts.timeout then
  io.stderr:write(USAGE)
  os.exit(2, true)
end

local function fail(msg)
  io.stderr:write("link_flow: ", tostring(msg), "\n")
  os.exit(1, true)
end

local client, cerr = ofauth.client()
if not client then fail(cerr) end
local store_kind = config.store_configured({}) and "file" or "memory"
local st = open_store(store_kind)
if opts.reconnect and store_kind ~= "file" then
  fail("--reconnect needs the store holding the user's connection (OFLUA_STORE, OFLUA_STORE_KEY[_FILE])")
end

-- The script path as given on the command line: the worker VM loads this file.
local srv, lerr = server.listen({ port = opts.port, workers = 1, script = arg[0],
  args = { store = store_kind, user = opts.user }, handle_signals = true })
if not srv then fail("cannot listen on 127.0.0.1:" .. opts.port .. ": " .. tostring(lerr)) end
local shared = server.shared(SHARED)
shared:delete("result")

local redirect = opts.redirect_url or (srv:url() .. "/callback")
local res, err
if opts.reconnect then
  res, err = link.reconnect(client, opts.user, { redirect_url = redirect,
    connections = ofauth.connections.new({ store = st }) })
else
  res, err = link.start(client, opts.user, { redirect_url = redirect, store = st })
end
if not res then
  srv:stop()
  srv:close()
  if type(err) == "table" and (err.status == 400 or err.status == 422) then
    io.stderr:write("hint: register ", redirect, " as a redirect URI in the OFAuth dashboard (exact match)\n")
  end
  fail(err)
end

print(("Waiting for the callback on %s (%s store)."):format(redirect, store_kind))
print("Open this URL in a browser to connect the account:")
print("  " .. tostring(res.url or ("(embedded Link) client secret " .. tostring(res.client_secret))))
io.stdout:flush()

local deadline = require("oflua.core").monotonic() + opts.timeout
local result
while true do
  local raw = shared:get("result")
  if raw then
    result = cjson.decode(raw)
    break
  end
  if srv:wait(0.1) then break end -- Ctrl-C / SIGTERM
  if require("oflua.core").monotonic() > deadline then break end
end
srv:stop(2)
srv:close()

if not result then
  fail("no callback came back (timed out or interrupted); the session stays valid until it expires")
end
if (shared:get("refused") or 0) > 0 then
  print(("(%d callback(s) that did not match this session were refused)"):format(shared:get("refused")))
end
if result.status == "success" then
  -- A connection id is a credential: shown shortened.
  print(("Link succeeded for user %s: connection %s%s."):format(result.user_id,
    ofauth.redact.id(result.connection_id or "?"), result.reconnect and " (reconnected)" or ""))
  print("OFAuth confirms it with a connection.created webhook; "
    .. "examples/webhook_receiver.lua stores the connection when it arrives.")
  os.exit(0, true)
end
print(("Link ended with status %s for user %s%s%s."):format(result.status, result.user_id,
  result.step and (" at step " .. result.step) or "", result.error_code and (" (" .. result.error_code .. ")") or ""))
os.exit(1, true)
