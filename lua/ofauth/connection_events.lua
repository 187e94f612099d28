--- The default handlers for the connection.* webhook events, on top of the
-- connections repository (ofauth.connections):
--   connection.created   saves the connection for the clientReferenceId user
--   connection.updated   updates it (ignored for a connection the user no longer has)
--   connection.expired   marks it expired and tells the user once per expiry
--
--   local events = require("ofauth.connection_events")
--   events.install(conns, app)   -- same as conns:install(app)
local cjson = require("cjson")
local log = require("ofauth.log")
local metrics = require("ofauth.metrics")
local connections = require("ofauth.connections")

local M = {}

-- From a webhook's data: {clientReferenceId, connection = {id, status,
-- permissions, userData, platformUserId}}.
local function fields_from(data)
  local c = type(data) == "table" and data.connection or nil
  if type(c) ~= "table" or type(c.id) ~= "string" then return nil end
  local f = { connection_id = c.id }
  if type(c.status) == "string" and connections.statuses[c.status] then f.status = c.status end
  if type(c.permissions) == "table" then f.permissions = c.permissions end
  if type(c.userData) == "table" then f.user_data = c.userData end
  if c.platformUserId ~= nil and c.platformUserId ~= cjson.null then f.platform_user_id = c.platformUserId end
  return f
end

local function user_for(self, data, f)
  local ref = data.clientReferenceId
  if type(ref) == "string" and ref ~= "" then return ref end
  return self.store:get("conn:" .. f.connection_id) -- clientReferenceId may be null
end

-- What each connection event forces on the fields it carries.
local event_rules = {
  ["connection.created"] = function(f) f.status = f.status or "active" end,
  ["connection.updated"] = function() end,
  ["connection.expired"] = function(f) f.status = "expired" end,
}

--- Default handlers for `self` (a repository): connection.created saves, connection.updated updates,
-- connection.expired marks expired; an expired record calls
-- on_reauth_required once per expiry (an API call may have reported it
-- first; a hook that failed is called again when the event is retried).
function M.handlers(self)
  local h = {}
  for typ, rule in pairs(event_rules) do
    h[typ] = function(event)
      local f = fields_from(event.data)
      if not f then error(typ .. " without data.connection.id", 0) end
      local user = user_for(self, event.data, f)
      if not user then
        log.warn("connection.unmatched", { connection_id = f.connection_id, type = typ })
        return
      end
      local before = self:get(user)
      -- Deliveries can arrive late or out of order: an updated/expired event
      -- about a connection this user no longer has must not touch the one they
      -- have now (created replaces it: the user connected again).
      if typ ~= "connection.created" and before and before.connection_id
        and before.connection_id ~= f.connection_id then
        log.info("connection.stale_event", { user_id = user, type = typ })
        return
      end
      local was_expired = before ~= nil and before.status == "expired"
      rule(f)
      if f.status == "expired" and not was_expired then f.expired_at = self.now() end
      local rec = assert(self:save(user, f))
      log.info("connection.saved", { user_id = user, status = rec.status, type = typ })
      if rec.status == "expired" then
        if not was_expired then metrics.session_expired() end
        self:notify_reauth(rec, { source = "webhook", event = typ })
      end
    end
  end
  return h
end

--- Register the default handlers on a webhooks app.
function M.install(repo, app)
  for typ, fn in pairs(M.handlers(repo)) do app:on(typ, fn) end
  return app
end

return M
