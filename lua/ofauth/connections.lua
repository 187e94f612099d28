--- The encrypted mapping between your users and their OFAuth connections.
--
-- Records live in an oflua.store (every value sealed with AES-256-GCM, keys
-- behind a blind index), so the database holds no connection id in clear:
--   user:<user id>        -> JSON {user_id, connection_id, status, permissions,
--                             user_data, platform_user_id, updated_at, expired_at}
--   conn:<connection id>  -> user id (reverse index)
-- The user id is the Link session's clientReferenceId. Statuses: active,
-- awaiting_2fa, expired, disconnected.
--
--   local conns = connections.new{store = st, on_reauth_required = fn}
--   conns:install(app)          -- default handlers for connection.* events
--   local rec = conns:get(user_id)
--
-- This file is the repository (records, reverse index, expiry and the
-- once-per-expiry notice). The webhook handlers live in
-- ofauth.connection_events and the remote disconnect in
-- ofauth.connection_remote; `conns:handlers()`, `conns:install(app)` and
-- `conns:disconnect(client, user_id)` reach them.
local cjson = require("cjson")
local errors = require("ofauth.errors")
local log = require("ofauth.log")
local metrics = require("ofauth.metrics")

local M = {}

M.statuses = { active = true, awaiting_2fa = true, expired = true, disconnected = true }

local Repo = {}
Repo.__index = Repo
M.Repo = Repo

--- opts: store (required), on_reauth_required(record, ctx) (called when a
-- connection expires, from a webhook or an API answer), now (function).
function M.new(opts)
  opts = opts or {}
  if opts.store == nil then error("connections.new: store is required", 2) end
  return setmetatable({ store = opts.store, on_reauth_required = opts.on_reauth_required,
    now = opts.now or require("oflua.core").now }, Repo)
end

local function decode(s)
  if not s then return nil end
  local ok, v = pcall(cjson.decode, s)
  if ok and type(v) == "table" then return v end
  return nil
end

function Repo:get(user_id)
  if type(user_id) ~= "string" then error("connections:get: user id must be a string", 2) end
  return decode(self.store:get("user:" .. user_id))
end

function Repo:by_connection_id(connection_id)
  local user = self.store:get("conn:" .. connection_id)
  if not user then return nil end
  return self:get(user)
end

--- Save a record (merged over the stored one); keeps the reverse index right.
-- Returns the record, or nil and an ofauth.errors object (kind invalid).
function Repo:save(user_id, fields)
  if type(user_id) ~= "string" or user_id == "" then return nil, errors.invalid("a user id is required") end
  if type(fields) ~= "table" then error("connections:save: fields must be a table", 2) end
  if fields.status and not M.statuses[fields.status] then
    return nil, errors.invalid("unknown status " .. tostring(fields.status))
  end
  local result
  self.store:transaction(function()
    local rec = self:get(user_id) or { user_id = user_id }
    local old_conn = rec.connection_id
    for k, v in pairs(fields) do
      if v ~= cjson.null then rec[k] = v end
    end
    -- A connection that is no longer expired will need a new notice next time.
    if fields.status and fields.status ~= "expired" then rec.reauth_notified = nil end
    rec.updated_at = self.now()
    self.store:put("user:" .. user_id, cjson.encode(rec))
    if old_conn and old_conn ~= rec.connection_id then self.store:delete("conn:" .. old_conn) end
    if rec.connection_id then self.store:put("conn:" .. rec.connection_id, user_id) end
    result = rec
  end)
  return result
end

--- Mark the connection expired (from SESSION_EXPIRED or a webhook).
-- Returns the updated record and whether it was not expired before, or nil
-- when the connection is unknown here.
function Repo:mark_expired(connection_id, reason)
  local user = self.store:get("conn:" .. connection_id)
  if not user then return nil end
  local before = self:get(user)
  if before and before.status == "expired" then return before, false end
  metrics.session_expired()
  return self:save(user, { status = "expired", expired_at = self.now(), expired_reason = reason }), true
end

--- Forget a user's connection locally (after disconnecting it at OFAuth).
function Repo:forget(user_id)
  local rec = self:get(user_id)
  self.store:transaction(function()
    if rec and rec.connection_id then self.store:delete("conn:" .. rec.connection_id) end
    self.store:delete("user:" .. user_id)
  end)
  return rec
end

--- Iterate over every stored record.
function Repo:each()
  local it = self.store:list("user:")
  return function()
    while true do
      local _, v = it()
      if v == nil then return nil end
      local rec = decode(v)
      if rec then return rec end
    end
  end
end

--- Tell the user once per expiry: calls `hook` (default: the repository's
-- on_reauth_required) unless this expiry was already reported, then records
-- that it was. A hook that raises leaves it unreported (the caller retries:
-- a webhook event goes back to the inbox; the client tries on the next call).
function Repo:notify_reauth(rec, ctx, hook)
  if rec.reauth_notified then return false end
  hook = hook or self.on_reauth_required
  if hook then
    local ok, err = pcall(hook, rec, ctx)
    if not ok then
      log.error("connection.reauth_hook_failed", { error = tostring(err) })
      error(err, 0)
    end
  end
  self:save(rec.user_id, { reauth_notified = true })
  return true
end

--- The default handlers for the connection.* webhook events (ofauth.connection_events).
function Repo:handlers() return require("ofauth.connection_events").handlers(self) end

--- Register the default handlers on a webhooks app.
function Repo:install(app) return require("ofauth.connection_events").install(self, app) end

--- Disconnect a user's connection at OFAuth, then wipe the local record
-- (ofauth.connection_remote).
function Repo:disconnect(client, user_id)
  return require("ofauth.connection_remote").disconnect(self, client, user_id)
end

return M
