-- Scale-out: three `oflua serve` receivers on three ports share one
-- PostgreSQL store (ofauth.webhooks.app over oflua.store, the app the crash
-- spec runs). Deliveries and their duplicates go to different receivers and
-- each is handled once; a receiver SIGKILLed midway loses nothing that was
-- acknowledged (its leased events are taken over); a PostgreSQL restart
-- under load loses nothing, receivers answer 503 while it is down and
-- recover by themselves. Runs when OFLUA_TEST_PG_URL is set (scripts/test
-- runs the suite under scripts/with-postgres).
local h = require("spec.helper")
local cjson = require("cjson")
local store = require("oflua.store")
local backends = require("spec.support.store_backends")
local C = require("spec.fixtures.abuse.webhooks")

local FIX = h.source_dir .. "/spec/fixtures/"

local lines = h.lines

local alive = h.alive

local eventually = h.eventually

local pg = backends.pg
local describe_pg = pg and describe or pending

describe_pg("three receivers on one PostgreSQL", function()
  local dir, pids = nil, {}
  local ctl = os.getenv("OFLUA_TEST_PG_CTL")

  local function serve(name, args)
    local out, errf = dir .. "/" .. name .. ".out", dir .. "/" .. name .. ".err"
    local pid = h.sh(("%s serve %s -p 0 -w 2 -- %s >%s 2>>%s & echo $!"):format(h.shq(h.bin),
      h.shq(FIX .. "abuse/receiver.lua"), h.shq(cjson.encode(args)), h.shq(out), h.shq(errf)))
    pid = assert(tonumber(pid), "no pid")
    pids[#pids + 1] = pid
    local url = eventually(function() return h.slurp(out):match("listening on (http://[%d.:]+)") end, 20)
    assert(url, "the server did not start: " .. h.slurp(errf))
    return pid, url .. C.path
  end

  local function stop(pid)
    os.execute("kill -TERM " .. pid .. " 2>/dev/null")
    assert.truthy(eventually(function() return not alive(pid) end, 20), "server did not stop")
  end

  local function client(urls, first, last, copies, rounds, acked, kill_pid, kill_after)
    local args = { FIX .. "scaleout_client.lua", table.concat(urls, ","), C.secret, tostring(first),
      tostring(last), tostring(copies), tostring(rounds), acked }
    if kill_pid then
      args[#args + 1] = tostring(kill_pid)
      args[#args + 1] = tostring(kill_after)
    end
    local out, err, code = h.oflua(args)
    assert.equal(0, code, err)
    return cjson.decode(out:match("([^\n]+)\n*$"))
  end

  -- Three receivers on a new database; returns pids, urls, a store handle, args.
  local function cluster(tag)
    local url = pg.new()
    local key = store.keygen()
    local args = { source_dir = h.source_dir, store = { path = url, key = key },
      record = dir .. "/" .. tag .. ".runs", lease_s = 1, drain = true }
    local ps, us = {}, {}
    for i = 1, 3 do ps[i], us[i] = serve(tag .. i, args) end
    return ps, us, assert(store.open({ url = url, key = key })), args
  end

  -- Waits until n events are done; then checks each msg_scale_<i> had its
  -- effect exactly once. Returns the handler runs per id.
  local function drained(st, n, tag)
    assert.truthy(eventually(function()
      local stats = st:inbox_stats()
      return stats and stats.done == n
    end, 60), "the inbox did not drain: " .. cjson.encode(st:inbox_stats() or {}))
    local stats = st:inbox_stats()
    assert.same({ n, 0, 0, 0 }, { stats.total, stats.pending, stats.claimed, stats.dead })
    assert.equal(tostring(n), st:get("count"))
    for i = 1, n do
      assert.equal("1", st:get("processed:msg_scale_" .. i), "msg_scale_" .. i .. " was not processed")
    end
    local runs = {}
    for _, id in ipairs(lines(dir .. "/" .. tag .. ".runs")) do runs[id] = (runs[id] or 0) + 1 end
    return runs
  end

  setup(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -m 700 " .. h.shq(dir)))
  end)

  teardown(function()
    for _, pid in ipairs(pids) do
      if alive(pid) then os.execute("kill -9 " .. pid) end
    end
    if dir then os.execute("rm -rf " .. h.shq(dir)) end
    backends.cleanup()
  end)

  it("handles each delivery once when it and its duplicates reach different receivers", function()
    local N = 300
    local ps, urls, st = cluster("dup")
    local sum = client(urls, 1, N, 3, 5, dir .. "/dup.acked")
    assert.equal(N, sum.acked, cjson.encode(sum))
    local runs = drained(st, N, "dup")
    for i = 1, N do
      local n = runs["msg_scale_" .. i]
      assert.equal(1, n, ("msg_scale_%d handled %s times"):format(i, tostring(n)))
    end
    -- every receiver took deliveries
    assert.equal(3 * N, sum.status["200"], cjson.encode(sum))
    for _, pid in ipairs(ps) do stop(pid) end
    st:close()
  end)

  it("loses nothing acknowledged when one receiver is SIGKILLed midway", function()
    local N = 600
    local ps, urls, st = cluster("kill")
    local acked_path = dir .. "/kill.acked"
    local sum = client(urls, 1, N, 1, 10, acked_path, ps[2], 200)
    assert.is_true(sum.killed)
    assert.truthy(eventually(function() return not alive(ps[2]) end, 10), "SIGKILL did not land")
    assert.equal(N, sum.acked, cjson.encode(sum))
    assert.equal(N, #lines(acked_path))
    -- the survivors take over what the killed one had leased
    local runs = drained(st, N, "kill")
    for i = 1, N do assert.is_true((runs["msg_scale_" .. i] or 0) >= 1) end
    stop(ps[1])
    stop(ps[3])
    st:close()
  end)

  it("loses nothing acknowledged across a PostgreSQL restart and answers 503 while it is down", function()
    assert(ctl, "OFLUA_TEST_PG_CTL")
    local N = 600
    local ps, urls, st = cluster("restart")
    local acked_path = dir .. "/restart.acked"
    -- stop the server for a second while the sender is busy, then start it
    local marker = dir .. "/restarted"
    os.execute(("(sleep 0.7; %s stop -m fast; sleep 1; %s start; touch %s) >/dev/null 2>&1 &"):format(
      h.shq(ctl), h.shq(ctl), h.shq(marker)))
    local sum = client(urls, 1, N, 1, 60, acked_path)
    assert.truthy(eventually(function() return io.open(marker) end, 60), "the restart did not finish")
    assert.equal(N, sum.acked, cjson.encode(sum))
    assert.truthy(eventually(function() return st:inbox_stats() end, 30))
    local runs = drained(st, N, "restart")
    for i = 1, N do assert.is_true((runs["msg_scale_" .. i] or 0) >= 1) end

    -- while the database is down, every receiver answers 503, never 200
    local _, e, c = h.sh(h.shq(ctl) .. " stop -m fast")
    assert.equal(0, c, e)
    local down = client(urls, N + 1, N + 6, 1, 1, dir .. "/down.acked")
    assert.equal(0, down.acked, cjson.encode(down))
    assert.equal(6, down.status["503"], cjson.encode(down))
    _, e, c = h.sh(h.shq(ctl) .. " start")
    assert.equal(0, c, e .. h.slurp(ctl:gsub("pgctl$", "server.log")):sub(-2000))
    -- and they recover by themselves
    local up = client(urls, N + 1, N + 6, 1, 20, dir .. "/down.acked")
    assert.equal(6, up.acked, cjson.encode(up))
    drained(st, N + 6, "restart")
    print(("\nscale-out restart: statuses %s"):format(cjson.encode(sum.status)))
    for _, pid in ipairs(ps) do stop(pid) end
    st:close()
  end)
end)
