--- The Link flow: start a session for a user, check the redirect back.
--
--   local s = assert(link.start(client, "user-42", {redirect_url = R, store = st}))
--   -- set a cookie holding s.state, send the browser to s.url; on its return:
--   local cb, why = link.callback(req.query, {store = st, state = cookie_value})
--
-- The user id is sent as clientReferenceId, so the connection.created webhook
-- (the authoritative signal) maps back to the user. The pending session is
-- kept (encrypted) in the store under link:<user id> with an expiry and a
-- random state; a callback is only accepted for a pending, unexpired session
-- of the same browser (state) or logged-in user (user_id), and it never
-- activates a connection by itself: it is a user-experience signal.
local cjson = require("cjson")
local errors = require("ofauth.errors")

local M = {}

M.defaults = { ttl = 3600 } -- seconds a pending session is honoured when the API gives no expiresAt

-- The redirect's query parameter names (unconfirmed: ofauth-api.md, Link flow
-- step 3). Change them here only.
M.params = {
  status = "status", connection_id = "connection_id",
  client_reference_id = "client_reference_id", step = "step", error_code = "error_code",
}
M.statuses = { success = true, cancelled = true, error = true }

local function now_of(opts) return (opts and opts.now) or require("oflua.core").now() end

-- "2026-11-25T12:00:00Z" or "...000Z" or "+00:00" -> unix seconds (UTC), or nil
function M.parse_time(s)
  if type(s) == "number" then return s > 1e11 and s / 1000 or s end
  if type(s) ~= "string" then return nil end
  local y, mo, d, h, mi, sec = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[T ](%d%d):(%d%d):(%d%d)")
  if not y then return nil end
  y, mo = tonumber(y), tonumber(mo)
  local yy = mo <= 2 and y - 1 or y
  local era = (yy >= 0 and yy or yy - 399) // 400
  local yoe = yy - era * 400
  local doy = (153 * (mo + (mo > 2 and -3 or 9)) + 2) // 5 + tonumber(d) - 1
  local days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
  local t = days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(sec)
  local sign, oh, om = s:match("([%+%-])(%d%d):?(%d%d)$")
  if sign then
    local off = tonumber(oh) * 3600 + tonumber(om) * 60
    t = sign == "+" and t - off or t + off
  end
  return t
end

--- Start Link for a user. opts: redirect_url (required), store (required),
-- connection_id (reconnect), geolocation, client_app_id, ttl, now.
-- Returns {url, client_secret, expires_at} or nil, err.
function M.start(client, user_id, opts)
  opts = opts or {}
  if type(user_id) ~= "string" or user_id == "" or #user_id > 256 then
    return nil, errors.invalid("link.start: user id must be a non-empty string (at most 256 bytes)")
  end
  if not opts.store then return nil, errors.invalid("link.start: store is required") end
  local res, err = client:link_init{
    redirect_url = opts.redirect_url, client_reference_id = user_id,
    connection_id = opts.connection_id, geolocation = opts.geolocation,
    client_app_id = opts.client_app_id,
  }
  if not res then return nil, err end
  local now = now_of(opts)
  local expires = M.parse_time(res.expires_at) or (now + (opts.ttl or M.defaults.ttl))
  -- A random value the browser that started the session carries back (in a
  -- cookie), so a redirect forged for someone else's user id is refused.
  local crypto = require("oflua.crypto")
  local state = crypto.hex(crypto.random(16))
  opts.store:put("link:" .. user_id, cjson.encode({
    user_id = user_id, started_at = now, expires_at = expires, state = state,
    reconnect = opts.connection_id ~= nil,
  }))
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
  }
end

--- Check a redirect against the pending sessions. opts: store (required);
-- and what binds the redirect to the browser or user that started the
-- session, at least one of: state (the value start() returned, kept in the
-- browser's cookie) or user_id (your logged-in user); now, keep (true: leave
-- the pending session in place).
-- Returns the parsed callback plus user_id, or nil, reason:
--   invalid_callback, unknown_session (forged or never started),
--   wrong_session (not this browser's / user's session), expired_session.
-- A refused redirect leaves the pending session as it was. A success callback
-- does not activate anything: wait for connection.created.
function M.callback(query, opts)
  opts = opts or {}
  if not opts.store then error("link.callback: store is required", 2) end
  if opts.state == nil and opts.user_id == nil then
    error("link.callback: pass state (from the browser's cookie) or user_id (the logged-in user), "
      .. "so that a forged redirect cannot complete another user's session", 2)
  end
  local cb, why = M.parse_callback(query)
  if not cb then return nil, why end
  if not cb.client_reference_id then return nil, "unknown_session" end
  local raw = opts.store:get("link:" .. cb.client_reference_id)
  local ok, pending = pcall(cjson.decode, raw or "")
  if not raw or not ok or type(pending) ~= "table" then return nil, "unknown_session" end
  local crypto = require("oflua.crypto")
  if opts.user_id ~= nil and opts.user_id ~= pending.user_id then return nil, "wrong_session" end
  if opts.state ~= nil and (type(opts.state) ~= "string" or type(pending.state) ~= "string"
      or not crypto.equal(opts.state, pending.state)) then
    return nil, "wrong_session"
  end
  if now_of(opts) > (pending.expires_at or 0) then
    opts.store:delete("link:" .. cb.client_reference_id)
    return nil, "expired_session"
  end
  if not opts.keep then opts.store:delete("link:" .. cb.client_reference_id) end
  cb.user_id = pending.user_id
  cb.reconnect = pending.reconnect
  return cb
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
