-- oflua.store behaviour that is new with the backend interface, on every
-- backend (SQLite always; PostgreSQL when OFLUA_TEST_PG_URL is set, as under
-- scripts/test): batch inserts, schema versions, list() through its index,
-- and for PostgreSQL: SKIP LOCKED claims, outages, reconnection, secrets in
-- messages and dumps.
local h = require("spec.helper")
local store = require("oflua.store")
local backends = require("spec.support.store_backends")

teardown(function() backends.cleanup() end)

for _, be in ipairs(backends.all()) do
  local function open(target, key, extra) return assert(store.open(be.open_opts(target, key, extra))) end

  describe("oflua.store on " .. be.name, function()
    describe("inbox_add_many", function()
      it("inserts a batch and says which events were new", function()
        local s = open(be.new(), store.keygen())
        assert.is_true(s:inbox_add("e2", "old"))
        local got = assert(s:inbox_add_many({
          { id = "e1", payload = "p1" }, { id = "e2", payload = "p2" }, { id = "e3", payload = "p3" },
          { id = "e1", payload = "again" },
        }, 100))
        assert.same({ true, false, true, false }, got)
        assert.equal("p1", s:inbox_get("e1").payload)
        assert.equal("old", s:inbox_get("e2").payload)
        assert.equal(3, s:inbox_stats().pending)
        assert.same({}, assert(s:inbox_add_many({})))
        s:close()
      end)

      it("inserts leased to the caller with lease_s", function()
        local s = open(be.new(), store.keygen())
        local two = { { id = "a", payload = "1" }, { id = "b", payload = "2" } }
        assert.same({ true, true }, s:inbox_add_many(two, 100, 30))
        assert.equal(2, s:inbox_stats().claimed)
        assert.same({}, s:inbox_claim(10, 30, 120))
        assert.equal(2, #s:inbox_claim(10, 30, 131))
        s:close()
      end)

      it("writes all rows or none when the database fails mid-batch", function()
        local target = be.new()
        local s = open(target, store.keygen())
        assert(s:inbox_add("first", "p"))
        -- A trigger that refuses the third row, as a full disk or a lost
        -- connection would refuse it.
        if be.name == "sqlite" then
          be.sql(target, "CREATE TRIGGER refuse BEFORE INSERT ON oflua_inbox"
            .. " WHEN (SELECT count(*) FROM oflua_inbox) >= 2 BEGIN SELECT RAISE(ABORT, 'refused'); END")
        else
          be.sql(target, "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$"
            .. " BEGIN IF (SELECT count(*) FROM oflua_inbox) >= 2 THEN RAISE EXCEPTION 'refused';"
            .. " END IF; RETURN NEW; END $$;"
            .. " CREATE TRIGGER refuse BEFORE INSERT ON oflua_inbox FOR EACH ROW EXECUTE FUNCTION refuse()")
        end
        local got, err, kind = s:inbox_add_many({ { id = "a", payload = "1" }, { id = "b", payload = "2" } })
        assert.is_nil(got)
        assert.matches("refused", err)
        assert.equal("db", kind)
        assert.is_nil(s:inbox_get("a"))
        assert.equal(1, s:inbox_stats().total)
        s:close()
      end)

      it("validates the list", function()
        local s = open(be.new(), store.keygen())
        assert.has_error(function() s:inbox_add_many("x") end)
        assert.has_error(function() s:inbox_add_many({ { id = "a" } }) end)
        assert.has_error(function() s:inbox_add_many({ "a" }) end)
        local many = {}
        for i = 1, 1001 do many[i] = { id = tostring(i), payload = "" } end
        assert.has_error(function() s:inbox_add_many(many) end)
        s:close()
      end)
    end)

    it("gives up waiting for another handle's transaction after busy_timeout_ms", function()
      local target = be.new()
      local key = store.keygen()
      local a = open(target, key, { busy_timeout_ms = 200 })
      local b = open(target, key, { busy_timeout_ms = 200 })
      local r1, r2, r3 = a:transaction(function()
        assert(a:put("k", "a"))
        return b:transaction(function() return "never" end)
      end)
      assert.is_nil(r1)
      assert.matches(be.name == "sqlite" and "locked" or "lock timeout", r2)
      assert.equal("db", r3)
      assert.equal("a", b:get("k"))
      a:close()
      b:close()
    end)

    describe("inbox_done and inbox_retry", function()
      it("mark an event in one statement, and say why when they cannot", function()
        local target = be.new()
        local key = store.keygen()
        local a = open(target, key)
        local b = open(target, key)
        assert(a:inbox_add("e1", "p", 10))
        assert.is_true(b:inbox_done("e1", 11))
        local e = a:inbox_get("e1")
        assert.same({ "done", 0, 11 }, { e.state, e.attempts, e.updated_at })
        assert.is_true(a:inbox_retry("e1", 12))
        e = a:inbox_get("e1")
        assert.same({ "pending", 0, 12 }, { e.state, e.attempts, e.next_attempt_at })
        assert.is_false(a:inbox_done("nope"))
        assert.is_true((a:rekey(store.keygen())))
        local ok, err, kind = b:inbox_done("e1")
        assert.is_nil(ok)
        assert.matches("rekeyed", err)
        assert.equal("stale", kind)
        assert.is_true(a:inbox_done("e1"))
        a:close()
        b:close()
      end)
    end)

    describe("inbox_release", function()
      it("hands a claimed event back unrun: due now, attempts kept, fenced by its claim", function()
        local s = open(be.new(), store.keygen())
        assert(s:inbox_add("r1", "p", 10))
        local got = assert(s:inbox_claim(1, 60, 10))
        assert.is_true(s:inbox_release("r1", 20, got[1].claim))
        local e = s:inbox_get("r1")
        assert.same({ "pending", 0, 20 }, { e.state, e.attempts, e.next_attempt_at })
        -- an expired lease taken over counts an attempt; releasing keeps it
        got = assert(s:inbox_claim(1, 5, 20))
        local again = assert(s:inbox_claim(1, 60, 30)) -- the 5 s lease ran out
        assert.equal(1, again[1].attempts)
        local ok, _, kind = s:inbox_release("r1", 31, got[1].claim) -- the first claim is gone
        assert.is_nil(ok)
        assert.equal("lost", kind)
        assert.equal("claimed", s:inbox_get("r1").state)
        assert.is_true(s:inbox_release("r1", 32, again[1].claim))
        e = s:inbox_get("r1")
        assert.same({ "pending", 1, 32 }, { e.state, e.attempts, e.next_attempt_at })
        assert.is_false(s:inbox_release("nope"))
        assert(s:inbox_add("r2", "p", 10))
        assert.is_true(s:inbox_done("r2", 11))
        assert.is_false(s:inbox_release("r2", 40)) -- only a claimed event goes back
        assert.equal("done", s:inbox_get("r2").state)
        assert.has_error(function() s:inbox_release("r1", nil, "not a token") end)
        s:close()
      end)
    end)

    describe("inbox_list", function()
      it("pages through events by state with a cursor", function()
        local s = open(be.new(), store.keygen())
        for i = 1, 5 do assert(s:inbox_add("e" .. i, "p" .. i, 10)) end
        assert(s:inbox_done("e2"))
        local page, cursor = assert(s:inbox_list({ limit = 3 }))
        assert.same({ "e1", "e2", "e3" }, { page[1].id, page[2].id, page[3].id })
        local rest = s:inbox_list({ after = cursor })
        assert.same({ "e4", "e5" }, { rest[1].id, rest[2].id })
        local done = s:inbox_list({ state = "done" })
        assert.equal(1, #done)
        assert.equal("p2", done[1].payload)
        assert.equal("done", done[1].state)
        assert.has_error(function() s:inbox_list({ state = "bogus" }) end)
        s:close()
      end)
    end)

    describe("schema", function()
      it("records its version and refuses a newer one", function()
        local target = be.new()
        local key = store.keygen()
        local s = open(target, key)
        assert.equal(2, s:info().schema_version)
        s:close()
        assert.equal("2", be.sql(target, "SELECT version FROM oflua_schema"))
        be.sql(target, "UPDATE oflua_schema SET version = 3")
        local s2, err = store.open(be.open_opts(target, key))
        assert.is_nil(s2)
        assert.matches("schema version 3, newer than this oflua's %(2%)", err)
      end)

      it("lists a namespace through its (ns, id) index, in id order", function()
        local target = be.new()
        local s = open(target, store.keygen())
        s:transaction(function()
          for i = 1, 10000 do assert(s:put(("user:%05d"):format(i), tostring(i))) end
        end)
        local n, last = 0, 0
        for _, v in s:list("user:") do
          n = n + 1
          assert.equal(last + 1, tonumber(v))
          last = tonumber(v)
        end
        assert.equal(10000, n)
        s:close()
        if be.name == "sqlite" then
          local plan = be.sql(target, "EXPLAIN QUERY PLAN SELECT id, kid, kbox, vbox, ns FROM oflua_kv"
            .. " INDEXED BY oflua_kv_ns_id WHERE ns = 'default' AND id > 0 ORDER BY id LIMIT 64")
          assert.is_nil(plan:find("TEMP B%-TREE"))
        else
          -- with statistics, an index in id order and no sort of the namespace
          local plan = be.sql(target, "ANALYZE oflua_kv; EXPLAIN SELECT id FROM oflua_kv"
            .. " WHERE ns = 'default' AND id > 5000 ORDER BY id LIMIT 64")
          assert.matches("Index Scan", plan)
          assert.is_nil(plan:find("Sort"), plan)
        end
      end)
    end)

    if be.name == "sqlite" then
      it("migrates a version 1 file (no version row, no list index)", function()
        local target = be.new()
        local key = store.keygen()
        local s = open(target, key)
        assert(s:put("k", "v"))
        s:close()
        be.sql(target, "DROP TABLE oflua_schema; DROP INDEX oflua_kv_ns_id; DROP INDEX oflua_inbox_ns_id")
        s = open(target, key)
        assert.equal("v", s:get("k"))
        s:close()
        assert.equal("2", be.sql(target, "SELECT version FROM oflua_schema"))
        assert.equal("1", be.sql(target, "SELECT count(*) FROM sqlite_master WHERE name = 'oflua_kv_ns_id'"))
      end)
    end
  end)
end

if backends.pg then
  local pg = backends.pg
  local url = backends.pg_url
  local password = url:match("^postgresql://[^:]+:([^@]+)@")

  describe("oflua.store on postgresql", function()
    it("claims disjoint events from two handles (FOR UPDATE SKIP LOCKED)", function()
      local target = pg.new()
      local key = store.keygen()
      local a = assert(store.open(pg.open_opts(target, key)))
      local b = assert(store.open(pg.open_opts(target, key)))
      for i = 1, 6 do assert(a:inbox_add("e" .. i, "p" .. i, 10)) end
      local mine, theirs
      a:transaction(function()
        mine = assert(a:inbox_claim(2, 30, 20))
        -- b does not wait for a's locked rows and does not get them
        theirs = assert(b:inbox_claim(10, 30, 20))
      end)
      assert.equal(2, #mine)
      assert.equal(4, #theirs)
      local seen = {}
      for _, e in ipairs(mine) do seen[e.id] = true end
      for _, e in ipairs(theirs) do
        assert.is_nil(seen[e.id])
        seen[e.id] = true
      end
      assert.equal(6, #(function() local t = {} for k in pairs(seen) do t[#t + 1] = k end return t end)())
      -- a lease that ends is taken over
      local again = assert(b:inbox_claim(10, 30, 51))
      assert.equal(6, #again)
      assert.equal(1, again[1].attempts)
      a:close()
      b:close()
    end)

    it("keeps the password out of messages and info", function()
      local bad = url:gsub(":[^:@]+@", ":wrong-" .. password .. "@")
      local s, err, kind = store.open({ url = bad, key = store.keygen() })
      assert.is_nil(s)
      assert.equal("db", kind)
      assert.is_nil(err:find(password, 1, true))
      assert.matches("password authentication failed", err)
      local ok = assert(store.open({ url = pg.new(), key = store.keygen() }))
      local text = tostring(ok) .. require("cjson").encode(ok:info())
      assert.is_nil(text:find(password, 1, true))
      ok:close()
    end)

    it("takes the password from PGPASSFILE", function()
      local target, dir = pg.new()
      local passfile = dir .. "/pgpass"
      local host, port, db = target:match("@([^:/]+):(%d+)/([^?]+)")
      h.write_file(passfile, ("%s:%s:%s:postgres:%s\n"):format(host, port, db, password))
      h.sh("chmod 600 " .. h.shq(passfile))
      local out, err, code = h.oflua({ "-e", ([[
        local store = require("oflua.store")
        local s = assert(store.open{url = %q, key = store.keygen()})
        assert(s:put("k", "v")); print(s:get("k"))]]):format(target:gsub(":[^:@]+@", "@")) },
        { env = { PGPASSFILE = passfile } })
      assert.equal(0, code, err)
      assert.equal("v\n", out)
    end)

    it("answers unavailable while the server is down, then recovers by itself", function()
      local ctl = assert(os.getenv("OFLUA_TEST_PG_CTL"), "OFLUA_TEST_PG_CTL")
      local target = pg.new()
      local key = store.keygen()
      local s = assert(store.open(pg.open_opts(target, key)))
      assert(s:put("k", "v"))
      assert(s:inbox_add("e1", "p"))
      local _, e, c = h.sh(h.shq(ctl) .. " stop -m fast")
      assert.equal(0, c, e)
      local ok, err, kind = s:put("k", "w")
      assert.is_nil(ok)
      assert.equal("unavailable", kind)
      assert.is_nil(err:find(password, 1, true))
      local added, _, kind2 = s:inbox_add("e2", "p")
      assert.is_nil(added)
      assert.equal("unavailable", kind2)
      -- a handle opened during the outage is returned and connects later
      local late = assert(store.open(pg.open_opts(target, key)))
      local _, _, kind3 = late:get("k")
      assert.equal("unavailable", kind3)
      _, e, c = h.sh(h.shq(ctl) .. " start")
      assert.equal(0, c, e)
      assert.equal("v", s:get("k"))
      assert.is_true(s:inbox_add("e2", "p"))
      assert.equal("v", late:get("k"))
      -- a transaction that loses its connection fails, then the handle works again
      local r1, r2, r3 = s:transaction(function()
        assert(s:put("in-tx", "1"))
        local _, ce, cc = h.sh(h.shq(ctl) .. " restart -m fast")
        assert.equal(0, cc, ce)
        local v, why, k = s:put("in-tx-2", "2")
        return v, k or why
      end)
      -- the commit fails: the transaction is gone with its connection
      assert.is_nil(r1)
      assert.matches("lost inside a transaction", r2)
      assert.equal("unavailable", r3)
      assert.is_nil(s:get("in-tx"))
      assert(s:put("after", "1"))
      s:close()
      late:close()
    end)

    it("is selected by OFLUA_STORE in the oflua store and doctor commands, password kept out", function()
      local target = pg.new()
      local env = { OFLUA_STORE = target, OFLUA_STORE_KEY = store.keygen() }
      local _, err, code = h.oflua({ "store", "put", "user:1", "conn_CLI" }, { env = env })
      assert.equal(0, code, err)
      local out
      out, err, code = h.oflua({ "store", "list", "--values", "--reveal-ids" }, { env = env })
      assert.equal(0, code, err)
      assert.equal("user:1\tconn_CLI\n", out)
      out, err = h.oflua({ "doctor", "--skip", "api_key", "--skip", "link", "--skip", "webhook",
        "--skip", "access" }, { env = env })
      assert.matches("✓ store", out, 1, true)
      assert.matches("postgresql", out, 1, true)
      assert.is_nil((out .. err):find(password, 1, true))
      -- a wrong key: one line, no password
      env.OFLUA_STORE_KEY = store.keygen()
      out, err, code = h.oflua({ "store", "get", "user:1" }, { env = env })
      assert.equal(1, code)
      assert.matches("wrong key", err)
      assert.is_nil((out .. err):find(password, 1, true))
    end)

    it("leaves no connection id, key or payload in clear in pg_dump", function()
      local target = pg.new()
      local s = assert(store.open(pg.open_opts(target, store.keygen())))
      assert(s:put("user:alice", "conn_SECRETCONNECTIONID"))
      assert(s:inbox_add("evt_SECRETEVENTID", '{"connectionId":"conn_SECRETPAYLOAD"}'))
      assert(s:inbox_fail("evt_SECRETEVENTID", "failed for conn_SECRETREASON"))
      s:close()
      local dump, err, code = h.sh("pg_dump " .. h.shq(target))
      assert.equal(0, code, err)
      assert.matches("oflua_inbox", dump)
      for _, needle in ipairs({ "SECRET", "alice", "connectionId", "evt_" }) do
        assert.is_nil(dump:find(needle, 1, true), needle .. " in the dump")
      end
    end)
  end)
end
