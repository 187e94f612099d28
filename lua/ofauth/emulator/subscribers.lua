--- Deterministic subscribers, generated from their index (nothing is stored).
--
-- A connection has `n` subscribers numbered 1..n. Subscriber i subscribed
-- `i` hours after a fixed epoch (so a larger index is more recent) and is
-- expired when i is a multiple of 4 (a quarter of them), active otherwise.
-- Every filter maps "the k-th item of the filtered list" straight to an
-- index, so a page costs O(limit) whatever n is:
--   all      i = k + 1                      (oldest first)
--   latest   i = n - k                      (newest first)
--   active   i = floor(k / 3) * 4 + k % 3 + 1
--   expired  i = (k + 1) * 4
local json = require("ofauth.emulator.json")

local M = {}

M.TYPES = { all = true, active = true, expired = true, latest = true }
M.EPOCH = 1704067200 -- 2024-01-01T00:00:00Z
local HOUR = 3600
local PERIOD = 30 * 86400

local function iso(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", t) end

function M.count(n, kind)
  if kind == "active" then return n - n // 4 end
  if kind == "expired" then return n // 4 end
  return n
end

function M.index(n, kind, k)
  if kind == "latest" then return n - k end
  if kind == "active" then return (k // 3) * 4 + k % 3 + 1 end
  if kind == "expired" then return (k + 1) * 4 end
  return k + 1
end

--- The subscriber with index i (1-based) of the connection whose creator
-- has numeric id `creator` (only used to vary the ids between connections).
function M.subscriber(i, creator)
  local expired = i % 4 == 0
  local subscribed = M.EPOCH + i * HOUR
  local renewals = expired and 1 or 3
  return {
    id = (creator or 0) * 10000000 + i,
    username = ("fan_%d"):format(i),
    name = ("Fan %d"):format(i),
    avatar = ("https://example.invalid/avatars/fan_%d.jpg"):format(i),
    subscribedAt = iso(subscribed),
    expiresAt = iso(subscribed + renewals * PERIOD),
    status = expired and "expired" or "active",
    isActive = not expired,
    price = (i % 3) * 5,
    renewals = renewals,
    -- the rest of the SDKs' subscriber shape
    displayName = ("Fan %d"):format(i),
    isVerified = false,
    avatarThumbs = { c50 = ("https://example.invalid/avatars/fan_%d_50.jpg"):format(i) },
    lastSeen = iso(subscribed + renewals * PERIOD - HOUR),
    subscription = { subscribedAt = iso(subscribed), expiredAt = iso(subscribed + renewals * PERIOD),
      price = (i % 3) * 5, history = json.array({}) },
    spending = { total = (i % 3) * 5 * renewals, tips = 0, subscriptions = (i % 3) * 5 * renewals,
      messages = 0, posts = 0, streams = 0 },
    isRestricted = false,
    isBlocked = false,
    capabilities = { canMessage = not expired },
    lists = json.array({}),
  }
end

--- One page: list, hasMore, nextOffset (nil when there is no more).
function M.page(n, kind, offset, limit, creator)
  local total = M.count(n, kind)
  local list = {}
  local k = offset
  while k < total and #list < limit do
    list[#list + 1] = M.subscriber(M.index(n, kind, k), creator)
    k = k + 1
  end
  local more = k < total
  return list, more, more and k or nil, total
end

return M
