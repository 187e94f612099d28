--- Signed webhooks: verification (both schemes), signing; webhooks.app(opts)
-- builds the receiver app (ofauth.webhook_app).
--
-- Two signature schemes, detected from the headers (ofauth-api.md):
--  * Svix / Standard Webhooks (what the official SDKs verify):
--      svix-id, svix-timestamp, svix-signature (or webhook-id/-timestamp/-signature)
--      key = base64 of the part after "whsec_"; signed = "<id>.<t>.<body>";
--      signature = base64(HMAC-SHA256); the header holds space-separated
--      "v1,<b64>" entries (rotation): valid if any matches.
--  * The checklist's scheme (Stripe-like): one header "t=<t>,v1=<hex>[,v1=...]",
--      hex HMAC-SHA256 with the secret's raw bytes over "<t>.<body>". Header
--      name from M.checklist_headers.
-- The raw body is verified before any JSON parsing; comparisons are constant
-- time; timestamps further than `tolerance` seconds from now are refused.
--
-- verify() -> event, meta | nil, reason where reason is one of
--   missing_header, malformed_header, stale_timestamp, bad_signature,
--   bad_secret, invalid_json
local cjson = require("cjson")
local core = require("oflua.core")
local crypto = require("oflua.crypto")

local M = {}

M.defaults = {
  tolerance = 300, -- seconds between the signature's timestamp and now
  max_body = 1024 * 1024, -- bytes; larger deliveries are refused (413)
  max_json_depth = 32,
} -- the receiver app's own defaults: require("ofauth.webhook_app").defaults

-- Header names for the checklist scheme (its name is not documented; see
-- ofauth-api.md). "webhook-signature" only counts when its value starts with
-- "t=" (otherwise it is the Standard Webhooks spelling of svix-signature).
M.checklist_headers = { "ofauth-signature", "x-ofauth-signature", "webhook-signature" }

M.reasons = {
  missing_header = 400, malformed_header = 400, invalid_json = 400,
  stale_timestamp = 401, bad_signature = 401,
  bad_secret = 500, -- our configuration is wrong: make the sender retry later
}

local json = cjson.new()
json.decode_max_depth(M.defaults.max_json_depth)

local MAX_TS_DIGITS = 12

-- Header names lower-cased. oflua.server already gives lower-case names, so
-- the table is only copied when a name has an upper-case letter (or is not
-- a string).
local find = string.find
local function lower_keys(h)
  local copy = false
  for k in pairs(h) do
    if type(k) ~= "string" or find(k, "%u") then
      copy = true
      break
    end
  end
  if not copy then return h end
  local out = {}
  for k, v in pairs(h) do
    if type(k) == "string" then out[k:lower()] = v end
  end
  return out
end

local now_of = require("ofauth.timeutil").now_of

local function secrets_list(secret)
  if type(secret) == "table" then return secret end
  return { secret }
end

-- whsec_<base64> -> key bytes, or nil. The last answer is kept: a receiver
-- verifies every delivery with the same secret.
local last_secret, last_key
local function svix_key(secret)
  if type(secret) ~= "string" then return nil end
  if secret == last_secret then return last_key end
  local b64 = secret:match("^whsec_(.*)$") or secret
  if b64 == "" then return nil end
  local key = crypto.unbase64(b64)
  last_secret, last_key = secret, key
  return key
end
M.svix_key = svix_key

local function check_time(ts, opts)
  if not ts:match("^%d+$") or #ts > MAX_TS_DIGITS then return nil, "malformed_header" end
  local t = tonumber(ts)
  local tol = (opts and opts.tolerance) or M.defaults.tolerance
  if math.abs(now_of(opts) - t) > tol then return nil, "stale_timestamp" end
  return t
end

local function parse_event(body)
  -- JSON text is UTF-8 with no raw NUL (RFC 8259); cjson checks neither (it
  -- copies invalid UTF-8 into strings and stops reading at a NUL byte), so
  -- both are checked here before a handler sees the strings.
  if body:find("\0", 1, true) or not utf8.len(body) then return nil, "invalid_json" end
  local ok, v = pcall(json.decode, body)
  if not ok or type(v) ~= "table" then return nil, "invalid_json" end
  local typ = v.eventType
  if type(typ) ~= "string" then typ = v.type end
  if type(typ) ~= "string" or typ == "" then return nil, "invalid_json" end
  local data = v.data
  if data == cjson.null then data = nil end
  return { type = typ, live = v.live, data = data, raw = v }
end
M.parse_event = parse_event

