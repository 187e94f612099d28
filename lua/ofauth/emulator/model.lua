--- The emulator's data: connections, Link sessions, signing rules.
--
-- Pure Lua, no I/O except `save`/`load` of the optional state file, and time
-- and randomness come from `deps` ({now = fn -> seconds, random_hex = fn(n)})
-- so specs can drive it. Timestamps are kept as epoch seconds and rendered as
-- ISO 8601 UTC strings (`2026-01-01T00:00:00Z`) in API objects.
local json = require("ofauth.emulator.json")

local M = {}

M.STATE_VERSION = 1
M.STATUSES = { active = true, awaiting_2fa = true, expired = true }

local function iso(t)
  if t == nil then return json.null end
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t))
end
M.iso = iso

local Model = {}
Model.__index = Model

function M.new(cfg, deps)
  local self = setmetatable({
    cfg = cfg,
    now = deps.now,
    random_hex = deps.random_hex,
    connections = {}, order = {},        -- id -> connection; ids, oldest first
    sessions = {}, session_order = {},   -- id -> session; ids, oldest first
    by_secret = {},                      -- clientSecret -> session id
    seq = 0,                             -- creators numbered 1, 2, ...
    rules = { revision = 0, rules = {} },
  }, Model)
  return self
end

---------------------------------------------------------------- connections

--- A connection as the API shows it (ofauth-api.md, "A connection in a list").
function M.connection_json(c)
  return {
    id = c.id,
    status = c.status,
    clientReferenceId = c.clientReferenceId or json.null,
    permissions = json.array(c.permissions),
    userData = {
      id = c.userData.id, name = c.userData.name,
      username = c.userData.username, avatar = c.userData.avatar,
    },
    createdAt = iso(c.createdAt),
    updatedAt = iso(c.updatedAt),
    expiredAt = iso(c.expiredAt),
    lastCheckedAt = iso(c.lastCheckedAt),
    imported = c.imported and true or false,
  }
end

--- `data` of a connection.* webhook (ofauth-api.md, Webhooks).
function M.connection_event_data(c)
  return {
    clientReferenceId = c.clientReferenceId or json.null,
    connection = {
      id = c.id,
      platformUserId = c.userData.id,
      status = c.status,
      permissions = json.array(c.permissions),
      userData = {
        userId = c.userData.id, name = c.userData.name,
        username = c.userData.username, avatar = c.userData.avatar,
      },
    },
  }
end

function Model:connection(id)
  if type(id) ~= "string" then return nil end
  return self.connections[id]
end

