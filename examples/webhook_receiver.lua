--- An integration app for `oflua serve`: OFAuth webhooks, the Link flow, a
-- status page, Access API calls with stored connection ids, and /metrics.
-- Safe to deploy as is: data and admin routes need a bearer token, a Link is
-- started only for an authenticated user, redirects go to the configured
-- public URL (never one built from the request's Host header).
--
--   OFAUTH_API_KEY=... OFAUTH_WEBHOOK_SECRET=whsec_... OFLUA_STORE=app.db \
--   OFLUA_STORE_KEY_FILE=store.key OFLUA_ADMIN_TOKEN=$(openssl rand -hex 32) \
--   OFLUA_PUBLIC_URL=https://app.example.com oflua serve examples/webhook_receiver.lua --port 8080
--
-- Configuration (environment; `oflua doctor` warns when the first two are unset):
--   OFLUA_ADMIN_TOKEN   bearer token for the admin and data routes below
--                       (`Authorization: Bearer <token>`, compared in constant
--                       time). Unset: those routes are off (404).
--   OFLUA_PUBLIC_URL    this app's public base URL (https://app.example.com):
--                       OFAuth sends the browser back to <it>/link/callback.
--                       Unset: /link/start answers 503 and re-auth notices
--                       carry no link. (APP_PUBLIC_URL: its old name.)
--   OFLUA_AUTH_MODULE   a Lua module returning authenticate(req) (see below)
--   NOTIFY_WEBHOOK_URL  where `notify` POSTs re-auth notices (e.g. a chat webhook)
--
-- Routes:
--   POST /webhooks/ofauth          signed OFAuth webhooks (both schemes; public:
--                                  the signature is the authentication)
--   GET  /link/start               start Link for the authenticated user (302 to
--                                  OFAuth's page; &reconnect=1 reuses the stored
--                                  connection id; &format=json for the URL)
--   GET  /link/callback            where OFAuth sends the browser back (public;
--                                  checked against the session cookie)
--   GET  /metrics                  Prometheus metrics (all workers; public, no
--                                  user data: protect it at the proxy if needed)
--   admin token required:
--   GET  /users/ID                 the stored connection (status, no secrets)
--   GET  /users/ID/profile         Access API: the creator profile
--   GET  /users/ID/subscribers     Access API: count every subscriber (all pages)
--   GET  /status                   JSON summary (counters, inbox, first users);
--   GET  /                         a small HTML status page
--
-- Webhook handlers run in the background (the server's tick), after the
-- delivery is acknowledged. Every worker VM runs this file; each opens its
-- own store connection.
local cjson = require("cjson")
local ofauth = require("ofauth")
local config = require("ofauth.config")
local crypto = require("oflua.crypto")
local log = require("ofauth.log")
local server = require("oflua.server")

local args = ... or {}

local st = assert(config.store({}))
ofauth.metrics.init({ shared = "ofauth_metrics" })
local counters = server.shared("app_counters")

local function env(name)
  local v = os.getenv(name)
  return v ~= "" and v or nil
end

local function json(status, tbl, headers)
  local h = headers or {}
  h["content-type"] = "application/json"
  return status, cjson.encode(tbl), h
end

-- ---- Access control -----------------------------------------------------------

local ADMIN_TOKEN = env("OFLUA_ADMIN_TOKEN")
if ADMIN_TOKEN then require("ofauth.redact").register_secret(ADMIN_TOKEN) end

-- true when the request carries the admin token (constant-time comparison of
-- digests, so neither the token's bytes nor its length leak through timing)
local function has_admin_token(req)
  if not ADMIN_TOKEN then return false end
  local given = (req.headers.authorization or ""):match("^[Bb]earer +(%S+) *$")
  if not given then return false end
  return crypto.equal(crypto.sha256(given), crypto.sha256(ADMIN_TOKEN))
end

-- Wraps a handler of an admin or data route: off (404) without a configured
-- token, 401 without the right one.
local function admin(fn)
  return function(req)
    if not ADMIN_TOKEN then return json(404, { error = "not_found" }) end
    if not has_admin_token(req) then
      return json(401, { error = "unauthorized" }, { ["www-authenticate"] = 'Bearer realm="oflua"' })
    end
    return fn(req)
  end
end

--- Pluggable authentication: authenticate(req) -> the user id to start a
-- Link for, or nil (answered 401). Replace it with your own session check
-- (a cookie your login sets, a signed token from your frontend, ...), here or
-- through OFLUA_AUTH_MODULE (a module returning such a function).
-- The default trusts no browser: only a caller holding the admin token may
-- start a Link, for the user named by ?user= (an operator or a backend
-- acting for that user); everyone else is refused.
local function authenticate(req)
  if has_admin_token(req) then
    local user = req.query.user
    if type(user) == "string" and user ~= "" and #user <= 200 then return user end
  end
  return nil
end
if env("OFLUA_AUTH_MODULE") then
  authenticate = require(env("OFLUA_AUTH_MODULE"))
  assert(type(authenticate) == "function", "OFLUA_AUTH_MODULE must return a function authenticate(req)")
end

-- Where OFAuth sends the browser back: from configuration only. A URL built
-- from the request's Host header would let any client choose where the next
-- user is sent.
local PUBLIC_URL = env("OFLUA_PUBLIC_URL") or env("APP_PUBLIC_URL")
if PUBLIC_URL then
  PUBLIC_URL = PUBLIC_URL:gsub("/+$", "")
  assert(PUBLIC_URL:match("^https?://[^/?#%s]+[^?#%s]*$"),
    "OFLUA_PUBLIC_URL must be an http(s) URL without query or fragment, e.g. https://app.example.com")
end
local function callback_url() return PUBLIC_URL and (PUBLIC_URL .. "/link/callback") or nil end

-- ---- Notifications ------------------------------------------------------------

--- Pluggable notification: replace this function to page, e-mail or chat.
local function notify(text, fields)
  counters:incr("reauth_notifications", 1, 0)
  log.warn("app.notify", { text = text, user_id = fields and fields.user_id })
  local url = env("NOTIFY_WEBHOOK_URL")
  if url then
    local resp, err = require("oflua.http").request({ method = "POST", url = url,
      headers = { ["content-type"] = "application/json" },
      body = cjson.encode({ text = text }), timeout_ms = 5000 })
    if not resp or resp.status >= 300 then
      log.error("app.notify_failed", { error = err and err.kind or resp.status })
    end
  end
end

-- ---- OFAuth: connections, client, webhooks, re-auth ---------------------------

local conns
local client

-- Called once per expiry, whether an API call met SESSION_EXPIRED or a
-- connection.expired webhook arrived: tell the user and start a re-auth Link.
local function on_reauth_required(rec, ctx)
  local link_url
  if rec.user_id and client and callback_url() then
    local res = ofauth.link.reconnect(client, rec.user_id, { connections = conns,
      redirect_url = callback_url() })
    link_url = res and res.url
  end
  notify(("Your OnlyFans connection expired (%s). Reconnect: %s"):format(
    ctx and (ctx.source or ctx.path) or "api", link_url or "(open the app)"), rec)
end

conns = ofauth.connections.new({ store = st, on_reauth_required = on_reauth_required })
client = ofauth.client({ connections = conns, policy = { on_reauth_required = on_reauth_required } })

local webhooks
local secret = config.webhook_secret({})
if secret then
  webhooks = ofauth.webhooks.app({ secret = secret, store = st })
  conns:install(webhooks)
end

local function user_view(rec)
  return { user_id = rec.user_id, status = rec.status, permissions = rec.permissions,
    username = type(rec.user_data) == "table" and rec.user_data.username or nil,
    updated_at = rec.updated_at, connected = rec.connection_id ~= nil }
end

-- ---- Routes --------------------------------------------------------------------

local router = require("oflua.router").new()

if webhooks then router:post("/webhooks/ofauth", webhooks:handler()) end
router:get("/metrics", ofauth.metrics.handler())

router:get("/link/start", function(req)
  local user = authenticate(req)
  if type(user) ~= "string" or user == "" then
    return json(401, { error = "authentication required" })
  end
  if not client then return json(503, { error = "OFAUTH_API_KEY is not configured" }) end
  if not callback_url() then return json(503, { error = "OFLUA_PUBLIC_URL is not configured" }) end
  local res, err
  if req.query.reconnect then -- reconnect the stored (expired) connection
    res, err = ofauth.link.reconnect(client, user, { connections = conns, redirect_url = callback_url() })
  else
    res, err = ofauth.link.start(client, user, { store = st, redirect_url = callback_url() })
  end
  if not res then return json(502, { error = err.kind, message = err.message }) end
  -- The browser carries the session's state back to /link/callback: a
  -- redirect forged for another user id then fails (wrong_session).
  local cookie = ("ofauth_link=%s; Path=/link; HttpOnly; SameSite=Lax; Max-Age=3600"):format(res.state)
  if req.query.format == "json" then
    local status, body, headers = json(200, { url = res.url, expires_at = res.expires_at })
    headers["set-cookie"] = cookie
    return status, body, headers
  end
  return 302, "", { location = res.url, ["set-cookie"] = cookie }
end)

router:get("/link/callback", function(req)
  -- The session's state comes back in the redirect (oflua_state), so a
  -- re-auth Link started by on_reauth_required completes too; the cookie set
  -- by /link/start is only a fallback.
  local state = (req.headers.cookie or ""):match("ofauth_link=(%x+)")
  local cb, why = ofauth.link.callback(req.query, { store = st, state = state })
  if not cb then return json(400, { error = why }) end
  -- Only a user-experience signal: the connection.created webhook decides.
  local rec = conns:get(cb.user_id)
  return json(200, { status = cb.status, user_id = cb.user_id, step = cb.step, error_code = cb.error_code,
    connection_confirmed = rec ~= nil and rec.status == "active" })
end)

local function with_access(req, fn)
  if not client then return json(503, { error = "OFAUTH_API_KEY is not configured" }) end
  local rec = conns:get(req.params.id)
  if not rec or not rec.connection_id then return json(404, { error = "no connection for this user" }) end
  if rec.status == "expired" then return json(409, { error = "reauth_required" }) end
  return fn(client:access(rec.connection_id), rec)
end

router:get("/users/:id", admin(function(req)
  local rec = conns:get(req.params.id)
  if not rec then return json(404, { error = "unknown user" }) end
  return json(200, user_view(rec))
end))

router:get("/users/:id/profile", admin(function(req)
  return with_access(req, function(acc)
    local me, err = acc:self()
    if not me then return json(err.kind == "reauth_required" and 409 or 502, { error = err.kind,
      code = err.code, attempts = err.attempts }) end
    return json(200, { username = me.username, name = me.name })
  end)
end))

router:get("/users/:id/subscribers", admin(function(req)
  return with_access(req, function(acc)
    local n, pages = 0, 0
    local ok, err = pcall(function()
      for _ in acc:subscribers({ type = req.query.type or "all", limit = tonumber(req.query.limit) or 100,
        on_page = function() pages = pages + 1 end }) do
        n = n + 1
      end
    end)
    if not ok then
      return json(err.kind == "reauth_required" and 409 or 502, { error = err.kind, code = err.code })
    end
    return json(200, { subscribers = n, pages = pages })
  end)
end))

-- ---- Status (admin) ----------------------------------------------------------------

-- /status and / cost O(page) per request, whatever the number of users:
-- counters come from the metrics and the inbox totals (cached a few
-- seconds), the user list is the first `limit` records only.
local STATUS_PAGE, STATUS_PAGE_MAX, INBOX_CACHE_S = 20, 100, 5

local function inbox_stats()
  if not st.inbox_stats then return nil end
  local now = require("oflua.core").monotonic()
  local at = counters:get("inbox_stats_at")
  if at and now - at < INBOX_CACHE_S then
    local ok, v = pcall(cjson.decode, counters:get("inbox_stats") or "")
    if ok and type(v) == "table" then return v end
  end
  local s = st:inbox_stats()
  if s then
    counters:set("inbox_stats", cjson.encode(s))
    counters:set("inbox_stats_at", now)
  end
  return s
end

local function summary(req)
  local limit = math.tointeger(tonumber(req.query.limit)) or STATUS_PAGE
  limit = math.max(1, math.min(limit, STATUS_PAGE_MAX))
  local users, more = {}, false
  for rec in conns:each() do
    if #users == limit then
      more = true
      break
    end
    users[#users + 1] = user_view(rec)
  end
  local m = ofauth.metrics
  local function delivered(result) return m.value("ofauth_webhook_deliveries_total", { "result", result }) end
  return { users = users, users_truncated = more, inbox = inbox_stats(),
    webhooks = { accepted = delivered("accepted"), duplicate = delivered("duplicate"),
      processed = m.value("ofauth_webhook_processed_total"),
      handler_failures = m.value("ofauth_webhook_handler_failures_total"),
      dead_lettered = m.value("ofauth_webhook_dead_lettered_total") },
    reauth_notifications = counters:get("reauth_notifications") or 0 }
end

router:get("/status", admin(function(req) return json(200, summary(req)) end))

router:get("/", admin(function(req)
  local s = summary(req)
  local rows = {}
  local function esc(v) return (tostring(v or ""):gsub("[<>&\"]", { ["<"] = "&lt;", [">"] = "&gt;",
    ["&"] = "&amp;", ['"'] = "&quot;" })) end
  for _, u in ipairs(s.users) do
    rows[#rows + 1] = ("<tr><td>%s</td><td>%s</td><td>%s</td></tr>"):format(esc(u.user_id), esc(u.status),
      esc(u.username))
  end
  local html = ([[<!doctype html><meta charset="utf-8"><title>oflua example app</title>
<h1>Connected accounts</h1><table border="1" cellpadding="4"><tr><th>user</th><th>status</th><th>username</th></tr>
%s</table><p>%sRe-auth notifications sent: %d. Webhook events processed: %d, dead-lettered: %d.</p>]]):format(
    table.concat(rows, "\n"), s.users_truncated and "(first users only) " or "", s.reauth_notifications,
    s.webhooks.processed, s.webhooks.dead_lettered)
  return 200, html, { ["content-type"] = "text/html; charset=utf-8" }
end))

return {
  handler = router,
  webhooks = webhooks, -- for `oflua webhook replay --app examples/webhook_receiver.lua`
  -- Webhook handlers, retries and inbox pruning run in the background
  -- (oflua.server runs tick in its own VM and thread).
  tick = webhooks and webhooks:tick() or nil,
  tick_interval = webhooks and webhooks.tick_interval or nil,
  args = args,
}
