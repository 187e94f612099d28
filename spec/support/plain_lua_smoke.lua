-- Run by spec/install_test.sh under plain lua5.4 (not the oflua binary) with
-- LUA_PATH/LUA_CPATH pointing at an installed or luarocks tree: every module
-- loads, a webhook verifies, a store opens, the emulator serves HTTP and the
-- client talks to it.
local tmp = assert(arg[1], "usage: lua5.4 plain_lua_smoke.lua TMPDIR")
assert(not rawget(_G, "OFLUA_BINARY"), "must run under plain lua5.4")

for _, m in ipairs({ "oflua.core", "oflua.crypto", "oflua.http", "oflua.server", "oflua.store",
  "ofauth", "ofauth.client", "ofauth.webhooks", "ofauth.emulator", "oflua.cliutil" }) do
  assert(require(m), m)
end
local core = require("oflua.core")
assert(core.lua_dir and io.open(core.lua_dir .. "/ofauth/init.lua"), "core.lua_dir: " .. tostring(core.lua_dir))

local webhooks = require("ofauth.webhooks")
local secret = webhooks.new_secret()
local body = '{"eventType":"oflua.test","data":{}}'
local headers = webhooks.sign_svix(body, secret, "msg_1", os.time())
local event, meta = webhooks.verify(body, headers, secret)
assert(event and event.type == "oflua.test", "verify: " .. tostring(event and event.type or meta))

local crypto = require("oflua.crypto")
local store = require("oflua.store")
local s = assert(store.open({ path = tmp .. "/smoke.db", key = crypto.base64(crypto.random(32)) }))
assert(s:put("k", "v"))
assert(s:get("k") == "v")
s:close()

local emu = assert(require("ofauth.emulator").start({ api_keys = { "sk_test_plain" }, port = 0,
  host = "127.0.0.1" }))
local client = assert(require("ofauth").client({ api_key = "sk_test_plain", base_url = emu:url() }))
local me, err = client:whoami()
emu:stop()
assert(me, "whoami: " .. tostring(err))
print("plain lua5.4: ok (" .. _VERSION .. ", oflua " .. core.version .. ")")
