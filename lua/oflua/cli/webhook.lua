-- oflua webhook: sign, verify, send (trigger) and replay OFAuth webhooks.
local cli = require("oflua.cliutil")
local cjson = require("cjson")
local config = require("ofauth.config")

local SECRET = { "secret", "S", "the endpoint's signing secret (else OFAUTH_WEBHOOK_SECRET)" }
local SCHEME = { "scheme", "svix|checklist", "signature scheme (default svix)", choices = { "svix", "checklist" } }
local cmd = cli.command({
  name = "webhook", summary = "sign, verify, send (trigger) and replay OFAuth webhooks",
  description = "Signs and verifies deliveries by hand, sends signed test events to a receiver and\n"
    .. "re-runs failed events from the inbox (see also 'oflua inbox').",
  env = { "OFAUTH_WEBHOOK_SECRET", "OFAUTH_LOG" },
  flags = { "json" },
  subcommands = {
    { name = "sign", summary = "print the signature headers for a body (stdin or --file)", max_args = 0,
      flags = { SECRET, SCHEME,
        { "id", "ID", "svix message id (default: random)", type = "list" },
        { "timestamp", "T", "unix timestamp to sign with (default: now)", type = "number", min = 0,
          integer = true },
        { "file", "F", "read the body from F instead of stdin" } } },
    { name = "verify", summary = "verify a body against its headers; exit 0 if valid, 1 with the reason",
      max_args = 0,
      flags = { SECRET,
        { "header", "'NAME: VALUE'", "a header of the delivery", type = "list" },
        { "file", "F", "read the body from F instead of stdin" },
        { "tolerance", "S", "accepted clock difference in seconds (default 300)", type = "number",
          min = 0, max = 86400 * 365 },
        { "now", "T", "verify as if the time were T (unix seconds)", type = "number", min = 0 } } },
    { name = "trigger", summary = "send a signed test event to a receiver and print its status",
      max_args = 0,
      description = "Sends a signed test event to --url (default type oflua.test, which receivers\n"
        .. "acknowledge and ignore; connection.* types store a made-up connection unless --data\n"
        .. "names a real one) and prints the receiver's status. Exit 0 on a 2xx answer.",
      flags = { SECRET, SCHEME,
        { "url", "URL", "the receiver's webhook URL (required)" },
        { "type", "TYPE", "event type (default oflua.test)" },
        { "data", "JSON", "the event's data object" },
        { "timeout-ms", "N", "timeout of the request (default 10000)", type = "number", min = 1,
          max = 600000, integer = true },
        { "wait", "SECONDS", "retry a refused connection for up to SECONDS (a receiver still starting)",
          type = "number", min = 0, max = 3600 } } },
    { name = "replay", summary = "re-run dead-lettered (or chosen) inbox events through an app's handlers",
      max_args = 0,
      description = "Puts dead-lettered (or chosen) inbox events back and runs the handlers of the app\n"
        .. "that APP.lua returns as its `webhooks` field (the same script `oflua serve` runs; it\n"
        .. "opens its own store).",
      flags = {
        { "app", "APP.lua", "the app script (required)" },
        { "id", "KEY", "an inbox event to replay", type = "list" },
        { "dead", false, "replay every dead-lettered event" } } },
  },
})
local command, opts = cmd:parse({ ... })
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

local function scheme()
  return opts.scheme or "svix"
end

-- The one secret check of every subcommand: present, and a whsec_ key for svix.
local function secret(for_scheme)
  local s = config.webhook_secret(opts)
  if not s then cli.fail("no webhook secret: pass --secret or set OFAUTH_WEBHOOK_SECRET") end
  if (for_scheme or scheme()) == "svix" and not webhooks.svix_key(s) then
    cli.fail("the secret is not whsec_<base64> (svix scheme); use --scheme checklist for raw secrets")
  end
  return s
end

local function signed_headers(body, sec)
  if scheme() == "svix" then
    return webhooks.sign_svix(body, sec, opts.id and opts.id[1], opts.timestamp)
  end
  return { ["ofauth-signature"] = webhooks.sign(body, sec, opts.timestamp) }
