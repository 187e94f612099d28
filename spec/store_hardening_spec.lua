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

describe("oflua.store PostgreSQL labels", function()
  -- Nothing listens on port 1: every open fails at connect time, and the
  -- handle (or the error) carries the label.
  local secret = "S3cr3t-pw"
  local forms = {
    { "postgresql://alice:pa?ss" .. secret .. "@127.0.0.1:1/db", "postgresql://alice@127.0.0.1:1/db" },
    { "postgresql://alice:" .. secret .. "?x/y@127.0.0.1:1/db", "postgresql://alice@127.0.0.1:1/db" },
    { "postgresql://alice:a%2Fb%23c%40d%3F" .. secret .. "@127.0.0.1:1/db?sslmode=disable",
      "postgresql://alice@127.0.0.1:1/db" },
    { "postgres://alice:x@127.0.0.1:1/db?password=" .. secret, "postgresql://alice@127.0.0.1:1/db" },
    { "postgresql:///db?host=127.0.0.1&port=1&user=bob&password=" .. secret,
      "postgresql://bob@127.0.0.1:1/db" },
    { "postgresql://alice:p#" .. secret .. "@127.0.0.1:1/db", "postgresql://alice@127.0.0.1:1/db" },
    { "postgresql://alice:" .. secret .. "@[::1]:1,127.0.0.1:1/db", nil },
  }
  for _, f in ipairs(forms) do
    it("keeps the password out of tostring, info and errors: " .. f[1]:gsub(secret, "<secret>"), function()
      local s, err = store.open({ url = f[1], key = store.keygen(), connect_timeout_s = 1 })
      local texts = { tostring(err) }
      if s then
        texts[#texts + 1] = tostring(s)
        local ok, i = pcall(s.info, s)
        texts[#texts + 1] = ok and tostring(i and i.url) or tostring(i)
        local v, e = s:get("k")
        assert.is_nil(v)
        texts[#texts + 1] = tostring(e)
        texts[#texts + 1] = tostring(select(2, s:inbox_claim(1, 10)))
        if f[2] then assert.matches(f[2], tostring(s), 1, true) end
        s:close()
      end
      for _, t in ipairs(texts) do
        assert.is_nil(t:find(secret, 1, true), t)
        assert.is_nil(t:find("pa?ss", 1, true), t)
      end
    end)
  end

  it("rejects a key=value conninfo string as url without echoing it", function()
    local ok, err = pcall(store.open, { url = "host=127.0.0.1 port=1 password=S3cr3t-pw", key = store.keygen() })
    assert.is_false(ok)
    assert.is_nil(tostring(err):find("S3cr3t", 1, true))
  end)
end)

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
