--- Export every subscriber of a connection to CSV, streaming rows as pages arrive.
--
--   OFAUTH_API_KEY=... OFAUTH_CONNECTION_ID=conn_... \
--     oflua examples/export_subscribers.lua [--type all|active|expired|latest] [--out FILE]
--   oflua examples/export_subscribers.lua --user ID ...   (connection id from the store:
--                                                          OFLUA_STORE + OFLUA_STORE_KEY[_FILE])
--
-- Rows are written as each page arrives (memory stays flat however many
-- subscribers there are). A progress bar is drawn on stderr when stderr is a
-- terminal and the CSV is not being written to that same terminal; when the
-- output is piped or redirected without a terminal (cron, CI, `2>log`) there
-- is none. With type "all" the bar shows a percentage when the profile
-- (GET /v2/access/self) reports subscribersCount; otherwise a running count.
--
-- Prefer OFAUTH_CONNECTION_ID or --user over --connection: a connection id is
-- a credential, and command lines are visible to every user of the machine.
-- Exit status: 0 on success; 1 on an error (rows already written are kept and
-- the message says how many); 2 on a usage error.
local cjson = require("cjson")
local core = require("oflua.core")
local ofauth = require("ofauth")
local config = require("ofauth.config")

local USAGE = [[
usage: oflua examples/export_subscribers.lua [--connection ID | --user ID] [options]

  --connection ID      the connection (else $OFAUTH_CONNECTION_ID)
  --user ID            look the connection up in the store (OFLUA_STORE, OFLUA_STORE_KEY[_FILE])
  --type T             all (default), active, expired or latest
  --out FILE           write the CSV to FILE (default: stdout)
  --columns a,b,...    subscriber fields to export (default id,username,name,status,subscribedAt,expiresAt)
  --page-size N        subscribers per API call (default 100)
  --no-progress        never draw the progress bar
Environment: OFAUTH_API_KEY, OFAUTH_BASE_URL, OFAUTH_CONNECTION_ID.
]]

local function usage_error(msg)
  io.stderr:write("export_subscribers: ", msg, "\n", USAGE)
  os.exit(2, true)
end

local function fail(msg)
  io.stderr:write("export_subscribers: ", msg, "\n")
  os.exit(1, true)
end

