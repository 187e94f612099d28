-- ofauth.json against plain lua-cjson: decode and encode of a 100-item
-- catalogue page (the emulator's vault media list), with small ids and with
-- ids above 2^53. Run: build/oflua bench/json_int.lua [iterations]
local cjson = require("cjson")
local ojson = require("ofauth.json")
local generic = require("ofauth.emulator.generic")
local catalogue = require("ofauth.catalogue")
local core = require("oflua.core")

local n = tonumber(arg and arg[1]) or 2000
local page = generic.answer(catalogue.find("access.vault.listMedia"), { limit = "100" }, 1)
local big = ojson.encode(page)
local small = big:gsub("9007199%d+", function(x) return tostring(#x) end)

local function per_call(f, x)
  local t0 = core.monotonic()
  for _ = 1, n do f(x) end
  return (core.monotonic() - t0) / n * 1e6
end

local rows = {
  { "decode, small ids", per_call(cjson.decode, small), per_call(ojson.decode, small), #small },
  { "decode, ids > 2^53", per_call(cjson.decode, big), per_call(ojson.decode, big), #big },
  { "encode, ids > 2^53", per_call(cjson.encode, page), per_call(ojson.encode, page), #big },
}
print(("%-20s %8s %12s %14s %7s"):format("case", "bytes", "cjson us", "ofauth.json us", "ratio"))
for _, r in ipairs(rows) do
  print(("%-20s %8d %12.1f %14.1f %6.1fx"):format(r[1], r[4], r[2], r[3], r[3] / r[2]))
end
