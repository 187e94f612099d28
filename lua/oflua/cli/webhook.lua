-- oflua webhook: sign, verify, send (trigger) and replay OFAuth webhooks.
local cli = require("oflua.cliutil")
local cjson = require("cjson")
local config = require("ofauth.config")

local USAGE = [[
usage: oflua webhook <command> [options]

  sign     [--scheme svix|checklist] [--id ID] [--timestamp T] [--file F]
           print the signature headers for a body (stdin or --file)
  verify   --header 'name: value' ... [--file F] [--tolerance S] [--now T]
           verify a body against its headers; exit 0 if valid, 1 with the reason
  trigger  --url URL [--type TYPE] [--data JSON] [--scheme svix|checklist]
           send a signed test event (default type oflua.test, which receivers
           acknowledge and ignore; connection.* types store a made-up connection
           unless --data names a real one); prints the receiver's status
  replay   --app APP.lua [--id KEY ... | --dead]
           put dead-lettered (or chosen) inbox events back and run the handlers of
           the app that APP.lua returns as its `webhooks` field (the same script
           `oflua serve` runs; it opens its own store)

The secret comes from --secret or OFAUTH_WEBHOOK_SECRET (whsec_... for svix).
Options: --json (machine-readable output), --help.
]]

local spec = {
  flags = { json = true, dead = true },
  options = { secret = "string", scheme = "string", id = "list", timestamp = "number",
    file = "string", header = "list", tolerance = "number", now = "number", url = "string",
    type = "string", data = "string", app = "string", timeout_ms = "number" },
}

local command, opts = cli.subcommand({ ... }, USAGE, spec)
if not command then return opts end -- usage printed; opts is the exit status

local webhooks = require("ofauth.webhooks")

local function read_body()
  if opts.file then
    local f, err = io.open(opts.file, "rb")
    if not f then cli.fail(err) end
    local s = f:read("a")
    f:close()
    return s
  end
  return io.stdin:read("a") or ""
end

local function secret()
  local s = config.webhook_secret(opts)
  if not s then cli.fail("no webhook secret: pass --secret or set OFAUTH_WEBHOOK_SECRET") end
  return s
end

local function scheme()
  local s = opts.scheme or "svix"
  if s ~= "svix" and s ~= "checklist" then cli.fail("--scheme must be svix or checklist") end
  return s
end

local function signed_headers(body, sec)
  if scheme() == "svix" then
    if not webhooks.svix_key(sec) then
      cli.fail("the secret is not whsec_<base64> (svix scheme); use --scheme checklist for raw secrets")
    end
    return webhooks.sign_svix(body, sec, opts.id and opts.id[1], opts.timestamp)
  end
  return { ["ofauth-signature"] = webhooks.sign(body, sec, opts.timestamp) }
end

local function print_headers(h)
  if opts.json then
    print(cjson.encode(h))
    return
  end
  local names = {}
  for k in pairs(h) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do print(k .. ": " .. h[k]) end
end

if command == "sign" then
  local sec = secret()
  print_headers(signed_headers(read_body(), sec))
  return 0
elseif command == "verify" then
  local headers = {}
  for _, line in ipairs(opts.header or {}) do
    local k, v = line:match("^%s*([^:%s]+)%s*:%s*(.-)%s*$")
    if not k then cli.fail("--header must look like 'name: value', got " .. ("%q"):format(line)) end
    headers[k:lower()] = v
  end
  if next(headers) == nil then cli.fail("give the delivery's signature headers with --header 'name: value'") end
  local sec = secret() -- before reading stdin: a missing secret fails at once
  local event, meta = webhooks.verify(read_body(), headers, sec,
    { tolerance = opts.tolerance, now = opts.now })
  if not event then
    if opts.json then print(cjson.encode({ valid = false, reason = meta })) end
    cli.fail("invalid: " .. meta)
  end
  if opts.json then
    print(cjson.encode({ valid = true, type = event.type, scheme = meta.scheme,
      idempotency_key = meta.idempotency_key, timestamp = meta.timestamp }))
  else
    print(("valid: %s event (%s scheme, key %s)"):format(event.type, meta.scheme, meta.idempotency_key))
  end
  return 0
elseif command == "trigger" then
  if not opts.url then cli.fail("--url is required") end
  -- The default type has no effect on a receiver (unknown types are
  -- acknowledged); a connection.* test event would store a made-up connection.
  local typ = opts.type or "oflua.test"
  local data
  if opts.data then
    local ok, d = pcall(cjson.decode, opts.data)
    if not ok or type(d) ~= "table" then cli.fail("--data must be a JSON object") end
    data = d
  else
    data = { clientReferenceId = "oflua-test-user",
      connection = { id = "conn_test" .. require("oflua.crypto").hex(require("oflua.crypto").random(6)),
        platformUserId = "0", status = typ == "connection.expired" and "expired" or "active" } }
  end
  local envelope = scheme() == "svix" and { eventType = typ, live = false, data = data }
    or { type = typ, data = data }
  local body = cjson.encode(envelope)
  local headers = signed_headers(body, secret())
  headers["content-type"] = "application/json"
  headers["user-agent"] = "oflua-webhook-trigger"
  local resp, err = require("oflua.http").request({ method = "POST", url = opts.url, headers = headers,
    body = body, timeout_ms = opts.timeout_ms or 10000 })
  if not resp then cli.fail(("could not deliver to %s: %s"):format(opts.url, tostring(err.message or err))) end
  if opts.json then
    print(cjson.encode({ status = resp.status, body = resp.body, type = typ }))
  else
    print(("%s -> %d %s"):format(typ, resp.status, (resp.body or ""):sub(1, 200)))
  end
  return (resp.status >= 200 and resp.status < 300) and 0 or 1
elseif command == "replay" then
  if not opts.app then cli.fail("--app APP.lua is required (the script that builds your webhooks app)") end
  local chunk, lerr = loadfile(opts.app)
  if not chunk then cli.fail(lerr) end
  local ok, app_mod = pcall(chunk, { replay = true })
  if not ok then cli.fail("loading " .. opts.app .. ": " .. tostring(app_mod)) end
  local app = type(app_mod) == "table" and (app_mod.webhooks or app_mod.webhook_app) or nil
  if not app or not app.drain then
    cli.fail(opts.app .. " must return a table with a `webhooks` field (the ofauth.webhooks app)")
  end
  local ids = opts.id or {}
  if opts.dead then
    for _, item in ipairs(app.store:inbox_dead()) do ids[#ids + 1] = item.id end
  end
  if #ids == 0 then cli.fail("nothing to replay: pass --id KEY or --dead") end
  for _, id in ipairs(ids) do
    local r, rerr = app.store:inbox_retry(id)
    if not r then cli.fail(("no inbox event %q: %s"):format(id, tostring(rerr))) end
  end
  local done, failed = app:drain()
  if opts.json then
    print(cjson.encode({ requeued = #ids, done = done, failed = failed }))
  else
    print(("requeued %d event(s): %d processed, %d failed again"):format(#ids, done, failed))
  end
  return failed == 0 and 0 or 1
else
  cli.fail(("unknown command '%s' (see oflua webhook --help)"):format(command))
end
