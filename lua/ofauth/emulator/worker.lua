--- The emulator's server script: loaded by oflua.server in its worker VM
-- (and, with delivery = "background", in the server's tick VM, worker id 0,
-- which runs the webhook delivery loop instead of the app).
-- `...` is the `args` table given to server.listen by ofauth.emulator.start:
-- {config = <normalized configuration>, shared = <shared dict name>}.
local args = ...
local server = require("oflua.server")
local emulator = require("ofauth.emulator")
local app_mod = require("ofauth.emulator.app")

local cfg = args.config
local deps = emulator.default_deps(cfg)
local dict = server.shared(args.shared)
local background = cfg.delivery == "background"

if background and server.worker_id() == 0 then
  local loop = assert(emulator.delivery_loop(cfg, dict, deps))
  return {
    handler = function() return 503, "", {} end, -- never called: the tick VM serves no request
    tick = function() loop:step() end,
    tick_interval = cfg.poll_interval,
  }
end

deps.dict = dict
deps.can_drop = server.DROP ~= nil
local app = assert(app_mod.new(cfg, deps))

local function handler(req)
  local status, body, headers = app:handle(req)
  if status == app_mod.DROP then return server.DROP end
  return status, body, headers
end

return {
  handler = handler,
  shutdown = function() app:persist() end,
  -- every VM must name a tick for the tick VM to start; only worker 0 runs it
  tick = background and function() end or nil,
  tick_interval = background and cfg.poll_interval or nil,
}