function Model:create_connection(client_reference_id, env)
  if #self.order >= self.cfg.max_connections then return nil, "too many connections" end
  self.seq = self.seq + 1
  local n, t = self.seq, self.now()
  local c = {
    id = "conn_" .. self.random_hex(12),
    status = "active",
    clientReferenceId = client_reference_id,
    permissions = self.cfg.permissions,
    userData = {
      id = tostring(100000 + n),
      name = ("Creator %d"):format(n),
      username = ("creator_%d"):format(n),
      avatar = ("https://example.invalid/avatars/creator_%d.jpg"):format(n),
    },
    createdAt = t, updatedAt = t, lastCheckedAt = t,
    imported = false,
    env = env or "sandbox",
    n = n,
  }
  self.connections[c.id] = c
  self.order[#self.order + 1] = c.id
  return c
end

function Model:reactivate(c, client_reference_id)
  local t = self.now()
  c.status = "active"
  c.expiredAt = nil
  c.updatedAt, c.lastCheckedAt = t, t
  if client_reference_id then c.clientReferenceId = client_reference_id end
  return c
end

function Model:expire(c)
  local t = self.now()
  c.status = "expired"
  c.expiredAt, c.updatedAt = t, t
  return c
end

function Model:delete_connection(id)
  if not self.connections[id] then return false end
  self.connections[id] = nil
  for i, x in ipairs(self.order) do
    if x == id then table.remove(self.order, i) break end
  end
  return true
end

--- Page of connections in creation order, optionally filtered by status.
function Model:list_connections(offset, limit, status)
  local ids = self.order
  if status then
    ids = {}
    for _, id in ipairs(self.order) do
      if self.connections[id].status == status then ids[#ids + 1] = id end
    end
  end
  local list = {}
  for i = offset + 1, math.min(#ids, offset + limit) do
    list[#list + 1] = M.connection_json(self.connections[ids[i]])
  end
  local next_offset = offset + #list
  local more = next_offset < #ids
  return list, more, more and next_offset or nil, #ids
end

---------------------------------------------------------------- Link sessions

function Model:session_status(s)
  if s.status == "pending" and self.now() >= s.expiresAt then s.status = "expired" end
  return s.status
end

local function forget_session(self, i)
  local id = table.remove(self.session_order, i)
  local s = self.sessions[id]
  self.sessions[id] = nil
  if s then self.by_secret[s.clientSecret] = nil end
end

--- New pending session; `req` = {redirectUrl, clientReferenceId, connectionId?, geolocation?}.
function Model:create_session(req, env)
  if #self.session_order >= self.cfg.max_sessions then
    -- Forget the oldest finished session, else the oldest one.
    local victim = 1
    for i, id in ipairs(self.session_order) do
      if self:session_status(self.sessions[id]) ~= "pending" then victim = i break end
    end
    forget_session(self, victim)
  end
  local t = self.now()
  local s = {
    id = "ls_" .. self.random_hex(12),
    clientSecret = "lcs_" .. self.random_hex(24),
    redirectUrl = req.redirectUrl,
    clientReferenceId = req.clientReferenceId,
    connectionId = req.connectionId,
    geolocation = req.geolocation,
    status = "pending",
    env = env or "sandbox",
    createdAt = t,
    expiresAt = t + self.cfg.link_ttl,
  }
  self.sessions[s.id] = s
  self.by_secret[s.clientSecret] = s.id
  self.session_order[#self.session_order + 1] = s.id
  return s
end

function Model:session(id)
  if type(id) ~= "string" then return nil end
  return self.sessions[id]
end

function Model:session_by_secret(secret)
  if type(secret) ~= "string" then return nil end
  local id = self.by_secret[secret]
  return id and self.sessions[id]
end

--- `GET /v2/link/{clientSecret}` answer: {status, data?}. A pending
-- session shows the SDKs' progression: "initialized" until its hosted page
-- is opened, then "pending"; "awaiting_2fa" (with data.twoFactorState) after
-- POST /emulator/link/{id}/2fa until it completes; "completed" carries the
-- SDKs' {id, session, userData} plus our connectionId. Ended sessions keep
-- the emulator's own names (cancelled, error, expired).
function Model:session_json(s)
  local status = self:session_status(s)
  if status == "pending" then
    if s.awaiting_2fa then status = "awaiting_2fa" elseif not s.opened then status = "initialized" end
  end
  local out = { status = status }
  if status == "awaiting_2fa" then
    out.data = { twoFactorState = { options = json.array(s.two_factor_options or { "app" }),
      phoneLast4 = "0042" } }
  elseif status ~= "pending" and status ~= "initialized" and status ~= "expired" then
    local c = s.result and s.result.connectionId and self:connection(s.result.connectionId)
    out.data = {
      clientReferenceId = s.clientReferenceId,
      connectionId = s.result and s.result.connectionId or json.null,
      step = s.result and s.result.step or json.null,
      errorCode = s.result and s.result.errorCode or json.null,
    }
    if c then
      out.data.id = c.id
      out.data.userData = c.userData
      out.data.session = { ["user-id"] = c.userData and c.userData.id or json.null,
        ["user-agent"] = "emulator", cookie = "emulated", ["x-bc"] = "emulated" }
    end
  end
  out.expiresAt = iso(s.expiresAt)
  return out
end

---------------------------------------------------------------- rules

function Model:set_rules(rules)
  self.rules = { revision = self.rules.revision + 1, rules = rules }
  return self.rules
end

---------------------------------------------------------------- debug view

local function mask(id)
  return id:sub(1, 7) .. "..."
end

--- State without secrets: ids are masked, client secrets left out.
function Model:summary()
  local conns, counts = {}, {}
  for _, id in ipairs(self.order) do
    local c = self.connections[id]
    counts[c.status] = (counts[c.status] or 0) + 1
    conns[#conns + 1] = {
      id = mask(c.id), status = c.status, env = c.env,
      username = c.userData.username, updatedAt = iso(c.updatedAt),
    }
  end
  local sessions = {}
  for _, id in ipairs(self.session_order) do
    local s = self.sessions[id]
    sessions[#sessions + 1] = {
      id = mask(s.id), status = self:session_status(s), reconnect = s.connectionId ~= nil,
      expiresAt = iso(s.expiresAt),
    }
  end
  return {
    connections = json.array(conns), connection_counts = counts,
    sessions = json.array(sessions),
    rules_revision = self.rules.revision,
  }
end

---------------------------------------------------------------- persistence

local function strip_null(t)
  if type(t) ~= "table" then return json.value(t) end
  local out = {}
  for k, v in pairs(t) do out[k] = strip_null(v) end
  return out
end

function Model:snapshot()
  local conns, sessions = {}, {}
  for i, id in ipairs(self.order) do conns[i] = self.connections[id] end
  for i, id in ipairs(self.session_order) do sessions[i] = self.sessions[id] end
  return {
    version = M.STATE_VERSION, seq = self.seq,
    connections = json.array(conns), sessions = json.array(sessions),
    rules = { revision = self.rules.revision, rules = self.rules.rules },
  }
end

--- Write the state file atomically (temp file, mode 0600, rename).
function Model:save(path)
  local tmp = path .. ".tmp"
  local f, err = io.open(tmp, "wb")
  if not f then return nil, err end
  local ok, core = pcall(require, "oflua.core")
  if ok and core.chmod then core.chmod(tmp, tonumber("600", 8)) end
  local wrote
  wrote, err = f:write(json.encode(self:snapshot()))
  f:close()
  if not wrote then os.remove(tmp) return nil, err end
  local renamed
  renamed, err = os.rename(tmp, path)
  if not renamed then os.remove(tmp) return nil, err end
  return true
end

--- Read the state file; a missing file is an empty state.
function Model:load(path)
  local f = io.open(path, "rb")
  if not f then return true end
  local text = f:read("a")
  f:close()
  local data = json.decode(text)
  if type(data) ~= "table" or data.version ~= M.STATE_VERSION then
    return nil, "state file is not an emulator state (version " .. M.STATE_VERSION .. ")"
  end
  data = strip_null(data)
  self.seq = math.tointeger(data.seq) or 0
  for _, c in ipairs(type(data.connections) == "table" and data.connections or {}) do
    if type(c) == "table" and type(c.id) == "string" and M.STATUSES[c.status]
      and type(c.userData) == "table" then
      self.connections[c.id] = c
      self.order[#self.order + 1] = c.id
    end
  end
  for _, s in ipairs(type(data.sessions) == "table" and data.sessions or {}) do
    if type(s) == "table" and type(s.id) == "string" and type(s.clientSecret) == "string"
      and type(s.expiresAt) == "number" then
      self.sessions[s.id] = s
      self.by_secret[s.clientSecret] = s.id
      self.session_order[#self.session_order + 1] = s.id
    end
  end
  if type(data.rules) == "table" then
    self.rules = { revision = math.tointeger(data.rules.revision) or 0, rules = data.rules.rules or {} }
  end
  return true
end

return M
