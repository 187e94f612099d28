-- oflua version: print the versions of oflua and the libraries it embeds.
local cli = require("oflua.cliutil")
local core = require("oflua.core")
local cjson = require("cjson")

local opts = cli.parse({ ... }, { flags = { json = true } })
if opts.help then
  print("usage: oflua version [--json]")
  return 0
end
local v = {}
for k, ver in pairs(core.versions) do v[k] = ver end
v.openssl = require("oflua.crypto").openssl_version
v.curl = require("oflua.http").curl_version
v.sqlite = require("oflua.store").sqlite_version
v.microhttpd = require("oflua.server").mhd_version
if opts.json then
  print(cjson.encode(v))
  return 0
end
print(("oflua %s"):format(v.oflua))
for _, k in ipairs({ "lua", "curl", "openssl", "sqlite", "microhttpd" }) do
  print(("  %-11s %s"):format(k, v[k]))
end
return 0
