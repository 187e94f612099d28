--- Webhook queue and delivery loop of the emulator.
--
-- The API handler (in the server's worker VM) calls `M.enqueue`, which puts
-- the event into a shared dictionary (`oflua.server.shared`, or a memdict
-- when everything runs in one VM):
--   q:tail   last event number (atomic incr)     q:<n>  queued event (JSON)
--   q:head   last event taken by the loop         d:<n>  delivery record (JSON)
-- The delivery loop (`M.new(...)`, `:step()`, in the main VM) moves queued
-- events into its own pending list and POSTs them, signed, to the webhook
-- URL: 2xx is delivered; anything else (status or transport error) is retried
-- after base * 2^(attempt-1) seconds (capped) until `webhook_attempts` are
-- used, then the event is "failed". Events of one ordering key (the
-- connection id) go out in order: a later event waits while an earlier one
-- of the same key is pending. Each attempt is recorded in d:<n>, served at
-- GET /emulator/deliveries. Record states: queued, retrying, delivered,
-- failed, skipped (no webhook URL configured).
local json = require("ofauth.emulator.json")

local M = {}

M.USER_AGENT = "ofauth-emulator"
M.URL_KEY = "webhook_url" -- dict key: a webhook URL set after start (emu:set_webhook_url)

--- The webhook URL in force: one set after start, else the configured one.
function M.webhook_url(dict, cfg)
  return dict:get(M.URL_KEY) or cfg.webhook_url
end
M.MAX_RESPONSE_BODY = 65536 -- bytes read from the receiver's answer

--- The JSON envelope: {eventType, live, data} for svix signing (the SDKs'
-- shape), {type, data} for the checklist's scheme (the checklist's shape).
function M.envelope(signing, event_type, data, live)
  if signing == "checklist" then return { type = event_type, data = data } end
  return { eventType = event_type, live = live and true or false, data = data }
end

local function iso_ms(t)
  return os.date("!%Y-%m-%dT%H:%M:%S", math.floor(t)) .. ("%.3fZ"):format(t % 1):sub(2)
end

--- Queue one event. `ev` = {type, data, key, live}; `opts` = {signing,
-- random_hex, now, max_queue}. Returns the event number, or nil, message
-- when the queue is full.
function M.enqueue(dict, ev, opts)
  local tail = dict:get("q:tail") or 0
  local head = dict:get("q:head") or 0
  if tail - head >= opts.max_queue then return nil, "webhook queue is full (max_queue)" end
  local item = {
    id = "msg_" .. opts.random_hex(12),
    type = ev.type,
    key = ev.key or "",
    created = opts.now(),
    body = json.encode(M.envelope(opts.signing, ev.type, ev.data or {}, ev.live)),
  }
  local n = dict:incr("q:tail", 1, 0)
  item.n = n
  local ok, err = dict:set("q:" .. n, json.encode(item))
  if not ok then return nil, "cannot queue the event: " .. tostring(err) end
  return n, item.id
end

local function record_json(item)
  return json.encode({
    n = item.n, id = item.id, type = item.type, state = item.state, status = item.status,
    created = iso_ms(item.created),
    attempts = json.array(item.attempts),
    next_attempt_at = item.next_at and item.state == "retrying" and iso_ms(item.next_at) or nil,
  })
end

-- cjson decodes every number as a float: give integers back as integers.
local function ints(t)
  for k, v in pairs(t) do
    if type(v) == "number" then t[k] = math.tointeger(v) or v
    elseif type(v) == "table" then ints(v) end
  end
  return t
end

