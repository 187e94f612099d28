-- Writes the seed corpora of the fuzz targets, derived from the abuse corpus
-- (spec/fixtures/abuse/), into DIR/<target>/:
--   oflua spec/fuzz/seeds.lua DIR
-- (run by scripts/fuzz and by spec/abuse_fuzz_replay_spec.lua).
local dir = assert(..., "usage: oflua spec/fuzz/seeds.lua DIR")
local render = require("spec.fixtures.abuse.render")
local C = require("spec.fixtures.abuse.webhooks")
local callbacks = require("spec.fixtures.abuse.callbacks")

local function write(target, name, data)
  local path = ("%s/%s/%s"):format(dir, target, name)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

for _, t in ipairs({ "verify", "app", "callback", "store", "json" }) do
  assert(os.execute(("mkdir -p '%s/%s'"):format(dir, t)))
end

local reqs = render.all()
for i, case in ipairs(C.valid) do reqs[#reqs + 1] = render.request(case, 1000 + i) end
local n = 0
for i, req in ipairs(reqs) do
  -- the server's own limits (413 and 431 cases) are not the parsers' business
  if #req.body <= C.app_max_body + 64 and req.status ~= 431 then
    n = n + 1
    local head = render.header_lines(req.headers)
    write("verify", ("case%03d"):format(i), head .. "\n" .. req.body)
    write("app", ("case%03d"):format(i), req.method .. "\n" .. head .. "\n" .. req.body)
  end
end
for i, q in ipairs(callbacks) do write("callback", ("case%03d"):format(i), q) end
local ok, store_seeds = pcall(require, "spec.fixtures.abuse.store_seeds")
if ok then
  for i, s in ipairs(store_seeds) do write("store", ("case%03d"):format(i), s) end
end
-- ofauth.json: the bodies of the abuse requests, plus integer edge cases
local json_seeds = {
  '{"id":9007199254740993,"ids":[123456789012345,-9007199254740993]}',
  '[9223372036854775807,-9223372036854775808,9223372036854775808,1e400,0.1]',
  '{"s":"12345678901234567","e":12345678901234567e2,"f":1.12345678901234567}',
  '"\\u0000oflua-int-00:5"', '[1,2', '{"a":"\\"12345678901234567"}', '12345678901234567',
}
for i, req in ipairs(reqs) do
  if req.body ~= "" and i <= 40 then json_seeds[#json_seeds + 1] = req.body end
end
for i, s in ipairs(json_seeds) do write("json", ("case%03d"):format(i), s) end
print(("seeds: %d requests, %d callbacks in %s"):format(n, #callbacks, dir))
