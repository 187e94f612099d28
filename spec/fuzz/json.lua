-- Fuzz target: ofauth.json (cjson plus the exact-integer passes). Input: any
-- bytes as JSON text. decode never raises; what it returns encodes, and
-- decodes back to the same integers (64-bit ones included).
local ojson = require("ofauth.json")

local function same(a, b, depth)
  if depth > 70 then return true end
  if type(a) ~= type(b) then return false end
  if type(a) == "number" then
    if a ~= a then return b ~= b end -- NaN is not JSON, but be tolerant
    if math.type(a) == "integer" or math.type(b) == "integer" then return a == b end
    return a == b or math.abs(a - b) <= math.abs(a) * 1e-13
  end
  if type(a) ~= "table" then return a == b end
  for k, v in pairs(a) do if not same(v, b[k], depth + 1) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

return function(data)
  local v = ojson.decode(data)
  if v == nil then return end
  local ok, text = pcall(ojson.encode, v)
  if not ok then return end -- e.g. sparse arrays or huge numbers cjson refuses: not ours
  local back = ojson.decode(text)
  assert(back ~= nil, "encode produced text decode refuses")
  assert(same(v, back, 0), "round trip changed a value")
end
