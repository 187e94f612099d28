--- ofauth.emulator: a local stand-in for api.ofauth.com.
--
--   local emu = require("ofauth.emulator").start{
--     api_keys = {"sk_test_x"}, webhook_url = "http://127.0.0.1:9000/webhooks",
--     webhook_secret = "whsec_...", signing = "svix", redirect_uris = {...},
--   }
--   emu:url()              -- "http://127.0.0.1:PORT"
--   emu:deliver_pending(5) -- run the webhook delivery loop until idle (or 5 s)
--   emu:stop()
--
-- The API is served by oflua.server with one worker VM (ofauth/emulator/
-- worker.lua), which owns the connections and Link sessions. The webhook
-- queue and delivery records live in a shared dictionary; the VM that called
-- `start` runs the delivery loop: `emu:step()` / `emu:deliver_pending()` when
-- it drives it itself, `emu:run()` (the `oflua emulator` command) until the
-- server stops. With `delivery = "background"` the server's tick VM runs it
-- instead and `deliver_pending` only waits. Options and defaults:
-- ofauth.emulator.config; endpoints: ofauth.emulator.app.
local config = require("ofauth.emulator.config")
local memdict = require("ofauth.emulator.memdict")
local app_mod = require("ofauth.emulator.app")
local delivery = require("ofauth.emulator.delivery")
local signer = require("ofauth.emulator.signer")

local M = {}

M.config = config

local function fallback_random_hex(n)
  local t = {}
  for i = 1, n do t[i] = ("%02x"):format(math.random(0, 255)) end
  return table.concat(t)
end

--- now, sleep, random_hex and log from the runtime (oflua.core, oflua.crypto).
function M.default_deps(cfg)
  local core = require("oflua.core")
  local deps = { now = core.now, sleep = core.sleep, random_hex = fallback_random_hex }
  local ok, crypto = pcall(require, "oflua.crypto")
  if ok and crypto.random and crypto.hex then
    deps.random_hex = function(n) return crypto.hex(crypto.random(n)) end
  end
  if cfg and cfg.log then
    deps.log = function(line) io.stderr:write(line, "\n") end
  end
  return deps
end

--- The delivery loop for `cfg` over `dict` (see ofauth.emulator.delivery).
-- The signer exists whenever a secret is configured, so a webhook URL can be
-- set later (emu:set_webhook_url).
function M.delivery_loop(cfg, dict, deps)
  local sign = function() return {} end
  if cfg.webhook_secret then
    local s, err = signer.new(cfg, deps.schemes)
    if not s then return nil, err end
    sign = s
  end
  local request = deps.request
  if not request and cfg.webhook_secret then
    local ok, http = pcall(require, "oflua.http")
    if not ok or not http.request then return nil, "oflua.http is not available" end
    request = http.request
  end
  return delivery.new({
    dict = dict, cfg = cfg, sign = sign, now = deps.now, log = deps.log,
    request = request or function() return nil, { kind = "invalid" } end,
  })
end

local Emulator = {}
Emulator.__index = Emulator

--- Deliver what is due now; returns attempts made, seconds to the next retry.
-- With delivery = "background" the server's tick VM does this: returns 0.
function Emulator:step()
  if not self.loop then return 0, nil end
  return self.loop:step()
end

function Emulator:backlog()
  if self.loop then return self.loop:backlog() end
  return delivery.backlog(self.dict)
end

--- Run the delivery loop (or, in background mode, wait for it) until no
-- event is pending or `timeout_s` (default 30) has passed. Returns true when
-- everything was delivered or given up.
function Emulator:deliver_pending(timeout_s)
  local interval = self.cfg.poll_interval
  local deadline = self.deps.now() + (timeout_s or 30)
  while true do
    local _, wait = self:step()
    if self:backlog() == 0 then return true end
    local now = self.deps.now()
    if now >= deadline then return false end
    self.deps.sleep(math.max(0.001, math.min(wait or interval, interval, deadline - now)))
  end
end

--- Delivery records (oldest first), optionally only those in `state`.
function Emulator:deliveries(state) return delivery.records(self.dict, state) end

