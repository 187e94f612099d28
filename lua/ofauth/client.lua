--- The OFAuth API client.
--
--   local ofauth = require("ofauth")
--   local client = assert(ofauth.client{api_key = os.getenv("OFAUTH_API_KEY")})
--   local me = assert(client:whoami())
--   for conn in client:connections() do print(conn.status) end
--   local acc = client:access(connection_id)
--   local profile = assert(acc:self())
--   for sub in acc:subscribers{type = "active"} do ... end
--   local posts = assert(acc:request("GET", "/posts", {query = {limit = 10}}))
--
-- Every method returns the decoded JSON answer, or nil and an ofauth.errors
-- error. Iterators (connections, subscribers, paginate) raise that error
-- object instead, so a loop never ends silently on a failure (wrap in pcall).
-- Retries, backoff and SESSION_EXPIRED follow the client's policy
-- (ofauth.policy).
local cjson = require("cjson")
local core = require("oflua.core")
local errors = require("ofauth.errors")
local log = require("ofauth.log")
local metrics = require("ofauth.metrics")
local policy_mod = require("ofauth.policy")
local redact = require("ofauth.redact")

local json = cjson.new()
json.decode_max_depth(64)

local M = {}

M.defaults = {
  base_url = "https://api.ofauth.com", -- the checklist's; the SDKs use https://api-next.ofauth.com
  timeout_ms = 30000,
  connect_timeout_ms = 10000,
  max_body = 16 * 1024 * 1024,
  page_size = 100,
}

-- Every path the library calls, in one table. `paths = "checklist"` selects
-- the checklist's spelling where it differs; any field can be overridden with
-- `paths = {connections = "/v2/connections"}`.
M.paths = {
  whoami = "/v2/account/whoami",
  link_init = "/v2/link/init",
  link_session = "/v2/link/{id}",
  connections = "/v2/account/connections", -- the SDKs' path
  connection = "/v2/account/connections/{id}",
  invalidate = "/v2/account/connections/{id}/invalidate",
  access_prefix = "/v2/access",
  access_self = "/v2/access/self",
  access_subscribers = "/v2/access/subscribers",
}
M.checklist_paths = { connections = "/v2/connections", connection = "/v2/connections/{id}" }

local function user_agent()
  return ("oflua/%s (ofauth-lua; %s)"):format(core.version, _VERSION)
end

local function urlencode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end
M.urlencode = urlencode

