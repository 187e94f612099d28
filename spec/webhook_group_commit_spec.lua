-- Group commit of the webhook inbox under `oflua serve` (ofauth.webhooks.app
-- over oflua.store, the receiver fixture): a commit that fails answers every
-- delivery of its batch 503 and none 200. A trigger makes the database
-- refuse inserts once the inbox holds 10 rows (as a full disk would: SQLite
-- RAISE(ABORT), PostgreSQL RAISE EXCEPTION); 3 deliveries arrive one at a
-- time, then 57 more 16 at a time. Then: every delivery answered 200 is in
-- the inbox, none answered 503 is, and the rows of the failed batches (the
-- committer's failed_rows counter) are exactly the 503 answers, so no batch
-- was half-committed or half-acknowledged. Once the trigger is gone the
-- sender's retries are taken and every event is handled once. On SQLite,
-- and on PostgreSQL when OFLUA_TEST_PG_URL is set. And a commit that outlives the handler's time
-- limit (another process holds SQLite's write lock) is answered 503; the row
-- lands once the lock is free, and the sender's retry is a duplicate.
local h = require("spec.helper")
local cjson = require("cjson")
local http = require("oflua.http")
local store = require("oflua.store")
local webhooks = require("ofauth.webhooks")
local C = require("spec.fixtures.abuse.webhooks")
local backends = require("spec.support.store_backends")

local N, LIMIT, PARALLEL, SOLO = 60, 10, 16, 3
local FIX = h.source_dir .. "/spec/fixtures/abuse/"

local TRIGGER = {
  sqlite = { add = ("CREATE TRIGGER oflua_test_full BEFORE INSERT ON oflua_inbox "
    .. "WHEN (SELECT count(*) FROM oflua_inbox) >= %d BEGIN SELECT RAISE(ABORT, 'inbox full (test)'); END;")
    :format(LIMIT),
    drop = "DROP TRIGGER oflua_test_full" },
  postgresql = { add = ("CREATE FUNCTION oflua_test_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    .. "IF (SELECT count(*) FROM oflua_inbox) >= %d THEN RAISE EXCEPTION 'inbox full (test)'; END IF; "
    .. "RETURN NEW; END $$; CREATE TRIGGER oflua_test_full BEFORE INSERT ON oflua_inbox "
    .. "FOR EACH ROW EXECUTE FUNCTION oflua_test_full();"):format(LIMIT),
    drop = "DROP TRIGGER oflua_test_full ON oflua_inbox; DROP FUNCTION oflua_test_full();" },
}

local alive = h.alive

local function eventually(pred, limit) return h.eventually(pred, limit, 0.02) end

local function body_of(i)
  return cjson.encode({ eventType = "connection.updated",
    data = { connection = { id = "conn_gc" .. i, status = "active" } } })
end

-- Sends deliveries `list` PARALLEL at a time; returns {[i] = status or error kind}.
local function send(url, list)
  local out = {}
  for k = 1, #list, PARALLEL do
    local batch, nums = {}, {}
    for j = k, math.min(#list, k + PARALLEL - 1) do
      local i = list[j]
      local body = body_of(i)
      local hd = webhooks.sign_svix(body, C.secret, "msg_gc_" .. i)
      hd["content-type"] = "application/json"
      batch[#batch + 1] = { method = "POST", url = url .. C.path, headers = hd, body = body, timeout_ms = 20000 }
      nums[#nums + 1] = i
    end
    for n, res in ipairs(http.request_many(batch)) do
      out[nums[n]] = res.response and res.response.status or res.error.kind
    end
  end
  return out
end

describe("webhook group commit", function()
  local dir, pids = nil, {}

  setup(function() dir = h.tmpdir() end)
  teardown(function()
    for _, pid in ipairs(pids) do
      if alive(pid) then os.execute("kill -9 " .. pid) end
    end
    os.execute("rm -rf " .. h.shq(dir))
    backends.cleanup()
  end)

  local function serve(args, flags)
    local out, errf = dir .. "/serve.out", dir .. "/serve.err"
    os.remove(out)
    local pid = h.sh(("%s serve %s -p 0 -w 2 %s -- %s >%s 2>>%s & echo $!"):format(h.shq(h.bin),
      h.shq(FIX .. "receiver.lua"), flags or "", h.shq(cjson.encode(args)), h.shq(out), h.shq(errf)))
    pid = assert(tonumber(pid), "no pid")
    pids[#pids + 1] = pid
    local url = eventually(function() return h.slurp(out):match("listening on (http://[%d.:]+)") end, 20)
    assert(url, "the server did not start: " .. h.slurp(errf))
    return pid, url
  end

  for _, be in ipairs(backends.all()) do
    it("answers every delivery of a failed commit 503 and none 200 on " .. be.name, function()
      local target = be.new()
      local key = store.keygen()
      local pid, url = serve({ source_dir = h.source_dir, store = be.open_opts(target, key),
        record = dir .. "/runs." .. be.name })
      be.sql(target, TRIGGER[be.name].add)

      -- the first SOLO deliveries one at a time (each commits alone: 200),
      -- then the rest PARALLEL at a time, whose batches soon cross the limit
      -- (how many rows a batch takes depends on timing: without the solo
      -- ones every batch could hold more than LIMIT rows and fail whole)
      local first, list = {}, {}
      for i = 1, SOLO do first[i] = send(url, { i })[i] end
      for i = SOLO + 1, N do list[#list + 1] = i end
      for i, status in pairs(send(url, list)) do first[i] = status end
      local st <close> = assert(store.open(be.open_opts(target, key)))
      local ok, refused, retry = 0, 0, {}
      for i = 1, N do
        local e = st:inbox_get("svix:msg_gc_" .. i)
        if first[i] == 200 then
          ok = ok + 1
          assert.is_table(e, "msg_gc_" .. i .. " was answered 200 but is not in the inbox")
        else
          assert.equal(503, first[i], "msg_gc_" .. i)
          assert.is_nil(e, "msg_gc_" .. i .. " was answered 503 but is in the inbox")
          refused = refused + 1
          retry[#retry + 1] = i
        end
      end
      local r = assert(http.request({ method = "GET", url = url .. "/group_stats", timeout_ms = 10000 }))
      local g = cjson.decode(r.body)
      assert.is_true(ok >= 1 and ok <= LIMIT, ("%d answered 200"):format(ok))
      assert.is_true(refused >= N - LIMIT, ("%d answered 503"):format(refused))
      assert.is_true(g.errors >= 1, cjson.encode(g))
      -- the rows of the failed batches are exactly the deliveries answered 503
      assert.equal(refused, g.failed_rows, cjson.encode(g))
      assert.equal(N, g.rows)

      -- the database recovers: the sender's retries are taken, each handled once
      be.sql(target, TRIGGER[be.name].drop)
      local second = send(url, retry)
      for _, i in ipairs(retry) do assert.equal(200, second[i], "retry of msg_gc_" .. i) end
      assert.truthy(eventually(function()
        local s = st:inbox_stats()
        return s and s.done == N
      end, 30), "the inbox did not drain: " .. cjson.encode(st:inbox_stats() or {}))
      for i = 1, N do assert.equal("1", st:get("processed:msg_gc_" .. i)) end
      assert.equal(tostring(N), st:get("count"))
      os.execute("kill -TERM " .. pid)
      assert.truthy(eventually(function() return not alive(pid) end, 20), "server did not stop")
      print(("\ngroup commit (%s): %d answered 200, %d answered 503 in %d failed commits of %d"):format(
        be.name, ok, refused, g.errors, g.batches))
    end)
  end

  it("answers 503 when the commit outlives the handler's time limit; the retry is a duplicate", function()
    local target = backends.sqlite.new()
    local key = store.keygen()
    local pid, url = serve({ source_dir = h.source_dir, store = { path = target, key = key } },
      "--handler-timeout 1")
    -- another process holds the write lock for 3 s (the committer waits up to
    -- busy_timeout_ms, 5 s, for it)
    local started = dir .. "/locked"
    local holder = h.sh(("%s -e %s >/dev/null 2>&1 & echo $!"):format(h.shq(h.bin), h.shq(([[
      local st = assert(require("oflua.store").open({ path = %q, key = %q }))
      st:transaction(function()
        assert(st:put("lock", "held"))
        io.open(%q, "w"):close()
        require("oflua.core").sleep(3)
      end)]]):format(target, key, started))))
    assert.truthy(eventually(function()
      local f = io.open(started)
      if f then f:close() end
      return f ~= nil
    end, 10), "the lock holder did not start")
    local first = send(url, { 1 })
    assert.equal(503, first[1])
    local st <close> = assert(store.open({ path = target, key = key }))
    -- the row lands once the lock is released
    assert.truthy(eventually(function() return st:inbox_get("svix:msg_gc_1") end, 20),
      "the late commit did not land")
    local again = send(url, { 1 })
    assert.equal(200, again[1])
    assert.truthy(eventually(function() return st:get("processed:msg_gc_1") == "1" end, 20))
    os.execute("kill -TERM " .. pid)
    os.execute("kill " .. tonumber(holder) .. " 2>/dev/null")
    assert.truthy(eventually(function() return not alive(pid) end, 20), "server did not stop")
  end)
end)
