--- One JSON line per notable event, to stderr.
--
-- `log.event("webhook.rejected", {reason = "bad_signature"})` writes
-- {"ts":...,"level":"info","event":"webhook.rejected","reason":"bad_signature"}.
-- Field names that usually hold secrets are dropped, every string is passed
-- through ofauth.redact (connection ids shortened, registered secrets
-- removed). Level from OFAUTH_LOG (off, error, warn, info, debug; default
-- info); `log.sink` can be replaced (a function taking the line) to collect
-- lines in tests or send them elsewhere.
--
-- `log.limited(key, level, event, fields)` is for lines an outsider can cause
-- at will (rejected requests): at most `M.limit.lines` lines per key every
-- `M.limit.interval` seconds in this Lua state; the lines over the limit are
-- dropped and counted, and the next line logged for that key after the
-- window carries `suppressed = N` (how many were dropped since the last
-- line). Keep the totals in counters (ofauth.metrics): the log is a sample.
local cjson = require("cjson")
local redact = require("ofauth.redact")

local M = {}

local levels = { off = 0, error = 1, warn = 2, info = 3, debug = 4 }
M.level = levels[os.getenv("OFAUTH_LOG") or ""] and os.getenv("OFAUTH_LOG") or "info"

M.secret_fields = {
  api_key = true, apikey = true, secret = true, webhook_secret = true, key = true,
  store_key = true, password = true, token = true, authorization = true,
}

function M.sink(line)
  io.stderr:write(line, "\n")
  io.stderr:flush()
end

local function now()
  local ok, core = pcall(require, "oflua.core")
  return ok and core.now() or os.time()
end

function M.enabled(level) return (levels[level] or 3) <= (levels[M.level] or 3) end

function M.event(level, event, fields)
  if not M.enabled(level) then return end
  local rec = { ts = now(), level = level, event = event }
  for k, v in pairs(fields or {}) do
    if type(k) == "string" and not rec[k] then
      if M.secret_fields[k:lower()] then
        rec[k] = "[redacted]"
      elseif type(v) == "string" or type(v) == "number" or type(v) == "boolean" then
        rec[k] = redact.text(v)
      elseif type(v) == "table" then
        rec[k] = redact.value(v)
      else
        rec[k] = tostring(v)
      end
    end
  end
  local ok, line = pcall(cjson.encode, rec)
  if not ok then line = cjson.encode({ ts = rec.ts, level = level, event = event }) end
  M.sink(line)
end

M.limit = { lines = 10, interval = 60, max_keys = 256 }

local windows, nwindows = {}, 0

--- The rate limit's clock (seconds, monotonic); replaceable in tests.
function M.clock()
  local ok, core = pcall(require, "oflua.core")
  return ok and core.monotonic() or os.clock()
end

--- Rate-limited M.event: returns true when the line was written (or would
-- have been, were its level enabled), false when it was suppressed.
-- opts (optional): lines, interval (override M.limit for this key).
function M.limited(key, level, event, fields, opts)
  local lines = (opts and opts.lines) or M.limit.lines
  local interval = (opts and opts.interval) or M.limit.interval
  local t = M.clock()
  local w = windows[key]
  if not w then
    if nwindows >= M.limit.max_keys then -- bounded: keys may come from outside
      windows, nwindows = {}, 0
    end
    w = { start = t, n = 0, suppressed = 0 }
    windows[key] = w
    nwindows = nwindows + 1
  elseif t - w.start >= interval then
    w.start, w.n = t, 0
  end
  if w.n >= lines then
    w.suppressed = w.suppressed + 1
    return false
  end
  w.n = w.n + 1
  if w.suppressed > 0 then
    local f = {}
    for k, v in pairs(fields or {}) do f[k] = v end
    f.suppressed = w.suppressed
    w.suppressed = 0
    fields = f
  end
  M.event(level, event, fields)
  return true
end

--- Forget every rate-limit window (tests).
function M.reset_limits() windows, nwindows = {}, 0 end

function M.error(event, fields) M.event("error", event, fields) end
function M.warn(event, fields) M.event("warn", event, fields) end
function M.info(event, fields) M.event("info", event, fields) end
function M.debug(event, fields) M.event("debug", event, fields) end

return M