local function encode_query(q)
  if not q then return "" end
  local keys = {}
  for k, v in pairs(q) do
    if v ~= nil then keys[#keys + 1] = k end
  end
  if #keys == 0 then return "" end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = urlencode(k) .. "=" .. urlencode(q[k]) end
  return "?" .. table.concat(parts, "&")
end

local function fill(template, id)
  return (template:gsub("{id}", function() return urlencode(id) end))
end

-- A metrics label for a path: ids and numbers become ":id".
local function endpoint_label(path)
  local out = {}
  for seg in path:gmatch("[^/]+") do
    if seg:match("^%d+$") or seg:find("^conn_") or (#seg >= 16 and seg:find("%d")) then seg = ":id" end
    out[#out + 1] = seg
  end
  return "/" .. table.concat(out, "/")
end

-- Machine code and readable text of an error answer: `code`, else `type`
-- (the checklist), also inside an `error` object; `message`, else `error`.
local function error_fields(body)
  if type(body) ~= "table" then return nil, type(body) == "string" and body:sub(1, 200) or nil end
  local inner = type(body.error) == "table" and body.error or {}
  local code = body.code
  if type(code) ~= "string" then code = body.type end
  if type(code) ~= "string" then code = inner.code end
  if type(code) ~= "string" then code = inner.type end
  local msg = body.message
  if type(msg) ~= "string" then msg = body.error end
  if type(msg) ~= "string" then msg = inner.message end
  return type(code) == "string" and code or nil, type(msg) == "string" and msg or nil
end
M.error_fields = error_fields

-- JSON objects and arrays are decoded; anything else is kept as text.
local function decode_body(text)
  if text == "" then return "" end
  local ok, v = pcall(json.decode, text)
  if ok and type(v) == "table" then return v end
  return text
end

local Client = {}
Client.__index = Client
M.Client = Client

--- Make a client. opts: api_key (else $OFAUTH_API_KEY), base_url (else
-- $OFAUTH_BASE_URL, else M.defaults.base_url), timeout_ms, connect_timeout_ms,
-- policy (overrides of ofauth.policy.defaults), paths ("checklist" or a table
-- of overrides), connections (an ofauth.connections repository, to mark
-- connections expired), http (a function(req) -> resp | nil, err replacing
-- oflua.http.request), metrics (an ofauth.metrics-like object).
-- Returns nil, err (kind "invalid") when no API key is configured.
function M.new(opts)
  opts = opts or {}
  local key = opts.api_key
  if key == nil or key == "" then key = os.getenv("OFAUTH_API_KEY") end
  if key == nil or key == "" then
    return nil, errors.invalid("no API key: pass api_key or set OFAUTH_API_KEY")
  end
  if type(key) ~= "string" or key:find("[%c%s]") then
    return nil, errors.invalid("the API key must be a string without spaces or control characters")
  end
  redact.register_secret(key)
  local base = opts.base_url
  if base == nil or base == "" then base = os.getenv("OFAUTH_BASE_URL") end
  if base == nil or base == "" then base = M.defaults.base_url end
  if not base:match("^https?://[^/]") then
    return nil, errors.invalid("base_url must be an http(s) URL, got " .. tostring(base))
  end
  local paths = {}
  for k, v in pairs(M.paths) do paths[k] = v end
  local over = opts.paths == "checklist" and M.checklist_paths or opts.paths
  for k, v in pairs(type(over) == "table" and over or {}) do paths[k] = v end
  local self = {
    api_key = key,
    base_url = base:gsub("/+$", ""),
    timeout_ms = opts.timeout_ms or M.defaults.timeout_ms,
    connect_timeout_ms = opts.connect_timeout_ms or M.defaults.connect_timeout_ms,
    max_body = opts.max_body or M.defaults.max_body,
    policy = policy_mod.new(opts.policy),
    paths = paths,
    repo = opts.connections, -- not `connections`: that is the method listing them
    http = opts.http,
    metrics = opts.metrics or metrics,
    user_agent = opts.user_agent or user_agent(),
  }
  -- The key must not show up when someone prints the client.
  return setmetatable(self, Client)
end

Client.__tostring = function(c) return ("ofauth client (%s)"):format(c.base_url) end

local function transport(self)
  if not self.http then self.http = require("oflua.http").request end
  return self.http
end

-- Reaction to SESSION_EXPIRED: mark, notify once per expiry, never retry.
-- With a connections repository the "once" is kept there (shared with the
-- connection.expired webhook); without one the hook runs on every such answer.
local function session_expired(self, conn_id, ctx)
  log.warn("ofauth.session_expired", { path = ctx.path, connection_id = conn_id })
  local hook = self.policy.on_reauth_required
  if conn_id and self.repo then
    local ok, rec = pcall(self.repo.mark_expired, self.repo, conn_id, "session_expired")
    if ok and rec then
      pcall(self.repo.notify_reauth, self.repo, rec, ctx, hook) -- failures are logged there
      return
    end
  end
  self.metrics.session_expired()
  if hook then
    local ok, err = pcall(hook, { connection_id = conn_id }, ctx)
    if not ok then log.error("ofauth.reauth_hook_failed", { error = tostring(err) }) end
  end
end

--- Any API call. opts: query (table), body (table -> JSON, or a string sent
-- as is), headers, connection_id (sent as x-connection-id), idempotent (retry
-- on network errors/5xx even for POST), timeout_ms, endpoint (metrics label).
-- Returns the decoded answer (a string when not JSON), and {status, headers,
-- attempts}; or nil, err.
function Client:request(method, path, opts)
  opts = opts or {}
  if type(method) ~= "string" or not method:match("^%u+$") then
    return nil, errors.invalid("method must be an upper-case HTTP method")
  end
  if type(path) ~= "string" or path:sub(1, 1) ~= "/" or path:find("[%s%c?#]") then
    return nil, errors.invalid("path must start with '/' and hold no spaces, '?' or '#'")
  end
  local headers = {
    ["apikey"] = self.api_key,
    ["accept"] = "application/json",
    ["user-agent"] = self.user_agent,
  }
  local body = opts.body
  if type(body) == "table" then
    local ok, enc = pcall(json.encode, body)
    if not ok then return nil, errors.invalid("body cannot be encoded as JSON: " .. tostring(enc)) end
    body = enc
  end
  if body ~= nil then headers["content-type"] = "application/json" end
  if opts.connection_id then
    if type(opts.connection_id) ~= "string" or opts.connection_id:find("[%c%s]") then
      return nil, errors.invalid("connection id must be a string without spaces")
    end
    headers["x-connection-id"] = opts.connection_id
  end
  for k, v in pairs(opts.headers or {}) do headers[k:lower()] = v end

  local req = {
    method = method,
    url = self.base_url .. path .. encode_query(opts.query),
    headers = headers,
    body = body,
    timeout_ms = opts.timeout_ms or self.timeout_ms,
    connect_timeout_ms = self.connect_timeout_ms,
    max_body = self.max_body,
  }
  local pol, send = self.policy, transport(self)
  local label = opts.endpoint or endpoint_label(path)
  local attempt, waited = 0, 0
  while true do
    attempt = attempt + 1
    local t0 = core.monotonic()
    local resp, terr = send(req)
    local elapsed = core.monotonic() - t0
    local status = resp and resp.status or nil
    local decoded, code, message
    if resp then
      decoded = decode_body(resp.body or "")
      code, message = error_fields(decoded)
    end
    self.metrics.api_call(label, status or ("error_" .. tostring(terr and terr.kind)), elapsed)
    local outcome = policy_mod.classify(pol, status or 0, code, terr)
    if outcome == "ok" then
      return decoded, { status = status, headers = resp.headers, attempts = attempt }
    end
    local ctx = {
      attempt = attempt, waited = waited, method = method, idempotent = opts.idempotent,
      transport = terr and terr.kind,
      retry_after = resp and policy_mod.retry_after(resp.headers and resp.headers["retry-after"], pol.now()),
    }
    if outcome == "session_expired" then
      local e = errors.new("reauth_required", {
        status = status, code = code, message = message or "the connection's session expired",
        method = method, path = path, attempts = attempt, body = decoded,
      })
      session_expired(self, opts.connection_id, { method = method, path = e.path, error = e })
      return nil, e
    end
    if outcome == "rate_limited" then self.metrics.rate_limited() end
    local delay = policy_mod.next_delay(pol, outcome, ctx)
    if not delay then
      if terr then
        return nil, errors.new("network", {
          message = tostring(terr.message or terr.kind), transport = terr.kind,
          method = method, path = path, attempts = attempt,
        })
      end
      return nil, errors.new(outcome == "rate_limited" and "rate_limited" or "api", {
        status = status, code = code, message = message, method = method, path = path,
        attempts = attempt, body = decoded, retry_after = ctx.retry_after,
      })
    end
    local reason = terr and ("network_" .. tostring(terr.kind)) or outcome
    self.metrics.retry(reason)
    log.info("ofauth.retry", { method = method, path = path, attempt = attempt, delay = delay,
      reason = reason, status = status })
    if pol.on_retry then
      pcall(pol.on_retry, { attempt = attempt, delay = delay, reason = reason, method = method,
        path = redact.text(path), status = status })
    end
    pol.sleep(delay)
    waited = waited + delay
  end
end

--- One page: GET path with limit/offset -> the page table {list, hasMore, nextOffset}.
function Client:page(path, opts)
  opts = opts or {}
  local q = {}
  for k, v in pairs(opts.query or {}) do q[k] = v end
  q.limit = opts.limit or M.defaults.page_size
  q.offset = opts.offset or 0
  local body, meta = self:request("GET", path, { query = q, connection_id = opts.connection_id,
    endpoint = opts.endpoint })
  if not body then return nil, meta end
  if type(body) ~= "table" or type(body.list) ~= "table" then
    return nil, errors.new("api", { message = "expected a page {list, hasMore}", method = "GET",
      path = path, status = meta and meta.status })
  end
  return body, meta
end

--- Iterate over every item of a paginated list. Next page: `nextOffset` when
-- present, else offset + #list; stops when hasMore is false or a page is
-- empty (or `max_items` reached). Raises the error object on failure.
-- opts: query, limit (page size), offset, connection_id, max_items, on_page(page, offset).
function Client:paginate(path, opts)
  opts = opts or {}
  local offset = opts.offset or 0
  local list, idx, done, count = nil, 0, false, 0
  return function()
    while true do
      if opts.max_items and count >= opts.max_items then return nil end
      if list and idx < #list then
        idx = idx + 1
        count = count + 1
        return list[idx]
      end
      if done then return nil end
      local page, err = self:page(path, { query = opts.query, limit = opts.limit, offset = offset,
        connection_id = opts.connection_id, endpoint = opts.endpoint })
      if not page then error(err, 0) end
      if opts.on_page then opts.on_page(page, offset) end
      list, idx = page.list, 0
      -- cjson decodes every number as a float: offsets go back as integers
      local next_offset = math.tointeger(tonumber(page.nextOffset) or offset + #list) or offset + #list
      if page.hasMore ~= true or #list == 0 or next_offset <= offset then
        done = true
      else
        offset = next_offset
      end
    end
  end
end

function Client:whoami()
  return self:request("GET", self.paths.whoami, { endpoint = "whoami" })
end

--- Start a Link session. opts (snake_case): redirect_url, client_reference_id,
-- connection_id (reconnect), client_app_id, geolocation {country, state, city}.
-- Returns {url, expires_at, client_secret, raw} (hosted `url` and/or the
-- white-label `clientSecret`).
function Client:link_init(opts)
  opts = opts or {}
  if type(opts.redirect_url) ~= "string" or not opts.redirect_url:match("^https?://") then
    return nil, errors.invalid("link_init: redirect_url (an http(s) URL) is required")
  end
  if opts.client_reference_id ~= nil and type(opts.client_reference_id) ~= "string" then
    return nil, errors.invalid("link_init: client_reference_id must be a string")
  end
  local body = {
    redirectUrl = opts.redirect_url,
    clientReferenceId = opts.client_reference_id,
    connectionId = opts.connection_id,
    clientAppId = opts.client_app_id,
    geolocation = opts.geolocation,
  }
  local res, err = self:request("POST", self.paths.link_init, { body = body, endpoint = "link_init" })
  if not res then return nil, err end
  if type(res) ~= "table" or (type(res.url) ~= "string" and type(res.clientSecret) ~= "string") then
    return nil, errors.new("api", { message = "link/init answer has neither url nor clientSecret",
      method = "POST", path = self.paths.link_init })
  end
  local expires = res.expiresAt
  return {
    url = type(res.url) == "string" and res.url or nil,
    client_secret = type(res.clientSecret) == "string" and res.clientSecret or nil,
    expires_at = expires ~= cjson.null and expires or nil,
    raw = res,
  }
end

--- Iterate over every connection (all pages). opts: limit (page size), query.
function Client:connections(opts)
  opts = opts or {}
  return self:paginate(self.paths.connections, { limit = opts.limit, query = opts.query,
    max_items = opts.max_items, on_page = opts.on_page, endpoint = "connections" })
end

function Client:connection(id)
  if type(id) ~= "string" or id == "" then return nil, errors.invalid("connection id required") end
  return self:request("GET", fill(self.paths.connection, id), { endpoint = "connection" })
end

function Client:disconnect(id)
  if type(id) ~= "string" or id == "" then return nil, errors.invalid("connection id required") end
  return self:request("DELETE", fill(self.paths.connection, id), { endpoint = "disconnect" })
end

--- Cancel a Link session that has not completed, by its clientSecret.
function Client:cancel_link(client_secret)
  if type(client_secret) ~= "string" or client_secret == "" then
    return nil, errors.invalid("client secret required")
  end
  redact.register_secret(client_secret) -- it is a credential for that session
  return self:request("DELETE", fill(self.paths.link_session, client_secret), { endpoint = "link_session" })
end

function Client:invalidate(id)
  if type(id) ~= "string" or id == "" then return nil, errors.invalid("connection id required") end
  return self:request("POST", fill(self.paths.invalidate, id), { endpoint = "invalidate" })
end

-- Access API, on behalf of one connection.
local Access = {}
Access.__index = Access
Access.__tostring = function(a) return "ofauth access (" .. redact.id(a.connection_id) .. ")" end

function Client:access(connection_id)
  if type(connection_id) ~= "string" or connection_id == "" then
    error("access: a connection id (string) is required", 2)
  end
  return setmetatable({ client = self, connection_id = connection_id }, Access)
end

-- "/posts" -> "/v2/access/posts"; full "/v2/..." paths are kept.
function Access:path(p)
  if p:sub(1, 4) == "/v2/" then return p end
  if p:sub(1, 1) ~= "/" then p = "/" .. p end
  return self.client.paths.access_prefix .. p
end

--- Any Access API call (every method, every /v2/access/... path).
function Access:request(method, path, opts)
  if type(path) ~= "string" then return nil, errors.invalid("path must be a string") end
  opts = opts or {}
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.connection_id = self.connection_id
  return self.client:request(method, self:path(path), o)
end

function Access:self()
  return self.client:request("GET", self.client.paths.access_self,
    { connection_id = self.connection_id, endpoint = "access_self" })
end

--- Iterate over subscribers. opts: type (all|active|expired|latest), limit
-- (page size), max_items, on_page.
function Access:subscribers(opts)
  opts = opts or {}
  return self.client:paginate(self.client.paths.access_subscribers, {
    query = { type = opts.type or "all" }, limit = opts.limit, offset = opts.offset,
    connection_id = self.connection_id, max_items = opts.max_items, on_page = opts.on_page,
    endpoint = "access_subscribers" })
end

--- Iterate over any paginated Access API list.
function Access:paginate(path, opts)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.connection_id = self.connection_id
  return self.client:paginate(self:path(path), o)
end

return M
