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
--   -- every endpoint of the catalogue (ofauth.catalogue), by its TypeScript SDK name:
--   local me = assert(client:call("account.whoami"))
--   local tx = assert(acc:call("access.earnings.listTransactions", {startDate = "2026-01-01"}))
--   local same = assert(acc.earnings:list_transactions{startDate = "2026-01-01"})
--   for t in acc:each("access.earnings.listTransactions", {startDate = "2026-01-01"}) do ... end
--
-- Convention (the whole public API): programming errors (a wrong argument
-- type, an unknown operation name) raise; everything the network or the data
-- can cause returns nil and an ofauth.errors object (kind "invalid" for
-- parameters refused before any request). Iterators (each, connections,
-- subscribers, paginate) raise that error object instead, so a loop never
-- ends silently on a failure (wrap in pcall). Retries, backoff and
-- SESSION_EXPIRED follow the client's own policy (ofauth.policy), called
-- through the instance.
local catalogue = require("ofauth.catalogue")
local core = require("oflua.core")
local errors = require("ofauth.errors")
local json = require("ofauth.json")
local metrics = require("ofauth.metrics")
local pagination = require("ofauth.pagination")
local policy_mod = require("ofauth.policy")
local redact = require("ofauth.redact")
local timeutil = require("ofauth.timeutil")

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

