--- The error policy: data plus small functions, one copy per client.
--
-- What the client does with each failure, as ofauth-api.md requires:
--   SESSION_EXPIRED, or GET /v2/access/self answering {isAuth: false}
--                            on_session_expired (mark the connection expired,
--                            call on_reauth_required once), fail with kind
--                            "reauth_required"; never retry
--   429 / RATE_LIMIT_EXCEEDED back off with full jitter, honour Retry-After
--                            (seconds or any HTTP date form); bounded; then
--                            kind "rate_limited"
--   503 with Retry-After     wait what the server asks (like 429), bounded
--   network error, 5xx       retry with backoff, bounded, idempotent methods
--                            only (or when the caller passes idempotent = true)
--   local errors             (invalid input, too_large, a CRLF in a header):
--                            fail at once with kind "invalid"
--   401 and other 4xx        no retry; kind "api"
--
-- Every decision is a field of the policy and the client calls it through
-- the instance (`policy:classify(...)`), so a user replaces any of them for
-- one client: `ofauth.client{policy = {backoff = function(p, attempt) ... end}}`.
-- `M.new` deep-copies the defaults and the overrides: changing one client's
-- `retry_statuses` never changes another's. Sleeping, the clock and
-- randomness go through `sleep`, `now` and `random` so specs can run the
-- policy instantly with a fake clock.
local core = require("oflua.core")
local timeutil = require("ofauth.timeutil")

local M = {}

local Policy = {}
Policy.__index = Policy
M.Policy = Policy

--- What happened, from a response (or a transport error) and the parsed error
-- fields: "ok", "session_expired", "rate_limited", "retryable", "fatal",
-- "invalid" (a local error: nothing was sent, or the input was refused here).
-- ctx: {method, path, body (decoded answer)}.
function M.classify(policy, status, code, transport_err, ctx)
  if transport_err then
    if policy.local_errors[transport_err.kind] then return "invalid" end
    return "retryable"
  end
  if status >= 200 and status < 300 then
    if ctx and policy:auth_state(ctx) == "session_expired" then return "session_expired" end
    return "ok"
  end
  if code and policy.session_expired_codes[code] then return "session_expired" end
  if status == policy.rate_limit_status or (code and policy.rate_limit_codes[code]) then
    return "rate_limited"
  end
  if policy.retry_statuses[status] then return "retryable" end
  return "fatal"
end

--- A 2xx answer that still means "not logged in": GET /v2/access/self with
-- {isAuth: false} (ofauth-endpoints.md section 4). Returns "session_expired"
-- or nil.
function M.auth_state(_, ctx)
  if ctx.method == "GET" and ctx.path == "/v2/access/self" and type(ctx.body) == "table"
    and ctx.body.isAuth == false then
    return "session_expired"
  end
  return nil
end

--- Is a retryable outcome retried for this call? (idempotency)
function M.retryable(policy, outcome, ctx)
  if outcome == "rate_limited" then return true end
  if outcome ~= "retryable" then return false end
  local idem = ctx.idempotent
  if idem == nil then
    idem = policy.idempotent_methods[ctx.method] or policy.unsent_errors[ctx.transport] or false
  end
  return idem and true or false
end

--- The backoff before attempt `attempt + 1` (attempt >= 1).
function M.backoff(policy, attempt)
  local d = math.min(policy.max_delay, policy.base_delay * 2 ^ (attempt - 1))
  if policy.jitter == "full" then d = d * policy.random() end
  return d
end

--- Seconds to wait from a Retry-After value: delta-seconds or an HTTP date
-- (IMF-fixdate, RFC 850, asctime). nil when absent or unreadable; never
-- negative. Called as policy:retry_after(value, now) (or, as before,
-- M.retry_after(value, now)).
function M.retry_after(policy, value, now)
  if type(policy) ~= "table" then value, now = policy, value end
  if type(value) ~= "string" then return nil end
  value = value:match("^%s*(.-)%s*$")
  if value:match("^%d+$") then
    if #value > 9 then return nil end
    return tonumber(value)
  end
  local t = timeutil.http_date(value, now)
  if not t then return nil end
  return math.max(0, t - (now or os.time()))
end

--- Decide about one failed attempt. ctx: {attempt, waited (seconds so far),
-- method, idempotent, status, retry_after (seconds or nil), transport (the
-- transport error kind, if any), remaining (seconds before the call's
-- deadline, or nil)}. Returns the delay before the next attempt, or nil
-- when the call must fail now.
function M.next_delay(policy, outcome, ctx)
  if outcome == "ok" or outcome == "fatal" or outcome == "session_expired" or outcome == "invalid" then
    return nil
  end
  if ctx.attempt >= policy.max_attempts then return nil end
  if not policy:retryable(outcome, ctx) then return nil end
  local delay
  if ctx.retry_after and (outcome == "rate_limited" or policy.retry_after_statuses[ctx.status]) then
    -- at least base_delay: "Retry-After: 0" (or a date in the past) must not
    -- turn the retries into a burst
    delay = math.max(ctx.retry_after, policy.base_delay)
    if delay > policy.max_delay then return nil end -- the server asks for longer than we wait
  else
    delay = policy:backoff(ctx.attempt)
  end
  if ctx.waited + delay > policy.max_total_delay then return nil end
  if ctx.remaining and delay >= ctx.remaining then return nil end
  return delay
