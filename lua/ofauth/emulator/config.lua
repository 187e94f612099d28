--- Emulator configuration: documented defaults, limits and validation.
--
-- Both `require("ofauth.emulator").start{...}` and `oflua emulator` build
-- their configuration here, so a default or a limit is changed in one place.
-- `M.normalize(opts)` returns a fresh, validated, JSON-able table (it is
-- passed to the server's worker VM through `server.listen{args=}`) or
-- `nil, message`. Messages never contain a key or a secret.
local M = {}

M.SIGNING = { svix = true, checklist = true }
M.ERROR_SHAPES = { sdk = true, checklist = true }
M.FAULT_KINDS = {
  rate_limit = true, server_error = true, slow = true, drop = true, session_expired = true,
}

M.defaults = {
  host = "127.0.0.1",
  port = 0,                    -- the CLI uses 8788; the Lua API an ephemeral port
  -- Accepted `apikey` values. The environment of a key (whoami, the `live`
  -- flag of webhooks) follows `M.ENVIRONMENT_RULES`.
  api_keys = { "sk_test_emulator" },
  -- Allowed `redirectUrl`s for /v2/link/init (compared without query and
  -- fragment). Empty: any http(s) URL on a loopback host is allowed.
  redirect_uris = {},
  webhook_url = nil,           -- nil: events are recorded as "skipped"
  webhook_secret = nil,        -- required with webhook_url; svix: "whsec_<base64>"
  signing = "svix",            -- "svix" | "checklist" (see ofauth-api.md, Webhooks)
  signature_header = "ofauth-signature", -- header of the checklist scheme
  error_shape = "sdk",         -- "sdk": {error, code, details}; "checklist": {type, message}
  subscribers = 1000,          -- subscribers per connection, generated from the index
  permissions = { "profile", "posts", "messages", "subscribers" },
  webhook_attempts = 5,        -- attempts per event, the first included
  webhook_timeout_ms = 10000,  -- per attempt
  webhook_base_delay = 1,      -- seconds before attempt 2; doubles each attempt
  webhook_max_delay = 60,      -- seconds, cap of one backoff step
  session_expired_status = 401, -- HTTP status sent with code SESSION_EXPIRED
  link_ttl = 3600,             -- seconds a Link session stays open
  state = nil,                 -- path of the JSON state file; nil: in memory
  faults = {},                 -- initial fault rules (see ofauth.emulator.faults)
  log = false,                 -- one line per request/delivery on stderr (no secrets)
  -- Who runs the webhook delivery loop: "caller" (the VM that called start:
  -- emu:step(), emu:deliver_pending(), emu:run()) or "background" (the
  -- server's tick VM, every `poll_interval` seconds; nothing to drive).
  delivery = "caller",
  poll_interval = 0.05,        -- seconds between delivery-loop passes
  -- Limits (every one explicit; exceeding them answers 4xx / drops oldest).
  max_connections = 10000,
  max_sessions = 10000,        -- oldest finished sessions are forgotten first
  max_faults = 100,
  max_delivery_records = 1000, -- oldest records are deleted first
  max_queue = 10000,           -- undelivered events; more -> 503 on the call that adds one
  shared_size = 16777216,      -- bytes of the shared dict (queue + delivery records)
  list_limit_default = 20,
  list_limit_max = 100,
  max_body = 1048576,
  -- Uploads (POST /v2/access/uploads/init): files above this size are sent
  -- in parts of this size (x-ofauth-upload-part-size); at most max_uploads
  -- unfinished uploads are kept (oldest forgotten first).
  upload_part_size = 5242880,
  max_uploads = 100,
  -- Seed of the generated catalogue data (ofauth.emulator.generic): the same
  -- seed gives the same answers; another seed, other ids and values.
  data_seed = 0,
  timeout_s = 10,              -- server read timeout
  slow_delay_ms_max = 60000,
}

-- Which environment an API key belongs to: first matching Lua pattern wins,
-- anything else is "sandbox" (the safe side). The live OFAuth service decides
-- this server-side; these prefixes are our assumption.
M.ENVIRONMENT_RULES = {
  { "^sk_live_", "production" },
  { "^live_", "production" },
  { "^prod", "production" },
  { "^sk_test_", "sandbox" },
  { "^sandbox", "sandbox" },
}
M.DEFAULT_ENVIRONMENT = "sandbox"

function M.environment(key)
  for _, rule in ipairs(M.ENVIRONMENT_RULES) do
    if key:find(rule[1]) then return rule[2] end
  end
  return M.DEFAULT_ENVIRONMENT
end

local function copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = copy(x) end
  return t
end
M.copy = copy

local function check_int(cfg, name, lo, hi)
  local n = cfg[name]
  if type(n) ~= "number" or n ~= math.floor(n) or n < lo or n > hi then
    return ("%s must be an integer from %d to %d"):format(name, lo, hi)
  end
  cfg[name] = math.tointeger(n)
end

local function check_num(cfg, name, lo, hi)
  local n = cfg[name]
  if type(n) ~= "number" or n ~= n or n < lo or n > hi then
    return ("%s must be a number from %s to %s"):format(name, lo, hi)
  end
end

local function check_list(cfg, name, allow_empty)
  local l = cfg[name]
  if type(l) == "string" then l = { l } end
  if type(l) ~= "table" then return name .. " must be a list of strings" end
  local out = {}
  for i, v in ipairs(l) do
    if type(v) ~= "string" or v == "" or v:find("[%s%c]") then
      return ("%s[%d] must be a non-empty string without spaces"):format(name, i)
    end
    out[#out + 1] = v
  end
  if #out == 0 and not allow_empty then return name .. " must not be empty" end
  cfg[name] = out
end

--- Split an http(s) URL: scheme, host, port (number or nil), rest; nil when
-- it is not an absolute http(s) URL or has user information (a@b).
function M.parse_url(url)
  if type(url) ~= "string" then return nil end
  local scheme, authority, rest = url:match("^([hH][tT][tT][pP][sS]?)://([^/?#]*)(.*)$")
  if not scheme or authority == "" or authority:find("@", 1, true) then return nil end
  if url:find("[%s%c]") then return nil end
  local host, port = authority:match("^(%[[%x:.]+%])(.*)$")
  if not host then host, port = authority:match("^([^:]+)(.*)$") end
  if not host then return nil end
  if port ~= "" then
    port = port:match("^:(%d+)$")
    if not port then return nil end
    port = tonumber(port)
    if port < 1 or port > 65535 then return nil end
  else
    port = nil
  end
  return scheme:lower(), host:lower(), port, rest
end

local LOOPBACK = { ["127.0.0.1"] = true, ["localhost"] = true, ["[::1]"] = true }
function M.is_loopback(host) return LOOPBACK[host] == true end

local function check_secret(cfg)
  local s = cfg.webhook_secret
  if s == nil then
    if cfg.webhook_url then
      return "a webhook URL needs a webhook secret (--webhook-secret or OFAUTH_WEBHOOK_SECRET)"
    end
    return
  end
  if type(s) ~= "string" or s == "" then return "webhook_secret must be a non-empty string" end
  if cfg.signing == "svix" then
    local b64 = s:match("^whsec_(.+)$")
    if not b64 or not b64:match("^[A-Za-z0-9+/]+=?=?$") or #b64 % 4 ~= 0 then
      return "with svix signing the webhook secret must look like whsec_<base64>"
    end
  end
end

--- Validate `opts` over the defaults. Returns a new table or nil, message.
function M.normalize(opts)
  if opts ~= nil and type(opts) ~= "table" then return nil, "options must be a table" end
  opts = opts or {}
  local cfg = copy(M.defaults)
  for k, v in pairs(opts) do
    if M.defaults[k] == nil and not (k == "webhook_url" or k == "webhook_secret" or k == "state") then
      return nil, ("unknown option %q"):format(tostring(k))
    end
    cfg[k] = copy(v)
  end
  if type(cfg.host) ~= "string" or cfg.host == "" then return nil, "host must be a string" end
  local err = check_int(cfg, "port", 0, 65535)
    or check_list(cfg, "api_keys")
    or check_list(cfg, "redirect_uris", true)
    or check_list(cfg, "permissions", true)
    or check_int(cfg, "subscribers", 0, 100000000)
    or check_int(cfg, "webhook_attempts", 1, 50)
    or check_int(cfg, "webhook_timeout_ms", 1, 600000)
    or check_num(cfg, "webhook_base_delay", 0, 86400)
    or check_num(cfg, "webhook_max_delay", 0, 86400)
    or check_int(cfg, "session_expired_status", 400, 499)
    or check_num(cfg, "link_ttl", 1, 86400 * 30)
    or check_int(cfg, "max_connections", 1, 10000000)
    or check_int(cfg, "max_sessions", 1, 10000000)
    or check_int(cfg, "max_faults", 1, 100000)
    or check_int(cfg, "max_delivery_records", 1, 1000000)
    or check_int(cfg, "max_queue", 1, 10000000)
    or check_int(cfg, "shared_size", 1024, 1 << 40)
    or check_int(cfg, "list_limit_default", 1, 100000)
    or check_int(cfg, "list_limit_max", 1, 100000)
    or check_int(cfg, "max_body", 1, 1073741824)
    or check_int(cfg, "upload_part_size", 1, 1073741824)
    or check_int(cfg, "max_uploads", 1, 100000)
    or check_int(cfg, "data_seed", 0, 1000000)
    or check_num(cfg, "timeout_s", 0.001, 86400)
    or check_int(cfg, "slow_delay_ms_max", 0, 3600000)
    or check_num(cfg, "poll_interval", 0.01, 60)
  if err then return nil, err end
  if cfg.list_limit_default > cfg.list_limit_max then
    return nil, "list_limit_default must not exceed list_limit_max"
  end
  if cfg.delivery ~= "caller" and cfg.delivery ~= "background" then
    return nil, "delivery must be caller or background"
  end
  if not M.SIGNING[cfg.signing] then return nil, "signing must be svix or checklist" end
  if not M.ERROR_SHAPES[cfg.error_shape] then return nil, "error_shape must be sdk or checklist" end
  if type(cfg.signature_header) ~= "string" or not cfg.signature_header:match("^[%w%-]+$") then
    return nil, "signature_header must be a header name"
  end
  cfg.signature_header = cfg.signature_header:lower()
  for i, uri in ipairs(cfg.redirect_uris) do
    if not M.parse_url(uri) then
      return nil, ("redirect_uris[%d] is not an absolute http(s) URL"):format(i)
    end
  end
  if cfg.webhook_url ~= nil then
    if not M.parse_url(cfg.webhook_url) then return nil, "webhook_url must be an http(s) URL" end
  end
  err = check_secret(cfg)
  if err then return nil, err end
  if cfg.state ~= nil and (type(cfg.state) ~= "string" or cfg.state == "") then
    return nil, "state must be a file path"
  end
  if type(cfg.faults) ~= "table" then return nil, "faults must be a list" end
  cfg.log = cfg.log and true or false
  return cfg
end

return M
