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

local function parse_event(body, ascii)
  -- JSON text is UTF-8 with no raw NUL (RFC 8259); cjson checks neither (it
  -- copies invalid UTF-8 into strings and stops reading at a NUL byte), so
  -- both are checked here before a handler sees the strings. ascii: the
  -- native verifier found only bytes 1..127 (nothing to check).
  if not ascii and (body:find("\0", 1, true) or not utf8.len(body)) then return nil, "invalid_json" end
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

-- Both schemes are verified by one native call each (src/crypto_webhook.c):
-- header parsing, base64/hex, HMAC-SHA256 over the parts (no copy of the
-- body) and the constant-time comparison. Svix entries are "<version>,<value>"
-- separated by spaces, a value holds no comma (a stray comma means two headers
-- were joined: ambiguous, refused); the checklist header is "t=<t>,v1=<hex>"
-- parts. A header with more than M.max_signatures entries is refused
-- (malformed_header) before any HMAC is computed. Idempotency keys:
-- "svix:<svix-id>" (the sender's message id, stable across retries) and, for
-- the checklist scheme, "sha256:<hex sha256 of the body>" -- the body alone,
-- so the same event re-signed at a later t is a duplicate.
M.max_signatures = crypto.webhook_max_signatures
local webhook_svix, webhook_checklist = crypto.webhook_svix, crypto.webhook_checklist

local function verify_svix(body, h, secret, opts)
  return webhook_svix(body, h["svix-id"] or h["webhook-id"],
    h["svix-timestamp"] or h["webhook-timestamp"], h["svix-signature"] or h["webhook-signature"],
    secret, now_of(opts), (opts and opts.tolerance) or M.defaults.tolerance)
end

local function verify_checklist(body, value, secret, opts)
  return webhook_checklist(body, value, secret, now_of(opts),
    (opts and opts.tolerance) or M.defaults.tolerance)
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
  if type(headers) == "table" then
    -- Fast path: the three Svix headers under their lower-case names (what
    -- oflua.server gives and OFAuth sends): no copy, no scan of the table.
    -- (A second spelling of the same header in another case would be
    -- ambiguous anyway: lower_keys keeps an arbitrary one.)
    local id, ts, sig = headers["svix-id"], headers["svix-timestamp"], headers["svix-signature"]
    if type(id) == "string" and type(ts) == "string" and type(sig) == "string" then
      local meta, ascii = webhook_svix(raw_body, id, ts, sig, secret, now_of(opts),
        (opts and opts.tolerance) or M.defaults.tolerance)
      if not meta then return nil, ascii end
      local event, perr = parse_event(raw_body, ascii)
      if not event then return nil, perr end
      return event, meta
    end
    headers = lower_keys(headers)
  end
  local scheme, value = M.detect(headers, opts, true)
  local meta, ascii -- ascii: the reason when meta is nil
  if scheme == "svix" then
    meta, ascii = verify_svix(raw_body, headers, secret, opts)
  elseif scheme == "checklist" then
    meta, ascii = verify_checklist(raw_body, value, secret, opts)
  else
    return nil, "missing_header"
  end
  if not meta then return nil, ascii end
  local event, perr = parse_event(raw_body, ascii)
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
