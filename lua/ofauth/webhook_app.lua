--- The webhook receiver: ofauth.webhooks.app{secret, store, ...}.
--
-- Order of work for one delivery (DESIGN.md):
--   method and size check -> signature and timestamp -> JSON parse ->
--   dedupe by idempotency key + durable insert into the store's inbox (one
--   atomic inbox_add, the event already leased to this worker) -> handlers ->
--   mark done -> 2xx. With process = "deferred" the answer follows the insert
--   and the handlers run later from app:drain() (the server's tick).
-- Nothing is acknowledged before it is in the inbox, so nothing acknowledged
-- is lost; an event is leased to one worker at a time, so two workers never
-- run it together; a failing handler leaves the event for retry with
-- backoff, and after max_attempts it is dead-lettered (`oflua webhook replay`
-- re-runs it). Every rejected delivery gets a 4xx and no handler runs
-- (a webhook secret that is not valid base64 is our fault: 500, so the sender
-- retries once it is fixed).
--
--   local app = webhooks.app{secret = os.getenv("OFAUTH_WEBHOOK_SECRET"), store = st}
--   app:on("connection.created", function(event, ctx) ... end)
--   app:on("*", function(event, ctx) ... end)    -- every type
--   router:post("/webhooks/ofauth", app:handler())
return function(webhooks)
  local cjson = require("cjson")
  local log = require("ofauth.log")
  local metrics = require("ofauth.metrics")
  local redact = require("ofauth.redact")

  local App = {}
  App.__index = App

  local function reply(status, tbl, extra)
    local h = { ["content-type"] = "application/json" }
    for k, v in pairs(extra or {}) do h[k] = v end
    return status, cjson.encode(tbl), h
  end

  --- opts: secret (string or list, required), store (an oflua.store handle,
  -- required), tolerance, max_body, max_attempts, lease_s, drain_batch,
  -- drain_every, process ("inline": run the handlers before answering, the
  -- default; "deferred": answer once stored, handlers run from app:drain(),
  -- e.g. in the server's tick), signature_headers, now (function returning
  -- unix seconds; for tests), metrics (ofauth.metrics-like).
  function App.new(opts)
    opts = opts or {}
    if opts.secret == nil or opts.secret == "" then
      error("webhooks.app: secret is required (OFAUTH_WEBHOOK_SECRET)", 2)
    end
    if type(opts.store) ~= "userdata" and type(opts.store) ~= "table" then
      error("webhooks.app: store (an oflua.store handle) is required", 2)
    end
    if opts.process ~= nil and opts.process ~= "inline" and opts.process ~= "deferred" then
      error('webhooks.app: process must be "inline" or "deferred"', 2)
    end
    for _, s in ipairs(type(opts.secret) == "table" and opts.secret or { opts.secret }) do
      redact.register_secret(s)
    end
    local d = webhooks.defaults
    return setmetatable({
      secret = opts.secret,
      store = opts.store,
      tolerance = opts.tolerance or d.tolerance,
      max_body = opts.max_body or d.max_body,
      max_attempts = opts.max_attempts or d.max_attempts,
      lease_s = opts.lease_s or d.lease_s,
      drain_batch = opts.drain_batch or d.drain_batch,
      drain_every = opts.drain_every or d.drain_every,
      process_mode = opts.process or d.process,
      deliveries = 0,
      signature_headers = opts.signature_headers,
      now = opts.now,
      metrics = opts.metrics or metrics,
      handlers = {},
    }, App)
  end

  --- Register fn(event, ctx) for an event type, or "*" for every type.
  -- ctx = {meta, attempt, app}. Several handlers per type run in order.
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

  -- Inbox payload: one line of JSON meta, then the raw body bytes.
  local function pack(meta, body) return cjson.encode(meta) .. "\n" .. body end
  local function unpack(payload)
    local nl = payload:find("\n", 1, true)
    if not nl then return nil end
    local ok, meta = pcall(cjson.decode, payload:sub(1, nl - 1))
    if not ok then return nil end
    return meta, payload:sub(nl + 1)
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
      log.event(reason == "bad_secret" and "error" or "warn", "webhook.rejected", { reason = reason })
      return reply(webhooks.reasons[reason] or 400, { error = reason })
    end
    self.metrics.webhook("verified")
    local stored = { scheme = meta.scheme, id = meta.id, timestamp = meta.timestamp,
      type = event.type, received_at = now(self) }
    -- Inline: the new event is inserted already claimed by this worker (one
    -- write), so no other worker runs it while its handlers run here.
    local inline = self.process_mode == "inline"
    local key = meta.idempotency_key
    local inserted, err = self.store:inbox_add(key, pack(stored, raw_body), nil, inline and self.lease_s or nil)
    if inserted == nil then
      log.error("webhook.inbox_failed", { error = tostring(err) })
      return reply(503, { error = "unavailable" }, { ["retry-after"] = "5" })
    end
    if not inserted then
      self.metrics.webhook("duplicate")
      log.info("webhook.duplicate", { type = event.type })
      return reply(200, { status = "duplicate" })
    end
    self.metrics.webhook("accepted")
    log.info("webhook.accepted", { type = event.type, scheme = meta.scheme })
    -- The event is durable; handler problems can no longer change the answer.
    if inline then
      local ok, perr = pcall(function()
        self:settle({ id = key, attempts = 0 }, self:dispatch(event, stored, { id = key, attempts = 0 }))
        self.deliveries = self.deliveries + 1
        -- Retries of earlier events: when one this VM failed is due, and now
        -- and then for other workers' (a tick or `oflua webhook replay` also
        -- drains).
        local t = now(self)
        if (self.next_due and t >= self.next_due) or self.deliveries % self.drain_every == 0 then
          self.next_due = nil
          self:process(self.drain_batch)
        end
      end)
      if not ok then log.error("webhook.process_failed", { error = tostring(perr) }) end
    end
    return reply(200, { status = "accepted" })
  end

  --- A handler function for oflua.server / oflua.router.
  function App:handler()
    return function(req) return self:receive(req.method, req.body or "", req.headers or {}) end
  end

  -- Run the handlers for one parsed event; true, or false and the error text.
  function App:dispatch(event, meta, item)
    local list = {}
    for _, fn in ipairs(self.handlers[event.type] or {}) do list[#list + 1] = fn end
    for _, fn in ipairs(self.handlers["*"] or {}) do list[#list + 1] = fn end
    if #list == 0 then
      log.info("webhook.unhandled", { type = event.type })
      return true
    end
    local ctx = { meta = meta, attempt = (item.attempts or 0) + 1, app = self, id = item.id }
    for _, fn in ipairs(list) do
      local ok, err = xpcall(fn, debug.traceback, event, ctx)
      if not ok then return false, tostring(err) end
    end
    return true
  end

  -- Run the handlers of one inbox item; true, or false and the error text.
  function App:run(item)
    local meta, body = unpack(item.payload)
    if not meta then return false, "corrupt inbox payload" end
    local event, perr = webhooks.parse_event(body)
    if not event then return false, "payload is not an event: " .. tostring(perr) end
    return self:dispatch(event, meta, item)
  end

  -- Record how a claimed item's handlers went: done, or failed (retried with
  -- backoff, dead after max_attempts). Returns ok.
  function App:settle(item, ok, herr)
    if ok then
      self.store:inbox_done(item.id)
      return true
    end
    self.metrics.handler_failure()
    local reason = redact.text(tostring(herr)):sub(1, 2000)
    local state, next_at = self.store:inbox_fail(item.id, reason, self.max_attempts)
    local dead = state == "dead" or (item.attempts or 0) + 1 >= self.max_attempts
    if dead then
      self.metrics.dead_lettered()
    elseif type(next_at) == "number" then
      self.next_due = math.min(self.next_due or next_at, next_at)
    end
    log.event(dead and "error" or "warn", dead and "webhook.dead_lettered" or "webhook.handler_failed",
      { attempt = (item.attempts or 0) + 1, error = reason:match("^[^\n]*") })
    return false
  end

  --- Claim up to n due events from the inbox and run their handlers.
  -- Returns the number processed successfully and the number that failed.
  function App:process(n)
    -- max_attempts also applies when a lease runs out (a handler that crashed
    -- its worker counts as a failed attempt).
    local items, err = self.store:inbox_claim(n or self.drain_batch, self.lease_s, nil, self.max_attempts)
    if not items then return nil, err end
    local done, failed = 0, 0
    for _, item in ipairs(items) do
      if self:settle(item, self:run(item)) then done = done + 1 else failed = failed + 1 end
    end
    return done, failed
  end

  --- Process due events until none are left (or `limit` rounds).
  function App:drain(limit)
    local total_done, total_failed = 0, 0
    for _ = 1, limit or 1000 do
      local d, f = self:process(self.drain_batch)
      if not d or d + f == 0 then break end
      total_done, total_failed = total_done + d, total_failed + f
    end
    return total_done, total_failed
  end

  return App
end