local function is_array(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n == #t
end

-- One query value as text: booleans true/false, integers exactly.
local function scalar_text(v)
  local t = type(v)
  if t == "string" then return v end
  if t == "boolean" then return v and "true" or "false" end
  if t == "number" then
    if math.type(v) == "integer" then return ("%d"):format(v) end
    if v == math.floor(v) and math.abs(v) < 2 ^ 63 then return ("%d"):format(math.tointeger(v)) end
    return ("%.17g"):format(v)
  end
  return nil
end

--- The query string of `q` (keys sorted): arrays as repeated keys
-- (`ids=1&ids=2`, as the TypeScript SDK sends them) and an object as
-- deep-object keys (`filter[online]=1`: the SDKs leave the wire format of
-- the object-valued `filter` undefined; this is the common convention, see
-- ofauth-endpoints.md 1.3). Returns the text ("" or "?..."), or nil, message.
local function encode_query(q)
  if not q then return "" end
  local keys = {}
  for k, v in pairs(q) do
    if v ~= nil and v ~= json.null then keys[#keys + 1] = k end
  end
  if #keys == 0 then return "" end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do
    local v = q[k]
    if type(v) == "table" then
      if is_array(v) then
        for _, x in ipairs(v) do
          local txt = scalar_text(x)
          if not txt then return nil, ("query %s: array items must be scalars"):format(k) end
          parts[#parts + 1] = urlencode(k) .. "=" .. urlencode(txt)
        end
      else
        local sub = {}
        for sk in pairs(v) do sub[#sub + 1] = tostring(sk) end
        table.sort(sub)
        for _, sk in ipairs(sub) do
          local txt = scalar_text(v[sk])
          if not txt then return nil, ("query %s[%s]: values must be scalars"):format(k, sk) end
          parts[#parts + 1] = urlencode(k) .. "%5B" .. urlencode(sk) .. "%5D=" .. urlencode(txt)
        end
      end
    else
      local txt = scalar_text(v)
      if not txt then return nil, ("query %s: a %s cannot be sent"):format(k, type(v)) end
      parts[#parts + 1] = urlencode(k) .. "=" .. urlencode(txt)
    end
  end
  if #parts == 0 then return "" end
  return "?" .. table.concat(parts, "&")
end
M.encode_query = encode_query

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

-- JSON objects and arrays are decoded (integers exact); anything else is
-- kept as text.
local function decode_body(text)
  if text == "" then return "" end
  local v = json.decode(text)
  if type(v) == "table" then return v end
  return text
end

local Client = {}
M.Client = Client
local Access = {}
M.Access = Access

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
  return setmetatable(self, M.client_mt)
end


local function transport(self)
  if not self.http then self.http = require("oflua.http").request end
  return self.http
end

--- Any API call. opts: query (table), body (table -> JSON, or a string sent
-- as is), headers, connection_id (sent as x-connection-id), idempotent (retry
-- on network errors/5xx even for POST), timeout_ms, deadline (seconds for the
-- whole call, attempts and waits; else the policy's), endpoint (metrics label).
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
  elseif body ~= nil and type(body) ~= "string" then
    return nil, errors.invalid("body must be a table or a string")
  end
  if body ~= nil then headers["content-type"] = "application/json" end
  if opts.connection_id then
    if type(opts.connection_id) ~= "string" or opts.connection_id:find("[%c%s]") then
      return nil, errors.invalid("connection id must be a string without spaces")
    end
    headers["x-connection-id"] = opts.connection_id
  end
  for k, v in pairs(opts.headers or {}) do
    if type(k) ~= "string" or not k:match("^[%w!#$%%&'*+.^_`|~-]+$") then
      return nil, errors.invalid("header names must be tokens")
    end
    v = tostring(v)
    if v:find("[\r\n%z]") then
      return nil, errors.invalid(("header %s holds a CR, LF or NUL"):format(k))
    end
    headers[k:lower()] = v
  end
  local qs, qerr = encode_query(opts.query)
  if not qs then return nil, errors.invalid(qerr) end

  local pol, send = self.policy, transport(self)
  local deadline = opts.deadline or pol.deadline
  local started = pol.monotonic()
  local req = {
    method = method,
    url = self.base_url .. path .. qs,
    headers = headers,
    body = body,
    timeout_ms = opts.timeout_ms or self.timeout_ms,
    connect_timeout_ms = self.connect_timeout_ms,
    max_body = self.max_body,
  }
  local label = opts.endpoint or endpoint_label(path)
  local attempt, waited = 0, 0
  while true do
    attempt = attempt + 1
    local remaining
    if deadline then
      remaining = deadline - (pol.monotonic() - started)
      if remaining <= 0 then
        return nil, errors.new("network", { message = "deadline exceeded", transport = "timeout",
          method = method, path = path, attempts = attempt - 1 })
      end
      req.timeout_ms = math.max(1, math.min(opts.timeout_ms or self.timeout_ms,
        math.floor(remaining * 1000)))
    end
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
    local outcome = pol:classify(status or 0, code, terr, { method = method, path = path, body = decoded })
    if outcome == "ok" then
      return decoded, { status = status, headers = resp.headers or {}, attempts = attempt }
    end
    if outcome == "invalid" then
      return nil, errors.new("invalid", { message = tostring(terr and (terr.message or terr.kind) or message),
        transport = terr and terr.kind, method = method, path = path, attempts = attempt })
    end
    local ra = resp and resp.headers and resp.headers["retry-after"]
    local ctx = {
      attempt = attempt, waited = waited, method = method, idempotent = opts.idempotent,
      transport = terr and terr.kind, status = status,
      retry_after = ra and pol:retry_after(ra, pol.now()) or nil,
      remaining = deadline and (deadline - (pol.monotonic() - started)) or nil,
    }
    if outcome == "session_expired" then
      local e = errors.new("reauth_required", {
        status = status, code = code or (status and status < 300 and "NOT_AUTHENTICATED" or nil),
        message = message or "the connection's session expired",
        method = method, path = path, attempts = attempt, body = decoded,
      })
      pol:on_session_expired(self, opts.connection_id, { method = method, path = e.path, error = e })
      return nil, e
    end
    if outcome == "rate_limited" then
      pol:on_rate_limited(self, { method = method, path = redact.text(path), attempt = attempt,
        retry_after = ctx.retry_after })
    end
    local delay = pol:next_delay(outcome, ctx)
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
    require("ofauth.log").info("ofauth.retry", { method = method, path = path, attempt = attempt,
      delay = delay, reason = reason, status = status })
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

---------------------------------------------------------------- catalogue calls

local function check_type(ty, v)
  local t = type(v)
  if ty == "scalar" then return t == "string" or t == "number" or t == "boolean" end
  if ty == "integer" then return t == "number" and math.tointeger(v) ~= nil end
  if ty == "id" then return t == "string" or (t == "number" and math.tointeger(v) ~= nil) end
  if ty == "array" then return t == "table" and is_array(v) end
  if ty == "array_or_string" then return t == "string" or (t == "table" and is_array(v)) end
  if ty == "object" then return t == "table" and (next(v) == nil or not is_array(v)) end
  return t == ty
end

local function id_text(v)
  if type(v) == "number" then return ("%d"):format(math.tointeger(v)) end
  return v
end

--- Check `params` (one flat table of wire names) against catalogue entry `e`
-- and split them: path, query, body. Returns them, or nil, an "invalid" error.
function M.build(e, params)
  params = params or {}
  if type(params) ~= "table" then
    return nil, errors.invalid(e.name .. ": parameters must be a table")
  end
  for k, v in pairs(params) do
    local where = type(k) == "string" and e.fields[k]
    if not where then
      local known = {}
      for f in pairs(e.fields) do known[#known + 1] = f end
      table.sort(known)
      return nil, errors.invalid(("%s: unknown field %s (fields: %s)"):format(e.name, tostring(k),
        #known > 0 and table.concat(known, ", ") or "none"))
    end
    local ty = catalogue.type_of(e, k)
    if v ~= json.null and not check_type(ty, v) then
      return nil, errors.invalid(("%s: field %s must be %s, got %s"):format(e.name, k,
        ty == "id" and "a string or an integer" or ty == "scalar" and "a string, number or boolean"
        or ty == "array_or_string" and "an array or a string" or "a" .. (ty:match("^[aeiou]") and "n " or " ") .. ty,
        type(v)))
    end
  end
  for f in pairs(e.required_set) do
    local v = params[f]
    if v == nil or v == json.null or v == "" then
      return nil, errors.invalid(("%s: missing required field %s"):format(e.name, f))
    end
  end
  local path = e.path:gsub("{([^}]+)}", function(p) return urlencode(id_text(params[p])) end)
  local query, body = nil, nil
  for k, v in pairs(params) do
    local where = e.fields[k]
    if where == "query" then
      query = query or {}
      query[k] = v
    elseif where == "body" then
      body = body or {}
      body[k] = v
    end
  end
  if not body and e.body and e.method ~= "GET" and e.method ~= "DELETE" then body = {} end
  return path, query, body
end

--- Call any catalogue operation by its TypeScript SDK name with one flat
-- table of wire-name fields (path, query and body together). Operations that
-- need a connection (Access, Vault+) are called on `client:access(id)`.
-- opts: the options of `request` (timeout_ms, deadline, idempotent, headers).
-- Raises for an unknown name; returns nil, err (kind "invalid") for bad
-- fields, before any request. (`connection_id` is how Access:call passes its
-- connection; call Access operations on client:access(id) instead.)
function Client:call(name, params, opts, connection_id)
  local e = catalogue.find(name)
  if not e then error(("ofauth: unknown operation %q (oflua ofauth ops lists them)"):format(tostring(name)), 2) end
  if e.connection and not connection_id then
    return nil, errors.invalid(e.name .. " needs a connection: call it on client:access(connection_id)")
  end
  local path, query, body = M.build(e, params)
  if not path then return nil, query end
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.query, o.body = query, body
  if e.connection then o.connection_id = connection_id end
  o.endpoint = o.endpoint or e.name -- metrics label (idempotency: the policy decides from the method)
  return self:request(e.method, path, o)
end

--- Iterate over every item of a paginated catalogue operation, page after
-- page, in the operation's pagination style (ofauth.pagination). opts:
-- max_items, max_pages, on_page(page, params), plus request options.
-- Raises for an unknown or non-paginated name; a failure raises the error
-- object from the loop (wrap in pcall).
function Client:each(name, params, opts, connection_id)
  local e = catalogue.find(name)
  if not e then error(("ofauth: unknown operation %q"):format(tostring(name)), 2) end
  local style = e.page and pagination.style(e.page)
  if not style then error(("ofauth: %s is not paginated (use call)"):format(e.name), 2) end
  opts = opts or {}
  local cur = {}
  for k, v in pairs(params or {}) do cur[k] = v end
  local items, idx, done, count, pages = nil, 0, false, 0, 0
  local req_opts = {}
  for k, v in pairs(opts) do
    if k ~= "max_items" and k ~= "max_pages" and k ~= "on_page" then req_opts[k] = v end
  end
  return function()
    while true do
      if opts.max_items and count >= opts.max_items then return nil end
      if items and idx < #items then
        idx = idx + 1
        count = count + 1
        return items[idx]
      end
      if done then return nil end
      if opts.max_pages and pages >= opts.max_pages then return nil end
      local page, err = self:call(e.name, cur, req_opts, connection_id)
      if not page then error(err, 0) end
      pages = pages + 1
      items = pagination.items(page, e.items)
      if not items then
        error(errors.new("api", { message = ("expected a page (%s) from %s"):format(e.items or "array", e.name),
          method = e.method, path = e.path }), 0)
      end
      idx = 0
      if opts.on_page then opts.on_page(page, cur) end
      local nxt = style.next(cur, page, items)
      if nxt then cur = nxt else done = true end
    end
  end
end

---------------------------------------------------------------- legacy helpers

function Client:whoami()
  return self:request("GET", self.paths.whoami, { endpoint = "whoami" })
end

--- Start a Link session. opts (snake_case): redirect_url, client_reference_id,
-- connection_id (reconnect), client_app_id, geolocation {country, state, city}.
-- Returns {url, expires_at (unix seconds), client_secret, raw} (hosted `url`
-- and/or the `clientSecret`; raw is the answer as sent).
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
  local secret = type(res.clientSecret) == "string" and res.clientSecret or nil
  if not secret and type(res.url) == "string" then
    -- the hosted URL ends with the session's secret (https://link.ofauth.com/s/cs_xxx)
    secret = res.url:match("/s/(cs_[%w_%-]+)$")
  end
  if secret then redact.register_secret(secret) end
  return {
    url = type(res.url) == "string" and res.url or nil,
    client_secret = secret,
    expires_at = timeutil.parse_iso(res.expiresAt ~= json.null and res.expiresAt or nil),
    raw = res,
  }
end

--- Iterate over every connection (all pages). opts: limit (page size), query.
function Client:connections(opts)
  opts = opts or {}
  return self:paginate(self.paths.connections, { limit = opts.limit, query = opts.query,
    max_items = opts.max_items, on_page = opts.on_page, endpoint = "connections" })
end

local function need_id(id, what)
  if type(id) ~= "string" or id == "" then error(what .. " (a non-empty string) is required", 3) end
end

function Client:connection(id)
  need_id(id, "connection id")
  return self:request("GET", fill(self.paths.connection, id), { endpoint = "connection" })
end

function Client:disconnect(id)
  need_id(id, "connection id")
  return self:request("DELETE", fill(self.paths.connection, id), { endpoint = "disconnect" })
end

--- Cancel a Link session that has not completed, by its clientSecret.
function Client:cancel_link(client_secret)
  need_id(client_secret, "client secret")
  redact.register_secret(client_secret) -- it is a credential for that session
  return self:request("DELETE", fill(self.paths.link_session, client_secret), { endpoint = "link_session" })
end

--- Status of a Link session by its clientSecret: {status, data?} as sent.
function Client:link_status(client_secret)
  need_id(client_secret, "client secret")
  redact.register_secret(client_secret)
  return self:call("link.get", { clientSecret = client_secret })
end

function Client:invalidate(id)
  need_id(id, "connection id")
  return self:request("POST", fill(self.paths.invalidate, id), { endpoint = "invalidate" })
end

---------------------------------------------------------------- Access

Access.__tostring = function(a) return "ofauth access (" .. redact.id(a.connection_id) .. ")" end

function Client:access(connection_id)
  if type(connection_id) ~= "string" or connection_id == "" then
    error("access: a connection id (string) is required", 2)
  end
  return setmetatable({ client = self, connection_id = connection_id }, M.access_mt)
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

--- A catalogue operation on behalf of this connection ("access." may be left out).
function Access:call(name, params, opts)
  return self.client:call(name, params, opts, self.connection_id)
end

--- Iterate over a paginated catalogue operation on behalf of this connection.
function Access:each(name, params, opts)
  return self.client:each(name, params, opts, self.connection_id)
end

--- The raw OnlyFans API through /v2/access/proxy/<path> (a leading /api2/v2
-- is dropped, as the SDKs do). opts: query, body, headers, timeout_ms.
function Access:proxy(method, path, opts)
  if type(method) ~= "string" then error("proxy: method must be a string", 2) end
  if type(path) ~= "string" or path == "" then error("proxy: path must be a string", 2) end
  method = method:upper()
  if path:sub(1, 1) ~= "/" then path = "/" .. path end
  path = path:gsub("^/api2/v2/", "/")
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.connection_id = self.connection_id
  o.endpoint = o.endpoint or "proxy"
  return self.client:request(method, "/v2/access/proxy" .. path, o)
end

--- Upload a file to the vault (init -> one PUT or numbered part PUTs ->
-- complete). See ofauth.upload for the options.
function Access:upload(opts)
  return require("ofauth.upload").run(self, opts)
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

--- Iterate over any paginated Access API list (offset style).
function Access:paginate(path, opts)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.connection_id = self.connection_id
  return self.client:paginate(self:path(path), o)
end

---------------------------------------------------------------- snake_case accessors

-- Generated from the catalogue: "access.earnings.listTransactions" is
-- acc.earnings:list_transactions{...}; "account.connections.list" is
-- client.account.connections:list(). Nodes: {groups = {}, ops = {}}.
local function tree(filter, strip)
  local root = { groups = {}, ops = {} }
  for _, e in ipairs(catalogue.entries) do
    if filter(e) then
      local name = strip and e.name:gsub("^access%.", "") or e.name
      local parts = {}
      for p in name:gmatch("[^.]+") do parts[#parts + 1] = catalogue.snake(p) end
      local node = root
      for i = 1, #parts - 1 do
        node.groups[parts[i]] = node.groups[parts[i]] or { groups = {}, ops = {} }
        node = node.groups[parts[i]]
      end
      node.ops[parts[#parts]] = e.name
    end
  end
  return root
end
M.client_tree = tree(function(e) return not e.connection end, false)
M.access_tree = tree(function(e) return e.connection end, true)

local group_mt = {}
local function group(target, node, legacy)
  return setmetatable({ __target = target, __node = node, __legacy = legacy }, group_mt)
end
group_mt.__index = function(g, k)
  local node = rawget(g, "__node")
  local sub = node.groups[k]
  if sub then return group(rawget(g, "__target"), sub) end
  local name = node.ops[k]
  if name then
    return function(self, params, opts)
      local target = rawget(self, "__target")
      return target:call(name, params, opts)
    end
  end
  return nil
end
-- acc:self() and acc:subscribers{} keep their meaning next to acc.self:get()
group_mt.__call = function(g, target, ...)
  local legacy = rawget(g, "__legacy")
  if not legacy then error("ofauth: this is a group of operations, not a function", 2) end
  return legacy(target, ...)
end

local function accessor_index(methods, root)
  return function(obj, k)
    local node = root.groups[k]
    if node then return group(obj, node, methods[k]) end
    local m = methods[k]
    if m ~= nil then return m end
    local name = root.ops[k]
    if name then
      return function(self, params, opts) return self:call(name, params, opts) end
    end
    return nil
  end
end

M.client_mt = {
  __index = accessor_index(Client, M.client_tree),
  __tostring = function(c) return ("ofauth client (%s)"):format(c.base_url) end,
}
M.access_mt = {
  __index = accessor_index(Access, M.access_tree),
  __tostring = Access.__tostring,
}

return M
