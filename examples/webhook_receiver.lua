--- An integration app for `oflua serve`: OFAuth webhooks, the Link flow, a
-- status page, Access API calls with stored connection ids, and /metrics.
--
--   OFAUTH_API_KEY=... OFAUTH_WEBHOOK_SECRET=whsec_... OFLUA_STORE=app.db \
--   OFLUA_STORE_KEY_FILE=store.key oflua serve examples/webhook_receiver.lua --port 8080
--
-- Routes:
--   POST /webhooks/ofauth          signed OFAuth webhooks (both schemes)
--   GET  /link/start?user=ID       start Link for a user (302 to OFAuth's page;
--                                  &reconnect=1 reuses the stored connection id)
--   GET  /link/callback            where OFAuth sends the browser back
--   GET  /users/ID                 the stored connection (status, no secrets)
--   GET  /users/ID/profile         Access API: the creator profile
--   GET  /users/ID/subscribers     Access API: count every subscriber (all pages)
--   GET  /status                   JSON summary; GET / a small HTML status page
--   GET  /metrics                  Prometheus metrics (all workers)
--
-- Every worker VM runs this file; each opens its own store connection.
-- on_reauth_required below notifies through `notify`, which POSTs to
-- NOTIFY_WEBHOOK_URL (e.g. a chat webhook) when set, and starts a re-auth Link.
local cjson = require("cjson")
local ofauth = require("ofauth")
local config = require("ofauth.config")
local log = require("ofauth.log")
local server = require("oflua.server")

local args = ... or {}

local st = assert(config.store({}))
ofauth.metrics.init({ shared = "ofauth_metrics" })
local counters = server.shared("app_counters")

--- Pluggable notification: replace this function to page, e-mail or chat.
local function notify(text, fields)
  counters:incr("reauth_notifications", 1, 0)
  log.warn("app.notify", { text = text, user_id = fields and fields.user_id })
  local url = os.getenv("NOTIFY_WEBHOOK_URL")
  if url and url ~= "" then
    local resp, err = require("oflua.http").request({ method = "POST", url = url,
      headers = { ["content-type"] = "application/json" },
      body = cjson.encode({ text = text }), timeout_ms = 5000 })
    if not resp or resp.status >= 300 then
      log.error("app.notify_failed", { error = err and err.kind or resp.status })
    end
  end
end

-- Where OFAuth sends the browser back: APP_PUBLIC_URL when set (behind a
-- proxy or TLS terminator), else this server as the last request reached it.
local public_url = os.getenv("APP_PUBLIC_URL")
local last_host = "127.0.0.1"
local function callback_url(req)
  if req and req.headers.host then last_host = req.headers.host end
  return (public_url or ("http://" .. last_host)) .. "/link/callback"
end

local conns
local client

-- Called once per expiry, whether an API call met SESSION_EXPIRED or a
-- connection.expired webhook arrived: tell the user and start a re-auth Link.
local function on_reauth_required(rec, ctx)
  local link_url
  if rec.user_id and client then
    local res = ofauth.link.reconnect(client, rec.user_id, { connections = conns,
      redirect_url = callback_url(nil) })
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

local function json(status, tbl)
  return status, cjson.encode(tbl), { ["content-type"] = "application/json" }
end

local function user_view(rec)
  return { user_id = rec.user_id, status = rec.status, permissions = rec.permissions,
    username = type(rec.user_data) == "table" and rec.user_data.username or nil,
    updated_at = rec.updated_at, connected = rec.connection_id ~= nil }
end

local router = require("oflua.router").new()

if webhooks then router:post("/webhooks/ofauth", webhooks:handler()) end
router:get("/metrics", ofauth.metrics.handler())

router:get("/link/start", function(req)
  local user = req.query.user
  if not client then return json(503, { error = "OFAUTH_API_KEY is not configured" }) end
  if type(user) ~= "string" or user == "" then return json(400, { error = "?user= is required" }) end
  local res, err
  if req.query.reconnect then -- reconnect the stored (expired) connection
    res, err = ofauth.link.reconnect(client, user, { connections = conns, redirect_url = callback_url(req) })
  else
    res, err = ofauth.link.start(client, user, { store = st, redirect_url = callback_url(req) })
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

router:get("/users/:id", function(req)
  local rec = conns:get(req.params.id)
  if not rec then return json(404, { error = "unknown user" }) end
  return json(200, user_view(rec))
end)

router:get("/users/:id/profile", function(req)
  return with_access(req, function(acc)
    local me, err = acc:self()
    if not me then return json(err.kind == "reauth_required" and 409 or 502, { error = err.kind,
      code = err.code, attempts = err.attempts }) end
    return json(200, { username = me.username, name = me.name })
  end)
end)

router:get("/users/:id/subscribers", function(req)
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
end)

local function summary()
  local users = {}
  for rec in conns:each() do users[#users + 1] = user_view(rec) end
  table.sort(users, function(a, b) return a.user_id < b.user_id end)
  local inbox = st.inbox_stats and st:inbox_stats() or nil
  return { users = users, inbox = inbox,
    reauth_notifications = counters:get("reauth_notifications") or 0 }
end

router:get("/status", function() return json(200, summary()) end)

router:get("/", function()
  local s = summary()
  local rows = {}
  local function esc(v) return (tostring(v or ""):gsub("[<>&\"]", { ["<"] = "&lt;", [">"] = "&gt;",
    ["&"] = "&amp;", ['"'] = "&quot;" })) end
  for _, u in ipairs(s.users) do
    rows[#rows + 1] = ("<tr><td>%s</td><td>%s</td><td>%s</td></tr>"):format(esc(u.user_id), esc(u.status),
      esc(u.username))
  end
  local html = ([[<!doctype html><meta charset="utf-8"><title>oflua example app</title>
<h1>Connected accounts</h1><table border="1" cellpadding="4"><tr><th>user</th><th>status</th><th>username</th></tr>
%s</table><p>Re-auth notifications sent: %d. <a href="/metrics">metrics</a></p>]]):format(
    table.concat(rows, "\n"), s.reauth_notifications)
  return 200, html, { ["content-type"] = "text/html; charset=utf-8" }
end)

return {
  handler = function(req)
    callback_url(req) -- remember the Host this server is reached at
    return router:handle(req)
  end,
  webhooks = webhooks, -- for `oflua webhook replay --app examples/webhook_receiver.lua`
  -- Retry failed webhook events in the background (oflua.server runs tick in its own VM).
  tick = webhooks and function() webhooks:drain(10) end or nil,
  tick_interval = 1,
  args = args,
}
