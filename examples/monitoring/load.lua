-- Load for the dashboard figure (examples/monitoring/figure.sh): signed
-- webhook deliveries to an app's endpoint for DURATION seconds, in batches of
-- parallel requests whose size ramps up and down, with a share of forged
-- signatures, stale timestamps, missing headers and redeliveries so that
-- every panel has something to show. Loopback only.
--   oflua load.lua URL SECRET DURATION
local url, secret, duration = arg[1], arg[2], tonumber(arg[3] or "20")
assert(url and secret, "usage: oflua load.lua URL SECRET [DURATION]")
local http = require("oflua.http")
local core = require("oflua.core")
local crypto = require("oflua.crypto")
local webhooks = require("ofauth.webhooks")
local cjson = require("cjson")

local t0 = core.monotonic()
local sent, seq = 0, 0
local recent = {}
while core.monotonic() - t0 < duration do
  local phase = (core.monotonic() - t0) / duration
  local batch = math.floor(4 + 28 * math.sin(math.pi * phase)) -- ramps up, then down
  local reqs = {}
  for _ = 1, batch do
    seq = seq + 1
    local id = "msg_load_" .. crypto.hex(crypto.random(8))
    local body = cjson.encode({ eventType = "oflua.test", live = false, data = { n = seq } })
    local now = os.time()
    local r = math.random()
    local headers
    if r < 0.06 then -- forged
      headers = webhooks.sign_svix(body, webhooks.new_secret(), id, now)
    elseif r < 0.09 then -- stale: ten minutes old
      headers = webhooks.sign_svix(body, secret, id, now - 600)
    elseif r < 0.11 then -- a header lost by a proxy
      headers = webhooks.sign_svix(body, secret, id, now)
      headers["svix-signature"] = nil
    elseif r < 0.13 then -- valid, but data the app's handler cannot use: retried, then dead
      body = cjson.encode({ eventType = "connection.updated", live = false, data = {} })
      headers = webhooks.sign_svix(body, secret, id, now)
    elseif r < 0.18 and #recent > 0 then -- a redelivery of an earlier event
      local old = recent[math.random(#recent)]
      body, headers = old[1], old[2]
    else
      headers = webhooks.sign_svix(body, secret, id, now)
      recent[#recent % 50 + 1] = { body, headers }
    end
    headers["content-type"] = "application/json"
    reqs[#reqs + 1] = { method = "POST", url = url, body = body, headers = headers, timeout_ms = 5000 }
  end
  http.request_many(reqs)
  sent = sent + batch
  core.sleep(0.05)
end
print(("load: %d deliveries in %.1f s"):format(sent, core.monotonic() - t0))
