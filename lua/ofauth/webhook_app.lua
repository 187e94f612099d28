--- The webhook receiver: ofauth.webhooks.app{secret, store, ...}
-- (this module: require("ofauth.webhook_app").new{...}, the same thing).
--
-- Order of work for one delivery (DESIGN.md):
--   method and size check -> signature and timestamp -> JSON parse ->
--   dedupe by idempotency key + durable insert into the store's inbox (one
--   atomic insert) -> 2xx. With group_commit (the default, when the store has
--   inbox_add_grouped) the insert shares one write transaction with the
--   deliveries that arrive meanwhile: the handler waits (parked, its worker
--   serves others) until the store's committer thread has committed the
--   batch holding it, and a failed batch answers each of its deliveries 503.
--   The handlers run afterwards:
--   * process = "background" (the default): from app:tick(), which
--     oflua.server runs in its own VM and thread (the tick). The answer never
--     waits for a handler, so a handler that is slow, loops or waits on a
--     hung API cannot hold up deliveries or make the sender retry.
--   * process = "inline": before answering, in the worker (the new event is
--     inserted already leased to it). Handler trouble still cannot change the
--     answer (the event is durable by then), but a slow handler holds the
--     worker and delays the 200.
-- Nothing is acknowledged before it is in the inbox, so nothing acknowledged
-- is lost; an event is leased to one runner at a time (lease_s), so two
-- never run it together; a failing handler leaves the event for retry with
-- backoff, and after max_attempts it is dead-lettered (`oflua webhook
-- replay` re-runs it). A lease that runs out (the handler outlived its
-- lease, or the process died) counts as a failed attempt when the event is
-- claimed again (oflua.store's inbox_claim), so an event that keeps hanging
-- or crashing ends dead-lettered too. Each handler run is limited to
-- handler_timeout seconds (an instruction-count hook: pure-Lua loops are
-- stopped; blocking C calls are bounded by their own timeouts, e.g.
-- oflua.http's timeout_ms). Done events are pruned after retention_s by the
-- tick. Every rejected delivery gets a 4xx and no handler runs (a webhook
-- secret that is not valid base64 is our fault: 500, so the sender retries
-- once it is fixed); rejections are counted (ofauth.metrics) and logged at a
-- limited rate (ofauth.log.limited).
--
--   local app = webhooks.app{secret = os.getenv("OFAUTH_WEBHOOK_SECRET"), store = st}
--   app:on("connection.created", function(event, ctx) ... end)
--   app:on("*", function(event, ctx) ... end)    -- every type
--   return app:handler()        -- from an `oflua serve` script: it carries the tick
-- or, in a bigger app:
--   router:post("/webhooks/ofauth", app:handler())
--   return {handler = router, tick = app:tick(), tick_interval = app.tick_interval}
local cjson = require("cjson")
local log = require("ofauth.log")
local metrics = require("ofauth.metrics")
local redact = require("ofauth.redact")
local webhooks = require("ofauth.webhooks")

local App = {}
App.__index = App

--- Defaults of App.new's options (change them here for every app).
App.defaults = {
  process = "background", -- or "inline" ("deferred" is an old name of "background")
  max_attempts = 5, -- handler attempts (failures and lease expiries) before dead-lettering
  lease_s = 300, -- how long one runner owns a claimed event (crash recovery delay)
  handler_timeout = 30, -- seconds per handler run; 0: no limit
  drain_batch = 64, -- due events claimed at once (those left when the lease runs short go back)
  drain_every = 50, -- inline mode: also drain every N deliveries (other workers' retries)
  tick_interval = 1, -- seconds between two ticks (app:handler() tells oflua.server)
  tick_budget = 10, -- seconds of handler work one tick starts at most (then prune, next tick)
  retention_s = 3 * 86400, -- done events are kept this long (duplicates recognised), then pruned
  prune_every = 600, -- seconds between two prunes by the tick
  reject_log_lines = 10, -- rejection log lines per reason and interval (ofauth.log.limited)
  reject_log_interval = 60,
  tick_grace = 10, -- see App:receive: background mode in a server without the tick
  group_commit = true, -- share the inbox insert's transaction (s:inbox_add_grouped) when the store can
}

-- Process-wide (per-VM) numbering of apps: every VM of a server runs the same
-- script, so the k-th app of one VM is the k-th of every other (the tick VM's
-- included). Used to tell workers that the tick runs this app.
local app_count = 0
-- Inline mode: the most events a delivery's worker runs for others before
-- answering (the periodic drain of retries), whatever drain_batch is.
local INLINE_DRAIN = 8
local TICK_DICT = "oflua.webhook_app"

local ACCEPTED = cjson.encode({ status = "accepted" }) -- the answer to every new delivery

local function reply(status, tbl, extra)
  local h = { ["content-type"] = "application/json" }
  for k, v in pairs(extra or {}) do h[k] = v end
  return status, cjson.encode(tbl), h
end

local function positive(opts, name, default, allow_zero)
  local v = opts[name]
  if v == nil then return default end
  if type(v) ~= "number" or v ~= v or v < 0 or (v == 0 and not allow_zero) or v == math.huge then
    error(("webhooks.app: %s must be a %s number"):format(name, allow_zero and "non-negative" or "positive"), 3)
  end
  return v
end

local function monotonic() return require("oflua.core").monotonic() end

--- opts: secret (string or list, required), store (an oflua.store handle,
-- required), process ("background" default, or "inline"), and the fields of
-- App.defaults; tolerance, max_body, signature_headers (ofauth.webhooks
-- verify options); now (function returning unix seconds; for tests),
-- metrics (ofauth.metrics-like).
function App.new(opts)
  opts = opts or {}
  if opts.secret == nil or opts.secret == "" then
    error("webhooks.app: secret is required (OFAUTH_WEBHOOK_SECRET)", 2)
  end
  if type(opts.store) ~= "userdata" and type(opts.store) ~= "table" then
    error("webhooks.app: store (an oflua.store handle) is required", 2)
  end
  local d = App.defaults
  local mode = opts.process or d.process
  if mode == "deferred" then mode = "background" end
  if mode ~= "inline" and mode ~= "background" then
    error('webhooks.app: process must be "background" or "inline"', 2)
  end
  for _, s in ipairs(type(opts.secret) == "table" and opts.secret or { opts.secret }) do
    redact.register_secret(s)
  end
  local max_attempts = positive(opts, "max_attempts", d.max_attempts)
  if math.type(max_attempts) ~= "integer" then error("webhooks.app: max_attempts must be an integer", 2) end
  local drain_batch = positive(opts, "drain_batch", d.drain_batch)
  if math.type(drain_batch) ~= "integer" or drain_batch > 10000 then
    error("webhooks.app: drain_batch must be an integer in [1, 10000]", 2)
  end
  app_count = app_count + 1
  local wd = webhooks.defaults
  local self = setmetatable({
    secret = opts.secret,
    store = opts.store,
    tolerance = opts.tolerance or wd.tolerance,
    max_body = opts.max_body or wd.max_body,
    max_attempts = max_attempts,
    lease_s = positive(opts, "lease_s", d.lease_s),
    handler_timeout = positive(opts, "handler_timeout", d.handler_timeout, true),
    drain_batch = drain_batch,
    drain_every = positive(opts, "drain_every", d.drain_every),
    tick_interval = positive(opts, "tick_interval", d.tick_interval),
    tick_budget = positive(opts, "tick_budget", d.tick_budget),
    retention_s = positive(opts, "retention_s", d.retention_s, true),
    prune_every = positive(opts, "prune_every", d.prune_every, true),
    reject_log = { lines = positive(opts, "reject_log_lines", d.reject_log_lines, true),
      interval = positive(opts, "reject_log_interval", d.reject_log_interval) },
    tick_grace = positive(opts, "tick_grace", d.tick_grace, true),
    group_commit = opts.group_commit,
    process_mode = mode,
    deliveries = 0,
    signature_headers = opts.signature_headers,
    now = opts.now,
    metrics = opts.metrics or metrics,
    handlers = {},
    number = app_count,
    created = monotonic(),
  }, App)
  if self.group_commit == nil then self.group_commit = d.group_commit end
  self.group_commit = self.group_commit and type(self.store.inbox_add_grouped) == "function" or false
  if self.group_commit and self.metrics.track_store then self.metrics.track_store(self.store) end
  if self.lease_s > 7 * 86400 then error("webhooks.app: lease_s must be at most 604800 (7 days)", 2) end
  if self.tick_interval < 0.01 or self.tick_interval > 86400 then
    error("webhooks.app: tick_interval must be within [0.01, 86400] seconds", 2)
  end
  return self
end

--- Register fn(event, ctx) for an event type, or "*" for every type.
-- ctx = {meta, attempt, app, id}. Several handlers per type run in order.
function App:on(event_type, fn)
  if type(event_type) ~= "string" or type(fn) ~= "function" then
    error("app:on(event_type, fn) expects a string and a function", 2)
  end
  local list = self.handlers[event_type] or {}
  list[#list + 1] = fn
  self.handlers[event_type] = list
  return self
end

local function now(self)
  if self.now then return self.now() end
  return require("oflua.core").now()
end
-- The store's clock: opts.now when given (tests move time), else the store's.
local function store_now(self) return self.now and self.now() or nil end

-- Inbox payload: one line of JSON meta, then the raw body bytes.
local function pack(meta, body) return cjson.encode(meta) .. "\n" .. body end
local function unpack(payload)
  local nl = payload:find("\n", 1, true)
  if not nl then return nil end
  local ok, meta = pcall(cjson.decode, payload:sub(1, nl - 1))
  if not ok then return nil end
  return meta, payload:sub(nl + 1)
end

-- oflua.server, or false where it cannot be loaded (plain lua5.4 without
-- the native modules); looked up once.
local server_mod
local function server_module()
  if server_mod == nil then
    local ok, server = pcall(require, "oflua.server")
    server_mod = ok and type(server) == "table" and server or false
  end
  return server_mod
end

-- The server's worker id in this VM (nil outside oflua.server, 0 in the
-- tick's VM).
local function worker_id()
  local server = server_module()
  if not server or not server.worker_id then return nil end
  local ok, id = pcall(server.worker_id)
  return ok and id or nil
end

-- The answer to a new delivery as a prepared server answer (server.answer),
-- made once per app in an oflua.server worker VM (false elsewhere). Given
-- to s:inbox_add_grouped, it lets the server answer as soon as the row is
-- committed, without waiting for this handler to resume on its worker.
local function early_answer(self)
  if self.early == nil then
    self.early = false
    local server = server_module()
    if worker_id() and server.answer then
      self.early = server.answer(200, ACCEPTED, { ["content-type"] = "application/json" })
    end
  end
  return self.early or nil
end

-- Whether the server running this VM began to stop (false outside one): a
-- tick with a backlog then ends after its current batch instead of running
-- up to tick_budget while stop waits for it.
local function stopping()
  local server = server_module()
  return server and server.stopping and server.stopping() or false
end

local function tick_dict()
  local server = server_module()
  if not server or not server.shared then return nil end
  local ok, d = pcall(server.shared, TICK_DICT)
  return ok and d or nil
end

-- Background mode needs someone to run app:tick(). In an oflua.server worker
-- this checks (once it is known: no further cost) that a tick has run this
-- app; when none has within tick_grace seconds of the app's creation (the
-- script returned a router or a table without `tick`), the app says so once
-- and runs handlers inline rather than leave events unprocessed.
-- self.tick_here: a tick of this process runs this app (new events can be
-- handed to it in memory: s:inbox_add_grouped's handoff).
function App:_tick_missing()
  if self.tick_known then return false end
  local wid = worker_id()
  if not wid or wid == 0 then -- outside a server the caller drives app:tick() / app:drain()
    self.tick_known = true
    return false
  end
  local d = tick_dict()
  if d and d:get("tick:" .. self.number) then
    self.tick_known = true
    self.tick_here = true
    return false
  end
  if monotonic() - self.created < self.tick_grace then return false end
  if not self.warned_no_tick then
    self.warned_no_tick = true
    log.warn("webhook.no_tick", { message = "process = \"background\" but the server runs no tick for "
      .. "this app: return app:handler() from the script, or add tick = app:tick(); handlers run "
      .. "inline meanwhile" })
  end
  return true
end

--- Take one delivery: returns status, body, headers (what the server answers).
function App:receive(method, raw_body, headers)
  self.metrics.webhook("received")
  if method ~= "POST" then
    self.metrics.webhook_rejected("method")
    return reply(405, { error = "method_not_allowed" }, { allow = "POST" })
  end
  if #raw_body > self.max_body then
    self.metrics.webhook_rejected("too_large")
    return reply(413, { error = "too_large" })
  end
  local event, meta = webhooks.verify(raw_body, headers, self.secret, {
    tolerance = self.tolerance, now = now(self), signature_headers = self.signature_headers })
  if not event then
    local reason = meta
    self.metrics.webhook_rejected(reason)
    -- An outsider chooses how many of these we see: the log gets a sample
    -- (reject_log_lines per reason and interval), the counter the total.
    if not log.limited("webhook.rejected:" .. tostring(reason), reason == "bad_secret" and "error" or "warn",
        "webhook.rejected", { reason = reason }, self.reject_log) then
      self.metrics.log_suppressed("webhook.rejected")
    end
    return reply(webhooks.reasons[reason] or 400, { error = reason })
  end
  self.metrics.webhook("verified")
  local stored = { scheme = meta.scheme, id = meta.id, timestamp = meta.timestamp,
    type = event.type, received_at = now(self) }
  -- Inline: the new event is inserted already claimed by this worker (one
  -- write), so no other runner takes it while its handlers run here.
  local inline = self.process_mode == "inline" or self:_tick_missing()
  local key = meta.idempotency_key
  local inserted, err, kind
  if self.group_commit then
    -- background: a new delivery is answered by the server once committed
    -- (what this function then returns is dropped; the counters still count)
    -- and, when this process's tick runs the app, handed to it claimed (its
    -- next claim takes the event from memory instead of reading the inbox)
    local handoff = not inline and self.tick_here or false
    inserted, err, kind = self.store:inbox_add_grouped(key, pack(stored, raw_body), store_now(self),
      (inline or handoff) and self.lease_s or nil, not inline and early_answer(self) or nil, handoff)
  else
    inserted, err, kind = self.store:inbox_add(key, pack(stored, raw_body), store_now(self),
      inline and self.lease_s or nil)
  end
  -- a new event inserted claimed comes with its claim token (err's place)
  local claim = inserted and err or nil
  if inserted == nil then
    if kind == "busy" then -- the commit queue is full: shed load at once
      self.metrics.webhook("overloaded")
      return reply(503, { error = "overloaded" }, { ["retry-after"] = "1" })
    end
    log.error("webhook.inbox_failed", { error = tostring(err) })
    return reply(503, { error = "unavailable" }, { ["retry-after"] = "5" })
  end
  if not inserted then
    self.metrics.webhook("duplicate")
    log.debug("webhook.duplicate", { type = event.type })
    return reply(200, { status = "duplicate" })
  end
  self.metrics.webhook("accepted")
  log.debug("webhook.accepted", { type = event.type, scheme = meta.scheme })
  -- The event is durable; handler problems can no longer change the answer.
  if inline then
    local ok, perr = pcall(function()
      local item = { id = key, attempts = 0, claim = claim }
      self:settle(item, self:dispatch(event, stored, item, self.handler_timeout))
      self.deliveries = self.deliveries + 1
      -- Retries of earlier events: when one this VM failed is due, and now
      -- and then for other workers' (a tick or `oflua webhook replay` also
      -- drains).
      local t = now(self)
      if (self.next_due and t >= self.next_due) or self.deliveries % self.drain_every == 0 then
        self.next_due = nil
        self:process(math.min(self.drain_batch, INLINE_DRAIN))
      end
    end)
    if not ok then log.error("webhook.process_failed", { error = tostring(perr) }) end
  end
  return 200, ACCEPTED, { ["content-type"] = "application/json" }
end

--- The tick function for oflua.server: runs due handlers (background mode,
-- and retries in either mode) and prunes done events. Returns a function.
function App:tick()
  return function() return self:run_tick() end
end

--- A handler for oflua.server / oflua.router. It is a callable table that
-- also carries `tick` and `tick_interval`, so a serve script that returns it
-- as is (`return app:handler()`) gets background processing with no other
-- code; inside a router, pass app:tick() as the script's tick.
function App:handler()
  local fn = function(req) return self:receive(req.method, req.body or "", req.headers or {}) end
  return setmetatable({ handler = fn, tick = self:tick(), tick_interval = self.tick_interval },
    { __call = function(_, req) return fn(req) end })
end

-- xpcall(fn, traceback, ...) with at most `limit` seconds of Lua execution
-- (nil or 0: no limit). The handler runs in a coroutine whose count hook
-- raises once the deadline has passed (a handler that catches the error is
-- interrupted again at the next check). A yield inside the handler (e.g.
-- oflua.server parking a request while a C call waits) is passed on to
-- whoever runs us and its results back, so the coroutine is transparent.
-- Returns ok, err, timed_out.
local tpack, tunpack = table.pack, table.unpack
local function call_limited(limit, fn, ...)
  if not limit or limit <= 0 then return xpcall(fn, debug.traceback, ...) end
  local deadline = monotonic() + limit
  local timed_out = false
  local co = coroutine.create(function(...) return xpcall(fn, debug.traceback, ...) end)
  debug.sethook(co, function()
    if monotonic() > deadline then
      timed_out = true
      error(("handler timed out after %g s"):format(limit), 2) -- (formatted only then)
    end
  end, "", 1000)
  local r = tpack(coroutine.resume(co, ...))
  while r[1] and coroutine.status(co) == "suspended" do
    if not coroutine.isyieldable() then
      return false, "handler yielded (coroutine.yield outside its own coroutine)", timed_out
    end
    r = tpack(coroutine.resume(co, coroutine.yield(tunpack(r, 2, r.n))))
  end
  if not r[1] then return false, tostring(r[2]), timed_out end
  return r[2], r[3], timed_out
end

-- Run the handlers for one parsed event; true, or false and the error text.
function App:dispatch(event, meta, item, limit)
  local list = {}
  for _, fn in ipairs(self.handlers[event.type] or {}) do list[#list + 1] = fn end
  for _, fn in ipairs(self.handlers["*"] or {}) do list[#list + 1] = fn end
  if #list == 0 then
    log.debug("webhook.unhandled", { type = event.type })
    return true
  end
  local ctx = { meta = meta, attempt = (item.attempts or 0) + 1, app = self, id = item.id }
  local deadline = limit and limit > 0 and monotonic() + limit or nil
  for _, fn in ipairs(list) do
    local left = deadline and math.max(deadline - monotonic(), 0.001) or nil
    local ok, err, timed_out = call_limited(left, fn, event, ctx)
    if not ok then
      if timed_out then self.metrics.handler_timeout() end
      return false, tostring(err)
    end
  end
  return true
end

-- Run the handlers of one inbox item; true, or false and the error text.
function App:run(item, limit)
  local meta, body = unpack(item.payload)
  if not meta then return false, "corrupt inbox payload" end
  local event, perr = webhooks.parse_event(body)
  if not event then return false, "payload is not an event: " .. tostring(perr) end
  return self:dispatch(event, meta, item, limit)
end

-- Record how a claimed item's handlers went: done, or failed (retried with
-- backoff, dead after max_attempts). `expired`: its attempts are used up by
-- lease expiries (no handler ran now): dead. Returns ok. item.claim (the
-- claim token) fences the write: a runner whose lease ran out and whose
-- event another runner claimed meanwhile changes nothing ("lost").
function App:settle(item, ok, herr, expired, done_items)
  if ok then
    local st = self.store
    if done_items then done_items[#done_items + 1] = item -- App:process marks them together
    -- inline, with group commit: the mark joins the committer's next batch
    -- (no write of this worker's own; should it fail, the lease runs out
    -- and the event runs again, as after a crash); a full queue: at once
    elseif not (self.group_commit and st.inbox_done_grouped
        and st:inbox_done_grouped(item.id, store_now(self), item.claim)) then
      st:inbox_done(item.id, store_now(self), item.claim)
    end
    self.metrics.processed()
    return true
  end
  if not expired then self.metrics.handler_failure() end
  local reason = redact.text(tostring(herr)):sub(1, 2000)
  -- (an expired item's attempts already count the expiry: max_attempts here
  -- makes this call dead-letter it; the row then shows one more attempt)
  local state, next_at, kind = self.store:inbox_fail(item.id, reason, self.max_attempts, store_now(self),
    nil, item.claim)
  if state == nil and kind == "lost" then
    log.warn("webhook.claim_lost", { attempt = (item.attempts or 0) + 1 })
    return false
  end
  local dead = expired or state == "dead" or (item.attempts or 0) + 1 >= self.max_attempts
  if dead then
    self.metrics.dead_lettered()
  elseif type(next_at) == "number" then
    self.next_due = math.min(self.next_due or next_at, next_at)
  end
  log.event(dead and "error" or "warn", dead and "webhook.dead_lettered" or "webhook.handler_failed",
    { attempt = expired and item.attempts or (item.attempts or 0) + 1, error = reason:match("^[^\n]*") })
  return false
end

local mark_in

--- Claim up to n due events from the inbox and run their handlers.
-- Returns the number processed successfully and the number that failed.
-- Each handler gets its full handler_timeout within the lease: an event
-- whose turn comes with less than that left of its own lease (handlers
-- before it were slow, or it waited in memory as a handed-off event) is
-- handed back unrun (st:inbox_release: pending, due at once, no attempt
-- counted), so a claimed event is never still waiting for its turn when its
-- lease runs out.
-- `carry` (App:drain, the tick): a list of done items of the previous call,
-- marked in the claim's own transaction (one commit per batch instead of
-- two); this call's done items are left in it for the next (the caller
-- marks what is left at the end).
function App:process(n, carry)
  n = n or self.drain_batch
  local margin = math.min(5, self.lease_s * 0.05) -- each run ends this long before the lease does
  -- a lease shorter than handler_timeout (and its margin) leaves no full
  -- handler_timeout to any run after the first: all the others would be
  -- handed back every time, so one at a time then
  if self.handler_timeout > 0 and self.lease_s - margin < self.handler_timeout then n = 1 end
  -- A lease that ran out counts as a failed attempt (the handler hung, or its
  -- process died): the store adds it when it hands the event out again. The
  -- claim allows one more than max_attempts so that an event whose last
  -- attempt ended that way comes back here, to be dead-lettered like one
  -- whose handler raised (counted, logged) instead of silently in the store.
  local st = self.store
  local items, err
  if self.group_commit and st.inbox_claim_grouped then
    -- With group commit the tick writes nothing on its own connection: the
    -- previous batch's done marks and this claim are one transaction on the
    -- store's committer connection, between two of its batches (SQLite: one
    -- writing connection, whose page cache no other commit invalidates)
    items, err = st:inbox_claim_grouped(n, self.lease_s, store_now(self), self.max_attempts + 1, carry)
    if not items then
      -- the marks went with the failed transaction: on their own then (if
      -- that fails too they stay claimed: their lease runs out and they run
      -- again, as after a crash)
      log.limited("webhook.claim_failed", "error", "webhook.claim_failed", { error = tostring(err) })
      if carry then self:mark_done(carry) end
    end
    if carry then for i = #carry, 1, -1 do carry[i] = nil end end
    if not items then return nil, err end
  elseif carry and #carry > 0 and type(st.transaction) == "function" then
    local ok, terr = pcall(st.transaction, st, function(s)
      mark_in(s, carry, store_now(self))
      items, err = s:inbox_claim(n, self.lease_s, store_now(self), self.max_attempts + 1)
      if not items then error(err, 0) end
    end)
    if not ok then -- as above: the marks on their own
      log.limited("webhook.done_failed", "error", "webhook.done_failed", { error = tostring(terr) })
      self:mark_done(carry)
    end
    for i = #carry, 1, -1 do carry[i] = nil end
    if not ok then return nil, terr end
  else
    items, err = st:inbox_claim(n, self.lease_s, store_now(self), self.max_attempts + 1)
    if not items then return nil, err end
  end
  local claimed_at = monotonic()
  local done, failed = 0, 0
  local done_items = carry or {}
  local full = self.handler_timeout
  for i, item in ipairs(items) do
    if (item.attempts or 0) >= self.max_attempts then
      self:settle(item, false, ("lease expired on attempt %d of %d (the handler hung or its process died)")
        :format(item.attempts, self.max_attempts), true)
      failed = failed + 1
      goto continue
    end
    -- each run ends before its lease does (a safety margin of 5%, at most
    -- 5 s); a handed-off event's lease began at its insert (lease_left)
    local left = claimed_at + (item.lease_left or self.lease_s) - monotonic() - margin
    local limit = full > 0 and math.min(full, left) or left
    -- (the first of a batch runs even when the lease is shorter than
    -- handler_timeout: it gets what the lease allows; but not a handed-off
    -- event left with less than half of what a fresh claim would give)
    local aged = i == 1 and item.lease_left and item.lease_left < self.lease_s
      and limit < 0.5 * (full > 0 and math.min(full, self.lease_s - margin) or self.lease_s - margin)
    if limit <= 0 or (i > 1 and limit < full) or aged then
      self:release(items, i, i)
      goto continue
    end
    local ok, herr = self:run(item, limit)
    if self:settle(item, ok, herr, false, done_items) then done = done + 1 else failed = failed + 1 end
    ::continue::
  end
  if not carry then self:mark_done(done_items) end
  return done, failed
end

-- Hands items[from..to] back unrun (App:process ran out of lease for them).
-- One that cannot be released stays claimed: its lease runs out and it
-- comes back with an attempt counted, as after a crash.
function App:release(items, from, to)
  local st, t = self.store, store_now(self)
  to = to or #items
  for j = from, to do
    local ok, err, kind = st:inbox_release(items[j].id, t, items[j].claim)
    if ok == nil and kind ~= "lost" then
      log.limited("webhook.release_failed", "error", "webhook.release_failed", { error = tostring(err) })
    end
  end
  if self.metrics.released then self.metrics.released(to - from + 1) end
end

-- Marks items done inside a transaction of s (raises on a store error; a
-- lost claim is left to the runner that has the event now).
mark_in = function(s, items, t)
  for _, item in ipairs(items) do
    local r, e, kind = s:inbox_done(item.id, t, item.claim)
    if r == nil and kind ~= "lost" then error(e, 0) end
  end
end

-- Marks the events of one claimed batch done in one write transaction (one
-- commit per batch instead of one per event). A failure leaves them claimed:
-- their lease runs out and they run again (at-least-once runs, as after a
-- crash).
-- An item whose claim was lost (its lease ran out, another runner has it)
-- is left to that runner.
function App:mark_done(items)
  if #items == 0 then return end
  local t = store_now(self)
  local st = self.store
  if #items > 1 and type(st.transaction) == "function" then
    local ok, err = pcall(st.transaction, st, function(s) mark_in(s, items, t) end)
    if ok then return end
    log.limited("webhook.done_failed", "error", "webhook.done_failed", { error = tostring(err) })
    return
  end
  for _, item in ipairs(items) do st:inbox_done(item.id, t, item.claim) end
end

--- Process due events until none are left (or `limit` rounds).
function App:drain(limit)
  local total_done, total_failed = 0, 0
  local carry = {}
  for _ = 1, limit or 1000 do
    local d, f = self:process(self.drain_batch, carry)
    if not d or d + f == 0 then break end
    total_done, total_failed = total_done + d, total_failed + f
  end
  self:mark_done(carry)
  return total_done, total_failed
end

--- Delete done events older than retention_s (their ids are forgotten: a
-- redelivery after that is taken as new). Returns the number deleted, or
-- nil and an error (also when the store has no inbox_prune).
function App:prune()
  if type(self.store.inbox_prune) ~= "function" then
    return nil, "the store has no inbox_prune"
  end
  local ok, n, err = pcall(function() return self.store:inbox_prune(self.retention_s, now(self)) end)
  if not ok then return nil, tostring(n) end
  if not n then return nil, err end
  self.metrics.pruned(n)
  if n > 0 then log.debug("webhook.pruned", { events = n }) end
  return n
end

--- One tick: due handlers for at most tick_budget seconds, then a prune
-- every prune_every seconds. Errors are logged, never raised (the server
-- would log them every tick).
function App:run_tick()
  local d = tick_dict()
  if d and not self.announced then
    self.announced = true
    d:set("tick:" .. self.number, 1)
  end
  local started = monotonic()
  local carry = {}
  local ok, err = pcall(function()
    repeat
      local done, failed = self:process(self.drain_batch, carry)
      if not done then error(failed) end
    until done + failed == 0 or monotonic() - started >= self.tick_budget or stopping()
  end)
  self:mark_done(carry) -- (empty unless the budget ran out or a handler raised)
  if not ok then -- (every tick while the store is unavailable: a sample)
    log.limited("webhook.tick_failed", "error", "webhook.tick_failed", { error = tostring(err) })
  end
  if self.retention_s > 0 and (not self.last_prune or monotonic() - self.last_prune >= self.prune_every) then
    self.last_prune = monotonic()
    local n, perr = self:prune()
    if not n and not self.prune_warned then
      self.prune_warned = true
      log.warn("webhook.prune_failed", { error = tostring(perr) })
    end
  end
end

return App
