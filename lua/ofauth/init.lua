--- ofauth: the OFAuth integration library for oflua.
--
--   local ofauth = require("ofauth")
--   local client = assert(ofauth.client{api_key = ...})
--
-- Submodules are loaded on first use, so requiring "ofauth" costs nothing.
local M = { version = require("oflua.core").version }

local submodules = {
  errors = "ofauth.errors", policy = "ofauth.policy", link = "ofauth.link",
  webhooks = "ofauth.webhooks", connections = "ofauth.connections",
  metrics = "ofauth.metrics", log = "ofauth.log", redact = "ofauth.redact",
  client_module = "ofauth.client", catalogue = "ofauth.catalogue", pagination = "ofauth.pagination",
  upload = "ofauth.upload", json = "ofauth.json",
}

setmetatable(M, {
  __index = function(t, k)
    local name = submodules[k]
    if not name then return nil end
    local mod = require(name)
    rawset(t, k, mod)
    return mod
  end,
})

--- ofauth.client{...}: see ofauth.client.new.
function M.client(opts) return require("ofauth.client").new(opts) end

return M
