-- Fuzz target: the webhook app's receive() (method, size, verify, parse,
-- dedupe, inbox insert, handlers) over the in-memory store. Input: a method
-- line, then a request (spec/fuzz/input.lua).
local webhooks = require("ofauth.webhooks")
local cjson = require("cjson")
local log = require("ofauth.log")
local input = require("spec.fuzz.input")
local fakes = require("spec.support.fakes")
local C = require("spec.fixtures.abuse.webhooks")

log.sink = function() end
local handled = 0
local function new_app()
  local app = webhooks.app({ secret = C.secret, store = fakes.store(), now = function() return C.now end,
    max_body = C.app_max_body, process = "inline" }) -- handlers run inside receive()
  app:on("*", function(event, ctx)
    assert(type(event.type) == "string" and ctx.meta)
    handled = handled + 1
  end)
  return app
end
local app, runs = new_app(), 0

local allowed = { [200] = true, [400] = true, [401] = true, [405] = true, [413] = true }

return function(data)
  runs = runs + 1
  if runs % 10000 == 0 then app = new_app() end -- keep the fake inbox small
  local method, headers, body = input.app_request(data)
  local before = handled
  local status, resp, rh = app:receive(method, body, headers)
  assert(allowed[status], "unexpected status " .. tostring(status))
  assert(type(resp) == "string" and type(rh) == "table")
  local decoded = cjson.decode(resp)
  if status == 200 then
    assert(decoded.status == "accepted" or decoded.status == "duplicate")
    if decoded.status == "duplicate" then assert(handled == before) end
  else
    assert(handled == before, "a handler ran for a refused delivery")
  end
end
