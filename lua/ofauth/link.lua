--- The Link flow: start a session for a user, check the redirect back.
--
--   local s = assert(link.start(client, "user-42", {redirect_url = R, store = st}))
--   -- send the browser to s.url; on its return to R:
--   local cb, why = link.callback(req.query, {store = st})          -- state from the redirect
--   local cb, why = link.callback(req.query, {store = st, user_id = me}) -- or the logged-in user
--
-- The user id is sent as clientReferenceId, so the connection.created webhook
-- (the authoritative signal) maps back to the user. Each pending session is
-- kept (encrypted) in the store with its expiry, its clientSecret (to poll
-- its status) and a random state. The state travels with the session: it is
-- added to the redirectUrl (`oflua_state`, M.params.state), so the browser
-- brings it back whoever started the session (the /link/start page or a
-- re-auth hook that mailed the link); a cookie holding it still works. A
-- user may have several pending sessions (two tabs, a re-auth mail and a
-- click on "connect"): each is found by its own state, or all of a user's
-- by `user_id`. A callback is only accepted for a pending, unexpired session
-- it can prove it belongs to (state, or the logged-in user), and it never
-- activates a connection by itself: it is a user-experience signal.
--
-- Times are unix seconds (numbers) everywhere in oflua's own records
-- (expires_at, started_at), as in every other ofauth structure.
local ojson = require("ofauth.json")
local errors = require("ofauth.errors")
local timeutil = require("ofauth.timeutil")

local M = {}

M.defaults = {
  ttl = 3600, -- seconds a pending session is honoured when the API gives no expiresAt
  max_pending = 20, -- pending sessions kept per user (oldest dropped first)
  state_in_redirect = true, -- add the state to redirectUrl (see above)
}

-- The redirect's query parameter names (unconfirmed: ofauth-api.md, Link flow
-- step 3). Change them here only. `state` is ours (added to redirectUrl).
M.params = {
  status = "status", connection_id = "connection_id",
  client_reference_id = "client_reference_id", step = "step", error_code = "error_code",
  state = "oflua_state",
}
M.statuses = { success = true, cancelled = true, error = true }

-- Link session statuses (GET /v2/link/{clientSecret}) after which polling stops.
M.final_statuses = { completed = true, denied = true, invalid_credentials = true, failed = true,
  not_found = true, cancelled = true, expired = true }

local now_of = timeutil.now_of

--- Kept for callers: ISO-8601 (or unix seconds) -> unix seconds.
M.parse_time = timeutil.parse_iso

local function crypto() return require("oflua.crypto") end

-- Store keys: each session under its state's hash, and one index record
-- per user listing that user's session hashes (stores need only get, put
-- and delete). Two sessions started for one user at the same instant in two
-- workers can race on the index: the session itself is kept, and the state
-- in its redirect still finds it; only user_id lookups would miss it.
local function sid(state) return crypto().hex(crypto().sha256(state)):sub(1, 24) end
local function session_key(state) return "link:s:" .. sid(state) end
local function user_key(user_id) return "link:u:" .. user_id end

local function load(store, key)
  local raw = store:get(key)
  if not raw then return nil end
  local v = ojson.decode(raw)
  if type(v) ~= "table" then return nil end
  return v
end

local function index_of(store, user_id)
  local idx = load(store, user_key(user_id))
  if not idx or type(idx.sids) ~= "table" then return {} end
  return idx.sids
end

local function write_index(store, user_id, sids)
  if #sids == 0 then
    store:delete(user_key(user_id))
  else
    store:put(user_key(user_id), ojson.encode({ sids = sids }))
  end
end

