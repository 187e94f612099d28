--- Time helpers shared by the ofauth library (one copy of each).
--
-- Times inside oflua are unix seconds (numbers, UTC) everywhere: stored
-- records, `expires_at` fields, policy contexts. ISO-8601 strings appear only
-- where the API sends or expects them (API objects are kept as sent).
local M = {}

local clock = require("oflua.core").now

--- `opts.now` when given (specs pass a fixed clock), else the wall clock.
function M.now_of(opts)
  return (opts and opts.now) or clock()
end

--- Days since 1970-01-01 of a civil date (proleptic Gregorian), without
-- os.time (which reads the local time zone).
function M.days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

local function valid(y, mo, d, h, mi, s)
  return mo >= 1 and mo <= 12 and d >= 1 and d <= 31 and h <= 23 and mi <= 59 and s <= 60
    and y >= 1 and y <= 9999
end

--- "2026-11-25T12:00:00Z", "...000Z" or "+00:00" -> unix seconds, or nil.
-- A number is taken as unix seconds (milliseconds when above 1e11).
function M.parse_iso(s)
  if type(s) == "number" then return s > 1e11 and s / 1000 or s end
  if type(s) ~= "string" then return nil end
  local y, mo, d, h, mi, sec = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[T ](%d%d):(%d%d):(%d%d)")
  if not y then return nil end
  y, mo, d, h, mi, sec = tonumber(y), tonumber(mo), tonumber(d), tonumber(h), tonumber(mi), tonumber(sec)
  if not valid(y, mo, d, h, mi, sec) then return nil end
  local t = M.days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec
  local sign, oh, om = s:match("([%+%-])(%d%d):?(%d%d)$")
  if sign then
    local off = tonumber(oh) * 3600 + tonumber(om) * 60
    t = sign == "+" and t - off or t + off
  end
  return t
end

--- Unix seconds -> "2026-11-25T12:00:00Z".
function M.iso(t)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t))
end

local MONTHS = { jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6, jul = 7, aug = 8,
  sep = 9, oct = 10, nov = 11, dec = 12 }

--- Unix seconds of an HTTP date in any of the three forms RFC 9110 (5.6.7)
-- asks recipients to accept, or nil:
--   IMF-fixdate  "Sun, 06 Nov 1994 08:49:37 GMT"
--   RFC 850      "Sunday, 06-Nov-94 08:49:37 GMT" (two-digit year: the
--                century that puts it at most 50 years in the future)
--   asctime      "Sun Nov  6 08:49:37 1994"
function M.http_date(value, now)
  if type(value) ~= "string" or #value > 64 then return nil end
  local d, mon, y, hh, mm, ss
  d, mon, y, hh, mm, ss = value:match("^%s*%a+, (%d%d?) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT%s*$")
  if not d then
    d, mon, y, hh, mm, ss = value:match("^%s*%a+, (%d%d)%-(%a%a%a)%-(%d%d) (%d%d):(%d%d):(%d%d) GMT%s*$")
    if d then
      local yy = tonumber(y)
      local this = tonumber(os.date("!%Y", math.floor(now or os.time())))
      local full = (this // 100) * 100 + yy
      if full > this + 50 then full = full - 100 end
      y = full
    end
  end
  if not d then
    mon, d, hh, mm, ss, y = value:match("^%s*%a%a%a (%a%a%a) +(%d%d?) (%d%d):(%d%d):(%d%d) (%d%d%d%d)%s*$")
  end
  if not d then return nil end
  local m = MONTHS[mon:lower()]
  y, d, hh, mm, ss = tonumber(y), tonumber(d), tonumber(hh), tonumber(mm), tonumber(ss)
  if not m or not valid(y, m, d, hh, mm, ss) then return nil end
  return M.days_from_civil(y, m, d) * 86400 + hh * 3600 + mm * 60 + ss
end

return M
