-- `oflua inbox`: the webhook inbox from a shell, against a real store with
-- events in every state (pending, claimed, done, dead).
local h = require("spec.helper")
local cjson = require("cjson")
local store = require("oflua.store")

local function payload(event_type)
  return '{"scheme":"svix"}\n' .. cjson.encode({ eventType = event_type, data = { n = 1 } })
end

describe("oflua inbox", function()
  local dir, env, key

  local function run(args) return h.oflua(args, { env = env }) end

  before_each(function()
    dir = h.tmpdir()
    key = store.keygen()
    env = { OFLUA_STORE = dir .. "/app.db", OFLUA_STORE_KEY = key, OFLUA_STORE_KEY_FILE = "" }
    local st <close> = assert(store.open({ path = env.OFLUA_STORE, key = key }))
    local now = os.time()
    assert.is_true(st:inbox_add("svix:msg_pending", payload("connection.created"), now))
    assert.is_true(st:inbox_add("svix:msg_claimed", payload("connection.updated"), now))
    assert.is_true(st:inbox_add("svix:msg_done", payload("oflua.test"), now))
    assert.is_true(st:inbox_add("svix:msg_dead", payload("connection.expired"), now))
    -- claim all four (oldest first), then settle three of them
    local claimed = assert(st:inbox_claim(4, 300, now))
    assert.equal(4, #claimed)
    assert.is_true(st:inbox_done("svix:msg_done", now))
    assert.equal("dead", (st:inbox_fail("svix:msg_dead", "handler failed for conn_0123456789abcdef", 1, now)))
    assert.equal("pending", (st:inbox_fail("svix:msg_pending", "timeout", 5, now, 60)))
  end)

  after_each(function() h.sh("rm -rf " .. h.shq(dir)) end)

  it("counts by state and lists the events that are not done, without leasing them", function()
    local out, err, code = run({ "inbox", "list" })
    assert.equal(0, code, err)
    assert.matches("pending 1, claimed 1, done 1, dead 1, total 4", out, 1, true)
    assert.matches("svix:msg_pending%s+connection.created%s+pending%s+1", out)
    assert.matches("svix:msg_claimed%s+connection.updated%s+claimed", out)
    assert.matches("svix:msg_dead%s+connection.expired%s+dead%s+1", out)
    assert.is_nil(out:find("msg_done", 1, true))
    -- the last error is redacted: the connection id is shortened
    assert.is_nil(out:find("conn_0123456789abcdef", 1, true))
    -- listing leased nothing: the pending event is still pending
    local st <close> = assert(store.open({ path = env.OFLUA_STORE, key = key }))
    assert.equal("pending", st:inbox_get("svix:msg_pending").state)
  end)

  it("filters by --state and answers JSON with --json", function()
    local out, err, code = run({ "inbox", "list", "--state", "done", "--json" })
    assert.equal(0, code, err)
    local doc = cjson.decode(out)
    assert.equal(4, doc.counts.total)
    assert.equal(1, #doc.events)
    assert.equal("svix:msg_done", doc.events[1].id)
    assert.equal("oflua.test", doc.events[1].type)
    out = run({ "inbox", "list", "--state", "all", "--json" })
    assert.equal(4, #cjson.decode(out).events)
    local _, _, bad = run({ "inbox", "list", "--state", "gone" })
    assert.equal(2, bad)
  end)

  it("shows one event with its next attempt, and never its payload", function()
    local out, err, code = run({ "inbox", "show", "svix:msg_pending" })
    assert.equal(0, code, err)
    assert.matches("state:%s+pending", out)
    assert.matches("attempts:%s+1", out)
    assert.matches("last error:%s+timeout", out)
    assert.matches("next attempt at:%s+%d%d%d%d%-", out)
    assert.is_nil(out:find('"n":1', 1, true))
    local _, nerr, ncode = run({ "inbox", "show", "svix:nope" })
    assert.equal(1, ncode)
    assert.matches("no inbox event", nerr)
  end)

  it("lists dead letters, requeues them and prunes done events", function()
    local out = run({ "inbox", "dead" })
    assert.matches("svix:msg_dead", out, 1, true)
    local _, err, code = run({ "inbox", "replay", "--dead" })
    assert.equal(0, code, err)
    local st <close> = assert(store.open({ path = env.OFLUA_STORE, key = key }))
    local ev = st:inbox_get("svix:msg_dead")
    assert.equal("pending", ev.state)
    assert.equal(0, ev.attempts)
    out, err, code = run({ "inbox", "prune", "--older-than", "0" })
    assert.equal(0, code, err)
    assert.matches("forgot 1 done event", out, 1, true)
    assert.is_nil(st:inbox_get("svix:msg_done"))
    local _, _, ucode = run({ "inbox", "prune" })
    assert.equal(2, ucode)
  end)
end)
