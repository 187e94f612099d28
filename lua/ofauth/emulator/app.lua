--- The emulator's HTTP application: `app:handle(req) -> status, body, headers`.
--
-- It answers like api.ofauth.com (see ofauth-api.md) from the data in
-- ofauth.emulator.model, plus a hosted Link page and a control API under
-- /emulator/ (no API key; the server listens on loopback):
--   GET  /v2/account/whoami                    key check; environment from the key
--   POST /v2/link/init                         {redirectUrl, clientReferenceId,
--                                               connectionId?, geolocation?}
--   GET|DELETE /v2/link/{clientSecret}         session status / cancel
--   GET  /v2/account/connections, /v2/connections (+ /{id}), DELETE .../{id}
--   POST /v2/account/connections/{id}/invalidate
--   GET  /v2/access/self, /v2/access/subscribers; any other /v2/access/* echoes
--   GET|POST /link/{session}                   the hosted page (HTML form)
--   POST /emulator/link/{session}/complete     headless {outcome, step, error_code}
--   POST /emulator/link/{session}/2fa          {options?}: the session awaits 2FA
--   GET  /emulator/state | /emulator/deliveries[?state=] | /emulator/health
--   GET|POST|DELETE /emulator/faults           fault rules (ofauth.emulator.faults)
--   POST /emulator/connections/{id}/expire     expire + connection.expired
--   GET|POST /emulator/rules                   rules.updated
--   POST /emulator/webhooks/send               {type, data?, connection_id?, live?}
--   PUT  /emulator/webhook                     {url}: deliver to another URL from now on
-- Every error uses the configured shape (`M.error_body`). The app keeps its
-- model in this VM (run the server with one worker) and its webhook queue in
-- `deps.dict`, shared with the delivery loop.
local json = require("ofauth.emulator.json")
local config = require("ofauth.emulator.config")
local model_mod = require("ofauth.emulator.model")
local faults_mod = require("ofauth.emulator.faults")
local subscribers = require("ofauth.emulator.subscribers")
local delivery = require("ofauth.emulator.delivery")
local link_page = require("ofauth.emulator.link_page")
local generic = require("ofauth.emulator.generic")
local catalogue = require("ofauth.catalogue")

local M = {}

--- Returned by `handle` (as the status) to close the connection without an
-- answer; the worker script maps it to the server's own marker.
M.DROP = setmetatable({}, { __tostring = function() return "emulator.DROP" end })

--- Status of each machine code the emulator sends. SESSION_EXPIRED takes
-- `session_expired_status` from the configuration.
M.ERRORS = {
  VALIDATION_ERROR = 400,
  UNAUTHORIZED = 401,
  SESSION_EXPIRED = 401,
  NOT_FOUND = 404,
  METHOD_NOT_ALLOWED = 405,
  CONFLICT = 409,
  LINK_SESSION_EXPIRED = 410,
  RATE_LIMIT_EXCEEDED = 429,
  INTERNAL_SERVER_ERROR = 500,
  SERVICE_UNAVAILABLE = 503,
}

--- Query parameters added to redirectUrl when a Link session ends.
-- *(unconfirmed)*: ofauth-api.md, Link flow, step 3. Keys are the meanings
-- used in this file, values the names on the wire.
M.CALLBACK_PARAMS = {
  status = "status",                         -- success | cancelled | error
  connection_id = "connection_id",           -- on success
  client_reference_id = "client_reference_id",
  step = "step",                             -- on cancel (and error, when known)
  error_code = "error_code",                 -- on error
}
M.CALLBACK_ORDER = { "status", "connection_id", "client_reference_id", "step", "error_code" }
M.OUTCOMES = { success = "completed", cancelled = "cancelled", error = "error" }
M.DEFAULT_STEP = "login"
M.DEFAULT_ERROR_CODE = "LOGIN_FAILED"
M.MAX_REFERENCE_LEN = 256

--- The error body in the configured shape: "sdk" -> {error, code, details},
-- "checklist" -> {type, message}.
function M.error_body(shape, code, message, details)
  if shape == "checklist" then return { type = code, message = message } end
  return { error = message, code = code, details = details or {} }
end

local function urlencode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

--- redirectUrl plus the callback parameters (`params` keyed by meaning).
function M.callback_url(redirect, params)
  local base, frag = redirect:match("^([^#]*)(.*)$")
  local q = {}
  for _, k in ipairs(M.CALLBACK_ORDER) do
    local v = params[k]
    if v ~= nil then q[#q + 1] = urlencode(M.CALLBACK_PARAMS[k]) .. "=" .. urlencode(v) end
  end
  local sep = "?"
  if base:find("?", 1, true) then sep = base:match("[?&]$") and "" or "&" end
  return base .. sep .. table.concat(q, "&") .. frag
end

--- Is `url` an allowed redirectUrl? Compared without query and fragment with
-- the configured URIs; with none configured, any loopback http(s) URL.
function M.redirect_allowed(uris, url)
  local scheme, host = config.parse_url(url)
  if not scheme then return false end
  if #uris == 0 then return config.is_loopback(host) end
  local base = url:gsub("[?#].*$", "")
  for _, u in ipairs(uris) do
    if base == u:gsub("[?#].*$", "") then return true end
  end
  return false
end

--- Path for logs: ids and Link secrets replaced by their prefix.
function M.redact_path(path)
  local out, prev = {}, nil
  for seg in path:gmatch("[^/]+") do
    if prev == "link" and out[2] == "link" and seg ~= "init" then
      seg = "***"
    else
      local prefix = seg:match("^(conn_)") or seg:match("^(lcs_)") or seg:match("^(ls_)")
      if prefix then seg = prefix .. "***" end
    end
    out[#out + 1] = seg
    prev = seg
  end
  return "/" .. table.concat(out, "/")
end

local App = {}
App.__index = App

--- cfg: a normalized configuration (ofauth.emulator.config). deps = {dict,
-- now, random_hex, sleep, can_drop, log = fn(line) or nil}. Returns the app
-- or nil, message (bad initial faults, unreadable state file).
function M.new(cfg, deps)
  local self = setmetatable({
    cfg = cfg, dict = deps.dict, now = deps.now, random_hex = deps.random_hex,
    sleep = deps.sleep, can_drop = deps.can_drop and true or false, log = deps.log,
  }, App)
  self.model = model_mod.new(cfg, deps)
  if cfg.state then
    local ok, err = self.model:load(cfg.state)
    if not ok then return nil, err end
  end
  self.faults = faults_mod.new({
    max_faults = cfg.max_faults, slow_delay_ms_max = cfg.slow_delay_ms_max, can_drop = self.can_drop,
  })
  for _, f in ipairs(cfg.faults) do
    local rule, err = self.faults:add(f)
    if not rule then return nil, "fault: " .. err end
  end
  self.routes = M.routes()
  return self
end

---------------------------------------------------------------- answers

function App.json(_, status, value, headers)
  local h = { ["content-type"] = "application/json" }
  for k, v in pairs(headers or {}) do h[k] = v end
  return status, json.encode(value), h
end

function App:fail(code, message, details, headers, status)
  if not status and code == "SESSION_EXPIRED" then status = self.cfg.session_expired_status end
  status = status or M.ERRORS[code] or 400
  return self:json(status, M.error_body(self.cfg.error_shape, code, message, details), headers)
end

function App:persist()
  if not self.cfg.state then return end
  local ok, err = self.model:save(self.cfg.state)
  if not ok and self.log then self.log("emulator: cannot write the state file: " .. tostring(err)) end
end

function App:queue_room()
  local tail = self.dict:get("q:tail") or 0
  local head = self.dict:get("q:head") or 0
  return tail - head < self.cfg.max_queue
end

function App:emit(event_type, data, key, live)
  local n, id = delivery.enqueue(self.dict, {
    type = event_type, data = data, key = key, live = live,
  }, {
    signing = self.cfg.signing, random_hex = self.random_hex, now = self.now,
    max_queue = self.cfg.max_queue,
  })
  if not n and self.log then self.log("emulator: " .. tostring(id)) end
  return n, id
end

function App:emit_connection(event_type, c)
  return self:emit(event_type, model_mod.connection_event_data(c), c.id, c.env == "production")
end

local function body_object(req, optional)
  if optional and (req.body == nil or req.body:match("^%s*$")) then return {} end
  local v, err = json.decode(req.body)
  if v == nil then return nil, "the body must be JSON (" .. err .. ")" end
  if type(v) ~= "table" then return nil, "the body must be a JSON object" end
  return v
end

local function int_param(v, default, lo, hi)
  if v == nil or v == "" then return default end
  local n = tonumber(v)
  if not n or n ~= math.floor(n) or n < lo or n > hi then return nil end
  return math.tointeger(n)
end

-- limit and offset of a list call, or nil, message.
function App:page_params(query)
  local limit = int_param(query.limit, self.cfg.list_limit_default, 1, math.maxinteger)
  if not limit then return nil, "limit must be a positive integer" end
  local offset = int_param(query.offset, 0, 0, math.maxinteger)
  if not offset then return nil, "offset must be a non-negative integer" end
  return math.min(limit, self.cfg.list_limit_max), offset
end

local function page_body(list, more, next_offset)
  return { list = json.array(list), hasMore = more, nextOffset = next_offset }
end

---------------------------------------------------------------- OFAuth API

local H = {}

function H.whoami(self, req)
  local env = config.environment(req.api_key)
  local index = 1
  for i, k in ipairs(self.cfg.api_keys) do if k == req.api_key then index = i end end
  return self:json(200, {
    id = ("acct_emulator_%s_%d"):format(env == "production" and "live" or "sandbox", index),
    name = ("OFAuth emulator (%s)"):format(env),
    permissions = json.array(self.cfg.permissions),
    environment = env,
    live = env == "production",
    emulator = true,
  })
end

function H.link_init(self, req)
  local b, err = body_object(req)
  if not b then return self:fail("VALIDATION_ERROR", err) end
  local redirect = json.value(b.redirectUrl)
  if type(redirect) ~= "string" or redirect == "" then
    return self:fail("VALIDATION_ERROR", "redirectUrl is required", { field = "redirectUrl" })
  end
  if not M.redirect_allowed(self.cfg.redirect_uris, redirect) then
    return self:fail("VALIDATION_ERROR", "redirectUrl is not a registered redirect URI",
      { field = "redirectUrl" })
  end
  local ref = json.value(b.clientReferenceId)
  if type(ref) ~= "string" or ref == "" or #ref > M.MAX_REFERENCE_LEN then
    return self:fail("VALIDATION_ERROR",
      ("clientReferenceId is required (a string of 1 to %d bytes)"):format(M.MAX_REFERENCE_LEN),
      { field = "clientReferenceId" })
  end
  local conn_id = json.value(b.connectionId)
  if conn_id ~= nil then
    if type(conn_id) ~= "string" then
      return self:fail("VALIDATION_ERROR", "connectionId must be a string", { field = "connectionId" })
    end
    if not self.model:connection(conn_id) then
      return self:fail("NOT_FOUND", "connection not found", { field = "connectionId" })
    end
  end
  local geo = json.value(b.geolocation)
  if geo ~= nil then
    if type(geo) ~= "table" or type(geo.country) ~= "string" or not geo.country:match("^%a%a$")
      or (json.value(geo.state) ~= nil and type(geo.state) ~= "string")
      or (json.value(geo.city) ~= nil and type(geo.city) ~= "string") then
      return self:fail("VALIDATION_ERROR",
        "geolocation must be {country: two letters, state?: string, city?: string}",
        { field = "geolocation" })
    end
    geo = { country = geo.country:upper(), state = json.value(geo.state), city = json.value(geo.city) }
  end
  local s = self.model:create_session({
    redirectUrl = redirect, clientReferenceId = ref, connectionId = conn_id, geolocation = geo,
  }, config.environment(req.api_key))
  self:persist()
  return self:json(200, {
    url = self:base_url(req) .. "/link/" .. s.id,
    expiresAt = model_mod.iso(s.expiresAt),
    clientSecret = s.clientSecret,
  })
end

function H.link_get(self, req)
  local s = self.model:session_by_secret(req.params.secret)
  if not s then return self:fail("NOT_FOUND", "link session not found") end
  return self:json(200, self.model:session_json(s))
end

function H.link_delete(self, req)
  local s = self.model:session_by_secret(req.params.secret)
  if not s then return self:fail("NOT_FOUND", "link session not found") end
  if self.model:session_status(s) == "pending" then
    s.status = "cancelled"
    s.result = { step = "deleted" }
    self:persist()
  end
  return self:json(200, self.model:session_json(s))
end

function H.connections(self, req)
  local limit, offset = self:page_params(req.query)
  if not limit then return self:fail("VALIDATION_ERROR", offset) end
  local status = req.query.status
  if status == "" then status = nil end
  if status and not model_mod.STATUSES[status] then
    return self:fail("VALIDATION_ERROR", "status must be active, awaiting_2fa or expired",
      { field = "status" })
  end
  return self:json(200, page_body(self.model:list_connections(offset, limit, status)))
end

function H.connection(self, req)
  local c = self.model:connection(req.params.id)
  if not c then return self:fail("NOT_FOUND", "connection not found") end
  return self:json(200, model_mod.connection_json(c))
end

function H.disconnect(self, req)
  if not self.model:delete_connection(req.params.id) then
    return self:fail("NOT_FOUND", "connection not found")
  end
  self:persist()
  return self:json(200, { success = true })
end

-- Expire a connection and send connection.expired (invalidate and the
-- control API's expire).
function H.expire(self, req)
  local c = self.model:connection(req.params.id)
  if not c then return self:fail("NOT_FOUND", "connection not found") end
  if not self:queue_room() then return self:fail("SERVICE_UNAVAILABLE", "webhook queue is full") end
  self.model:expire(c)
  self:persist()
  self:emit_connection("connection.expired", c)
  return self:json(200, model_mod.connection_json(c))
end

--- POST /v2/account/connections/import {cookie, userAgent, permissions?,
-- clientReferenceId?}: a connection from an existing OnlyFans session (the
-- cookie must hold auth_id, sess and fp); connection.created is sent.
function H.import(self, req)
  local b, ans = self:catalogue_request(catalogue.by_name["account.connections.createImport"], req)
  if not b then return table.unpack(ans) end
  if type(b.cookie) ~= "string" or not (b.cookie:find("auth_id=", 1, true) and b.cookie:find("sess=", 1, true)
    and b.cookie:find("fp=", 1, true)) then
    return self:fail("VALIDATION_ERROR", "cookie must contain auth_id, sess and fp", { field = "cookie" })
  end
  if type(b.userAgent) ~= "string" then return self:fail("VALIDATION_ERROR", "userAgent must be a string") end
  local ref = json.value(b.clientReferenceId)
  if ref ~= nil and type(ref) ~= "string" then
    return self:fail("VALIDATION_ERROR", "clientReferenceId must be a string")
  end
  if not self:queue_room() then return self:fail("SERVICE_UNAVAILABLE", "webhook queue is full") end
  local c, err = self.model:create_connection(ref, config.environment(req.api_key))
  if not c then return self:fail("CONFLICT", err) end
  c.imported = true
  local perms = json.value(b.permissions)
  if type(perms) == "table" and #perms > 0 then c.permissions = perms end
  self:persist()
  self:emit_connection("connection.created", c)
  return self:json(200, model_mod.connection_json(c))
end

--- PATCH /v2/account/connections/import/{id} {cookie, userAgent}: a new
-- session for an imported connection (same id); active again.
function H.update_import(self, req)
  local c = self.model:connection(req.params.connectionId)
  if not c then return self:fail("NOT_FOUND", "connection not found") end
  if not c.imported then return self:fail("VALIDATION_ERROR", "not an imported connection") end
  local b, ans = self:catalogue_request(catalogue.by_name["account.connections.updateImport"], req)
  if not b then return table.unpack(ans) end
  self.model:reactivate(c)
  self:persist()
  return self:json(200, model_mod.connection_json(c))
end

--- GET|PATCH /v2/account/connections/{id}/settings: Vault+ settings kept per connection.
function H.conn_settings(self, req)
  local c = self.model:connection(req.params.connectionId)
  if not c then return self:fail("NOT_FOUND", "connection not found") end
  c.vault_plus = c.vault_plus or { enabled = false, settingsOverrides = json.null }
  if req.method == "PATCH" then
    local b, err = body_object(req)
    if not b then return self:fail("VALIDATION_ERROR", err) end
    local vp = json.value(b.vaultPlus)
    if vp ~= nil and type(vp) ~= "table" then return self:fail("VALIDATION_ERROR", "vaultPlus must be an object") end
    if vp then
      if json.value(vp.enabled) ~= nil then c.vault_plus.enabled = vp.enabled == true end
      if vp.settings ~= nil then c.vault_plus.settingsOverrides = vp.settings end
    end
    self:persist()
    return self:json(200, { settings = { connectionId = c.id, vaultPlus = c.vault_plus } })
  end
  return self:json(200, { connectionId = c.id, vaultPlus = {
    enabled = c.vault_plus.enabled, settingsOverrides = c.vault_plus.settingsOverrides,
    stats = { vaultPlusEnabled = c.vault_plus.enabled, totalStorageBytes = 0, storageLimitBytes = 0,
      mediaCount = 0, storedCount = 0, storageUsagePercent = 0 } } })
end

-- The connection named by x-connection-id, or an error answer.
function App:access_connection(req)
  local id = req.headers["x-connection-id"]
  if id == nil or id == "" then
    return nil, { self:fail("VALIDATION_ERROR", "the x-connection-id header is required",
      { header = "x-connection-id" }) }
  end
  local c = self.model:connection(id)
  if not c then return nil, { self:fail("NOT_FOUND", "connection not found") } end
  if c.status ~= "active" then
    return nil, { self:fail("SESSION_EXPIRED", "the connection's session has expired; reconnect it") }
  end
  return c
end

function H.access_self(self, req)
  local c, answer = self:access_connection(req)
  if not c then return table.unpack(answer) end
  local u = c.userData
  return self:json(200, {
    id = tonumber(u.id), name = u.name, username = u.username, avatar = u.avatar,
    about = "An emulated creator account.",
    isAuth = true,
    isVerified = true,
    subscribersCount = self.cfg.subscribers,
    postsCount = 10 + c.n,
    joinedAt = model_mod.iso(subscribers.EPOCH),
  })
end

function H.access_subscribers(self, req)
  local c, answer = self:access_connection(req)
  if not c then return table.unpack(answer) end
  local kind = req.query.type
  if kind == nil or kind == "" then kind = "all" end
  if not subscribers.TYPES[kind] then
    return self:fail("VALIDATION_ERROR", "type must be all, active, expired or latest", { field = "type" })
  end
  local limit, offset = self:page_params(req.query)
  if not limit then return self:fail("VALIDATION_ERROR", offset) end
  local list, more, next_offset = subscribers.page(self.cfg.subscribers, kind, offset, limit, c.n)
  return self:json(200, page_body(list, more, next_offset))
end

-- Every other Access API path: echo what was asked, so a generic request()
-- can be tested (never the headers: they hold the key and connection id).
function H.access_echo(self, req)
  local c, answer = self:access_connection(req)
  if not c then return table.unpack(answer) end
  local body = req.body
  if body == "" then
    body = json.null
  else
    local v = json.decode(body)
    if v ~= nil then body = v end
  end
  local query = req.query
  if next(query) == nil then query = json.null end
  return self:json(200, { echo = true, method = req.method, path = req.path, query = query, body = body,
    raw_query = req.raw_query })
end

---------------------------------------------------------------- catalogue, uploads, proxy

-- Check the required fields of a catalogue entry; returns the decoded body
-- (or {}), or nil and an error answer.
function App:catalogue_request(e, req)
  local body = {}
  if e.body and req.body ~= "" then
    local b, err = body_object(req)
    if not b then return nil, { self:fail("VALIDATION_ERROR", err) } end
    body = b
  end
  for _, f in ipairs(e.required or {}) do
    local v
    if e.fields[f] == "query" then v = req.query[f] else v = json.value(body[f]) end
    if v == nil or v == "" then
      return nil, { self:fail("VALIDATION_ERROR", f .. " is required", { field = f }) }
    end
  end
  return body
end

-- The answer for a catalogue entry with no handler of its own.
function H.catalogue(self, req, e)
  local c
  if e.connection then
    local answer
    c, answer = self:access_connection(req)
    if not c then return table.unpack(answer) end
  end
  local body, answer = self:catalogue_request(e, req)
  if not body then return table.unpack(answer) end
  local v, err = generic.answer(e, req.query, c and c.n or 0, body, self.cfg.data_seed)
  if v == nil then return self:fail("VALIDATION_ERROR", err) end
  return self:json(200, v)
end

--- Upload flow (ofauth-endpoints.md 1.6): init answers the part count and
-- size in headers; a single-part upload is one PUT that also completes it;
-- otherwise every part 1..N is PUT (each checked for its exact length) and
-- complete checks that all parts arrived.
function H.upload_init(self, req)
  local c, answer = self:access_connection(req)
  if not c then return table.unpack(answer) end
  local b, ans = self:catalogue_request(catalogue.by_name["access.uploads.init"], req)
  if not b then return table.unpack(ans) end
  local size = math.tointeger(b.size)
  if not size or size < 1 then return self:fail("VALIDATION_ERROR", "size must be a positive integer") end
  if type(b.filename) ~= "string" or type(b.contentType) ~= "string" then
    return self:fail("VALIDATION_ERROR", "filename and contentType must be strings")
  end
  self.uploads = self.uploads or { order = {}, n = 0 }
  local u = self.uploads
  if #u.order >= self.cfg.max_uploads then u[table.remove(u.order, 1)] = nil end
  u.n = u.n + 1
  local id = ("mu_%d"):format(u.n)
  local part = self.cfg.upload_part_size
  local total = size <= part and 1 or (size + part - 1) // part
  u[id] = { size = size, part_size = part, total = total, parts = {}, conn = c.id,
    filename = b.filename, type = b.contentType, puts = {} }
  u.order[#u.order + 1] = id
  return self:json(200, { mediaUploadId = id }, {
    ["x-ofauth-upload-total-parts"] = tostring(total),
    ["x-ofauth-upload-part-size"] = tostring(part),
  })
end

function App:upload_of(req)
  local c, answer = self:access_connection(req)
  if not c then return nil, answer end
  local u = self.uploads and self.uploads[req.params.upload]
  if not u or u.conn ~= c.id then return nil, { self:fail("NOT_FOUND", "upload not found") } end
  return u
end

local function media_of(u, id)
  local n = generic.hash(id)
  return { id = generic.ID_BASE + n, type = (u.type:match("^(%a+)/") == "video") and "video" or "photo",
    isReady = true, createdAt = model_mod.iso(generic.EPOCH), size = u.size, filename = u.filename,
    files = { full = { url = "https://example.invalid/media/" .. id, size = u.size } } }
end

function H.upload_single(self, req)
  local u, answer = self:upload_of(req)
  if not u then return table.unpack(answer) end
  if u.total ~= 1 then return self:fail("VALIDATION_ERROR", "this upload has parts: PUT each part") end
  if #req.body ~= u.size then
    return self:fail("VALIDATION_ERROR", ("expected %d bytes, got %d"):format(u.size, #req.body))
  end
  u.done = true
  return self:json(200, { mediaUploadId = req.params.upload, media = media_of(u, req.params.upload) })
end

function H.upload_part(self, req)
  local u, answer = self:upload_of(req)
  if not u then return table.unpack(answer) end
  local n = math.tointeger(tonumber(req.params.part))
  if not n or n < 1 or n > u.total then
    return self:fail("VALIDATION_ERROR", ("partNumber must be 1 to %d"):format(u.total))
  end
  local want = math.min(u.part_size, u.size - (n - 1) * u.part_size)
  if #req.body ~= want then
    return self:fail("VALIDATION_ERROR", ("part %d must be %d bytes, got %d"):format(n, want, #req.body))
  end
  u.parts[n] = ("%08x"):format(generic.hash(req.body))
  u.puts[n] = (u.puts[n] or 0) + 1
  return self:json(200, { mediaUploadId = req.params.upload, partNumber = n, etag = u.parts[n] })
end

function H.upload_complete(self, req)
  local c, answer = self:access_connection(req)
  if not c then return table.unpack(answer) end
  local b, ans = self:catalogue_request(catalogue.by_name["access.uploads.complete"], req)
  if not b then return table.unpack(ans) end
  local id = json.value(b.mediaUploadId)
  local u = self.uploads and type(id) == "string" and self.uploads[id]
  if not u or u.conn ~= c.id then return self:fail("NOT_FOUND", "upload not found") end
  for n = 1, u.total do
    if not u.parts[n] then return self:fail("VALIDATION_ERROR", ("part %d is missing"):format(n)) end
  end
  u.done = true
  return self:json(200, { mediaUploadId = id, media = media_of(u, id) })
end

--- /v2/access/proxy/<OnlyFans path>: GET /users/me answers the creator's
-- profile; anything else is echoed (method, path, query, body).
function H.proxy(self, req)
  local c, answer = self:access_connection(req)
  if not c then return table.unpack(answer) end
  local of_path = req.path:gsub("^/v2/access/proxy", "")
  if req.method == "GET" and of_path == "/users/me" then
    local u = c.userData
    return self:json(200, { id = tonumber(u.id), username = u.username, name = u.name,
      subscribersCount = self.cfg.subscribers })
  end
  local body = json.null
  if req.body ~= "" then body = json.decode(req.body) or req.body end
  local query = req.query
  if next(query) == nil then query = json.null end
  return self:json(200, { proxied = true, method = req.method, path = of_path, query = query, body = body })
end

---------------------------------------------------------------- Link pages

function App:base_url(req)
  local base = self.dict:get("base_url")
  if base then return base end
  local host = req.headers.host
  if host and host:match("^[%w%.%-%[%]:]+$") then return "http://" .. host end
  return ("http://%s:%d"):format(self.cfg.host, self.cfg.port)
end

function App:find_session(id)
  return self.model:session(id) or self.model:session_by_secret(id)
end

-- End a Link session. Returns the redirect URL and the connection (success),
-- or nil, code, message.
function App:complete(s, outcome, step, error_code)
  local status = self.model:session_status(s)
  if status == "expired" then return nil, "LINK_SESSION_EXPIRED", "the link session has expired" end
  if status ~= "pending" then return nil, "CONFLICT", "the link session is already " .. status end
  if not M.OUTCOMES[outcome] then
    return nil, "VALIDATION_ERROR", "outcome must be success, cancelled or error"
  end
  if step ~= nil and (type(step) ~= "string" or #step > 64) then
    return nil, "VALIDATION_ERROR", "step must be a short string"
  end
  if error_code ~= nil and (type(error_code) ~= "string" or #error_code > 64) then
    return nil, "VALIDATION_ERROR", "error_code must be a short string"
  end
  local params = { status = outcome, client_reference_id = s.clientReferenceId }
  local c
  if outcome == "success" then
    if not self:queue_room() then return nil, "SERVICE_UNAVAILABLE", "webhook queue is full" end
    if s.connectionId then
      c = self.model:connection(s.connectionId)
      if not c then return nil, "NOT_FOUND", "the connection to reconnect no longer exists" end
      self.model:reactivate(c, s.clientReferenceId)
      self:emit_connection("connection.updated", c)
    else
      local err
      c, err = self.model:create_connection(s.clientReferenceId, s.env)
      if not c then return nil, "CONFLICT", err end
      self:emit_connection("connection.created", c)
    end
    params.connection_id = c.id
    s.result = { connectionId = c.id }
  elseif outcome == "cancelled" then
    params.step = step or M.DEFAULT_STEP
    s.result = { step = params.step }
  else
    params.step = step
    params.error_code = error_code or M.DEFAULT_ERROR_CODE
    s.result = { step = step, errorCode = params.error_code }
  end
  s.awaiting_2fa = nil
  s.status = M.OUTCOMES[outcome]
  self:persist()
  return M.callback_url(s.redirectUrl, params), c
end

--- POST /emulator/link/{session}/2fa {options?}: the user logged in and
-- OnlyFans asks for a second factor: the session shows awaiting_2fa until
-- it is completed.
function H.two_factor(self, req)
  local s = self:find_session(req.params.session)
  if not s then return self:fail("NOT_FOUND", "link session not found") end
  if self.model:session_status(s) ~= "pending" then
    return self:fail("CONFLICT", "the link session is not pending")
  end
  local b, err = body_object(req, true)
  if not b then return self:fail("VALIDATION_ERROR", err) end
  local options = json.value(b.options) or { "app" }
  local allowed = { phone = true, app = true, face = true, forceFace = true }
  if type(options) ~= "table" or #options == 0 then
    return self:fail("VALIDATION_ERROR", "options must be a non-empty array")
  end
  for _, o in ipairs(options) do
    if not allowed[o] then return self:fail("VALIDATION_ERROR", "options: phone, app, face or forceFace") end
  end
  s.opened, s.awaiting_2fa, s.two_factor_options = true, true, options
  self:persist()
  return self:json(200, self.model:session_json(s))
end

function H.complete(self, req)
  local s = self:find_session(req.params.session)
  if not s then return self:fail("NOT_FOUND", "link session not found") end
  local b, err = body_object(req, true)
  if not b then return self:fail("VALIDATION_ERROR", err) end
  local outcome = json.value(b.outcome) or "success"
  local url, c, msg = self:complete(s, outcome, json.value(b.step), json.value(b.error_code))
  if not url then return self:fail(c, msg) end
  return self:json(200, {
    status = outcome, redirectUrl = url, connectionId = c and c.id or json.null,
  }, { location = url })
end

local HTML = { ["content-type"] = "text/html; charset=utf-8", ["cache-control"] = "no-store" }

function H.page(self, req)
  local s = self:find_session(req.params.session)
  if not s then return 404, link_page.closed("unknown"), HTML end
  local status = self.model:session_status(s)
  if status ~= "pending" then return 410, link_page.closed(status), HTML end
  s.opened = true -- GET /v2/link/{clientSecret}: initialized -> pending
  return 200, link_page.render(s, "/link/" .. s.id, self.cfg.permissions, model_mod.iso(s.expiresAt)), HTML
end

function H.page_post(self, req)
  local s = self:find_session(req.params.session)
  if not s then return 404, link_page.closed("unknown"), HTML end
  local form = link_page.parse_form(req.body)
  local step = form.step ~= "" and form.step or nil
  local error_code = form.error_code ~= "" and form.error_code or nil
  if form.outcome == "success" then step, error_code = nil, nil end
  if form.outcome == "cancelled" then error_code = nil end
  local url, code, msg = self:complete(s, form.outcome, step, error_code)
  if not url then
    local status = M.ERRORS[code] or 400
    return status, link_page.closed(msg), HTML
  end
  return 303, "", { location = url, ["cache-control"] = "no-store" }
end

---------------------------------------------------------------- control API

function H.health(self)
  return self:json(200, { ok = true })
end

function H.state(self)
  local cfg = self.cfg
  local records = delivery.records(self.dict)
  local counts = {}
  for _, r in ipairs(records) do counts[r.state] = (counts[r.state] or 0) + 1 end
  local summary = self.model:summary()
  local url = delivery.webhook_url(self.dict, cfg)
  summary.config = {
    api_keys = #cfg.api_keys, -- how many, never which
    signing = cfg.signing, error_shape = cfg.error_shape,
    webhook = url and (url:match("^%a+://[^/?#]*") or "?") or json.null,
    webhook_attempts = cfg.webhook_attempts, webhook_timeout_ms = cfg.webhook_timeout_ms,
    webhook_base_delay = cfg.webhook_base_delay,
    redirect_uris = json.array(cfg.redirect_uris), subscribers = cfg.subscribers,
    persistent = cfg.state ~= nil, can_drop = self.can_drop,
  }
  summary.faults = json.array(self.faults:list())
  summary.deliveries = counts
  return self:json(200, summary)
end

function H.deliveries(self, req)
  local state = req.query.state
  if state == "" then state = nil end
  return self:json(200, { list = json.array(delivery.records(self.dict, state)) })
end

function H.faults_list(self)
  return self:json(200, { list = json.array(self.faults:list()) })
end

function H.faults_add(self, req)
  local b, err = body_object(req)
  if not b then return self:fail("VALIDATION_ERROR", err) end
  local specs = b
  if b.kind ~= nil then specs = { b } elseif type(b.faults) == "table" then specs = b.faults end
  if #specs == 0 then return self:fail("VALIDATION_ERROR", "give a fault {kind, ...} or {faults: [...]}") end
  local added = {}
  for _, spec in ipairs(specs) do
    local rule, msg = self.faults:add(spec)
    if not rule then return self:fail("VALIDATION_ERROR", msg, { added = #added }) end
    added[#added + 1] = rule
  end
  return self:json(201, { list = added })
end

function H.faults_clear(self)
  return self:json(200, { cleared = self.faults:clear() })
end

-- Point deliveries at another URL (the same as emu:set_webhook_url).
function H.webhook_set(self, req)
  local b, err = body_object(req)
  if not b then return self:fail("VALIDATION_ERROR", err) end
  local url = json.value(b.url)
  if not config.parse_url(url) then
    return self:fail("VALIDATION_ERROR", "url must be an http(s) URL", { field = "url" })
  end
  if not self.cfg.webhook_secret then
    return self:fail("CONFLICT", "the emulator was started without a webhook secret")
  end
  local ok, why = self.dict:set(delivery.URL_KEY, url)
  if not ok then return self:fail("SERVICE_UNAVAILABLE", tostring(why)) end
  return self:json(200, { webhook = url:match("^%a+://[^/?#]*") })
end

function H.rules_get(self)
  return self:json(200, self.model.rules)
end

function H.rules_set(self, req)
  local b, err = body_object(req, true)
  if not b then return self:fail("VALIDATION_ERROR", err) end
  local rules = b.rules
  if rules == nil then rules = b end
  if type(rules) ~= "table" then return self:fail("VALIDATION_ERROR", "rules must be a JSON object") end
  if not self:queue_room() then return self:fail("SERVICE_UNAVAILABLE", "webhook queue is full") end
  local r = self.model:set_rules(rules)
  self:persist()
  local n = self:emit("rules.updated", { rules = r.rules, revision = r.revision }, "rules", false)
  return self:json(200, { revision = r.revision, event = n })
end

function H.send(self, req)
  local b, err = body_object(req)
  if not b then return self:fail("VALIDATION_ERROR", err) end
  local t = json.value(b.type)
  if type(t) ~= "string" or not t:match("^[%w_%.%-]+$") or #t > 100 then
    return self:fail("VALIDATION_ERROR", "type must be an event type such as connection.created",
      { field = "type" })
  end
  local data, key, live = json.value(b.data), t, b.live == true
  local cid = json.value(b.connection_id)
  if cid ~= nil then
    local c = self.model:connection(cid)
    if not c then return self:fail("NOT_FOUND", "connection not found", { field = "connection_id" }) end
    data = data or model_mod.connection_event_data(c)
    key, live = c.id, c.env == "production"
  elseif type(data) == "table" and type(data.connection) == "table"
    and type(data.connection.id) == "string" then
    key = data.connection.id
  end
  if data ~= nil and type(data) ~= "table" then
    return self:fail("VALIDATION_ERROR", "data must be a JSON object", { field = "data" })
  end
  if not self:queue_room() then return self:fail("SERVICE_UNAVAILABLE", "webhook queue is full") end
  local n, id = self:emit(t, data or {}, key, live)
  if not n then return self:fail("SERVICE_UNAVAILABLE", id) end
  return self:json(202, { event = n, id = id })
end

---------------------------------------------------------------- routing

--- The route table: {method ("*" = any), path pattern (":name" segments,
-- a final "*" = one or more segments), handler, api (needs an API key)}.
function M.routes()
  local routes = {
    { "GET", "/v2/account/whoami", H.whoami, true },
    { "POST", "/v2/link/init", H.link_init, true },
    { "GET", "/v2/link/:secret", H.link_get, true },
    { "DELETE", "/v2/link/:secret", H.link_delete, true },
    { "GET", "/v2/account/connections", H.connections, true },
    { "GET", "/v2/connections", H.connections, true },
    { "GET", "/v2/account/connections/:id", H.connection, true },
    { "GET", "/v2/connections/:id", H.connection, true },
    { "DELETE", "/v2/account/connections/:id", H.disconnect, true },
    { "DELETE", "/v2/connections/:id", H.disconnect, true },
    { "POST", "/v2/account/connections/:id/invalidate", H.expire, true },
    { "POST", "/v2/account/connections/import", H.import, true },
    { "PATCH", "/v2/account/connections/import/:connectionId", H.update_import, true },
    { "GET", "/v2/account/connections/:connectionId/settings", H.conn_settings, true },
    { "PATCH", "/v2/account/connections/:connectionId/settings", H.conn_settings, true },
    { "GET", "/v2/access/self", H.access_self, true },
    { "GET", "/v2/access/subscribers", H.access_subscribers, true },
    { "POST", "/v2/access/uploads/init", H.upload_init, true },
    { "PUT", "/v2/access/uploads/:upload", H.upload_single, true },
    { "PUT", "/v2/access/uploads/:upload/parts/:part", H.upload_part, true },
    { "POST", "/v2/access/uploads/complete", H.upload_complete, true },
    { "*", "/v2/access/proxy/*", H.proxy, true },
  }
  -- every other catalogue endpoint, answered from its entry; literal
  -- segments win over parameters (/users/lists before /users/:userId)
  local generic_routes = {}
  for i, e in ipairs(catalogue.entries) do
    local pattern, params = e.path:gsub("{([^}]+)}", ":%1")
    generic_routes[#generic_routes + 1] = { e.method, pattern,
      function(self, req) return H.catalogue(self, req, e) end, true, order = params * 1000 + i }
  end
  table.sort(generic_routes, function(a, b) return a.order < b.order end)
  for _, r in ipairs(generic_routes) do routes[#routes + 1] = r end
  -- any other Access path echoes the request (for generic request() tests)
  routes[#routes + 1] = { "*", "/v2/access/*", H.access_echo, true }
  for _, r in ipairs({
    { "GET", "/link/:session", H.page },
    { "POST", "/link/:session", H.page_post },
    { "POST", "/emulator/link/:session/complete", H.complete },
    { "POST", "/emulator/link/:session/2fa", H.two_factor },
    { "GET", "/emulator/health", H.health },
    { "GET", "/emulator/state", H.state },
    { "GET", "/emulator/deliveries", H.deliveries },
    { "GET", "/emulator/faults", H.faults_list },
    { "POST", "/emulator/faults", H.faults_add },
    { "DELETE", "/emulator/faults", H.faults_clear },
    { "POST", "/emulator/connections/:id/expire", H.expire },
    { "GET", "/emulator/rules", H.rules_get },
    { "POST", "/emulator/rules", H.rules_set },
    { "POST", "/emulator/webhooks/send", H.send },
    { "PUT", "/emulator/webhook", H.webhook_set },
  }) do routes[#routes + 1] = r end
  return routes
end

local function split(path)
  local segs = {}
  for s in path:gmatch("[^/]+") do segs[#segs + 1] = s end
  return segs
end

local function match(pattern, segs)
  local params = {}
  local ps = split(pattern)
  for i, p in ipairs(ps) do
    if p == "*" then
      if #segs < i then return nil end
      return params
    end
    local s = segs[i]
    if s == nil then return nil end
    if p:sub(1, 1) == ":" then
      params[p:sub(2)] = s
    elseif p ~= s then
      return nil
    end
  end
  if #segs ~= #ps then return nil end
  return params
end

-- Route for (method, path): route, params; or nil, allowed methods.
function App:route(method, path)
  local segs = split(path)
  local allowed = {}
  for _, r in ipairs(self.routes) do
    local params = match(r[2], segs)
    if params then
      if r[1] == "*" or r[1] == method or (method == "HEAD" and r[1] == "GET") then
        return r, params
      end
      local seen = false
      for _, m in ipairs(allowed) do if m == r[1] then seen = true end end
      if not seen then allowed[#allowed + 1] = r[1] end
    end
  end
  return nil, allowed
end

local function lower_headers(h)
  local out = {}
  for k, v in pairs(h or {}) do out[k:lower()] = v end
  return out
end

-- Apply a fault rule: an answer (status, body, headers), or nil to go on.
function App:apply_fault(f)
  if f.kind == "rate_limit" then
    return self:fail("RATE_LIMIT_EXCEEDED", "rate limit exceeded", { retryAfter = f.retry_after },
      { ["retry-after"] = tostring(f.retry_after) })
  elseif f.kind == "server_error" then
    return self:fail("INTERNAL_SERVER_ERROR", "internal server error (injected)", nil, nil, f.status)
  elseif f.kind == "slow" then
    self.sleep(f.delay_ms / 1000)
    return nil
  elseif f.kind == "drop" then
    return M.DROP
  elseif f.kind == "session_expired" then
    return self:fail("SESSION_EXPIRED", "the connection's session has expired; reconnect it")
  end
end

function App:dispatch(req)
  local path = req.path
  local r, params = self:route(req.method, path)
  if not r then
    if #params > 0 then
      return self:fail("METHOD_NOT_ALLOWED", "method not allowed", nil,
        { allow = table.concat(params, ", ") })
    end
    return self:fail("NOT_FOUND", "no such endpoint")
  end
  req.params = params
  if r[4] then
    local key = req.headers.apikey
    local known = false
    if type(key) == "string" then
      for _, k in ipairs(self.cfg.api_keys) do if k == key then known = true end end
    end
    if not known then
      return self:fail("UNAUTHORIZED", key and "invalid API key" or "missing API key (apikey header)")
    end
    req.api_key = key
    local f = self.faults:take(path, req.headers["x-connection-id"])
    if f then
      local status, body, headers = self:apply_fault(f)
      if status then return status, body, headers end
    end
  end
  return r[3](self, req)
end

--- Handle one request (fields as oflua.server gives them). Never raises for
-- bad input; returns status (or M.DROP), body, headers.
function App:handle(req)
  local started = self.now()
  req = {
    method = (req.method or "GET"):upper(),
    path = req.path or "/",
    query = req.query or {},
    raw_query = req.raw_query,
    headers = lower_headers(req.headers),
    body = req.body or "",
  }
  if #req.path > 1 then req.path = req.path:gsub("/+$", "") end
  local status, body, headers = self:dispatch(req)
  if req.method == "HEAD" and status ~= M.DROP then body = "" end
  if self.log then
    self.log(("emulator: %s %s -> %s (%.1f ms)"):format(req.method, M.redact_path(req.path),
      status == M.DROP and "dropped" or tostring(status), (self.now() - started) * 1000))
  end
  return status, body, headers
end

return M