end

--- The reaction to SESSION_EXPIRED (and {isAuth: false}): mark the stored
-- connection expired and notify once per expiry (through the connections
-- repository, shared with the connection.expired webhook), else call
-- on_reauth_required on every such answer. `client` is the ofauth client,
-- ctx = {method, path, error}. Never raises.
function M.on_session_expired(policy, client, conn_id, ctx)
  local log = require("ofauth.log")
  log.warn("ofauth.session_expired", { path = ctx.path, connection_id = conn_id })
  local hook = policy.on_reauth_required
  local repo = client.repo
  if conn_id and repo then
    local ok, rec = pcall(repo.mark_expired, repo, conn_id, "session_expired")
    if ok and rec then
      pcall(repo.notify_reauth, repo, rec, ctx, hook) -- failures are logged there
      return
    end
  end
  client.metrics.session_expired()
  if hook then
    local ok, err = pcall(hook, { connection_id = conn_id }, ctx)
    if not ok then log.error("ofauth.reauth_hook_failed", { error = tostring(err) }) end
  end
end

--- Called on every rate-limited answer (before the retry decision), with
-- ctx = {method, path, attempt, retry_after}. Default: count it.
function M.on_rate_limited(_, client, _)
  client.metrics.rate_limited()
end

M.defaults = {
  max_attempts = 4, -- total attempts for a retryable failure (1 = no retry)
  base_delay = 0.5, -- seconds; attempt n waits up to base_delay * 2^(n-1)
  max_delay = 30, -- cap for one wait (also for Retry-After)
  max_total_delay = 60, -- cap for all waits of one call
  deadline = nil, -- seconds for the whole call (attempts and waits); nil = none
  jitter = "full", -- "full" (random in [0, d]) or "none"
  retry_statuses = { [500] = true, [502] = true, [503] = true, [504] = true },
  -- statuses whose Retry-After is honoured besides 429
  retry_after_statuses = { [503] = true },
  idempotent_methods = { GET = true, HEAD = true, OPTIONS = true, PUT = true, DELETE = true },
  -- Transport failures where the request never left this machine (oflua.http
  -- reports them so): retried for any method, POST included.
  unsent_errors = { connect = true, dns = true },
  -- Transport errors that are our own fault (bad request, answer above
  -- max_body): never retried, reported as kind "invalid".
  local_errors = { invalid = true, too_large = true },
  rate_limit_status = 429,
  rate_limit_codes = { RATE_LIMIT_EXCEEDED = true },
  session_expired_codes = { SESSION_EXPIRED = true },
  -- Called once per call that met SESSION_EXPIRED, with the stored connection
  -- record when the client has a connections repository (else {connection_id})
  -- and ctx = {method, path, error}. Its errors are logged, not raised.
  on_reauth_required = nil,
  -- Called before each retry with {attempt, delay, reason, method, path}.
  on_retry = nil,
  sleep = core.sleep,
  now = core.now,
  monotonic = core.monotonic,
  random = math.random,
  -- decisions (replace any of them per client)
  classify = M.classify,
  auth_state = M.auth_state,
  retryable = M.retryable,
  backoff = M.backoff,
  retry_after = M.retry_after,
  next_delay = M.next_delay,
  on_session_expired = M.on_session_expired,
  on_rate_limited = M.on_rate_limited,
}

local function deep_copy(v, seen)
  if type(v) ~= "table" then return v end
  seen = seen or {}
  if seen[v] then return seen[v] end
  local out = {}
  seen[v] = out
  for k, x in pairs(v) do out[deep_copy(k, seen)] = deep_copy(x, seen) end
  return setmetatable(out, getmetatable(v))
end
M.deep_copy = deep_copy

--- A policy: a deep copy of M.defaults (as they are now) with the overrides
-- (also deep-copied) on top. A policy made by M.new is returned as is.
function M.new(overrides)
  if getmetatable(overrides) == Policy then return overrides end
  if overrides ~= nil and type(overrides) ~= "table" then
    error("policy must be a table of overrides", 2)
  end
  local p = deep_copy(M.defaults)
  for k, v in pairs(overrides or {}) do p[k] = deep_copy(v) end
  return setmetatable(p, Policy)
end

--- Kept for callers of the old module function.
function M.http_date(value, now) return timeutil.http_date(value, now) end

return M
