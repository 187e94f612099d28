-- Crash safety of the webhook receiver: `oflua serve` running
-- ofauth.webhooks.app over oflua.store is killed with SIGKILL while a client
-- subprocess sends it 2,000 signed deliveries. After a restart, every
-- delivery that was answered 2xx is in the inbox and its handler's effect
-- happened exactly once; the sender's retries of the unanswered ones are
-- taken too, and SQLite's integrity check passes at every step. The
-- receiver uses the app's default durable path, group commit (the inbox
-- insert shares a transaction with concurrent deliveries): the committer's
-- counters must show batches of more than one row, so this is the batched
-- path under SIGKILL. On SQLite, and on PostgreSQL when OFLUA_TEST_PG_URL is
-- set.
local h = require("spec.helper")
local cjson = require("cjson")
local store = require("oflua.store")
local C = require("spec.fixtures.abuse.webhooks")
local http = require("oflua.http")
local backends = require("spec.support.store_backends")

local N = 2000
local FIX = h.source_dir .. "/spec/fixtures/abuse/"

local lines = h.lines

local alive = h.alive

local function eventually(pred, limit) return h.eventually(pred, limit, 0.02) end

local function integrity(db)
  local out, err, code = h.sh("sqlite3 " .. h.shq(db) .. " 'PRAGMA integrity_check'")
  assert.equal(0, code, err)
  return (out:gsub("%s+$", ""))
end

describe("webhook receiver killed under load", function()
  local dir, key, pids = nil, nil, {}

  -- `oflua serve` in the background; returns pid, url.
  local function serve(args)
    local out, errf = dir .. "/serve.out", dir .. "/serve.err"
    os.remove(out)
    local pid = h.sh(("%s serve %s -p 0 -w 2 -- %s >%s 2>>%s & echo $!"):format(h.shq(h.bin),
      h.shq(FIX .. "receiver.lua"), h.shq(cjson.encode(args)), h.shq(out), h.shq(errf)))
    pid = assert(tonumber(pid), "no pid")
    pids[#pids + 1] = pid
    local url = eventually(function() return h.slurp(out):match("listening on (http://[%d.:]+)") end, 20)
    assert(url, "the server did not start: " .. h.slurp(errf))
    return pid, url
  end

  local function stop(pid)
    os.execute("kill -TERM " .. pid .. " 2>/dev/null")
    assert.truthy(eventually(function() return not alive(pid) end, 20), "server did not stop")
  end

  local function client(url, acked, kill_pid, kill_after)
    local args = { FIX .. "load_client.lua", url .. C.path, C.secret, "1", tostring(N), acked }
    if kill_pid then
      args[#args + 1] = tostring(kill_pid)
      args[#args + 1] = tostring(kill_after)
    end
    local out, err, code = h.oflua(args)
    assert.equal(0, code, err)
    return cjson.decode(out:match("([^\n]+)\n*$"))
  end

  setup(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -m 700 " .. h.shq(dir)))
    key = store.keygen()
  end)

  teardown(function()
    for _, pid in ipairs(pids) do
      if alive(pid) then os.execute("kill -9 " .. pid) end
    end
    if dir then os.execute("rm -rf " .. h.shq(dir)) end
    backends.cleanup()
  end)

  local function group_stats(url)
    local r = assert(http.request({ method = "GET", url = url .. "/group_stats", timeout_ms = 10000 }))
    assert.equal(200, r.status)
    return cjson.decode(r.body)
  end

  for _, be in ipairs(backends.all()) do
  it("loses no acknowledged delivery and processes each exactly once on " .. be.name, function()
    local sqlite = be.name == "sqlite"
    local db = sqlite and dir .. "/inbox.db" or be.new()
    local check = sqlite and integrity or function() return "ok" end
    os.remove(dir .. "/runs")
    local args = { source_dir = h.source_dir, store = be.open_opts(db, key), record = dir .. "/runs",
      lease_s = 1, drain = true }

    -- 1. load, and SIGKILL once 800 deliveries are acknowledged
    local pid, url = serve(args)
    local acked_path = dir .. "/acked." .. be.name
    local s1 = client(url, acked_path, pid, 800)
    assert.is_true(s1.killed)
    -- the deliveries went through the group commit, in batches of several
    assert.is_table(s1.group, "no group_stats before the kill")
    assert.is_true(s1.group.max_batch > 1, "no batch larger than one row: " .. cjson.encode(s1.group))
    -- and new events went to the tick in memory (handoff): those not run yet
    -- when the process dies are claimed rows, run after their lease runs out
    assert.is_true(s1.group.handoff > 0, "no handoff to the tick: " .. cjson.encode(s1.group))
    assert.equal(0, s1.group.errors)
    assert.truthy(eventually(function() return not alive(pid) end, 10), "SIGKILL did not land")
    local acked = lines(acked_path)
    assert.is_true(#acked >= 800 and #acked < N, ("acked %d of %d"):format(#acked, N))
    assert.equal("ok", check(db))

    -- 2. everything acknowledged is in the inbox, even what was never processed
    local st <close> = assert(store.open(be.open_opts(db, key)))
    for _, id in ipairs(acked) do
      assert.is_table(st:inbox_get("svix:" .. id), id .. " was acknowledged but is not in the inbox")
    end

    -- 3. restart: the inbox drains (pending events, and claimed ones once their
    --    lease runs out); then the sender retries everything unanswered
    pid, url = serve(args)
    local s2 = client(url, acked_path)
    assert.equal(N, s2.acked, cjson.encode(s2))
    assert.truthy(eventually(function()
      local stats = st:inbox_stats()
      return stats and stats.done == N
    end, 30), "the inbox did not drain: " .. cjson.encode(st:inbox_stats() or {}))
    local g2 = group_stats(url)
    assert.is_true(g2.rows >= s2.sent - s2.failed and g2.batches >= 1 and g2.errors == 0, cjson.encode(g2))
    stop(pid)
    assert.equal("ok", check(db))

    -- 4. each of the N deliveries had its effect exactly once
    local stats = st:inbox_stats()
    assert.same({ N, 0, 0, 0 }, { stats.total, stats.pending, stats.claimed, stats.dead })
    assert.equal(tostring(N), st:get("count"))
    for i = 1, N do
      assert.equal("1", st:get("processed:msg_crash_" .. i), "msg_crash_" .. i .. " was not processed")
    end
    -- handler runs: at least one per event; a re-run only for an event that
    -- was claimed when the process died (at-least-once runs, exactly-once effect)
    local runs = {}
    for _, id in ipairs(lines(dir .. "/runs")) do runs[id] = (runs[id] or 0) + 1 end
    local reruns = 0
    for i = 1, N do
      local n = runs["msg_crash_" .. i] or 0
      assert.is_true(n >= 1, "no handler run for msg_crash_" .. i)
      reruns = reruns + (n - 1)
    end
    -- (a re-run is an event whose handler ran but whose done mark had not
    -- committed: the marks the tick carries to its next claim, and those the
    -- committer applies together, 64 at a time)
    assert.is_true(reruns <= 2 * 64, "too many handler re-runs: " .. reruns)
    print(("\ncrash (%s): %d acked before SIGKILL in batches of up to %d rows (%d rows, %d commits), "
      .. "%d accepted after restart, %d handler re-runs"):format(be.name, #acked, s1.group.max_batch,
      s1.group.rows, s1.group.batches, s2.accepted or 0, reruns))
  end)
  end
end)
