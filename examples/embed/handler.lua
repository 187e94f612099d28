--- The Lua side of examples/embed/service.c: an OFAuth webhook receiver that a
-- C service drives through oflua_handle_http (the same script shape
-- `oflua serve` runs, so it also works as `oflua serve examples/embed/handler.lua`).
--
-- Configuration (environment, read once when the service loads this file):
--   OFAUTH_WEBHOOK_SECRET   the endpoint's signing secret (whsec_... for Svix)
--   OFLUA_STORE             the encrypted store (SQLite file) holding the inbox
--   OFLUA_STORE_KEY or OFLUA_STORE_KEY_FILE   its master key
--
-- Routes:
--   POST /webhooks/ofauth   signed deliveries: verified, deduplicated, recorded,
--                           answered 200, then handled (connection.* events update
--                           the stored connections)
--   GET  /stats             JSON: events handled by this process, by type; inbox counts
--   GET  /metrics           Prometheus text (ofauth.metrics)
--
-- Changing what happens on an event is a Lua edit: restart the service (or
-- call oflua_load_handler again) and the C side is untouched.
local cjson = require("cjson")
local ofauth = require("ofauth")
local config = require("ofauth.config")

local secret = config.webhook_secret({})
if not secret then error("OFAUTH_WEBHOOK_SECRET is not set", 0) end
local st, serr = config.store({})
if not st then error(serr, 0) end

-- inline: an embedding host has no oflua.server tick (it could call
-- app:tick() itself now and then through oflua_call and use the default)
local app = ofauth.webhooks.app({ secret = secret, store = st, process = "inline" })
local conns = ofauth.connections.new({ store = st, on_reauth_required = function(rec)
  -- Where a real service tells the user (mail, chat, an in-app banner).
  ofauth.log.warn("embed.reauth_required", { user_id = rec.user_id })
end })
conns:install(app)

-- Counts in this runtime (one lua_State: the C service is single-threaded).
local handled = { total = 0, by_type = {} }
app:on("*", function(event)
  handled.total = handled.total + 1
  handled.by_type[event.type] = (handled.by_type[event.type] or 0) + 1
end)

local router = require("oflua.router").new()
router:post("/webhooks/ofauth", app:handler())
router:get("/metrics", ofauth.metrics.handler())
router:get("/stats", function()
  return 200, cjson.encode({ handled = handled.total, by_type = handled.by_type, inbox = st:inbox_stats() }),
    { ["content-type"] = "application/json" }
end)

-- service.c calls this global about once a second through oflua_call():
-- events whose handler failed are retried from the inbox with backoff, and
-- dead-lettered after max_attempts (`oflua webhook replay` re-runs those).
function embed_tick() -- luacheck: ignore 111
  app:drain(10)
end

return { handler = router, webhooks = app }
