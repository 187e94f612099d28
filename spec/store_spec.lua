-- oflua.store: the key/value API, encryption (wrong key, tampering detected),
-- rekey, transactions and the webhook inbox. Raw rows are read and altered
-- with Debian's sqlite3 CLI, as an attacker with write access to the file would.
local h = require("spec.helper")
local store = require("oflua.store")
local backends = require("spec.support.store_backends")

local tmpdir = h.tmpdir

local dirs = {}
local function newpath()
  local d = tmpdir()
  dirs[#dirs + 1] = d
  return d .. "/store.db", d
end

teardown(function()
  for _, d in ipairs(dirs) do h.sh("rm -rf " .. h.shq(d)) end
  backends.cleanup()
end)

-- Runs SQL on the store file through a second, plain SQLite connection.
local function sql(path, statement)
  local out, err, code = h.sh(("sqlite3 -batch -cmd '.timeout 5000' %s %s"):format(h.shq(path),
    h.shq(statement)))
  assert(code == 0, "sqlite3 failed: " .. err)
  return (out:gsub("%s+$", ""))
end

local function unhex(s)
  return (s:gsub("..", function(x) return string.char(tonumber(x, 16)) end))
end
local function tohex(s)
  return (s:gsub(".", function(c) return ("%02X"):format(c:byte()) end))
end

local function open(path, key, extra)
  local o = { path = path, key = key }
  for k, v in pairs(extra or {}) do o[k] = v end
  return assert(store.open(o))
end

local function all_bytes()
  local t = {}
  for i = 0, 255 do t[#t + 1] = string.char(i) end
  return table.concat(t)
end

describe("oflua.store", function()
  describe("keys", function()
    it("keygen returns distinct base64 texts of 32 bytes", function()
      local a, b = store.keygen(), store.keygen()
      assert.matches("^[A-Za-z0-9+/]+=$", a)
      assert.equal(44, #a)
      assert.not_equal(a, b)
    end)

    it("keeps the sqlite_version field", function()
      assert.matches("^3%.%d+%.%d+", store.sqlite_version)
    end)

    it("refuses a key that is not base64 of 32 bytes, without echoing it", function()
      local path = newpath()
      for _, bad in ipairs({ "", "short", ("A"):rep(43), ("A"):rep(44), ("A"):rep(42) .. "==",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA*=", ("A"):rep(42) .. "B=" }) do
        local s, err = store.open({ path = path, key = bad })
        assert.is_nil(s)
        assert.matches("base64 text of exactly 32 bytes", err)
        if #bad > 4 then assert.is_nil(err:find(bad, 1, true)) end
      end
    end)

    it("accepts a key with surrounding white space (a key file line)", function()
      local path = newpath()
      local s = open(path, "  " .. store.keygen() .. "\n")
      s:close()
    end)

    it("reads a 0600 key file and refuses one readable by group or others", function()
      local path, dir = newpath()
      local kf = dir .. "/key"
      assert(store.save_key(kf, store.keygen()))
      local s = assert(store.open({ path = path, key_file = kf }))
      assert(s:put("a", "1"))
      s:close()
      h.sh("chmod 640 " .. h.shq(kf))
      local s2, err = store.open({ path = path, key_file = kf })
      assert.is_nil(s2)
      assert.matches("key file " .. kf:gsub("%p", "%%%0") .. " is accessible by group or others",
        err)
      assert.matches("chmod 600", err)
      local s3, err3 = store.open({ path = path, key_file = dir .. "/missing" })
      assert.is_nil(s3)
      assert.matches("cannot open key file", err3)
      local garbage = h.write_file(dir .. "/garbage", "not a key\n")
      h.sh("chmod 600 " .. h.shq(garbage))
      local s4, err4 = store.open({ path = path, key_file = garbage })
      assert.is_nil(s4)
      assert.matches("base64 text of exactly 32 bytes", err4)
      assert.is_nil(err4:find("not a key", 1, true))
    end)

    it("save_key writes mode 0600 and never overwrites", function()
      local _, dir = newpath()
      local kf = dir .. "/k"
      local key = store.keygen()
      assert(store.save_key(kf, key))
      assert.equal(tonumber("600", 8), require("oflua.core").file_mode(kf))
      assert.equal(key .. "\n", h.slurp(kf))
      local ok, err = store.save_key(kf, store.keygen())
      assert.is_nil(ok)
      assert.matches("already exists", err)
      assert.equal(key .. "\n", h.slurp(kf))
    end)

    it("says 'wrong key' for another master key, never returns garbage", function()
      local path = newpath()
      local s = open(path, store.keygen())
      assert(s:put("k", "v"))
      s:close()
      local other = store.keygen()
      local s2, err = store.open({ path = path, key = other })
      assert.is_nil(s2)
      assert.matches("wrong key", err)
      assert.is_nil(err:find(other, 1, true))
    end)

    it("creates the file, its WAL and shared-memory files with mode 0600", function()
      local path = newpath()
      local s = open(path, store.keygen())
      assert(s:put("a", "b"))
      local core = require("oflua.core")
      assert.equal(tonumber("600", 8), core.file_mode(path))
      assert.equal(tonumber("600", 8), core.file_mode(path .. "-wal"))
      assert.equal(tonumber("600", 8), core.file_mode(path .. "-shm"))
      s:close()
    end)

    it("uses WAL and takes synchronous = FULL", function()
      local path = newpath()
      local s = open(path, store.keygen(), { synchronous = "FULL", busy_timeout_ms = 100 })
      assert(s:put("a", "b"))
      assert.equal("b", s:get("a"))
      assert.equal("wal", sql(path, "PRAGMA journal_mode"))
      s:close()
    end)

    it("opens an in-memory store", function()
      local s = open(":memory:", store.keygen())
      assert(s:put("a", "b"))
      assert.equal("b", s:get("a"))
      s:close()
    end)

    it("raises on programmer errors in the options", function()
      local path = newpath()
      local key = store.keygen()
      assert.has_error(function() store.open({ key = key }) end)
      assert.has_error(function() store.open({ path = path, key = key, key_file = "x" }) end)
      assert.has_error(function() store.open({ path = path }) end)
      assert.has_error(function() store.open({ path = path, key = key, synchronous = "OFF" }) end)
      assert.has_error(function() store.open({ path = path, key = key, busy_timeout_ms = -1 }) end)
      assert.has_error(function() store.open({ path = path, key = key, namespace = "" }) end)
    end)

    it("does not create a store when create = false", function()
      local path = newpath()
      local s, err = store.open({ path = path, key = store.keygen(), create = false })
      assert.is_nil(s)
      assert.matches("no store at", err)
    end)

    it("reports a file that is not a database", function()
      local path = newpath()
      h.write_file(path, ("not sqlite "):rep(100))
      local s, err = store.open({ path = path, key = store.keygen() })
      assert.is_nil(s)
      assert.matches("not a database", err)
    end)
  end)
end)

-- Everything below runs on every backend (PostgreSQL when OFLUA_TEST_PG_URL
-- is set: scripts/test runs under scripts/with-postgres).
for _, be in ipairs(backends.all()) do
  -- luacheck: push ignore 421 (the same helpers, for this backend)
  local function newpath() return be.new() end
  local function sql(target, statement) return be.sql(target, statement) end
  local function open(target, key, extra) return assert(store.open(be.open_opts(target, key, extra))) end
  -- Flips one bit of byte `pos` (1-based) of a blob column of one row.
  local function flip(target, tbl, col, id, pos, idcol)
    idcol = idcol or "id"
    local blob = unhex(sql(target, ("SELECT %s FROM %s WHERE %s = %d"):format(be.hex(col), tbl,
      idcol, id)))
    assert(#blob >= pos, "blob shorter than " .. pos)
    local b = blob:byte(pos) ~ 1
    blob = blob:sub(1, pos - 1) .. string.char(b) .. blob:sub(pos + 1)
    sql(target, ("UPDATE %s SET %s = %s WHERE %s = %d"):format(tbl, col, be.blob(tohex(blob)), idcol, id))
  end
  -- Swaps a column between rows 1 and 2 of a table.
  local function swap(target, tbl, col)
    local one = sql(target, ("SELECT %s FROM %s WHERE id = 1"):format(be.hex(col), tbl))
    local two = sql(target, ("SELECT %s FROM %s WHERE id = 2"):format(be.hex(col), tbl))
    sql(target, ("UPDATE %s SET %s = %s WHERE id = 1"):format(tbl, col, be.blob("FF")))
    sql(target, ("UPDATE %s SET %s = %s WHERE id = 2"):format(tbl, col, be.blob(one)))
    sql(target, ("UPDATE %s SET %s = %s WHERE id = 1"):format(tbl, col, be.blob(two)))
  end
  -- luacheck: pop

describe("oflua.store on " .. be.name, function()
    describe("handles", function()
      it("close is idempotent and later calls raise a clear error", function()
        local s = open(newpath(), store.keygen())
        s:close()
        s:close()
        assert.has_error(function() s:get("a") end, "oflua.store: the store is closed")
        assert.has_error(function() s:put("a", "b") end, "oflua.store: the store is closed")
        assert.matches("closed", tostring(s))
      end)

      it("closes through <close>", function()
        local path = newpath()
        local key = store.keygen()
        local kept
        do
          local s <close> = open(path, key)
          kept = s
          assert(s:put("a", "1"))
        end
        assert.has_error(function() kept:get("a") end)
      end)

      it("info names the path, namespace and key id", function()
        local path = newpath()
        local s = open(path, store.keygen(), { namespace = "conns" })
        local i = s:info()
        assert.equal(be.name, i.backend)
        if be.name == "sqlite" then
          assert.equal(path, i.path)
        else
          assert.equal((path:gsub(":[^:@/]*@", "@")), i.url)
        end
        assert.equal("conns", i.namespace)
        assert.equal(1, i.key_id)
        s:close()
      end)

      it("opens from the environment with open_env", function()
        local path = newpath()
        local s, err = store.open_env(be.open_opts(path))
        -- the spec environment clears OFLUA_STORE_KEY*
        assert.is_nil(s)
        assert.matches("no store key", err)
      end)
    end)

    describe("key/value", function()
      local s, path
      before_each(function()
        path = newpath()
        s = open(path, store.keygen())
      end)
      after_each(function() s:close() end)

      it("round-trips empty, binary and 1 MiB values", function()
        local big = all_bytes():rep(4096)
        assert.equal(1048576, #big)
        assert(s:put("empty", ""))
        assert(s:put("bin", "\0a\0\255" .. all_bytes()))
        assert(s:put("big", big))
        assert.equal("", s:get("empty"))
        assert.equal("\0a\0\255" .. all_bytes(), s:get("bin"))
        assert.equal(big, s:get("big"))
      end)

      it("takes byte-string keys, NULs and the empty key included", function()
        assert(s:put("a\0b", "1"))
        assert(s:put("a\0c", "2"))
        assert(s:put("", "3"))
        assert.equal("1", s:get("a\0b"))
        assert.equal("2", s:get("a\0c"))
        assert.equal("3", s:get(""))
        assert.is_nil(s:get("a"))
      end)

      it("returns nil for an absent key and replaces on put", function()
        assert.is_nil(s:get("nope"))
        assert(s:put("k", "1"))
        assert(s:put("k", "2"))
        assert.equal("2", s:get("k"))
        assert.equal("1", sql(path, "SELECT count(*) FROM oflua_kv"))
      end)

      it("delete says whether the key was there", function()
        assert(s:put("k", "v"))
        assert.is_true(s:delete("k"))
        assert.is_false(s:delete("k"))
        assert.is_nil(s:get("k"))
      end)

      it("raises on a key longer than 4096 bytes or a non-string", function()
        assert.has_error(function() s:put(("k"):rep(4097), "v") end)
        assert.has_error(function() s:get({}) end)
        assert.has_error(function() s:put("k") end)
      end)

      it("lists by prefix in insertion order", function()
        for _, k in ipairs({ "conn:b", "user:1", "conn:a", "conn:\0", "con" }) do
          assert(s:put(k, "v-" .. k))
        end
        local got = {}
        for k, v in s:list("conn:") do got[#got + 1] = k .. "=" .. v end
        assert.same({ "conn:b=v-conn:b", "conn:a=v-conn:a", "conn:\0=v-conn:\0" }, got)
        local n = 0
        for _ in s:list() do n = n + 1 end
        assert.equal(5, n)
        for _ in s:list("zzz") do error("no row expected") end
      end)

      it("lets the loop body write", function()
        for i = 1, 10 do assert(s:put("k" .. i, tostring(i))) end
        local seen = 0
        for k, v in s:list("k") do
          seen = seen + 1
          assert(s:put(k, v .. "!"))
          assert(s:delete("k" .. (tonumber(v) + 1)))
        end
        assert.equal(5, seen)
        assert.equal("1!", s:get("k1"))
        assert.is_nil(s:get("k2"))
      end)

      it("keeps namespaces apart in one file", function()
        local key = store.keygen()
        local p2 = newpath()
        local a = open(p2, key, { namespace = "a" })
        local b = open(p2, key, { namespace = "b" })
        assert(a:put("k", "from a"))
        assert.is_nil(b:get("k"))
        assert(b:put("k", "from b"))
        assert.equal("from a", a:get("k"))
        local n = 0
        for _ in b:list() do n = n + 1 end
        assert.equal(1, n)
        a:close()
        b:close()
      end)

      it("uses a fresh random nonce for every write", function()
        for i = 1, 50 do assert(s:put("k" .. i, "same")) end
        assert(s:put("k1", "same"))
        assert.equal("50|50|0", sql(path,
          "SELECT count(*), count(DISTINCT substr(vbox, 1, 12)),"
          .. " count(*) FILTER (WHERE substr(vbox, 1, 12) = " .. be.blob(("00"):rep(12)) .. ")"
          .. " FROM oflua_kv"))
      end)
    end)

    describe("transactions", function()
      local s
      before_each(function() s = open(newpath(), store.keygen()) end)
      after_each(function() s:close() end)

      it("commits when fn returns and hands back its results", function()
        local a, b = s:transaction(function(t)
          assert(t:put("x", "1"))
          assert(t:put("y", "2"))
          return "r1", 2
        end)
        assert.equal("r1", a)
        assert.equal(2, b)
        assert.equal("1", s:get("x"))
      end)

      it("rolls back and re-raises the same error value", function()
        assert(s:put("x", "before"))
        local e = { kind = "boom" }
        local ok, err = pcall(s.transaction, s, function(t)
          assert(t:put("x", "after"))
          assert(t:put("y", "new"))
          for _ in t:list() do end
          error(e)
        end)
        assert.is_false(ok)
        assert.equal(e, err)
        assert.equal("before", s:get("x"))
        assert.is_nil(s:get("y"))
      end)

      it("nests as savepoints", function()
        s:transaction(function(t)
          assert(t:put("outer", "1"))
          assert.is_false(pcall(t.transaction, t, function(u)
            assert(u:put("inner", "1"))
            error("inner fails")
          end))
          t:transaction(function(u) assert(u:put("inner2", "1")) end)
        end)
        assert.equal("1", s:get("outer"))
        assert.is_nil(s:get("inner"))
        assert.equal("1", s:get("inner2"))
      end)

      it("runs the inbox inside a transaction", function()
        assert.has_error(function()
          s:transaction(function(t)
            assert.is_true(t:inbox_add("e1", "p", 1))
            assert.equal(1, #t:inbox_claim(5, 30, 1))
            error("undo")
          end)
        end)
        assert.is_nil(s:inbox_get("e1"))
      end)

      it("refuses close and rekey inside a transaction", function()
        s:transaction(function(t)
          assert.has_error(function() t:close() end)
          local ok, err = t:rekey(store.keygen())
          assert.is_nil(ok)
          assert.matches("inside a transaction", err)
        end)
      end)
    end)

    describe("tampering", function()
      local s, path, key
      before_each(function()
        path = newpath()
        key = store.keygen()
        s = open(path, key)
        assert(s:put("conn:a", "conn_aaaaaaaaaaaa"))
        assert(s:put("conn:b", "conn_bbbbbbbbbbbb"))
      end)
      after_each(function() s:close() end)

      local function rowid(k)
        -- rows are inserted in order: conn:a is 1, conn:b is 2
        return k == "conn:a" and 1 or 2
      end

      it("detects an altered ciphertext byte and names the row", function()
        flip(path, "oflua_kv", "vbox", rowid("conn:a"), 20)
        local v, err = s:get("conn:a")
        assert.is_nil(v)
        assert.matches("oflua_kv row 1 failed authentication", err)
        assert.equal("conn_bbbbbbbbbbbb", s:get("conn:b"))
      end)

      it("detects an altered tag", function()
        local len = tonumber(sql(path, "SELECT length(vbox) FROM oflua_kv WHERE id = 2"))
        flip(path, "oflua_kv", "vbox", 2, len)
        local v, err = s:get("conn:b")
        assert.is_nil(v)
        assert.matches("row 2 failed authentication", err)
      end)

      it("detects an altered nonce", function()
        flip(path, "oflua_kv", "vbox", 1, 3)
        local v, err = s:get("conn:a")
        assert.is_nil(v)
        assert.matches("row 1 failed authentication", err)
      end)

      it("detects ciphertexts swapped between rows (AAD binds the key)", function()
        swap(path, "oflua_kv", "vbox")
        local v1, e1 = s:get("conn:a")
        local v2, e2 = s:get("conn:b")
        assert.is_nil(v1)
        assert.is_nil(v2)
        assert.matches("row 1 failed", e1)
        assert.matches("row 2 failed", e2)
      end)

      it("detects swapped blind indexes", function()
        swap(path, "oflua_kv", "kidx")
        local v, err = s:get("conn:a")
        assert.is_nil(v)
        assert.matches("row 2 failed authentication", err)
      end)

      it("detects a row moved to another namespace (AAD binds the namespace)", function()
        local other = open(path, key, { namespace = "other" })
        assert(other:put("conn:a", "placeholder")) -- row 3
        sql(path, "UPDATE oflua_kv SET vbox = (SELECT vbox FROM oflua_kv WHERE id = 1) WHERE id = 3")
        local v, err = other:get("conn:a")
        assert.is_nil(v)
        assert.matches("row 3 failed authentication", err)
        -- a whole row moved by renaming its namespace: its sealed key no longer opens
        sql(path, "UPDATE oflua_kv SET ns = 'other' WHERE id = 2")
        assert.has_error(function() for _ in other:list() do end end)
        assert.is_nil(s:get("conn:b"))
        other:close()
      end)

      it("detects an altered sealed key in list() by raising", function()
        flip(path, "oflua_kv", "kbox", 2, 15)
        assert.has_error(function() for _ in s:list() do end end,
          "oflua.store: oflua_kv row 2 failed authentication (altered, copied from another row"
          .. " or namespace, or written under another key)")
      end)

      it("detects a value truncated below the box overhead", function()
        sql(path, "UPDATE oflua_kv SET vbox = " .. be.blob("00") .. " WHERE id = 1")
        local v, err = s:get("conn:a")
        assert.is_nil(v)
        assert.matches("row 1 failed", err)
        sql(path, "UPDATE oflua_kv SET vbox = " .. be.blob("") .. " WHERE id = 2")
        assert.is_nil(s:get("conn:b"))
      end)

      it("treats an altered key check as a wrong key", function()
        s:close()
        local k2 = store.keygen()
        local p2 = newpath()
        open(p2, k2):close()
        flip(p2, "oflua_meta", "check_box", 1, 14, "one")
        local s2, err = store.open(be.open_opts(p2, k2))
        assert.is_nil(s2)
        assert.matches("wrong key", err)
        s = open(newpath(), store.keygen())
      end)
    end)
    describe("rekey", function()
      it("re-seals values, keys and the inbox; only the new key opens the store", function()
        local path, dir = newpath()
        local old, new = store.keygen(), store.keygen()
        local s = open(path, old)
        for i = 1, 20 do assert(s:put("conn:" .. i, "conn_value_" .. i)) end
        local other = open(path, old, { namespace = "links" })
        assert(other:put("ref", "conn_ref"))
        other:close()
        assert(s:inbox_add("evt_1", "payload 1", 10))
        assert(s:inbox_add("evt_2", "payload 2", 10))
        assert.equal("pending", (s:inbox_fail("evt_2", "handler said no", 5, 11)))
        local before = sql(path, "SELECT " .. be.hex("vbox") .. " FROM oflua_kv WHERE id = 1")
        local ok, rows = s:rekey(new)
        assert.is_true(ok)
        assert.equal(23, rows)
        assert.equal(2, s:info().key_id)
        assert.not_equal(before, sql(path, "SELECT " .. be.hex("vbox") .. " FROM oflua_kv WHERE id = 1"))
        assert.equal("2|2", sql(path, "SELECT min(kid), max(kid) FROM"
          .. " (SELECT kid FROM oflua_kv UNION ALL SELECT kid FROM oflua_inbox) AS k"))
        -- the handle goes on with the new keys
        assert.equal("conn_value_7", s:get("conn:7"))
        assert(s:put("after", "x"))
        s:close()
        local s1, err = store.open(be.open_opts(path, old))
        assert.is_nil(s1)
        assert.matches("wrong key", err)
        local s2 = open(path, new)
        for i = 1, 20 do assert.equal("conn_value_" .. i, s2:get("conn:" .. i)) end
        local n = 0
        for _ in s2:list("conn:") do n = n + 1 end
        assert.equal(20, n)
        local e = s2:inbox_get("evt_2")
        assert.equal("payload 2", e.payload)
        assert.equal("handler said no", e.last_error)
        assert.is_false(s2:inbox_add("evt_1", "again"))
        s2:close()
        local s3 = open(path, new, { namespace = "links" })
        assert.equal("conn_ref", s3:get("ref"))
        -- the {key_file} form checks the file like open does
        local kf = dir .. "/k3"
        assert(store.save_key(kf, store.keygen()))
        assert.is_true((s3:rekey({ key_file = kf })))
        s3:close()
        assert(store.open(be.open_opts(path, nil, { key_file = kf }))):close()
      end)

      it("changes nothing when a row fails to open", function()
        local path = newpath()
        local old = store.keygen()
        local s = open(path, old)
        assert(s:put("a", "1"))
        assert(s:put("b", "2"))
        flip(path, "oflua_kv", "vbox", 2, 20)
        local ok, err = s:rekey(store.keygen())
        assert.is_nil(ok)
        assert.matches("rekey stopped at oflua_kv row 2, which failed authentication", err)
        assert.matches("nothing was changed", err)
        assert.equal("1", s:get("a"))
        s:close()
        assert(store.open(be.open_opts(path, old))):close()
      end)

      it("refuses a bad new key without echoing it", function()
        local s = open(newpath(), store.keygen())
        local ok, err = s:rekey("not-a-key-at-all")
        assert.is_nil(ok)
        assert.matches("32 bytes", err)
        assert.is_nil(err:find("not-a-key", 1, true))
        s:close()
      end)

      it("makes a handle opened before the rekey fail clearly instead of misreading", function()
        local path = newpath()
        local old = store.keygen()
        local a = open(path, old)
        local b = open(path, old)
        assert(a:put("k", "v"))
        assert.is_true((a:rekey(store.keygen())))
        for _, call in ipairs({
          function() return b:get("k") end,
          function() return b:get("absent") end,
          function() return b:put("k", "stale write") end,
          function() return b:delete("absent") end,
          function() return b:inbox_add("e", "p") end,
        }) do
          local v, err = call()
          assert.is_nil(v)
          assert.matches("rekeyed", err)
        end
        assert.has_error(function() for _ in b:list() do end end)
        assert.equal("v", a:get("k"))
        a:close()
        b:close()
      end)
    end)

    describe("webhook inbox", function()
      local s, path
      before_each(function()
        path = newpath()
        s = open(path, store.keygen())
      end)
      after_each(function() s:close() end)

      it("adds an event once", function()
        assert.is_true(s:inbox_add("evt_1", "{\"a\":1}", 100))
        assert.is_false(s:inbox_add("evt_1", "different", 101))
        local e = s:inbox_get("evt_1")
        assert.equal("{\"a\":1}", e.payload)
        assert.equal("pending", e.state)
        assert.equal(0, e.attempts)
        assert.equal(100, e.created_at)
        assert.is_nil(s:inbox_get("evt_2"))
      end)

      it("claims due events oldest first, up to n, with a lease", function()
        for i = 1, 5 do assert(s:inbox_add("e" .. i, "p" .. i, 100 + i)) end
        local got = s:inbox_claim(3, 60, 200)
        assert.equal(3, #got)
        assert.is_string(got[1].claim) -- the claim token (fences inbox_done / inbox_fail)
        got[1].claim = nil
        assert.same({ id = "e1", payload = "p1", attempts = 0 }, got[1])
        assert.equal("e3", got[3].id)
        local rest = s:inbox_claim(10, 60, 200)
        assert.equal(2, #rest)
        assert.same({}, s:inbox_claim(10, 60, 259))
        assert.equal(5, s:inbox_stats().claimed)
      end)

      it("hands a claimed event out again when its lease expires (a crashed worker)", function()
        assert(s:inbox_add("e1", "p", 100))
        assert.equal(1, #s:inbox_claim(1, 30, 100))
        assert.same({}, s:inbox_claim(1, 30, 129))
        local again = s:inbox_claim(1, 30, 130)
        assert.equal(1, #again)
        assert.equal("e1", again[1].id)
        assert.equal(1, again[1].attempts) -- the expired lease counts as an attempt
        assert.matches("lease expired", s:inbox_get("e1").last_error)
      end)

      it("dead-letters an event whose leases keep expiring", function()
        assert(s:inbox_add("poison", "p", 0))
        local now = 0
        for _ = 1, 3 do
          assert.equal(1, #s:inbox_claim(1, 10, now, 3))
          now = now + 11
        end
        assert.same({}, s:inbox_claim(1, 10, now, 3))
        assert.equal("dead", s:inbox_get("poison").state)
      end)

      it("does not hand out done events", function()
        assert(s:inbox_add("e1", "p", 100))
        s:inbox_claim(1, 30, 100)
        assert.is_true(s:inbox_done("e1", 101))
        assert.same({}, s:inbox_claim(1, 30, 1000))
        assert.is_false(s:inbox_done("unknown"))
        local st = s:inbox_stats()
        assert.same({ pending = 0, claimed = 0, done = 1, dead = 0, total = 1 }, st)
      end)

      it("backs off exponentially and dead-letters after max_attempts", function()
        assert(s:inbox_add("e1", "payload", 0))
        local now = 0
        for attempt = 1, 4 do
          local got = s:inbox_claim(1, 30, now)
          assert.equal(1, #got)
          assert.equal(attempt - 1, got[1].attempts)
          local state, next_at = s:inbox_fail("e1", "failure " .. attempt, 5, now)
          assert.equal("pending", state)
          assert.equal(now + 2 ^ attempt, next_at)
          assert.same({}, s:inbox_claim(1, 30, next_at - 0.5))
          now = next_at
        end
        assert.equal(1, #s:inbox_claim(1, 30, now))
        assert.equal("dead", s:inbox_fail("e1", "failure 5", 5, now))
        assert.same({}, s:inbox_claim(10, 30, now + 1e6))
        local dead = s:inbox_dead()
        assert.same({ { id = "e1", payload = "payload", attempts = 5, last_error = "failure 5" } },
          dead)
        assert.equal(1, s:inbox_stats().dead)
      end)

      it("takes a custom delay and caps the default backoff", function()
        assert(s:inbox_add("e1", "p", 0))
        local _, at = s:inbox_fail("e1", "x", 100, 0, 7.5)
        assert.equal(7.5, at)
        for _ = 1, 20 do _, at = s:inbox_fail("e1", "x", 100, 0) end
        assert.equal(3600, at)
      end)

      it("retries a dead event from scratch", function()
        assert(s:inbox_add("e1", "p", 0))
        assert.equal("dead", s:inbox_fail("e1", "bad", 1, 0))
        assert.is_true(s:inbox_retry("e1", 50))
        assert.is_false(s:inbox_retry("nope"))
        local got = s:inbox_claim(1, 30, 50)
        got[1].claim = nil
        assert.same({ { id = "e1", payload = "p", attempts = 0 } }, got)
        assert.same({}, s:inbox_dead())
      end)

      it("reports failing an unknown event", function()
        local ok, err = s:inbox_fail("nope", "x")
        assert.is_nil(ok)
        assert.matches("no such event", err)
      end)

      it("stores binary payloads and reasons", function()
        local p = all_bytes():rep(100)
        assert(s:inbox_add("bin\0id", p, 0))
        s:inbox_fail("bin\0id", "\0why", 1, 0)
        local d = s:inbox_dead()[1]
        assert.equal("bin\0id", d.id)
        assert.equal(p, d.payload)
        assert.equal("\0why", d.last_error)
      end)

      it("prunes old done events", function()
        assert(s:inbox_add("old", "p", 0))
        assert(s:inbox_add("new", "p", 0))
        s:inbox_done("old", 10)
        s:inbox_done("new", 1000)
        assert.equal(1, s:inbox_prune(500, 1100))
        assert.is_nil(s:inbox_get("old"))
        assert.is_true(s:inbox_add("old", "p again", 1100))
      end)

      it("detects a tampered payload and names the row", function()
        assert(s:inbox_add("e1", "payload one", 0))
        assert(s:inbox_add("e2", "payload two", 0))
        flip(path, "oflua_inbox", "pbox", 2, 16)
        local got, err = s:inbox_claim(10, 30, 1)
        assert.is_nil(got)
        assert.matches("oflua_inbox row 2 failed authentication", err)
        -- nothing was claimed: the claim rolled back
        assert.equal(0, s:inbox_stats().claimed)
        local e, err2 = s:inbox_get("e2")
        assert.is_nil(e)
        assert.matches("row 2", err2)
      end)

      it("detects payloads swapped between events", function()
        assert(s:inbox_add("e1", "payload one", 0))
        assert(s:inbox_add("e2", "payload two", 0))
        swap(path, "oflua_inbox", "pbox")
        local e, err = s:inbox_get("e1")
        assert.is_nil(e)
        assert.matches("row 1 failed", err)
      end)

      it("validates its arguments", function()
        assert.has_error(function() s:inbox_claim(0, 30) end)
        assert.has_error(function() s:inbox_claim(1, -1) end)
        assert.has_error(function() s:inbox_add("e", "p", 0 / 0) end)
        assert.has_error(function() s:inbox_fail("e", "x", 0) end)
      end)
    end)
end)
end