--- Serve and deliver until the server stops (SIGINT/SIGTERM with handle_signals).
function Emulator:run()
  local interval = self.cfg.poll_interval
  while true do
    local _, wait = self:step()
    if self.srv:wait(math.min(wait or interval, interval)) then break end
  end
  self:step()
end

--- Point webhook deliveries at `url` from now on (e.g. an app whose port is
-- known only after the emulator started). Needs the webhook secret given to
-- start(). Returns true or nil, message.
function Emulator:set_webhook_url(url)
  if not config.parse_url(url) then return nil, "the webhook URL must be an http(s) URL" end
  if not self.cfg.webhook_secret then return nil, "start the emulator with a webhook_secret first" end
  self.cfg.webhook_url = url
  local ok, err = self.dict:set(delivery.URL_KEY, url)
  if not ok then return nil, err end
  return true
end

function Emulator:url() return self.base_url end
function Emulator:port() return self.srv and self.srv:port() end

function Emulator:stop(grace_s)
  if self.srv then
    self.srv:stop(grace_s)
    self.srv:close()
  end
end
Emulator.close = Emulator.stop
Emulator.__close = function(self) self:stop() end

local instances = 0

--- Start the emulator on `opts.host`:`opts.port` (default 127.0.0.1:0).
-- Extra non-config fields: handle_signals (for the CLI), deps (tests).
-- Returns the emulator object or nil, message.
function M.start(opts)
  opts = opts or {}
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  local handle_signals, extra = o.handle_signals, o.deps or {}
  o.handle_signals, o.deps = nil, nil
  local cfg, err = config.normalize(o)
  if not cfg then return nil, err end
  local deps = M.default_deps(cfg)
  for k, v in pairs(extra) do deps[k] = v end
  -- Validate the initial faults and the state file here, where errors can be
  -- reported, before the worker VM loads them.
  local probe = memdict.new()
  local ok, why = app_mod.new(cfg, {
    dict = probe, now = deps.now, random_hex = deps.random_hex, sleep = deps.sleep,
    can_drop = require("oflua.server").DROP ~= nil,
  })
  if not ok then return nil, why end

  local server = require("oflua.server")
  if not server.listen then return nil, "oflua.server cannot listen in this build" end
  local core = require("oflua.core")
  instances = instances + 1
  local name = ("ofauth.emulator.%d.%d.%s"):format(core.getpid(), instances, deps.random_hex(4))
  local dict = server.shared(name, { size = cfg.shared_size })
  -- Build the loop here even in background mode: it checks the signer and
  -- the HTTP client where errors can be reported.
  local loop
  loop, err = M.delivery_loop(cfg, dict, deps)
  if not loop then return nil, err end
  if cfg.delivery == "background" then loop = nil end
  local srv
  srv, err = server.listen({
    host = cfg.host, port = cfg.port, workers = 1,
    script = core.lua_dir .. "/ofauth/emulator/worker.lua",
    args = { config = cfg, shared = name },
    max_body = cfg.max_body, timeout_s = cfg.timeout_s,
    handle_signals = handle_signals and true or false,
  })
  if not srv then return nil, err end
  local self = setmetatable({ srv = srv, dict = dict, loop = loop, cfg = cfg, deps = deps }, Emulator)
  self.base_url = srv:url()
  dict:set("base_url", self.base_url)
  return self
end

--- The emulator without a server, in this VM: {app, loop, dict}. `app:handle(req)`
-- answers requests directly; `loop:step()` delivers. For specs and for hosts
-- that route requests themselves. `deps` overrides now/sleep/random_hex/
-- request/schemes/log.
function M.new_local(opts, deps)
  local cfg, err = config.normalize(opts)
  if not cfg then return nil, err end
  local d = M.default_deps(cfg)
  for k, v in pairs(deps or {}) do d[k] = v end
  d.dict = d.dict or memdict.new()
  local app
  app, err = app_mod.new(cfg, d)
  if not app then return nil, err end
  local loop
  loop, err = M.delivery_loop(cfg, d.dict, d)
  if not loop then return nil, err end
  return { app = app, loop = loop, dict = d.dict, cfg = cfg }
end

return M
