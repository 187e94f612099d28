--- An earnings report from the Access API, through the endpoint catalogue:
-- every transaction since a date (marker pagination, page after page) summed
-- by type, plus the chargebacks of the same period.
--
--   OFAUTH_API_KEY=... OFAUTH_CONNECTION_ID=conn_... \
--     oflua examples/earnings_report.lua [--since 2026-01-01] [--json]
--
-- The operations are called by their TypeScript SDK names, with their wire
-- field names (acc:each("access.earnings.listTransactions", {startDate = ...})),
-- so code ports from the official SDKs line by line. Amounts are summed as
-- the API sends them (`amounts.net`, else `amount`).
-- Exit status: 0 on success; 1 on an API error; 2 on a usage error.
local ofauth = require("ofauth")
local ojson = require("ofauth.json")

local USAGE = [[
usage: oflua examples/earnings_report.lua [--since YYYY-MM-DD] [--json]
Environment: OFAUTH_API_KEY, OFAUTH_BASE_URL, OFAUTH_CONNECTION_ID.
]]

local since, as_json = nil, false
local argv = { ... }
local i = 1
while i <= #argv do
  local a = argv[i]
  if a == "--since" and argv[i + 1] and argv[i + 1]:match("^%d%d%d%d%-%d%d%-%d%d$") then
    since = argv[i + 1]
    i = i + 1
  elseif a == "--json" then
    as_json = true
  elseif a == "-h" or a == "--help" then
    io.write(USAGE)
    os.exit(0, true)
  else
    io.stderr:write("earnings_report: bad argument ", a, "\n", USAGE)
    os.exit(2, true)
  end
  i = i + 1
end

local conn = os.getenv("OFAUTH_CONNECTION_ID")
if not conn or conn == "" then
  io.stderr:write("earnings_report: set OFAUTH_CONNECTION_ID\n")
  os.exit(2, true)
end
local client, err = ofauth.client()
if not client then
  io.stderr:write("earnings_report: ", tostring(err), "\n")
  os.exit(1, true)
end
local acc = client:access(conn)

local by_type, count, pages = {}, 0, 0
local ok, loop_err = pcall(function()
  for tx in acc:each("access.earnings.listTransactions", { startDate = since },
    { on_page = function() pages = pages + 1 end }) do
    local amount = type(tx.amounts) == "table" and tonumber(tx.amounts.net) or tonumber(tx.amount) or 0
    local t = tostring(tx.type or "other")
    by_type[t] = (by_type[t] or 0) + amount
    count = count + 1
  end
end)
if not ok then
  io.stderr:write(("earnings_report: stopped after %d transactions: %s\n"):format(count, tostring(loop_err)))
  os.exit(1, true)
end
local chargebacks = 0
for _ in acc:each("access.earnings.listChargebacks", { startDate = since }) do chargebacks = chargebacks + 1 end

if as_json then
  print(ojson.encode({ since = since, transactions = count, pages = pages, by_type = by_type,
    chargebacks = chargebacks }))
else
  print(("%d transactions in %d pages%s"):format(count, pages, since and (" since " .. since) or ""))
  local types = {}
  for t in pairs(by_type) do types[#types + 1] = t end
  table.sort(types)
  for _, t in ipairs(types) do print(("  %-16s %12.2f"):format(t, by_type[t])) end
  print(("%d chargebacks"):format(chargebacks))
end
os.exit(0, true)
