--- Schema-shaped answers for every catalogue endpoint (ofauth.catalogue).
--
-- The emulator serves the endpoints it models in depth (whoami, Link,
-- connections, self, subscribers, uploads, proxy) with their own handlers;
-- every other catalogue entry is answered here, from the entry itself:
-- each documented top-level field (`returns`) and item field (`item`) gets a
-- plausible value chosen from its name, and list endpoints page through a
-- virtual collection of `items` items in the entry's own pagination style.
-- Everything is a pure function of (entry name, connection number, seed,
-- request parameters): the same request always gets the same answer.
-- Ids are above 2^53 on purpose, so every client meets integers that a
-- double cannot hold.
local json = require("ofauth.json")

local M = {}

M.ITEMS = 25 -- items in each virtual list
M.EPOCH = 1767225600 -- 2026-01-01T00:00:00Z: the newest item's time
M.ID_BASE = (1 << 53) + 1 -- ids start here (2^53 + 1)
M.DEFAULT_LIMIT = 10
M.MAX_LIMIT = 100

local function iso(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", t) end

-- A stable small number for a string (FNV-1a, 24 bits).
local function hash(s)
  local h = 2166136261
  for i = 1, #s do h = ((h ~ s:byte(i)) * 16777619) & 0xffffffff end
  return h & 0xffffff
end
M.hash = hash

local ARRAYS = { media = true, previews = true, permissions = true, lists = true, users = true,
  releaseForms = true, items = true, rows = true, chart = true, viewers = true, medias = true,
  replacePairs = true, avatarThumbs = true, list = true, checksum_indexes = true, sortList = false }
local OBJECTS = { userData = true, user = true, author = true, fromUser = true, withUser = true,
  amounts = true, counters = true, subscription = true, spending = true, capabilities = true,
  settings = true, vaultPlus = true, rules = true, signed = true, topCountries = true, payment = true,
  userState = true, queue = true, data = true, lastMessage = true, all = true, bookmarks = true,
  subscriptions = true, subscribers = true, group_messages = true, group_messages_purchases = true,
  direct_messages = true, direct_messages_purchases = true, files = true, videoSources = true }
local NUMBERS = { total = true, price = true, discount = true, duration = true, period = true,
  revision = true, early_access_revision = true, public_revision = true, freedBytes = true,
  purgedCount = true, partNumber = true, tipSum = true, purchasedCount = true, purchasedSumm = true,
  subscribersCount = true, postsCount = true, mediaCount = true, totalMedia = true,
  storedCount = true, pendingCount = true, totalSizeBytes = true, totalConnections = true,
  connectionsWithVaultPlus = true, totalStorageBytes = true, totalMediaCount = true,
  estimatedItems = true, subscribeDays = true, subscribeCounts = true, claimCounts = true,
  clicksCounts = true, claimsCount = true, payoutPendingDays = true, checksum_constant = true,
  viewedCount = true, sentCount = true, viewersCount = true, likesCount = true, tipsAmount = true,
  favoritesCount = true, unreadMessagesCount = true, countSubscribers = true,
  countTransitions = true, listId = true, userId = true, finishDays = true, rank = true,
  viewsCount = true, usersCount = true }

--- A value for field `name` of item number `i` (1 = newest).
function M.value(name, i, t)
  if name == "id" then return M.ID_BASE + i end
  if NUMBERS[name] then return (i * 7) % 50 + 1 end
  if ARRAYS[name] then return json.array({}) end
  if OBJECTS[name] then return { id = M.ID_BASE + 1000 + i } end
  if name:match("^is%u") or name:match("^has%u") or name:match("^can%u") or name:match("^is_")
    or name == "success" or name == "exists" or name == "queued" or name == "imported"
    or name == "access_granted" or name == "convertedToVideo" then
    return name ~= "isCanceled" and name ~= "hasError"
  end
  if name:match("At$") or name:match("Date$") or name == "date" or name == "lastSeen" then
    return iso(t)
  end
  if name == "postedAtPrecise" then return ("%d.000000"):format(t) end
  if name == "delta" then return 0 end
  if name == "status" then return "done" end
  if name == "type" then return "photo" end
  if name == "currency" then return "USD" end
  if name:match("[Uu]rl$") or name == "avatar" then return ("https://example.invalid/%s/%d"):format(name, i) end
  if name:match("Id$") then return ("%s_%d"):format(name:sub(1, -3), i) end
  if name:match("Count$") or name:match("Counts$") or name:match("Bytes$") then return i end
  return ("%s %d"):format(name, i)
end

local function object(fields, i, t, extra)
  local o = {}
  for _, f in ipairs(fields or {}) do o[f] = M.value(f, i, t) end
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

-- item number i (1-based, newest first) of entry e's virtual list
local function item(e, i, seed)
  local t = M.EPOCH - i * 3600
  local fields = e.item or { "id" }
  local o = object(fields, i, t)
  o.id = M.ID_BASE + seed * 1000 + i
  if e.page == "time" then
    o.postedAt = iso(t)
    o.postedAtPrecise = ("%d.000000"):format(t)
  end
  return o
end

local function int(v, default)
  if v == nil or v == "" then return default end
  local n = math.tointeger(tonumber(v))
  return n
end

--- The answer to catalogue entry `e`: a Lua value (encode with
-- ofauth.json), or nil, message for bad paging parameters.
-- `query` holds the request's query strings, `conn_n` the connection
-- number, `data_seed` the emulator's seed (config data_seed).
function M.answer(e, query, conn_n, body, data_seed)
  local seed = (hash(e.name) + (conn_n or 0) * 31 + (data_seed or 0) * 101) % 997
  if not e.page then
    if e.untyped then return { success = true } end -- the SDKs type these as open objects
    if not e.returns or #e.returns == 0 then
      -- charts keyed by metric
      return { total = { chart = json.array({ { date = iso(M.EPOCH), count = 1 } }), total = 1, delta = 0 } }
    end
    local o = object(e.returns, 1, M.EPOCH)
    for _, f in ipairs({ "list", "items", "users" }) do
      if o[f] ~= nil and e.item then
        o[f] = { item(e, 1, seed), item(e, 2, seed) }
      end
    end
    -- a body field of the same name is echoed (name, text, ...)
    for k, v in pairs(type(body) == "table" and body or {}) do
      if o[k] ~= nil and type(v) ~= "table" and k ~= "id" then o[k] = v end
    end
    return o
  end
  local limit = int(query.limit, M.DEFAULT_LIMIT)
  if not limit or limit < 1 then return nil, "limit must be a positive integer" end
  limit = math.min(limit, M.MAX_LIMIT)
  local n = M.ITEMS
  local first -- index of the first item of this page
  if e.page == "marker" then
    first = int(query.marker, 1)
    if not first or first < 1 then return nil, "marker must be a previous nextMarker" end
  elseif e.page == "time" then
    local before = tonumber(query.beforePublishTime)
    if query.beforePublishTime and not before then return nil, "beforePublishTime must be a time" end
    first = before and math.max(1, math.floor((M.EPOCH - before) / 3600) + 1) or 1
    if before and M.EPOCH - first * 3600 >= before then first = first + 1 end
  elseif e.page == "id_cursor" and query.last_id then
    local last = int(query.last_id)
    if not last then return nil, "last_id must be an id" end
    first = last - (M.ID_BASE + seed * 1000) + 1
  elseif e.page == "cursor" then
    first = 1
    if query.cursor then
      first = int(tostring(query.cursor):match("^c(%d+)$"))
      if not first then return nil, "cursor must be a previous nextCursor" end
    end
  else
    local off = int(query.offset, 0)
    if not off or off < 0 then return nil, "offset must be a non-negative integer" end
    first = off + 1
  end
  local list = {}
  local i = math.max(first, 1)
  while i <= n and #list < limit do
    list[#list + 1] = item(e, i, seed)
    i = i + 1
  end
  local more = i <= n
  if e.page == "array" then return json.array(list) end
  local page = object(e.returns, 1, M.EPOCH)
  page[e.items or "list"] = json.array(list)
  page.hasMore = more
  if e.page == "marker" then page.nextMarker = more and i or json.null end
  if e.page == "next_offset" then page.nextOffset = more and (i - 1) or nil end
  if e.page == "time" then
    page.headMarker = list[1] and list[1].postedAtPrecise or json.null
    page.tailMarker = list[#list] and list[#list].postedAtPrecise or json.null
    page.counters = { postsCount = n }
  end
  if e.page == "cursor" then
    page.hasMore = nil
    page.nextCursor = more and ("c" .. i) or nil
  end
  return page
end

return M
