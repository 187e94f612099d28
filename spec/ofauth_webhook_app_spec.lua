-- The webhook receiver app's default (background) processing over a real
-- oflua.store: the answer comes once the event is stored, handlers run from
-- the tick; a handler that outlives its time limit or whose lease keeps
-- running out (its process dies) ends dead-lettered after max_attempts; done
-- events are pruned after the retention period; rejected deliveries are
-- logged at a limited rate and counted in full.
local h = require("spec.helper")
local cjson = require("cjson")
local store = require("oflua.store")
local webhooks = require("ofauth.webhooks")
local webhook_app = require("ofauth.webhook_app")
local metrics = require("ofauth.metrics")
local log = require("ofauth.log")

local SECRET = "whsec_" .. "c2VjcmV0LWZvci10aGUtYXBwLXNwZWM="
local T0 = 1700000000

local function event(typ, n)
  return cjson.encode({ eventType = typ, live = false,
    data = { clientReferenceId = "u" .. tostring(n or 1), connection = { id = "conn_bg000" .. tostring(n or 1) } } })
end

describe("webhook app (background processing, real store)", function()
  local dir, key, st, t
  local clock_fn = log.clock
  local lines

  local function new_app(opts)
    opts = opts or {}
    opts.secret, opts.store = SECRET, st
    opts.now = function() return t end
    return webhooks.app(opts)
  end

  local function deliver(app, body, id)
    local status, out = app:handler()({ method = "POST", body = body,
      headers = webhooks.sign_svix(body, SECRET, id, t) })
    return status, cjson.decode(out)
  end

  setup(function()
    dir = h.tmpdir()
    key = store.keygen()
  end)

  teardown(function()
    if dir then os.execute("rm -rf " .. h.shq(dir)) end
  end)

  local n = 0
  before_each(function()
    n = n + 1
    t = T0
    st = assert(store.open({ path = ("%s/inbox%d.db"):format(dir, n), key = key }))
    metrics.init()
    log.reset_limits()
    lines = {}
    log.sink = function(line) lines[#lines + 1] = cjson.decode(line) end
  end)

  after_each(function()
    log.sink = function(line) io.stderr:write(line, "\n") end
    log.clock = clock_fn
    st:close()
  end)

  it("a runner whose lease ran out does not undo another runner's result (claim tokens)", function()
    local app = new_app({ lease_s = 30, handler_timeout = 0 })
    local other = assert(store.open({ path = ("%s/inbox%d.db"):format(dir, n), key = key }))
    app:on("connection.created", function()
      -- this run takes longer than its lease: another runner claims the
      -- event meanwhile and finishes it
      t = t + 31
      local got = assert(other:inbox_claim(1, 30, t))
      assert.equal(1, #got)
      assert.is_true(other:inbox_done(got[1].id, t, got[1].claim))
      error("handler failed late")
    end)
    assert.equal(200, (deliver(app, event("connection.created"), "msg_fence1")))
    app:process()
    local stats = st:inbox_stats()
    assert.equal(1, stats.done)
    assert.equal(0, stats.pending)
    local lost = false
    for _, l in ipairs(lines) do if l.event == "webhook.claim_lost" then lost = true end end
    assert.is_true(lost)
    other:close()
  end)

  it("hands back unrun the events of a batch whose lease runs short (no attempt counted)", function()
    -- lease 1 s (safety margin 0.05 s), handler_timeout 0.4 s, handlers of
    -- 0.2 s: once less than 0.4 s of the lease is left, the rest go back
    local app = new_app({ lease_s = 1, handler_timeout = 0.4 })
    local mono = require("oflua.core").monotonic
    app:on("connection.created", function()
      local stop = mono() + 0.2
      while mono() < stop do end -- luacheck: ignore 542 (busy on purpose)
    end)
    for i = 1, 5 do assert.equal(200, (deliver(app, event("connection.created", i), "msg_rel" .. i))) end
    local done, failed = app:process(10)
    assert.equal(0, failed)
    local stats = st:inbox_stats()
    local released = metrics.value("ofauth_webhook_released_total")
    assert.is_true(done >= 1 and done <= 4, "ran " .. done)
    assert.equal(5 - done, released)
    assert.equal(done, stats.done)
    assert.equal(released, stats.pending) -- handed back, due at once
    assert.equal(0, stats.claimed)
    for i = 1, 5 do assert.equal(0, st:inbox_get("svix:msg_rel" .. i).attempts) end
    assert.equal(0, metrics.value("ofauth_webhook_handler_timeouts_total"))
    local d2 = app:drain()
    assert.equal(released, d2)
    assert.equal(5, st:inbox_stats().done)
  end)

  it("hands an event to the tick in memory once the tick runs here, and hands back one that waited too long", function()
    local app = new_app({ lease_s = 300, handler_timeout = 30 })
    local runs = 0
    app:on("connection.created", function() runs = runs + 1 end)
    app.tick_here = true -- (what the app learns in a server once its tick has run there)
    assert.equal(200, (deliver(app, event("connection.created", 1), "msg_h1")))
    assert.equal(200, (deliver(app, event("connection.created", 2), "msg_h2")))
    assert.equal("claimed", st:inbox_get("svix:msg_h1").state) -- inserted claimed, kept for the tick
    assert.equal(2, st:group_stats().handoff)
    -- 290 s later 10 s of its lease are left: less than half a handler's
    -- time, so it goes back unrun (no attempt counted) instead of running
    t = T0 + 290
    assert.same({ 0, 0 }, { app:process(1) })
    assert.equal(0, runs)
    assert.same({ "pending", 0 }, { st:inbox_get("svix:msg_h1").state, st:inbox_get("svix:msg_h1").attempts })
    assert.equal(1, metrics.value("ofauth_webhook_released_total"))
    assert.same({ 0, 0 }, { app:process(10) }) -- the other one: the same
    assert.equal(2, metrics.value("ofauth_webhook_released_total"))
    -- then they are claimed from the inbox with a lease of their own, and run
    assert.equal(2, (app:drain()))
    assert.equal(2, runs)
    assert.equal(2, st:inbox_stats().done)
    assert.equal(2, st:group_stats().handoff_taken)
  end)

  it("claims one at a time when the lease is shorter than handler_timeout", function()
    local app = new_app({ lease_s = 10, handler_timeout = 30 })
    local runs = 0
    app:on("connection.created", function() runs = runs + 1 end)
    for i = 1, 3 do assert.equal(200, (deliver(app, event("connection.created", i), "msg_one" .. i))) end
    assert.equal(1, (app:process(10)))
    assert.equal(1, runs)
    local stats = st:inbox_stats()
    assert.same({ 1, 2, 0 }, { stats.done, stats.pending, stats.claimed })
    assert.equal(0, metrics.value("ofauth_webhook_released_total")) -- nothing claimed to hand back
    assert.equal(2, (app:drain()))
  end)

  it("is the default: answers once stored, handlers run from the tick it carries", function()
    local app = new_app()
    assert.equal("background", app.process_mode)
    local seen = {}
    app:on("connection.created", function(e, ctx) seen[#seen + 1] = { e.type, ctx.meta.id, ctx.attempt } end)
    local handler = app:handler()
    -- what `return app:handler()` gives oflua.server: callable, with a tick
    assert.is_function(handler.handler)
    assert.is_function(handler.tick)
    assert.equal(webhook_app.defaults.tick_interval, handler.tick_interval)
    local s1, b1 = deliver(app, event("connection.created"), "msg_bg1")
    assert.equal(200, s1)
    assert.equal("accepted", b1.status)
    assert.same({}, seen)
    assert.equal("pending", st:inbox_get("svix:msg_bg1").state)
    local s2, b2 = deliver(app, event("connection.created"), "msg_bg1")
    assert.equal(200, s2)
    assert.equal("duplicate", b2.status)
    handler.tick()
    assert.same({ { "connection.created", "msg_bg1", 1 } }, seen)
    assert.equal("done", st:inbox_get("svix:msg_bg1").state)
    assert.equal(1, metrics.value("ofauth_webhook_processed_total"))
    handler.tick() -- nothing left: no second run
    assert.equal(1, #seen)
    -- accepted deliveries are counted, not logged at info level
    for _, l in ipairs(lines) do assert.not_equal("info", l.level, cjson.encode(l)) end
    assert.equal(1, metrics.value("ofauth_webhook_deliveries_total", { "result", "accepted" }))
    -- "inline" is still there, "deferred" is the old name of "background"
    assert.equal("inline", new_app({ process = "inline" }).process_mode)
    assert.equal("background", new_app({ process = "deferred" }).process_mode)
    assert.has_error(function() new_app({ process = "later" }) end)
    assert.has_error(function() new_app({ handler_timeout = -1 }) end)
    assert.has_error(function() new_app({ lease_s = 8 * 86400 }) end)
    assert.has_error(function() new_app({ max_attempts = 2.5 }) end)
  end)

  it("stops a handler that loops forever at handler_timeout and dead-letters it after max_attempts", function()
    local app = new_app({ handler_timeout = 0.2, max_attempts = 2 })
    local runs, other = 0, 0
    app:on("connection.created", function()
      runs = runs + 1
      while true do end
    end)
    app:on("connection.updated", function() other = other + 1 end)
    assert.equal(200, (deliver(app, event("connection.created"), "msg_loop")))
    assert.equal(200, (deliver(app, event("connection.updated"), "msg_next")))
    app:tick()()
    assert.equal(1, runs)
    assert.equal(1, other) -- the event after it still ran
    local row = st:inbox_get("svix:msg_loop")
    assert.equal("pending", row.state)
    assert.matches("timed out", row.last_error)
    t = t + 3600 -- past the backoff
    app:tick()()
    assert.equal(2, runs)
    assert.equal("dead", st:inbox_get("svix:msg_loop").state)
    assert.equal(2, metrics.value("ofauth_webhook_handler_timeouts_total"))
    assert.equal(1, metrics.value("ofauth_webhook_dead_lettered_total"))
  end)

  it("passes a handler's yield on to the coroutine running the app (and refuses it in a plain tick)", function()
    local app = new_app()
    local got
    app:on("*", function() got = coroutine.yield("parked") end)
    assert.equal(200, (deliver(app, event("connection.created"), "msg_y1")))
    local runner = coroutine.wrap(function() app:tick()() return "done" end)
    assert.equal("parked", runner())
    assert.equal("done", runner("resumed"))
    assert.equal("resumed", got)
    assert.equal("done", st:inbox_get("svix:msg_y1").state)
    assert.equal(200, (deliver(app, event("connection.created"), "msg_y2")))
    app:tick()() -- the main thread cannot yield: the handler fails (retried later)
    local row = st:inbox_get("svix:msg_y2")
    assert.equal("pending", row.state)
    assert.matches("yielded", row.last_error)
  end)

  it("dead-letters an event whose lease keeps running out (its process dies in the handler)", function()
    local app = new_app({ lease_s = 10, max_attempts = 3 })
    assert.equal(200, (deliver(app, event("connection.created"), "msg_die")))
    -- a runner process that claims the event and dies in its handler (os.exit)
    local runner = h.write_file(dir .. "/runner.lua", ([[
      package.path = %q .. "/?.lua;" .. package.path
      local store = require("oflua.store")
      local st = assert(store.open({ path = %q, key = %q }))
      local t = tonumber(arg[1])
      local app = require("ofauth.webhooks").app({ secret = %q, store = st, lease_s = 10, max_attempts = 3,
        now = function() return t end })
      app:on("*", function(_, ctx) io.stdout:write("attempt ", ctx.attempt, "\n") io.stdout:flush() os.exit(3) end)
      app:tick()()
      io.stdout:write("nothing claimed\n")]]):format(h.source_dir .. "/lua", ("%s/inbox%d.db"):format(dir, n),
      key, SECRET))
    local attempts, last_err = {}, nil
    for round = 0, 3 do
      local out, err, code = h.oflua({ runner, tostring(T0 + round * 11) })
      attempts[#attempts + 1] = out:match("attempt (%d+)") or out:match("nothing claimed") and "none"
      if round < 3 then assert.equal(3, code) end
      last_err = err
    end
    -- three runs (each expiry counted when the event is claimed again), then
    -- dead-lettered by the app, counted and logged like a handler that raised
    assert.same({ "1", "2", "3", "none" }, attempts)
    local row = st:inbox_get("svix:msg_die")
    assert.equal("dead", row.state)
    assert.matches("lease expired on attempt 3 of 3", row.last_error)
    assert.equal(1, #st:inbox_dead())
    local line = cjson.decode((assert(last_err:match('[^\n]*"webhook.dead_lettered"[^\n]*'), last_err)))
    assert.equal("error", line.level)
    assert.equal(3, line.attempt)
  end)

  it("prunes done events after retention_s from the tick", function()
    local app = new_app({ retention_s = 100, prune_every = 0 })
    app:on("*", function() end)
    assert.equal(200, (deliver(app, event("connection.created", 1), "msg_old")))
    app:tick()()
    assert.equal("done", st:inbox_get("svix:msg_old").state)
    t = t + 60
    assert.equal(200, (deliver(app, event("connection.created", 2), "msg_new")))
    app:tick()()
    assert.is_table(st:inbox_get("svix:msg_old")) -- 60 s old: kept
    t = t + 50
    app:tick()()
    assert.is_nil(st:inbox_get("svix:msg_old")) -- 110 s old: pruned
    assert.equal("done", st:inbox_get("svix:msg_new").state) -- 50 s old: kept
    assert.equal(1, metrics.value("ofauth_webhook_inbox_pruned_total"))
    assert.equal(1, st:inbox_stats().done)
    -- a store without inbox_prune: the tick says so once, nothing fails
    local fake = require("spec.support.fakes").store()
    local app2 = webhooks.app({ secret = SECRET, store = fake, prune_every = 0 })
    app2:tick()()
    app2:tick()()
    local warned = 0
    for _, l in ipairs(lines) do
      if l.event == "webhook.prune_failed" then warned = warned + 1 end
    end
    assert.equal(1, warned)
  end)

  it("logs rejected deliveries at a limited rate and counts every one", function()
    local clock = 1000
    log.clock = function() return clock end
    local app = new_app({ reject_log_lines = 5, reject_log_interval = 60 })
    local body = event("connection.created")
    local forged = webhooks.sign_svix(body, webhooks.new_secret(), "msg_forged", t)
    local N = 500
    for _ = 1, N do
      assert.equal(401, (app:handler()({ method = "POST", body = body, headers = forged })))
      assert.equal(400, (app:handler()({ method = "POST", body = body, headers = {} })))
    end
    local by_reason = {}
    for _, l in ipairs(lines) do
      assert.equal("webhook.rejected", l.event)
      by_reason[l.reason] = (by_reason[l.reason] or 0) + 1
    end
    assert.same({ bad_signature = 5, missing_header = 5 }, by_reason) -- 5 per reason and minute
    assert.equal(N, metrics.value("ofauth_webhook_rejected_total", { "reason", "bad_signature" }))
    assert.equal(N, metrics.value("ofauth_webhook_rejected_total", { "reason", "missing_header" }))
    assert.equal(2 * N - 10, metrics.value("ofauth_log_suppressed_total", { "event", "webhook.rejected" }))
    -- once the minute has passed, the next line says how many were dropped
    clock = clock + 61
    lines = {}
    app:handler()({ method = "POST", body = body, headers = forged })
    assert.equal(1, #lines)
    assert.equal(N - 5, lines[1].suppressed)
  end)
end)