local function forget(store, rec)
  local id = sid(rec.state)
  store:delete("link:s:" .. id)
  local keep = {}
  for _, x in ipairs(index_of(store, rec.user_id)) do if x ~= id then keep[#keep + 1] = x end end
  write_index(store, rec.user_id, keep)
end

--- The pending sessions of a user, newest first (with `now`: each marked
-- `expired` when it is).
function M.pending(store, user_id, now)
  local out = {}
  for _, id in ipairs(index_of(store, user_id)) do
    local rec = type(id) == "string" and load(store, "link:s:" .. id)
    if rec and rec.user_id == user_id then out[#out + 1] = rec end
  end
  table.sort(out, function(a, b) return (a.started_at or 0) > (b.started_at or 0) end)
  if now then
    for _, rec in ipairs(out) do rec.expired = now > (rec.expires_at or 0) end
  end
  return out
end

--- Record a pending session {user_id, state, started_at, expires_at,
-- reconnect, client_secret} (what start does; for tests and imports).
function M.remember(store, rec)
  store:put(session_key(rec.state), ojson.encode(rec))
  local sids = {}
  for _, x in ipairs(index_of(store, rec.user_id)) do
    if type(x) == "string" and store:get("link:s:" .. x) then sids[#sids + 1] = x end -- drop stale ones
  end
  sids[#sids + 1] = sid(rec.state)
  write_index(store, rec.user_id, sids)
end

local function with_param(url, name, value)
  local base, frag = url:match("^([^#]*)(.*)$")
  local sep = base:find("?", 1, true) and (base:match("[?&]$") and "" or "&") or "?"
  return base .. sep .. name .. "=" .. value .. frag
end

--- Start Link for a user. opts: redirect_url (required), store (required),
-- connection_id (reconnect), geolocation, client_app_id, ttl, now,
-- state_in_redirect (default true).
-- Returns {url, client_secret, expires_at (unix seconds), state} or nil, err.
function M.start(client, user_id, opts)
  opts = opts or {}
  if type(user_id) ~= "string" or user_id == "" or #user_id > 256 then
    return nil, errors.invalid("link.start: user id must be a non-empty string (at most 256 bytes)")
  end
  if not opts.store then return nil, errors.invalid("link.start: store is required") end
  if type(opts.redirect_url) ~= "string" then
    return nil, errors.invalid("link.start: redirect_url (an http(s) URL) is required")
  end
  -- A random value that comes back with the browser, so a redirect forged
  -- for someone else's user id is refused.
  local state = crypto().hex(crypto().random(16))
  local redirect = opts.redirect_url
  local in_redirect = opts.state_in_redirect
  if in_redirect == nil then in_redirect = M.defaults.state_in_redirect end
  if in_redirect then redirect = with_param(redirect, M.params.state, state) end
  local res, err = client:link_init{
    redirect_url = redirect, client_reference_id = user_id,
    connection_id = opts.connection_id, geolocation = opts.geolocation,
    client_app_id = opts.client_app_id,
  }
  if not res then return nil, err end
  local now = now_of(opts)
  local expires = res.expires_at or (now + (opts.ttl or M.defaults.ttl))
  -- expired sessions of this user go; then at most max_pending: drop the oldest
  local existing = {}
  for _, rec in ipairs(M.pending(opts.store, user_id, now)) do
    if rec.expired then forget(opts.store, rec) else existing[#existing + 1] = rec end
  end
  for i = (opts.max_pending or M.defaults.max_pending), #existing do forget(opts.store, existing[i]) end
  M.remember(opts.store, {
    user_id = user_id, started_at = now, expires_at = expires, state = state,
    reconnect = opts.connection_id ~= nil, client_secret = res.client_secret,
  })
  return { url = res.url, client_secret = res.client_secret, expires_at = expires, state = state }
end

local function decode_component(s)
  return (s:gsub("+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- Parse the redirect's query (a decoded table or the raw query string) into
-- {status, connection_id, client_reference_id, step, error_code}; pure.
-- Returns nil, "invalid_callback" when status is missing or unknown.
function M.parse_callback(query)
  local q = query
  if type(query) == "string" then
    q = {}
    for pair in query:gmatch("[^&]+") do
      local k, v = pair:match("^([^=]*)=?(.*)$")
      q[decode_component(k)] = decode_component(v)
    end
  end
  if type(q) ~= "table" then return nil, "invalid_callback" end
  local function field(name)
    local v = q[M.params[name]]
    if type(v) ~= "string" or v == "" or #v > 512 then return nil end
    return v
  end
  local status = field("status")
  if not status or not M.statuses[status] then return nil, "invalid_callback" end
  return {
    status = status,
    connection_id = field("connection_id"),
    client_reference_id = field("client_reference_id"),
    step = field("step"),
    error_code = field("error_code"),
    state = field("state"),
  }
end

--- Check a redirect against the pending sessions. opts: store (required);
-- and what binds the redirect to a session: the state (from the redirect's
-- oflua_state, else opts.state, e.g. a cookie), or user_id (your logged-in
-- user: the newest live pending session of that user); now, keep (true:
-- leave the pending session in place).
-- Returns the parsed callback plus user_id, reconnect, or nil, reason:
--   invalid_callback, unknown_session (forged or never started),
--   wrong_session (not this browser's / user's session, or nothing binds it),
--   expired_session.
-- A refused redirect leaves the pending sessions as they were. A success
-- callback does not activate anything: wait for connection.created.
function M.callback(query, opts)
  opts = opts or {}
  if not opts.store then error("link.callback: store is required", 2) end
  local cb, why = M.parse_callback(query)
  if not cb then return nil, why end
  local state = cb.state or opts.state
  if state == "" then state = nil end
  if state ~= nil and type(state) ~= "string" then return nil, "wrong_session" end
  local user = opts.user_id
  if user ~= nil and cb.client_reference_id and cb.client_reference_id ~= user then
    -- someone else's session (wrong) or none at all (unknown)
    return nil, #M.pending(opts.store, cb.client_reference_id) > 0 and "wrong_session" or "unknown_session"
  end
  local now = now_of(opts)
  local rec
  if state then
    rec = load(opts.store, session_key(state))
    if not rec then return nil, "unknown_session" end
    if type(rec.state) ~= "string" or not crypto().equal(state, rec.state) then return nil, "wrong_session" end
    if user ~= nil and rec.user_id ~= user then return nil, "wrong_session" end
  elseif user ~= nil then
    local list = M.pending(opts.store, user, now)
    if #list == 0 then return nil, "unknown_session" end
    for _, r in ipairs(list) do
      if not r.expired then rec = r break end
    end
    if not rec then
      for _, r in ipairs(list) do forget(opts.store, r) end
      return nil, "expired_session"
    end
  else
    return nil, cb.client_reference_id and "wrong_session" or "unknown_session"
  end
  if cb.client_reference_id and cb.client_reference_id ~= rec.user_id then return nil, "wrong_session" end
  if now > (rec.expires_at or 0) then
    forget(opts.store, rec)
    return nil, "expired_session"
  end
  if not opts.keep then forget(opts.store, rec) end
  cb.state = nil
  cb.user_id = rec.user_id
  cb.reconnect = rec.reconnect
  return cb
end

--- Status of a Link session (GET /v2/link/{clientSecret}): {status, data?}
-- as the API sends it, or nil, err.
function M.status(client, client_secret)
  return client:link_status(client_secret)
end

--- Poll a Link session until its status is final, awaiting_2fa, or
-- `timeout` seconds passed. opts: interval (2 s), timeout (300 s), sleep,
-- now, on_status(answer). Returns the last answer, or nil, err.
function M.wait(client, client_secret, opts)
  opts = opts or {}
  local sleep = opts.sleep or require("oflua.core").sleep
  local clock = opts.now or require("oflua.core").monotonic
  local deadline = clock() + (opts.timeout or 300)
  while true do
    local res, err = client:link_status(client_secret)
    if not res then return nil, err end
    if opts.on_status then opts.on_status(res) end
    if M.final_statuses[res.status] or res.status == "awaiting_2fa" then return res end
    if clock() + (opts.interval or 2) > deadline then return res end
    sleep(opts.interval or 2)
  end
end

--- Start Link again for a user whose connection expired, with its stored
-- connection id (so OFAuth reconnects the same account).
-- opts: as start(), plus connections (an ofauth.connections repository).
function M.reconnect(client, user_id, opts)
  opts = opts or {}
  if not opts.connections then return nil, errors.invalid("link.reconnect: connections is required") end
  local rec = opts.connections:get(user_id)
  if not rec or not rec.connection_id then
    return nil, errors.invalid("link.reconnect: no stored connection for this user")
  end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.connection_id = rec.connection_id
  o.store = o.store or opts.connections.store
  return M.start(client, user_id, o)
end

return M
