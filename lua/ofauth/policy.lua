--- The default error policy: data plus small functions.
--
-- What the client does with each failure, as ofauth-api.md requires:
--   SESSION_EXPIRED          mark the connection expired, call on_reauth_required
--                            once, fail with kind "reauth_required"; never retry
--   429 / RATE_LIMIT_EXCEEDED back off with full jitter, honour Retry-After
--                            (seconds or HTTP date); bounded; then "rate_limited"
--   network error, 5xx       retry with backoff, bounded, idempotent methods only
--                            (or when the caller passes idempotent = true)
--   401 and other 4xx        no retry; kind "api"
--
-- Override any field globally (`require("ofauth.policy").defaults.max_attempts
-- = 6`) or per client (`ofauth.client{policy = {max_attempts = 2}}`). Sleeping,
-- the clock and randomness go through `sleep`, `now` and `random` so specs can
-- run the policy instantly with a fake clock.
local core = require("oflua.core")

local M = {}

M.defaults = {
  max_attempts = 4, -- total attempts for a retryable failure (1 = no retry)
  base_delay = 0.5, -- seconds; attempt n waits up to base_delay * 2^(n-1)
  max_delay = 30, -- cap for one wait (also for Retry-After)
  max_total_delay = 60, -- cap for all waits of one call
  jitter = "full", -- "full" (random in [0, d]) or "none"
  retry_statuses = { [500] = true, [502] = true, [503] = true, [504] = true },
  idempotent_methods = { GET = true, HEAD = true, OPTIONS = true, PUT = true, DELETE = true },
  -- Transport failures where the request never left this machine (oflua.http
  -- reports them so): retried for any method, POST included.
  unsent_errors = { connect = true, dns = true },
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
  random = math.random,
}

--- A policy: overrides on top of M.defaults (read through, so later changes to
-- M.defaults still apply to fields the override does not set).
function M.new(overrides)
  if getmetatable(overrides) and overrides.__is_policy then return overrides end
  local p = { __is_policy = true }
  for k, v in pairs(overrides or {}) do p[k] = v end
  return setmetatable(p, { __index = M.defaults })
end

local months = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8,
  Sep = 9, Oct = 10, Nov = 11, Dec = 12 }

-- Days since 1970-01-01 of a civil date (proleptic Gregorian), without os.time
-- (which reads the local time zone).
local function days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

--- Unix seconds of an HTTP date (IMF-fixdate, e.g. "Wed, 21 Oct 2015
-- 07:28:00 GMT"), or nil.
function M.http_date(value)
  if type(value) ~= "string" then return nil end
  local d, mon, y, hh, mm, ss = value:match("^%s*%a+, (%d%d?) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT%s*$")
  if not d or not months[mon] then return nil end
  return days_from_civil(tonumber(y), months[mon], tonumber(d)) * 86400
    + tonumber(hh) * 3600 + tonumber(mm) * 60 + tonumber(ss)
end

--- Seconds to wait from a Retry-After value: delta-seconds or an HTTP date.
-- nil when absent or unreadable; never negative.
function M.retry_after(value, now)
  if type(value) ~= "string" then return nil end
  value = value:match("^%s*(.-)%s*$")
  if value:match("^%d+$") then
    if #value > 9 then return nil end
    return tonumber(value)
  end
  local t = M.http_date(value)
  if not t then return nil end
  return math.max(0, t - (now or os.time()))
end

--- The backoff before attempt `attempt + 1` (attempt >= 1).
function M.backoff(policy, attempt)
  local d = math.min(policy.max_delay, policy.base_delay * 2 ^ (attempt - 1))
  if policy.jitter == "full" then d = d * policy.random() end
  return d
end

--- What happened, from a response (or a transport error) and the parsed error
-- fields: "ok", "session_expired", "rate_limited", "retryable", "fatal".
function M.classify(policy, status, code, transport_err)
  if transport_err then return "retryable" end
  if status >= 200 and status < 300 then return "ok" end
  if code and policy.session_expired_codes[code] then return "session_expired" end
  if status == policy.rate_limit_status or (code and policy.rate_limit_codes[code]) then
    return "rate_limited"
  end
  if policy.retry_statuses[status] then return "retryable" end
  return "fatal"
end

--- Decide about one failed attempt. ctx: {attempt, waited (seconds so far),
-- method, idempotent, retry_after (seconds or nil), transport (the transport
-- error kind, if any)}. Returns the delay before
-- the next attempt, or nil when the call must fail now.
function M.next_delay(policy, outcome, ctx)
  if outcome == "ok" or outcome == "fatal" or outcome == "session_expired" then return nil end
  if ctx.attempt >= policy.max_attempts then return nil end
  if outcome == "retryable" then
    local idem = ctx.idempotent
    if idem == nil then
      idem = policy.idempotent_methods[ctx.method] or policy.unsent_errors[ctx.transport] or false
    end
    if not idem then return nil end
  end
  local delay
  if outcome == "rate_limited" and ctx.retry_after then
    -- at least base_delay: "Retry-After: 0" (or a date in the past) must not
    -- turn the retries into a burst
    delay = math.max(ctx.retry_after, policy.base_delay)
    if delay > policy.max_delay then return nil end -- the server asks for longer than we wait
  else
    delay = M.backoff(policy, ctx.attempt)
  end
  if ctx.waited + delay > policy.max_total_delay then return nil end
  return delay
end

return M
