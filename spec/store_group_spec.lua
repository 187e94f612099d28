-- oflua.store's group commit from Lua, outside a server (the caller blocks
-- until its batch commits): s:inbox_add_grouped answers like inbox_add (new,
-- duplicate, stale after a rekey), rows land sealed like any other, and
-- s:group_stats() counts them. The many-threads case is
-- spec/c/test_store_group.c; parking under oflua.server is covered by
-- crash_webhooks_spec and webhook_group_commit_spec. On SQLite, and on
-- PostgreSQL when OFLUA_TEST_PG_URL is set.
local store = require("oflua.store")
local backends = require("spec.support.store_backends")

teardown(function() backends.cleanup() end)

for _, be in ipairs(backends.all()) do
  describe("group commit on " .. be.name, function()
    local target, key, st
    before_each(function()
      target = be.new()
      key = store.keygen()
      st = assert(store.open(be.open_opts(target, key)))
    end)
    after_each(function() st:close() end)

    it("inserts once, then reports duplicates, like inbox_add", function()
      assert.is_true(st:inbox_add_grouped("evt1", "payload 1"))
      assert.is_false(st:inbox_add_grouped("evt1", "payload 1 again"))
      assert.is_false(st:inbox_add("evt1", "x")) -- the same inbox as the plain insert
      assert.is_true(st:inbox_add_grouped("evt2", "payload 2", nil, 60)) -- leased to the caller
      local e = st:inbox_get("evt1")
      assert.equal("payload 1", e.payload)
      assert.equal("pending", e.state)
      assert.equal("claimed", st:inbox_get("evt2").state)
      local claimed = assert(st:inbox_claim(10, 30))
      assert.equal(1, #claimed)
      assert.equal("evt1", claimed[1].id)
      local g = st:group_stats()
      assert.equal(3, g.rows)
      assert.equal(0, g.errors)
      assert.equal(0, g.queue_depth)
      local sum = 0
      for _, n in ipairs(g.hist) do sum = sum + n end
      assert.equal(g.batches, sum)
      assert.is_true(g.max_batch >= 1)
    end)

    it("shares one group between handles of one database", function()
      local other <close> = assert(store.open(be.open_opts(target, key)))
      assert.is_true(other:inbox_add_grouped("a", "1"))
      assert.is_true(st:inbox_add_grouped("b", "2"))
      assert.equal(2, st:group_stats().rows)
      assert.equal(2, other:group_stats().rows)
    end)

    it("refuses a write from a handle the store was rekeyed behind", function()
      assert.is_true(st:inbox_add_grouped("before", "x"))
      local admin <close> = assert(store.open(be.open_opts(target, key)))
      assert(admin:rekey(store.keygen()))
      local ok, err, kind = st:inbox_add_grouped("after", "y")
      assert.is_nil(ok)
      assert.equal("stale", kind)
      assert.matches("rekeyed", err)
      assert.is_nil(admin:inbox_get("after"))
    end)

    it("marks events done in the committer's next batch (inbox_done_grouped)", function()
      local ok, claim = st:inbox_add_grouped("d1", "x", nil, 60)
      assert.is_true(ok)
      assert.is_true(st:inbox_add_grouped("d2", "y", nil, 60))
      assert.is_true(st:inbox_done_grouped("d1", nil, claim)) -- queued, not waited for
      assert.is_true(st:inbox_done_grouped("d2", nil, "0:1")) -- a claim that never held d2
      assert.is_true(st:inbox_done_grouped("nope")) -- no such event
      local helper = require("spec.helper")
      assert.is_true(helper.eventually(function()
        local g = st:group_stats()
        return g.done_marked + g.done_missed == 3
      end, 10, 0.01))
      local g = st:group_stats()
      assert.equal(1, g.done_marked)
      assert.equal(2, g.done_missed) -- the lost claim and the unknown id changed nothing
      assert.equal("done", st:inbox_get("d1").state)
      assert.equal("claimed", st:inbox_get("d2").state)
      assert.equal(2, g.rows) -- marks are not insert rows
      assert.has_error(function() st:inbox_done_grouped("d1", nil, "not a token") end)
      assert.has_error(function() st:inbox_done_grouped(nil) end)
    end)

    it("claims on the committer's connection and marks the previous batch done first (inbox_claim_grouped)", function()
      for i = 1, 4 do assert.is_true(st:inbox_add_grouped("c" .. i, "p" .. i)) end
      local first = assert(st:inbox_claim_grouped(2, 60))
      assert.equal(2, #first)
      assert.same({ "c1", "c2" }, { first[1].id, first[2].id })
      assert.equal("p1", first[1].payload)
      -- c1 succeeded; c2's claim is stale (a token that never held it)
      local done = { first[1], { id = "c2", claim = "0:1" }, { id = "gone" } }
      local second = assert(st:inbox_claim_grouped(10, 60, nil, 5, done))
      assert.same({ "c3", "c4" }, { second[1].id, second[2].id })
      assert.equal("done", st:inbox_get("c1").state)
      assert.equal("claimed", st:inbox_get("c2").state)
      -- nothing due: the marks are still written
      assert.same({}, assert(st:inbox_claim_grouped(10, 60, nil, 5, second)))
      assert.equal(3, st:inbox_stats().done)
      assert.has_error(function() st:inbox_claim_grouped(1, 60, nil, 5, { "c1" }) end)
      assert.has_error(function() st:inbox_claim_grouped(1, 60, nil, 5, { { id = "c1", claim = "x" } }) end)
      assert.has_error(function() st:inbox_claim_grouped(1, 60, nil, 5, "c1") end)
    end)

    it("hands a new row off, claimed, to this process's next grouped claim (handoff)", function()
      local t0 = 1000000
      assert.is_true(st:inbox_add_grouped("h1", "p1", t0, 60, nil, true)) -- no claim token: not the caller's
      assert.is_true(st:inbox_add_grouped("h2", "p2", t0, 60, nil, true))
      assert.is_false(st:inbox_add_grouped("h1", "again", t0, 60, nil, true)) -- a duplicate is not handed off
      assert.equal("claimed", st:inbox_get("h1").state) -- nobody else's claim takes it meanwhile
      assert.same({}, assert(st:inbox_claim(10, 60, t0 + 1)))
      local g = st:group_stats()
      assert.same({ 2, 2, 0 }, { g.handoff, g.handoff_depth, g.handoff_taken })
      -- the grouped claim hands them out with what is left of their lease
      local got = assert(st:inbox_claim_grouped(1, 60, t0 + 10))
      assert.equal(1, #got)
      assert.same({ "h1", "p1", 0 }, { got[1].id, got[1].payload, got[1].attempts })
      assert.equal(50, got[1].lease_left)
      -- the next one comes from memory (the inbox was read within the last
      -- second) and its done list goes to the committer's queue
      local second = assert(st:inbox_claim_grouped(10, 60, t0 + 10, 5, got))
      assert.same({ "h2" }, { second[1] and second[1].id })
      assert.is_true(require("spec.helper").eventually(function()
        return st:inbox_get("h1").state == "done"
      end, 10, 0.01))
      g = st:group_stats()
      assert.same({ 2, 0 }, { g.handoff_taken, g.handoff_depth })
      -- (SQLite: the mark went through the committer; PostgreSQL: in a
      -- transaction of the claiming handle, each mark a round trip of its own)
      assert.equal(be.name == "sqlite" and 1 or 0, g.done_marked)
      -- the claim token fences the mark like any other claim's
      assert.is_true(st:inbox_done("h2", t0 + 11, second[1].claim))
      assert.equal(2, st:inbox_stats().done)
      assert.has_error(function() st:inbox_add_grouped("h3", "x", t0, nil, nil, true) end) -- no lease
      assert.has_error(function() st:inbox_add_grouped("h3", "x", t0, 60, nil, "yes") end)
      assert.is_nil(st:inbox_get("h3"))
    end)

    it("hands back, unrun and with no attempt counted, a handoff row whose lease ran out", function()
      local t0 = 2000000
      assert.is_true(st:inbox_add_grouped("x1", "p", t0, 5, nil, true))
      assert.is_true(st:inbox_add_grouped("x2", "q", t0 + 4, 5, nil, true))
      -- at t0 + 6 x1's lease has run out (x2's has not): the claim releases
      -- x1 in its own transaction and takes it from the inbox, attempt 0
      local got = assert(st:inbox_claim_grouped(10, 30, t0 + 6))
      local ids = {}
      for _, it in ipairs(got) do ids[#ids + 1] = it.id .. ":" .. it.attempts end
      table.sort(ids)
      assert.same({ "x1:0", "x2:0" }, ids)
      for _, it in ipairs(got) do
        if it.id == "x1" then assert.equal(30, it.lease_left) else assert.equal(3, it.lease_left) end
      end
      local g = st:group_stats()
      assert.same({ 1, 1 }, { g.handoff_expired, g.handoff_taken })
      assert.equal(0, st:inbox_get("x1").attempts)
      assert.is_nil(st:inbox_get("x1").last_error)
    end)

    it("applies its done marks and releases the handoff rows nobody took when the last handle closes", function()
      local other = assert(store.open(be.open_opts(target, key)))
      local t0 = 3000000
      for i = 1, 4 do assert.is_true(other:inbox_add_grouped("r" .. i, "p", t0, 300, nil, true)) end
      assert.equal("claimed", st:inbox_get("r1").state)
      assert.equal(4, other:group_stats().handoff_depth)
      -- r1 runs; its done mark goes with the claim that takes r2 (queued
      -- for the committer on SQLite)
      local first = assert(other:inbox_claim_grouped(1, 300, t0))
      assert.equal("r1", first[1].id)
      local second = assert(other:inbox_claim_grouped(1, 300, t0, 5, first))
      assert.equal("r2", second[1].id)
      other:close() -- the group's last handle (st never used group commit): waits for the committer
      assert.equal("done", st:inbox_get("r1").state)
      assert.equal("claimed", st:inbox_get("r2").state) -- taken: its runner's
      for i = 3, 4 do
        local e = st:inbox_get("r" .. i)
        assert.same({ "pending", 0 }, { e.state, e.attempts })
        assert.equal(t0, e.next_attempt_at) -- due at once
      end
      assert.equal(2, #assert(st:inbox_claim(10, 60, t0)))
    end)

    it("takes a prepared server answer, used only by a parked server handler", function()
      local answer = require("oflua.server").answer(200, '{"ok":true}', { ["content-type"] = "application/json" })
      assert.equal("oflua.server.answer (200)", tostring(answer))
      -- outside oflua.server the caller blocks: the answer has no request to go to
      assert.is_true(st:inbox_add_grouped("with-answer", "x", nil, nil, answer))
      assert.is_false(st:inbox_add_grouped("with-answer", "x", nil, nil, answer))
      assert.has_error(function() st:inbox_add_grouped("id", "x", nil, nil, "200") end)
      assert.has_error(function() st:inbox_add_grouped("id", "x", nil, nil, {}) end)
      assert.is_nil(st:inbox_get("id"))
    end)

    if be.name == "sqlite" then
      it("checkpoints the WAL in the background, not in the committer", function()
        -- over 8,000 WAL pages (the committer's threshold): each grouped call
        -- here is a commit of its own, of several pages
        local big = ("p"):rep(3000)
        for i = 1, 3000 do assert.is_true(st:inbox_add_grouped("ck" .. i, big)) end
        -- the checkpointer's passes count only when they did checkpoint (a
        -- connection that had not read the database was not in WAL mode yet
        -- and its passes did nothing)
        -- (the count is the committer's, as of its last batch)
        local more = 0
        assert.is_true(require("spec.helper").eventually(function()
          more = more + 1
          assert.is_true(st:inbox_add_grouped("more" .. more, "x"))
          return st:group_stats().checkpoints > 0
        end, 10))
        assert.equal(3000 + more, st:inbox_stats().total)
      end)
    end

    it("checks its arguments", function()
      assert.has_error(function() st:inbox_add_grouped(nil, "x") end)
      assert.has_error(function() st:inbox_add_grouped("id", {}) end)
      assert.has_error(function() st:inbox_add_grouped("id", "x", nil, -5) end)
      assert.has_error(function() st:inbox_add_grouped(("i"):rep(4097), "x") end)
    end)
  end)
end

describe("group commit on a private in-memory SQLite store", function()
  it("inserts directly (a committer cannot share the database)", function()
    local st <close> = assert(store.open({ path = ":memory:", key = store.keygen() }))
    assert.is_true(st:inbox_add_grouped("m1", "x"))
    assert.is_false(st:inbox_add_grouped("m1", "x"))
    assert.equal(0, st:group_stats().rows)
    local _, claim = st:inbox_add("m2", "x", nil, 60)
    assert.is_true(st:inbox_done_grouped("m2", nil, claim)) -- at once, in this handle
    assert.equal("done", st:inbox_get("m2").state)
    -- no handoff either: inserted pending, for the inbox's claims
    assert.is_true(st:inbox_add_grouped("m3", "x", nil, 60, nil, true))
    assert.equal("pending", st:inbox_get("m3").state)
    assert.has_error(function() st:inbox_add_grouped("m4", "x", nil, nil, nil, true) end)
    assert.has_error(function() st:inbox_add_grouped("m4", "x", nil, 60, nil, 1) end)
  end)
end)