local function verify_svix(body, h, secret, opts)
  local id = h["svix-id"] or h["webhook-id"]
  local ts = h["svix-timestamp"] or h["webhook-timestamp"]
  local sig = h["svix-signature"] or h["webhook-signature"]
  if not (id and ts and sig) or id == "" or ts == "" or sig == "" then return nil, "missing_header" end
  -- Message ids are printable ASCII (msg_<base62> from Svix); anything else
  -- (spaces, control bytes, non-ASCII) would become an idempotency key that
  -- is awkward to log or compare, so it is refused.
  if #id > 256 or id:find("[^\33-\126]") then return nil, "malformed_header" end
  local t, terr = check_time(ts, opts)
  if not t then return nil, terr end
  -- Each entry is "<version>,<value>" and a value holds no comma (base64 for
  -- v1). A stray comma means two headers were joined ("v1,a, v1,b" when the
  -- header is sent twice): ambiguous, so the whole header is refused.
  local candidates = {}
  local function add(entry)
    local version, value = entry:match("^(v%d+[a-z]?),([^,]+)$")
    if not version then return false end
    if version == "v1" then candidates[#candidates + 1] = value end
    return true
  end
  if not find(sig, " ", 1, true) then -- one entry: the usual case
    if not add(sig) then return nil, "malformed_header" end
  else
    for entry in sig:gmatch("%S+") do
      if not add(entry) then return nil, "malformed_header" end
    end
  end
  if #candidates == 0 then return nil, "malformed_header" end
  local signed = id .. "." .. ts .. "." .. body
  for _, s in ipairs(secrets_list(secret)) do
    local key = svix_key(s)
    if not key then return nil, "bad_secret" end
    local expected = crypto.base64(crypto.hmac("sha256", key, signed))
    for _, c in ipairs(candidates) do
      if crypto.equal(expected, c) then
        return { scheme = "svix", id = id, idempotency_key = "svix:" .. id, timestamp = t }
      end
    end
  end
  return nil, "bad_signature"
end

local function parse_checklist_header(value)
  local t, sigs = nil, {}
  for part in value:gmatch("[^,]+") do
    local k, v = part:match("^%s*(%w+)=(.-)%s*$")
    if k == "t" then
      if t then return nil end -- two timestamps: ambiguous
      t = v
    elseif k == "v1" then
      sigs[#sigs + 1] = v
    end
  end
  return t, sigs
end

local function verify_checklist(body, value, secret, opts)
  if #value > 4096 then return nil, "malformed_header" end
  local ts, sigs = parse_checklist_header(value)
  if not ts or ts == "" or #sigs == 0 then return nil, "malformed_header" end
  for _, s in ipairs(sigs) do
    if #s ~= 64 or not s:match("^%x+$") then return nil, "malformed_header" end
  end
  local t, terr = check_time(ts, opts)
  if not t then return nil, terr end
  local signed = ts .. "." .. body
  for _, sec in ipairs(secrets_list(secret)) do
    if type(sec) ~= "string" or sec == "" then return nil, "bad_secret" end
    local expected = crypto.hex(crypto.hmac("sha256", sec, signed))
    for _, c in ipairs(sigs) do
      if crypto.equal(expected, c:lower()) then
        return { scheme = "checklist", timestamp = t,
          idempotency_key = "sha256:" .. crypto.hex(crypto.sha256(signed)) }
      end
    end
  end
  return nil, "bad_signature"
end

--- Which scheme a request uses: "svix", "checklist" (with the header value),
-- or nil. headers: lower-case table, or the checklist header's value.
function M.detect(headers, opts, lowered)
  if type(headers) == "string" then return "checklist", headers end
  local h = lowered and headers or lower_keys(headers)
  if h["svix-id"] or h["svix-signature"] or h["svix-timestamp"] then return "svix" end
  local ws = h["webhook-signature"]
  if h["webhook-id"] or h["webhook-timestamp"] or (ws and not ws:match("^%s*t=")) then
    return "svix"
  end
  for _, name in ipairs((opts and opts.signature_headers) or M.checklist_headers) do
    local v = h[name]
    if v and (name ~= "webhook-signature" or v:match("^%s*t=")) then return "checklist", v end
  end
  return nil
end

--- Verify one delivery. raw_body: the exact bytes received. headers: the
-- request's header table (lower-case names) or, for the checklist scheme, the
-- signature header's value. secret: a string or a list (rotation).
-- opts: tolerance (s), now (unix s), signature_headers.
-- Returns event {type, live, data, raw}, meta {scheme, id, idempotency_key,
-- timestamp}; or nil, reason.
function M.verify(raw_body, headers, secret, opts)
  if type(raw_body) ~= "string" then error("verify: raw_body must be a string", 2) end
  if type(headers) ~= "table" and type(headers) ~= "string" then
    error("verify: headers must be a table or a signature header string", 2)
  end
  if secret == nil or (type(secret) == "table" and #secret == 0) then return nil, "bad_secret" end
  if type(headers) == "table" then headers = lower_keys(headers) end
  local scheme, value = M.detect(headers, opts, true)
  local meta, reason
  if scheme == "svix" then
    meta, reason = verify_svix(raw_body, headers, secret, opts)
  elseif scheme == "checklist" then
    meta, reason = verify_checklist(raw_body, value, secret, opts)
  else
    return nil, "missing_header"
  end
  if not meta then return nil, reason end
  local event, perr = parse_event(raw_body)
  if not event then return nil, perr end
  return event, meta
end

--- The checklist scheme's header value for body at time t (default now).
function M.sign(body, secret, t)
  t = tostring(math.floor(t or core.now()))
  return ("t=%s,v1=%s"):format(t, crypto.hex(crypto.hmac("sha256", secret, t .. "." .. body)))
end

--- Svix headers for body (id default: random msg_ id, t default now).
function M.sign_svix(body, secret, id, t)
  local key = svix_key(secret)
  if not key then error("sign_svix: the secret must be whsec_<base64>", 2) end
  id = id or ("msg_" .. crypto.hex(crypto.random(12)))
  t = tostring(math.floor(t or core.now()))
  local sig = crypto.base64(crypto.hmac("sha256", key, id .. "." .. t .. "." .. body))
  return { ["svix-id"] = id, ["svix-timestamp"] = t, ["svix-signature"] = "v1," .. sig }
end

--- A new svix-style secret: whsec_ + base64 of 24 random bytes.
function M.new_secret() return "whsec_" .. crypto.base64(crypto.random(24)) end

-- The receiver app (ofauth.webhook_app requires this module, not the reverse).
M.app = function(opts) return require("ofauth.webhook_app").new(opts) end

return M
