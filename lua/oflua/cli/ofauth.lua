-- oflua ofauth: call the OFAuth API from the shell (whoami, link, connections, subscribers, user-docs).
local cli = require("oflua.cliutil")
local cjson = require("cjson")
local config = require("ofauth.config")
local core = require("oflua.core")
local redact = require("ofauth.redact")

local API_ENV = { "OFAUTH_API_KEY", "OFAUTH_BASE_URL", "OFAUTH_LOG" }
local STORE = {
  { "store", "PATH", "the store (else OFLUA_STORE)" },
  { "key-file", "FILE", "the store's key file (else OFLUA_STORE_KEY_FILE, OFLUA_STORE_KEY)" },
  { "namespace", "NAME", "the store's namespace (default \"default\")" },
}
local STORE_ENV = { "OFLUA_STORE", "OFLUA_STORE_KEY_FILE", "OFLUA_STORE_KEY" }
local PAGE = { "page-size", "N", "items per API page (1-1000; default 100)", type = "number", min = 1,
  max = 1000, integer = true }
local REVEAL = { "reveal-ids", false, "print connection ids in full (they are credentials, so they "
  .. "are shortened by default)" }
local function plus(a, b)
  local t = {}
  for _, x in ipairs(a) do t[#t + 1] = x end
  for _, x in ipairs(b or {}) do t[#t + 1] = x end
  return t
end

local cmd = cli.command({
  name = "ofauth",
  summary = "call the OFAuth API from the shell (whoami, link, connections, subscribers, call, ops, upload, user-docs)",
  description = "Calls the OFAuth API with your key (a Sandbox key for every test). Lists are streamed\n"
    .. "page by page; a progress line is shown on stderr when it is a terminal.",
  env = API_ENV,
  flags = {
    { "format", "table|json|csv", "output format (default table)", choices = { "table", "json", "csv" } },
    "json", "quiet",
    { "api-key", "K", "the API key (else OFAUTH_API_KEY)" },
    { "base-url", "URL", "the API base URL (else OFAUTH_BASE_URL, default https://api.ofauth.com)" },
  },
  subcommands = {
    { name = "whoami", max_args = 0, summary = "check the API key; show the account and environment" },
    { name = "link", max_args = 0, summary = "start a Link session for a user and print its URL",
      description = "Starts a Link session for a user and prints its URL (recorded in the store when one\n"
        .. "is configured, so that ofauth.link.callback accepts its callback).",
      env = STORE_ENV,
      flags = plus({ { "user", "ID", "your user's id, sent as clientReferenceId (required)" },
        { "redirect-url", "URL", "a redirect URI registered in the dashboard (required)" },
        { "reconnect", false, "reconnect the user's stored (expired) connection" } }, STORE) },
    { name = "connections", max_args = 0, summary = "list every connection (all pages)",
      flags = { PAGE, REVEAL } },
    { name = "subscribers", max_args = 0, summary = "export a connection's subscribers (all pages, streamed)",
      env = STORE_ENV,
      flags = plus({ { "connection", "ID", "the connection id" },
        { "user", "ID", "the user whose stored connection to use (instead of --connection)" },
        { "type", "all|active|expired|latest", "which subscribers (default all)",
          choices = { "all", "active", "expired", "latest" } },
        { "max", "N", "stop after N subscribers", type = "number", min = 1, integer = true },
        PAGE }, STORE) },
    { name = "call", args = "NAME [field=value ...]", min_args = 1,
      summary = "call any API operation by its SDK name (see ops)",
      description = "Calls any API operation by its SDK name (see 'oflua ofauth ops'). Fields go by wire\n"
        .. "name, the value typed from the catalogue (field:=JSON for raw JSON, arrays as a,b,c).\n"
        .. "--all pages through every item (JSON lines by default, --csv for CSV).",
      flags = { { "connection", "ID", "the connection, for Access API operations" },
        { "all", false, "every item of a paginated operation, page by page" },
        { "jsonl", false, "with --all: JSON lines (the default)" },
        { "csv", false, "with --all: CSV with a header of the first item's fields" },
        { "max", "N", "with --all: stop after N items", type = "number", min = 1, integer = true },
        { "out", "FILE", "write to FILE instead of stdout" } } },
    { name = "ops", args = "[FILTER]", max_args = 1,
      summary = "list the API operations: name, method, path, scope (--json for all fields)" },
    { name = "upload", args = "FILE", min_args = 1, max_args = 1,
      summary = "upload a file to the vault (progress bar on a terminal)",
      flags = { { "connection", "ID", "the connection (required)" },
        { "content-type", "TYPE", "the file's MIME type (default: from its extension)" },
        { "filename", "NAME", "the name OFAuth records (default: the file's)" } } },
    { name = "user-docs", max_args = 0, summary = "fill in the end-user page about connecting an account",
      flags = { { "app-name", "NAME", "your app's name (required)" },
        { "permissions", "LIST", "comma-separated permissions, e.g. profile,subscribers (required)" },
        { "contact", "EMAIL", "where users reach you" },
        { "purpose", "TEXT", "what you use the access for" },
        { "disconnect-where", "TEXT", "where in your app users disconnect" },
        { "template", "FILE", "a template instead of the built-in one" },
        { "out", "FILE", "write the page to FILE instead of stdout" } } },
  },
})

local command, opts = cmd:parse({ ... })
if not command then return opts end -- usage printed; opts is the exit status
local format = opts.json and "json" or opts.format or "table"
if format == "json" then cli.json_errors = true end

local function client()
  local c, err = config.client(opts)
  if not c then cli.fail(err) end
  return c
end

local function api_fail(err)
  cli.fail(tostring(err))
end

-- ---- output: streamed rows in table, json or csv -------------------------

local function cell(v)
  if v == nil or v == cjson.null then return "" end
  if type(v) == "table" then
    if #v > 0 then
      local parts = {}
      for i, x in ipairs(v) do parts[i] = type(x) == "table" and cjson.encode(x) or tostring(x) end
      return table.concat(parts, ";")
    end
    return cjson.encode(v)
  end
  if type(v) == "number" and v == math.floor(v) and math.abs(v) < 2 ^ 53 then
    return ("%d"):format(v)
  end
  return tostring(v)
end

-- Permissions read the same everywhere: "profile, subscribers".
local function perms(p)
  if type(p) == "table" and #p > 0 then
    local t = {}
    for i, x in ipairs(p) do t[i] = cell(x) end
    return table.concat(t, ", ")
  end
  return cell(p)
end

local function csv_field(s)
  if s:find('[,"\r\n]') then return '"' .. s:gsub('"', '""') .. '"' end
  return s
end

-- columns: list of {name, getter}; returns a writer with :row(item) and :close()
local function writer(columns)
  local w = { n = 0 }
  local out = io.stdout
  if format == "csv" then
    local names = {}
    for i, c in ipairs(columns) do names[i] = csv_field(c[1]) end
    out:write(table.concat(names, ","), "\n")
  elseif format == "json" then
    out:write("[")
  else
    local names = {}
    for i, c in ipairs(columns) do names[i] = cli.pad(c[1], c.width or 16) end
    out:write(cli.paint(table.concat(names, " "), "bold"), "\n")
  end
  function w.row(item)
    w.n = w.n + 1
    w.progress:clear() -- never mixed into the rows
    if format == "json" then
      out:write(w.n > 1 and ",\n" or "\n", cjson.encode(item))
      return
    end
    local cells = {}
    for i, c in ipairs(columns) do
      local s = cell(c[2](item))
      if format == "csv" then
        cells[i] = csv_field(s)
      else
        cells[i] = cli.pad(cli.truncate(s, c.width or 16), c.width or 16)
      end
    end
    out:write(table.concat(cells, format == "csv" and "," or " "), "\n")
  end
  function w.close()
    w.progress:clear()
    if format == "json" then out:write(w.n > 0 and "\n]\n" or "]\n") end
    out:flush()
  end
  return w
end

local progress = { bar = cli.progress(opts.quiet), t0 = core.monotonic() }
function progress.update(n, done)
  if done then return progress.bar:done() end
  local rate = n / math.max(core.monotonic() - progress.t0, 1e-3)
  progress.bar:update(("%d rows  %.0f rows/s"):format(n, rate))
end

local function show_id(id)
  if opts.reveal_ids then return id end
  return redact.id(id)
end

-- Iterate, streaming rows; an error mid-way keeps the rows already written.
-- `clean` (optional) makes the item written in JSON (e.g. ids shortened).
local function export(iter, columns, clean)
  local w = writer(columns)
  w.progress = progress.bar
  local ok, err = pcall(function()
    for item in iter do
      if clean and format == "json" then item = clean(item) end
      w.row(item)
      progress.update(w.n)
    end
  end)
  w.close()
  progress.update(w.n, true)
  if not ok then
    cli.fail(("stopped after %d rows: %s"):format(w.n, tostring(err)))
  end
  return 0
end

-- ---- call / ops / upload: any catalogue operation -------------------------

local catalogue = require("ofauth.catalogue")
local ojson = require("ofauth.json")

-- "field=value" -> field, typed value (from the catalogue's field type);
-- "field:=JSON" -> field, decoded JSON.
local function field_arg(e, arg)
  local name, raw = arg:match("^([%w_%-]+):=(.*)$")
  if name then
    local v, err = ojson.decode(raw)
    if v == nil then cli.fail(("%s: not JSON (%s)"):format(name, tostring(err))) end
    return name, v
  end
  name, raw = arg:match("^([%w_%-]+)=(.*)$")
  if not name then cli.fail(("expected field=value or field:=JSON, got %q"):format(arg)) end
  if not e.fields[name] then return name, raw end -- the library names the unknown field
  local ty = catalogue.type_of(e, name)
  local function scalar(x)
    if x:match("^%-?%d+$") then return math.tointeger(tonumber(x)) or x end
    return x
  end
  if ty == "integer" or ty == "number" then
    local n = tonumber(raw)
    if not n then cli.fail(("%s must be a number, got %q"):format(name, raw)) end
    return name, math.tointeger(n) or n
  elseif ty == "boolean" then
    if raw ~= "true" and raw ~= "false" then cli.fail(("%s must be true or false"):format(name)) end
    return name, raw == "true"
  elseif ty == "array" or ty == "array_or_string" then
    local list = {}
    for x in raw:gmatch("[^,]+") do list[#list + 1] = scalar(x) end
    return name, list
  elseif ty == "object" then
    local v = ojson.decode(raw)
    if type(v) ~= "table" then cli.fail(("%s must be a JSON object (field:=JSON)"):format(name)) end
    return name, v
  end
  return name, raw
end

local function open_out()
  if not opts.out then return io.stdout end
  local f, err = io.open(opts.out, "wb")
  if not f then cli.fail(err) end
  return f
end

local function call_command()
  local name = opts._[1]
  if not name then cli.fail("call needs an operation name (see oflua ofauth ops)") end
  local e = catalogue.find(name)
  if not e then cli.fail(("unknown operation %q (see oflua ofauth ops)"):format(name)) end
  local params = {}
  for i = 2, #opts._ do
    local k, v = field_arg(e, opts._[i])
    params[k] = v
  end
  local c = client()
  local target = c
  if e.connection then
    if not opts.connection then cli.fail(e.name .. " needs --connection ID") end
    target = c:access(opts.connection)
  end
  if opts.jsonl and opts.csv then cli.fail("--jsonl and --csv exclude each other") end
  if not opts.all then
    local res, err = target:call(e.name, params)
    if not res then api_fail(err) end
    local out = open_out()
    out:write(type(res) == "string" and res or ojson.encode(res), "\n")
    if out ~= io.stdout then out:close() end
    return 0
  end
  if not e.page then cli.fail(e.name .. " is not paginated: call it without --all") end
  local out = open_out()
  local n, columns = 0, nil
  local ok, err = pcall(function()
    for item in target:each(e.name, params, { max_items = opts.max }) do
      n = n + 1
      if opts.csv then
        if not columns then
          columns = {}
          for k in pairs(type(item) == "table" and item or {}) do columns[#columns + 1] = k end
          table.sort(columns)
          local head = {}
          for i, k in ipairs(columns) do head[i] = csv_field(k) end
          out:write(table.concat(head, ","), "\n")
        end
        local cells = {}
        for i, k in ipairs(columns) do
          local v = item[k]
          cells[i] = csv_field(type(v) == "table" and ojson.encode(v) or cell(v))
        end
        out:write(table.concat(cells, ","), "\n")
      else
        out:write(ojson.encode(item), "\n")
      end
      progress.update(n)
    end
  end)
  progress.update(n, true)
  if out ~= io.stdout then out:close() else out:flush() end
  if not ok then cli.fail(("stopped after %d items: %s"):format(n, tostring(err))) end
  return 0
end

local function ops_command()
  local list = catalogue.list(opts._[1])
  if opts.json then
    local rows = {}
    for i, e in ipairs(list) do
      rows[i] = { name = e.name, method = e.method, path = e.path, scope = e.scope, page = e.page,
        connection = e.connection or false, summary = e.summary }
    end
    print(ojson.encode(rows))
    return 0
  end
  for _, e in ipairs(list) do
    print(("%-52s %-6s %-58s %s"):format(e.name, e.method, e.path, e.scope or "-"))
  end
  io.stderr:write(("%d operation(s)\n"):format(#list))
  return 0
end

local TYPES = { jpg = "image/jpeg", jpeg = "image/jpeg", png = "image/png", gif = "image/gif",
  webp = "image/webp", mp4 = "video/mp4", mov = "video/quicktime", webm = "video/webm",
  mp3 = "audio/mpeg", wav = "audio/wav", m4a = "audio/mp4" }

local function upload_command()
  local path = opts._[1]
  if not path then cli.fail("upload needs a FILE") end
  if not opts.connection then cli.fail("upload needs --connection ID") end
  local ext = (path:match("%.(%w+)$") or ""):lower()
  local ctype = opts.content_type or TYPES[ext]
  if not ctype then cli.fail("cannot tell the file's type from its name: pass --content-type") end
  -- the shared progress line: stderr only, only on a terminal, erased
  -- before the result is printed
  local line = cli.progress(opts.quiet)
  local function bar(p)
    local width = 30
    local fill = p.total > 0 and math.floor(width * p.sent / p.total) or width
    line:update(("[%s%s] %3d%%  %d/%d bytes  part %d/%d"):format(("#"):rep(fill),
      (" "):rep(width - fill), p.total > 0 and math.floor(100 * p.sent / p.total) or 100, p.sent, p.total,
      p.part, p.parts))
  end
  local res, err = client():access(opts.connection):upload({ path = path, content_type = ctype,
    filename = opts.filename, on_progress = bar })
  line:done()
  if not res then api_fail(err) end
  print(ojson.encode(res))
  return 0
end

if command == "call" then return call_command() end
if command == "ops" then return ops_command() end
if command == "upload" then return upload_command() end

-- ---- commands -------------------------------------------------------------

if command == "whoami" then
  local me, err = client():whoami()
  if not me then api_fail(err) end
  if format == "json" then
    print(cjson.encode(me))
  else
    print(("account:     %s (%s)"):format(cell(me.name), cell(me.id)))
    if me.environment then print(("environment: %s"):format(cell(me.environment))) end
    print(("permissions: %s"):format(perms(me.permissions)))
  end
  return 0
elseif command == "link" then
  if not opts.user then
    cli.usage_error("--user is required (your user id, sent as clientReferenceId)", "oflua ofauth link")
  end
  if not opts.redirect_url then
    cli.usage_error("--redirect-url is required (registered in the OFAuth dashboard)", "oflua ofauth link")
  end
  local c = client()
  local st
  if config.store_configured(opts) then
    local serr
    st, serr = config.store(opts)
    if not st then cli.fail(serr) end
  end
  local res, err
  if opts.reconnect then
    if not st then cli.fail("--reconnect needs the store that holds the user's connection") end
    local conns = require("ofauth.connections").new({ store = st })
    res, err = require("ofauth.link").reconnect(c, opts.user, { connections = conns,
      redirect_url = opts.redirect_url })
  elseif st then
    res, err = require("ofauth.link").start(c, opts.user, { store = st, redirect_url = opts.redirect_url })
  else
    io.stderr:write("note: no store configured; the session is not recorded, so its callback ",
      "will not be accepted by ofauth.link.callback\n")
    res, err = c:link_init({ redirect_url = opts.redirect_url, client_reference_id = opts.user })
  end
  if not res then api_fail(err) end
  if format == "json" then
    print(cjson.encode({ url = res.url, client_secret = res.client_secret, expires_at = res.expires_at }))
  else
    print(res.url or ("client secret: " .. tostring(res.client_secret)))
  end
  return 0
elseif command == "connections" then
  local c = client()
  return export(c:connections({ limit = opts.page_size }), {
    { "id", function(x) return show_id(x.id) end, width = 18 },
    { "status", function(x) return x.status end, width = 12 },
    { "clientReferenceId", function(x) return x.clientReferenceId end, width = 20 },
    { "username", function(x) return type(x.userData) == "table" and x.userData.username or nil end },
    { "permissions", function(x) return perms(x.permissions) end, width = 24 },
    { "updatedAt", function(x) return x.updatedAt end, width = 24 },
  }, function(x)
    local copy = {}
    for k, v in pairs(x) do copy[k] = v end
    copy.id = show_id(x.id)
    return copy
  end)
elseif command == "subscribers" then
  local conn_id = opts.connection
  if not conn_id and opts.user then
    local st, serr = config.store(opts)
    if not st then cli.fail(serr) end
    local rec = require("ofauth.connections").new({ store = st }):get(opts.user)
    if not rec or not rec.connection_id then cli.fail("no connection stored for that user") end
    conn_id = rec.connection_id
  end
  if not conn_id then cli.usage_error("--connection ID or --user ID is required", "oflua ofauth subscribers") end
  local typ = opts.type or "all"
  local iter = client():access(conn_id):subscribers({ type = typ, limit = opts.page_size,
    max_items = opts.max })
  -- Subscriber objects are whatever the API returns; these columns are the
  -- common ones, and --format json keeps every field.
  return export(iter, {
    { "id", function(x) return x.id end, width = 12 },
    { "username", function(x) return x.username end, width = 20 },
    { "name", function(x) return x.name end, width = 24 },
    { "status", function(x) return x.status end, width = 10 },
    { "subscribedAt", function(x) return x.subscribedAt end, width = 24 },
    { "expiresAt", function(x) return x.expiresAt end, width = 24 },
  })
elseif command == "user-docs" then
  local docs = require("ofauth.userdocs")
  local text, err = docs.render({ app_name = opts.app_name, permissions = opts.permissions,
    contact = opts.contact, template = opts.template, purpose = opts.purpose,
    disconnect_where = opts.disconnect_where })
  if not text then cli.fail(err) end
  if opts.out then
    local f, ferr = io.open(opts.out, "wb")
    if not f then cli.fail(ferr) end
    f:write(text)
    f:close()
    print("wrote " .. opts.out)
  else
    io.write(text)
  end
  return 0
end
