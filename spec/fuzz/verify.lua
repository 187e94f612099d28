-- Fuzz target: ofauth.webhooks.verify on fuzzed headers + body (both schemes,
-- the scheme detection, the checklist header given as a string, secret
-- lists). Input: see spec/fuzz/input.lua.
local webhooks = require("ofauth.webhooks")
local input = require("spec.fuzz.input")
local C = require("spec.fixtures.abuse.webhooks")

local opts = { now = C.now }
local secrets = { C.secret, { "whsec_AAAAAAAAAAAAAAAAAAAAAAAA", C.secret }, C.bad_secret }

local function check(event, meta)
  if event then
    assert(type(event) == "table" and type(event.type) == "string" and event.type ~= "")
    assert(type(meta) == "table" and (meta.scheme == "svix" or meta.scheme == "checklist"))
    assert(type(meta.idempotency_key) == "string" and math.type(meta.timestamp) == "integer")
    assert(math.abs(meta.timestamp - C.now) <= 300, "accepted a stale timestamp")
  else
    assert(webhooks.reasons[meta], "unknown reason: " .. tostring(meta))
  end
end

return function(data)
  local headers, body = input.request(data)
  for _, secret in ipairs(secrets) do
    check(webhooks.verify(body, headers, secret, opts))
  end
  -- the checklist header value passed directly
  local v = headers["ofauth-signature"]
  if v then check(webhooks.verify(body, v, C.secret, opts)) end
  webhooks.detect(headers)
end
