-- oflua inbox: the webhook inbox of a store: counts, one event, dead letters, requeue, prune
--
-- The inbox is where ofauth.webhooks.app keeps every verified delivery
-- (oflua.store's inbox_* API). Event ids are idempotency keys
-- ("svix:msg_..." or "sha256:..."); payloads are never printed, last errors
-- go through ofauth.redact (connection ids shortened, secrets removed).
local cli = require("oflua.cliutil")
local cjson = require("cjson")
local config = require("ofauth.config")
local redact = require("ofauth.redact")

local STORE = {
  { "store", "PATH", "the store the app uses (else OFLUA_STORE)" },
  { "key-file", "FILE", "the store's key file (else OFLUA_STORE_KEY_FILE, OFLUA_STORE_KEY)" },
  { "namespace", "NAME", "the store's namespace (default \"default\")" },
}
local cmd = cli.command({
  name = "inbox", summary = "the webhook inbox: counts, one event, dead letters, requeue, prune",
  description = "Inspects and repairs the durable webhook inbox that ofauth.webhooks.app keeps in the\n"
    .. "store (the same store the app opens: --store or OFLUA_STORE). Payloads are never\n"
    .. "printed; last errors are redacted (connection ids shortened, secrets removed).",
  env = { "OFLUA_STORE", "OFLUA_STORE_KEY_FILE", "OFLUA_STORE_KEY" },
  flags = { STORE[1], STORE[2], STORE[3], "json" },
  subcommands = {
    { name = "list", max_args = 0, summary = "count the events by state, then list them",
      description = "Counts the events by state (pending, claimed, done, dead), then lists the events\n"
        .. "that are not done (or those in --state), oldest first: id, type, state, attempts,\n"
        .. "next attempt and last error. Listing leases nothing: the running app is not disturbed.",
      flags = { { "state", "STATE", "list only the events in STATE", choices = { "pending", "claimed", "done",
        "dead", "all" } },
        { "limit", "N", "list at most N events (default 50)", type = "number", min = 1,
        max = 100000, integer = true } } },
    { name = "show", args = "ID", min_args = 1, max_args = 1,
      summary = "one event: state, attempts, last error, next attempt, event type" },
    { name = "dead", max_args = 0, summary = "list the dead letters (events out of attempts)",
      flags = { { "limit", "N", "at most N (default 50)", type = "number", min = 1, max = 100000,
        integer = true } } },
    { name = "replay", args = "[ID...]", summary = "put events (or every dead letter) back to pending",
      description = "Puts the given events, or with --dead every dead letter, back to pending with their\n"
        .. "attempts reset; the running app (oflua serve) retries them. To run the handlers\n"
        .. "now from this shell, use 'oflua webhook replay --app APP.lua'.",
      flags = { { "dead", false, "requeue every dead letter" } } },
    { name = "prune", max_args = 0, summary = "forget done events older than --older-than",
      description = "Forgets the done events older than the given age (their ids then no longer\n"
        .. "deduplicate a redelivery: keep at least the sender's retry window, days for Svix).",
      flags = { { "older-than", "SECONDS", "age of the done events to forget (required)", type = "number",
        min = 0, max = 10 * 365 * 86400 } } },
  },
})
local command, opts = cmd:parse({ ... })
if not command then return opts end

local st, serr = config.store(opts)
if not st then cli.fail(serr) end

local function when(t)
  if type(t) ~= "number" or t <= 0 then return "" end
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t))
end

-- The event type from a stored payload ("<meta json>\n<body>").
local function event_type(payload)
  local body = type(payload) == "string" and payload:match("^[^\n]*\n(.*)$")
  local ok, v = pcall(cjson.decode, body or "")
  if ok and type(v) == "table" then return tostring(v.eventType or v.type or "?") end
  return "?"
end

local function clean(s) return s and redact.text(tostring(s)) or nil end

local function table_out(columns, rows)
  local head = {}
  for i, c in ipairs(columns) do head[i] = cli.pad(c[1], c[2]) end
  io.write(cli.paint((table.concat(head, " "):gsub("%s+$", "")), "bold"), "\n")
  for _, r in ipairs(rows) do
    local t = {}
    for i, c in ipairs(columns) do t[i] = cli.pad(cli.truncate(r[i] or "", c[2]), c[2]) end
    io.write((table.concat(t, " "):gsub("%s+$", "")), "\n")
  end
end

local function dead_rows(limit)
  local items, err = st:inbox_dead(limit or 50)
  if not items then cli.fail(tostring(err)) end
  local out = {}
  for _, it in ipairs(items) do
    out[#out + 1] = { id = it.id, type = event_type(it.payload), attempts = it.attempts,
      last_error = clean(it.last_error) }
  end
  return out
