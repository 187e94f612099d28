-- The fuzz targets' seeds (derived from the abuse corpus) and saved findings
-- (spec/fuzz/corpus/<target>/), replayed once through the fuzz harness
-- without libFuzzer (build/fuzz_replay): deterministic and fast, and under
-- ASan + UBSan in the sanitizer build. Fuzzing itself is scripts/fuzz.
local h = require("spec.helper")

local build = os.getenv("OFLUA_BUILD_DIR") or "build"
local replay = build .. "/fuzz_replay"
local targets = { "verify", "app", "callback", "store", "json" }

describe("fuzz corpus replay", function()
  local dir

  setup(function()
    dir = os.tmpname()
    os.remove(dir)
    local out, err, code = h.oflua({ h.source_dir .. "/spec/fuzz/seeds.lua", dir })
    assert(code == 0, out .. err)
  end)

  teardown(function()
    if dir then os.execute("rm -rf " .. h.shq(dir)) end
  end)

  for _, t in ipairs(targets) do
    it("runs every seed and saved finding of the " .. t .. " target", function()
      local paths = { h.shq(dir .. "/" .. t) }
      local saved = h.source_dir .. "/spec/fuzz/corpus/" .. t
      if require("oflua.core").file_mode(saved) then paths[#paths + 1] = h.shq(saved) end
      local out, err, code = h.sh(("%s %s %s"):format(h.shq(replay), t, table.concat(paths, " ")))
      assert.equal(0, code, out .. err)
      local n = tonumber(out:match("(%d+) inputs ok"))
      assert.is_number(n, out .. err)
      if t ~= "store" then assert.is_true(n >= 10, out) end
    end)
  end
end)