-- ---- arguments --------------------------------------------------------------
local opts = {
  type = "all", page_size = 100,
  columns = { "id", "username", "name", "status", "subscribedAt", "expiresAt" },
}
local argv = { ... }
local i = 1
while i <= #argv do
  local a = argv[i]
  local function value()
    i = i + 1
    if argv[i] == nil then usage_error(a .. " needs a value") end
    return argv[i]
  end
  if a == "-h" or a == "--help" then
    io.write(USAGE)
    os.exit(0, true)
  elseif a == "--connection" then
    opts.connection = value()
  elseif a == "--user" then
    opts.user = value()
  elseif a == "--type" then
    opts.type = value()
  elseif a == "--out" then
    opts.out = value()
  elseif a == "--page-size" then
    opts.page_size = math.tointeger(tonumber(value()))
    if not opts.page_size or opts.page_size < 1 then usage_error("--page-size must be a positive integer") end
  elseif a == "--columns" then
    opts.columns = {}
    for c in value():gmatch("[^,%s]+") do opts.columns[#opts.columns + 1] = c end
    if #opts.columns == 0 then usage_error("--columns needs at least one field") end
  elseif a == "--no-progress" then
    opts.no_progress = true
  else
    usage_error("unknown argument " .. a)
  end
  i = i + 1
end
local types = { all = true, active = true, expired = true, latest = true }
if not types[opts.type] then usage_error("--type must be all, active, expired or latest") end

-- ---- which connection ------------------------------------------------------------
local conn_id = opts.connection
if not conn_id then
  local v = os.getenv("OFAUTH_CONNECTION_ID")
  if v and v ~= "" then conn_id = v end
end
if not conn_id and opts.user then
  local st, err = config.store({})
  if not st then fail(err) end
  local rec = ofauth.connections.new({ store = st }):get(opts.user)
  if not rec or not rec.connection_id then fail("no connection stored for that user") end
  if rec.status == "expired" then fail("that user's connection expired: they must reconnect through Link") end
  conn_id = rec.connection_id
end
if not conn_id then usage_error("give --connection, --user or OFAUTH_CONNECTION_ID") end

local client, cerr = ofauth.client()
if not client then fail(tostring(cerr)) end
local access = client:access(conn_id)

-- ---- CSV ---------------------------------------------------------------------------
-- RFC 4180 quoting (a field holding a comma, quote or line break is quoted, quotes
-- doubled); lines end in \n like `oflua ofauth subscribers --format csv`.
local function csv_field(v)
  if v == nil or v == cjson.null then return "" end
  if type(v) == "table" then
    v = cjson.encode(v)
  elseif type(v) == "number" and v == math.floor(v) and math.abs(v) < 2 ^ 53 then
    v = ("%d"):format(v) -- cjson gives floats: 123.0 -> 123
  else
    v = tostring(v)
  end
  if v:find('[,"\r\n]') then return '"' .. v:gsub('"', '""') .. '"' end
  return v
end

local out = io.stdout
if opts.out then
  local f, err = io.open(opts.out, "wb")
  if not f then fail(err) end
  out = f
end

-- ---- progress bar ------------------------------------------------------------------
local show_progress = not opts.no_progress and core.isatty(2) and (opts.out ~= nil or not core.isatty(1))
local total
if show_progress and opts.type == "all" then
  -- Only for the bar: a failure here is not a reason to stop the export.
  local me = access:self()
  if type(me) == "table" and math.type(me.subscribersCount) ~= nil and me.subscribersCount > 0 then
    total = math.tointeger(me.subscribersCount) or math.floor(me.subscribersCount)
  end
end
local t0, last_draw = core.monotonic(), -1
local function progress(n, done)
  if not show_progress then return end
  local now = core.monotonic()
  if not done and now - last_draw < 0.1 then return end
  last_draw = now
  local rate = n / math.max(now - t0, 1e-3)
  local line
  if total then
    local width = 30
    local frac = math.min(n / total, 1)
    local fill = math.floor(frac * width + 0.5)
    line = ("\r[%s%s] %3d%%  %d/%d  %.0f rows/s"):format(("#"):rep(fill), ("."):rep(width - fill),
      math.floor(frac * 100 + 0.5), n, total, rate)
  else
    line = ("\r%d rows  %.0f rows/s"):format(n, rate)
  end
  io.stderr:write(line, done and "\n" or "  ")
  io.stderr:flush()
end

-- ---- export ------------------------------------------------------------------------
local header = {}
for k, c in ipairs(opts.columns) do header[k] = csv_field(c) end
out:write(table.concat(header, ","), "\n")

local n = 0
local ok, err = pcall(function()
  -- The iterator fetches the next page when the current one is used up; it
  -- raises the ofauth error object on failure (after the policy's retries).
  for sub in access:subscribers({ type = opts.type, limit = opts.page_size,
    on_page = function() out:flush() end }) do
    local row = {}
    for k, c in ipairs(opts.columns) do row[k] = csv_field(sub[c]) end
    out:write(table.concat(row, ","), "\n")
    n = n + 1
    progress(n)
  end
end)
out:flush()
progress(n, true)
if out ~= io.stdout then out:close() end

if not ok then
  local hint = ""
  if type(err) == "table" and err.kind == "reauth_required" then
    hint = " (the connection expired: the user must reconnect through Link)"
  end
  fail(("stopped after %d rows: %s%s"):format(n, tostring(err), hint))
end
if opts.out then io.stderr:write(("wrote %d subscribers to %s\n"):format(n, opts.out)) end
os.exit(0, true)
