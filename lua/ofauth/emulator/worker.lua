--- The emulator's server script: loaded by oflua.server in its worker VM.
-- `...` is the `args` table given to server.listen by ofauth.emulator.start:
-- {config = <normalized configuration>, shared = <shared dict name>}.
local args = ...
local server = require("oflua.server")
local emulator = require("ofauth.emulator")
local app_mod = require("ofauth.emulator.app")

local deps = emulator.default_deps(args.config)
deps.dict = server.shared(args.shared)
deps.can_drop = server.DROP ~= nil
local app = assert(app_mod.new(args.config, deps))

local function handler(req)
  local status, body, headers = app:handle(req)
  if status == app_mod.DROP then return server.DROP end
  return status, body, headers
end

return {
  handler = handler,
  shutdown = function() app:persist() end,
}