end

-- Which signature header a delivery lacks, in words.
local function missing_header(headers)
  local scheme_of = webhooks.detect(headers, nil, true)
  if scheme_of == "svix" then
    local miss = {}
    for _, n in ipairs({ "id", "timestamp", "signature" }) do
      local v = headers["svix-" .. n] or headers["webhook-" .. n]
      if v == nil or v == "" then miss[#miss + 1] = "svix-" .. n end
    end
    return ("missing header %s (svix scheme: svix-id, svix-timestamp and svix-signature)")
      :format(table.concat(miss, ", "))
  end
  return "missing header: no signature header (svix-id, svix-timestamp and svix-signature "
    .. "for svix, or ofauth-signature for the checklist scheme)"
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
  if next(headers) == nil then
    cli.usage_error("give the delivery's signature headers with --header 'name: value'", "oflua webhook verify")
  end
  -- before reading stdin: a missing or unfit secret fails at once
  local sec = secret(webhooks.detect(headers, nil, true) or "checklist")
  local event, meta = webhooks.verify(read_body(), headers, sec,
    { tolerance = opts.tolerance, now = opts.now })
  if not event then
    local why = meta == "missing_header" and missing_header(headers) or meta
    if opts.json then
      print(cjson.encode({ valid = false, reason = meta, message = why }))
      cli.exit(1)
    end
    cli.fail("invalid: " .. why)
  end
  if opts.json then
    print(cjson.encode({ valid = true, type = event.type, scheme = meta.scheme,
      idempotency_key = meta.idempotency_key, timestamp = meta.timestamp }))
  else
    print(("valid: %s event (%s scheme, key %s)"):format(event.type, meta.scheme, meta.idempotency_key))
  end
  return 0
elseif command == "trigger" then
  if not opts.url then cli.usage_error("--url is required", "oflua webhook trigger") end
  local sec = secret()
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
  local headers = signed_headers(body, sec)
  headers["content-type"] = "application/json"
  headers["user-agent"] = "oflua-webhook-trigger"
  local core = require("oflua.core")
  local deadline = core.monotonic() + (opts.wait or 0)
  local resp, err
  repeat -- --wait: a receiver that is still starting refuses connections for a moment
    resp, err = require("oflua.http").request({ method = "POST", url = opts.url, headers = headers,
      body = body, timeout_ms = opts.timeout_ms or 10000 })
    local again = not resp and type(err) == "table" and err.kind == "connect" and core.monotonic() < deadline
    if again then core.sleep(0.2) end
  until not again
  if not resp then cli.fail(("could not deliver to %s: %s"):format(opts.url, tostring(err.message or err))) end
  if opts.json then
    print(cjson.encode({ status = resp.status, body = resp.body, type = typ }))
  else
    print(("%s -> %d %s"):format(typ, resp.status, (resp.body or ""):sub(1, 200)))
  end
  return (resp.status >= 200 and resp.status < 300) and 0 or 1
elseif command == "replay" then
  if not opts.app then
    cli.usage_error("--app APP.lua is required (the script that builds your webhooks app)", "oflua webhook replay")
  end
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
  if #ids == 0 and opts.dead then
    print(opts.json and cjson.encode({ requeued = 0, done = 0, failed = 0 }) or "no dead letters to replay")
    return 0
  end
  if #ids == 0 then cli.usage_error("nothing to replay: pass --id KEY or --dead", "oflua webhook replay") end
  for _, id in ipairs(ids) do
    local r, rerr = app.store:inbox_retry(id)
    if not r then
      cli.fail(("no inbox event %q%s"):format(id, rerr and (": " .. tostring(rerr)) or ""))
    end
  end
  local done, failed = app:drain()
  if opts.json then
    print(cjson.encode({ requeued = #ids, done = done, failed = failed }))
  else
    print(("requeued %d event(s): %d processed, %d failed again"):format(#ids, done, failed))
  end
  return failed == 0 and 0 or 1
end
