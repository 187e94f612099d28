--- The pure-Lua webhook verifier that ofauth.webhooks used before the native
-- fast path (src/crypto_webhook.c), kept as the reference for
-- spec/webhooks_native_spec.lua, with the two rules added with the native
-- path: at most `max_signatures` entries per header (malformed_header, before
-- any HMAC) and the checklist idempotency key from the body alone.
-- Returns meta | nil, reason for one scheme (JSON parsing is not compared).
local crypto = require("oflua.crypto")

local M = { max_signatures = 8 }

local function secrets_list(secret)
  if type(secret) == "table" then return secret end
  return { secret }
end

local function svix_key(secret)
  if type(secret) ~= "string" then return nil end
  local b64 = secret:match("^whsec_(.*)$") or secret
  if b64 == "" then return nil end
  return crypto.unbase64(b64)
end

local function check_time(ts, now, tol)
  if not ts:match("^%d+$") or #ts > 12 then return nil, "malformed_header" end
  local t = tonumber(ts)
  if math.abs(now - t) > tol then return nil, "stale_timestamp" end
  return t
end

function M.svix(body, id, ts, sig, secret, now, tol)
  if not (id and ts and sig) or id == "" or ts == "" or sig == "" then return nil, "missing_header" end
  if #id > 256 or id:find("[^\33-\126]") then return nil, "malformed_header" end
  local t, terr = check_time(ts, now, tol)
  if not t then return nil, terr end
  local candidates, entries = {}, 0
  local function add(entry)
    entries = entries + 1
    if entries > M.max_signatures then return false end
    local version, value = entry:match("^(v%d+[a-z]?),([^,]+)$")
    if not version then return false end
    if version == "v1" then candidates[#candidates + 1] = value end
    return true
  end
  if not sig:find(" ", 1, true) then
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
      if t then return nil end
      t = v
    elseif k == "v1" then
      if #sigs == M.max_signatures then return nil end
      sigs[#sigs + 1] = v
    end
  end
  return t, sigs
end

function M.checklist(body, value, secret, now, tol)
  if #value > 4096 then return nil, "malformed_header" end
  local ts, sigs = parse_checklist_header(value)
  if not ts or ts == "" or #sigs == 0 then return nil, "malformed_header" end
  for _, s in ipairs(sigs) do
    if #s ~= 64 or not s:match("^%x+$") then return nil, "malformed_header" end
  end
  local t, terr = check_time(ts, now, tol)
  if not t then return nil, terr end
  local signed = ts .. "." .. body
  for _, sec in ipairs(secrets_list(secret)) do
    if type(sec) ~= "string" or sec == "" then return nil, "bad_secret" end
    local expected = crypto.hex(crypto.hmac("sha256", sec, signed))
    for _, c in ipairs(sigs) do
      if crypto.equal(expected, c:lower()) then
        return { scheme = "checklist", timestamp = t,
          idempotency_key = "sha256:" .. crypto.hex(crypto.sha256(body)) }
      end
    end
  end
  return nil, "bad_signature"
end

return M