--- Delivery records, oldest first, plus events not yet taken by the loop.
function M.records(dict, state)
  local out = {}
  local nums = {}
  for _, k in ipairs(dict:keys()) do
    local n = k:match("^d:(%d+)$")
    if n then nums[#nums + 1] = tonumber(n) end
  end
  table.sort(nums)
  for _, n in ipairs(nums) do
    local r = json.decode(dict:get("d:" .. n) or "")
    if r and (not state or r.state == state) then out[#out + 1] = ints(r) end
  end
  local head, tail = dict:get("q:head") or 0, dict:get("q:tail") or 0
  if not state or state == "queued" then
    for n = head + 1, tail do
      local q = json.decode(dict:get("q:" .. n) or "")
      if q and not dict:get("d:" .. n) then
        out[#out + 1] = {
          n = q.n, id = q.id, type = q.type, state = "queued",
          created = iso_ms(q.created), attempts = json.array({}),
        }
      end
    end
  end
  return out
end

--- Events not finished yet, as seen from the dictionary alone (for a caller
-- whose loop runs in another VM): queued ones plus records still retrying.
function M.backlog(dict)
  local n = (dict:get("q:tail") or 0) - (dict:get("q:head") or 0)
  for _, k in ipairs(dict:keys()) do
    if k:match("^d:%d+$") then
      local r = json.decode(dict:get(k) or "")
      if r and (r.state == "queued" or r.state == "retrying") then n = n + 1 end
    end
  end
  return n
end

local Loop = {}
Loop.__index = Loop

--- deps = {dict, cfg, request = http.request, sign = fn(body, id, t) ->
-- headers, now, log = fn(line) or nil}.
function M.new(deps)
  return setmetatable({
    dict = deps.dict, cfg = deps.cfg, request = deps.request, sign = deps.sign,
    now = deps.now, log = deps.log, pending = {},
  }, Loop)
end

function Loop:backoff(attempt)
  local d = self.cfg.webhook_base_delay * 2 ^ (attempt - 1)
  return math.min(d, self.cfg.webhook_max_delay)
end

function Loop:save(item)
  -- A record already rotated out (newer events arrived) is not written back.
  if item.n <= (self.last_n or 0) - self.cfg.max_delivery_records then return end
  local ok, err = self.dict:set("d:" .. item.n, record_json(item))
  if not ok and self.log then self.log("emulator: cannot record delivery: " .. tostring(err)) end
end

-- Move newly queued events into the pending list (in order).
function Loop:pull()
  local dict = self.dict
  local head = dict:get("q:head") or 0
  local tail = dict:get("q:tail") or 0
  for n = head + 1, tail do
    local raw = dict:get("q:" .. n)
    if not raw then break end -- enqueue in progress: take it next time
    local item = json.decode(raw)
    if item then
      item.n = n -- JSON numbers come back as floats
      self.last_n = n
      item.attempts, item.state, item.next_at = {}, "queued", self.now()
      self.pending[#self.pending + 1] = item
      -- The record before the queue entry goes: a reader in another VM
      -- (backlog) always sees the event somewhere.
      self:save(item)
      local old = n - self.cfg.max_delivery_records
      if old > 0 then dict:delete("d:" .. old) end
    end
    dict:delete("q:" .. n)
    dict:set("q:head", n)
  end
end

local function host_of(url)
  return (url:match("^%a+://([^/?#]*)") or "?")
end

-- One POST of `item` to `url`; returns true when delivered (2xx).
function Loop:attempt(item, url)
  local cfg = self.cfg
  local t = self.now()
  local headers = self.sign(item.body, item.id, math.floor(t))
  headers["content-type"] = "application/json"
  headers["user-agent"] = M.USER_AGENT
  local ok, res, err = pcall(self.request, {
    method = "POST", url = url, headers = headers, body = item.body,
    timeout_ms = cfg.webhook_timeout_ms,
    connect_timeout_ms = math.min(cfg.webhook_timeout_ms, 5000),
    max_body = M.MAX_RESPONSE_BODY,
  })
  if not ok then res, err = nil, { kind = "invalid", message = tostring(res) } end
  local rec = { attempt = #item.attempts + 1, at = iso_ms(t) }
  rec.duration_ms = math.floor((self.now() - t) * 1000 + 0.5)
  local delivered = false
  if res then
    rec.status = res.status
    delivered = res.status >= 200 and res.status < 300
  else
    rec.error = type(err) == "table" and tostring(err.kind or "error") or "error"
  end
  item.attempts[#item.attempts + 1] = rec
  item.status = rec.status -- the last answer, for a quick look
  if self.log then
    self.log(("emulator: webhook %s #%d attempt %d to %s -> %s"):format(
      item.type, item.n, rec.attempt, host_of(url),
      rec.status and tostring(rec.status) or rec.error))
  end
  return delivered
end

--- Run what is due now. Returns the number of attempts made and the number
-- of seconds until the next retry is due (nil when nothing is pending).
function Loop:step()
  self:pull()
  local url = M.webhook_url(self.dict, self.cfg)
  local now = self.now()
  local blocked, keep, made, soonest = {}, {}, 0, nil
  for _, item in ipairs(self.pending) do
    local done = false
    if not blocked[item.key] then
      if not url then
        item.state, done = "skipped", true
        self:save(item)
      elseif item.next_at <= now then
        made = made + 1
        if self:attempt(item, url) then
          item.state, done = "delivered", true
        elseif #item.attempts >= self.cfg.webhook_attempts then
          item.state, done = "failed", true
        else
          item.state = "retrying"
          item.next_at = self.now() + self:backoff(#item.attempts)
        end
        self:save(item)
      end
      if not done then
        -- The first unfinished event of a key decides when that key moves on.
        local wait = math.max(0, item.next_at - self.now())
        if not soonest or wait < soonest then soonest = wait end
      end
    end
    if not done then
      keep[#keep + 1] = item
      blocked[item.key] = true
    end
  end
  self.pending = keep
  return made, soonest
end

--- Number of events not finished yet (pending in the loop or still queued).
function Loop:backlog()
  local head = self.dict:get("q:head") or 0
  local tail = self.dict:get("q:tail") or 0
  return #self.pending + (tail - head)
end

return M
