-- Fuzz target: the Link callback query (ofauth.link.parse_callback on the raw
-- query string, then link.callback against a store holding pending sessions
-- for "user_1" and "user_2" (the second expired)). Input: the query string.
local link = require("ofauth.link")
local fakes = require("spec.support.fakes")

local NOW = 1700000000
local st = fakes.store()
local function reset()
  link.remember(st, { user_id = "user_1", started_at = NOW, expires_at = NOW + 600, state = "s1" })
  link.remember(st, { user_id = "user_2", started_at = NOW - 7200, expires_at = NOW - 3600, state = "s2" })
  st:put("link:u:user_3", '{"sids":["00", 5, {}]}')
  st:put("link:s:00", "not json")
end
reset()

local reasons = { invalid_callback = true, unknown_session = true, expired_session = true,
  wrong_session = true }

local function check_cb(cb)
  assert(link.statuses[cb.status], "unknown status accepted")
  for _, f in ipairs({ "connection_id", "client_reference_id", "step", "error_code" }) do
    local v = cb[f]
    assert(v == nil or (type(v) == "string" and v ~= "" and #v <= 512), f)
  end
end

return function(data)
  local cb, why = link.parse_callback(data)
  if cb then check_cb(cb) else assert(why == "invalid_callback") end
  cb, why = link.callback(data, { store = st, now = NOW, keep = true, state = "s1" })
  if cb then
    check_cb(cb)
    assert(cb.user_id == "user_1" and (cb.client_reference_id == nil or cb.client_reference_id == "user_1"),
      "callback for a session never started")
  else
    assert(reasons[why], tostring(why))
  end
  if #link.pending(st, "user_2") == 0 then reset() end -- an expired session is forgotten on use
end
