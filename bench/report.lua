-- Turns the RESULT lines of bench/*.sh into one table and build/bench.json.
local cjson = require("cjson")
local infile, outfile = arg[1], arg[2]
local rows = {}
for line in io.lines(infile) do
  local json = line:match("^RESULT (.*)$")
  if json then rows[#rows + 1] = cjson.decode(json) end
end

local function fmt(v)
  if type(v) ~= "number" then return tostring(v or "") end
  if v == math.floor(v) and math.abs(v) < 1e12 then return ("%d"):format(v) end
  if math.abs(v) >= 100 then return ("%.0f"):format(v) end
  return ("%.3g"):format(v)
end

local header = { "benchmark", "oflua", "unit", "peer", "peer value", "ratio", "target", "result" }
local lines = { header }
for _, r in ipairs(rows) do
  local result = r.pass == nil and "" or (r.pass and "pass" or "MISS")
  lines[#lines + 1] = { r.name, fmt(r.value), r.unit or "", r.peer or "", fmt(r.peer_value),
    r.ratio and ("%.2f"):format(r.ratio) or "", r.target or "", result }
end
local widths = {}
for _, l in ipairs(lines) do
  for i, c in ipairs(l) do widths[i] = math.max(widths[i] or 0, #c) end
end
for n, l in ipairs(lines) do
  local cells = {}
  for i, c in ipairs(l) do cells[i] = c .. (" "):rep(widths[i] - #c) end
  print(table.concat(cells, "  "))
  if n == 1 then
    local rule = {}
    for i = 1, #widths do rule[i] = ("-"):rep(widths[i]) end
    print(table.concat(rule, "  "))
  end
end
local f = assert(io.open(outfile, "w"))
f:write(cjson.encode({ results = rows }), "\n")
f:close()
print(("\n%d results written to %s"):format(#rows, outfile))