end

local function print_dead(rows)
  if #rows == 0 then
    print("no dead letters")
    return
  end
  local t = {}
  for i, r in ipairs(rows) do t[i] = { r.id, r.type, tostring(r.attempts), r.last_error or "" } end
  table_out({ { "id", 28 }, { "type", 22 }, { "attempts", 8 }, { "last error", 40 } }, t)
end

-- Events in the given states (a list), oldest first, at most limit, without
-- leasing any (s:inbox_list pages by row id).
local function list_rows(states, limit)
  local out = {}
  for _, state in ipairs(states) do
    local after = 0
    while #out < limit do
      local items, cursor = st:inbox_list({ state = state, limit = math.min(limit - #out, 500), after = after })
      if not items then cli.fail(tostring(cursor)) end
      for _, it in ipairs(items) do
        out[#out + 1] = { id = it.id, type = event_type(it.payload), state = it.state, attempts = it.attempts,
          next_attempt_at = it.state == "pending" and when(it.next_attempt_at) or nil,
          last_error = clean(it.last_error), created = it.created_at }
      end
      if #items == 0 or cursor == nil or cursor == after then break end
      after = cursor
    end
  end
  table.sort(out, function(a, b) return (a.created or 0) < (b.created or 0) end)
  for _, r in ipairs(out) do r.created = nil end
  return out
end

if command == "list" then
  local stats = st:inbox_stats()
  local states = { "pending", "claimed", "dead" }
  if opts.state == "all" then states = { "pending", "claimed", "dead", "done" }
  elseif opts.state then states = { opts.state } end
  local rows = list_rows(states, opts.limit or 50)
  if opts.json then
    local out = cjson.encode({ counts = stats, events = #rows > 0 and rows or nil })
    if #rows == 0 then out = out:sub(1, -2) .. ',"events":[]}' end -- cjson 2.1 has no empty array
    print(out)
    return 0
  end
  local parts = {}
  for _, k in ipairs({ "pending", "claimed", "done", "dead", "total" }) do
    parts[#parts + 1] = ("%s %d"):format(k, stats[k] or 0)
  end
  print(table.concat(parts, ", "))
  if #rows > 0 then
    print()
    local t = {}
    for i, r in ipairs(rows) do
      t[i] = { r.id, r.type, r.state, tostring(r.attempts), r.next_attempt_at or "", r.last_error or "" }
    end
    table_out({ { "id", 28 }, { "type", 22 }, { "state", 8 }, { "attempts", 8 }, { "next attempt", 20 },
      { "last error", 40 } }, t)
  end
  return 0
elseif command == "show" then
  local it = st:inbox_get(opts._[1])
  if not it then cli.fail(("no inbox event %q"):format(opts._[1])) end
  local rec = { id = it.id, type = event_type(it.payload), state = it.state, attempts = it.attempts,
    last_error = clean(it.last_error),
    next_attempt_at = it.state == "pending" and when(it.next_attempt_at) or nil,
    created_at = when(it.created_at), updated_at = when(it.updated_at) }
  if opts.json then
    print(cjson.encode(rec))
    return 0
  end
  for _, k in ipairs({ "id", "type", "state", "attempts", "last_error", "next_attempt_at", "created_at",
    "updated_at" }) do
    if rec[k] ~= nil and rec[k] ~= "" then print(cli.pad(k:gsub("_", " ") .. ":", 17) .. tostring(rec[k])) end
  end
  return 0
elseif command == "dead" then
  local rows = dead_rows(opts.limit)
  if opts.json then
    print(#rows > 0 and cjson.encode(rows) or "[]")
  else
    print_dead(rows)
  end
  return 0
elseif command == "replay" then
  local ids = {}
  for _, id in ipairs(opts._) do ids[#ids + 1] = id end
  if opts.dead then
    for _, r in ipairs(dead_rows(100000)) do ids[#ids + 1] = r.id end
  elseif #ids == 0 then
    cli.usage_error("give event ids or --dead", "oflua inbox replay")
  end
  for _, id in ipairs(ids) do
    if not st:inbox_retry(id) then cli.fail(("no inbox event %q"):format(id)) end
  end
  if opts.json then
    print(cjson.encode({ requeued = #ids }))
  else
    print(("requeued %d event(s); the running app retries them"):format(#ids))
  end
  return 0
elseif command == "prune" then
  if not opts.older_than then cli.usage_error("--older-than SECONDS is required", "oflua inbox prune") end
  local n, err = st:inbox_prune(opts.older_than)
  if not n then cli.fail(tostring(err)) end
  if opts.json then print(cjson.encode({ pruned = n })) else print(("forgot %d done event(s)"):format(n)) end
  return 0
end
